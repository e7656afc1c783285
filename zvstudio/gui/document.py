"""The open project as the GUI sees it: the `Project`, its file, its clip's facts and an undo
stack through which every change goes (each one an `Edit` from `zvstudio.project.edits`)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from zvstudio.errors import ZvsError
from zvstudio.media import MediaInfo, clip_label, clip_title, probe
from zvstudio.media.cuts import keys_by_shot
from zvstudio.project import (
    ClipRef,
    KeyFrame,
    Project,
    check_clip,
    load_project,
    save_project,
)
from zvstudio.project.edits import (
    Edit,
    MoveKey,
    RelinkFiles,
    RemoveKey,
    ReplaceClip,
    ReplaceKeys,
    RestoreVersion,
    SetFrameRange,
    SetKey,
    SetSettings,
    relink_clip,
)

_MERGEABLE = 1  # QUndoCommand id shared by edits that may merge (Edit.merge decides)


class _EditCommand(QUndoCommand):
    def __init__(self, document: Document, edit: Edit) -> None:
        super().__init__(edit.text)
        self.document, self.edit = document, edit
        self.applied = True  # the document applied it before pushing (to catch errors)

    def redo(self) -> None:
        if self.applied:  # the push itself: already applied
            self.applied = False
        else:
            self.edit.apply(self.document.project)
        self.document.notify(self.edit)

    def undo(self) -> None:
        self.edit.revert(self.document.project)
        self.document.notify(self.edit)

    def id(self) -> int:
        return _MERGEABLE if getattr(self.edit, "field", None) else -1

    def mergeWith(self, other: QUndoCommand) -> bool:
        return isinstance(other, _EditCommand) and self.edit.merge(other.edit)


class Document(QObject):
    """Signals say what changed so views refresh only that; `changed` follows any edit."""

    changed = Signal()
    keys_changed = Signal()
    settings_changed = Signal()
    range_changed = Signal()
    clip_changed = Signal()  # a new project, clip or file was loaded
    path_changed = Signal()
    dirty_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.project = Project()
        self.path: Path | None = None
        self.info: MediaInfo | None = None
        # The first frame of each shot after the first, once a job has found them.
        self.shot_cuts: list[int] = []
        self._import_interval: int | None = None  # K of the keys a fresh import was given
        self._infos: dict[str, MediaInfo] = {}  # clips that ReplaceClip edits switch between
        self.undo_stack = QUndoStack(self)
        self.undo_stack.cleanChanged.connect(self._clean_changed)

    def _clean_changed(self, clean: bool) -> None:
        self.dirty_changed.emit(not clean)

    # -- state ------------------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        return not self.undo_stack.isClean()

    @property
    def frame_count(self) -> int:
        return self.info.frame_count if self.info else 0

    @property
    def fps(self) -> float:
        return float(self.info.fps) if self.info else 25.0

    @property
    def render_size(self) -> tuple[int, int] | None:
        """The (width, height) the clip renders and exports at (the project's render size),
        None without a clip."""
        from zvstudio.engine.request import render_size

        if self.info is None:
            return None
        info, short_side = self.info, self.project.settings.short_side
        return render_size(info.display_width, info.display_height, short_side)

    @property
    def name(self) -> str:
        """The project's file name without its extension, else the clip's (for job titles)."""
        if self.path is not None:
            return self.path.stem
        if self.project.clip is not None:
            return clip_title(self.project.clip.path)
        return "Untitled"

    @property
    def title(self) -> str:
        if self.path is not None:
            return self.path.name
        if self.project.clip is not None:
            return f"{clip_label(self.project.clip.path)} (unsaved)"
        return "Untitled"

    # -- whole documents ------------------------------------------------------------------
    def new(self) -> None:
        self._load(Project(), None)

    def import_clip(self, clip: str | Path, key_interval: int | None = None) -> None:
        """A new project for `clip` with keys every `key_interval` frames (the settings' K)."""
        clip = Path(clip)
        info = probe(clip)  # raises a clear ZvsError for a file that is not a readable video
        project = Project(clip=ClipRef.from_file(clip))
        step = key_interval or project.settings.key_interval
        project.keyframes = [KeyFrame(f) for f in range(0, info.frame_count, step)]
        self._load(project, None, info)
        self._import_interval = step  # the keys are redone by shot when the cuts are found

    def open(self, path: str | Path, clip: str | Path | None = None) -> list[str]:
        """Open the project at `path`. With `clip`, that file becomes its clip (the old one
        moved, or is replaced) and the document is left modified. Returns notes for the user
        on what relinking changed."""
        path = Path(path).resolve()
        project = load_project(path)
        info, notes = None, []
        if project.clip is not None and clip is not None:
            info = probe(clip)
            notes = relink_clip(project, ClipRef.from_file(clip), info.frame_count)
        elif project.clip is not None:
            check_clip(project, path)
            info = probe(project.clip.path)
        self._load(project, path, info)
        if clip is not None:
            self.undo_stack.resetClean()  # unsaved until the new clip's path is saved
        return notes

    def load_recovered(self, project: Project, original: Path | None) -> None:
        """An autosaved project: loaded as unsaved changes to `original`."""
        info = probe(project.clip.path) if project.clip is not None else None
        self._load(project, original, info)
        self.undo_stack.resetClean()  # recovered work is unsaved until the user saves it

    def save(self, path: str | Path | None = None) -> Path:
        target = Path(path).resolve() if path else self.path
        if target is None:
            raise ZvsError("the project has no file yet", hint="use Save As")
        save_project(self.project, target)
        changed_path = target != self.path
        self.path = target
        self.undo_stack.setClean()
        if changed_path:
            self.path_changed.emit()
        return target

    def set_shot_cuts(self, cuts: list[int]) -> None:
        """The clip's shot cuts, found. A clip just imported and not yet edited gets its first
        keys again, now starting at each shot (the user chose none of them yet)."""
        self.shot_cuts = list(cuts)
        step = self._import_interval
        if not cuts or step is None or self.path is not None or self.undo_stack.count():
            return
        if self.project.keyframes == [KeyFrame(f) for f in range(0, self.frame_count, step)]:
            every = keys_by_shot(0, self.frame_count - 1, step, cuts)
            self.project.keyframes = [KeyFrame(f) for f in every]
            self.keys_changed.emit()
            self.changed.emit()

    def _load(self, project: Project, path: Path | None, info: MediaInfo | None = None) -> None:
        self.project, self.path, self.info = project, path, info
        self.shot_cuts = []
        self._import_interval = None
        self._infos.clear()
        self.undo_stack.clear()
        self.undo_stack.setClean()  # clear() alone leaves a stack made unclean by resetClean
        self.clip_changed.emit()
        self.path_changed.emit()
        self.changed.emit()
        self.dirty_changed.emit(False)

    # -- edits ------------------------------------------------------------------------------
    def push(self, edit: Edit) -> None:
        """Apply `edit` and put it on the undo stack; a refused edit (ZvsError) changes nothing
        and raises."""
        edit.apply(self.project)
        self.undo_stack.push(_EditCommand(self, edit))

    def replace_clip(self, clip: str | Path) -> list[str]:
        """Make `clip` the project's clip, as an undoable edit; returns what else changed."""
        if self.project.clip is None or self.info is None:
            raise ZvsError("the project has no clip to replace", hint="import a clip instead")
        info = probe(clip)  # a clear error for a file that is not a readable video
        new = ClipRef.from_file(clip)
        self._infos[new.path] = info
        self._infos[self.project.clip.path] = self.info
        edit = ReplaceClip(new, info.frame_count)
        self.push(edit)
        return edit.notes

    def reload_clip_info(self) -> None:
        """Read the clip's description again after its timing changed on disk (an image
        sequence's frame rate): the pictures, and so the keys and renders, are the same."""
        if self.project.clip is None:
            return
        info = probe(self.project.clip.path)
        self._infos[self.project.clip.path] = self.info = info
        self.clip_changed.emit()
        self.changed.emit()

    def notify(self, edit: Edit) -> None:
        if isinstance(edit, ReplaceClip):
            # Probed when the clip was chosen (undo must not fail for a file since moved).
            self.info = self._infos[self.project.clip.path]
            self.shot_cuts = []
            self.clip_changed.emit()
        if isinstance(edit, SetKey | RemoveKey | MoveKey | ReplaceKeys | ReplaceClip):
            self.keys_changed.emit()
        elif isinstance(edit, SetSettings):
            self.settings_changed.emit()
        elif isinstance(edit, RestoreVersion | RelinkFiles):
            self.keys_changed.emit()
            self.settings_changed.emit()
        if isinstance(edit, SetFrameRange | ReplaceClip):
            self.range_changed.emit()
        self.changed.emit()

    def toggle_key(self, frame: int) -> None:
        if self.project.key_at(frame) is None:
            self.push(SetKey(KeyFrame(frame)))
        else:
            self.push(RemoveKey(frame))
