"""Jobs: long work (renders, previews, exports) queued and run one at a time in a worker thread.

Work that only reads the clip or the disk (preview proxies, shot cuts, motion analysis, model
scans) goes to its own lane, `ANALYSIS`, with its own worker: it never waits behind a
ten-minute render, and a render never waits for it. Each lane runs its jobs in order.

The GUI and the command line submit work to a `JobQueue` and listen to its `JobEvent`s:
queued, started, progress (stage, done of total, ETA), preview (the latest output frame,
downscaled and at most a few per second), log lines, paused/resumed, and the end (finished with
the result, failed with a structured `JobError`, or cancelled). The active job and queued jobs
can be cancelled; the active job can be paused and resumed at the same points where it polls
for cancel.

Listeners are called on the thread that caused the event, mostly the worker thread: they must
be quick and thread-safe. The GUI's bridge re-emits events as Qt signals (this module imports
no Qt).
"""

from __future__ import annotations

import itertools
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import cv2
import numpy as np

from zvstudio.errors import RenderCancelled, StageError, ZvsError
from zvstudio.progress import CancelToken, EtaClock, LogCallback, Progress, ProgressCallback


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobError:
    """Why a job failed, for a readable message and the action to offer.

    `code` is "error" (bad input), "out_of_memory", "disk_full" or "internal" (a bug, with the
    traceback in `details`); `stage` and `frame` say where, when known.
    """

    message: str
    hint: str | None = None
    code: str = "error"
    stage: str | None = None
    frame: int | None = None
    details: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> JobError:
        stage = exc.stage if isinstance(exc, StageError) else None
        frame = exc.frame if isinstance(exc, StageError) else None
        cause = exc.cause if isinstance(exc, StageError) else exc
        internal = not isinstance(cause, ZvsError)
        details = "".join(traceback.format_exception(cause)) if internal else ""
        if isinstance(exc, ZvsError):
            return cls(exc.message, exc.hint, exc.code, stage, frame, details)
        return cls(
            f"internal error: {type(exc).__name__}: {exc}",
            "this is a bug; please report it with the details",
            "internal",
            details=details,
        )

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


@dataclass(frozen=True)
class JobEvent:
    """Something that happened to job `job`; `kind` says what, the other fields carry it."""

    job: int
    kind: str  # queued started progress preview log paused resumed finished failed cancelled
    stage: str = ""
    done: int = 0
    total: int = 0
    eta: float | None = None  # seconds left in the current stage, once it can be estimated
    message: str = ""
    image: np.ndarray | None = field(default=None, compare=False, repr=False)
    error: JobError | None = None
    result: object = field(default=None, compare=False)


@dataclass(frozen=True)
class JobContext:
    """What a job's work receives: report progress, poll cancel (and pause), write log lines."""

    progress: ProgressCallback
    cancel: CancelToken
    log: LogCallback


Work = Callable[[JobContext], object]

RENDER, ANALYSIS = "render", "analysis"
LANES = (RENDER, ANALYSIS)
Listener = Callable[[JobEvent], None]


@dataclass
class Job:
    id: int
    title: str
    work: Work
    lane: str = RENDER
    state: JobState = JobState.QUEUED
    token: CancelToken = field(default_factory=CancelToken)
    clock: EtaClock = field(default_factory=EtaClock)
    result: object = None
    error: JobError | None = None
    ended: threading.Event = field(default_factory=threading.Event)


class JobQueue:
    """Runs submitted jobs one after another on a worker thread per lane; use as a context
    manager or call `shutdown()`."""

    def __init__(self, preview_interval: float = 0.25, preview_size: int = 320) -> None:
        self.preview_interval = preview_interval
        self.preview_size = preview_size
        self._jobs: dict[int, Job] = {}
        self._queues: dict[str, deque[Job]] = {lane: deque() for lane in LANES}
        self._listeners: list[Listener] = []
        self._ids = itertools.count(1)
        self._condition = threading.Condition()
        self._closing = False
        self._threads = [
            threading.Thread(target=self._serve, args=(lane,), name=f"zvstudio-{lane}", daemon=True)
            for lane in LANES
        ]
        for thread in self._threads:
            thread.start()

    # -- listening -------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every event from now on; returns a function that stops it."""
        with self._condition:
            self._listeners.append(listener)
        return lambda: self._unsubscribe(listener)

    def _unsubscribe(self, listener: Listener) -> None:
        with self._condition:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _emit(self, event: JobEvent) -> None:
        with self._condition:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event)

    # -- control ---------------------------------------------------------------------------
    def submit(self, work: Work, title: str = "job", lane: str = RENDER) -> int:
        """Queue `work(context)` in `lane` (RENDER or ANALYSIS); returns the job's id."""
        if lane not in LANES:
            raise ValueError(f"unknown job lane {lane!r} (one of {', '.join(LANES)})")
        with self._condition:
            if self._closing:
                raise RuntimeError("the job queue is shut down")
            job = Job(next(self._ids), title, work, lane)
            self._jobs[job.id] = job
            self._queues[lane].append(job)
            self._condition.notify_all()
        self._emit(JobEvent(job.id, "queued", message=title))
        return job.id

    def submit_render(self, request, title: str | None = None) -> int:
        """Queue a render of `request` (a `RenderRequest`); its result is a `RenderResult`."""
        from zvstudio.engine.render import render

        return self.submit(
            lambda context: render(request, context.progress, context.cancel, context.log),
            title or f"render {request.source.name} to {request.output.name}",
        )

    def cancel(self, job_id: int) -> None:
        """Cancel a queued job at once, or ask the running job to stop at its next check."""
        with self._condition:
            job = self._jobs[job_id]
            if job.state.ended:
                return
            queued = job.state is JobState.QUEUED
            if queued:
                self._queues[job.lane].remove(job)
                job.state = JobState.CANCELLED
            job.token.cancel()
        if queued:
            job.ended.set()
            self._emit(JobEvent(job_id, "cancelled", message="removed from the queue"))

    def cancel_all(self) -> None:
        for job_id in [job.id for job in self.jobs() if not job.state.ended]:
            self.cancel(job_id)

    def pause(self, job_id: int) -> None:
        """Hold the running job at its next check (its state and memory are kept)."""
        with self._condition:
            job = self._jobs[job_id]
            if job.state is not JobState.RUNNING:
                return
            job.state = JobState.PAUSED
            job.token.pause()
            job.clock.pause()
        self._emit(JobEvent(job_id, "paused"))

    def resume(self, job_id: int) -> None:
        with self._condition:
            job = self._jobs[job_id]
            if job.state is not JobState.PAUSED:
                return
            job.state = JobState.RUNNING
            job.token.resume()
            job.clock.resume()
        self._emit(JobEvent(job_id, "resumed"))

    def jobs(self) -> list[Job]:
        """All jobs in submission order (read their state; change them through the queue)."""
        with self._condition:
            return list(self._jobs.values())

    def job(self, job_id: int) -> Job:
        with self._condition:
            return self._jobs[job_id]

    def wait(self, job_id: int, timeout: float | None = None) -> Job:
        """Wait until the job has ended (or `timeout` passed) and return it."""
        job = self.job(job_id)
        job.ended.wait(timeout)
        return job

    def shutdown(self, cancel: bool = True, timeout: float | None = None) -> None:
        """Stop taking jobs; cancel the rest (or let them finish) and join the workers (within
        `timeout` seconds in all)."""
        if cancel:
            self.cancel_all()
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *_: object) -> None:
        self.shutdown()

    # -- the worker ------------------------------------------------------------------------
    def _serve(self, lane: str) -> None:
        queue = self._queues[lane]
        while True:
            with self._condition:
                while not queue and not self._closing:
                    self._condition.wait()
                if not queue:
                    return
                job = queue.popleft()
                job.state = JobState.RUNNING
            self._run(job)

    def _run(self, job: Job) -> None:
        self._emit(JobEvent(job.id, "started", message=job.title))
        reporter = _Reporter(self, job)
        try:
            job.result = job.work(JobContext(reporter.progress, job.token, reporter.log))
        except RenderCancelled:
            self._end(job, JobState.CANCELLED, JobEvent(job.id, "cancelled"))
        except Exception as exc:
            error = JobError.from_exception(exc)
            job.error = error
            event = JobEvent(
                job.id, "failed", stage=error.stage or "", message=str(error), error=error
            )
            self._end(job, JobState.FAILED, event)
        else:
            event = JobEvent(job.id, "finished", message=job.title, result=job.result)
            self._end(job, JobState.FINISHED, event)

    def _end(self, job: Job, state: JobState, event: JobEvent) -> None:
        with self._condition:
            job.state = state
        job.ended.set()
        self._emit(event)


class _Reporter:
    """Turns one job's progress reports and log lines into events, with ETA and previews."""

    def __init__(self, queue: JobQueue, job: Job) -> None:
        self.queue, self.job = queue, job
        self._last_preview = -float("inf")

    def progress(self, report: Progress) -> None:
        eta = self.job.clock.eta(report.stage, report.done, report.total)
        self.queue._emit(
            JobEvent(
                self.job.id,
                "progress",
                report.stage,
                report.done,
                report.total,
                eta,
                report.message,
            )
        )
        if report.image is not None:
            self._preview(report)

    def _preview(self, report: Progress) -> None:
        now = time.monotonic()
        final = report.done >= report.total
        if now - self._last_preview < self.queue.preview_interval and not final:
            return
        self._last_preview = now
        image = report.image
        scale = self.queue.preview_size / max(image.shape[:2])
        if scale < 1:
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        else:
            image = image.copy()  # the engine may reuse its buffer
        self.queue._emit(
            JobEvent(self.job.id, "preview", report.stage, report.done, report.total, image=image)
        )

    def log(self, text: str) -> None:
        self.queue._emit(JobEvent(self.job.id, "log", message=text))
