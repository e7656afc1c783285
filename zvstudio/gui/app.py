"""Start the editor: `zvstudio` or `zvstudio FILE` (a clip to import or a .zvs project)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication, QMessageBox

from zvstudio.appsettings import apply_settings, load_settings
from zvstudio.gui.mainwindow import MainWindow
from zvstudio.project.autosave import pending_recoveries
from zvstudio.resources import __file__ as _resources_init

ICON = Path(_resources_init).with_name("zvstudio.svg")


def create_app(argv: list[str] | None = None) -> QApplication:
    app = QApplication.instance() or QApplication(argv or sys.argv[:1])
    app.setApplicationName("zvstudio")
    app.setOrganizationName("zvstudio")
    app.setDesktopFileName("zvstudio")
    if ICON.is_file():
        app.setWindowIcon(QIcon(str(ICON)))
    return app


def offer_recovery(window: MainWindow) -> bool:
    """Offer the newest autosave a crashed editor left; True when one was recovered. Older
    ones are offered on later starts, one at a time."""
    recoveries = pending_recoveries()
    if not recoveries:
        return False
    recovery = recoveries[0]
    name = recovery.original.name if recovery.original else "an unsaved project"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(recovery.saved_at))
    answer = window.ask(
        "Recover unsaved work?",
        f"zvstudio did not close properly. Recover the changes to {name} autosaved at {when}?\n"
        "No deletes the autosave.",
        QMessageBox.Yes | QMessageBox.No,
    )
    if answer != QMessageBox.Yes:
        recovery.discard()
        return False
    try:
        window.document.load_recovered(recovery.load(), recovery.original)
    except Exception as exc:  # a damaged autosave must not stop the editor from starting
        window.show_error("The autosave could not be recovered", str(exc))
        return False
    recovery.discard()  # this session autosaves it again from now on
    return True


def run_gui(path: str | None = None) -> int:
    app = create_app()
    settings = load_settings()
    apply_settings(settings)
    window = MainWindow(settings)
    window.show()
    window.scan_models()
    if getattr(settings, "load_warning", None):
        window.show_error("Settings were reset", settings.load_warning)
    if not offer_recovery(window) and path:
        window.open_path(path)
    return app.exec()
