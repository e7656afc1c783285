"""The timeline: a time ruler, key markers, a thumbnail strip and the render-segment bar.

Custom-painted and stateless about the document: keys, segments and the range are shown as
given, and edits are *requested* through signals (the document applies them and calls
`set_keys` back), so undo stays in one place. Frame f occupies the cell
[left(f), left(f) + pixels_per_frame) and `x_of(f)` is the centre of that cell.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from PySide6.QtCore import QEvent, QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QContextMenuEvent,
    QImage,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPaintEvent,
    QPalette,
    QPen,
    QPolygonF,
    QResizeEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import QApplication, QMenu, QScrollBar, QToolTip, QWidget

from zvstudio.media.timecode import timecode_frames

log = logging.getLogger(__name__)

ThumbnailProvider = Callable[[int], np.ndarray | None]

# State colours are fixed so they read the same on light and dark palettes (a legend can use them).
KEY_COLOURS: dict[str, str] = {
    "pending": "#9ca3af",  # grey: nothing rendered yet
    "rendering": "#f5b82e",  # amber: in progress
    "rendered": "#34c759",  # green: done and current
    "stale": "#ef5350",  # red: rendered with settings that have since changed
}
SEGMENT_COLOURS: dict[str, str] = {
    "cached": "#34c759",
    "pending": "#6b7280",
    "rendering": "#f5b82e",
}
CUT_COLOUR = "#ffffff"  # a shot cut, over the thumbnails (with a dark edge)
RISK_COLOUR = QColor(239, 83, 80, 170)  # where propagation is predicted to struggle
# Predicted propagation quality (PSNR of the footage carried from its keys, dB) drawn as no
# risk at or above RISK_CLEAR_DB, full height at or below RISK_FULL_DB (or with no key near).
RISK_CLEAR_DB = 34.0
RISK_FULL_DB = 20.0
RISK_HEIGHT = 0.4  # of the thumbnail strip, at full risk
# The sound's waveform, under the thumbnails: peak (pale) and RMS (strong) levels per frame,
# on a dB scale as editors draw it (quiet passages stay visible).
WAVE_HEIGHT = 30
WAVE_FLOOR_DB = -48.0
WAVE_PEAK_COLOUR = QColor(94, 168, 214, 150)
WAVE_RMS_COLOUR = QColor(94, 168, 214)

THUMBNAIL_CACHE_SIZE = 300
ZOOM_STEP = 1.5
MAX_PIXELS_PER_FRAME = 160.0
MARGIN = 10.0  # horizontal padding so the first and last markers are not cut in half
RULER_HEIGHT = 22
KEY_LANE_HEIGHT = 18
SEGMENT_HEIGHT = 6
MIN_STRIP_HEIGHT = 24
MARKER_RADIUS = 6.0
MIN_LABEL_SPACING = 64.0  # pixels between labelled ruler ticks
MIN_TICK_SPACING = 6.0
AUTOSCROLL_LEAD = 0.1  # fraction of the view kept ahead of the playhead after a page scroll


def timecode(frame: int, fps: float, full: bool = False) -> str:
    """`H:MM:SS:FF` (hours only when needed) for a frame number; `full`: always `HH:MM:SS:FF`,
    as video tools show the playhead (in real time: no drop-frame counting)."""
    seconds = math.floor(frame / fps + 1e-9)
    ff = max(0, math.floor(frame - seconds * fps + 1e-6))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if full:
        head = f"{hours:02d}:{minutes:02d}"
    else:
        head = f"{hours}:{minutes:02d}" if hours else f"{minutes}"
    return f"{head}:{secs:02d}:{ff:02d}"


def parse_position(text: str, fps: float, frame_count: int, current: int = 0) -> int:
    """The frame that `text` names: a frame number (`120`), a timecode as `timecode` writes
    it (`1:05:12`, `00:01:05:12`: the last field is frames), or an offset from `current`
    (`+10`, `-1:00`). Clamped to the clip; ValueError for anything else."""
    text = text.strip()
    sign = text[:1] if text[:1] in "+-" else ""
    body = text[1:].strip() if sign else text
    fields = body.split(":")
    if not body or len(fields) > 4 or not all(f.isdigit() for f in fields):
        raise ValueError(f"{text!r} is not a frame number or a timecode (HH:MM:SS:FF)")
    *clock, frames = (int(f) for f in fields)
    seconds = sum(value * 60**power for power, value in enumerate(reversed(clock)))
    # The inverse of `timecode`, whose seconds are floor(frame / fps).
    frame = math.ceil(seconds * fps - 1e-9) + frames
    if sign:
        frame = current + frame if sign == "+" else current - frame
    return max(0, min(frame, frame_count - 1))


def source_frame(text: str, start: str | None, fps: Fraction, frame_count: int) -> int | None:
    """The frame at the source timecode `text` ("01:00:12:05") of a clip whose first frame
    is at `start`, when `text` names one of its frames; None otherwise (then `text` is read
    as `parse_position` reads it: from the clip's start)."""
    if start is None:
        return None
    frames = timecode_frames(start, fps, text.strip().replace(".", ";"))
    return frames if frames is not None and 0 <= frames < frame_count else None


def _ruler_steps(fps: float) -> list[int]:
    """Candidate tick spacings in frames: single frames up to a second, then whole seconds."""
    rate = max(1, round(fps))
    frames = [s for s in (1, 2, 5, 10) if s < rate]
    seconds = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
    return sorted({*frames, *(max(1, round(fps * s)) for s in seconds)})


@dataclass(frozen=True)
class _Lanes:
    """Vertical layout of the painted area (above the scrollbar)."""

    ruler: QRectF
    keys: QRectF
    strip: QRectF
    wave: QRectF  # empty when the clip has no sound
    segments: QRectF

    @property
    def bottom(self) -> float:
        return self.segments.bottom()


class TimelineWidget(QWidget):
    """Ruler, key markers, thumbnails and segments for one clip; scrub, zoom and edit keys."""

    playhead_changed = Signal(int)
    scrubbed = Signal(int)  # the user dragged (or clicked) the playhead to this frame
    key_selected = Signal(int)  # -1 when no key is selected
    key_move_requested = Signal(int, int)  # old frame, new frame
    key_toggle_requested = Signal(int)
    key_remove_requested = Signal(int)
    in_point_requested = Signal(int)
    out_point_requested = Signal(int)
    range_clear_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._count = 0
        self._fps = 25.0
        self._provider: ThumbnailProvider | None = None
        self._thumbs: OrderedDict[int, QImage] = OrderedDict()
        self._thumb_aspect: float | None = None
        self._playhead = 0
        self._keys: dict[int, str] = {}
        self._selected: int | None = None
        self._segments: list[tuple[int, int, str]] = []
        self._cuts: list[int] = []  # the first frame of each shot after the first
        self._quality: np.ndarray | None = None  # predicted dB per frame (see set_quality)
        self._wave: np.ndarray | None = None  # the waveform's heights per frame (set_levels)
        self._range: tuple[int | None, int | None] = (None, None)
        self._ppf = 1.0
        self._fit_mode = True  # refit on resize until the user zooms
        self._drag: str | None = None  # "scrub", "key" or None
        self._drag_key: int | None = None
        self._drag_target: int | None = None
        self._pending_move: tuple[int, int] | None = None  # requested, not yet applied
        self._press_x = 0.0
        self._scrollbar = QScrollBar(Qt.Orientation.Horizontal, self)
        self._scrollbar.setAccessibleName("Timeline scroll")
        self._scrollbar.valueChanged.connect(self.update)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMinimumHeight(self._fixed_height() + MIN_STRIP_HEIGHT)
        self.setAccessibleName("Timeline")
        self.setAccessibleDescription(
            "Click or drag to scrub; click a key marker to select it, drag it to move it; "
            "Ctrl+wheel zooms, the wheel scrolls."
        )

    def sizeHint(self) -> QSize:
        return QSize(800, 140)

    def minimumSizeHint(self) -> QSize:
        return QSize(200, self.minimumHeight())

    # -- content ------------------------------------------------------------------------------
    def set_clip(
        self, frame_count: int, fps: float, thumbnails: ThumbnailProvider | None = None
    ) -> None:
        """Show a clip of `frame_count` frames; `thumbnails(frame)` gives RGB uint8 or None."""
        self._count = max(0, int(frame_count))
        self._fps = float(fps) if fps and fps > 0 else 25.0
        self._provider = thumbnails
        self.invalidate_thumbnails()
        self._selected = self._pending_move = None
        self._playhead = min(self._playhead, max(self._count - 1, 0))
        self._range = (None, None)
        self._cuts = []
        self._quality = None
        self.set_levels(None)
        self.zoom_fit()

    def invalidate_thumbnails(self) -> None:
        """Forget converted thumbnails (e.g. when the provider's images change)."""
        self._thumbs.clear()
        self._thumb_aspect = None
        self.update()

    def set_keys(self, states: Mapping[int, str]) -> None:
        """Key frames and their states ("pending", "rendering", "rendered", "stale")."""
        self._keys = {int(f): str(s) for f, s in states.items()}
        move, self._pending_move = self._pending_move, None
        if self._selected is not None and self._selected not in self._keys:
            # Once a requested move has been applied the selection follows the key.
            followed = move is not None and move[0] == self._selected and move[1] in self._keys
            self._set_selected(move[1] if followed else None)
        self.update()

    def keys(self) -> dict[int, str]:
        return dict(self._keys)

    def set_segments(self, segments: Sequence[tuple[int, int, str]]) -> None:
        """Propagation segments (first, last, state) with state "cached", "pending", "rendering"."""
        self._segments = [(int(a), int(b), str(s)) for a, b, s in segments]
        self.update()

    def set_cuts(self, cuts: Sequence[int]) -> None:
        """Shot cuts (the first frame of each new shot), drawn as lines across the thumbnails."""
        self._cuts = sorted(int(c) for c in cuts)
        self.update()

    def cuts(self) -> list[int]:
        return list(self._cuts)

    def set_quality(self, decibels: Sequence[float] | None) -> None:
        """The predicted propagation quality of every frame (PSNR in dB: inf on a key, 0 where
        no key is near enough to tell), drawn as a red band rising where it is poor; None
        hides it."""
        if decibels is not None and len(decibels) != self._count:
            raise ValueError(f"{len(decibels)} values for a clip of {self._count} frames")
        self._quality = None if decibels is None else np.asarray(decibels, np.float64)
        self.update()

    def risk_levels(self) -> np.ndarray | None:
        """The drawn band's height per frame, 0 (none) to 1 (full), or None when hidden."""
        if self._quality is None:
            return None
        return np.clip((RISK_CLEAR_DB - self._quality) / (RISK_CLEAR_DB - RISK_FULL_DB), 0, 1)

    def set_levels(self, levels: np.ndarray | None) -> None:
        """The sound's (peak, RMS) level per frame, 0..1 of full scale, drawn as a waveform
        under the thumbnails; None (no sound, or not measured yet) hides its lane."""
        if levels is not None and np.shape(levels) != (self._count, 2):
            raise ValueError(f"levels of shape {np.shape(levels)} for {self._count} frames")
        if levels is None:
            self._wave = None
        else:  # in dB once here, not at every repaint
            decibels = 20 * np.log10(np.maximum(np.asarray(levels, np.float32), 1e-6))
            self._wave = np.clip(1 - decibels / WAVE_FLOOR_DB, 0, 1)
        self.setMinimumHeight(self._fixed_height() + MIN_STRIP_HEIGHT)
        self.update()

    def wave_heights(self) -> np.ndarray | None:
        """The drawn waveform's (peak, RMS) half-heights per frame, 0..1 of the lane's half."""
        return self._wave

    def set_range(self, first: int | None, last: int | None) -> None:
        """An in/out range; frames outside it are shaded. None leaves that side open."""
        self._range = (first, last)
        self.update()

    def in_out(self) -> tuple[int | None, int | None]:
        return self._range

    # -- playhead and selection ---------------------------------------------------------------
    def playhead(self) -> int:
        return self._playhead

    def set_playhead(self, frame: int) -> None:
        """Move the playhead (clamped), scrolling to keep it in view; emits on change."""
        if self._move_playhead(frame):
            self._ensure_visible(self._playhead)

    def selected_key(self) -> int | None:
        return self._selected

    def select_key(self, frame: int | None) -> None:
        """Select a key (or none) without moving the playhead."""
        self._set_selected(frame if frame in self._keys else None)

    def request_toggle_key(self) -> None:
        """Ask the owner to add or remove a key at the playhead (bound to M)."""
        if self._count:
            self.key_toggle_requested.emit(self._playhead)

    def request_remove_selected(self) -> None:
        """Ask the owner to remove the selected key, or else the key at the playhead (Delete)."""
        if self._selected is not None and self._selected in self._keys:
            self.key_remove_requested.emit(self._selected)
        elif self._playhead in self._keys:
            self.key_remove_requested.emit(self._playhead)

    def _move_playhead(self, frame: int) -> bool:
        if self._count == 0:
            return False
        frame = min(max(int(frame), 0), self._count - 1)
        if frame == self._playhead:
            return False
        self._playhead = frame
        self.update()
        self.playhead_changed.emit(frame)
        return True

    def _set_selected(self, frame: int | None) -> None:
        if frame != self._selected:
            self._selected = frame
            self.update()
            self.key_selected.emit(-1 if frame is None else frame)

    # -- geometry -----------------------------------------------------------------------------
    def pixels_per_frame(self) -> float:
        return self._ppf

    def frame_at(self, x: float) -> int:
        """The frame under view coordinate `x`, clamped to the clip."""
        if self._count == 0:
            return 0
        frame = math.floor((x - MARGIN + self._scroll()) / self._ppf)
        return min(max(frame, 0), self._count - 1)

    def x_of(self, frame: int) -> float:
        """The view x of the centre of `frame`'s cell."""
        return self._left(frame) + self._ppf / 2

    def key_marker_pos(self, frame: int) -> QPointF:
        """Where the centre of a key's marker is drawn."""
        return QPointF(self.x_of(frame), self._lanes().keys.center().y())

    def _left(self, frame: float) -> float:
        return MARGIN + frame * self._ppf - self._scroll()

    def _scroll(self) -> int:
        return self._scrollbar.value()

    def _fixed_height(self) -> int:
        bar = self._scrollbar.sizeHint().height()
        wave = WAVE_HEIGHT if self._wave is not None else 0
        return RULER_HEIGHT + KEY_LANE_HEIGHT + wave + SEGMENT_HEIGHT + 2 + bar

    def _lanes(self) -> _Lanes:
        width = float(self.width())
        strip_height = max(MIN_STRIP_HEIGHT, self.height() - self._fixed_height())
        ruler = QRectF(0, 0, width, RULER_HEIGHT)
        keys = QRectF(0, ruler.bottom(), width, KEY_LANE_HEIGHT)
        strip = QRectF(0, keys.bottom(), width, strip_height)
        wave_height = WAVE_HEIGHT if self._wave is not None else 0
        wave = QRectF(0, strip.bottom(), width, wave_height)
        segments = QRectF(0, wave.bottom() + 1, width, SEGMENT_HEIGHT)
        return _Lanes(ruler, keys, strip, wave, segments)

    def _content_width(self) -> float:
        return self._count * self._ppf + 2 * MARGIN

    # -- zoom and scroll ----------------------------------------------------------------------
    def _fit_ppf(self) -> float:
        usable = max(1.0, self.width() - 2 * MARGIN)
        return min(MAX_PIXELS_PER_FRAME, usable / max(self._count, 1))

    def zoom_fit(self) -> None:
        """Show the whole clip."""
        self._fit_mode = True
        self._ppf = self._fit_ppf()
        self._update_scrollbar()
        self._scrollbar.setValue(0)
        self.update()

    def zoom_in(self) -> None:
        self._zoom_about_playhead(self._ppf * ZOOM_STEP)

    def zoom_out(self) -> None:
        self._zoom_about_playhead(self._ppf / ZOOM_STEP)

    def _zoom_about_playhead(self, ppf: float) -> None:
        x = self.x_of(self._playhead)
        if not 0 <= x <= self.width():
            x = self.width() / 2  # an off-screen playhead is brought to the middle
        self._zoom(ppf, self._playhead + 0.5, x)

    def _zoom(self, ppf: float, frame_pos: float, view_x: float) -> None:
        """Set the zoom so the (fractional) frame position `frame_pos` stays at `view_x`."""
        fit = self._fit_ppf()
        ppf = min(max(ppf, fit), max(MAX_PIXELS_PER_FRAME, fit))
        self._fit_mode = math.isclose(ppf, fit)
        self._ppf = ppf
        self._update_scrollbar()
        self._scrollbar.setValue(round(MARGIN + frame_pos * ppf - view_x))
        self.update()

    def _update_scrollbar(self) -> None:
        overflow = max(0, math.ceil(self._content_width() - self.width()))
        self._scrollbar.setRange(0, overflow)
        self._scrollbar.setPageStep(max(1, self.width()))
        self._scrollbar.setSingleStep(20)

    def _ensure_visible(self, frame: int) -> None:
        """Page-scroll so `frame` is in view, leaving room ahead in its direction of travel."""
        x, width = self.x_of(frame), self.width()
        if MARGIN <= x <= width - MARGIN:
            return
        lead = width * AUTOSCROLL_LEAD
        target = lead if x > width - MARGIN else width - lead
        self._scrollbar.setValue(round(self._scroll() + x - target))

    def _scroll_by(self, pixels: float) -> None:
        self._scrollbar.setValue(round(self._scroll() + pixels))

    # -- thumbnails ---------------------------------------------------------------------------
    def _thumbnail(self, frame: int) -> QImage | None:
        """A converted thumbnail from the LRU cache, asking the provider only on a miss."""
        image = self._thumbs.get(frame)
        if image is not None:
            self._thumbs.move_to_end(frame)
            return image
        if self._provider is None:
            return None
        try:
            array = self._provider(frame)
        except Exception:  # a broken thumbnail must not break painting
            log.exception("thumbnail provider failed for frame %d", frame)
            return None
        if array is None:
            return None  # not ready yet (no proxy): asked again on a later repaint
        image = _to_qimage(array)
        self._thumbs[frame] = image
        if len(self._thumbs) > THUMBNAIL_CACHE_SIZE:
            self._thumbs.popitem(last=False)
        if self._thumb_aspect is None and image.height() > 0:
            self._thumb_aspect = image.width() / image.height()
        return image

    def _thumbnail_slots(self, strip: QRectF) -> list[tuple[float, float, int]]:
        """Visible (x, width, frame) slots, one thumbnail wide, anchored to the content so
        scrolling keeps asking for the same frames."""
        if self._thumb_aspect is None and self._provider is not None:
            self._thumbnail(self.frame_at(MARGIN))  # learns the aspect ratio
        width = max(8.0, strip.height() * (self._thumb_aspect or 16 / 9))
        scroll = self._scroll()
        end = self._count * self._ppf  # content x where the clip ends
        first = max(0, math.floor((scroll - MARGIN) / width))
        last = math.floor(min(end - 1e-6, scroll + self.width() - MARGIN) / width)
        slots = []
        for k in range(first, last + 1):
            frame = min(math.floor((k + 0.5) * width / self._ppf), self._count - 1)
            slots.append((MARGIN + k * width - scroll, width, frame))
        return slots

    # -- painting -----------------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        palette = self.palette()
        lanes = self._lanes()
        painter.fillRect(self.rect(), palette.color(QPalette.ColorRole.Window))
        painter.fillRect(lanes.keys.united(lanes.segments), palette.color(QPalette.ColorRole.Base))
        if self._count == 0:
            painter.setPen(palette.color(QPalette.ColorRole.PlaceholderText))
            painter.drawText(lanes.strip, Qt.AlignmentFlag.AlignCenter, "No clip")
            painter.end()
            return
        self._paint_ruler(painter, lanes.ruler)
        self._paint_strip(painter, lanes.strip)
        self._paint_wave(painter, lanes.wave)
        self._paint_segments(painter, lanes.segments)
        self._paint_risk(painter, lanes.strip)
        self._paint_cuts(painter, lanes)
        self._paint_range(painter, lanes)
        self._paint_playhead(painter, lanes)
        self._paint_keys(painter, lanes)
        painter.end()

    def _clip_rect(self, lane: QRectF) -> QRectF:
        """The part of a lane covered by the clip's frames."""
        left, right = self._left(0), self._left(self._count)
        return QRectF(left, lane.top(), right - left, lane.height()).intersected(lane)

    def _paint_ruler(self, painter: QPainter, ruler: QRectF) -> None:
        palette = self.palette()
        text = palette.color(QPalette.ColorRole.WindowText)
        ticks = QColor(text)
        ticks.setAlpha(110)
        major, minor = self._tick_steps()
        first = self.frame_at(0)
        last = self.frame_at(self.width())
        painter.setFont(self.font())
        for frame in range(first - first % minor, last + 1, minor):
            x = self.x_of(frame)
            is_major = frame % major == 0
            top = ruler.bottom() - (9 if is_major else 4)
            painter.setPen(QPen(text if is_major else ticks, 1))
            painter.drawLine(QPointF(x, top), QPointF(x, ruler.bottom()))
            if is_major:
                label = str(frame) if major < round(self._fps) else timecode(frame, self._fps)[:-3]
                painter.drawText(
                    QRectF(x + 3, ruler.top(), MIN_LABEL_SPACING, ruler.height() - 6),
                    Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                    label,
                )
        painter.setPen(QPen(ticks, 1))
        painter.drawLine(ruler.bottomLeft(), ruler.bottomRight())

    def _tick_steps(self) -> tuple[int, int]:
        """(labelled, minor) tick spacings in frames, the smallest that stay readable."""
        steps = _ruler_steps(self._fps)
        major = next((s for s in steps if s * self._ppf >= MIN_LABEL_SPACING), steps[-1])
        if major * self._ppf < MIN_LABEL_SPACING:  # longer than an hour on screen
            major *= math.ceil(MIN_LABEL_SPACING / (major * self._ppf))
        minors = [s for s in steps if s < major and major % s == 0]
        minor = next((s for s in minors if s * self._ppf >= MIN_TICK_SPACING), major)
        return major, minor

    def _paint_strip(self, painter: QPainter, strip: QRectF) -> None:
        area = self._clip_rect(strip)
        placeholder = self.palette().color(QPalette.ColorRole.AlternateBase)
        painter.fillRect(area, placeholder)
        painter.save()
        painter.setClipRect(area)
        for x, width, frame in self._thumbnail_slots(strip):
            image = self._thumbnail(frame)
            if image is not None:
                painter.drawImage(QRectF(x, strip.top(), width, strip.height()), image)
        painter.restore()

    def _paint_wave(self, painter: QPainter, lane: QRectF) -> None:
        """Peak and RMS envelopes mirrored about the lane's middle (the loudest of the frames
        that share a pixel column when zoomed out)."""
        heights = self.wave_heights()
        if heights is None:
            return
        painter.fillRect(self._clip_rect(lane), QColor(0, 0, 0, 60))
        first, last = self.frame_at(0), self.frame_at(self.width())
        step = max(1, math.ceil(1.0 / self._ppf))  # frames per pixel column
        middle, half = lane.center().y(), lane.height() / 2 - 1
        for column, colour in ((0, WAVE_PEAK_COLOUR), (1, WAVE_RMS_COLOUR)):
            top, bottom = [], []
            for start in range(first, last + 1, step):
                height = float(heights[start : start + step, column].max()) * half
                left, right = self._left(start), self._left(min(start + step, self._count))
                top += [QPointF(left, middle - height), QPointF(right, middle - height)]
                bottom += [QPointF(left, middle + height), QPointF(right, middle + height)]
            path = QPainterPath()
            path.addPolygon(QPolygonF(top + bottom[::-1]))
            painter.fillPath(path, colour)

    def _paint_segments(self, painter: QPainter, lane: QRectF) -> None:
        for first, last, state in self._segments:
            colour = QColor(SEGMENT_COLOURS.get(state, SEGMENT_COLOURS["pending"]))
            left, right = self._left(first), self._left(last + 1)
            rect = QRectF(left, lane.top(), right - left, lane.height()).intersected(lane)
            painter.fillRect(rect.adjusted(0.5, 0, -0.5, 0), colour)

    def _paint_risk(self, painter: QPainter, strip: QRectF) -> None:
        """A band along the bottom of the thumbnails, as high as the risk at each frame (the
        highest of the frames that share a pixel column when zoomed out)."""
        levels = self.risk_levels()
        if levels is None or not levels.any():
            return
        first, last = self.frame_at(0), self.frame_at(self.width())
        step = max(1, math.ceil(1.0 / self._ppf))  # frames per pixel column
        path = QPainterPath(QPointF(self._left(first), strip.bottom()))
        for start in range(first, last + 1, step):
            height = float(levels[start : start + step].max()) * RISK_HEIGHT * strip.height()
            left, right = self._left(start), self._left(min(start + step, self._count))
            path.lineTo(left, strip.bottom() - height)
            path.lineTo(right, strip.bottom() - height)
        path.lineTo(self._left(min(last + 1, self._count)), strip.bottom())
        path.closeSubpath()
        painter.fillPath(path, RISK_COLOUR)

    def _paint_cuts(self, painter: QPainter, lanes: _Lanes) -> None:
        """A bright line with a dark edge (visible on any picture) where a shot begins."""
        top, bottom = lanes.strip.top(), lanes.bottom
        for frame in self._cuts:
            x = self._left(frame)
            if -2 <= x <= self.width() + 2:
                painter.fillRect(QRectF(x - 2, top, 4, bottom - top), QColor(0, 0, 0, 160))
                painter.fillRect(QRectF(x - 1, top, 2, bottom - top), QColor(CUT_COLOUR))

    def _paint_range(self, painter: QPainter, lanes: _Lanes) -> None:
        first, last = self._range
        shade = QColor(0, 0, 0, 110)
        top, bottom = lanes.keys.top(), lanes.bottom
        if first is not None and first > 0:
            painter.fillRect(QRectF(0, top, self._left(first), bottom - top), shade)
        if last is not None and last < self._count - 1:
            right = self._left(last + 1)
            painter.fillRect(QRectF(right, top, self.width() - right, bottom - top), shade)

    def _paint_playhead(self, painter: QPainter, lanes: _Lanes) -> None:
        colour = self.palette().color(QPalette.ColorRole.Highlight)
        x = self.x_of(self._playhead)
        if self._ppf >= 4:  # zoomed in: show the whole frame's cell
            cell = QColor(colour)
            cell.setAlpha(50)
            painter.fillRect(QRectF(self._left(self._playhead), 0, self._ppf, lanes.bottom), cell)
        painter.setPen(QPen(colour, 1.5))
        painter.drawLine(QPointF(x, lanes.ruler.top() + 6), QPointF(x, lanes.bottom))
        head = QPolygonF(
            [
                QPointF(x - 5, 0),
                QPointF(x + 5, 0),
                QPointF(x + 5, 6),
                QPointF(x, 11),
                QPointF(x - 5, 6),
            ]
        )
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(colour)
        painter.drawPolygon(head)

    def _paint_keys(self, painter: QPainter, lanes: _Lanes) -> None:
        outline = self.palette().color(QPalette.ColorRole.WindowText)
        highlight = self.palette().color(QPalette.ColorRole.Highlight)
        visible = (-MARKER_RADIUS, self.width() + MARKER_RADIUS)
        for frame, state in sorted(self._keys.items()):
            x = self.x_of(frame)
            if not visible[0] <= x <= visible[1]:
                continue
            colour = QColor(KEY_COLOURS.get(state, KEY_COLOURS["pending"]))
            line = QColor(colour)
            line.setAlpha(150)
            painter.setPen(QPen(line, 1))
            painter.drawLine(QPointF(x, lanes.strip.top()), QPointF(x, lanes.strip.bottom()))
            selected = frame == self._selected
            pen = QPen(highlight if selected else outline, 2 if selected else 1)
            self._draw_diamond(painter, QPointF(x, lanes.keys.center().y()), colour, pen)
        if self._drag == "key" and self._drag_target is not None:
            self._paint_ghost(painter, lanes)

    def _paint_ghost(self, painter: QPainter, lanes: _Lanes) -> None:
        """The marker being dragged, at the frame it would land on."""
        target = self._drag_target
        taken = target in self._keys and target != self._drag_key
        colour = QColor(KEY_COLOURS["stale"] if taken else "#ffffff")
        colour.setAlpha(140)
        pen = QPen(self.palette().color(QPalette.ColorRole.Highlight), 1, Qt.PenStyle.DashLine)
        self._draw_diamond(
            painter, QPointF(self.x_of(target), lanes.keys.center().y()), colour, pen
        )

    @staticmethod
    def _draw_diamond(painter: QPainter, centre: QPointF, fill: QColor, pen: QPen) -> None:
        r = MARKER_RADIUS
        path = QPainterPath()
        path.moveTo(centre.x(), centre.y() - r)
        path.lineTo(centre.x() + r, centre.y())
        path.lineTo(centre.x(), centre.y() + r)
        path.lineTo(centre.x() - r, centre.y())
        path.closeSubpath()
        painter.setPen(pen)
        painter.setBrush(fill)
        painter.drawPath(path)

    # -- mouse and wheel ----------------------------------------------------------------------
    def _key_near(self, pos: QPointF) -> int | None:
        """The key whose marker is under `pos` (the nearest if markers crowd together)."""
        lane = self._lanes().keys
        if not lane.top() <= pos.y() <= lane.bottom() or not self._keys:
            return None
        nearest = min(self._keys, key=lambda f: abs(self.x_of(f) - pos.x()))
        return nearest if abs(self.x_of(nearest) - pos.x()) <= MARKER_RADIUS + 2 else None

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self._count == 0:
            super().mousePressEvent(event)
            return
        pos = event.position()
        if pos.y() > self._lanes().bottom:
            return  # the scrollbar's own area
        self._press_x = pos.x()
        key = self._key_near(pos)
        if key is not None:
            self._drag, self._drag_key, self._drag_target = "key", key, None
            self._selected = key
            self.update()
            self.key_selected.emit(key)  # every click reports, even on the selected key
            self._move_playhead(key)
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        else:
            self._drag = "scrub"
            self._set_selected(None)
            self._scrub_to(pos.x())

    def _scrub_to(self, x: float) -> None:
        if self._move_playhead(self.frame_at(x)):
            self.scrubbed.emit(self._playhead)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        if self._drag is None:
            hover = self._key_near(pos) is not None
            if hover:
                self.setCursor(Qt.CursorShape.OpenHandCursor)
            else:
                self.unsetCursor()
            return
        self._scroll_at_edge(pos.x())
        if self._drag == "scrub":
            self._scrub_to(pos.x())
        elif abs(pos.x() - self._press_x) >= QApplication.startDragDistance():
            self._drag_target = self.frame_at(pos.x())
            self.update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self._drag is None:
            super().mouseReleaseEvent(event)
            return
        was, self._drag = self._drag, None
        self.unsetCursor()
        if was == "key":
            self._finish_key_drag()
        self.update()

    def _finish_key_drag(self) -> None:
        old, new = self._drag_key, self._drag_target
        self._drag_key = self._drag_target = None
        if old is None or new is None or new == old or new in self._keys:
            return
        # The keys stay as they are: the owner applies the move and calls set_keys.
        self._pending_move = (old, new)
        self.key_move_requested.emit(old, new)

    def _scroll_at_edge(self, x: float) -> None:
        """Dragging past either side scrolls the view so scrubbing can reach the whole clip."""
        if x < 0:
            self._scroll_by(x)
        elif x > self.width():
            self._scroll_by(x - self.width())

    def wheelEvent(self, event: QWheelEvent) -> None:
        delta = event.angleDelta()
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            steps = delta.y() / 120.0
            x = event.position().x()
            frame_pos = (x - MARGIN + self._scroll()) / self._ppf
            self._zoom(self._ppf * ZOOM_STEP**steps, frame_pos, x)
        else:
            pixels = event.pixelDelta()
            amount = pixels.x() or pixels.y() or (delta.x() or delta.y()) / 2
            self._scroll_by(-amount)
        event.accept()

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        if self._count == 0:
            return
        frame = self.frame_at(event.pos().x())
        key = self._key_near(QPointF(event.pos()))
        menu = QMenu(self)
        if key is not None:
            menu.addAction(f"Remove key {key}", lambda: self.key_remove_requested.emit(key))
        else:
            verb = "Remove" if frame in self._keys else "Add"
            menu.addAction(f"{verb} key at frame {frame}", lambda: self._toggle_at(frame))
        menu.addSeparator()
        menu.addAction(f"Mark in at frame {frame}", lambda: self.in_point_requested.emit(frame))
        menu.addAction(f"Mark out at frame {frame}", lambda: self.out_point_requested.emit(frame))
        if self._range != (None, None):
            menu.addAction("Clear in and out", self.range_clear_requested.emit)
        menu.addSeparator()
        menu.addAction("Fit the clip", self.zoom_fit)
        menu.exec(event.globalPos())

    def _toggle_at(self, frame: int) -> None:
        self._move_playhead(frame)
        self.key_toggle_requested.emit(frame)

    # -- events -------------------------------------------------------------------------------
    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ToolTip:
            text = self._tooltip_at(QPointF(event.pos()))
            if text:
                QToolTip.showText(event.globalPos(), text, self)
            else:
                QToolTip.hideText()
            return True
        return super().event(event)

    def _tooltip_at(self, pos: QPointF) -> str:
        if self._count == 0 or pos.y() > self._lanes().bottom:
            return ""
        key = self._key_near(pos)
        if key is not None:
            return f"Key {key} — {self._keys[key]}\nClick to select, drag to move"
        frame = self.frame_at(pos.x())
        text = f"Frame {frame} · {timecode(frame, self._fps)}"
        if self._quality is not None and frame not in self._keys:
            quality = self._quality[frame]
            text += (
                f"\nThe footage carried from its keys matches it to {quality:.0f} dB PSNR"
                if quality > 0
                else "\nNo key near enough to predict: add one nearer"
            )
        return text

    def resizeEvent(self, event: QResizeEvent) -> None:
        bar = self._scrollbar.sizeHint().height()
        self._scrollbar.setGeometry(0, self.height() - bar, self.width(), bar)
        if self._fit_mode:
            self._ppf = self._fit_ppf()
        else:
            self._ppf = max(self._ppf, self._fit_ppf())
        self._update_scrollbar()
        super().resizeEvent(event)


def _to_qimage(array: np.ndarray) -> QImage:
    """An owned RGB888 QImage from an HxWx3 (or HxW grey) uint8 array."""
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    rgb = np.ascontiguousarray(array[:, :, :3], dtype=np.uint8)
    height, width = rgb.shape[:2]
    image = QImage(rgb.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return image.copy()  # detach from the numpy buffer
