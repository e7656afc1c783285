"""The playback clock: which frame is showing, and how fast it moves.

The frame is computed from an elapsed-time clock since playback (or the last speed change)
started, never by counting timer ticks, so playback cannot drift and a slow slot makes the
next tick skip frames instead of falling behind.
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

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._count = 0
        self._fps = 25.0
        self._frame = 0
        self._speed = 0.0  # signed; 0 when stopped
        self._origin = 0.0  # the (fractional) position when the clock last started
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
        self._set_frame(0)

    def frame(self) -> int:
        return self._frame

    def frame_count(self) -> int:
        return self._count

    def fps(self) -> float:
        return self._fps

    def is_playing(self) -> bool:
        return self._speed != 0.0

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
        """Play forwards at 1x; from the last frame it starts again at the first."""
        if self._count > 0 and self._frame >= self._count - 1:
            self.seek(0)
        self._start(1.0)

    def stop(self) -> None:
        if not self.is_playing():
            return
        self._timer.stop()
        self._speed = 0.0
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
        elif self._frame < self._count - 1:
            self._start(1.0)

    def shuttle_backward(self) -> None:
        """J: start backwards at 1x, or double the backward speed up to 8x."""
        if self._speed < 0:
            self._start(max(self._speed * 2, -MAX_SHUTTLE_SPEED))
        elif self._frame > 0:
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
        last = self._count - 1
        ended = frame >= last if self._speed > 0 else frame <= 0
        self._set_frame(min(max(frame, 0), last))
        if ended:
            self.stop()

    def _set_frame(self, frame: int) -> None:
        if frame != self._frame:
            self._frame = frame
            self.frame_changed.emit(frame)
