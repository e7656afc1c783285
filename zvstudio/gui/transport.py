"""The playback clock: which frame is showing, and how fast it moves.

The frame is computed from an elapsed-time clock since playback (or the last speed change)
started, never by counting timer ticks, so playback cannot drift and a slow slot makes the
next tick skip frames instead of falling behind. Whatever follows the clock (the sound) hears
of every start, jump, speed change and stop through `clock_changed`.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QElapsedTimer, QObject, Qt, QTimer, Signal

MAX_SHUTTLE_SPEED = 8.0
MIN_TICK_MS = 5


class Transport(QObject):
    """Play/stop/shuttle/step over `frame_count` frames at `fps` (J/K/L, Space, arrows)."""

    frame_changed = Signal(int)
    playing_changed = Signal(bool)
    # (fractional frame, signed speed) whenever the clock starts, jumps, changes speed or
    # stops (speed 0.0); in between, the position moves at `speed` times the frame rate.
    clock_changed = Signal(float, float)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._count = 0
        self._fps = 25.0
        self._frame = 0
        self._speed = 0.0  # signed; 0 when stopped
        self._origin = 0.0  # the (fractional) position when the clock last started
        self._loop = False
        self._bounds: tuple[int, int] | None = None  # the in and out frames; None: the clip
        self._clock = QElapsedTimer()
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.timeout.connect(self._tick)

    # -- state --------------------------------------------------------------------------------
    def set_clip(self, frame_count: int, fps: float) -> None:
        """A new clip: stops playback and returns to frame 0."""
        self.stop()
        self._count = max(0, int(frame_count))
        self._fps = float(fps) if fps and fps > 0 else 25.0
        self._bounds = None
        self._set_frame(0)

    def set_loop(self, loop: bool) -> None:
        """Loop playback between the in and out frames (the whole clip without them)."""
        self._loop = bool(loop)

    def loops(self) -> bool:
        return self._loop

    def set_bounds(self, first: int | None, last: int | None) -> None:
        """The in and out frames that looped playback repeats; None for the clip's ends."""
        if first is None and last is None:
            self._bounds = None
        else:
            end = max(0, self._count - 1)
            self._bounds = (first or 0, end if last is None else last)

    def loop_span(self) -> tuple[int, int]:
        """The first and last frame that looped playback shows."""
        last = max(0, self._count - 1)
        if self._bounds is None:
            return 0, last
        first, end = self._bounds
        return min(max(first, 0), last), min(max(end, 0), last)

    def frame(self) -> int:
        return self._frame

    def frame_count(self) -> int:
        return self._count

    def fps(self) -> float:
        return self._fps

    def is_playing(self) -> bool:
        return self._speed != 0.0

    def position(self) -> float:
        """The fractional frame showing now: the clock's while playing."""
        return self._position() if self.is_playing() else float(self._frame)

    def speed(self) -> float:
        """Signed playback speed in multiples of real time; 0.0 when stopped."""
        return self._speed

    # -- moving -------------------------------------------------------------------------------
    def seek(self, frame: int) -> None:
        """Jump to `frame` (clamped). Playback, if running, carries on from there."""
        if self._count == 0:
            return
        target = min(max(int(frame), 0), self._count - 1)
        if target == self._frame:
            return  # also keeps the clock's fractional position when echoed back
        if self.is_playing():
            self._restart_clock(float(target))
            self.clock_changed.emit(float(target), self._speed)
        self._set_frame(target)

    def step(self, n: int) -> None:
        self.stop()
        self.seek(self._frame + n)

    def go_home(self) -> None:
        self.stop()
        self.seek(0)

    def go_end(self) -> None:
        self.stop()
        self.seek(self._count - 1)

    # -- playback -----------------------------------------------------------------------------
    def play(self) -> None:
        """Play forwards at 1x; from the last frame it starts again at the first. Looping,
        from outside the in and out frames it starts at the in frame."""
        first, last = self.loop_span()
        if self._loop and not first <= self._frame < last:
            self.seek(first)
        elif self._count > 0 and self._frame >= self._count - 1:
            self.seek(0)
        self._start(1.0)

    def stop(self) -> None:
        if not self.is_playing():
            return
        self._timer.stop()
        self._speed = 0.0
        self.clock_changed.emit(float(self._frame), 0.0)
        self.playing_changed.emit(False)

    def toggle(self) -> None:
        if self.is_playing():
            self.stop()
        else:
            self.play()

    def shuttle_forward(self) -> None:
        """L: start forwards at 1x, or double the forward speed up to 8x."""
        if self._speed > 0:
            self._start(min(self._speed * 2, MAX_SHUTTLE_SPEED))
        elif self._loop or self._frame < self._count - 1:
            self._start(1.0)

    def shuttle_backward(self) -> None:
        """J: start backwards at 1x, or double the backward speed up to 8x."""
        if self._speed < 0:
            self._start(max(self._speed * 2, -MAX_SHUTTLE_SPEED))
        elif self._loop or self._frame > 0:
            self._start(-1.0)

    def _start(self, speed: float) -> None:
        if self._count < 2 or speed == self._speed:
            return
        was_playing = self.is_playing()
        # Continue from the exact clock position so a speed change does not jump.
        self._restart_clock(self._position() if was_playing else float(self._frame))
        self._speed = speed
        period_ms = 1000.0 / (self._fps * abs(speed))
        self._timer.start(max(MIN_TICK_MS, int(period_ms / 2)))
        self.clock_changed.emit(self._origin, speed)
        if not was_playing:
            self.playing_changed.emit(True)

    def _restart_clock(self, origin: float) -> None:
        self._origin = origin
        self._clock.restart()

    def _position(self) -> float:
        """The fractional frame the clock says should be showing now."""
        elapsed = self._clock.nsecsElapsed() / 1e9
        return self._origin + elapsed * self._fps * self._speed

    def _tick(self) -> None:
        position = self._position()
        # Round towards the origin so each frame shows for a whole period in either direction.
        frame = math.floor(position) if self._speed > 0 else math.ceil(position)
        if self._loop:
            self._tick_looping(frame)
            return
        last = self._count - 1
        ended = frame >= last if self._speed > 0 else frame <= 0
        self._set_frame(min(max(frame, 0), last))
        if ended:
            self.stop()

    def _tick_looping(self, frame: int) -> None:
        """Past the out frame, start again at the in frame (before the in frame, backwards,
        at the out frame)."""
        first, last = self.loop_span()
        if first <= frame <= last:
            self._set_frame(frame)
            return
        again = first if self._speed > 0 else last
        self._restart_clock(float(again))
        self.clock_changed.emit(float(again), self._speed)
        self._set_frame(again)

    def _set_frame(self, frame: int) -> None:
        if frame != self._frame:
            self._frame = frame
            self.frame_changed.emit(frame)
