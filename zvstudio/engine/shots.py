"""A clip's shot cuts, found once per clip and range and kept in the cache.

Keys placed "every K frames" start again at each shot (`keys_by_shot`), so no shot is left
without a key of its own: nothing can be propagated into a shot from a key in another.
"""

from __future__ import annotations

import json
from pathlib import Path

from zvstudio import diskcache
from zvstudio.hashing import text_hash
from zvstudio.media import MediaInfo, VideoReader, fit_size
from zvstudio.media.cuts import SCORE_WIDTH, CutFinder
from zvstudio.paths import cache_root
from zvstudio.progress import CancelToken, Progress, ProgressCallback, ignore_progress

# Raise it when the detector changes what it finds, so no older result is reused.
DETECTOR_VERSION = 1
DECODE_SIDE = 2 * SCORE_WIDTH  # frames are decoded this small (the finder shrinks them further)


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
    finder, total = CutFinder(), last - first + 1
    with VideoReader(source, info=info) as reader:
        small = fit_size(*reader.size, DECODE_SIDE)  # scaled while decoding: cheaper
        for number, frame in reader.frames(first, last + 1, size=small):
            if cancel is not None:
                cancel.raise_if_cancelled()
            finder.add(frame)
            progress(Progress("cuts", number - first + 1, total, "finding shot cuts"))
    cuts = [first + c for c in finder.cuts()]
    _store(cuts_path(clip_id, first, last), cuts)
    return cuts


def _store(path: Path, cuts: list[int]) -> None:
    """Keep `cuts`; a full or read-only disk only costs finding them again next time."""
    diskcache.write_entry(path, lambda stream: stream.write(json.dumps({"cuts": cuts}).encode()))
