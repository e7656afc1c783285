"""A per-clip disk cache of optical flows: each flow is computed once per clip and settings.

Layout: <root>/<clip key hash>/<settings hash>/{i}_{j}.npy holds F_{i->j}, where root defaults
to cache_root()/"flows". Flows are stored as float16: its 10-bit mantissa keeps 1/32 px steps up
to 64 px of motion (1/16 px up to 128 px), far below what propagation can tell apart, at half
the disk space and read time of float32.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from zvstudio import diskcache
from zvstudio.flow.base import FlowEstimator
from zvstudio.flow.ops import resize_flow
from zvstudio.hashing import text_hash
from zvstudio.paths import cache_root


class FlowCache:
    """Flows between frames of one clip, computed by `estimator` on demand and kept on disk.

    `clip_key` identifies the clip's content (e.g. its file hash plus the decode settings).
    With `max_side`, frames whose long side is larger are downscaled to it for the estimate and
    the flow is resized back: flow at 1080p is slow and gains nothing for propagation.
    Safe for concurrent use: a pair of frames is estimated by one thread at a time, and files
    appear by an atomic rename, so readers (other processes too) never see half a file.
    """

    def __init__(
        self,
        estimator: FlowEstimator,
        clip_key: str,
        root: Path | None = None,
        max_side: int | None = None,
    ) -> None:
        if max_side is not None and max_side < 16:
            raise ValueError(f"max_side must be at least 16, got {max_side}")
        self.estimator = estimator
        self.max_side = max_side
        settings = text_hash(estimator.settings_key(), f"max_side={max_side}")
        self.folder = Path(root or cache_root() / "flows") / text_hash(clip_key) / settings
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._pair_locks: dict[tuple[int, int], threading.Lock] = {}

    def path(self, i: int, j: int) -> Path:
        """Where F_{i->j} is stored."""
        return self.folder / f"{i}_{j}.npy"

    def get(self, i: int, j: int, frame_i: np.ndarray, frame_j: np.ndarray) -> np.ndarray:
        """F_{i->j} as float32 HxWx2, from disk or computed (and stored)."""
        if i == j:
            return np.zeros((*frame_i.shape[:2], 2), np.float32)
        # One estimate per pair at a time: the two directions of a segment, run at once,
        # meet in its middle and ask for the same flows.
        with self._pair_lock(i, j):
            return self._get(i, j, frame_i, frame_j)

    def _pair_lock(self, i: int, j: int) -> threading.Lock:
        with self._lock:
            return self._pair_locks.setdefault((min(i, j), max(i, j)), threading.Lock())

    def _get(self, i: int, j: int, frame_i: np.ndarray, frame_j: np.ndarray) -> np.ndarray:
        cached = self._load(self.path(i, j), frame_i.shape[:2])
        if cached is not None:
            with self._lock:
                self.hits += 1
            return cached
        with self._lock:
            self.misses += 1
        if abs(i - j) == 1:
            # Consecutive flows are always needed both ways: estimate them together.
            forward, backward = self._estimate(frame_i, frame_j)
            self._store(self.path(j, i), backward)
        else:
            forward = self._estimate(frame_i, frame_j, both=False)[0]
        self._store(self.path(i, j), forward)
        # Return what a later hit would return, so results do not depend on the cache state.
        return forward.astype(np.float16).astype(np.float32)

    def _estimate(self, a: np.ndarray, b: np.ndarray, both: bool = True) -> tuple[np.ndarray, ...]:
        height, width = a.shape[:2]
        scale = 1.0
        if self.max_side is not None and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            a = cv2.resize(a, size, interpolation=cv2.INTER_AREA)
            b = cv2.resize(b, size, interpolation=cv2.INTER_AREA)
        flows = self.estimator.compute_pair(a, b) if both else (self.estimator.compute(a, b),)
        if scale != 1.0:
            flows = tuple(resize_flow(f, (width, height)) for f in flows)
        return flows

    @staticmethod
    def _load(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
        try:
            flow = diskcache.load_arrays(path)[""]
        except (OSError, ValueError, KeyError):
            return None  # absent or unreadable: compute it (again)
        if flow.shape != (*shape, 2):
            return None
        return flow.astype(np.float32)

    def _store(self, path: Path, flow: np.ndarray) -> None:
        """Keep `flow` at `path`; a full or read-only disk only costs the caching (the flow is
        estimated again when asked for), never the render."""
        diskcache.write_entry(path, lambda stream: np.save(stream, flow.astype(np.float16)))
