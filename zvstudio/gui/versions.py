"""Versions in the editor: Render > Versions keeps the project's look under a name, compares
the render with a kept version's in the viewer (the version on the left of the divider),
renders a version, restores one (one undo step), renames or deletes one. The versions are
saved in the project (`zvstudio.project.versions`); their frames come from the render cache.
"""

from __future__ import annotations

from PySide6.QtCore import QObject
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QMenu

from zvstudio.engine.status import RenderStatus
from zvstudio.errors import ZvsError
from zvstudio.gui.status import StatusWatcher
from zvstudio.project.edits import DeleteVersion, KeepVersion, RenameVersion, RestoreVersion
from zvstudio.project.model import Version
from zvstudio.project.versions import (
    check_version_name,
    current_look,
    differences,
    find_version,
    is_current,
    kept_when,
    next_version_name,
    version_named,
    version_project,
)

REPLACE = "Replace it"
DELETE = "Delete"
COMPARED_MODES = ("split", "side_by_side")  # the viewer's modes that show the compared render


class VersionMenu(QObject):
    """The Render > Versions submenu and the comparison it drives. `window` is the
    MainWindow: its document, viewer, dialogs (`ask_text`, `choose`), `request_for` and
    `start_render`, and its status bar."""

    def __init__(self, window, menu: QMenu) -> None:
        super().__init__(window)
        self.window = window
        self.menu = menu
        self.compared: str | None = None  # the version the viewer compares with
        self.last_compared: str | None = None  # what `toggle` compares with again
        self._looked_up: tuple = ()  # what the status was last looked up for (`_what_renders`)
        self.status: RenderStatus | None = None  # the compared version's renders
        self.watcher = StatusWatcher(self)
        self.watcher.ready.connect(self._status_ready)
        self.watcher.problem.connect(self._say)

        self.keep_action = QAction("&Keep this version…", menu)
        self.keep_action.setShortcut(QKeySequence("Ctrl+K"))
        self.keep_action.setToolTip(
            "Keep the render settings and keys as they are now under a name, to compare the "
            "renders of another look with them and to come back to them"
        )
        self.keep_action.triggered.connect(lambda: self.keep())
        window.addAction(self.keep_action)  # its shortcut works with the menu closed
        self.toggle_action = QAction("&Toggle the comparison", menu)
        self.toggle_action.setShortcut(QKeySequence("Shift+K"))
        self.toggle_action.setToolTip(
            "Compare with the version last compared with (or the newest), or stop comparing: "
            "flip between the two looks and the original"
        )
        self.toggle_action.triggered.connect(lambda: self.toggle())
        window.addAction(self.toggle_action)
        self.compare_menu = QMenu("&Compare with", menu)
        self.compare_menu.setToolTipsVisible(True)
        self.render_action = QAction("Render the &compared version", menu)
        self.render_action.setToolTip(
            "Render the version the viewer compares with into the cache (the project's own "
            "settings stay as they are)"
        )
        self.render_action.triggered.connect(lambda: self.render_compared())
        self.restore_menu = QMenu("&Restore", menu)
        self.restore_menu.setToolTipsVisible(True)
        self.rename_menu = QMenu("Re&name", menu)
        self.delete_menu = QMenu("&Delete", menu)
        menu.setToolTipsVisible(True)
        menu.addAction(self.keep_action)
        menu.addMenu(self.compare_menu)
        menu.addAction(self.toggle_action)
        menu.addAction(self.render_action)
        menu.addSeparator()
        menu.addMenu(self.restore_menu)
        menu.addMenu(self.rename_menu)
        menu.addMenu(self.delete_menu)
        menu.aboutToShow.connect(self.refresh)
        self.refresh()

    @property
    def project(self):
        return self.window.document.project

    def refresh(self) -> None:
        """Rebuild the submenus from the project's versions."""
        versions = self.project.versions
        has_clip = self.project.clip is not None
        self._enable_shortcuts()
        for submenu in (self.compare_menu, self.restore_menu, self.rename_menu, self.delete_menu):
            submenu.clear()
            submenu.setEnabled(bool(versions) and has_clip)
        group = QActionGroup(self.compare_menu)
        self._add_compare(group, "&Nothing (the original)", None, "")
        for version in versions:
            self._add_compare(group, version.name, version.name, self._tip(version))
            restore = self.restore_menu.addAction(version.name)
            restore.setToolTip(self._tip(version))
            restore.setEnabled(not is_current(self.project, version))
            restore.triggered.connect(lambda _=False, n=version.name: self.restore(n))
            rename = self.rename_menu.addAction(version.name)
            rename.triggered.connect(lambda _=False, n=version.name: self.rename(n))
            delete = self.delete_menu.addAction(version.name)
            delete.triggered.connect(lambda _=False, n=version.name: self.delete(n))
        needs_render = self.status is None or not self.status.complete
        self.render_action.setEnabled(self.compared is not None and needs_render)

    def _enable_shortcuts(self) -> None:
        """Enable the actions with shortcuts, which work while the menu is closed."""
        has_clip = self.project.clip is not None
        self.keep_action.setEnabled(has_clip)
        self.toggle_action.setEnabled(has_clip and bool(self.project.versions))

    def _add_compare(self, group: QActionGroup, text: str, name: str | None, tip: str) -> None:
        action = self.compare_menu.addAction(text)
        action.setCheckable(True)
        action.setChecked(name == self.compared)
        action.setToolTip(tip)
        group.addAction(action)
        action.triggered.connect(lambda _=False: self.compare(name))

    def _tip(self, version: Version) -> str:
        changed = differences(self.project, version)
        kept = f"kept {kept_when(version)}" if version.kept else "kept"
        if not changed:
            return f"{kept}; the project's settings and keys now"
        return f"{kept}; differs from now in: {', '.join(changed)}"

    # -- commands ---------------------------------------------------------------------------
    def keep(self, name: str | None = None) -> Version | None:
        """Keep the project's look under `name` (asked for when None), asking before
        replacing a version of that name."""
        if self.project.clip is None:
            return None
        if name is None:
            default = next_version_name(self.project)
            name = self.window.ask_text("Keep this version", "Version name:", default)
            if name is None:
                return None
        try:
            name = check_version_name(name)
            if version_named(self.project, name) is not None:
                text = f"A version named “{name}” exists. Replace it with the look of now?"
                if self.window.choose("Keep this version", text, [REPLACE]) != REPLACE:
                    return None
            version = current_look(self.project, name)
            self.window.document.push(KeepVersion(version))
        except ZvsError as exc:
            self._say(f"Cannot keep the version: {exc}")
            return None
        self._say(
            f"Kept the version “{name}”. Change the look, render, and compare the two with "
            "Render > Versions > Compare with"
        )
        return version

    def compare(self, name: str | None) -> None:
        """Show the version `name`'s render left of the viewer's divider (None: the original)."""
        if self.compared is not None:
            self.last_compared = self.compared
        self.compared, self.status = name, None
        if name is not None and self.window.viewer.mode() not in COMPARED_MODES:
            self.window.viewer.set_mode("split")
        self.refresh_status()
        self.window.show_current_frame()
        if name is not None:
            self._say(f"Comparing with the version “{name}”, left of the divider")

    def toggle(self) -> None:
        """Stop comparing, or compare with the version last compared with (the newest when
        that one is gone)."""
        if self.compared is not None:
            self.compare(None)
            return
        names = [v.name for v in self.project.versions]
        if names and self.project.clip is not None:
            self.compare(self.last_compared if self.last_compared in names else names[-1])

    def restore(self, name: str) -> bool:
        """Make the version `name`'s settings and keys the project's, as one undo step."""
        try:
            self.window.document.push(RestoreVersion(name))
        except ZvsError as exc:
            self._say(f"Cannot restore the version: {exc}")
            return False
        self._say(f"Restored the version “{name}” (Ctrl+Z undoes it)")
        return True

    def rename(self, name: str, new_name: str | None = None) -> bool:
        if new_name is None:
            new_name = self.window.ask_text("Rename version", "New name:", name)
            if new_name is None:
                return False
        compared = self.compared
        try:
            edit = RenameVersion(name, new_name)
            if compared == name:  # the comparison follows the version
                self.compared = edit.new_name
            self.window.document.push(edit)
        except ZvsError as exc:
            self.compared = compared
            self._say(f"Cannot rename the version: {exc}")
            return False
        if self.compared != compared:
            self.window.show_current_frame()  # its new name on the viewer
        return True

    def delete(self, name: str) -> bool:
        text = f"Delete the version “{name}”? Ctrl+Z brings it back."
        if self.window.choose("Delete version", text, [DELETE]) != DELETE:
            return False
        try:
            self.window.document.push(DeleteVersion(name))
        except ZvsError as exc:
            self._say(f"Cannot delete the version: {exc}")
            return False
        return True

    def render_compared(self) -> int | None:
        """Render the compared version into the cache, as the project's render job."""
        request = self._request()
        if request is None:
            return None
        title = f"Render the version {self.compared} of {self.window.document.name}"
        return self.window.start_render(request, title)

    # -- what the viewer shows --------------------------------------------------------------
    def compared_label(self) -> str | None:
        return f"Version: {self.compared}" if self.compared is not None else None

    def compared_version(self) -> Version | None:
        """The version compared with, while it is in the project."""
        return version_named(self.project, self.compared)

    def compared_frame(self, number: int):
        """The compared version's render of frame `number` (RGB uint8), or None."""
        if self.compared is None or self.status is None:
            return None
        return self.status.rendered_frame(number)

    def refresh_status(self) -> None:
        """Find the compared version's renders again (in the background)."""
        request = self._request() if self.compared is not None else None
        if request is not None:
            self._looked_up = self._what_renders()
            self.watcher.refresh(request, self.window.document.info)

    def _what_renders(self) -> tuple:
        """What the compared version's renders depend on: its look, the clip and the range
        (not the project's own settings and keys)."""
        project = self.project
        return self.compared_version(), project.clip, project.frame_range

    def document_changed(self) -> None:
        """Stop comparing with a version that is gone (deleted, renamed, undone); the clip or
        range may have changed, so look for the renders again."""
        self._enable_shortcuts()
        if self.compared is None:
            return
        if self.compared_version() is None:
            self.compare(None)
        elif self._what_renders() != self._looked_up:  # not on every edit of the project's look
            self.refresh_status()

    def shutdown(self) -> None:
        self.watcher.shutdown()

    def _request(self):
        try:
            version = find_version(self.project, self.compared or "")
        except ZvsError as exc:
            self._say(str(exc))
            return None
        return self.window.request_for(version_project(self.project, version))

    def _status_ready(self, status: RenderStatus) -> None:
        if self.compared is not None:
            self.status = status
            self.window.show_current_frame()

    def _say(self, text: str) -> None:
        self.window.statusBar().showMessage(text, 8000)
