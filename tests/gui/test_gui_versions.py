"""Render > Versions in the editor (pytest-qt, offscreen): keep a look, try another, compare
the two renders in the viewer, render a version that is not in the cache, restore, rename and
delete, and find the versions again in the saved project."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import make_clip
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage
from windows import shown_window

from zvstudio.appsettings import AppSettings
from zvstudio.gui.versions import DELETE
from zvstudio.project import load_project
from zvstudio.project.edits import SetSettings


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    return make_clip(folder / "walk.mp4", count=12, width=128, height=80)[0]


@pytest.fixture
def window(qtbot):
    win = shown_window(qtbot, AppSettings())
    yield win
    win.shutdown()


def pixels(image: QImage) -> np.ndarray:
    image = image.convertToFormat(QImage.Format_RGB888)
    rows = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), -1)
    return rows[:, : image.width() * 3].reshape(image.height(), image.width(), 3).copy()


def render(qtbot, window, start=None):
    (start or window.start_render)()
    qtbot.waitUntil(lambda: window.render_job is None, timeout=120_000)
    assert window.errors == []


def look(window, **changes):
    window.document.push(SetSettings(replace(window.document.project.settings, **changes)))


def compare_action(window, text: str):
    window.versions.refresh()
    return next(a for a in window.versions.compare_menu.actions() if a.text() == text)


def test_two_looks_are_compared_restored_and_saved(qtbot, window, clip, tmp_path):
    assert window.open_path(clip)
    versions, doc, viewer = window.versions, window.document, window.viewer
    look(window, style="posterize", key_interval=6)
    render(qtbot, window)
    window.ask_text = lambda title, label, text: text  # the name offered: "Version 1"
    window.transport.seek(7)
    assert versions.keep().name == "Version 1"
    window.ask_text = lambda title, label, text: "Poster"
    versions.keep()
    assert [v.name for v in doc.project.versions] == ["Version 1", "Poster"]

    look(window, style="pencil")
    render(qtbot, window)
    qtbot.waitUntil(lambda: window.status is not None and window.status.complete, timeout=10_000)
    viewer.set_mode("rendered")
    action = compare_action(window, "Poster")
    assert "differs from now in: style" in action.toolTip()
    action.trigger()
    assert viewer.mode() == "split"  # a comparison must be visible
    assert viewer.compared_label() == "Version: Poster"
    qtbot.waitUntil(lambda: viewer.shown_image("compared") is not None, timeout=10_000)
    assert not versions.render_action.isEnabled()  # nothing to render: it is in the cache
    poster, pencil = pixels(viewer.shown_image("compared")), pixels(viewer.shown_image("rendered"))
    assert np.array_equal(poster, versions.status.rendered_frame(7))
    assert np.array_equal(pencil, window.status.rendered_frame(7))
    assert not np.array_equal(poster, pencil)

    # Restoring is one undo step; the comparison stays.
    (restore,) = [a for a in versions.restore_menu.actions() if a.text() == "Poster"]
    restore.trigger()
    assert doc.project.settings.style == "posterize"
    versions.refresh()
    (restore,) = [a for a in versions.restore_menu.actions() if a.text() == "Poster"]
    assert not restore.isEnabled()  # the project is that version now
    doc.undo_stack.undo()
    assert doc.project.settings.style == "pencil" and versions.compared == "Poster"

    window.ask_text = lambda title, label, text: "Poster, six keys"
    assert versions.rename("Poster")
    assert versions.compared == "Poster, six keys"
    assert viewer.compared_label() == "Version: Poster, six keys"
    window.choose = lambda title, text, choices: DELETE
    assert versions.delete("Poster, six keys")
    assert versions.compared is None and viewer.compared_label() is None
    doc.undo_stack.undo()  # the version is back; comparing stopped with its deletion
    assert [v.name for v in doc.project.versions] == ["Version 1", "Poster, six keys"]

    path = tmp_path / "walk.zvs"
    window.document.save(path)
    saved = load_project(path)
    assert [v.name for v in saved.versions] == ["Version 1", "Poster, six keys"]
    assert saved.versions[0].settings.style == "posterize"


def test_a_version_not_in_the_cache_is_rendered_without_changing_the_project(qtbot, window, clip):
    assert window.open_path(clip)
    versions, viewer = window.versions, window.viewer
    look(window, style="cartoon", key_interval=4)
    window.ask_text = lambda title, label, text: "Cartoon"
    window.timeline.setFocus()
    qtbot.keyClick(window.timeline, Qt.Key_K, Qt.ControlModifier)  # the menu never opened
    assert [v.name for v in window.document.project.versions] == ["Cartoon"]
    look(window, style="posterize")
    compare_action(window, "Cartoon").trigger()
    qtbot.waitUntil(lambda: versions.status is not None, timeout=10_000)
    assert not versions.status.complete and viewer.shown_image("compared") is None
    versions.refresh()
    assert versions.render_action.isEnabled()
    render(qtbot, window, versions.render_compared)
    qtbot.waitUntil(lambda: versions.status.complete, timeout=10_000)
    assert viewer.shown_image("compared") is not None
    assert window.document.project.settings.style == "posterize"  # the project's look stays
    assert window.status is not None and not window.status.complete
    versions.refresh()
    assert not versions.render_action.isEnabled()
    compare_action(window, "&Nothing (the original)").trigger()
    assert viewer.compared_label() is None and versions.compared is None
    # Shift+K flips between the version last compared with and the original.
    qtbot.keyClick(window.timeline, Qt.Key_K, Qt.ShiftModifier)
    assert versions.compared == "Cartoon" and viewer.compared_label() == "Version: Cartoon"
    qtbot.keyClick(window.timeline, Qt.Key_K, Qt.ShiftModifier)
    assert versions.compared is None and viewer.compared_label() is None
