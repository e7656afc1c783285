"""Shot cuts: where consecutive frames belong to different shots.

Nothing can be carried across a cut by optical flow, so propagation keeps each key on its own
side of one, and key placement puts a key at the start of every shot.

The measure is PySceneDetect's content score (the mean absolute HSV difference of two frames,
here at a small size, hue compared on its circle) with its adaptive rule: a pair is a cut when
its score is both high in absolute terms and several times that of the neighbouring pairs, so
fast motion, which raises every score around it, is not mistaken for one. A flash (a cut out
and straight back to frames like those before) is no cut. PySceneDetect itself is not used: it
requires the GUI build of OpenCV, whose Qt clashes with PySide6's.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import cv2
import numpy as np

SCORE_WIDTH = 128  # frames are compared at this width: enough for content, cheap, denoised
MIN_SCORE = 15.0  # a cut changes the frame's content at least this much (PySceneDetect's 15)
NEIGHBOUR_RATIO = 3.0  # ... and this many times more than the neighbouring pairs do
NEIGHBOURS = 2  # pairs on each side that the ratio compares with
FLASH_LENGTH = 3  # a cut and a cut back at most this many frames apart may be a flash

__all__ = [
    "CutFinder",
    "change_scores",
    "find_cuts",
    "keys_by_shot",
    "shot_cuts",
    "shot_first",
    "small_hsv",
]


def small_hsv(rgb: np.ndarray) -> np.ndarray:
    """The frame at `SCORE_WIDTH` pixels wide in HSV (OpenCV's ranges), float32."""
    height, width = rgb.shape[:2]
    size = (SCORE_WIDTH, max(1, round(height * SCORE_WIDTH / width)))
    small = cv2.resize(np.ascontiguousarray(rgb[..., :3]), size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2HSV).astype(np.float32)


def content_score(a: np.ndarray, b: np.ndarray) -> float:
    """How much two `small_hsv` frames differ: the mean absolute difference of hue (on its
    circle, scaled to 0-255 like the others), saturation and value. Hue counts only as far as
    both pixels are coloured and lit, and saturation as far as both are lit: in dark or grey
    pixels they are noise, which would make a fade to black look like a cut."""
    lit = np.minimum(a[..., 2], b[..., 2]) / 255.0
    coloured = np.minimum(a[..., 1], b[..., 1]) / 255.0 * lit
    hue = np.abs(a[..., 0] - b[..., 0])
    hue = np.minimum(hue, 180.0 - hue) * (255.0 / 90.0)
    saturation = np.abs(a[..., 1] - b[..., 1]) * lit
    value = np.abs(a[..., 2] - b[..., 2])
    return float(((hue * coloured).mean() + saturation.mean() + value.mean()) / 3)


def change_scores(frames: Iterable[np.ndarray]) -> np.ndarray:
    """`content_score` of each consecutive pair of RGB frames (one fewer than frames)."""
    return np.array(_finder_of(frames).scores, np.float64)


def find_cuts(
    scores: Sequence[float], jump: Callable[[int, int], float] | None = None
) -> list[int]:
    """The indices i (frames i-1 and i are in different shots) where `scores` (from
    `change_scores`) show a cut. With `jump(i, j)`, the `content_score` of frames i and j,
    flashes are left out."""
    values = np.asarray(scores, np.float64)
    cuts = []
    for i, score in enumerate(values):
        around = np.concatenate(
            [values[max(0, i - NEIGHBOURS) : i], values[i + 1 : i + 1 + NEIGHBOURS]]
        )
        baseline = float(around.mean()) if around.size else 0.0
        if score >= MIN_SCORE and score >= NEIGHBOUR_RATIO * baseline:
            cuts.append(i + 1)
    return _without_flashes(cuts, jump) if jump is not None else cuts


def _without_flashes(cuts: list[int], jump: Callable[[int, int], float]) -> list[int]:
    """`cuts` less each close pair whose outer frames look alike (a flash, a frame dropped in
    from elsewhere): the shot before the first goes on after the second."""
    kept = list(cuts)
    for first, second in itertools.pairwise(cuts):
        close = second - first <= FLASH_LENGTH and first in kept
        if close and jump(first - 1, second) < MIN_SCORE:
            kept.remove(first)
            kept.remove(second)
    return kept


class CutFinder:
    """Finds the cuts of frames given one at a time, holding only a few of them: for a whole
    clip streamed from its reader."""

    def __init__(self) -> None:
        self._recent: deque[np.ndarray] = deque(maxlen=FLASH_LENGTH + 1)
        self.scores: list[float] = []  # frame j-1 to frame j, for each frame j > 0
        # For each frame j, its scores to frames j-2, j-3, ... (what the flash check needs).
        self._jumps: list[tuple[float, ...]] = []

    @property
    def frames(self) -> int:
        """How many frames were added."""
        return len(self._jumps)

    def add(self, rgb: np.ndarray) -> None:
        small = small_hsv(rgb)
        scores = [content_score(earlier, small) for earlier in reversed(self._recent)]
        if scores:
            self.scores.append(scores[0])
        self._jumps.append(tuple(scores[1:]))
        self._recent.append(small)

    def cuts(self) -> list[int]:
        """The cuts so far, as offsets into the frames added (see `find_cuts`)."""
        return find_cuts(self.scores, lambda i, j: self._jumps[j][j - i - 2])


def shot_cuts(frames: Iterable[np.ndarray]) -> list[int]:
    """The cuts among consecutive RGB `frames`, as offsets into it (see `find_cuts`)."""
    return _finder_of(frames).cuts()


def _finder_of(frames: Iterable[np.ndarray]) -> CutFinder:
    finder = CutFinder()
    for frame in frames:
        finder.add(frame)
    return finder


def keys_by_shot(first: int, last: int, interval: int, cuts: Iterable[int]) -> list[int]:
    """Key frames for first..last: every `interval` frames counted from the start of each shot
    (`cuts`: the first frame of each shot after the first), so every shot starts with a key."""
    starts = sorted({first, *(c for c in cuts if first < c <= last)})
    ends = [*(s - 1 for s in starts[1:]), last]
    return [k for s, e in zip(starts, ends, strict=True) for k in range(s, e + 1, interval)]


def shot_first(frame: int, first: int, cuts: Iterable[int]) -> int:
    """The first frame of `frame`'s shot, within a range that starts at `first`."""
    return max([first, *(c for c in cuts if first < c <= frame)])
