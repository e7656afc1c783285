"""Render presets in the editor: Render > Presets saves the project's look under a name,
applies a saved one (one undo step; the project keeps its matte) or deletes one. The presets
are `zvstudio.project.presets`' files, the same that `zvstudio render --preset` reads.
"""

from __future__ import annotations

from PySide6.QtCore import QObject
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu

from zvstudio.errors import ZvsError
from zvstudio.project.edits import SetSettings
from zvstudio.project.presets import (
    Preset,
    check_name,
    delete_preset,
    describe,
    list_presets,
    load_preset,
    preset_path,
    save_preset,
)

REPLACE = "Replace it"
DELETE = "Delete"


class PresetMenu(QObject):
    """The Render > Presets submenu. `window` is the MainWindow: its document, dialogs
    (`ask_text`, `choose`) and status bar."""

    def __init__(self, window, menu: QMenu) -> None:
        super().__init__(window)
        self.window = window
        self.menu = menu
        self.save_action = QAction("&Save settings as preset…", menu)
        self.save_action.setToolTip(
            "Keep this project's render settings (renderer, model, LoRAs, ControlNet, prompts, "
            "keys, propagation, output) under a name, to use on other shots"
        )
        self.save_action.triggered.connect(lambda: self.save_as())
        self.apply_menu = QMenu("&Apply preset", menu)
        self.apply_menu.setToolTipsVisible(True)
        self.delete_menu = QMenu("&Delete preset", menu)
        menu.setToolTipsVisible(True)
        menu.addAction(self.save_action)
        menu.addMenu(self.apply_menu)
        menu.addMenu(self.delete_menu)
        menu.aboutToShow.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        """List the presets there are now (another window or the CLI may have saved some)."""
        problems: list[str] = []
        presets = list_presets(problems)
        self.apply_menu.clear()
        self.delete_menu.clear()
        for preset in presets:
            apply = self.apply_menu.addAction(preset.name)
            apply.setToolTip(describe(preset.settings))
            apply.triggered.connect(lambda _=False, name=preset.name: self.apply(name))
            delete = self.delete_menu.addAction(preset.name)
            delete.triggered.connect(lambda _=False, name=preset.name: self.delete(name))
        has_clip = self.window.document.project.clip is not None
        self.save_action.setEnabled(has_clip)
        self.apply_menu.setEnabled(bool(presets) and has_clip)
        self.delete_menu.setEnabled(bool(presets))
        if problems:
            self._say(f"A preset cannot be read: {problems[0]}")

    # -- commands ---------------------------------------------------------------------------
    def save_as(self) -> Preset | None:
        """Save the project's settings under a name the user types (asking before replacing
        a preset of that name)."""
        name = self.window.ask_text("Save settings as preset", "Preset name:", "")
        if name is None or not name.strip():
            return None
        try:
            name = check_name(name)
            if preset_path(name).is_file():
                text = f"A preset named “{name}” exists. Replace it with these settings?"
                if self.window.choose("Save settings as preset", text, [REPLACE]) != REPLACE:
                    return None
            preset = save_preset(name, self.window.document.project.settings)
        except ZvsError as exc:
            self._say(f"Cannot save the preset: {exc}")
            return None
        self.refresh()
        self._say(f"Saved the preset “{preset.name}”: {describe(preset.settings)}")
        return preset

    def apply(self, name: str) -> bool:
        """Use the preset `name`'s settings in the project, as one undo step."""
        doc = self.window.document
        try:
            preset = load_preset(name)
        except ZvsError as exc:
            self._say(f"Cannot apply the preset: {exc}")
            return False
        settings = preset.applied_to(doc.project.settings)
        if settings == doc.project.settings:
            self._say(f"The project already has the settings of “{name}”")
            return False
        edit = SetSettings(settings)
        edit.text = f"apply the preset {name}"
        doc.push(edit)
        self._say(f"Applied the preset “{name}” (Ctrl+Z undoes it)")
        return True

    def delete(self, name: str) -> bool:
        text = f"Delete the preset “{name}”? Its file is kept as .bak in the presets folder."
        if self.window.choose("Delete preset", text, [DELETE]) != DELETE:
            return False
        try:
            delete_preset(name)
        except ZvsError as exc:
            self._say(f"Cannot delete the preset: {exc}")
            return False
        self.refresh()
        self._say(f"Deleted the preset “{name}”")
        return True

    def _say(self, text: str) -> None:
        self.window.statusBar().showMessage(text, 8000)
