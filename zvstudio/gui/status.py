"""Computes the engine's `RenderStatus` off the GUI thread.

A status for a diffusion project imports torch and may hash a model file the first time, which
would freeze the window; here it runs on a small worker thread and only the newest request's
answer is delivered (older ones are dropped when settings change faster than answers come).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from PySide6.QtCore import QObject, Signal

from zvstudio.engine.request import RenderRequest
from zvstudio.engine.status import RenderStatus, render_status
from zvstudio.errors import ZvsError
from zvstudio.media import MediaInfo


class StatusWatcher(QObject):
    """`refresh(request, info)` asks; `ready(RenderStatus)` or `problem(str)` answers."""

    ready = Signal(object)
    problem = Signal(str)
    _answer = Signal(int, object, str)  # generation, status, problem (from the worker)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="zvstudio-status")
        self._generation = 0
        self._answer.connect(self._deliver)

    def refresh(self, request: RenderRequest, info: MediaInfo | None) -> None:
        self._generation += 1
        self._pool.submit(self._compute, self._generation, request, info)

    def _compute(self, generation: int, request: RenderRequest, info: MediaInfo | None) -> None:
        if generation != self._generation:
            return  # a newer request is waiting
        try:
            self._answer.emit(generation, render_status(request, info), "")
        except ZvsError as exc:
            self._answer.emit(generation, None, str(exc))
        except Exception as exc:  # a status must never take the window down
            self._answer.emit(generation, None, f"internal error: {type(exc).__name__}: {exc}")

    def _deliver(self, generation: int, status: RenderStatus | None, problem: str) -> None:
        if generation != self._generation:
            return
        if status is None:
            self.problem.emit(problem)
        else:
            self.ready.emit(status)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
