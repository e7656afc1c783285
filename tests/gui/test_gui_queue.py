"""The render queue panel (pytest-qt, offscreen) over a real bridge and job queue: rows,
progress, previews, logs, cancel (running and queued), pause/resume, errors, clearing."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PySide6.QtCore import Qt

from zvstudio.engine.jobs import ANALYSIS, JobQueue
from zvstudio.errors import ZvsError
from zvstudio.gui import queue_panel
from zvstudio.gui.bridge import EngineBridge
from zvstudio.gui.queue_panel import QueuePanel, format_eta
from zvstudio.progress import Progress

OOM_HINT = "lower the resolution or enable model offload in Settings"


def stepping(count: int, delay: float = 0.02):
    """Work that reports `count` steps with a preview and a log line each, polling cancel."""

    def work(ctx):
        for i in range(count):
            ctx.cancel.raise_if_cancelled()
            image = np.full((24, 32, 3), (0, 0, 255), np.uint8)
            ctx.progress(Progress("keys", i + 1, count, image=image))
            ctx.log(f"line {i + 1}")
            time.sleep(delay)
        return count

    return work


def out_of_memory(ctx):
    ctx.log("loading the model")
    raise ZvsError("out of GPU memory", hint=OOM_HINT, code="out_of_memory")


def bug(ctx):
    return 1 / 0


@pytest.fixture
def bridge():
    bridge = EngineBridge(queue=JobQueue(preview_interval=0.0, preview_size=32))
    yield bridge
    bridge.shutdown()


@pytest.fixture
def panel(qtbot, bridge):
    widget = QueuePanel(bridge)
    qtbot.addWidget(widget)
    widget.resize(700, 500)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def shown(widget) -> bool:
    return not widget.isHidden()


def test_a_job_shows_its_progress_preview_and_log(panel, bridge, qtbot):
    job = bridge.submit(stepping(40), "render walk.mp4")
    assert panel.row_count() == 1 and panel.state_text(job) in ("Queued", "Running")
    qtbot.waitUntil(lambda: panel.progress_value(job) >= 5, timeout=5000)
    assert panel.state_text(job) == "Running"
    assert panel.stage_text(job).startswith("keys ") and panel.stage_text(job).endswith("/40")
    assert panel.eta_text(job).endswith("left") or panel.eta_text(job) == "estimating…"
    qtbot.waitUntil(lambda: panel.thumbnail(job) is not None, timeout=5000)
    qtbot.waitUntil(lambda: panel.state_text(job) == "Finished", timeout=10_000)
    assert panel.progress_value(job) == panel.progress_bar(job).maximum() == 40
    assert panel.stage_text(job) == "keys 40/40"
    assert "line 1\n" in panel.log_text(job) and "line 40" in panel.log_text(job)
    assert "line 40" in panel.log_view.toPlainText()  # the only job is selected
    assert not shown(panel.cancel_button(job)) and not shown(panel.pause_button(job))


def test_rows_come_in_order_and_selection_shows_that_jobs_log(panel, bridge, qtbot):
    first = bridge.submit(stepping(3, 0.0), "first")
    second = bridge.submit(stepping(5, 0.0), "second")
    assert panel.row_count() == 2 and panel.job_ids() == [first, second]
    qtbot.waitUntil(lambda: panel.state_text(second) == "Finished", timeout=10_000)
    panel.select(second)
    assert "line 5" in panel.log_view.toPlainText()
    panel.select(first)
    assert "line 3" in panel.log_view.toPlainText()
    assert "line 5" not in panel.log_view.toPlainText()
    assert panel.log_view.isReadOnly()


def test_the_running_render_is_the_job_watched_while_clips_are_analysed(panel, bridge, qtbot):
    previews = bridge.submit(stepping(10_000), "prepare previews", ANALYSIS)
    qtbot.waitUntil(lambda: panel.state_text(previews) == "Running", timeout=5000)
    render = bridge.submit(stepping(10_000), "render")
    qtbot.waitUntil(lambda: panel.state_text(render) == "Running", timeout=5000)
    assert panel.list.currentItem().data(Qt.UserRole) == render  # it takes over
    bridge.cancel(previews)
    analysis = bridge.submit(stepping(3, 0.0), "find shot cuts", ANALYSIS)
    qtbot.waitUntil(lambda: panel.state_text(analysis) == "Finished", timeout=5000)
    assert panel.list.currentItem().data(Qt.UserRole) == render
    bridge.cancel(render)
    qtbot.waitUntil(lambda: panel.state_text(render) == "Cancelled", timeout=5000)
    later = bridge.submit(stepping(3, 0.0), "nothing else runs")
    qtbot.waitUntil(lambda: panel.state_text(later) == "Finished", timeout=5000)
    assert panel.list.currentItem().data(Qt.UserRole) == later


def test_analysis_jobs_leave_shortly_after_they_end_unless_they_failed(
    panel, bridge, qtbot, monkeypatch
):
    monkeypatch.setattr(queue_panel, "ANALYSIS_LINGER_MS", 1000)
    render = bridge.submit(stepping(2, 0.0), "render")
    measured = bridge.submit(stepping(2, 0.0), "measure the sound", ANALYSIS)
    qtbot.waitUntil(lambda: panel.state_text(measured) == "Finished", timeout=5000)
    assert measured in panel.job_ids()  # its end is seen first
    prepare = bridge.submit(stepping(10_000), "prepare clip", ANALYSIS)
    qtbot.waitUntil(lambda: panel.state_text(prepare) == "Running", timeout=5000)
    bridge.cancel(prepare)  # as opening another clip does
    failed = bridge.submit(out_of_memory, "find cuts", ANALYSIS)
    qtbot.waitUntil(lambda: panel.state_text(failed) == "Failed", timeout=5000)
    qtbot.waitUntil(lambda: panel.job_ids() == [render, failed], timeout=5000)
    qtbot.wait(400)
    assert panel.job_ids() == [render, failed]  # the render and the failure stay
    assert panel.state_text(render) == "Finished"


def test_cancel_button_stops_the_running_job(panel, bridge, qtbot):
    job = bridge.submit(stepping(10_000), "long")
    qtbot.waitUntil(lambda: panel.state_text(job) == "Running", timeout=5000)
    assert shown(panel.cancel_button(job))
    qtbot.mouseClick(panel.cancel_button(job), Qt.LeftButton)
    qtbot.waitUntil(lambda: panel.state_text(job) == "Cancelled", timeout=1000)
    assert not shown(panel.cancel_button(job)) and not shown(panel.pause_button(job))


def test_a_queued_job_can_be_cancelled(panel, bridge, qtbot):
    running = bridge.submit(stepping(10_000), "running")
    waiting = bridge.submit(stepping(3), "waiting")
    qtbot.waitUntil(lambda: panel.state_text(running) == "Running", timeout=5000)
    assert panel.state_text(waiting) == "Queued"
    assert shown(panel.cancel_button(waiting)) and not shown(panel.pause_button(waiting))
    qtbot.mouseClick(panel.cancel_button(waiting), Qt.LeftButton)
    qtbot.waitUntil(lambda: panel.state_text(waiting) == "Cancelled", timeout=1000)
    assert panel.state_text(running) == "Running"
    bridge.cancel(running)
    qtbot.waitUntil(lambda: panel.state_text(running) == "Cancelled", timeout=1000)


def test_pause_and_resume_toggle_the_state_and_the_button(panel, bridge, qtbot):
    job = bridge.submit(stepping(10_000), "long")
    qtbot.waitUntil(lambda: panel.progress_value(job) >= 2, timeout=5000)
    button = panel.pause_button(job)
    assert shown(button) and button.text() == "Pause"
    qtbot.mouseClick(button, Qt.LeftButton)
    qtbot.waitUntil(lambda: panel.state_text(job) == "Paused", timeout=1000)
    assert button.text() == "Resume" and shown(panel.cancel_button(job))
    qtbot.wait(100)  # let the work reach its pause point
    held = panel.progress_value(job)
    qtbot.wait(200)
    assert panel.progress_value(job) == held
    qtbot.mouseClick(button, Qt.LeftButton)
    qtbot.waitUntil(lambda: panel.state_text(job) == "Running", timeout=1000)
    assert button.text() == "Pause"
    qtbot.waitUntil(lambda: panel.progress_value(job) > held + 2, timeout=5000)
    # A paused job can still be cancelled.
    qtbot.mouseClick(button, Qt.LeftButton)
    qtbot.mouseClick(panel.cancel_button(job), Qt.LeftButton)
    qtbot.waitUntil(lambda: panel.state_text(job) == "Cancelled", timeout=1000)


def test_a_failed_job_shows_the_message_and_the_hint(panel, bridge, qtbot):
    job = bridge.submit(out_of_memory, "render big.mp4")
    qtbot.waitUntil(lambda: panel.state_text(job) == "Failed", timeout=5000)
    assert "out of GPU memory" in panel.error_text(job) and OOM_HINT in panel.error_text(job)
    assert "out of GPU memory" in panel.log_text(job) and OOM_HINT in panel.log_text(job)
    assert "loading the model" in panel.log_text(job)
    assert not shown(panel.details_button(job))  # a user error has no traceback to show


def test_an_internal_error_offers_the_traceback(panel, bridge, qtbot):
    job = bridge.submit(bug, "buggy")
    qtbot.waitUntil(lambda: panel.state_text(job) == "Failed", timeout=5000)
    assert "ZeroDivisionError" in panel.error_text(job)
    assert shown(panel.details_button(job))
    qtbot.mouseClick(panel.details_button(job), Qt.LeftButton)
    dialog = panel.details_dialog
    assert dialog is not None and dialog.isVisible()
    assert "Traceback" in dialog.findChild(type(panel.log_view)).toPlainText()
    dialog.close()


def test_clear_finished_removes_only_ended_jobs(panel, bridge, qtbot):
    done = bridge.submit(stepping(2, 0.0), "done")
    failed = bridge.submit(out_of_memory, "failed")
    qtbot.waitUntil(lambda: panel.state_text(failed) == "Failed", timeout=5000)
    running = bridge.submit(stepping(10_000), "running")
    queued = bridge.submit(stepping(2), "queued")
    qtbot.waitUntil(lambda: panel.state_text(running) == "Running", timeout=5000)
    assert panel.state_text(done) == "Finished" and panel.row_count() == 4
    qtbot.mouseClick(panel.clear_button, Qt.LeftButton)
    assert panel.row_count() == 2 and panel.job_ids() == [running, queued]
    bridge.cancel(running)
    qtbot.waitUntil(lambda: panel.state_text(queued) == "Finished", timeout=5000)
    panel.clear_finished()
    assert panel.row_count() == 0 and panel.log_view.toPlainText() == ""


def test_a_finished_export_offers_to_show_its_folder(panel, bridge, qtbot, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from PySide6.QtGui import QDesktopServices

    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url) or True)
    video = tmp_path / "walk_zvstudio.mp4"
    video.write_bytes(b"")
    frames = tmp_path / "out" / "frames"
    frames.mkdir(parents=True)
    exported = bridge.submit(lambda ctx: SimpleNamespace(output=video), "Export walk")
    folder = bridge.submit(lambda ctx: SimpleNamespace(output=frames), "Export frames")
    counted = bridge.submit(stepping(2, 0.0), "no file")
    qtbot.waitUntil(lambda: panel.state_text(counted) == "Finished", timeout=5000)
    assert not shown(panel.reveal_button(counted))  # it wrote nothing to show
    assert shown(panel.reveal_button(exported)) and panel.output(exported) == video
    qtbot.mouseClick(panel.reveal_button(exported), Qt.LeftButton)
    assert panel.reveal(folder)  # a folder of frames opens itself
    assert [url.toLocalFile() for url in opened] == [str(tmp_path), str(frames)]

    frames.rmdir()
    frames.parent.rmdir()  # moved away since: nothing to open
    assert not panel.reveal(folder) and "cannot open" in panel.log_text(folder)


def test_jobs_submitted_before_the_panel_are_listed(bridge, qtbot):
    job = bridge.submit(stepping(10_000), "early")
    widget = QueuePanel(bridge)
    qtbot.addWidget(widget)
    assert widget.row_count() == 1 and widget.state_text(job) in ("Queued", "Running")
    qtbot.waitUntil(lambda: widget.progress_value(job) >= 2, timeout=5000)
    bridge.cancel(job)
    qtbot.waitUntil(lambda: widget.state_text(job) == "Cancelled", timeout=1000)


def test_a_long_title_is_shortened_in_the_middle_to_fit(panel, bridge, qtbot):
    title = "Prepare a-very-long-clip-name-from-the-camera-card-0001.mp4"
    job = bridge.submit(stepping(2, 0.0), title)
    panel.resize(360, 500)
    label = panel._jobs[job].row.title
    qtbot.waitUntil(lambda: label.text() != title, timeout=2000)
    shown_text = label.text()
    assert "…" in shown_text and shown_text.endswith(".mp4") and shown_text.startswith("Prep")
    assert label.fontMetrics().horizontalAdvance(shown_text) <= label.width()
    assert label.toolTip() == label.full_text() == title
    assert panel.width() == 360  # the title did not widen the panel
    panel.resize(1600, 500)
    qtbot.waitUntil(lambda: label.text() == title, timeout=2000)


def test_a_selected_rows_progress_stays_visible(panel, bridge, qtbot):
    job = bridge.submit(stepping(2, 0.0), "done")
    qtbot.waitUntil(lambda: panel.state_text(job) == "Finished", timeout=5000)
    panel.select(job)
    bar = panel.progress_bar(job)
    image = panel.list.viewport().grab().toImage()
    centre = bar.mapTo(panel.list.viewport(), bar.rect().center())
    top = bar.mapTo(panel.list.viewport(), bar.rect().topLeft()).y()
    chunk, beside = image.pixelColor(centre), image.pixelColor(centre.x(), top - 3)
    # A full bar on a selected row must not melt into the selection's colour.
    assert abs(chunk.lightness() - beside.lightness()) + abs(chunk.hue() - beside.hue()) > 40


def test_eta_is_written_as_minutes_and_seconds():
    assert format_eta(65) == "1:05 left"
    assert format_eta(3725.4) == "1:02:05 left"
    assert format_eta(0) == "0:00 left"
    assert format_eta(None) == "estimating…"
