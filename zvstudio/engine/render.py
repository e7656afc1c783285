"""The render path: key frames -> key renderer -> propagation -> encoder, streamed.

Key frames (every K frames, a given list, or the painted frames) are rendered in order, each
with the anchor (first key) and the previous key as references, and propagation carries them
to every other frame. A stylizer with no keys asked for renders every frame on its own.
Frames stream from the decoder to the encoder and keys are rendered as propagation reaches
them, so memory holds about two segments whatever the clip's length. Rendered keys and
propagated segments are cached on disk by content identity, so a changed setting recomputes
only what it affects and an interrupted render resumes where it stopped.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from zvstudio.engine.keycache import KeyCache
from zvstudio.engine.matte_keys import MatteAreaRenderer
from zvstudio.engine.request import KeyRendererSpec, RenderRequest
from zvstudio.engine.shots import analyse_motion, clip_cuts
from zvstudio.errors import RenderCancelled, StageError, ZvsError
from zvstudio.flow import DISFlow, FlowCache, FlowEstimator, create_flow_estimator
from zvstudio.hashing import text_hash
from zvstudio.keyrender import KeyContext, KeyParams, KeyRenderer, RenderedKey
from zvstudio.media import (
    AudioSource,
    FrameCache,
    FrameTiming,
    MediaInfo,
    VideoReader,
    VideoWriter,
    check_output,
    clip_audio_file,
    clip_hash,
    probe,
)
from zvstudio.media.cuts import keys_by_shot, shot_first
from zvstudio.media.hdr import sdr_note
from zvstudio.media.matte import MatteSpec, check_matte, matted_frames
from zvstudio.media.timecode import timecode_at
from zvstudio.progress import (
    CancelToken,
    LogCallback,
    Progress,
    ProgressCallback,
    ignore_log,
    ignore_progress,
)
from zvstudio.propagate.cache import SegmentCache
from zvstudio.propagate.clip import ALGORITHM_VERSION, propagate_clip
from zvstudio.propagate.placement import KeyCosts, keys_by_motion, max_gap
from zvstudio.stylize import PaintedKeyRenderer, create_stylizer
from zvstudio.stylize.painted import WithPaintedKeys


@dataclass(frozen=True)
class RenderResult:
    output: Path
    frames: int
    seconds: float
    keys: int = 0
    reused_segments: int = 0  # taken from the cache (a resumed or partly changed render)
    segments: int = 0
    reused_keys: int = 0  # keys taken from the cache
    rendered_keys: int = 0  # keys the key renderer rendered
    replayed_keys: int = 0  # cached keys rendered again to restore references (diffusion)


def create_key_renderer(
    spec: KeyRendererSpec,
    log: LogCallback = ignore_log,
    matte: MatteSpec | None = None,
    frame_count: int = 0,
) -> KeyRenderer:
    """The key renderer of `spec`; with a stylizer or diffusion, painted frames (if any) are
    taken from their paintings instead. A `matte` that crops renders each key's matte area
    closer (see `zvstudio.engine.matte_keys`; `frame_count` is the clip's)."""
    paintings = PaintedKeyRenderer({frame: path for frame, path in spec.painted})
    if spec.kind == "painted":
        return paintings
    return with_paintings(_base_renderer(spec, log), paintings, matte, frame_count)


def with_paintings(
    base, paintings: PaintedKeyRenderer, matte: MatteSpec | None, frame_count: int
) -> KeyRenderer:
    """`base`'s keys, rendered on their matte areas if `matte` crops, except the painted
    frames, which are their paintings whole."""
    if matte is not None and matte.crop:
        base = MatteAreaRenderer(base, matte, frame_count)
    return WithPaintedKeys(base, paintings) if paintings.paintings else base


def _base_renderer(spec: KeyRendererSpec, log: LogCallback) -> KeyRenderer:
    if spec.kind == "stylize":
        return create_stylizer(spec.style, **dict(spec.params))
    if spec.kind == "diffusion" and spec.diffusion is not None:
        from zvstudio.engine.preview import create_diffusion_renderer

        return create_diffusion_renderer(spec.diffusion, log)
    raise ZvsError(
        f"unknown key renderer '{spec.kind}'; choose 'stylize', 'painted' or "
        "'diffusion' (with a model)"
    )


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


def output_timing(
    source: Path, info: MediaInfo, first: int, last: int
) -> tuple[FrameTiming, AudioSource | None]:
    """The source's timing of frames first..last (from the timecode of frame `first`) and its
    audio cut to match, for export."""
    timing = FrameTiming.from_index(info.index, first, last + 1)
    timing = replace(timing, timecode=timecode_at(info.timecode, info.fps, first))
    if not info.has_audio:
        return timing, None
    start = float(info.index.pts[first] * info.index.time_base)
    whole = first == 0 and last == info.frame_count - 1
    sound = clip_audio_file(source)
    if sound is None:
        return timing, None
    return timing, AudioSource(sound, start, timing.duration, whole_clip=whole)


def resized_note(resized: dict[int, tuple[int, int]], info: MediaInfo) -> str:
    """Say which frames of an image sequence had another size than the first (and were
    scaled to it): a re-export at another resolution, usually by mistake."""
    sizes = sorted({f"{w}x{h}" for w, h in resized.values()})
    return (
        f"frames {listed_frames(sorted(resized))} are {' or '.join(sizes)}, not "
        f"{info.width}x{info.height} like the first: scaled to it (export them again at that "
        "size if that was not meant)"
    )


def listed_frames(frames: Sequence[int], shown: int = 24) -> str:
    """Frame numbers for a message: the first `shown`, and how many more."""
    text = ", ".join(map(str, frames[:shown]))
    return text + (f" ... ({len(frames) - shown} more)" if len(frames) > shown else "")


def plan_keys(
    request: RenderRequest,
    frame_count: int,
    first: int,
    last: int,
    cuts: Callable[[], list[int]] | None = None,
    motion: Callable[[int], KeyCosts | None] | None = None,
) -> list[int] | None:
    """The key frames to render, or None to render every frame on its own.

    Keys at an interval start again at each shot cut that `cuts()` finds (`keys_by_shot`).
    With the "motion" placement, as many keys go where `motion(window)`'s analysis says
    propagation needs them (`keys_by_motion`); evenly while it has none. Of keys given
    explicitly, those outside first..last serve only as the nearest on either side (keys
    outside the clip are an error)."""

    def shots() -> list[int]:
        return cuts() if cuts is not None else []

    def every(interval: int) -> list[int]:
        if request.key_placement == "motion" and motion is not None:
            costs = motion(max_gap(interval))  # first: it may find the cuts in the same pass
            if costs is not None:
                return keys_by_motion(costs, first, interval, shots())
        return keys_by_shot(first, last, interval, shots())

    if request.renderer.kind == "diffusion" and not (request.key_frames or request.key_interval):
        return every(10)  # diffusion on every frame would be waste
    if request.renderer.kind == "painted":
        keys = sorted(frame for frame, _ in request.renderer.painted)
        if not keys:
            raise ZvsError("no painted key frames were given")
    elif request.key_frames:
        keys = sorted(set(request.key_frames))
    elif request.key_interval is not None:
        if request.key_interval < 1:
            raise ZvsError(f"the key interval must be at least 1, got {request.key_interval}")
        keys = every(request.key_interval)
    else:
        return None
    outside = [k for k in keys if not 0 <= k < frame_count]
    if outside:
        raise ZvsError(f"key frame(s) {outside} outside the clip's frames 0..{frame_count - 1}")
    return keys_around(keys, first, last)


def keys_around(keys: Sequence[int], first: int, last: int) -> list[int]:
    """The sorted `keys` that frames first..last are propagated from: those inside, and the
    nearest on either side, so a range renders as the whole clip does (a range of the editor
    that starts between two keys blends both, as the whole render does)."""
    keys = sorted(keys)
    before = [k for k in keys if k < first][-1:]
    after = [k for k in keys if k > last][:1]
    return before + [k for k in keys if first <= k <= last] + after


def key_identities(
    renderer: KeyRenderer,
    numbers: Sequence[int],
    params: Mapping[int, KeyParams],
    clip_id: str,
    size: tuple[int, int],
    cuts: Sequence[int] = (),
) -> dict[int, str]:
    """Each key's content identity: its clip, frame, size and renderer settings with its own
    overrides; for a renderer with references (diffusion), also the earlier keys' identities
    and, after a shot cut (`cuts`), where its shot starts (see `KeyContext.shot_first`)."""
    identities, previous = {}, ""
    for number in numbers:
        identity = renderer.key_identity(number, params.get(number))
        own = text_hash(clip_id, str(number), str(size), identity)
        if renderer.uses_references:
            start = shot_first(number, numbers[0], cuts)
            if start > numbers[0]:  # not the anchor's shot: its references are used otherwise
                own = text_hash(own, f"shot from {start}")
            own = text_hash(own, previous)
        identities[number] = previous = own
    return identities


def key_slot(clip_id: str, size: tuple[int, int], number: int) -> str:
    """Where a key sits, whatever its settings: its clip, size and frame. Cached keys are named
    slot-identity, so an out-of-date render of a key (a "stale" key) can be found."""
    return f"{text_hash(clip_id, str(tuple(size)))[:12]}-{number}"


class RenderedKeys(Mapping):
    """Key frames rendered on first access, in order (each may need the previous one), keeping
    only the anchor and the last few in memory.

    With a `cache`, keys whose identity is unchanged come from disk. A renderer with
    references (diffusion) also keeps internal state from the keys it rendered (the anchor's and
    the previous key's attention features), which no image restores: when it must render a key
    after keys that came from the cache, the keys before it are rendered again first ("replayed")
    so that the result is exactly what an uninterrupted render gives.
    """

    _KEEP = 3

    def __init__(
        self,
        reader: VideoReader,
        renderer: KeyRenderer,
        numbers: list[int],
        progress: ProgressCallback,
        cancel: CancelToken,
        clip_id: str = "",
        params: Mapping[int, KeyParams] | None = None,
        cache: KeyCache | None = None,
        log: LogCallback = ignore_log,
        cuts: Sequence[int] = (),
    ) -> None:
        self.reader, self.renderer, self.numbers = reader, renderer, numbers
        self.cuts = list(cuts)  # shot cuts: a key's flow-based references stay in its shot
        self.progress, self.cancel, self.log = progress, cancel, log
        self.params = dict(params or {})
        self.cache = cache
        self._recent: dict[int, RenderedKey] = {}
        self._anchor: RenderedKey | None = None
        self._done = 0
        self._renderer_at = -1  # index of the last key the renderer itself rendered in order
        self.rendered = 0  # keys rendered (not counting replays)
        self.reused = 0  # keys taken from the cache
        self.replayed = 0  # keys rendered again only to restore the renderer's references
        self.identities = key_identities(
            renderer, numbers, self.params, clip_id, reader.size, self.cuts
        )
        self.names = {
            n: f"{key_slot(clip_id, reader.size, n)}-{self.identities[n]}" for n in numbers
        }

    def __iter__(self) -> Iterator[int]:
        return iter(self.numbers)

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, number: int) -> np.ndarray:
        if number not in self.numbers:
            raise KeyError(number)
        if not self.renderer.uses_references and number not in self._recent:
            # Keys are independent: render just this one (others may come from the cache).
            self._done = self.numbers.index(number)
        while number not in self._recent:
            self._next()
        return self._recent[number].result

    def _next(self) -> None:
        if self._done >= len(self.numbers):
            raise ZvsError("internal: key requested after the last was rendered")
        self.cancel.raise_if_cancelled()
        index = self._done
        number = self.numbers[index]
        frame = self.reader.frame(number)
        result = self._cached(number)
        if result is None:
            if self.renderer.uses_references and self._renderer_at != index - 1:
                self._replay(index)
            result = self._render(index, frame)
            self.rendered += 1
            if self.cache is not None:
                self.cache.store(self.names[number], result)
        else:
            self.reused += 1
        self._keep(RenderedKey(number, frame, result))
        self._done += 1
        done = self.rendered + self.reused
        self.progress(Progress("keys", min(done, len(self.numbers)), len(self.numbers)))

    def _cached(self, number: int) -> np.ndarray | None:
        if self.cache is None:
            return None
        return self.cache.load(self.names[number], self.reader.size)

    def _render(self, index: int, frame: np.ndarray) -> np.ndarray:
        """Render key `index` with the anchor and the previous key as references."""
        number = self.numbers[index]
        previous = self._recent.get(self.numbers[index - 1]) if index else None
        params = self.params.get(number, KeyParams())
        shot = shot_first(number, self.numbers[0], self.cuts)
        context = KeyContext(number, self._anchor, previous, params, shot)
        try:
            result = self.renderer.render(frame, context, cancel=self.cancel)
        except RenderCancelled:
            raise
        except Exception as exc:
            raise StageError("keys", number, exc) from exc
        self._renderer_at = index
        return result

    def _replay(self, index: int) -> None:
        """Render keys 0..index-1 again (their results are already known) to rebuild the
        renderer's references; see the class docstring."""
        self.log(
            f"re-running key frames {self.numbers[0]}..{self.numbers[index - 1]} (cached) to "
            f"restore the references of key frame {self.numbers[index]}"
        )
        self._recent, self._anchor = {}, None
        for earlier in range(index):
            number = self.numbers[earlier]
            frame = self.reader.frame(number)
            result = self._render(earlier, frame)
            # The cached image is the reference the uninterrupted render used.
            cached = self._cached(number)
            self._keep(RenderedKey(number, frame, result if cached is None else cached))
            self.replayed += 1

    def _keep(self, key: RenderedKey) -> None:
        self._anchor = self._anchor or key
        self._recent[key.frame_index] = key
        for old in sorted(self._recent)[: -self._KEEP]:
            del self._recent[old]


def render(
    request: RenderRequest,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
    log: LogCallback = ignore_log,
) -> RenderResult:
    """Render `request`; raises `ZvsError` on bad input (`StageError` naming the frame when a
    stage fails) and `RenderCancelled` on cancel.

    Keys and propagated segments are cached on disk as they finish, so rendering again after a
    failure, a cancel or a crash reuses them. The output appears only when complete: a failure
    or cancel leaves any existing file as it was. `log` receives lines worth showing the user.
    """
    cancel = cancel or CancelToken()
    started = time.monotonic()
    progress(Progress("prepare", 0, 1, "checking the inputs"))
    # Check everything the user can get wrong before any work starts.
    check_output(request.output, request.export, request.source)
    info = probe(request.source)
    first, last = resolve_range(request, info.frame_count)
    check_matte(request.matte, info.frame_count, request.export.alpha)
    renderer = request_renderer(request, info.frame_count, log)
    estimator = flow_estimator(request)

    @functools.cache
    def cuts() -> list[int]:  # found on first use, once
        clip_id = clip_hash(request.source)
        return clip_cuts(request.source, clip_id, first, last, info, progress, cancel)

    def motion(window: int) -> KeyCosts:  # finds the cuts too, in the same pass
        return analyse_motion(request.source, first, last, window, info, progress, cancel).costs

    keys = plan_keys(request, info.frame_count, first, last, cuts, motion)
    if keys and request.key_placement == "motion" and not request.key_frames:
        log(f"{len(keys)} keys placed where the motion needs them: {listed_frames(keys)}")
    if keys and (keys[0] < first or keys[-1] > last):
        around = [k for k in keys if not first <= k <= last]
        log(f"frames {first}..{last} are propagated as in the whole clip: keys {around} too")
    timing, audio = output_timing(request.source, info, first, last)
    size = request.frame_size(info)
    clip_size = (info.display_width, info.display_height)
    if size != clip_size:
        log(f"rendering at {size[0]}x{size[1]} (the clip is {clip_size[0]}x{clip_size[1]})")
    if info.colour:
        log(sdr_note(info.colour))
    with (
        VideoReader(request.source, _small_frame_cache(info), info, size) as reader,
        VideoWriter(
            request.output,
            reader.size,
            timing,
            request.export,
            audio,
            first_number=info.frame_name_number(first),
        ) as writer,
    ):
        segments = rendered = None
        if keys is None:
            frames = _every_frame(reader, renderer, first, last, progress, cancel)
        else:
            clip_id = clip_hash(request.source)
            rendered = RenderedKeys(
                reader,
                renderer,
                keys,
                progress,
                cancel,
                clip_id,
                dict(request.key_params),
                KeyCache(),
                log,
                cuts() if renderer.uses_references else (),
            )
            flows = FlowCache(estimator, flow_clip_key(clip_id, info, reader.size))
            segments = SegmentCache(segment_context(request, estimator, clip_id, reader.size))
            frames = propagate_clip(
                reader,
                rendered,
                flows,
                request.propagation,
                first,
                last,
                progress,
                cancel,
                segments,
                rendered.identities,
            )
        if request.matte is not None:
            alpha = request.export.alpha
            frames = matted_frames(frames, info, request.matte, reader.size, first, last, alpha)
        for _, image in frames:
            cancel.raise_if_cancelled()
            writer.write(image)
        progress(Progress("encode", last - first + 1, last - first + 1, "finishing the file"))
        if reader.resized_frames:
            log(resized_note(reader.resized_frames, info))
    result = RenderResult(
        request.output,
        last - first + 1,
        time.monotonic() - started,
        len(keys) if keys else 0,
        segments.hits if segments else 0,
        segments.hits + segments.misses if segments else 0,
        rendered.reused if rendered else 0,
        rendered.rendered if rendered else 0,
        rendered.replayed if rendered else 0,
    )
    if result.reused_segments or result.reused_keys:
        log(
            f"resumed: {result.reused_segments} of {result.segments} segments came from the "
            f"cache; {result.rendered_keys} of {result.keys} keys needed rendering"
        )
    return result


def flow_estimator(request: RenderRequest) -> FlowEstimator:
    """The request's optical flow estimator (DIS at its preset, or another by name)."""
    if request.flow_estimator == "dis":
        return DISFlow(request.flow_preset)
    return create_flow_estimator(request.flow_estimator)


def flow_clip_key(clip_id: str, info: MediaInfo, size: tuple[int, int]) -> str:
    """The flow cache's key for the clip's frames at `size` (the clip's own size keeps the
    plain clip id, as before render sizes existed)."""
    return clip_id if size == (info.display_width, info.display_height) else f"{clip_id}@{size}"


def segment_context(request: RenderRequest, estimator, clip_id: str, size: tuple[int, int]) -> str:
    """What every propagated segment of this render depends on besides its keys."""
    settings = estimator.settings_key(), repr(request.propagation), str(size)
    return text_hash(clip_id, *settings, f"propagation {ALGORITHM_VERSION}")


def render_key_preview(
    request: RenderRequest,
    number: int,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
    log: LogCallback = ignore_log,
) -> np.ndarray:
    """Frame `number` rendered as a key on its own (as the first key of a render), with its
    per-key overrides: to try settings on one frame before rendering the clip."""
    frame, frame_count = _key_frame(request, number)
    renderer = request_renderer(request, frame_count, log)
    params = dict(request.key_params).get(number, KeyParams())
    return _render_alone(renderer, frame, number, params, progress, cancel)


def render_key_variations(
    request: RenderRequest,
    number: int,
    seeds: Sequence[int],
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
    log: LogCallback = ignore_log,
) -> list[tuple[int, np.ndarray]]:
    """Frame `number` rendered as a key on its own once for each of `seeds` (the model loaded
    once), with its other per-key overrides: to choose a seed. Only diffusion keys vary."""
    if request.renderer.kind != "diffusion":
        raise ZvsError(
            "only diffusion keys change with the seed",
            hint="choose the Stable Diffusion key renderer to try seeds",
        )
    frame, frame_count = _key_frame(request, number)
    renderer = request_renderer(request, frame_count, log)
    params = dict(request.key_params).get(number, KeyParams())
    variations = []
    for index, seed in enumerate(seeds):
        log(f"seed {seed} ({index + 1} of {len(seeds)})")
        image = _render_alone(renderer, frame, number, replace(params, seed=seed), progress, cancel)
        variations.append((seed, image))
    return variations


def frame_infotext(
    request: RenderRequest, number: int, size: tuple[int, int], keys: Sequence[int]
) -> str | None:
    """A1111's infotext of output frame `number` (`size` (width, height)) as `request`
    renders it with key frames `keys`: a key's own settings (its overrides in), a propagated
    frame's global ones and the keys it comes from. None unless diffusion renders the keys."""
    spec = request.renderer.diffusion
    if request.renderer.kind != "diffusion" or spec is None:
        return None
    from zvstudio.diffusion.infotext import key_infotext
    from zvstudio.diffusion.sampler import settings_with_overrides
    from zvstudio.keyrender import working_size

    extra: dict[str, object] = {"Source clip": Path(request.source).name, "Frame": number}
    around = [] if number in keys else keys_around(keys, number, number)
    if around:
        extra["Propagated from"] = "keys " + " and ".join(map(str, around))
        params = None
    else:
        params = dict(request.key_params).get(number)
    settings = settings_with_overrides(spec.settings, params)
    key_size = working_size(size[1], size[0], settings.key_size)[::-1]
    return key_infotext(spec, settings, key_size, extra)


def request_renderer(request: RenderRequest, frame_count: int, log: LogCallback) -> KeyRenderer:
    """The request's key renderer, for a clip of `frame_count` frames."""
    return create_key_renderer(request.renderer, log, request.matte, frame_count)


def _key_frame(request: RenderRequest, number: int) -> tuple[np.ndarray, int]:
    """(frame `number` at the render's size, the clip's frame count)."""
    info = probe(request.source)
    with VideoReader(request.source, info=info, output_size=request.frame_size(info)) as reader:
        if not 0 <= number < len(reader):
            raise ZvsError(f"frame {number} is outside the clip's frames 0..{len(reader) - 1}")
        return reader.frame(number), len(reader)


def _render_alone(renderer, frame, number, params, progress, cancel) -> np.ndarray:
    """One key rendered as the first of a render (no references)."""
    cancel = cancel or CancelToken()
    try:
        return renderer.render(frame, KeyContext(number, params=params), progress, cancel)
    except (RenderCancelled, ZvsError):
        raise
    except Exception as exc:
        raise StageError("keys", number, exc) from exc


def _small_frame_cache(info: MediaInfo) -> FrameCache:
    """Room for a few frames: keys are read once each, so a large cache would only grow with
    the clip's length (peak RAM must not)."""
    return FrameCache(max_bytes=4 * 3 * info.display_width * info.display_height)


def _every_frame(reader, renderer, first, last, progress, cancel):
    """Every frame rendered on its own by the key renderer (per-frame stylizers)."""
    total = last - first + 1
    progress(Progress("render", 0, total, f"rendering {total} frames"))
    anchor = previous = None
    for done, (number, frame) in enumerate(reader.frames(first, last + 1), start=1):
        cancel.raise_if_cancelled()
        context = KeyContext(number, anchor=anchor, previous=previous)
        try:
            result = renderer.render(frame, context, cancel=cancel)
        except RenderCancelled:
            raise
        except Exception as exc:
            raise StageError("render", number, exc) from exc
        previous = RenderedKey(number, frame, result)
        anchor = anchor or previous
        progress(Progress("render", done, total, image=result))
        yield number, result
