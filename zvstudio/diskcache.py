"""The render cache on disk: its size, its limit and eviction, shared by every kind of entry.

Flows, rendered keys, propagated segments, preview proxies, shot cuts, motion analyses and
sound levels live in folders of their own under `cache_root()`; each is keyed by a hash of
exactly the inputs that determine it. They share one size limit ($ZVSTUDIO_CACHE_LIMIT_GB,
10 GB by default): when the cache grows past it, the least recently used entries are deleted
first, whatever their kind. Entries are touched when read, so what the current project uses
stays.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from zvstudio.paths import cache_root

DEFAULT_LIMIT_BYTES = 10 << 30

# Each kind's folder and how deep its entries sit below it (an entry is a file or a folder
# that is created and deleted as a whole).
KINDS = {
    "flows": 3,
    "keys": 1,
    "segments": 2,
    "proxies": 1,
    "cuts": 1,
    "motion": 1,
    "levels": 1,
}


def cache_limit() -> int:
    """The size the cache may grow to: $ZVSTUDIO_CACHE_LIMIT_GB, else 10 GB."""
    value = os.environ.get("ZVSTUDIO_CACHE_LIMIT_GB")
    try:
        return int(float(value) * (1 << 30)) if value else DEFAULT_LIMIT_BYTES
    except ValueError:
        return DEFAULT_LIMIT_BYTES


@dataclass(frozen=True)
class Entry:
    path: Path
    kind: str
    size: int
    used: float  # last use (modification time)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def entries(root: Path | None = None) -> list[Entry]:
    """Every finished entry (partial files, whose names start with '.', are left out)."""
    root = root or cache_root()
    found = []
    for kind, depth in KINDS.items():
        for path in (root / kind).glob("/".join(["*"] * depth)):
            if path.name.startswith("."):
                continue
            try:
                found.append(Entry(path, kind, _size(path), path.stat().st_mtime))
            except OSError:
                continue  # deleted meanwhile by another process
    return found


def usage(root: Path | None = None) -> dict[str, int]:
    """Bytes held by each kind of entry."""
    totals = dict.fromkeys(KINDS, 0)
    for entry in entries(root):
        totals[entry.kind] += entry.size
    return totals


def evict(root: Path | None = None, limit: int | None = None) -> int:
    """Delete the least recently used entries until the cache fits `limit`; returns the bytes
    freed."""
    limit = cache_limit() if limit is None else limit
    found = entries(root)
    total = sum(entry.size for entry in found)
    freed = 0
    for entry in sorted(found, key=lambda e: e.used):
        if total - freed <= limit:
            break
        _remove(entry.path)
        freed += entry.size
    return freed


def clear(root: Path | None = None) -> int:
    """Delete every entry; returns the bytes freed."""
    return evict(root, limit=0)


def write_entry(path: Path, write: Callable[[BinaryIO], None]) -> bool:
    """Write one cache entry with `write(stream)`, atomically: into a temporary file (whose
    name starts with '.', so it is never counted or evicted half-written) renamed into place.
    A full or read-only disk only costs the caching, never the work: returns False."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    except OSError:
        return False
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if not isinstance(exc, OSError):
            raise
        return False
    return True


# np.load parses each array's header with ast.literal_eval, which before CPython 3.11.8 and
# 3.12.1 is not thread-safe ("SystemError: AST constructor recursion depth mismatch",
# python/cpython#106905): a render's flow workers and the editor's status thread load arrays
# at once. Arrays from the cache are small, so loading them one at a time costs nothing.
_NUMPY_LOAD = threading.Lock()


def load_arrays(path: Path, names: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays of an .npy file (as "") or the named arrays of an .npz file, read whole.
    Raises OSError, ValueError or KeyError for a missing, damaged or incomplete entry."""
    with _NUMPY_LOAD:
        loaded = np.load(path)
        if isinstance(loaded, np.ndarray):
            return {"": loaded}
        with loaded:
            return {name: loaded[name] for name in names}


def touch(path: Path) -> None:
    """Mark an entry as just used, so it is evicted last."""
    with contextlib.suppress(OSError):  # read-only or gone: eviction order is a nicety
        os.utime(path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
