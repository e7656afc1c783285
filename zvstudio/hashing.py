"""Content hashes: caches and project files identify inputs by what they contain, not by name."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

_CHUNK = 1 << 20
_memo: dict[tuple[str, int, int], str] = {}
_memo_lock = threading.Lock()


def file_hash(path: str | os.PathLike[str]) -> str:
    """The blake2b-128 hash of a file's bytes, as "b2:<hex>".

    Hashing a long clip takes a second or more, so results are remembered for the life of the
    process, keyed by path, size and modification time.
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    memo_key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    with _memo_lock:
        if memo_key in _memo:
            return _memo[memo_key]
    digest = hashlib.blake2b(digest_size=16)
    with open(resolved, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    result = "b2:" + digest.hexdigest()
    with _memo_lock:
        _memo[memo_key] = result
    return result


def text_hash(*parts: str) -> str:
    """A short stable hash of some strings (settings, cache keys)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()
