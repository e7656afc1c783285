"""`zvstudio propagate`: carry a few rendered or hand-painted keys to a whole clip.

This is the workflow of artists who paint keys by hand, and the second half of every
diffusion render: read the clip, load the keys, propagate, export with the audio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from zvstudio.engine.render import RenderResult, flow_clip_key, output_timing, resized_note
from zvstudio.engine.request import check_short_side, render_size
from zvstudio.flow import DISFlow, FlowCache
from zvstudio.media import (
    ExportSettings,
    VideoReader,
    VideoWriter,
    check_output,
    clip_hash,
    probe,
)
from zvstudio.media.matte import MatteSpec, check_matte, matted_frames
from zvstudio.progress import CancelToken, ProgressCallback, ignore_progress
from zvstudio.propagate.clip import check_keys, load_key_image, propagate_clip
from zvstudio.propagate.segment import PropagationSettings


@dataclass(frozen=True)
class PropagateRequest:
    """Propagate the images `keys` (frame number -> image file) over `source`."""

    source: Path
    keys: Mapping[int, Path]
    output: Path
    settings: PropagationSettings = field(default_factory=PropagationSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    flow_preset: str = "fine"
    # Propagate (and export) at most this many pixels on the short side; 0: the clip's size.
    short_side: int = 0
    matte: MatteSpec | None = None  # where the propagated keys show over the original footage

    def __post_init__(self) -> None:
        check_short_side(self.short_side)


def propagate_video(
    request: PropagateRequest,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> RenderResult:
    """Run `request`; the output appears only when complete (see `VideoWriter`)."""
    started = time.monotonic()
    check_output(request.output, request.export, request.source)
    info = probe(request.source)
    last = info.frame_count - 1
    check_keys(request.keys, 0, last)
    check_matte(request.matte, info.frame_count, request.export.alpha)
    clip_size = (info.display_width, info.display_height)
    size = render_size(*clip_size, request.short_side)
    keys = {}
    for number, path in sorted(request.keys.items()):
        keys[number], warning = load_key_image(path, size, painted_at=clip_size)
        if warning:
            warn(warning)
    flows = FlowCache(
        DISFlow(request.flow_preset), flow_clip_key(clip_hash(request.source), info, size)
    )
    timing, audio = output_timing(request.source, info, 0, last)
    with (
        VideoReader(request.source, info=info, output_size=size) as reader,
        VideoWriter(
            request.output, size, timing, request.export, audio, info.frame_name_number(0)
        ) as writer,
    ):
        frames = propagate_clip(reader, keys, flows, request.settings, 0, last, progress, cancel)
        if request.matte is not None:
            alpha = request.export.alpha
            frames = matted_frames(frames, info, request.matte, size, 0, last, alpha)
        for _, image in frames:
            writer.write(image)
    if reader.resized_frames:
        warn(resized_note(reader.resized_frames, info))
    return RenderResult(request.output, info.frame_count, time.monotonic() - started)
