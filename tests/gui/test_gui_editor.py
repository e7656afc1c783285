"""Whole user stories in the editor window (pytest-qt, offscreen): import, keys from the
keyboard, undo/redo, render, stale keys, cancel, export, save and reopen, crash recovery, and
the event loop staying responsive while a render runs."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import make_clip, make_colour_clip
from PIL import Image
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QMessageBox
from windows import shown_window

from zvstudio.appsettings import AppSettings
from zvstudio.cli import main as main_cli
from zvstudio.engine.jobs import ANALYSIS, JobState
from zvstudio.gui.app import offer_recovery
from zvstudio.gui.mainwindow import MainWindow
from zvstudio.media import VideoReader, probe
from zvstudio.paths import cache_root
from zvstudio.project import FrameRange, KeyFrame, OutputSettings, load_project
from zvstudio.project.edits import SetKey, SetSettings


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path, _, _ = make_clip(
        tmp_path_factory.mktemp("clip") / "walk.mp4", count=24, width=128, height=80, audio=True
    )
    return path


@pytest.fixture
def window(qtbot):
    win = shown_window(qtbot, AppSettings())
    win.activateWindow()
    yield win
    win.shutdown()


def press(qtbot, window, key, modifier=Qt.NoModifier, times=1):
    """Keys go to the focused widget as a user's would; the window's shortcuts handle them."""
    target = window.timeline
    target.setFocus()
    for _ in range(times):
        qtbot.keyClick(target, key, modifier)


def wait_render(qtbot, window, timeout=120_000):
    qtbot.waitUntil(lambda: window.render_job is None, timeout=timeout)
    qtbot.waitUntil(lambda: window.status is not None and window.status.complete, timeout=10_000)


def test_an_hdr_clip_says_it_is_shown_as_sdr(window, tmp_path):
    grey = np.full((64, 96, 3), 0.5)
    clip = make_colour_clip(tmp_path / "phone.mov", grey, transfer=18, primaries=9, count=4)
    assert window.open_path(clip)
    message = window.statusBar().currentMessage()
    assert message == "HDR (HLG) clip, converted to SDR BT.709 (highlights rolled off)"


def test_the_start_page_offers_ways_to_begin_and_the_recent_projects(qtbot, window, tmp_path):
    page = window.start_page
    assert window.centre.currentWidget() is page
    titles = [button.text() for button in page.buttons]
    assert titles == [
        "Import clip",
        "Open project",
        "Open the demo clip",
        "New from text",
        "Animate image",
    ]
    assert "(Ctrl+I)" in page.buttons[0].description()
    assert page.recent_buttons() == [] and not page.recent_heading.isVisible()

    qtbot.mouseClick(page.buttons[2], Qt.LeftButton)  # the demo: a clip to try things on
    assert window.centre.currentWidget() is window.player
    assert window.document.frame_count == 72 and window.document.info.has_audio
    assert (cache_root() / "demo" / "demo.mp4").is_file()
    assert window.save_to(tmp_path / "first try.zvs")

    (tmp_path / "gone.zvs").write_text("{}")
    window._remember(tmp_path / "gone.zvs")
    (tmp_path / "gone.zvs").unlink()  # deleted since: shown, but it cannot be opened
    window.new_project()  # no clip: the start page again, with the projects just saved
    assert window.centre.currentWidget() is page
    recent = page.recent_buttons()
    assert [b.text() for b in recent] == ["gone", "first try"]
    assert not recent[0].isEnabled() and recent[0].description().startswith("not found")
    qtbot.mouseClick(recent[1], Qt.LeftButton)
    assert window.document.path == tmp_path / "first try.zvs"
    assert window.centre.currentWidget() is window.player


def test_import_key_with_keyboard_undo_redo(qtbot, window, clip):
    assert window.open_path(clip)
    assert [k.frame for k in window.document.project.keyframes] == [0, 10, 20]
    press(qtbot, window, Qt.Key_Right, times=5)
    assert window.transport.frame() == 5
    press(qtbot, window, Qt.Key_M)
    assert [k.frame for k in window.document.project.keyframes] == [0, 5, 10, 20]
    assert window.key_states()[5] == "pending"
    press(qtbot, window, Qt.Key_Z, Qt.ControlModifier)
    assert window.document.project.key_at(5) is None
    press(qtbot, window, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)
    assert window.document.project.key_at(5) is not None
    press(qtbot, window, Qt.Key_End)
    assert window.transport.frame() == 23
    press(qtbot, window, Qt.Key_Home)
    assert window.transport.frame() == 0
    assert window.windowTitle().startswith("*")  # unsaved changes


def test_render_then_one_changed_key_goes_stale_alone(qtbot, window, clip, tmp_path):
    window.open_path(clip)
    job = window.start_render()
    assert window.queue_panel.title_text(job) == "Render walk"
    wait_render(qtbot, window)
    assert set(window.key_states().values()) == {"rendered"}
    assert window.errors == []
    # The viewer shows the render from the cache.
    assert window.rendered_frame(7) is not None

    painting = tmp_path / "painted.png"
    cv2.imwrite(str(painting), np.full((80, 128, 3), (0, 200, 0), np.uint8))
    key = window.document.project.key_at(10)
    window.document.push(SetKey(replace(key, painted_image=str(painting)), "painted_image"))
    qtbot.waitUntil(lambda: window.key_states()[10] == "stale", timeout=10_000)
    assert window.key_states() == {0: "rendered", 10: "stale", 20: "rendered"}
    cached = [s.cached for s in window.status.segments]
    assert cached == [False, False, True]  # 0..9 and 10..19 use key 10; 20..23 does not

    window.document.undo_stack.undo()
    qtbot.waitUntil(lambda: window.key_states()[10] == "rendered", timeout=10_000)


def test_in_and_out_points_render_part_of_the_clip(qtbot, window, clip):
    window.open_path(clip)
    doc = window.document
    press(qtbot, window, Qt.Key_Right, times=3)
    press(qtbot, window, Qt.Key_I)
    press(qtbot, window, Qt.Key_Right, times=9)
    press(qtbot, window, Qt.Key_O)
    assert doc.project.frame_range == FrameRange(3, 12)
    assert window.timeline.in_out() == (3, 12)
    # Key navigation, and back to the range's ends.
    press(qtbot, window, Qt.Key_Down)
    assert window.transport.frame() == 20
    press(qtbot, window, Qt.Key_Up, times=2)
    assert window.transport.frame() == 0
    press(qtbot, window, Qt.Key_I, Qt.ShiftModifier)
    assert window.transport.frame() == 3
    press(qtbot, window, Qt.Key_O, Qt.ShiftModifier)
    assert window.transport.frame() == 12
    # An in point after the out point opens the range to the clip's end; one undo step each.
    window.transport.seek(15)
    press(qtbot, window, Qt.Key_I)
    assert doc.project.frame_range == FrameRange(15, 23)
    doc.undo_stack.undo()
    assert doc.project.frame_range == FrameRange(3, 12)

    # Frames 3..12 lie between keys 0, 10 and 20: the render uses all three, as the whole
    # clip's render does, and its frames are cached for it.
    job = window.start_render()
    assert window.queue_panel.title_text(job) == "Render walk, frames 3–12"
    wait_render(qtbot, window)
    assert window.errors == []
    assert window.key_states() == {0: "rendered", 10: "rendered", 20: "rendered"}
    assert [(s.first, s.last) for s in window.status.segments] == [(0, 9), (10, 19)]
    press(qtbot, window, Qt.Key_X, Qt.AltModifier)
    assert doc.project.frame_range is None and window.timeline.in_out() == (None, None)
    window.timeline.out_point_requested.emit(7)  # the timeline's context menu
    assert doc.project.frame_range == FrameRange(0, 7)
    window.timeline.range_clear_requested.emit()
    assert doc.project.frame_range is None
    qtbot.waitUntil(lambda: window.status is not None and not window.status.complete)
    assert [s.cached for s in window.status.segments] == [True, True, False]  # 20..23 is not


def test_cancel_a_render_from_the_queue_panel(qtbot, window, tmp_path):
    long_clip, _, _ = make_clip(tmp_path / "long.mp4", count=120, width=320, height=192)
    window.open_path(long_clip)
    job = window.start_render()
    qtbot.waitUntil(lambda: window.queue_panel.state_text(job).lower() == "running", timeout=20_000)
    clicked = time.monotonic()
    qtbot.mouseClick(window.queue_panel.cancel_button(job), Qt.LeftButton)
    qtbot.waitUntil(lambda: window.render_job is None, timeout=5_000)
    assert time.monotonic() - clicked < 1.5
    assert "cancel" in window.queue_panel.state_text(job).lower()
    assert window.errors == []


def test_export_save_and_reopen(qtbot, window, clip, tmp_path):
    window.open_path(clip)
    window.document.push(SetKey(KeyFrame(5, seed=3)))
    out = tmp_path / "export.mp4"
    job = window.export_to(out, OutputSettings(format="h264", crf=20, audio=True), 0, 23)
    qtbot.waitUntil(lambda: window.bridge.queue.job(job).state.ended, timeout=120_000)
    assert window.bridge.queue.job(job).error is None
    info = probe(out)
    assert info.frame_count == 24 and info.has_audio

    project_file = tmp_path / "story.zvs"
    assert window.save_to(project_file)
    assert not window.document.dirty and window.windowTitle().startswith("story.zvs")
    saved = window.document.project
    window.document.new()
    assert window.open_path(project_file)
    assert window.document.project == saved
    assert load_project(project_file).key_at(5).seed == 3


def test_a_moved_clip_is_located_and_its_renders_found_again(qtbot, window, tmp_path):
    source = tmp_path / "shoot" / "walk.mp4"
    source.parent.mkdir()
    make_clip(source, count=24, width=128, height=80)
    assert window.open_path(source)
    window.document.push(SetKey(KeyFrame(5, seed=3)))
    window.start_render()
    wait_render(qtbot, window)
    project_file = tmp_path / "story.zvs"
    assert window.save_to(project_file)
    saved = window.document.project
    window.document.new()
    moved = tmp_path / "archive" / "walk-final.mp4"
    moved.parent.mkdir()
    source.rename(moved)

    questions = []
    window.ask = lambda title, text, buttons: questions.append(title) or QMessageBox.Open
    window.choose_file = lambda title, folder, filters: str(moved)
    assert window.open_path(project_file)
    assert questions == ["Clip not found"] and window.errors == []
    doc = window.document
    assert doc.project.clip.path == str(moved) and doc.project.keyframes == saved.keyframes
    assert doc.dirty and doc.path == project_file
    assert window.statusBar().currentMessage().startswith(f"Clip relinked to {moved}")
    # The render cache is keyed by content: every key is rendered already.
    qtbot.waitUntil(lambda: window.status is not None, timeout=10_000)
    assert set(window.key_states().values()) == {"rendered"} and window.status.complete
    assert window.save_to(project_file)
    assert load_project(project_file).clip.path == str(moved)


def test_a_projects_moved_files_are_found_in_a_folder(qtbot, window, clip, tmp_path):
    painting = tmp_path / "paint" / "frame_000010.png"
    painting.parent.mkdir()
    cv2.imwrite(str(painting), np.zeros((80, 128, 3), np.uint8))
    assert window.open_path(clip)
    window.document.push(SetKey(KeyFrame(10, painted_image=str(painting))))
    assert window.save_to(tmp_path / "story.zvs")
    window.document.new()
    moved = tmp_path / "drive" / "job" / "paint" / painting.name
    moved.parent.mkdir(parents=True)
    painting.rename(moved)

    questions = []
    window.ask = lambda title, text, buttons: questions.append(text) or QMessageBox.Open
    window.choose_folder = lambda title, folder: str(tmp_path / "drive")
    assert window.open_path(tmp_path / "story.zvs")
    assert len(questions) == 1 and f"key 10's painting: {painting}" in questions[0]
    doc = window.document
    assert doc.project.key_at(10).painted_image == str(moved) and doc.dirty
    assert doc.undo_stack.undoText() == "relink 1 file"
    assert window.statusBar().currentMessage().startswith("Found 1 of 1 file in")
    window.find_missing_files()  # nothing is missing now: no question
    assert len(questions) == 1
    assert window.statusBar().currentMessage() == "No file of this project is missing"
    doc.undo_stack.undo()
    assert doc.project.key_at(10).painted_image == str(painting)


def test_locating_another_file_asks_again_and_can_be_declined(qtbot, window, clip, tmp_path):
    source = tmp_path / "walk.mp4"
    source.write_bytes(clip.read_bytes())
    assert window.open_path(source)
    assert window.save_to(tmp_path / "story.zvs")
    window.document.new()
    source.unlink()
    other, _, _ = make_clip(tmp_path / "other.mp4", count=12, width=128, height=80)
    answers = {"Clip not found": QMessageBox.Open, "Another clip": QMessageBox.No}
    window.ask = lambda title, text, buttons: answers[title]
    window.choose_file = lambda title, folder, filters: str(other)
    assert not window.open_path(tmp_path / "story.zvs")
    assert window.document.project.clip is None  # nothing was opened
    answers["Another clip"] = QMessageBox.Yes
    assert window.open_path(tmp_path / "story.zvs")
    assert [key.frame for key in window.document.project.keyframes] == [0, 10]
    assert "removed: 20" in window.statusBar().currentMessage()
    window.document.new()
    answers["Clip not found"] = QMessageBox.Cancel
    assert not window.open_path(tmp_path / "story.zvs") and window.errors == []


def test_replace_the_clip_keeps_the_keys_and_undoes(qtbot, window, clip, tmp_path):
    window.open_path(clip)
    window.start_render()
    wait_render(qtbot, window)
    shorter, _, _ = make_clip(tmp_path / "walk-v2.mp4", count=12, width=128, height=80)
    window.choose_file = lambda title, folder, filters: str(shorter)
    assert window.replace_clip_dialog()
    doc = window.document
    assert doc.project.clip.path == str(shorter) and doc.frame_count == 12
    assert [key.frame for key in doc.project.keyframes] == [0, 10]
    assert window.transport.frame_count() == 12 and window.transport.frame() == 0
    assert "removed: 20" in window.statusBar().currentMessage()
    # Other content: nothing rendered from the first clip is shown for it.
    qtbot.waitUntil(lambda: window.status is not None and window.status.last == 11)
    assert set(window.key_states().values()) == {"pending"}
    doc.undo_stack.undo()
    assert doc.project.clip.path == str(clip) and doc.frame_count == 24
    qtbot.waitUntil(lambda: window.status is not None and window.status.last == 23)
    assert window.key_states() == {0: "rendered", 10: "rendered", 20: "rendered"}
    doc.undo_stack.redo()
    assert doc.frame_count == 12 and window.errors == []


def test_crash_recovery_from_an_autosave(qtbot, window, clip, tmp_path):
    code = (
        "import os, sys\n"
        "from zvstudio.project import Project, ClipRef, KeyFrame\n"
        "from zvstudio.project.autosave import Autosaver\n"
        "key = KeyFrame(4, prompt='x')\n"
        "project = Project(clip=ClipRef.from_file(sys.argv[1]), keyframes=[key])\n"
        "Autosaver().save(project, None)\n"
        "os._exit(1)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(clip)], check=False)
    window.ask = lambda *args: QMessageBox.Yes
    assert offer_recovery(window)
    assert window.document.project.key_at(4).prompt == "x"
    assert window.document.dirty  # recovered work is not saved yet
    assert not offer_recovery(window)  # offered once


def test_autosave_writes_the_unsaved_project(qtbot, window, clip):
    from zvstudio.project.autosave import pending_recoveries

    window.open_path(clip)
    window.document.toggle_key(3)
    window.autosave()
    assert window.autosaver.project_file.is_file()
    assert load_project(window.autosaver.project_file).key_at(3) is not None
    assert pending_recoveries() == []  # this editor is alive: not a crash


def test_event_loop_never_stalls_during_a_render(qtbot, window, tmp_path):
    busy_clip, _, _ = make_clip(tmp_path / "busy.mp4", count=60, width=320, height=192)
    window.open_path(busy_clip)
    gaps, last = [], [time.monotonic()]

    def tick():
        now = time.monotonic()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(10)
    window.start_render()
    wait_render(qtbot, window)
    timer.stop()
    worst = max(gaps)
    print(f"worst event-loop stall during a render: {worst * 1000:.0f} ms over {len(gaps)} ticks")
    # The target is 100 ms on this machine; the bound here is loose for loaded CI machines
    # and catches real blocking (a render on the GUI thread stalls for seconds).
    assert worst < 0.5


def test_set_a_prompt_in_the_inspector_and_undo_it(qtbot, window, clip):
    window.open_path(clip)
    edit = window.inspector.prompt_edit
    edit.setFocus()
    qtbot.keyClicks(edit, "a watercolour city")
    assert window.document.project.settings.prompt == "a watercolour city"
    window.undo_action.trigger()  # typing is one undo step
    assert window.document.project.settings.prompt == ""
    assert edit.toPlainText() == ""


def test_preview_the_key_at_the_playhead(qtbot, window, clip):
    window.open_path(clip)
    window.transport.seek(6)
    job = window.preview_key()
    qtbot.waitUntil(lambda: window.bridge.queue.job(job).state.ended, timeout=60_000)
    qtbot.waitUntil(lambda: window.preview_image is not None, timeout=5_000)
    number, image = window.preview_image
    assert number == 6 and image.shape == (80, 128, 3)
    assert window.rendered_frame(6) is image  # shown in the viewer's rendered side
    assert window.viewer.mode() != "original"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tiny_models import write_tiny_config_dir, write_tiny_diffusers

    root = tmp_path_factory.mktemp("tiny")
    return write_tiny_diffusers(root / "model"), write_tiny_config_dir(root / "config")


def test_try_seeds_at_a_key_and_use_the_one_picked(qtbot, window, clip, tiny_model, tmp_path):
    model, config = tiny_model
    window.diffusion_config_dir = config
    assert window.open_path(clip)
    doc = window.document
    window.transport.seek(10)
    assert window.try_seeds() is None  # a stylizer: the seed changes nothing
    assert "Only Stable Diffusion keys" in window.statusBar().currentMessage()
    diffusion = replace(
        doc.project.settings, renderer="diffusion", model=str(model), controlnet=None, steps=2
    )
    doc.push(SetSettings(replace(diffusion, seed=5)))
    asked = []
    answers = iter([7, None])

    def choose(frame, variations, target):
        asked.append((frame, [seed for seed, _ in variations], target))
        return next(answers)

    window.choose_seed = choose
    window.try_seeds()
    qtbot.waitUntil(lambda: window.seeds_job is None, timeout=120_000)
    assert window.errors == []
    assert asked == [(10, [5, 6, 7, 8], "key 10's seed")]
    assert doc.project.key_at(10).seed == 7 and doc.project.settings.seed == 5
    frame, image = window.preview_image
    assert frame == 10 and image.shape == (80, 128, 3)  # the picked variation is shown
    assert window.rendered_frame(10) is image
    assert "Seed 7 for key 10" in window.statusBar().currentMessage()
    # Saved, the key carries the parameters it was rendered with, as A1111 writes them.
    window.transport.seek(10)
    window.choose_save_path = lambda title, suggested, kinds: str(tmp_path / "key.png")
    with Image.open(window.save_frame()) as png:
        text = png.text["parameters"]
    assert "Seed: 7," in text and "Steps: 2," in text and "Frame: 10," in text
    assert f"Model: {model.name}," in text
    doc.undo_stack.undo()
    assert doc.project.key_at(10).seed is None

    window.transport.seek(4)  # no key here: the choice would be every key's seed
    window.try_seeds(2)
    qtbot.waitUntil(lambda: window.seeds_job is None, timeout=120_000)
    assert asked[1] == (4, [5, 6], "the seed of every key")
    assert doc.project.settings.seed == 5  # cancelled: nothing changed


def _drag(window, event_type, paths):
    from PySide6.QtCore import QMimeData, QPointF, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent

    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    point, actions = QPointF(10, 10), Qt.CopyAction
    if event_type == "enter":
        event = QDragEnterEvent(point.toPoint(), actions, data, Qt.LeftButton, Qt.NoModifier)
        window.dragEnterEvent(event)
    else:
        event = QDropEvent(point, actions, data, Qt.LeftButton, Qt.NoModifier)
        window.dropEvent(event)
    return event.isAccepted()


def test_drop_a_clip_on_the_window_imports_it(qtbot, window, clip, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a clip")
    assert not _drag(window, "enter", [notes])  # refused while dragging: nothing to import
    assert _drag(window, "enter", [notes, clip])
    assert _drag(window, "drop", [notes, clip])
    assert window.document.project.clip is not None
    assert Path(window.document.project.clip.path) == clip
    assert [k.frame for k in window.document.project.keyframes] == [0, 10, 20]  # as imported


def test_renders_run_where_the_settings_say(qtbot, window, clip, tmp_path):
    # Edit > Settings' device, precision, memory and offload reach the project's renders (and
    # its propagation's device): "out of GPU memory: enable offload in Settings" must work.
    from zvstudio.project.edits import SetSettings

    window.settings = AppSettings(
        device="cpu", precision="fp32", memory_limit_gb=6.0, offload="sequential"
    )
    window.diffusion_config_dir = tmp_path / "configs"
    assert window.open_path(clip)
    settings = replace(
        window.document.project.settings,
        renderer="diffusion",
        model="m.safetensors",
        controlnet=None,
    )
    window.document.push(SetSettings(settings))
    request = window.current_request(tmp_path / "out.mp4")
    assert request is not None, window.statusBar().currentMessage()
    diffusion = request.renderer.diffusion
    assert (diffusion.device, diffusion.precision, diffusion.offload) == (
        "cpu",
        "fp32",
        "sequential",
    )
    assert diffusion.memory_limit_gb == 6.0 and not diffusion.allow_pickle
    assert diffusion.config_dir == tmp_path / "configs"
    assert request.propagation.device == "cpu"
    window.settings = AppSettings(device="cuda:1", allow_pickle=True)
    request = window.current_request(tmp_path / "out.mp4")
    assert request.renderer.diffusion.device == request.propagation.device == "cuda:1"
    assert request.renderer.diffusion.allow_pickle


def test_an_imported_clip_gets_a_key_at_each_shot(qtbot, window, tmp_path):
    from test_cuts import scene

    from zvstudio.media.synth import write_clip

    path = tmp_path / "two_shots.mp4"
    write_clip(path, scene(0, 14) + scene(1, 12), options={"crf": "12"})  # a cut at 14
    assert window.open_path(path)
    qtbot.waitUntil(lambda: window.document.shot_cuts == [14], timeout=20_000)
    assert window.timeline.cuts() == [14]
    assert [k.frame for k in window.document.project.keyframes] == [0, 10, 14, 24]
    assert not window.errors


def test_opening_another_clip_stops_reading_the_first(qtbot, window, clip, tmp_path):
    import threading

    release = threading.Event()
    window.bridge.submit(lambda context: release.wait(10), "Busy", ANALYSIS)
    assert window.open_path(clip)
    first = (window.prepare_job, window.levels_job)
    other, _, _ = make_clip(tmp_path / "other.mp4", count=9, width=64, height=48)
    assert window.open_path(other)
    states = {job.id: job.state for job in window.bridge.jobs()}
    assert [states[job] for job in first] == [JobState.CANCELLED] * 2
    assert window.levels_job is None  # the other clip has no sound to measure
    release.set()
    qtbot.waitUntil(lambda: window.proxy is not None, timeout=20_000)
    assert len(window.proxy) == 9 and window.timeline.cuts() == []
    assert not window.errors


def open_still_then_moving(window, folder: Path) -> None:
    """A clip still for 20 frames, then panning fast over new texture for 20."""
    from test_placement import _moving_clip

    from zvstudio.media.synth import write_clip

    path = folder / "still_then_moving.mp4"
    frames = [np.kron(f, np.ones((2, 2, 1), np.uint8)) for f in _moving_clip(20, 20, 4)]
    write_clip(path, frames, options={"crf": "10"})
    assert window.open_path(path)


def until_cancelled(context) -> None:
    while True:
        context.cancel.raise_if_cancelled()
        time.sleep(0.01)


def test_keys_placed_by_motion_in_one_undo_step(qtbot, window, tmp_path):
    open_still_then_moving(window, tmp_path)
    document = window.document
    document.push(SetKey(KeyFrame(5, prompt="a painted look")))  # an override stays
    even = [k.frame for k in document.project.keyframes]
    assert even == [0, 5, 10, 20, 30]
    qtbot.mouseClick(window.inspector.motion_keys_button, Qt.LeftButton)
    assert window.motion.job is not None
    qtbot.waitUntil(lambda: window.motion.job is None, timeout=30_000)
    keys = [k.frame for k in document.project.keyframes]
    assert 5 in keys and len(keys) == 5  # four placed, three of them in the moving half
    assert sum(k >= 20 for k in keys) == 3
    assert document.project.key_at(5).prompt == "a painted look"
    document.undo_stack.undo()
    assert [k.frame for k in document.project.keyframes] == even
    assert not window.errors


def test_the_risk_band_rises_where_keys_are_far_from_the_motion(qtbot, window, tmp_path):
    open_still_then_moving(window, tmp_path)
    assert window.timeline.risk_levels() is None
    render = window.bridge.submit(until_cancelled, "A long render")  # the band does not wait
    window.risk_action.trigger()  # View > Show where propagation may fail: analyses first
    qtbot.waitUntil(lambda: window.timeline.risk_levels() is not None, timeout=30_000)
    assert window.bridge.queue.job(render).state is JobState.RUNNING
    window.bridge.cancel(render)
    levels = window.timeline.risk_levels()
    assert levels[[0, 10, 20, 30]].max() == 0  # on the keys
    assert levels[1:10].max() < 0.2 < levels[31:40].max()  # still vs moving, one way
    press(qtbot, window, Qt.Key_R)  # go to the frame most at risk: in the moving half
    riskiest = window.transport.frame()
    assert riskiest > 30 and levels[riskiest] == levels.max()
    window.risk_action.trigger()
    window.risk_action.trigger()  # on again: the analysis is at hand, no job
    assert window.motion.job is None and window.timeline.risk_levels() is not None
    window.document.toggle_key(35)  # a key where the risk was: it falls there at once
    after = window.timeline.risk_levels()
    assert after[35] == 0 and after[31:40].mean() < levels[31:40].mean()
    window.risk_action.trigger()
    assert window.timeline.risk_levels() is None
    assert not window.errors


def test_keys_placed_by_motion_while_the_clip_is_being_measured(qtbot, window, tmp_path):
    open_still_then_moving(window, tmp_path)
    window.risk_action.trigger()  # starts measuring the motion
    measuring = window.motion.job
    assert measuring is not None
    assert window.motion.place_keys(10) == measuring  # placed once it is measured
    qtbot.waitUntil(
        lambda: (
            window.motion.job is None
            and sum(k.frame >= 20 for k in window.document.project.keyframes) == 3
        ),
        timeout=30_000,
    )
    assert not window.errors


def test_cancelling_the_risk_analysis_turns_the_band_off(qtbot, window, tmp_path):
    open_still_then_moving(window, tmp_path)
    # The analysis waits behind another one.
    window.bridge.submit(lambda context: time.sleep(1), "Busy", ANALYSIS)
    window.risk_action.trigger()
    measuring = window.motion.job
    assert measuring is not None
    window.bridge.cancel(measuring)
    qtbot.waitUntil(lambda: window.motion.job is None, timeout=10_000)
    assert not window.risk_action.isChecked() and window.timeline.risk_levels() is None
    window.document.toggle_key(35)  # an edit does not start it again
    assert window.motion.job is None
    assert not window.errors


def test_the_risk_band_setting_is_remembered(qtbot, tmp_path):
    from zvstudio.appsettings import load_settings

    first = MainWindow(AppSettings())
    qtbot.addWidget(first)
    first.risk_action.trigger()
    assert load_settings().show_risk
    first.shutdown()
    second = MainWindow(load_settings())
    qtbot.addWidget(second)
    assert second.risk_action.isChecked() and second.motion.showing_risk
    second.shutdown()


def test_export_is_offered_at_the_render_size(window, clip, monkeypatch):
    from zvstudio.gui import export_dialog

    shown = []
    monkeypatch.setattr(export_dialog.ExportDialog, "exec", lambda self: shown.append(self) or 0)
    window.export_dialog()
    assert not shown  # no clip, no export
    window.open_path(clip)
    settings = window.document.project.settings
    window.document.push(SetSettings(replace(settings, short_side=40)))
    window.export_dialog()
    assert shown[-1].size_label.text() == "64 × 40"  # the 128 x 80 clip at 40 on its short side
    assert not hasattr(shown[-1], "colour_label")  # an SDR clip: nothing to say
    hdr = make_colour_clip(clip.parent / "phone.mov", np.full((32, 48, 3), 0.5), 18, 9)
    window.open_path(hdr)
    window.export_dialog()
    assert shown[-1].colour_label.text() == "SDR BT.709 (the clip is HDR (HLG))"


def test_a_folder_of_frames_dropped_on_the_window_is_a_clip(qtbot, window, clip, tmp_path):
    # Frames exported (or painted over) elsewhere come back as a clip, with their sound.
    frames = tmp_path / "walk_frames"
    assert main_cli(["render", str(clip), "--style", "posterize", "-q", "-o", str(frames)]) == 0
    assert _drag(window, "enter", [frames])
    assert _drag(window, "drop", [frames])
    doc = window.document
    assert doc.project.clip.path == str(frames / "frame_%06d.png")
    assert doc.frame_count == 24 and doc.info.has_audio
    assert window.windowTitle().startswith("walk_frames/frame_######.png (unsaved)")
    assert window.statusBar().currentMessage() == ""  # its timing.json gives the rate
    job = window.start_render()
    assert window.queue_panel.title_text(job) == "Render walk_frames"
    wait_render(qtbot, window)
    assert set(window.key_states().values()) == {"rendered"}
    assert window.errors == []
    assert window.rendered_frame(7) is not None
    assert window._suggested_project_path() == tmp_path / "walk_frames.zvs"

    (frames / "timing.json").unlink()  # frames from elsewhere: the rate is a guess, and said
    assert window.open_path(frames / "frame_000003.png")
    assert "24 fps is assumed" in window.statusBar().currentMessage()


def test_the_rate_of_a_sequence_is_set_and_its_renders_kept(qtbot, window, clip, tmp_path):
    frames = tmp_path / "walk_frames"
    assert main_cli(["render", str(clip), "--style", "posterize", "-q", "-o", str(frames)]) == 0
    (frames / "timing.json").unlink()  # frames from elsewhere: 24 fps assumed
    assert window.open_path(clip)
    assert not window.sequence_rate_action.isEnabled()  # a video's rate is in the file
    assert window.open_path(frames)
    assert window.sequence_rate_action.isEnabled()
    wait_render_after(qtbot, window)
    window.transport.seek(13)
    asked = []
    typed = iter(["12", "fast"])

    def answer(title, label, items, current):
        asked.append((current, items))
        return next(typed)

    window.ask_item = answer
    assert window.sequence_rate_dialog()
    assert asked[0][0] == "24" and "29.97" in asked[0][1]
    doc = window.document
    assert doc.fps == 12 and not doc.info.timing_assumed
    assert window.transport.frame() == 13  # the playhead stays on its frame
    timecode = window.transport_bar.timecode_label.text()
    assert timecode == "00:00:01:01 / 00:00:01:11"  # 12 frames a second
    assert window.statusBar().currentMessage() == "The sequence plays at 12 fps"
    assert not doc.dirty  # nothing in the project changed: the rate is beside the frames
    qtbot.waitUntil(lambda: window.status is not None and window.status.complete, timeout=10_000)
    assert set(window.key_states().values()) == {"rendered"}  # nothing to render again

    assert not window.sequence_rate_dialog()  # a typo is refused and changes nothing
    assert "not a frame rate" in window.errors[-1]
    assert doc.fps == 12


def test_a_matte_shows_the_render_over_the_original_without_rendering_again(
    qtbot, window, clip, tmp_path
):
    assert window.open_path(clip)
    panel = window.inspector.render_panel
    assert not panel.clear_matte_button.isEnabled() and not panel.matte_feather_spin.isEnabled()
    wait_render_after(qtbot, window)
    matte = tmp_path / "matte"
    matte.mkdir()
    white_left = np.zeros((80, 128), np.uint8)
    white_left[:, :64] = 255
    for number in range(24):
        cv2.imwrite(str(matte / f"m_{number:03d}.png"), white_left)
    short = tmp_path / "short"
    short.mkdir()
    cv2.imwrite(str(short / "m_000.png"), white_left)
    chosen = iter([str(short / "m_000.png"), str(matte / "m_005.png")])
    panel.dialogs.open_file = lambda title, kinds: next(chosen)

    panel.matte_button.click()  # one frame for a clip of 24: refused, with the reason
    assert window.document.project.settings.matte is None
    assert "has 1 frames and the clip 24" in window.inspector.message_label.text()
    panel.matte_button.click()
    settings = window.document.project.settings
    assert settings.matte == str(matte / "m_%03d.png")
    assert panel.matte_label.text().startswith("matte/m_###.png: the render shows")
    qtbot.waitUntil(lambda: window.status is not None and window.status.complete, timeout=10_000)
    assert set(window.key_states().values()) == {"rendered"}  # nothing to render again

    with VideoReader(clip) as reader:
        original = reader.frame(7)
    rendered, shown = window.rendered_frame(7), window.shown_render(7)
    assert np.array_equal(shown[:, :64], rendered[:, :64])
    assert np.array_equal(shown[:, 64:], original[:, 64:])
    assert not np.array_equal(rendered[:, 64:], original[:, 64:])

    window.transport.seek(7)
    press(qtbot, window, Qt.Key_5)  # View matte: the original, tinted where it stays
    assert window.viewer.mode() == "matte"
    overlay = window.viewer.shown_image("original")
    assert overlay.pixelColor(10, 40).getRgb()[:3] == tuple(original[40, 10])
    tinted = original[40, 120] * 0.5 + np.array([220, 30, 40]) * 0.5
    assert np.abs(np.array(overlay.pixelColor(120, 40).getRgb()[:3]) - tinted).max() <= 0.5
    assert window.viewer.shown_image("rendered") is None
    window.viewer.set_mode("split")
    assert window.viewer.shown_image("rendered") is not None

    panel.matte_invert_check.click()
    shown = window.shown_render(7)
    assert np.array_equal(shown[:, :64], original[:, :64])
    assert set(window.key_states().values()) == {"rendered"}
    panel.matte_crop_check.click()  # keys rendered closer depend on the matte: out of date
    assert window.document.project.settings.matte_crop
    qtbot.waitUntil(lambda: set(window.key_states().values()) == {"stale"}, timeout=10_000)
    window.document.undo_stack.undo()
    qtbot.waitUntil(lambda: set(window.key_states().values()) == {"rendered"}, timeout=10_000)
    window.document.undo_stack.undo()
    window.document.undo_stack.undo()
    assert window.document.project.settings.matte is None
    assert np.array_equal(window.shown_render(7), rendered)


def test_view_matte_boxes_the_area_of_keys_rendered_closer(qtbot, window, clip, tmp_path):
    from zvstudio.engine.matte_keys import matte_area

    assert window.open_path(clip)
    square = np.zeros((80, 128), np.uint8)
    square[30:50, 70:90] = 255
    (tmp_path / "matte").mkdir()
    for number in range(24):
        cv2.imwrite(str(tmp_path / "matte" / f"m_{number:03d}.png"), square)
    panel = window.inspector.render_panel
    panel.set_matte(str(tmp_path / "matte" / "m_000.png"))
    window.transport.seek(3)
    window.viewer.set_mode("matte")
    yellow = (255, 210, 0)
    area = matte_area(square / 255.0)
    edge = (area.x, area.y + area.height // 2)
    assert window.viewer.shown_image("original").pixelColor(*edge).getRgb()[:3] != yellow
    panel.matte_crop_check.click()
    qtbot.waitUntil(
        lambda: window.viewer.shown_image("original").pixelColor(*edge).getRgb()[:3] == yellow,
        timeout=5000,
    )
    shown = window.viewer.shown_image("original")
    right, bottom = area.x + area.width - 1, area.y + area.height - 1
    assert shown.pixelColor(right, area.y + 1).getRgb()[:3] == yellow
    assert shown.pixelColor(area.x + 2, bottom).getRgb()[:3] == yellow
    assert shown.pixelColor(80, 40).getRgb()[:3] != yellow  # the subject itself is not drawn on


def test_keys_exported_for_painting_come_back_as_painted_keys(qtbot, window, clip, tmp_path):
    paint = tmp_path / "paint"
    window.choose_folder = lambda title, folder: str(paint)
    asked = []
    window.choose = lambda title, text, choices: asked.append(choices) or choices[0]
    assert window.open_path(clip)
    doc = window.document
    assert window.painting.export_keys() == [0, 10, 20]
    assert asked == []  # nothing rendered yet: the original frames, without asking
    with VideoReader(clip) as reader:
        original = reader.frame(10)
    exported = cv2.cvtColor(cv2.imread(str(paint / "frame_000010.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(exported, original)

    # The artist paints key 10 and a new key at 15, and leaves 0 and 20 as they were.
    cv2.imwrite(str(paint / "frame_000010.png"), np.full((80, 128, 3), (0, 0, 255), np.uint8))
    cv2.imwrite(str(paint / "frame_000015.png"), np.full((80, 128, 3), (0, 255, 0), np.uint8))
    assert window.painting.use_painted_keys() == [10, 15]
    painted = {k.frame: k.painted_image for k in doc.project.keyframes}
    assert painted == {
        0: None,
        10: str((paint / "frame_000010.png").resolve()),
        15: str((paint / "frame_000015.png").resolve()),
        20: None,
    }
    assert "not painted yet, left as they were: 0, 20" in window.statusBar().currentMessage()
    wait_render_after(qtbot, window)
    assert np.abs(window.rendered_frame(10).astype(int) - (255, 0, 0)).max() <= 2  # red key

    # Painting key 10 again in the paint program makes it stale, with no edit in the editor.
    qtbot.waitUntil(lambda: len(window.painting.watcher.files()) == 2, timeout=5000)
    time.sleep(0.05)
    cv2.imwrite(str(paint / "frame_000010.png"), np.full((80, 128, 3), (255, 0, 0), np.uint8))
    qtbot.waitUntil(lambda: window.key_states()[10] == "stale", timeout=10_000)
    assert window.key_states()[15] == "rendered"

    doc.undo_stack.undo()  # one step takes every painting back
    assert all(k.painted_image is None for k in doc.project.keyframes)
    assert doc.project.key_at(15) is None
    assert window.painting.watcher.files() == []

    # Once rendered, the choice is asked: the rendered keys, to touch up.
    window.choose = lambda title, text, choices: choices[1]
    wait_render_after(qtbot, window)
    touched = tmp_path / "touch"
    window.choose_folder = lambda title, folder: str(touched)
    assert window.painting.export_keys() == [0, 10, 20]
    written = cv2.cvtColor(cv2.imread(str(touched / "frame_000020.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(written, window.rendered_frame(20))


def wait_render_after(qtbot, window):
    window.start_render()
    wait_render(qtbot, window)
    assert set(window.key_states().values()) == {"rendered"}


def test_go_to_a_timecode_and_save_the_frame_shown(qtbot, window, clip, tmp_path):
    assert window.open_path(clip)
    typed = iter(["0:15", "+3", "later"])
    window.ask_text = lambda title, label, text: next(typed)
    window.go_to_position()
    assert window.transport.frame() == 15  # 0 s and 15 frames at 25 fps
    window.go_to_position()
    assert window.transport.frame() == 18
    window.go_to_position()
    assert window.transport.frame() == 18 and "not a frame number" in (
        window.statusBar().currentMessage()
    )

    window.choose_save_path = lambda title, suggested, kinds: str(tmp_path / "still")
    saved = window.save_frame()  # not rendered yet: the original
    assert saved == tmp_path / "still.png"
    with VideoReader(clip) as reader:
        original = reader.frame(18)
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(saved)), cv2.COLOR_BGR2RGB), original)
    wait_render_after(qtbot, window)
    window.save_frame()
    still = cv2.cvtColor(cv2.imread(str(saved)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(still, window.rendered_frame(18))
    with Image.open(saved) as png:
        assert "parameters" not in png.text  # a stylizer's: no diffusion parameters
    assert not np.array_equal(still, original)
    assert "Saved the rendered frame 18" in window.statusBar().currentMessage()
    window.viewer.set_mode("original")
    window.save_frame()
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(saved)), cv2.COLOR_BGR2RGB), original)


def test_a_look_is_saved_as_a_preset_and_applied_to_another_shot(window, clip, tmp_path):
    from zvstudio.gui.presets import DELETE, REPLACE
    from zvstudio.project.presets import load_preset, presets_folder

    assert window.open_path(clip)
    doc, presets = window.document, window.presets
    pencil = replace(doc.project.settings, style="pencil", key_interval=5, poisson=True)
    doc.push(SetSettings(pencil))
    window.ask_text = lambda title, label, text: "  Pencil fives "
    assert presets.save_as().name == "Pencil fives"
    assert load_preset("Pencil fives").settings.style == "pencil"
    assert "Saved the preset “Pencil fives”: style pencil" in window.statusBar().currentMessage()

    # Another look, with a matte of this shot.
    other = replace(pencil, style="posterize", key_interval=8, poisson=False, matte=str(clip))
    doc.push(SetSettings(other))
    presets.refresh()
    (action,) = presets.apply_menu.actions()
    assert action.text() == "Pencil fives" and "a key every 5 frames" in action.toolTip()
    action.trigger()
    applied = doc.project.settings
    assert (applied.style, applied.key_interval, applied.poisson) == ("pencil", 5, True)
    assert applied.matte == str(clip)  # the shot keeps its matte
    assert doc.undo_stack.undoText() == "apply the preset Pencil fives"
    doc.undo_stack.undo()
    assert doc.project.settings == other

    # Saving under the same name asks first.
    window.choose = lambda title, text, choices: None
    assert presets.save_as() is None
    assert load_preset("Pencil fives").settings.style == "pencil"
    window.choose = lambda title, text, choices: REPLACE
    assert presets.save_as().settings.style == "posterize"
    assert load_preset("Pencil fives").settings.matte is None  # the matte stays with the shot

    window.ask_text = lambda title, label, text: "a/b"
    assert presets.save_as() is None
    assert "Cannot save the preset: the preset name" in window.statusBar().currentMessage()

    window.choose = lambda title, text, choices: DELETE
    (delete,) = presets.delete_menu.actions()
    delete.trigger()
    assert not (presets_folder() / "Pencil fives.json").exists()
    assert presets.apply_menu.actions() == [] and not presets.apply_menu.isEnabled()


def test_a_clip_with_source_timecode_shows_it_and_goes_to_it(window, tmp_path):
    from fractions import Fraction

    from zvstudio.media import ExportSettings, FrameTiming, VideoWriter

    timing = FrameTiming.constant(Fraction(25), 30)
    timing = FrameTiming(timing.time_base, timing.pts, timing.last_duration, "01:00:10:05")
    clip = tmp_path / "a001.mov"
    with VideoWriter(clip, (64, 48), timing, ExportSettings()) as writer:
        for value in range(30):
            writer.write(np.full((48, 64, 3), value * 8, np.uint8))
    assert window.open_path(clip)
    label = window.transport_bar.timecode_label
    assert label.text().endswith("TC 01:00:10:05") and "01:00:10:05 at frame 0" in label.toolTip()
    window.transport.seek(20)
    assert label.text() == "00:00:00:20 / 00:00:01:04   TC 01:00:11:00"
    answers = iter(["01:00:10:15", "00:00:00:12", "01:00:30:00"])
    window.ask_text = lambda title, label, text: next(answers)
    window.go_to_position()  # the clip's own timecode
    assert window.transport.frame() == 10
    window.go_to_position()  # from the clip's start
    assert window.transport.frame() == 12
    window.go_to_position()  # past the clip's timecode: read from its start, clamped
    assert window.transport.frame() == 29
