"""Propagated segments on disk, by a hash of everything that determines them.

A segment (a key and the frames up to the next key) depends only on the clip, the two keys'
identities, the propagation settings and the flow estimator. Caching segments means that
changing one key recomputes only the two segments that touch it, and that a cancelled or
crashed render resumes from the segments already finished. Frames are stored as lossless PNG;
each segment folder is written under a temporary name and renamed when complete, so a crash
never leaves a partial segment that looks finished.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from zvstudio import diskcache
from zvstudio.hashing import text_hash
from zvstudio.paths import cache_root


class SegmentCache:
    """Segments of one clip under one propagation setup (`context`: clip, flow, settings).

    Segments live in the "segments" folder of the cache `root` (default: the user's cache),
    which `diskcache` bounds by `limit` bytes across all its kinds, least recently used first.
    """

    def __init__(self, context: str, root: Path | None = None, limit: int | None = None) -> None:
        self.cache = root or cache_root()
        self.root = self.cache / "segments" / text_hash(context)
        self.limit = diskcache.cache_limit() if limit is None else limit
        self.hits = 0
        self.misses = 0

    def folder(self, start: int, stop: int, key_ids: tuple[str, ...]) -> Path:
        """Where the segment start..stop made from the keys `key_ids` is (or would be) kept."""
        return self.root / f"{start}-{stop}-{text_hash(*key_ids)}"

    def has(self, start: int, stop: int, key_ids: tuple[str, ...]) -> bool:
        """Whether the segment is kept (without reading it or counting a hit or miss)."""
        return self.folder(start, stop, key_ids).is_dir()

    def load(self, start: int, stop: int, key_ids: tuple[str, ...]) -> dict[int, np.ndarray] | None:
        folder = self.folder(start, stop, key_ids)
        if not folder.is_dir():
            self.misses += 1
            return None
        frames = {}
        for number in range(start, stop + 1):
            image = cv2.imread(str(folder / f"{number}.png"))
            if image is None:  # damaged: recompute
                self.misses += 1
                return None
            frames[number] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        self.hits += 1
        diskcache.touch(folder)  # recently used: evicted last
        return frames

    def store(
        self, start: int, stop: int, key_ids: tuple[str, ...], frames: dict[int, np.ndarray]
    ) -> None:
        folder = self.folder(start, stop, key_ids)
        if folder.is_dir():
            return
        partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            for number, image in frames.items():
                cv2.imwrite(
                    str(partial / f"{number}.png"),
                    cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_PNG_COMPRESSION, 1],
                )
            os.replace(partial, folder)
        except OSError:
            # A full disk must not fail the render: the segment just is not cached.
            shutil.rmtree(partial, ignore_errors=True)
        self.evict()

    def evict(self) -> None:
        """Delete the least recently used cache entries until the cache fits its limit."""
        diskcache.evict(self.cache, self.limit)

    def size(self) -> int:
        """Bytes held by all cached segments."""
        return diskcache.usage(self.cache)["segments"]
