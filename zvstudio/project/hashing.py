"""Content hashes of user files, so a project notices when its clip was replaced."""

from __future__ import annotations

import os

from zvstudio.errors import ProjectError
from zvstudio.media.sequence import clip_hash

HASH_PREFIX = "b2:"


def content_hash(path: str | os.PathLike[str]) -> str:
    """The blake2b (16-byte digest) hash of the whole file (of every frame of an image
    sequence), as "b2:" + 32 hex digits."""
    try:
        return clip_hash(path)
    except FileNotFoundError:
        raise ProjectError(f"cannot hash {os.fspath(path)}: file not found") from None
    except OSError as exc:
        raise ProjectError(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from exc
