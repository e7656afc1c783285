"""Generation jobs: load the models, make the frames, write the clip (one request per job).

Shared by `zvstudio generate` / `zvstudio animate` and the editor's New from text... and
Animate image... entries, which run these on the job thread with progress and cancel.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zvstudio.errors import ZvsError
from zvstudio.keyrender import DEFAULT_KEY_SIZE, working_size
from zvstudio.media import ExportSettings, FrameTiming, VideoWriter, check_output
from zvstudio.media.image import read_image
from zvstudio.progress import (
    CancelToken,
    LogCallback,
    ProgressCallback,
    ignore_log,
    ignore_progress,
)

if TYPE_CHECKING:
    from zvstudio.engine.preview import DiffusionSpec
    from zvstudio.generate.animate_zero import AnimateSettings
    from zvstudio.generate.t2v_zero import TextToVideoSettings

DEFAULT_FPS = Fraction(8)
# The long side of a clip made from an input video, when no size is given (SD1.5's native).
INPUT_LONG_SIDE = 512
# A user's still larger than this on its short side is animated scaled down to it.
STILL_SHORT_SIDE = DEFAULT_KEY_SIZE


@dataclass(frozen=True)
class TextToVideoRequest:
    """A Text2Video-Zero clip: the models, the settings, where it goes.

    With `video` (and a ControlNet in `models`), the clip follows that video's first
    `settings.frames` frames, keeps their timing and audio; otherwise it plays at `fps`."""

    models: DiffusionSpec
    settings: TextToVideoSettings
    output: Path
    video: Path | None = None
    fps: Fraction = DEFAULT_FPS
    export: ExportSettings = field(default_factory=ExportSettings)


@dataclass(frozen=True)
class GenerateResult:
    output: Path
    frames: int
    seconds: float


def generate_text_to_video(
    request: TextToVideoRequest,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
    log: LogCallback = ignore_log,
) -> GenerateResult:
    """Make the clip `request` describes and write it; raises ZvsError with what is wrong
    (checked before the models load where possible)."""
    from zvstudio.engine.preview import load_diffusion_models
    from zvstudio.generate.t2v_zero import TextToVideoZero

    started = time.monotonic()
    settings = request.settings
    settings.check()
    check_output(request.output, request.export, request.video)
    models = _check_mode(request)
    foreground = _foreground_source(request)
    control_frames, timing, audio = None, FrameTiming.constant(request.fps, settings.frames), None
    if request.video is not None:
        control_frames, timing, audio = _input_clip(
            request.video, settings.frames, (settings.width, settings.height)
        )
    components, controlnets = load_diffusion_models(models, log)
    with out_of_memory_as_error():
        frames = TextToVideoZero(components, controlnets, foreground).generate(
            settings, control_frames, progress, cancel
        )
    write_frames(request.output, frames, timing, request.export, audio)
    return GenerateResult(request.output, len(frames), time.monotonic() - started)


@dataclass(frozen=True)
class AnimateRequest:
    """An AnimateZero clip: `image` animated (or a still made from the prompt when None)."""

    models: DiffusionSpec
    motion_adapter: Path
    settings: AnimateSettings
    output: Path
    image: Path | None = None
    fps: Fraction = DEFAULT_FPS
    export: ExportSettings = field(default_factory=ExportSettings)


def animate_image(
    request: AnimateRequest,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
    log: LogCallback = ignore_log,
) -> GenerateResult:
    """Animate the request's image (or a generated still) and write the clip. The motion
    module is read first: a wrong file is reported before the large model loads."""
    from zvstudio.engine.preview import load_diffusion_models
    from zvstudio.generate.animate_zero import animate, load_motion_adapter

    started = time.monotonic()
    check_output(request.output, request.export)
    image = None if request.image is None else _still_to_animate(read_image(request.image), log)
    adapter = load_motion_adapter(request.motion_adapter, allow_pickle=request.models.allow_pickle)
    components, _ = load_diffusion_models(request.models, log)
    with out_of_memory_as_error():
        frames = animate(components, adapter, request.settings, image, progress, cancel)
    timing = FrameTiming.constant(request.fps, len(frames))
    write_frames(request.output, frames, timing, request.export)
    return GenerateResult(request.output, len(frames), time.monotonic() - started)


def _still_to_animate(image: np.ndarray, log: LogCallback) -> np.ndarray:
    """A user's image scaled down to at most `STILL_SHORT_SIDE` pixels on its short side: a
    phone photo at its own size would take many times as long, or run out of memory."""
    from zvstudio.diffusion.sampler import resized

    height, width = image.shape[:2]
    size = working_size(height, width, STILL_SHORT_SIDE)
    if size != (height, width):
        log(
            f"the image is {width}x{height}: animated at {size[1]}x{size[0]} (SD1.5 and its "
            f"motion modules work at {STILL_SHORT_SIDE} pixels)"
        )
    return resized(image, size)


def _check_mode(request: TextToVideoRequest) -> DiffusionSpec:
    """Check that the model, ControlNet and input clip make one of the modes (before any model
    loads); the model spec, accepting InstructPix2Pix models when one edits the clip."""
    from dataclasses import replace

    from zvstudio.diffusion.identify import unet_input_channels

    models = request.models
    channels = unet_input_channels(models.model)  # None: not known before loading (a pickle)
    instruct = channels == 8
    if instruct and request.video is None:
        raise ZvsError(
            f"{models.model.name} is an InstructPix2Pix model: it edits a clip",
            hint="give the clip to edit with --video IN and the instruction as --prompt",
        )
    if instruct and models.controlnets:
        raise ZvsError("an InstructPix2Pix model edits the clip itself: drop the ControlNet")
    editing = request.video is not None and not models.controlnets
    if editing and channels not in (8, None):
        raise ZvsError(
            "--video guides the clip through a ControlNet, or is edited by an InstructPix2Pix "
            "model",
            hint="add --controlnet canny, or use an InstructPix2Pix checkpoint as --model",
        )
    return replace(models, unet_inputs=(8,) if instruct else (4, 8)) if editing else models


def _foreground_source(request: TextToVideoRequest):
    """Where background smoothing finds each frame's foreground (None when it is off), checked
    before any model loads."""
    if request.settings.smooth_background <= 0:
        return None
    from zvstudio.diffusion.seg import find_foreground_source
    from zvstudio.generate.t2v_zero import no_foreground_source, smoothing_needs_text_mode

    if request.video is not None or request.models.controlnets:
        raise smoothing_needs_text_mode()
    source = find_foreground_source()
    if source is None:
        raise no_foreground_source()
    return source


def input_clip_size(video: Path, long_side: int = INPUT_LONG_SIDE) -> tuple[int, int]:
    """(width, height) for a clip made from `video`: its aspect ratio, the long side
    `long_side`, both multiples of 8 (the frames are cropped by at most 7 px, never stretched)."""
    from zvstudio.media import probe

    info = probe(video)
    width, height = info.display_width, info.display_height
    scale = long_side / max(width, height)
    return max(8, round(width * scale) // 8 * 8), max(8, round(height * scale) // 8 * 8)


def _input_clip(video: Path, frames: int, size: tuple[int, int]):
    """The first `frames` frames of `video` (RGB), their timing and audio. Frames are decoded
    just large enough to cover `size` with their own aspect ratio (the generator crops them),
    so a long 4K clip does not fill the memory."""
    from zvstudio.engine.render import output_timing
    from zvstudio.media import VideoReader

    with VideoReader(video) as reader:
        if len(reader) < frames:
            raise ZvsError(f"{video} has {len(reader)} frames; the clip needs {frames}")
        cover = _cover_size(reader.size, size)
        images = [image for _, image in reader.frames(0, frames, cover)]
        timing, audio = output_timing(video, reader.info, 0, frames - 1)
    return images, timing, audio


def _cover_size(source: tuple[int, int], target: tuple[int, int]) -> tuple[int, int] | None:
    """The source's size scaled down to just cover `target` (None: it is not larger)."""
    scale = max(target[0] / source[0], target[1] / source[1])
    if scale >= 1:
        return None
    return max(target[0], round(source[0] * scale)), max(target[1], round(source[1] * scale))


def write_frames(
    output: Path, frames: list[np.ndarray], timing: FrameTiming, export: ExportSettings, audio=None
) -> None:
    """Write the frames as a video (or PNG folder); nothing replaces `output` unless complete."""
    height, width = frames[0].shape[:2]
    with VideoWriter(output, (width, height), timing, export, audio) as writer:
        for frame in frames:
            writer.write(frame)


@contextmanager
def out_of_memory_as_error() -> Iterator[None]:
    """Turn CUDA's out-of-memory error into the message users get everywhere else."""
    import torch

    from zvstudio.diffusion.sampler import CLIP_MEMORY_HINT, out_of_memory_error

    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        raise out_of_memory_error(CLIP_MEMORY_HINT) from exc
