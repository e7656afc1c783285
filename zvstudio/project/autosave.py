"""Autosave and crash recovery.

While the editor runs, it saves the open project every few minutes to its own file in the
settings folder, beside a small JSON note naming the project's real file and the editor's
process. A clean exit (or a save by the user) deletes both. Autosaves whose process is no
longer running are what a crash left behind: the next start offers to recover them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from zvstudio.atomic import write_atomically
from zvstudio.paths import config_root
from zvstudio.project.io import load_project, save_project
from zvstudio.project.model import Project


def autosave_folder() -> Path:
    return config_root() / "autosave"


@dataclass(frozen=True)
class Recovery:
    """An autosave left by an editor that did not exit cleanly."""

    project_file: Path  # the autosaved project
    original: Path | None  # the file the user was editing (None: never saved)
    saved_at: float  # seconds since the epoch
    pid: int

    def load(self) -> Project:
        return load_project(self.project_file)

    def discard(self) -> None:
        for path in (self.project_file, _note_of(self.project_file), _backup_of(self.project_file)):
            with contextlib.suppress(OSError):
                path.unlink()


class Autosaver:
    """This editor session's autosave file."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or autosave_folder()
        self.pid = os.getpid()
        self.project_file = self.folder / f"session-{self.pid}-{time.time_ns()}.zvs"

    def save(self, project: Project, original: Path | None) -> Path:
        """Write `project` (being edited as `original`) to the autosave file, atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        save_project(project, self.project_file)
        note = {
            "original": str(original) if original else None,
            "saved_at": time.time(),
            "pid": self.pid,
        }
        write_atomically(str(_note_of(self.project_file)), json.dumps(note).encode())
        return self.project_file

    def discard(self) -> None:
        """Delete this session's autosave (after a save by the user or a clean exit)."""
        Recovery(self.project_file, None, 0.0, self.pid).discard()


def pending_recoveries(folder: Path | None = None) -> list[Recovery]:
    """Autosaves of editors that are no longer running, newest first."""
    folder = folder or autosave_folder()
    found = []
    for note_path in folder.glob("session-*.zvs.json"):
        recovery = _read_note(note_path)
        if recovery is not None and not _running(recovery.pid):
            found.append(recovery)
    return sorted(found, key=lambda r: r.saved_at, reverse=True)


def _read_note(note_path: Path) -> Recovery | None:
    project_file = note_path.with_suffix("")  # "x.zvs.json" -> "x.zvs"
    try:
        note = json.loads(note_path.read_text())
        original = Path(note["original"]) if note.get("original") else None
        recovery = Recovery(project_file, original, float(note["saved_at"]), int(note["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return recovery if project_file.is_file() else None


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return False
    return True


def _note_of(project_file: Path) -> Path:
    return project_file.with_name(project_file.name + ".json")


def _backup_of(project_file: Path) -> Path:
    return project_file.with_name(project_file.name + ".bak")
