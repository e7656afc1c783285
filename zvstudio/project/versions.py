"""Versions: looks kept inside a project, to compare renders with and to go back to.

An artist tries a look, keeps it as a version ("Ink, seed 7"), tries another, and compares
the two renders in the viewer, as a grading or compositing tool's snapshots allow. A version
is the project's render settings and keys as they were (`model.Version`); its frames are
found in the render cache by their content, like the project's own, so a version rendered
once compares without rendering again (while the cache keeps it). Restoring one is an
undoable edit (`edits.RestoreVersion`); `zvstudio render PROJECT.zvs --version NAME` renders
one from the command line.
"""

from __future__ import annotations

import time
from dataclasses import fields

from zvstudio.errors import ProjectError
from zvstudio.project.model import KeyFrame, Project, RenderSettings, Version

MAX_NAME = 64


def check_version_name(name: str) -> str:
    """`name` stripped, if it can name a version."""
    stripped = " ".join(name.split())
    if not stripped:
        raise ProjectError("a version needs a name", hint="e.g. 'Ink, seed 7'")
    if len(stripped) > MAX_NAME:
        raise ProjectError(f"the version name {name!r} is longer than {MAX_NAME} characters")
    return stripped


def next_version_name(project: Project) -> str:
    """'Version N' with the first N no version of the project has."""
    taken = {version.name for version in project.versions}
    number = len(project.versions) + 1
    while f"Version {number}" in taken:
        number += 1
    return f"Version {number}"


def version_named(project: Project, name: str | None) -> Version | None:
    """The project's version `name`, or None."""
    return next((v for v in project.versions if v.name == name), None)


def find_version(project: Project, name: str) -> Version:
    """The project's version `name`; the error names those there are."""
    version = version_named(project, name)
    if version is not None:
        return version
    names = ", ".join(f"'{v.name}'" for v in project.versions)
    raise ProjectError(
        f"the project has no version named {name!r}",
        hint=f"its versions: {names}"
        if names
        else "it has none: keep one in the editor (Render > Versions > Keep this version)",
    )


def kept_when(version: Version) -> str:
    """When the version was kept, for a reader ("2026-11-25 10:00:00")."""
    return version.kept.replace("T", " ")


def current_look(project: Project, name: str) -> Version:
    """The project's settings and keys now, as the version `name`, kept now."""
    kept = time.strftime("%Y-%m-%dT%H:%M:%S")
    return Version(check_version_name(name), project.settings, list(project.keyframes), kept)


def version_project(project: Project, version: Version) -> Project:
    """`project` with the version's settings and keys: what rendering the version renders
    (the same clip and range)."""
    return Project(
        clip=project.clip,
        frame_range=project.frame_range,
        keyframes=list(version.keyframes),
        settings=version.settings,
    )


def is_current(project: Project, version: Version) -> bool:
    """Whether the project's settings and keys are the version's."""
    return project.settings == version.settings and project.keyframes == version.keyframes


def differences(project: Project, version: Version) -> list[str]:
    """What differs between the project now and `version`, for a user: the settings by name
    ("prompt", "seed") and the keys ("keys 10, 20" whose overrides differ, "key count")."""
    said = [
        f.name.replace("_", " ")
        for f in fields(RenderSettings)
        if getattr(project.settings, f.name) != getattr(version.settings, f.name)
    ]
    return said + _key_differences(project.keyframes, version.keyframes)


def _key_differences(now: list[KeyFrame], then: list[KeyFrame]) -> list[str]:
    ours = {key.frame: key for key in now}
    theirs = {key.frame: key for key in then}
    if ours.keys() != theirs.keys():
        return [f"keys ({len(theirs)} then, {len(ours)} now)"]
    changed = [frame for frame in sorted(ours) if ours[frame] != theirs[frame]]
    if not changed:
        return []
    shown = ", ".join(str(frame) for frame in changed[:5]) + (", ..." if changed[5:] else "")
    return [f"key{'s' * (len(changed) > 1)} {shown}"]
