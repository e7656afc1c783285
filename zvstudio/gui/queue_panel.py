"""The render queue panel: every job since start, its progress, preview, log and controls.

One row widget per job is made when the job is queued and then updated in place from the
bridge's events (progress can arrive 50 times a second, so nothing is ever rebuilt). The
analysis lane's jobs (preparing a clip, measuring its sound or motion) are the editor's own
housekeeping: they show while they run and leave shortly after they end, unless they failed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, QUrl
from PySide6.QtGui import QDesktopServices, QFontDatabase, QPixmap
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from zvstudio.engine.jobs import ANALYSIS, RENDER, JobError, JobEvent, JobState
from zvstudio.gui.bridge import EngineBridge
from zvstudio.gui.elided_label import ElidedLabel
from zvstudio.gui.viewer import numpy_to_qimage

_STATE_TEXT = {state: state.value.capitalize() for state in JobState}
_MAX_LOG_LINES = 5000  # per job; a long render logs a line per frame
_THUMB_HEIGHT = 40
ANALYSIS_LINGER_MS = 2500  # how long an ended analysis job stays, so its end can be seen


def format_eta(seconds: float | None) -> str:
    """ "1:05 left", "1:02:05 left", or "estimating…" before a rate is known."""
    if seconds is None:
        return "estimating…"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
    return f"{clock} left"


def describe_error(error: JobError) -> str:
    """The failure as the user reads it: what went wrong, then what to do about it."""
    where = f" (at frame {error.frame})" if error.frame is not None else ""
    return f"{error.message}{where}\n{error.hint}" if error.hint else f"{error.message}{where}"


class _JobRow(QWidget):
    """The widgets of one job's row; `QueuePanel` fills them from events."""

    def __init__(self, title: str) -> None:
        super().__init__()
        self.title = ElidedLabel(title)  # titles hold file names: never widen the dock
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self.title.setMinimumWidth(60)
        self.state = QLabel(_STATE_TEXT[JobState.QUEUED])
        self.stage = QLabel()
        self.eta = QLabel()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setMaximumHeight(12)
        self.progress.setTextVisible(False)
        self.thumbnail = QLabel()
        self.thumbnail.setFixedSize(_THUMB_HEIGHT * 16 // 9, _THUMB_HEIGHT)
        self.thumbnail.setAlignment(Qt.AlignCenter)
        self.thumbnail.setStyleSheet("background: #1a1a1c;")
        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setTextFormat(Qt.PlainText)
        self.error.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.error.setStyleSheet("color: #e07a6a;")
        self.error.hide()
        self.cancel = QPushButton("Cancel")
        self.pause = QPushButton("Pause")
        self.pause.hide()
        self.details = QPushButton("Details…")
        self.details.hide()
        self.reveal = QPushButton("Show")
        self.reveal.hide()
        self._lay_out()

    def _lay_out(self) -> None:
        grid = QGridLayout(self)
        grid.setContentsMargins(6, 4, 6, 4)
        grid.setVerticalSpacing(2)
        grid.addWidget(self.thumbnail, 0, 0, 3, 1)
        grid.addWidget(self.title, 0, 1)
        grid.addWidget(self.state, 0, 2, Qt.AlignRight)
        grid.addWidget(self.progress, 1, 1, 1, 2)
        grid.addWidget(self.stage, 2, 1)
        grid.addWidget(self.eta, 2, 2, Qt.AlignRight)
        grid.addWidget(self.error, 3, 1, 1, 2)
        buttons = QVBoxLayout()  # stacked, so the row fits a narrow dock
        buttons.setSpacing(2)
        for button in (self.pause, self.cancel, self.details, self.reveal):
            buttons.addWidget(button)
        for button in (self.pause, self.cancel):  # keep the progress bars of all rows aligned
            policy = button.sizePolicy()
            policy.setRetainSizeWhenHidden(True)
            button.setSizePolicy(policy)
        grid.addLayout(buttons, 0, 3, 3, 1)
        grid.setColumnStretch(1, 1)


_ACTIVE = (JobState.RUNNING, JobState.PAUSED)


@dataclass
class _Job:
    id: int
    row: _JobRow
    item: QListWidgetItem
    state: JobState = JobState.QUEUED
    log: deque[str] = field(default_factory=lambda: deque(maxlen=_MAX_LOG_LINES))
    error: JobError | None = None
    output: Path | None = None  # what a finished render or export wrote


class QueuePanel(QWidget):
    """Lists the bridge's jobs (newest last) with controls; the selected job's log below."""

    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self._jobs: dict[int, _Job] = {}
        self.details_dialog: QDialog | None = None
        self.list = QListWidget()
        self.list.setSelectionMode(QListWidget.SingleSelection)
        self.list.setVerticalScrollMode(QListWidget.ScrollPerPixel)
        # The default selection fills the row with the highlight colour, the colour of the
        # progress bars too: a selected row's bar vanished. Mark it with a light tint and an
        # edge instead.
        self.list.setStyleSheet(
            "QListWidget::item:selected { background: palette(midlight);"
            " border-left: 3px solid palette(highlight); }"
        )
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(_MAX_LOG_LINES)
        self.log_view.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.log_view.setPlaceholderText("Select a job to see its log")
        self.clear_button = QPushButton("Clear finished")
        self._lay_out()
        self.list.currentItemChanged.connect(self._show_log)
        self.clear_button.clicked.connect(self.clear_finished)
        bridge.event.connect(self._on_event)
        for job in bridge.jobs():  # jobs submitted before the panel existed
            record = self._add(job.id, job.title)
            if job.error is not None:
                self._on_failed(record, JobEvent(job.id, "failed", error=job.error))
            record.state = job.state
            self._show_state(record)
            if job.state in (JobState.FINISHED, JobState.CANCELLED):
                self._leave_soon(record)

    def _lay_out(self) -> None:
        top = QHBoxLayout()
        top.addStretch(1)
        top.addWidget(self.clear_button)
        splitter = QSplitter(Qt.Vertical)
        splitter.addWidget(self.list)
        splitter.addWidget(self.log_view)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(splitter, 1)

    # -- accessors (for the window and tests) ----------------------------------------------
    def row_count(self) -> int:
        return self.list.count()

    def job_ids(self) -> list[int]:
        return list(self._jobs)

    def title_text(self, job_id: int) -> str:
        return self._jobs[job_id].row.title.full_text()

    def state_text(self, job_id: int) -> str:
        return self._jobs[job_id].row.state.text()

    def stage_text(self, job_id: int) -> str:
        return self._jobs[job_id].row.stage.text()

    def eta_text(self, job_id: int) -> str:
        return self._jobs[job_id].row.eta.text()

    def progress_value(self, job_id: int) -> int:
        return self._jobs[job_id].row.progress.value()

    def progress_bar(self, job_id: int) -> QProgressBar:
        return self._jobs[job_id].row.progress

    def cancel_button(self, job_id: int) -> QPushButton:
        return self._jobs[job_id].row.cancel

    def pause_button(self, job_id: int) -> QPushButton:
        return self._jobs[job_id].row.pause

    def details_button(self, job_id: int) -> QPushButton:
        return self._jobs[job_id].row.details

    def thumbnail(self, job_id: int) -> QPixmap | None:
        pixmap = self._jobs[job_id].row.thumbnail.pixmap()
        return None if pixmap is None or pixmap.isNull() else pixmap

    def error_text(self, job_id: int) -> str:
        return self._jobs[job_id].row.error.text()

    def log_text(self, job_id: int) -> str:
        return "\n".join(self._jobs[job_id].log)

    def select(self, job_id: int) -> None:
        self.list.setCurrentItem(self._jobs[job_id].item)

    # -- rows ------------------------------------------------------------------------------
    def _add(self, job_id: int, title: str) -> _Job:
        row = _JobRow(title)
        item = QListWidgetItem()
        item.setData(Qt.UserRole, job_id)
        item.setSizeHint(row.sizeHint())
        self.list.addItem(item)
        self.list.setItemWidget(item, row)
        job = self._jobs[job_id] = _Job(job_id, row, item)
        row.cancel.clicked.connect(lambda: self._cancel(job_id))
        row.pause.clicked.connect(lambda: self._toggle_pause(job_id))
        row.details.clicked.connect(lambda: self.show_details(job_id))
        row.reveal.clicked.connect(lambda: self.reveal(job_id))
        if self.list.currentItem() is None:
            self.list.setCurrentItem(item)
        return job

    def clear_finished(self) -> None:
        """Remove the rows of jobs that have ended (finished, failed or cancelled)."""
        for job in [job for job in self._jobs.values() if job.state.ended]:
            self._remove(job)

    def _remove(self, job: _Job) -> None:
        self.list.takeItem(self.list.row(job.item))
        job.row.deleteLater()
        del self._jobs[job.id]
        if self.list.currentItem() is None:
            self.log_view.clear()

    def _leave_soon(self, job: _Job) -> None:
        """An ended analysis job's row goes after `ANALYSIS_LINGER_MS` (if still there)."""
        if self.bridge.lane(job.id) != ANALYSIS:
            return

        def leave() -> None:
            if self._jobs.get(job.id) is job:
                self._remove(job)

        QTimer.singleShot(ANALYSIS_LINGER_MS, self, leave)

    def _cancel(self, job_id: int) -> None:
        self._jobs[job_id].row.cancel.setEnabled(False)  # one click is enough
        self.bridge.cancel(job_id)

    def _toggle_pause(self, job_id: int) -> None:
        if self._jobs[job_id].state is JobState.PAUSED:
            self.bridge.resume(job_id)
        else:
            self.bridge.pause(job_id)

    def output(self, job_id: int) -> Path | None:
        return self._jobs[job_id].output

    def reveal_button(self, job_id: int) -> QPushButton:
        return self._jobs[job_id].row.reveal

    def reveal(self, job_id: int) -> bool:
        """Open the folder that holds what the job wrote (a folder of frames itself) in the
        platform's file manager; False (and a log line) when it is gone or cannot be opened."""
        job = self._jobs[job_id]
        if job.output is None:
            return False
        folder = job.output if job.output.is_dir() else job.output.parent
        if not folder.is_dir() or not QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder))):
            self._log(job, f"— cannot open {folder}")
            return False
        return True

    def show_details(self, job_id: int) -> QDialog:
        """A non-modal window with the failed job's traceback."""
        error = self._jobs[job_id].error
        dialog = QDialog(self)
        dialog.setWindowTitle("Error details")
        dialog.setAttribute(Qt.WA_DeleteOnClose)
        text = QPlainTextEdit(error.details if error is not None else "")
        text.setReadOnly(True)
        text.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(dialog.close)
        layout = QVBoxLayout(dialog)
        layout.addWidget(text)
        layout.addWidget(buttons)
        dialog.resize(720, 420)
        dialog.show()
        self.details_dialog = dialog
        return dialog

    # -- events ----------------------------------------------------------------------------
    def _on_event(self, event: JobEvent) -> None:
        job = self._jobs.get(event.job)
        if job is None:
            if event.kind != "queued":
                return  # a cleared job (ended jobs send nothing more) or one never seen
            job = self._add(event.job, event.message or f"job {event.job}")
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None:
            handler(job, event)

    def _on_started(self, job: _Job, event: JobEvent) -> None:
        self._set_state(job, JobState.RUNNING, "started")
        # The running job is the one to watch, unless one already is: a render goes on
        # while a clip is analysed in the other lane, and it is the one to watch.
        item = self.list.currentItem()
        watched = self._jobs.get(item.data(Qt.UserRole)) if item is not None else None
        if (
            watched is None
            or watched.state not in _ACTIVE
            or (self.bridge.lane(watched.id) == ANALYSIS and self.bridge.lane(job.id) == RENDER)
        ):
            self.select(event.job)

    def _on_paused(self, job: _Job, event: JobEvent) -> None:
        self._set_state(job, JobState.PAUSED, "paused")

    def _on_resumed(self, job: _Job, event: JobEvent) -> None:
        self._set_state(job, JobState.RUNNING, "resumed")

    def _on_finished(self, job: _Job, event: JobEvent) -> None:
        bar = job.row.progress
        bar.setRange(0, max(1, bar.maximum()))
        bar.setValue(bar.maximum())
        self._set_state(job, JobState.FINISHED, "finished")
        output = getattr(event.result, "output", None)  # a render's or an export's file
        if output is not None:
            job.output = Path(output)
            job.row.reveal.setToolTip(f"Open the folder of {job.output}")
            job.row.reveal.show()
        self._leave_soon(job)

    def _on_cancelled(self, job: _Job, event: JobEvent) -> None:
        self._set_state(job, JobState.CANCELLED, event.message or "cancelled")
        self._leave_soon(job)

    def _on_failed(self, job: _Job, event: JobEvent) -> None:
        job.error = event.error or JobError(event.message or "failed")
        text = describe_error(job.error)
        job.row.error.setText(text)
        job.row.error.show()
        job.row.details.setVisible(bool(job.error.details))
        job.item.setSizeHint(job.row.sizeHint())  # the row grew by the error text
        self._set_state(job, JobState.FAILED, f"failed: {text}")

    def _on_progress(self, job: _Job, event: JobEvent) -> None:
        row = job.row
        _set_text(
            row.stage, f"{event.stage} {event.done}/{event.total}" if event.total else event.stage
        )
        # A stage's first report has no elapsed time yet, so its ETA of 0 means "unknown".
        early = event.eta is not None and event.eta <= 0 and event.done < event.total
        if job.state is not JobState.PAUSED:  # reports until the work reaches its pause point
            _set_text(row.eta, format_eta(None if early else event.eta))
        if row.progress.maximum() != event.total:
            row.progress.setRange(0, event.total)  # a total of 0 shows a busy bar
        row.progress.setValue(event.done)

    def _on_preview(self, job: _Job, event: JobEvent) -> None:
        if event.image is None:
            return
        pixmap = QPixmap.fromImage(numpy_to_qimage(event.image))
        size = job.row.thumbnail.size()
        job.row.thumbnail.setPixmap(
            pixmap.scaled(size, Qt.KeepAspectRatio, Qt.SmoothTransformation)
        )

    def _on_log(self, job: _Job, event: JobEvent) -> None:
        self._log(job, event.message)

    def _log(self, job: _Job, line: str) -> None:
        job.log.append(line)
        if self.list.currentItem() is job.item:
            self.log_view.appendPlainText(line)  # append, never re-set the whole text

    def _set_state(self, job: _Job, state: JobState, note: str) -> None:
        job.state = state
        self._show_state(job)
        self._log(job, f"— {note}")

    def _show_state(self, job: _Job) -> None:
        row, state = job.row, job.state
        row.state.setText(_STATE_TEXT[state])
        row.cancel.setVisible(not state.ended)
        row.pause.setVisible(state in (JobState.RUNNING, JobState.PAUSED))
        row.pause.setText("Resume" if state is JobState.PAUSED else "Pause")
        if state.ended:
            _set_text(row.eta, "")
        elif state is JobState.PAUSED:
            _set_text(row.eta, "paused")

    def _show_log(self, current: QListWidgetItem | None, _previous: object = None) -> None:
        job = self._jobs.get(current.data(Qt.UserRole)) if current is not None else None
        self.log_view.setPlainText("\n".join(job.log) if job is not None else "")
        self.log_view.moveCursor(self.log_view.textCursor().MoveOperation.End)


def _set_text(label: QLabel, text: str) -> None:
    # Setting an unchanged text still relayouts the row; skip it at 50 events a second.
    if label.text() != text:
        label.setText(text)
