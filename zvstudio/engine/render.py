"""The render path: source frames -> key renderer -> encoder, streamed frame by frame.

This first version renders every frame with the key renderer (the weightless stylizers are
deterministic per frame, so they need no propagation); key selection, propagation between keys
and the content cache join this same path later. Frames stream from the decoder to the encoder,
so memory does not grow with the clip's length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from zvstudio.engine.request import KeyRendererSpec, RenderRequest
from zvstudio.errors import ZvsError
from zvstudio.keyrender import KeyContext, KeyRenderer, RenderedKey
from zvstudio.media import AudioSource, FrameTiming, VideoReader, VideoWriter, check_output, probe
from zvstudio.progress import CancelToken, Progress, ProgressCallback, ignore_progress
from zvstudio.stylize import PaintedKeyRenderer, create_stylizer


@dataclass(frozen=True)
class RenderResult:
    output: Path
    frames: int
    seconds: float


def create_key_renderer(spec: KeyRendererSpec) -> KeyRenderer:
    if spec.kind == "stylize":
        return create_stylizer(spec.style, **dict(spec.params))
    if spec.kind == "painted":
        return PaintedKeyRenderer({frame: path for frame, path in spec.painted})
    raise ZvsError(f"unknown key renderer '{spec.kind}'; choose 'stylize' or 'painted'")


def resolve_range(request: RenderRequest, frame_count: int) -> tuple[int, int]:
    """The inclusive frame range to render, validated against the clip."""
    first = 0 if request.first is None else request.first
    last = frame_count - 1 if request.last is None else request.last
    if not 0 <= first <= last < frame_count:
        raise ZvsError(
            f"frame range {first}..{last} is outside the clip, which has frames "
            f"0..{frame_count - 1}"
        )
    return first, last


def render(
    request: RenderRequest,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
) -> RenderResult:
    """Render `request`; raises `ZvsError` on bad input and `RenderCancelled` on cancel.

    The output appears only when complete: a failure or cancel leaves any existing file as it
    was.
    """
    cancel = cancel or CancelToken()
    started = time.monotonic()
    # Check everything the user can get wrong before any work starts.
    check_output(request.output, request.export)
    renderer = create_key_renderer(request.renderer)
    info = probe(request.source)
    first, last = resolve_range(request, info.frame_count)
    total = last - first + 1
    timing = FrameTiming.from_index(info.index, first, last + 1)
    whole = first == 0 and last == info.frame_count - 1
    audio = None
    if info.has_audio:
        start = float(info.index.pts[first] * info.index.time_base)
        audio = AudioSource(str(request.source), start, timing.duration, whole_clip=whole)
    with (
        VideoReader(request.source, info=info) as reader,
        VideoWriter(
            request.output, reader.size, timing, request.export, audio, first_number=first
        ) as writer,
    ):
        progress(Progress("render", 0, total, f"rendering {total} frames"))
        anchor = previous = None
        for done, (number, frame) in enumerate(reader.frames(first, last + 1), start=1):
            cancel.raise_if_cancelled()
            context = KeyContext(number, anchor=anchor, previous=previous)
            result = renderer.render(frame, context, cancel=cancel)
            writer.write(result)
            previous = RenderedKey(number, frame, result)
            anchor = anchor or previous
            progress(Progress("render", done, total))
        progress(Progress("encode", total, total, "finishing the file"))
    return RenderResult(request.output, total, time.monotonic() - started)
