"""Reading and writing `.zvs` project files (JSON).

A file is one JSON object: {"format": "zvstudio-project", "schema_version": 1, "clip": ...,
"frame_range": ..., "keyframes": [...], "settings": {...}}. Loading migrates old versions
(`MIGRATIONS`), then checks every field and reports all problems at once with their JSON
paths, since a hand-edited file with a typo must fail loudly, not load half its settings.
Saving is atomic: a crash or a full disk never leaves a truncated project, and the previous
version is kept next to it as `<name>.zvs.bak`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from zvstudio.atomic import write_atomically
from zvstudio.errors import ProjectError
from zvstudio.media.sequence import clip_exists
from zvstudio.project.model import CURRENT_SCHEMA_VERSION, ClipRef, Project
from zvstudio.project.schema import BAD, problems_in, read_object, show, to_json

FORMAT = "zvstudio-project"
NEAR_LEVELS = 2  # a file at most this many folders above the project's folder is "near" it
MAX_REPORTED = 30  # problems listed in one error before "... and N more"

StrPath = str | os.PathLike[str]


# ----------------------------------------------------------------------------- paths


def stored_path(path: str, base_dir: str) -> str:
    """How `path` is written in a project saved in `base_dir`: relative (with "/") when the
    file is inside or near that folder, so project and media can move together; absolute
    when it is elsewhere or on another drive."""
    absolute = os.path.abspath(path)
    try:
        parts = os.path.relpath(absolute, base_dir).split(os.sep)
    except ValueError:  # another drive on Windows
        return absolute
    ups = next((i for i, part in enumerate(parts) if part != os.pardir), len(parts))
    return absolute if ups > NEAR_LEVELS else "/".join(parts)


def resolved_path(stored: str, base_dir: str) -> str:
    """The absolute path for a stored one (absolute paths are kept as they are)."""
    return os.path.normpath(os.path.join(base_dir, stored))


# ----------------------------------------------------------------------- migrations


def _v0_to_v1(old: dict[str, Any]) -> dict[str, Any]:
    """Pre-release files: {"video": "clip.mp4", "keys": [0, {"frame": 5, "prompt": "..."}],
    "style": "pencil", "prompt": "...", "every": 10}. Their clip was never hashed, so its
    hash becomes "" ("not yet hashed"). Unknown keys are kept so that loading reports them."""
    rest = {k: v for k, v in old.items() if k not in ("format", "schema_version")}
    video = rest.pop("video", None)
    keys = rest.pop("keys", [])
    renamed = {"style": "style", "prompt": "prompt", "every": "key_interval"}
    settings = {new: rest.pop(name) for name, new in renamed.items() if name in rest}
    if isinstance(keys, list):
        keys = [{"frame": k} if type(k) is int else k for k in keys]
    return {
        **rest,
        "format": FORMAT,
        "schema_version": 1,
        "clip": None if video is None else {"path": video, "content_hash": ""},
        "keyframes": keys,
        "settings": settings,
    }


# Version N -> a function that turns a version-N dict into a version N+1 dict.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _v0_to_v1}
V0_KEYS = ("video", "keys", "style", "prompt", "every")


# ------------------------------------------------------------------- dict <-> Project


def project_to_dict(project: Project, base_dir: StrPath) -> dict[str, Any]:
    """The project as the JSON object of a file saved in `base_dir`."""
    folder = os.path.abspath(base_dir)
    return {"format": FORMAT, **to_json(project, lambda p: stored_path(p, folder))}


def project_from_dict(data: Any, base_dir: StrPath, *, source: str = "the project") -> Project:
    """A project from the JSON object of a file in `base_dir`, of any supported version.

    Raises `ProjectError` listing every problem; `source` names the data in messages."""
    version = _schema_version(data, source)
    for old in range(version, CURRENT_SCHEMA_VERSION):
        data = MIGRATIONS[old](data)
    folder = os.path.abspath(base_dir)
    problems: list[str] = []
    project = read_object(
        Project, data, "", problems, lambda p: resolved_path(p, folder), allowed=("format",)
    )
    if problems:
        raise ProjectError(_report(source, problems))
    return project


def _schema_version(data: Any, source: str) -> int:
    if not isinstance(data, dict):
        raise ProjectError(
            f"{source} is not a valid project file: expected a JSON object at the top level, "
            f"got {show(data)}"
        )
    if "format" not in data and "schema_version" not in data and data.keys() & set(V0_KEYS):
        return 0
    if data.get("format") != FORMAT:
        found = show(data["format"]) if "format" in data else "missing"
        raise ProjectError(
            f'{source} is not a zvstudio project file (its "format" is {found}, '
            f"expected {FORMAT!r})"
        )
    version = data.get("schema_version", BAD)
    if type(version) is not int or version < 0:
        found = "missing" if version is BAD else show(version)
        raise ProjectError(
            f"{source} has an invalid schema_version: expected a whole number (0 or more), "
            f"got {found}"
        )
    if version > CURRENT_SCHEMA_VERSION:
        raise ProjectError(
            f"{source} was saved by a newer zvstudio (project version {version}; this version "
            f"reads up to {CURRENT_SCHEMA_VERSION}); update zvstudio"
        )
    return version


def _report(subject: str, problems: list[str]) -> str:
    count = len(problems)
    lines = problems[:MAX_REPORTED]
    if count > MAX_REPORTED:
        lines.append(f"... and {count - MAX_REPORTED} more")
    plural = "" if count == 1 else "s"
    return f"{subject} has {count} problem{plural}:\n" + "\n".join(f"  {x}" for x in lines)


# ------------------------------------------------------------------------- loading


class _JsonObject(dict):
    """A parsed JSON object that remembers keys given twice (json.loads keeps the last)."""

    repeated: tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JsonObject:
        obj = cls(pairs)
        if len(obj) < len(pairs):
            counts = Counter(key for key, _ in pairs)
            obj.repeated = tuple(key for key in obj if counts[key] > 1)
        return obj


def load_project(path: StrPath) -> Project:
    """Read, migrate and check the project file at `path`. Raises `ProjectError`."""
    source = os.path.abspath(path)
    try:
        with open(source, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        raise ProjectError(f"project file not found: {source}") from None
    except OSError as exc:
        raise ProjectError(f"could not read project file {source}: {exc.strerror or exc}") from exc
    return project_from_dict(_parse(raw, source), os.path.dirname(source), source=source)


class ClipMissingError(ProjectError):
    """The project's clip is not where the project says: moved, renamed, or on a drive that
    is not connected. The editor catches it and asks where the clip is."""

    def __init__(self, project_path: StrPath, clip: ClipRef) -> None:
        super().__init__(
            f"the project's clip {clip.path} is missing",
            hint="move it back, or open the project in the editor, which asks where it is",
        )
        self.project_path, self.clip = os.fspath(project_path), clip


def check_clip(project: Project, path: StrPath) -> None:
    """Raise `ClipMissingError` when the clip of `project` (loaded from `path`) is not there."""
    if project.clip is not None and not clip_exists(project.clip.path):
        raise ClipMissingError(path, project.clip)


def _parse(raw: bytes, source: str) -> Any:
    broken = f"{source} is not a valid project file"
    backup = source + ".bak"
    hint = f"the previous version is kept in {backup}" if os.path.exists(backup) else None
    try:
        text = raw.decode("utf-8-sig")  # tolerate the BOM some Windows editors add
    except UnicodeDecodeError as exc:
        raise ProjectError(f"{broken}: not UTF-8 text (byte {exc.start})", hint) from None
    if not text.strip():
        raise ProjectError(f"{broken}: the file is empty", hint)
    try:
        return json.loads(text, object_pairs_hook=_JsonObject.from_pairs)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise ProjectError(f"{broken}: broken JSON at {where}: {exc.msg}", hint) from None


# -------------------------------------------------------------------------- saving


def save_project(project: Project, path: StrPath) -> None:
    """Write `project` to `path` atomically, keeping the previous file as `<path>.bak`.

    Raises `ProjectError` when the project is invalid or the file cannot be written; the
    existing file is then left exactly as it was."""
    target = os.path.abspath(path)
    failed = f"could not save project to {target}"
    problems = problems_in(project)
    if problems:
        raise ProjectError(_report(f"{failed}: the project", problems))
    data = project_to_dict(project, os.path.dirname(target))
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    existed = os.path.exists(target)
    try:
        write_atomically(os.path.realpath(target), (text + "\n").encode("utf-8"))
    except OSError as exc:
        hint = "the existing file was not changed" if existed else None
        raise ProjectError(f"{failed}: {exc.strerror or exc}", hint) from exc
