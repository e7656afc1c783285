"""Propagating keys over a whole clip, segment by segment, streaming frames out in order.

Memory holds two segments (the frames between two neighbouring keys) at a time, whatever the
clip's length: the one being carried, and the next, whose flows are being estimated
meanwhile. Frames before the first key and after the last are carried from that key alone;
frames between two keys are carried from both and blended.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from zvstudio.errors import RenderCancelled, StageError, ZvsError
from zvstudio.flow.cache import FlowCache
from zvstudio.hashing import text_hash
from zvstudio.media.cuts import shot_cuts
from zvstudio.progress import CancelToken, Progress, ProgressCallback, ignore_progress
from zvstudio.propagate.blend import histogram_preserving_blend, monotone_masks, selection_mask
from zvstudio.propagate.cache import SegmentCache
from zvstudio.propagate.pixels import Pixels, pixels_for
from zvstudio.propagate.poisson import poisson_blend
from zvstudio.propagate.segment import (
    BLEND_MODES,
    Propagated,
    PropagationSettings,
    carry_key,
    soft_weights,
    style_follows_brightness,
    weighted_mix,
)

# Part of every cached segment's identity: raise it when a change alters the frames that the
# same keys, settings and clip propagate to, so no segment cached before it is reused.
# 2: keys are no longer carried across shot cuts.
ALGORITHM_VERSION = 2


def load_key_image(
    path: str | os.PathLike[str],
    size: tuple[int, int],
    painted_at: tuple[int, int] | None = None,
) -> tuple[np.ndarray, str]:
    """Read a key image as RGB uint8 at `size` (width, height).

    Returns the image and a warning ("" if none): an image of another size is resized, since
    artists often paint at another resolution, and the user is told, unless it is the size
    `painted_at` (the clip's own, when propagating at a smaller size).
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # unlike imread, handles any path on Windows
    except OSError as exc:
        raise ZvsError(f"cannot read key image {path}: {exc.strerror or exc}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ZvsError(f"cannot read key image {path}: not an image file or damaged")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    height, width = image.shape[:2]
    if (width, height) == tuple(size):
        return image, ""
    shrinking = width * height > size[0] * size[1]
    resized = cv2.resize(
        image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    )
    if (width, height) == painted_at:
        return resized, ""
    warning = f"key image {path} is {width}x{height}, the clip {size[0]}x{size[1]}: resized"
    if abs(width / height - size[0] / size[1]) > 0.01 * size[0] / size[1]:
        warning += " (its aspect ratio differs, so it is stretched)"
    return resized, warning


def check_keys(keys: Mapping[int, np.ndarray], first: int, last: int) -> list[int]:
    """The key frame numbers in order; keys outside first..last are an error."""
    if not keys:
        raise ZvsError("at least one key frame is needed to propagate from")
    outside = sorted(k for k in keys if not first <= k <= last)
    if outside:
        raise ZvsError(f"key frame(s) {outside} outside the clip's frames {first}..{last}")
    return sorted(keys)


def _usable_cpus() -> int:
    """The CPUs this process may run on (a container or `taskset` may allow fewer than exist)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# Optical flow is most of propagation's time, and OpenCV's DIS releases the GIL and gains more
# from separate calls at once than from its own threads (on 2 cores: 0.10 s per 512x512 call
# with two at once, 0.14 s alone): estimate a segment's flows on every core.
FLOW_WORKERS = max(2, _usable_cpus())

T = TypeVar("T")


class _SegmentFrames:
    """The input frames of one stretch of the clip (`segment_spans`), and the flows that
    carrying its keys asks for: consecutive pairs (both ways at once) and, with `reanchor`,
    each frame's direct flow to the keys. They are estimated on the `pool`'s flow threads from
    the moment this is made, into the flow cache (results are not kept: holding them all
    would hold the segment's flows in RAM)."""

    def __init__(self, reader, span, flows: FlowCache, reanchor: bool, pool) -> None:
        start, stop, keys = span
        self.span = span
        self.frames = dict(reader.frames(min(start, *keys), max(stop, *keys) + 1))
        self.flows = flows
        numbers = sorted(self.frames)
        # Shot cuts between two keys (as frame numbers): `_between` carries neither key across.
        self.cuts = []
        if len(keys) == 2:
            self.cuts = [keys[0] + c for c in shot_cuts([self.frames[t] for t in numbers])]
        pairs = list(itertools.pairwise(numbers))
        if reanchor:
            pairs += [
                (t, key) for key in keys for t in numbers if abs(t - key) > 1 and t not in keys
            ]
        if len(self.cuts) == 1:  # then no frame is carried across it: skip those flows
            pairs = [(i, j) for i, j in pairs if (i < self.cuts[0]) == (j < self.cuts[0])]
        self.futures = [pool.submit(self._estimate, i, j) for i, j in pairs]

    def flow(self, i: int, j: int) -> np.ndarray:
        return self.flows.get(i, j, self.frames[i], self.frames[j])

    def _estimate(self, i: int, j: int) -> None:
        self.flow(i, j)

    def wait(self, cancel: CancelToken | None, meanwhile: Callable[[], T]) -> T:
        """Run `meanwhile()` while the flows are estimated, then wait for them; returns what
        `meanwhile` returned: the keys' images, so that rendering them (a GPU's work, with a
        diffusion model) and the flows (the CPU's) overlap."""
        result = meanwhile()
        for future in self.futures:
            if cancel is not None:
                cancel.raise_if_cancelled()
            future.result()
        return result


def _needs_flows(span: tuple[int, int, tuple[int, ...]]) -> bool:
    """Whether a stretch has frames to carry a key to (not just a key's own frame)."""
    start, stop, keys = span
    if len(keys) == 2:
        return keys[1] - keys[0] > 1
    return start != stop or start != keys[0]


def propagate_clip(
    reader,
    keys: Mapping[int, np.ndarray],
    flows: FlowCache,
    settings: PropagationSettings | None = None,
    first: int = 0,
    last: int | None = None,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
    cache: SegmentCache | None = None,
    key_ids: Mapping[int, str] | None = None,
    pixels: Pixels | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame number, RGB image) for every frame first..last, in order.

    `reader` provides `frames(start, stop)` like `VideoReader`; `keys` maps frame numbers to
    their rendered images (at the reader's size). With a `cache`, finished segments are kept
    on disk and reused; `key_ids` names each key's content (default: a hash of its pixels),
    so a cached segment is found without rendering its keys again. `pixels` overrides the
    backend of the per-pixel work that `settings.device` chooses.
    """
    settings = settings or PropagationSettings()
    if settings.blend not in BLEND_MODES:
        raise ZvsError(f"unknown blend mode {settings.blend!r}; choose {', '.join(BLEND_MODES)}")
    pixels = pixels or pixels_for(settings.device)
    last = len(reader) - 1 if last is None else last
    spans = segment_spans(check_keys(keys, 0, len(reader) - 1), first, last)
    total = last - first + 1
    done = 0
    pool = ThreadPoolExecutor(FLOW_WORKERS, thread_name_prefix="zvstudio-flow")
    try:
        ahead = None  # the next stretch to compute, its flows already under way
        for index, span in enumerate(spans):
            start, stop, involved = span
            results = None
            if cache is not None:
                ids = _segment_ids(involved, keys, key_ids)
                results = cache.load(start, stop, ids)
            if results is None:
                segment = ahead if ahead is not None and ahead.span == span else None
                if segment is None and _needs_flows(span):
                    segment = _SegmentFrames(reader, span, flows, settings.reanchor, pool)
                # The next stretch's flows queue behind this one's: no flow thread idles
                # while this stretch waits for its last flows or is carried and blended.
                ahead = _look_ahead(
                    spans[index + 1 :], reader, keys, flows, settings, pool, cache, key_ids
                )
                compute = partial(_compute_span, span, segment, keys, settings, cancel, pixels)
                results = _computed(compute, start, stop)
                if cache is not None:
                    cache.store(start, stop, ids, results)
            for number in range(max(start, first), min(stop, last) + 1):
                yield number, results[number]
                done += 1
                progress(Progress("propagate", done, total, image=results[number]))
    finally:
        pool.shutdown(cancel_futures=True)


def _segment_ids(involved, keys, key_ids) -> tuple[str, ...]:
    return tuple(key_ids[k] if key_ids else _pixels_id(keys[k]) for k in involved)


def _look_ahead(following, reader, keys, flows, settings, pool, cache, key_ids):
    """The first of the `following` stretches with its flows under way, or None: none left,
    nothing to carry, or cached already."""
    if not following or not _needs_flows(following[0]):
        return None
    start, stop, involved = following[0]
    if cache is not None and cache.has(start, stop, _segment_ids(involved, keys, key_ids)):
        return None
    return _SegmentFrames(reader, following[0], flows, settings.reanchor, pool)


def _computed(compute, start: int, stop: int) -> dict[int, np.ndarray]:
    """Run one segment's computation; a failure names the segment's frames."""
    try:
        return compute()
    except (RenderCancelled, StageError):
        raise
    except Exception as exc:
        raise StageError("propagate", start, exc, last=stop) from exc


def _pixels_id(image: np.ndarray) -> str:
    return text_hash(str(image.shape), hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest())


def segment_spans(
    order: Sequence[int], first: int, last: int
) -> list[tuple[int, int, tuple[int, ...]]]:
    """(start, stop, keys involved) of each stretch of first..last between the sorted keys
    `order`: before the first key (from it alone), between two keys (a key's own frame starts
    its segment), and after the last key.

    Keys may lie outside first..last: a stretch between two keys is whole even where it
    reaches outside, so the frames in first..last come out as a render of the whole clip
    gives them (and share its cache); stretches that miss first..last are left out."""
    low, high = min(first, order[0]), max(last, order[-1])
    spans = []
    if low < order[0]:
        spans.append((low, order[0] - 1, (order[0],)))
    spans += [(a, b - 1, (a, b)) for a, b in itertools.pairwise(order)]
    spans.append((order[-1], high, (order[-1],)))
    return [span for span in spans if span[0] <= last and span[1] >= first]


def _compute_span(span, segment, keys, settings, cancel, pixels) -> dict[int, np.ndarray]:
    """{frame: image} for one stretch of the clip (`segment_spans`), from its `segment`
    (None where `_needs_flows` says the stretch is just a key's own frame)."""
    start, stop, involved = span
    if segment is None:
        return {involved[0]: keys[involved[0]]}
    if len(involved) == 2:
        return _between(segment, keys, *involved, settings, cancel, pixels)
    key = involved[0]
    if start < key:  # before the first key; its own frame belongs to the next stretch
        results = _one_way(segment, keys, key, start, settings, cancel, pixels)
        results.pop(key, None)
        return results
    return _one_way(segment, keys, key, stop, settings, cancel, pixels)


def _one_way(segment, keys, key, end, settings, cancel, pixels) -> dict[int, np.ndarray]:
    """Frames from `key` to `end` (either side of it), carried from that key alone."""
    image = segment.wait(cancel, lambda: keys[key])
    step = 1 if end > key else -1
    targets = list(range(key + step, end + step, step))
    results = {key: image}
    carried = carry_key(
        segment.frames, key, image, targets, segment.flow, settings, cancel, pixels=pixels
    )
    for number, result in carried:
        results[number] = pixels.download(result.image)
    return results


def _between(segment, keys, key_a, key_b, settings, cancel, pixels) -> dict[int, np.ndarray]:
    """Frames key_a..key_b-1: key_a itself and the frames carried from both keys, blended.

    Across a shot cut no flow can carry a key, so the frames of key_a's shot come from key_a
    alone and those of key_b's shot from key_b alone; only the frames of a shot between two
    cuts, which has no key of its own, are still carried from both.
    """
    images = segment.wait(cancel, lambda: {k: keys[k] for k in (key_a, key_b)})
    results = {key_a: images[key_a]}
    # Key a's shot ends at the first cut and key b's starts at the last; the frames between
    # (all of them, without a cut) come from both keys.
    cuts = segment.cuts
    first_cut, last_cut = (cuts[0], cuts[-1]) if cuts else (key_a + 1, key_b)
    own_a = list(range(key_a + 1, first_cut))
    inner = list(range(first_cut, last_cut))
    own_b = list(range(last_cut, key_b))
    forward, backward = _both_directions(
        segment, key_a, key_b, images, (own_a, inner, own_b), settings, cancel, pixels
    )
    for own, direction in ((own_a, forward), (own_b, backward)):
        results.update({t: pixels.download(direction[t].image) for t in own})
    if not inner:
        return results
    weights = [(key_b - t) / (key_b - key_a) for t in inner]
    if settings.blend == "histogram":
        forward, backward = (
            {t: _downloaded(result, pixels) for t, result in direction.items()}
            for direction in (forward, backward)
        )
        blended = _blend_histogram(inner, forward, backward, weights, segment)
    else:
        blended = {
            t: _blend_soft_selecting(forward[t], backward[t], weight_a, settings, pixels)
            for t, weight_a in zip(inner, weights, strict=True)
        }
    for t, (image, take_b) in blended.items():
        if settings.poisson:
            image_a, image_b = (pixels.download(d[t].image) for d in (forward, backward))
            image = poisson_blend(image, image_a, source_b=image_b, mask=take_b)
        results[t] = image
    return results


def _blend_soft_selecting(a, b, weight_a, settings, pixels) -> tuple[np.ndarray, np.ndarray]:
    """The soft blend, and where key b's result weighs more (whose gradients Poisson takes),
    as numpy arrays."""
    weight_map_a, weight_map_b = soft_weights(a, b, weight_a, settings, pixels)
    image = weighted_mix(a.image, b.image, weight_map_a, weight_map_b, pixels)
    return pixels.download(image), pixels.download(weight_map_b > weight_map_a)


def _downloaded(result: Propagated, pixels: Pixels) -> Propagated:
    """`result` as numpy arrays."""
    arrays = result.image, result.error, result.valid, result.flow
    return Propagated(*map(pixels.download, arrays))


def _both_directions(segment, key_a, key_b, keys, parts, settings, cancel, pixels):
    """The frames carried from key_a forwards and from key_b backwards, as two dicts: `parts`
    is (frames carried from key_a only, from both keys, from key_b only), in order.

    The two chains are independent, so they run at once: each computes the step flows from
    its own end and finds the other's in the cache past the middle, which halves the flow
    work's wall time. Patch synthesis on the CPU stays sequential: two threads of torch's own
    thread pools oversubscribe the cores and slow each other down badly.
    """

    frames = segment.frames
    follows = style_follows_brightness(frames[key_a], keys[key_a], frames[key_b], keys[key_b])

    def carry(key: int, targets: list[int], token) -> dict[int, Propagated]:
        carried = carry_key(
            frames, key, keys[key], targets, segment.flow, settings, token, follows, pixels
        )
        return dict(carried)

    own_a, inner, own_b = parts
    targets_a, targets_b = own_a + inner, (inner + own_b)[::-1]
    if settings.synthesis == "patch" and settings.patch.device == "cpu":
        return carry(key_a, targets_a, cancel), carry(key_b, targets_b, cancel)
    stop = _StopWith(cancel)
    with ThreadPoolExecutor(1, thread_name_prefix="zvstudio-backward") as pool:
        backward = pool.submit(carry, key_b, targets_b, stop)
        try:
            forward = carry(key_a, targets_a, stop)
        except BaseException:
            stop.stopped.set()  # no use finishing the other direction
            raise
        return forward, backward.result()


class _StopWith:
    """The cancel token of one of two directions run at once: it stops on the user's cancel
    (and waits while paused), or once the other direction failed."""

    def __init__(self, parent: CancelToken | None) -> None:
        self.parent = parent
        self.stopped = threading.Event()

    def raise_if_cancelled(self) -> None:
        if self.parent is not None:
            self.parent.raise_if_cancelled()
        if self.stopped.is_set():
            raise RenderCancelled("stopped: the other direction failed")


def _blend_histogram(inner, forward, backward, weights, segment):
    """Rerender-A-Video's blend: error-based selection made monotone in time, then the
    histogram-preserving Lab blend; {frame: (image, selection of key b)}."""
    masks = [
        selection_mask(_penalised(forward[t]), _penalised(backward[t]), weight)
        for t, weight in zip(inner, weights, strict=True)
    ]
    masks = monotone_masks(masks, [segment.flow(t, t - 1) for t in inner[1:]])
    return {
        t: (histogram_preserving_blend(forward[t].image, backward[t].image, mask, weight), mask)
        for t, mask, weight in zip(inner, masks, weights, strict=True)
    }


def _penalised(result: Propagated) -> np.ndarray:
    """The guide error, made prohibitive where the flow chain was occluded."""
    return result.error + 1e5 * ~result.valid
