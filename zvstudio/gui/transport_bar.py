"""The transport bar under the viewer: playback buttons, loop, mute and the sound's volume,
and the timecode.

Its buttons are the main window's own actions (the same shortcuts and menu entries), so the
bar only arranges them and keeps the play button's icon and the timecode current.
"""

from __future__ import annotations

from fractions import Fraction

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QAction,
    QColor,
    QFontDatabase,
    QIcon,
    QPainter,
    QPainterPath,
    QPalette,
    QPen,
    QPixmap,
)
from PySide6.QtWidgets import QLabel, QSizePolicy, QSlider, QStyle, QToolBar, QWidget

from zvstudio.gui.timeline import timecode
from zvstudio.gui.transport import Transport
from zvstudio.media.timecode import timecode_at

ELAPSED_TIP = "Playhead / last frame from the clip's start (hours:minutes:seconds:frames)"

ICONS = {
    "home": QStyle.StandardPixmap.SP_MediaSkipBackward,
    "previous": QStyle.StandardPixmap.SP_MediaSeekBackward,
    "play": QStyle.StandardPixmap.SP_MediaPlay,
    "pause": QStyle.StandardPixmap.SP_MediaPause,
    "next": QStyle.StandardPixmap.SP_MediaSeekForward,
    "end": QStyle.StandardPixmap.SP_MediaSkipForward,
    "sound": QStyle.StandardPixmap.SP_MediaVolume,
    "muted": QStyle.StandardPixmap.SP_MediaVolumeMuted,
}


class TransportBar(QToolBar):
    """Buttons for `actions` (name -> action: home, previous, play, next, end, loop, mute)
    over `transport`, a volume slider, and the timecodes of the playhead and the last frame."""

    volume_changed = Signal(float)  # 0..1, as the user drags the slider

    def __init__(
        self, transport: Transport, actions: dict[str, QAction], parent: QWidget | None = None
    ) -> None:
        super().__init__("Transport", parent)
        self.setObjectName("Transport")
        self.setMovable(False)
        self.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
        self._transport = transport
        self._actions = actions
        for name in ("home", "previous", "play", "next", "end"):
            actions[name].setIcon(self._icon(name))
            self.addAction(actions[name])
        self.addSeparator()
        actions["loop"].setIcon(loop_icon(self.palette().color(QPalette.ColorRole.ButtonText)))
        self.addAction(actions["loop"])
        self.addAction(actions["mute"])
        self.volume_slider = QSlider(Qt.Orientation.Horizontal, self)
        self.volume_slider.setRange(0, 100)
        self.volume_slider.setValue(100)
        self.volume_slider.setMaximumWidth(90)
        self.volume_slider.setToolTip("Playback volume")
        self.volume_slider.valueChanged.connect(lambda value: self.volume_changed.emit(value / 100))
        self.addWidget(self.volume_slider)
        spacer = QWidget(self)
        spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.addWidget(spacer)
        self.timecode_label = QLabel(self)
        self.timecode_label.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.timecode_label.setToolTip(ELAPSED_TIP)
        self.addWidget(self.timecode_label)
        self._source_start: str | None = None  # the clip's own timecode at its first frame
        transport.playing_changed.connect(self._show_playing)
        transport.frame_changed.connect(self._show_timecode)
        actions["mute"].toggled.connect(self._show_muted)
        self._show_playing(transport.is_playing())
        self._show_muted(actions["mute"].isChecked())
        self._show_timecode(transport.frame())

    def _icon(self, name: str):
        return self.style().standardIcon(ICONS[name])

    def _show_playing(self, playing: bool) -> None:
        self._actions["play"].setIcon(self._icon("pause" if playing else "play"))

    def _show_muted(self, muted: bool) -> None:
        self._actions["mute"].setIcon(self._icon("muted" if muted else "sound"))

    def _show_timecode(self, frame: int) -> None:
        count, fps = self._transport.frame_count(), self._transport.fps()
        if count == 0:
            self.timecode_label.setText("")
            return
        here, end = timecode(frame, fps, full=True), timecode(count - 1, fps, full=True)
        source = timecode_at(self._source_start, Fraction(fps).limit_denominator(1001), frame)
        self.timecode_label.setText(f"{here} / {end}" + (f"   TC {source}" if source else ""))

    def set_source_timecode(self, start: str | None) -> None:
        """Show the clip's source timecode at the playhead too (`start`: its first frame's)."""
        self._source_start = start
        tip = ELAPSED_TIP + (f"; TC: the clip's own timecode ({start} at frame 0)" if start else "")
        self.timecode_label.setToolTip(tip)
        self._show_timecode(self._transport.frame())

    def set_volume(self, volume: float) -> None:
        """Show `volume` (0..1) on the slider without announcing it."""
        self.volume_slider.blockSignals(True)
        self.volume_slider.setValue(round(min(max(volume, 0.0), 1.0) * 100))
        self.volume_slider.blockSignals(False)


def loop_icon(color: QColor) -> QIcon:
    """A loop (an open ring with an arrowhead) drawn in `color`, in the plain style of the
    style's media icons: the style has no loop icon, and its "reload" one is coloured."""
    icon = QIcon()
    for side in (16, 24, 32, 48):
        pixmap = QPixmap(side, side)
        pixmap.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pixmap)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        pen = QPen(color, max(1.5, side / 11))
        pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        painter.setPen(pen)
        margin = side * 0.2
        ring = QRectF(margin, margin, side - 2 * margin, side - 2 * margin)
        painter.drawArc(ring, 100 * 16, 290 * 16)  # from the top, round to the right
        tip = QPointF(ring.center().x() - side * 0.02, ring.top())
        head = QPainterPath(tip + QPointF(side * 0.22, 0))
        head.lineTo(tip - QPointF(side * 0.06, side * 0.2))
        head.lineTo(tip + QPointF(-side * 0.06, side * 0.2))
        head.closeSubpath()
        painter.setBrush(color)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.drawPath(head)
        painter.end()
        icon.addPixmap(pixmap)
    return icon
