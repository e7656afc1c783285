"""Rendered key frames on disk, named by slot (clip, size, frame) and identity.

A key's identity is a hash of the clip, the frame number, the renderer's settings with the
key's own overrides and, for renderers whose keys refer to earlier keys (diffusion), the
identities of those keys. Re-rendering after a change, or after a crash, takes every key whose
identity is unchanged from here instead of running the model again. Keys are lossless PNG,
written under a temporary name and renamed, so a crash never leaves half an image.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from zvstudio import diskcache
from zvstudio.paths import cache_root


class KeyCache:
    """Key images in the "keys" folder of the cache `root` (default: the user's cache); the
    segment cache's eviction bounds them with everything else."""

    def __init__(self, root: Path | None = None) -> None:
        self.folder = (root or cache_root()) / "keys"
        self.hits = 0
        self.misses = 0

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.png"

    def names(self) -> set[str]:
        """The names of every cached key (one directory listing)."""
        try:
            entries = os.scandir(self.folder)
        except OSError:
            return set()
        with entries:
            return {e.name[:-4] for e in entries if e.name.endswith(".png") and e.is_file()}

    def load(self, name: str, size: tuple[int, int]) -> np.ndarray | None:
        """The key `name` as RGB uint8 if cached at `size` (width, height), else None."""
        path = self.path(name)
        image = cv2.imread(str(path)) if path.is_file() else None
        if image is None or (image.shape[1], image.shape[0]) != tuple(size):
            self.misses += 1
            return None
        self.hits += 1
        diskcache.touch(path)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def store(self, name: str, image: np.ndarray) -> None:
        """Keep `image`; a full or read-only disk only means that the key is not cached."""
        path = self.path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            ok, data = cv2.imencode(
                ".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1]
            )
            if not ok:
                return
            handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as stream:
                    stream.write(data.tobytes())
                os.replace(temp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        except OSError:
            return
