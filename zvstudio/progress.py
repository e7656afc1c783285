"""Progress reporting and cancellation shared by every long-running operation.

The engine and algorithms never import Qt: they call a plain `ProgressCallback` and poll a
`CancelToken` between steps. The GUI bridges both to signals; the CLI draws a progress bar.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from zvstudio.errors import RenderCancelled


class CancelToken:
    """A thread-safe flag that long work polls between steps; the same poll also holds the
    work while it is paused, so everything that honours cancel can be paused too."""

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self._running = threading.Event()
        self._running.set()

    def cancel(self) -> None:
        self._cancelled.set()
        self._running.set()  # a paused job wakes up to stop

    def pause(self) -> None:
        if not self._cancelled.is_set():
            self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise `RenderCancelled` if cancelled; while paused, wait here first."""
        self._running.wait()
        if self._cancelled.is_set():
            raise RenderCancelled("cancelled by the user")


@dataclass(frozen=True)
class Progress:
    """One progress report: `done` of `total` units finished in `stage`."""

    stage: str
    done: int
    total: int
    message: str = ""
    # The latest finished output frame, for live previews (not compared, not copied).
    image: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total > 0 else 0.0


ProgressCallback = Callable[[Progress], None]


def ignore_progress(_: Progress) -> None:
    """The default callback: report nothing."""


LogCallback = Callable[[str], None]


def ignore_log(_: str) -> None:
    """The default log: say nothing."""


class EtaClock:
    """Seconds left in a stage from its rate so far, not counting time spent paused.

    Each stage is timed from its first report. A render interleaves stages (a key is rendered
    when propagation reaches it), so the main stage's clock includes the others' work and its
    estimate covers all of it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._started: dict[str, float] = {}
        self._paused_total = 0.0
        self._paused_at: float | None = None

    def _active(self) -> float:
        """Seconds not paused since an arbitrary origin."""
        now = self._paused_at if self._paused_at is not None else self.clock()
        return now - self._paused_total

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self.clock()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._paused_total += self.clock() - self._paused_at
            self._paused_at = None

    def elapsed(self, stage: str) -> float:
        """Active seconds since `stage` first reported (its clock starts on the first call)."""
        return self._active() - self._started.setdefault(stage, self._active())

    def eta(self, stage: str, done: int, total: int) -> float | None:
        elapsed = self.elapsed(stage)
        if done <= 0 or total <= 0 or elapsed <= 0:
            return None  # no rate yet (the stage's first report starts its clock)
        return elapsed * (total - done) / done
