"""Undoable changes to a project.

Every change the editor makes to the document is one `Edit`: it applies itself and reverts
itself exactly, so the GUI's undo stack only wraps these (no Qt here) and the tests check undo
without a window. Edits keep what they replaced, so reverting restores per-key overrides too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import replace

from zvstudio.errors import ZvsError
from zvstudio.media.cuts import keys_by_shot
from zvstudio.project.model import (
    ClipRef,
    FrameRange,
    KeyFrame,
    Project,
    RenderSettings,
    Version,
)
from zvstudio.project.versions import check_version_name, find_version, version_named


class Edit(ABC):
    """One undoable change; `text` names it in the Edit menu ("Undo add key 12")."""

    text: str = "edit"

    @abstractmethod
    def apply(self, project: Project) -> None: ...

    @abstractmethod
    def revert(self, project: Project) -> None: ...

    def merge(self, later: Edit) -> bool:
        """Absorb `later` (already applied) into this edit, for edits that come in quick
        series such as a slider drag; return whether it was absorbed."""
        return False


class SetKey(Edit):
    """Add `key`, or replace the key at its frame (its overrides)."""

    def __init__(self, key: KeyFrame, field: str | None = None) -> None:
        self.key = key
        self.field = field  # the override changed, so that typing merges into one step
        self.old: KeyFrame | None = None
        what = f"key {key.frame} {field.replace('_', ' ')}" if field else f"key {key.frame}"
        self.text = f"set {what}"

    def apply(self, project: Project) -> None:
        self.old = project.set_key(self.key)

    def revert(self, project: Project) -> None:
        if self.old is None:
            project.remove_key(self.key.frame)
        else:
            project.set_key(self.old)

    def merge(self, later: Edit) -> bool:
        same = isinstance(later, SetKey) and later.key.frame == self.key.frame
        if same and self.field is not None and later.field == self.field:
            self.key = later.key
            return True
        return False


class RemoveKey(Edit):
    def __init__(self, frame: int) -> None:
        self.frame = frame
        self.old: KeyFrame | None = None
        self.text = f"remove key {frame}"

    def apply(self, project: Project) -> None:
        self.old = project.remove_key(self.frame)

    def revert(self, project: Project) -> None:
        if self.old is not None:
            project.set_key(self.old)


class MoveKey(Edit):
    """Move the key at `source` (with its overrides) to `target`, which must be free."""

    def __init__(self, source: int, target: int) -> None:
        self.source, self.target = source, target
        self.text = f"move key {source} to {target}"

    def apply(self, project: Project) -> None:
        key = project.key_at(self.source)
        if key is None:
            raise ZvsError(f"there is no key at frame {self.source} to move")
        if project.key_at(self.target) is not None:
            raise ZvsError(f"frame {self.target} is already a key")
        project.remove_key(self.source)
        project.set_key(replace(key, frame=self.target))

    def revert(self, project: Project) -> None:
        key = project.remove_key(self.target)
        if key is not None:
            project.set_key(replace(key, frame=self.source))


class ReplaceKeys(Edit):
    """Replace the whole key list (e.g. "keys every K frames")."""

    def __init__(self, keys: list[KeyFrame], text: str = "replace keys") -> None:
        self.keys = sorted(keys, key=lambda key: key.frame)
        self.old: list[KeyFrame] = []
        self.text = text

    def apply(self, project: Project) -> None:
        self.old = list(project.keyframes)
        project.keyframes = list(self.keys)

    def revert(self, project: Project) -> None:
        project.keyframes = list(self.old)


def keys_every(
    project: Project, interval: int, frame_count: int, cuts: Sequence[int] = ()
) -> ReplaceKeys:
    """Keys every `interval` frames over the render range, counted again from each shot cut
    (`cuts`: the first frames of shots); keys that carry overrides (a prompt, seed, strength,
    reference or painting) stay where they are, and keys on the grid keep theirs."""
    if interval < 1:
        raise ZvsError(f"the key interval must be at least 1, got {interval}")
    span = project.frame_range or FrameRange(0, max(frame_count - 1, 0))
    frames = keys_by_shot(span.first, span.last, interval, cuts)
    return keys_at(project, frames, f"keys every {interval} frames")


def keys_at(project: Project, frames: Sequence[int], text: str) -> ReplaceKeys:
    """Keys at `frames` (e.g. placed by motion) in place of the plain keys; keys that carry
    overrides (a prompt, seed, strength, reference or painting) stay where they are, and keys
    at `frames` keep theirs."""
    chosen = {frame: KeyFrame(frame) for frame in frames}
    for key in project.keyframes:
        if key.frame in chosen or key != KeyFrame(key.frame):
            chosen[key.frame] = key
    return ReplaceKeys(list(chosen.values()), text)


def keys_painted(project: Project, paintings: dict[int, str]) -> ReplaceKeys:
    """Every key in `paintings` (frame -> image) takes its painting, as one edit; a painted
    frame that is not a key yet becomes one. Other keys stay as they are."""
    keys = {key.frame: key for key in project.keyframes}
    for frame, image in paintings.items():
        keys[frame] = replace(keys.get(frame, KeyFrame(frame)), painted_image=image)
    return ReplaceKeys(list(keys.values()), f"use {len(paintings)} painted keys")


class SetSettings(Edit):
    """Replace the global render settings; successive changes of the same field (a slider
    drag, typing a prompt) merge into one undo step."""

    def __init__(self, settings: RenderSettings, field: str = "settings") -> None:
        self.settings = settings
        self.field = field
        self.old: RenderSettings | None = None
        self.text = f"change {field.replace('_', ' ')}"

    def apply(self, project: Project) -> None:
        self.old = project.settings
        project.settings = self.settings

    def revert(self, project: Project) -> None:
        if self.old is not None:
            project.settings = self.old

    def merge(self, later: Edit) -> bool:
        if isinstance(later, SetSettings) and later.field == self.field != "settings":
            self.settings = later.settings
            return True
        return False


class SetFrameRange(Edit):
    def __init__(self, frame_range: FrameRange | None) -> None:
        self.frame_range = frame_range
        self.old: FrameRange | None = None
        self.text = "set the render range" if frame_range else "clear the render range"

    def apply(self, project: Project) -> None:
        self.old = project.frame_range
        project.frame_range = self.frame_range

    def revert(self, project: Project) -> None:
        project.frame_range = self.old


def mark_range(
    project: Project, frame_count: int, first: int | None = None, last: int | None = None
) -> SetFrameRange:
    """Set the in point (`first`) or the out point (`last`) as editors do: the other end stays
    unless it would fall on the wrong side, then it opens to the clip's start or end. A range
    that covers the whole clip is no range."""
    for frame in (first, last):
        if frame is not None and not 0 <= frame < frame_count:
            raise ZvsError(f"frame {frame} is outside the clip (0 to {frame_count - 1})")
    span = project.frame_range or FrameRange(0, max(frame_count - 1, 0))
    new_first = span.first if first is None else first
    new_last = span.last if last is None else last
    if new_last < new_first:  # the end that was not marked gives way
        new_first, new_last = (new_first, frame_count - 1) if first is not None else (0, new_last)
    if (new_first, new_last) == (0, frame_count - 1):
        return SetFrameRange(None)
    return SetFrameRange(FrameRange(new_first, new_last))


class ReplaceClip(Edit):
    """Another file as the project's clip (a new version of the edit, say) with `frame_count`
    frames; keys and a render range past its end go, and come back on undo. `notes` says what
    besides the clip changed."""

    text = "replace the clip"

    def __init__(self, clip: ClipRef, frame_count: int) -> None:
        self.clip, self.frame_count = clip, frame_count
        self.old: tuple[ClipRef | None, list[KeyFrame], FrameRange | None] | None = None
        self.notes: list[str] = []

    def apply(self, project: Project) -> None:
        self.old = (project.clip, list(project.keyframes), project.frame_range)
        self.notes = relink_clip(project, self.clip, self.frame_count)

    def revert(self, project: Project) -> None:
        project.clip, keys, project.frame_range = self.old
        project.keyframes = list(keys)


def relink_clip(project: Project, clip: ClipRef, frame_count: int) -> list[str]:
    """Make `clip` the project's clip (found elsewhere after it moved, or another version of
    it); keys and a render range past its last frame go. Returns what else changed, for the
    user."""
    notes = []
    dropped = [key.frame for key in project.keyframes if key.frame >= frame_count]
    if dropped:
        project.keyframes = [key for key in project.keyframes if key.frame < frame_count]
        listed = ", ".join(map(str, dropped))
        notes.append(f"keys past the clip's last frame ({frame_count - 1}) removed: {listed}")
    span = project.frame_range
    if span is not None and span.last >= frame_count:
        inside = 0 < span.first < frame_count  # else the range is the whole clip, or nothing
        project.frame_range = FrameRange(span.first, frame_count - 1) if inside else None
        notes.append(
            "the render range now ends at the clip's last frame"
            if inside
            else "the render range was cleared"
        )
    project.clip = clip
    return notes


class RelinkFiles(Edit):
    """Point the project's settings and keys at where their files went (`moved`: old path ->
    new path, from `zvstudio.project.files.find_moved`), as one step."""

    def __init__(self, moved: dict[str, str]) -> None:
        self.moved = dict(moved)
        self.old: tuple[RenderSettings, list[KeyFrame], list[Version]] | None = None
        self.text = f"relink {len(moved)} file{'s' * (len(moved) != 1)}"

    def apply(self, project: Project) -> None:
        from zvstudio.project.files import relinked

        self.old = (project.settings, list(project.keyframes), list(project.versions))
        project.settings, project.keyframes = relinked(project, self.moved)
        # Restoring a version later must not bring the dead paths back.
        versions = []
        for version in project.versions:
            settings, keys = relinked(version, self.moved)
            versions.append(replace(version, settings=settings, keyframes=keys))
        project.versions = versions

    def revert(self, project: Project) -> None:
        if self.old is not None:
            project.settings, keys, versions = self.old
            project.keyframes, project.versions = list(keys), list(versions)


class KeepVersion(Edit):
    """Keep the project's look as `version` (from `versions.current_look`), in place of a
    version of the same name."""

    def __init__(self, version: Version) -> None:
        self.version = version
        self.old: list[Version] = []
        self.text = f"keep the version {version.name}"

    def apply(self, project: Project) -> None:
        self.old = list(project.versions)
        replaced = version_named(project, self.version.name)
        if replaced is None:
            project.versions.append(self.version)
        else:
            project.versions[project.versions.index(replaced)] = self.version

    def revert(self, project: Project) -> None:
        project.versions = list(self.old)


class RestoreVersion(Edit):
    """Make the version `name`'s settings and keys the project's; the versions stay."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.old: tuple[RenderSettings, list[KeyFrame]] | None = None
        self.text = f"restore the version {name}"

    def apply(self, project: Project) -> None:
        version = find_version(project, self.name)
        self.old = (project.settings, list(project.keyframes))
        project.settings, project.keyframes = version.settings, list(version.keyframes)

    def revert(self, project: Project) -> None:
        if self.old is not None:
            project.settings, keys = self.old
            project.keyframes = list(keys)


class DeleteVersion(Edit):
    def __init__(self, name: str) -> None:
        self.name = name
        self.old: list[Version] = []
        self.text = f"delete the version {name}"

    def apply(self, project: Project) -> None:
        find_version(project, self.name)  # an unknown name is refused, changing nothing
        self.old = list(project.versions)
        project.versions = [v for v in project.versions if v.name != self.name]

    def revert(self, project: Project) -> None:
        project.versions = list(self.old)


class RenameVersion(Edit):
    def __init__(self, name: str, new_name: str) -> None:
        self.name, self.new_name = name, check_version_name(new_name)
        self.old: list[Version] = []
        self.text = f"rename the version {name}"

    def apply(self, project: Project) -> None:
        version = find_version(project, self.name)
        if self.new_name != self.name and version_named(project, self.new_name) is not None:
            raise ZvsError(f"a version named {self.new_name!r} exists already")
        self.old = list(project.versions)
        renamed = replace(version, name=self.new_name)
        project.versions = [renamed if v is version else v for v in project.versions]

    def revert(self, project: Project) -> None:
        project.versions = list(self.old)
