"""The viewer: the original and the rendered frame of the playhead, compared four ways.

Modes: the original alone, the rendered frame alone, a split wipe (original left of a
draggable divider, rendered right of it) and side by side. Both frames share one view
transform (zoom and pan) in image pixels of the original, so a rendered frame of another size
(a downscaled live preview) lands exactly over its original.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QFont,
    QImage,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QWheelEvent,
)
from PySide6.QtWidgets import QWidget

# "matte": the original, as the window gives it in that mode (tinted where a matte keeps it)
MODES = ("original", "rendered", "split", "side_by_side", "matte")
_FORMATS = {1: QImage.Format_Grayscale8, 3: QImage.Format_RGB888, 4: QImage.Format_RGBA8888}
_BACKGROUND = QColor(24, 24, 26)
_MIN_ZOOM, _MAX_ZOOM = 0.02, 64.0
_GRAB_DISTANCE = 6  # pixels either side of the divider that grab it
_NEAREST_ABOVE = 2.0  # zoomed in further than this, show pixels as crisp squares


def numpy_to_qimage(array: np.ndarray) -> QImage:
    """An owned QImage of an HxW, HxWx3 (RGB) or HxWx4 (RGBA) uint8 array.

    The result is a copy: a QImage made over a numpy buffer dangles once the array is freed
    or reused by the engine.
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    channels = 1 if array.ndim == 2 else array.shape[2]
    height, width = array.shape[:2]
    image = QImage(array.data, width, height, array.strides[0], _FORMATS[channels])
    return image.copy()


class ViewerWidget(QWidget):
    """Custom-painted frame viewer; `set_frames(original, rendered)` shows a position.
    With `set_compared(image, label)` the split and side-by-side views show another render
    (a kept version's) where they showed the original, to compare two looks."""

    MODES = MODES
    mode_changed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._original: QImage | None = None
        self._rendered: QImage | None = None
        self._compared: QImage | None = None
        self._compared_label: str | None = None  # None: not comparing
        self._mode = "split"
        self._split = 0.5
        self._fitted = True  # the view follows the widget's size until the user zooms or pans
        self._zoom = 1.0
        self._offset = QPointF()  # image origin in viewport coordinates
        self._scaled: dict[str, tuple[QImage, QSize, QImage]] = {}  # see _downscaled
        self._drag: str | None = None  # "divider" or "pan" while a mouse button is held
        self._last_pos = QPointF()
        self.setMouseTracking(True)
        self.setAttribute(Qt.WA_OpaquePaintEvent)
        self.setFocusPolicy(Qt.WheelFocus)
        self.setMinimumSize(160, 90)

    def sizeHint(self) -> QSize:
        return QSize(960, 540)

    # -- content ---------------------------------------------------------------------------
    def set_frames(self, original: np.ndarray | None, rendered: np.ndarray | None) -> None:
        """Show these RGB uint8 frames (copied); None shows a placeholder in its place."""
        before = self.image_size()
        self._original = None if original is None else numpy_to_qimage(original)
        self._rendered = None if rendered is None else numpy_to_qimage(rendered)
        self._scaled.clear()
        if self.image_size() != before:
            self._fitted = True  # another clip: a zoom into the last one means nothing here
        self.update()

    def set_compared(self, image: np.ndarray | None, label: str | None) -> None:
        """Compare the render with `image` (RGB uint8, None: not rendered) named `label`, on
        the left of the split and side-by-side views; a None label shows the original there."""
        self._compared = None if image is None else numpy_to_qimage(image)
        self._compared_label = label
        self._scaled.pop("compared", None)
        self.update()

    def compared_label(self) -> str | None:
        return self._compared_label

    def shown_image(self, which: str) -> QImage | None:
        """The "original", "rendered" or "compared" frame as it is shown (None: a
        placeholder)."""
        return {"original": self._original, "compared": self._compared}.get(which, self._rendered)

    def _left(self) -> tuple[str, str]:
        """What the left of the split and side-by-side views shows, and its tag."""
        if self._compared_label is None:
            return "original", "Original"
        return "compared", self._compared_label

    def image_size(self) -> QSize:
        """Size of the image space both frames are drawn in (the original's, when present)."""
        image = self._original or self._rendered
        return image.size() if image is not None else QSize()

    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown viewer mode {mode!r}; expected one of {MODES}")
        if mode != self._mode:
            self._mode = mode
            self.update()
            self.mode_changed.emit(mode)

    def split_position(self) -> float:
        return self._split

    def set_split_position(self, position: float) -> None:
        """Where the wipe divider stands, as a fraction of the widget's width."""
        self._split = min(1.0, max(0.0, float(position)))
        self.update()

    # -- view transform --------------------------------------------------------------------
    def _viewport_size(self) -> QSize:
        """Each side in side-by-side mode is a viewport of half the width."""
        if self._mode == "side_by_side":
            return QSize(max(1, self.width() // 2), self.height())
        return self.size()

    def _viewport_at(self, pos: QPointF) -> QPointF:
        """The origin of the viewport under `pos`."""
        half = self._viewport_size().width()
        if self._mode == "side_by_side" and pos.x() >= half:
            return QPointF(half, 0)
        return QPointF(0, 0)

    def _view(self) -> tuple[float, QPointF]:
        """Zoom and image offset in the viewport, the fitted ones while the view is fitted."""
        if not self._fitted:
            return self._zoom, self._offset
        image, port = self.image_size(), self._viewport_size()
        if image.isEmpty():
            return 1.0, QPointF()
        zoom = min(port.width() / image.width(), port.height() / image.height())
        offset = QPointF(
            (port.width() - image.width() * zoom) / 2, (port.height() - image.height() * zoom) / 2
        )
        return zoom, offset

    def is_fitted(self) -> bool:
        return self._fitted

    def fit(self) -> None:
        """Show the whole image, aspect kept and centred (the default)."""
        self._fitted = True
        self.update()

    def zoom(self) -> float:
        """Screen pixels per image pixel (1.0 shows the frame at its own size)."""
        return self._view()[0]

    def set_zoom(self, factor: float, anchor: QPointF | None = None) -> None:
        """Zoom so that the image point under `anchor` (widget coordinates; the viewport's
        centre by default) stays where it is."""
        if self.image_size().isEmpty():
            return
        zoom, offset = self._view()
        if anchor is None:
            port = self._viewport_size()
            anchor = QPointF(port.width() / 2, port.height() / 2)
        local = anchor - self._viewport_at(anchor)
        point = (local - offset) / zoom
        self._zoom = min(_MAX_ZOOM, max(_MIN_ZOOM, float(factor)))
        self._offset = local - point * self._zoom
        self._fitted = False
        self.update()

    def pan(self, dx: float, dy: float) -> None:
        if self.image_size().isEmpty():
            return
        zoom, offset = self._view()
        self._zoom, self._offset, self._fitted = zoom, offset + QPointF(dx, dy), False
        self.update()

    def widget_to_image(self, pos: QPointF) -> QPointF:
        """The image pixel coordinates under a widget position."""
        zoom, offset = self._view()
        return (pos - self._viewport_at(pos) - offset) / zoom

    def image_to_widget(self, point: QPointF) -> QPointF:
        """Where an image point appears (in the left/only viewport)."""
        zoom, offset = self._view()
        return point * zoom + offset

    def image_rect(self) -> QRectF:
        """The image's rectangle in the left/only viewport."""
        zoom, offset = self._view()
        size = self.image_size()
        return QRectF(offset.x(), offset.y(), size.width() * zoom, size.height() * zoom)

    # -- painting --------------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), _BACKGROUND)
        painter.setRenderHint(QPainter.SmoothPixmapTransform, self.zoom() <= _NEAREST_ABOVE)
        if self._original is None and self._rendered is None:
            self._placeholder(painter, QRectF(self.rect()), "No clip")
        elif self._mode == "original":
            self._frame(painter, QRectF(self.rect()), "original")
        elif self._mode == "matte":
            self._frame(painter, QRectF(self.rect()), "original")
            self._tag(painter, "Matte", QRectF(self.rect()), Qt.AlignLeft)
        elif self._mode == "rendered":
            self._frame(painter, QRectF(self.rect()), "rendered")
        elif self._mode == "split":
            self._paint_split(painter)
        else:
            self._paint_side_by_side(painter)
        painter.end()

    def _frame(self, painter: QPainter, area: QRectF, which: str) -> None:
        """Draw one frame clipped to `area`, placed by the view of the viewport it lies in."""
        image = self.shown_image(which)
        if image is None:
            texts = {"original": "No clip", "compared": "Not rendered in this version"}
            self._placeholder(painter, area, texts.get(which, "Not rendered yet"))
            return
        target = self.image_rect().translated(self._viewport_at(area.topLeft()))
        if self.zoom() < 1:
            # Bilinear drawing skips source pixels when shrinking (aliasing); a box-filtered
            # copy at screen size drawn 1:1 is both sharper and calmer.
            size = target.size().toSize()
            image = self._downscaled(which, image, size)
            target = QRectF(QPointF(round(target.x()), round(target.y())), size.toSizeF())
        painter.save()
        painter.setClipRect(area)
        painter.drawImage(target, image)
        painter.restore()

    def _downscaled(self, which: str, image: QImage, size: QSize) -> QImage:
        """`image` smoothly scaled to `size`, cached until the frame or the size changes."""
        cached = self._scaled.get(which)
        if cached is None or cached[0] is not image or cached[1] != size:
            scaled = image.scaled(size, Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
            cached = self._scaled[which] = (image, size, scaled)
        return cached[2]

    def _paint_split(self, painter: QPainter) -> None:
        x = self.divider_x()
        full = QRectF(self.rect())
        left, tag = self._left()
        self._frame(painter, QRectF(0, 0, x, full.height()), left)
        self._frame(painter, QRectF(x, 0, full.width() - x, full.height()), "rendered")
        painter.setPen(QPen(QColor(240, 240, 240, 200), 1.5))
        painter.drawLine(QPointF(x, 0), QPointF(x, full.height()))
        self._handle(painter, QPointF(x, full.height() / 2))
        self._tag(painter, tag, full, Qt.AlignLeft)
        self._tag(painter, "Rendered", full, Qt.AlignRight)

    def _paint_side_by_side(self, painter: QPainter) -> None:
        half = self._viewport_size().width()
        left = QRectF(0, 0, half, self.height())
        right = QRectF(half, 0, self.width() - half, self.height())
        which, tag = self._left()
        self._frame(painter, left, which)
        self._frame(painter, right, "rendered")
        painter.setPen(QPen(_BACKGROUND, 2))
        painter.drawLine(QPointF(half, 0), QPointF(half, self.height()))
        self._tag(painter, tag, left, Qt.AlignLeft)
        self._tag(painter, "Rendered", right, Qt.AlignRight)

    def _handle(self, painter: QPainter, centre: QPointF) -> None:
        """A small grip on the divider, so it reads as something to drag."""
        painter.save()
        painter.setRenderHint(QPainter.Antialiasing)
        painter.setPen(QPen(QColor(40, 40, 40), 1))
        painter.setBrush(QColor(240, 240, 240))
        painter.drawRoundedRect(QRectF(centre.x() - 4, centre.y() - 14, 8, 28), 3, 3)
        painter.restore()

    def _tag(self, painter: QPainter, text: str, area: QRectF, side: Qt.AlignmentFlag) -> None:
        painter.save()
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        painter.setFont(font)
        metrics = painter.fontMetrics()
        box = QRectF(0, 0, metrics.horizontalAdvance(text) + 12, metrics.height() + 4)
        x = area.left() + 8 if side == Qt.AlignLeft else area.right() - 8 - box.width()
        box.moveTo(x, area.top() + 8)
        painter.setRenderHint(QPainter.Antialiasing)
        painter.setPen(Qt.NoPen)
        painter.setBrush(QColor(0, 0, 0, 150))
        painter.drawRoundedRect(box, 4, 4)
        painter.setPen(QColor(230, 230, 230))
        painter.drawText(box, Qt.AlignCenter, text)
        painter.restore()

    def _placeholder(self, painter: QPainter, area: QRectF, text: str) -> None:
        painter.save()
        painter.setClipRect(area)
        painter.setPen(QColor(130, 130, 136))
        painter.drawText(area, Qt.AlignCenter, text)
        painter.restore()

    # -- mouse -----------------------------------------------------------------------------
    def divider_x(self) -> float:
        return self._split * self.width()

    def _on_divider(self, pos: QPointF) -> bool:
        return self._mode == "split" and abs(pos.x() - self.divider_x()) <= _GRAB_DISTANCE

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.LeftButton:
            return super().mousePressEvent(event)
        pos = event.position()
        self._drag = "divider" if self._on_divider(pos) else "pan"
        self._last_pos = pos
        if self._drag == "pan":
            self.setCursor(Qt.ClosedHandCursor)
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        if self._drag == "divider":
            self.set_split_position(pos.x() / max(1, self.width()))
        elif self._drag == "pan":
            delta = pos - self._last_pos
            self.pan(delta.x(), delta.y())
        else:
            self.setCursor(Qt.SplitHCursor if self._on_divider(pos) else Qt.ArrowCursor)
        self._last_pos = pos

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.LeftButton and self._drag is not None:
            self._drag = None
            self.setCursor(
                Qt.SplitHCursor if self._on_divider(event.position()) else Qt.ArrowCursor
            )
            event.accept()
            return
        super().mouseReleaseEvent(event)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.LeftButton or self._on_divider(event.position()):
            return super().mouseDoubleClickEvent(event)
        if self._fitted:
            self.set_zoom(1.0, event.position())
        else:
            self.fit()
        event.accept()

    def wheelEvent(self, event: QWheelEvent) -> None:
        # A plain wheel zooms too: the viewer has nothing to scroll, and ctrl+wheel is the
        # habit from other editors.
        steps = event.angleDelta().y() / 120
        if steps == 0:
            return super().wheelEvent(event)
        self.set_zoom(self.zoom() * 1.25**steps, event.position())
        event.accept()
