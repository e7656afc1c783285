"""The editor's main window as the GUI tests use it."""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox

from zvstudio.appsettings import AppSettings
from zvstudio.gui.mainwindow import MainWindow


def shown_window(qtbot, settings: AppSettings) -> MainWindow:
    """A main window, shown: errors go to its `errors` list instead of a dialog, and a
    question about unsaved changes is answered "discard". Call `shutdown()` when done."""
    window = MainWindow(settings)
    window.errors = []
    window.show_error = lambda title, error: window.errors.append(f"{title}: {error}")
    window.ask = lambda *args: QMessageBox.Discard
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    return window
