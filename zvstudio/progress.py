"""Progress reporting and cancellation shared by every long-running operation.

The engine and algorithms never import Qt: they call a plain `ProgressCallback` and poll a
`CancelToken` between steps. The GUI bridges both to signals; the CLI draws a progress bar.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from zvstudio.errors import RenderCancelled


class CancelToken:
    """A thread-safe flag that long work polls between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise RenderCancelled("cancelled by the user")


@dataclass(frozen=True)
class Progress:
    """One progress report: `done` of `total` units finished in `stage`."""

    stage: str
    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total > 0 else 0.0


ProgressCallback = Callable[[Progress], None]


def ignore_progress(_: Progress) -> None:
    """The default callback: report nothing."""
