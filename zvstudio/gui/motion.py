"""The clip's motion in the editor: keys placed by motion, and where propagation may fail.

Both need the clip's motion analysis, a job (about 11 ms per frame on two cores) made once
per clip, range and window, then read from the cache. Placing keys asks for it each time (it
is cached); the timeline's risk band shows while View > "Show where propagation may fail" is
on, and follows every change of the keys.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal

from zvstudio.engine.jobs import ANALYSIS, JobEvent
from zvstudio.engine.shots import MotionAnalysis, analyse_motion
from zvstudio.errors import ZvsError
from zvstudio.gui.bridge import EngineBridge
from zvstudio.gui.document import Document
from zvstudio.gui.timeline import TimelineWidget
from zvstudio.media import clip_label
from zvstudio.project.edits import keys_at
from zvstudio.propagate.placement import max_gap

_Report = Callable[[str, ZvsError | str], None]


class MotionView(QObject):
    """Runs the motion analysis jobs and applies their results to the document and timeline.

    `show_error(title, error)` reports a failed analysis, `say(text)` a finished placement;
    `risk_stopped` says that the band's analysis was cancelled or failed (turn it off).
    """

    risk_stopped = Signal()

    def __init__(
        self,
        document: Document,
        bridge: EngineBridge,
        timeline: TimelineWidget,
        show_error: _Report,
        say: Callable[[str], None],
    ) -> None:
        super().__init__(timeline)
        self.document, self.bridge, self.timeline = document, bridge, timeline
        self._show_error, self._say = show_error, say
        self.showing_risk = False
        self.job: int | None = None
        self._job_place: int | None = None  # the interval to place keys at, when asked
        self._next_place: int | None = None  # asked while another analysis ran
        # The last analysis and where it was made: (clip, first, last); its window is its own.
        self._analysis: tuple[tuple, MotionAnalysis] | None = None

    # -- requests ---------------------------------------------------------------------------
    def place_keys(self, interval: int) -> int | None:
        """Place as many keys as every `interval` frames gives where the motion needs them
        (one undo step; keys with overrides stay). Returns the job, None without a clip; while
        another analysis runs, the placement follows it."""
        if self.job is not None:
            self._next_place = interval
            return self.job
        return self._analyse(interval, place=True)

    def show_risk(self, on: bool) -> None:
        """Show or hide the risk band."""
        self.showing_risk = on
        self.refresh()

    def refresh(self) -> None:
        """Redraw the risk band for the document's current keys, analysing the clip first
        when the analysis is missing (a new clip or range, or a longer key interval)."""
        analysis = self._current()
        if not self.showing_risk or analysis is None:
            self.timeline.set_quality(None)
            if self.showing_risk and self.document.project.clip is not None:
                self._analyse(self.document.project.settings.key_interval, place=False)
            return
        self.timeline.set_quality(self._quality(analysis))

    def riskiest_frame(self) -> int | None:
        """The frame whose footage carried from the keys matches it worst (None until the
        clip's motion is measured, or when every frame is a key)."""
        analysis = self._current()
        if analysis is None:
            return None
        quality = self._quality(analysis)
        frame = int(np.argmin(quality))
        return frame if np.isfinite(quality[frame]) else None

    def _quality(self, analysis: MotionAnalysis) -> np.ndarray:
        """Predicted dB for every frame of the clip with the current keys (inf outside the
        range and on keys)."""
        first, last = self._span()
        keys = [k.frame for k in self.document.project.keyframes if first <= k.frame <= last]
        quality = np.full(self.document.frame_count, np.inf)
        quality[first : last + 1] = analysis.quality(keys)
        return quality

    def clip_changed(self) -> None:
        self._analysis = None
        self.refresh()

    # -- the job ----------------------------------------------------------------------------
    def _span(self) -> tuple[int, int]:
        span = self.document.project.frame_range
        return (span.first, span.last) if span else (0, self.document.frame_count - 1)

    def _where(self) -> tuple:
        """The current clip and range: what an analysis is made for."""
        clip = self.document.project.clip
        return (Path(clip.path) if clip else None, *self._span())

    def _current(self) -> MotionAnalysis | None:
        """The analysis made for the current clip and range, with a window wide enough."""
        if self._analysis is None:
            return None
        where, analysis = self._analysis
        window = max_gap(self.document.project.settings.key_interval)
        return analysis if where == self._where() and analysis.costs.window >= window else None

    def _analyse(self, interval: int, place: bool) -> int | None:
        project, info = self.document.project, self.document.info
        if project.clip is None or info is None or self.job is not None:
            return None
        clip, (first, last) = Path(project.clip.path), self._span()
        window, where = max_gap(interval), self._where()

        def work(context):
            analysis = analyse_motion(
                clip, first, last, window, info, context.progress, context.cancel
            )
            return where, analysis

        self._job_place = interval if place else None
        title = "Place keys by motion" if place else "Measure motion"
        self.job = self.bridge.submit(work, f"{title} in {clip_label(clip)}", ANALYSIS)
        return self.job

    def job_event(self, event: JobEvent) -> None:
        if event.job != self.job or event.kind not in ("finished", "failed", "cancelled"):
            return
        self.job, interval = None, self._job_place
        if self._next_place is not None:  # asked for meanwhile (cached by now, mostly)
            self._analyse(self._next_place, place=True)
            self._next_place = None
        if event.kind == "failed" and event.error is not None:
            self._show_error("Measuring the clip's motion failed", event.error)
        if event.kind != "finished":
            # The band would start the analysis again at the next edit: it stops instead.
            if self.showing_risk and interval is None:
                self.risk_stopped.emit()
            return
        where, analysis = event.result
        if where != self._where():
            return  # another clip or range meanwhile
        self._analysis = (where, analysis)
        if interval is not None:
            frames = analysis.keys(interval)
            self.document.push(keys_at(self.document.project, frames, "place keys by motion"))
            self._say(f"{len(frames)} keys placed where the motion needs them")
        self.refresh()
