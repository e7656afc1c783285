"""What a clip's frames say about where its keys go, found once per clip and range and cached.

- Shot cuts: keys placed "every K frames" start again at each shot (`keys_by_shot`), so no
  shot is left without a key of its own: nothing can be propagated into a shot from a key in
  another.
- Motion: the predicted propagation errors (`KeyCosts`) from which keys are placed where the
  motion needs them (`keys_by_motion`).
- The editor's preview proxy is made in the same decode as the cuts (`prepare_clip`).
- Sound: each frame's peak and RMS level (`clip_levels`), for the timeline's waveform, where
  artists see the beats and accents they put keys on.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from zvstudio import diskcache
from zvstudio.hashing import text_hash
from zvstudio.media import MediaInfo, Proxy, VideoReader, build_proxy, clip_hash, fit_size
from zvstudio.media.audio import frame_levels
from zvstudio.media.cuts import SCORE_WIDTH, CutFinder
from zvstudio.paths import cache_root
from zvstudio.progress import CancelToken, Progress, ProgressCallback, ignore_progress
from zvstudio.propagate.placement import (
    KeyCosts,
    MotionAnalyser,
    keys_by_motion,
    predicted_errors,
)

# Raise them when the detector or the analysis changes its results, so no older one is reused.
DETECTOR_VERSION = 1
MOTION_VERSION = 3
LEVELS_VERSION = 1
# Frames are decoded this small for both (the finder and the analyser shrink them further).
DECODE_SIDE = 2 * SCORE_WIDTH


def cuts_path(clip_id: str, first: int, last: int, root: Path | None = None) -> Path:
    """Where the cuts of frames first..last of the clip `clip_id` are kept."""
    name = text_hash(clip_id, str(first), str(last), f"cuts {DETECTOR_VERSION}")
    return (root or cache_root()) / "cuts" / f"{name}.json"


def cached_cuts(
    clip_id: str, first: int, last: int, frame_count: int | None = None
) -> list[int] | None:
    """The cuts found before in first..last, or None when they were not (or cannot be read).
    With the clip's `frame_count`, the cuts found for the whole clip (as the editor finds
    them) answer for any range of it."""
    ranges = [(first, last)]
    if frame_count is not None and (first, last) != (0, frame_count - 1):
        ranges.append((0, frame_count - 1))
    for start, stop in ranges:
        try:
            cuts = json.loads(cuts_path(clip_id, start, stop).read_text())["cuts"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(cuts, list):
            return [int(c) for c in cuts if first < int(c) <= last]
    return None


def clip_cuts(
    source: Path,
    clip_id: str,
    first: int,
    last: int,
    info: MediaInfo | None = None,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
) -> list[int]:
    """The first frame of each shot after the first within first..last (frame numbers).

    Decodes the range once (about as long as playing it at a few times real speed, with only
    a few frames held), unless the cache has it."""
    cuts = cached_cuts(clip_id, first, last, info.frame_count if info is not None else None)
    if cuts is not None:
        return cuts
    finder = CutFinder()
    stage = ("cuts", "finding shot cuts")
    _each_frame(source, (first, last), DECODE_SIDE, finder.add, stage, info, progress, cancel)
    return _store_cuts(clip_id, first, last, finder)


class PreparedClip(NamedTuple):
    """What the editor needs of a clip it opens: its preview proxy and shot cuts."""

    proxy: Proxy
    cuts: list[int]


def prepare_clip(
    source: Path,
    clip_id: str,
    info: MediaInfo,
    proxy_side: int,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
) -> PreparedClip:
    """The clip's preview proxy (`proxy_side` pixels on its longer side) and the cuts of its
    whole length, from the cache or else from one decode of the clip for both: decoding is
    most of either's cost (a 1080p clip decodes at about 180 frames/s on 2 cores)."""
    last = info.frame_count - 1
    cuts = cached_cuts(clip_id, 0, last, info.frame_count)
    finder = CutFinder() if cuts is None else None
    with VideoReader(source, info=info) as reader:
        each_frame = finder.add if finder is not None else None
        proxy = build_proxy(reader, proxy_side, None, progress, cancel, each_frame)
    if finder is not None and finder.frames == info.frame_count:
        cuts = _store_cuts(clip_id, 0, last, finder)
    elif cuts is None:  # the proxy was built before: the cuts need a decode of their own
        cuts = clip_cuts(source, clip_id, 0, last, info, progress, cancel)
    return PreparedClip(proxy, cuts)


def _store_cuts(clip_id: str, first: int, last: int, finder: CutFinder) -> list[int]:
    cuts = [first + c for c in finder.cuts()]
    # A full or read-only disk only costs finding them again next time.
    payload = json.dumps({"cuts": cuts}).encode()
    diskcache.write_entry(cuts_path(clip_id, first, last), lambda stream: stream.write(payload))
    return cuts


def levels_path(clip_id: str, root: Path | None = None) -> Path:
    """Where the sound levels of the clip `clip_id` are kept."""
    name = text_hash(clip_id, f"levels {LEVELS_VERSION}")
    return (root or cache_root()) / "levels" / f"{name}.npy"


def clip_levels(
    source: Path,
    clip_id: str,
    info: MediaInfo,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
) -> np.ndarray | None:
    """Each frame's sound level, (frames, 2) peak and RMS, from the cache after the first
    time; None for a clip without sound."""
    if not info.has_audio:
        return None
    path = levels_path(clip_id)
    try:
        levels = diskcache.load_arrays(path)[""]
        if levels.shape == (info.frame_count, 2):
            diskcache.touch(path)
            return levels
    except (OSError, ValueError):
        pass  # not measured yet, or damaged: measure again
    levels = frame_levels(source, info.index, progress, cancel)
    if levels is not None:
        diskcache.write_entry(path, lambda stream: np.save(stream, levels))
    return levels


def motion_path(clip_id: str, first: int, last: int, window: int, root: Path | None = None) -> Path:
    """Where the motion analysis of frames first..last (keys up to `window` apart) is kept."""
    name = text_hash(clip_id, str(first), str(last), str(window), f"motion {MOTION_VERSION}")
    return (root or cache_root()) / "motion" / f"{name}.npz"


def cached_motion(clip_id: str, first: int, last: int, window: int) -> KeyCosts | None:
    """The motion analysis made before, or None when it was not (or cannot be read)."""
    path = motion_path(clip_id, first, last, window)
    try:
        stored = diskcache.load_arrays(path, ("forward", "backward"))
        costs = KeyCosts(stored["forward"], stored["backward"])
    except (OSError, ValueError, KeyError):
        return None
    expected = (last - first + 1, window + 1)
    if costs.forward.shape != expected or costs.backward.shape != expected:
        return None
    diskcache.touch(path)
    return costs


def _store_motion(clip_id: str, first: int, last: int, costs: KeyCosts) -> None:
    def write(stream) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, forward=costs.forward, backward=costs.backward)
        stream.write(buffer.getvalue())

    diskcache.write_entry(motion_path(clip_id, first, last, costs.window), write)


@dataclass(frozen=True)
class MotionAnalysis:
    """Frames first.. of a clip: their shot cuts (frame numbers) and motion analysis."""

    first: int
    cuts: tuple[int, ...]
    costs: KeyCosts

    def keys(self, interval: int) -> list[int]:
        """As many keys as every `interval` frames from each shot cut gives, placed where the
        motion needs them."""
        return keys_by_motion(self.costs, self.first, interval, self.cuts)

    def quality(self, keys: Iterable[int]) -> np.ndarray:
        """Each frame's predicted propagation quality with `keys` (frame numbers), as PSNR in
        dB of the footage carried from them: inf on a key, 0 where no key is near enough to
        tell (see `predicted_errors`)."""
        offsets = [k - self.first for k in keys]
        errors = predicted_errors(self.costs, offsets, [c - self.first for c in self.cuts])
        with np.errstate(divide="ignore"):
            decibels = 10 * np.log10(255.0**2 / errors)
        decibels[np.isinf(errors)] = 0.0
        return decibels


def analyse_motion(
    source: Path,
    first: int,
    last: int,
    window: int,
    info: MediaInfo | None = None,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
) -> MotionAnalysis:
    """The shot cuts and motion of frames first..last, for keys up to `window` apart: from
    the cache, else found while decoding the range once (both in the same pass when neither
    was found before), at a small size and a few times faster than real time."""
    clip_id = clip_hash(source)
    cuts = cached_cuts(clip_id, first, last, info.frame_count if info is not None else None)
    costs = cached_motion(clip_id, first, last, window)
    if costs is None:
        analyser = MotionAnalyser(window)
        finder = CutFinder() if cuts is None else None

        def use(frame: np.ndarray) -> None:
            analyser.add(frame)
            if finder is not None:
                finder.add(frame)

        stage = ("motion", "measuring motion")
        _each_frame(source, (first, last), DECODE_SIDE, use, stage, info, progress, cancel)
        costs = analyser.costs()
        _store_motion(clip_id, first, last, costs)
        if finder is not None:
            cuts = _store_cuts(clip_id, first, last, finder)
    if cuts is None:
        cuts = clip_cuts(source, clip_id, first, last, info, progress, cancel)
    return MotionAnalysis(first, tuple(cuts), costs)


def _each_frame(
    source: Path,
    frames: tuple[int, int],
    side: int,
    use: Callable[[np.ndarray], None],
    stage: tuple[str, str],
    info: MediaInfo | None,
    progress: ProgressCallback,
    cancel: CancelToken | None,
) -> None:
    """`use(frame)` for `frames` first..last in order, decoded at most `side` pixels wide or
    high (scaled while decoding: cheaper), reporting progress as `stage` (name, message)."""
    first, last = frames
    total = last - first + 1
    with VideoReader(source, info=info) as reader:
        small = fit_size(*reader.size, side)
        for number, frame in reader.frames(first, last + 1, size=small):
            if cancel is not None:
                cancel.raise_if_cancelled()
            use(frame)
            progress(Progress(stage[0], number - first + 1, total, stage[1]))
