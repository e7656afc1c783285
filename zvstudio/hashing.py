"""Content hashes: caches and project files identify inputs by what they contain, not by name."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path

_CHUNK = 1 << 20
_memo: dict[tuple, str] = {}
_memo_lock = threading.Lock()


def file_hash(path: str | os.PathLike[str]) -> str:
    """The blake2b-128 hash of a file's bytes, as "b2:<hex>".

    Hashing a long clip takes a second or more, so results are remembered for the life of the
    process, keyed by path, size and modification time.
    """
    return files_hash([(b"", Path(path))])


def files_hash(parts: Sequence[tuple[bytes, Path]], salt: bytes = b"") -> str:
    """The blake2b-128 hash of `salt`, then of each file's label and bytes in turn, as
    "b2:<hex>"; remembered like `file_hash`'s. Raises OSError for a file that cannot be read."""
    resolved = [(label, Path(path).resolve()) for label, path in parts]
    memo_key = (salt, tuple((label, str(path), *_stat_key(path)) for label, path in resolved))
    with _memo_lock:
        if memo_key in _memo:
            return _memo[memo_key]
    digest = hashlib.blake2b(salt, digest_size=16)
    for label, path in resolved:
        digest.update(label)
        with open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
    result = "b2:" + digest.hexdigest()
    with _memo_lock:
        _memo[memo_key] = result
    return result


def _stat_key(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def text_hash(*parts: str) -> str:
    """A short stable hash of some strings (settings, cache keys)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()
