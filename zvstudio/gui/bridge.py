"""The GUI's one door to the engine: a `JobQueue` whose events arrive as Qt signals.

The queue runs jobs on its own worker threads (one per lane) and calls listeners there.
Emitting a signal from those threads is safe: Qt queues the call to receivers that live in the
GUI thread, so every slot runs on the GUI thread and widgets are never touched from a worker.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Signal

from zvstudio.engine.jobs import RENDER, Job, JobEvent, JobQueue, Work


class EngineBridge(QObject):
    """Submit and control engine jobs; `event` carries every `JobEvent` (on the GUI thread).

    `finished`, `failed` and `cancelled` repeat the ending events with the job's id for
    code that only cares how a job ended.
    """

    event = Signal(object)  # JobEvent
    finished = Signal(int, object)  # job id, result
    failed = Signal(int, object)  # job id, JobError
    cancelled = Signal(int)

    def __init__(self, parent: QObject | None = None, queue: JobQueue | None = None) -> None:
        super().__init__(parent)
        self.queue = queue or JobQueue()
        self._unsubscribe: Callable[[], None] | None = self.queue.subscribe(self._relay)
        self.event.connect(self._split)

    def _relay(self, event: JobEvent) -> None:
        # Runs on the worker thread: only emit, never touch widgets here.
        self.event.emit(event)

    def _split(self, event: JobEvent) -> None:
        if event.kind == "finished":
            self.finished.emit(event.job, event.result)
        elif event.kind == "failed":
            self.failed.emit(event.job, event.error)
        elif event.kind == "cancelled":
            self.cancelled.emit(event.job)

    # -- control (GUI thread) -------------------------------------------------------------
    def submit(self, work: Work, title: str, lane: str = RENDER) -> int:
        return self.queue.submit(work, title, lane)

    def submit_render(self, request, title: str | None = None) -> int:
        return self.queue.submit_render(request, title)

    def cancel(self, job_id: int) -> None:
        self.queue.cancel(job_id)

    def cancel_all(self) -> None:
        self.queue.cancel_all()

    def pause(self, job_id: int) -> None:
        self.queue.pause(job_id)

    def resume(self, job_id: int) -> None:
        self.queue.resume(job_id)

    def jobs(self) -> list[Job]:
        return self.queue.jobs()

    def lane(self, job_id: int) -> str:
        return self.queue.job(job_id).lane

    def busy(self) -> bool:
        """True while a job is queued or running."""
        return any(not job.state.ended for job in self.queue.jobs())

    def shutdown(self, timeout: float | None = 5.0) -> None:
        """Cancel everything and stop the worker (when the window closes)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.queue.shutdown(cancel=True, timeout=timeout)
