"""Files written atomically: a crash, a full disk or a kill never leaves one half written.

Projects, autosave notes, presets and the app settings all go through `write_atomically`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator

NEW_FILE_MODE = 0o644  # mkstemp creates 0o600; a saved file should be an ordinary one


def write_atomically(target: str, data: bytes, backup: bool = True) -> None:
    """Write `data` to `target`: a temp file beside it, fsynced, renamed over it, the folder
    fsynced. With `backup`, the previous file is kept as `<target>.bak` (itself written
    atomically). The replaced file keeps its permissions. Raises OSError, leaving the old
    file as it was."""
    with _temp_beside(target) as temp:
        with open(temp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(OSError):  # keep the old file's permissions if there is one
            mode = stat.S_IMODE(os.stat(target).st_mode) if os.path.exists(target) else None
            os.chmod(temp, NEW_FILE_MODE if mode is None else mode)
        if backup and os.path.exists(target):
            _back_up(target)
        os.replace(temp, target)
    _fsync_folder(os.path.dirname(target))


def _back_up(target: str) -> None:
    """Copy `target` to `<target>.bak` atomically, so the backup is never half written."""
    with _temp_beside(target) as temp:
        shutil.copy2(target, temp)
        with open(temp, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temp, target + ".bak")


@contextlib.contextmanager
def _temp_beside(target: str) -> Iterator[str]:
    """A new empty file in the target's folder (so renaming it over the target is atomic),
    removed again if the block fails."""
    folder, name = os.path.split(target)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield temp
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable. Best effort: Windows cannot open a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
