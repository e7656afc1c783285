"""The DynamiCrafter job: check everything, load the checkpoint, make the clip, write it.

Shared by `zvstudio animate --engine dynamicrafter` and the editor's Animate image... dialog,
which run it on the job thread with progress and cancel. What can be checked before the model
loads (output path, settings, preset, checkpoint file, images) is checked first, so mistakes
are reported in a moment rather than after a multi-gigabyte load.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from zvstudio.errors import ZvsError
from zvstudio.generate.dynamicrafter.config import PRESETS
from zvstudio.generate.dynamicrafter.names import guess_preset
from zvstudio.generate.dynamicrafter.sampler import DynamiCrafterSettings
from zvstudio.generate.jobs import (
    DEFAULT_FPS,
    GenerateResult,
    out_of_memory_as_error,
    write_frames,
)
from zvstudio.media import ExportSettings, FrameTiming, check_output
from zvstudio.media.image import read_image
from zvstudio.progress import (
    CancelToken,
    LogCallback,
    ProgressCallback,
    ignore_log,
    ignore_progress,
)

if TYPE_CHECKING:
    from zvstudio.generate.dynamicrafter.config import DynamiCrafterConfig

__all__ = [
    "DynamiCrafterRequest",
    "animate_dynamicrafter",
    "check_checkpoint",
    "guess_preset",
    "resolve_preset",
]

_PRESETS_HINT = (
    "name the preset (256, 512, 1024 or 512_interp), or keep the released file names "
    "(dynamicrafter_512_v1/model.ckpt, dynamicrafter_512_interp_v1/model.ckpt, ...)"
)


@dataclass(frozen=True)
class DynamiCrafterRequest:
    """A DynamiCrafter clip: the checkpoint and its preset (None: guessed from the file or
    folder name), the settings, the image (and the last image to interpolate to), where the
    clip goes and how it is played (`fps_out`, the released scripts' 8 frames per second)."""

    checkpoint: Path
    preset: str | None
    settings: DynamiCrafterSettings
    image: Path
    output: Path
    last_image: Path | None = None
    device: str = "auto"
    precision: str = "auto"
    allow_pickle: bool = False
    fps_out: Fraction = DEFAULT_FPS
    export: ExportSettings = field(default_factory=ExportSettings)
    cache_dir: Path | None = None  # for a pickled checkpoint's converted copy; None: our cache
    config: DynamiCrafterConfig | None = None  # overrides the preset's (tests: tiny models)


def resolve_preset(checkpoint: Path, preset: str | None) -> str:
    """`preset` checked, or the one guessed from the checkpoint's name; ZvsError otherwise."""
    if preset is not None:
        if preset not in PRESETS:
            raise ZvsError(f"no DynamiCrafter preset {preset!r}", hint=_PRESETS_HINT)
        return preset
    guessed = guess_preset(checkpoint)
    if guessed is None:
        raise ZvsError(
            f"cannot tell which DynamiCrafter model {Path(checkpoint).name} is from its name",
            hint=_PRESETS_HINT,
        )
    return guessed


def check_checkpoint(path: Path, allow_pickle: bool = False) -> None:
    """Raise ZvsError unless `path` is a checkpoint we may read: a readable `.safetensors`
    file, or a pickled one (`.ckpt`, ...) when pickles are allowed. Reads the header only."""
    from zvstudio.diffusion.loading import PICKLE_SUFFIXES, open_checkpoint, pickle_refused

    path = Path(path)
    if not path.is_file():
        raise ZvsError(f"DynamiCrafter checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        open_checkpoint(path, allow_pickle=False)  # the header: raises when unreadable
    elif suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise pickle_refused(path)
    else:
        open_checkpoint(path, allow_pickle)  # raises the unsupported-type error


def animate_dynamicrafter(
    request: DynamiCrafterRequest,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
    log: LogCallback = ignore_log,
) -> GenerateResult:
    """Make the clip `request` describes and write it; raises ZvsError with what is wrong."""
    from zvstudio.engine.device import plan_device
    from zvstudio.generate.dynamicrafter.checkpoint import load_dynamicrafter
    from zvstudio.generate.dynamicrafter.config import preset
    from zvstudio.generate.dynamicrafter.sampler import DynamiCrafterSampler
    from zvstudio.paths import cache_root

    started = time.monotonic()
    settings = request.settings
    check_output(request.output, request.export)
    name = resolve_preset(request.checkpoint, request.preset)
    config = request.config or preset(name)
    settings.check(config)
    if settings.mode == "interpolate" and request.last_image is None:
        raise ZvsError("interpolation needs a last image as well as the first")
    if settings.mode != "interpolate" and request.last_image is not None:
        raise ZvsError(f"a last image is only used to interpolate, not to {settings.mode}")
    check_checkpoint(request.checkpoint, request.allow_pickle)
    image = read_image(request.image)
    last = None if request.last_image is None else read_image(request.last_image)
    plan = plan_device(request.device, request.precision, offload="none", controlnets=0)
    log(
        f"DynamiCrafter {name}: {settings.mode}, {config.width}x{config.height}, "
        f"{settings.frames} frames, {settings.steps} steps, on {plan.device} in {plan.dtype}"
    )
    if cancel is not None:
        cancel.raise_if_cancelled()
    cache_dir = request.cache_dir or cache_root() / "dynamicrafter"
    with out_of_memory_as_error():
        models = load_dynamicrafter(
            request.checkpoint,
            config,
            plan.torch_dtype,
            plan.device,
            request.allow_pickle,
            cache_dir,
        )
        log(f"loaded {request.checkpoint} ({time.monotonic() - started:.1f} s)")
        sampler = DynamiCrafterSampler(models, config)
        frames = sampler.animate(image, settings, last, progress, cancel)
    timing = FrameTiming.constant(request.fps_out, len(frames))
    write_frames(request.output, frames, timing, request.export)
    return GenerateResult(request.output, len(frames), time.monotonic() - started)
