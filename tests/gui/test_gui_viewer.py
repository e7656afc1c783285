"""The viewer (pytest-qt, offscreen): each mode's pixels, the wipe divider, zoom, pan, fit."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QImage, QWheelEvent
from PySide6.QtWidgets import QApplication

from zvstudio.gui.viewer import MODES, ViewerWidget

RED, BLUE = (255, 0, 0), (0, 0, 255)
W, H = 400, 300


def solid(colour, width=64, height=48) -> np.ndarray:
    return np.full((height, width, 3), colour, np.uint8)


def pixels(widget) -> np.ndarray:
    """The widget as it is drawn now, as an HxWx3 RGB array."""
    image = widget.grab().toImage().convertToFormat(QImage.Format_RGB888)
    data = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), -1)
    return data[:, : image.width() * 3].reshape(image.height(), image.width(), 3).copy()


def has(image, colour) -> bool:
    """Whether any pixel is (nearly) this colour; white lines and tags are not blue."""
    return bool((np.abs(image.astype(int) - colour).max(axis=2) <= 40).any())


def is_colour(pixel, colour) -> bool:
    return bool(np.abs(pixel.astype(int) - colour).max() <= 8)


@pytest.fixture
def viewer(qtbot):
    view = ViewerWidget()
    qtbot.addWidget(view)
    view.resize(W, H)
    view.show()
    qtbot.waitExposed(view)
    view.set_frames(solid(RED), solid(BLUE))
    return view


def test_original_and_rendered_modes_show_one_frame_each(viewer):
    viewer.set_mode("original")
    image = pixels(viewer)
    assert is_colour(image[150, 200], RED) and not has(image, BLUE)
    viewer.set_mode("rendered")
    image = pixels(viewer)
    assert is_colour(image[150, 200], BLUE) and not has(image, RED)


def test_split_shows_original_left_and_rendered_right(viewer):
    viewer.set_mode("split")
    viewer.set_split_position(0.5)
    image = pixels(viewer)
    assert is_colour(image[150, 100], RED) and is_colour(image[150, 300], BLUE)
    viewer.set_split_position(0.8)
    assert is_colour(pixels(viewer)[150, 300], RED)


def test_side_by_side_shows_both_fitted_in_halves(viewer):
    viewer.set_mode("side_by_side")
    image = pixels(viewer)
    assert is_colour(image[150, 100], RED) and is_colour(image[150, 300], BLUE)
    # 64x48 in a 200x300 half: fitted to the width, letterboxed above and below.
    assert not is_colour(image[20, 100], RED) and not is_colour(image[20, 300], BLUE)


def test_mode_changes_are_signalled_and_checked(viewer, qtbot):
    assert viewer.mode() in MODES
    viewer.set_mode("original")
    with qtbot.waitSignal(viewer.mode_changed) as signal:
        viewer.set_mode("side_by_side")
    assert signal.args == ["side_by_side"] and viewer.mode() == "side_by_side"
    with pytest.raises(ValueError):
        viewer.set_mode("sideways")


def test_dragging_the_divider_moves_the_split(viewer, qtbot):
    viewer.set_mode("split")
    viewer.set_split_position(0.5)
    qtbot.mousePress(viewer, Qt.LeftButton, pos=QPoint(201, 220))
    qtbot.mouseMove(viewer, QPoint(300, 220))
    qtbot.mouseRelease(viewer, Qt.LeftButton, pos=QPoint(300, 220))
    assert viewer.split_position() == pytest.approx(0.75, abs=0.01)
    assert viewer.is_fitted()  # the drag moved the divider, not the image
    assert is_colour(pixels(viewer)[150, 250], RED)


def test_the_cursor_changes_near_the_divider(viewer, qtbot):
    viewer.set_mode("split")
    qtbot.mouseMove(viewer, QPoint(202, 100))
    assert viewer.cursor().shape() == Qt.SplitHCursor
    qtbot.mouseMove(viewer, QPoint(60, 100))
    assert viewer.cursor().shape() != Qt.SplitHCursor


def test_missing_frames_show_placeholders(viewer):
    viewer.set_frames(solid(RED), None)
    for mode in MODES:
        viewer.set_mode(mode)
        assert not has(pixels(viewer), BLUE), mode
    viewer.set_mode("split")
    assert is_colour(pixels(viewer)[150, 100], RED)
    viewer.set_frames(None, None)
    image = pixels(viewer)
    assert not has(image, RED) and not has(image, BLUE)


def test_fit_keeps_the_aspect_and_centres(viewer):
    viewer.set_frames(solid(RED, 80, 40), solid(BLUE, 80, 40))
    viewer.set_mode("original")
    assert viewer.zoom() == pytest.approx(5.0)  # 80x40 into 400x300: the width limits
    rect = viewer.image_rect()
    assert (rect.x(), rect.y(), rect.width(), rect.height()) == pytest.approx((0, 50, 400, 200))
    image = pixels(viewer)
    assert is_colour(image[150, 200], RED) and not is_colour(image[20, 200], RED)
    viewer.set_zoom(1.0)
    viewer.fit()
    assert viewer.is_fitted() and viewer.zoom() == pytest.approx(5.0)


def wheel(widget, pos: QPointF, steps: int, modifiers=Qt.NoModifier) -> None:
    event = QWheelEvent(
        pos,
        widget.mapToGlobal(pos),
        QPoint(),
        QPoint(0, 120 * steps),
        Qt.NoButton,
        modifiers,
        Qt.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(widget, event)


@pytest.mark.parametrize("mode", ["split", "side_by_side"])
def test_wheel_zooms_about_the_cursor(viewer, mode):
    viewer.set_mode(mode)
    cursor = QPointF(130, 170) if mode == "split" else QPointF(330, 170)
    before, zoom = viewer.widget_to_image(cursor), viewer.zoom()
    wheel(viewer, cursor, 2, Qt.ControlModifier)
    assert viewer.zoom() == pytest.approx(zoom * 1.25**2)
    after = viewer.widget_to_image(cursor)
    assert (after.x(), after.y()) == pytest.approx((before.x(), before.y()))
    wheel(viewer, cursor, -1)
    assert viewer.zoom() == pytest.approx(zoom * 1.25)
    after = viewer.widget_to_image(cursor)
    assert (after.x(), after.y()) == pytest.approx((before.x(), before.y()))


def test_dragging_the_image_pans_it(viewer, qtbot):
    viewer.set_mode("split")
    viewer.set_zoom(8.0)
    start = viewer.image_rect()
    qtbot.mousePress(viewer, Qt.LeftButton, pos=QPoint(100, 150))
    qtbot.mouseMove(viewer, QPoint(130, 170))
    qtbot.mouseMove(viewer, QPoint(150, 170))
    qtbot.mouseRelease(viewer, Qt.LeftButton, pos=QPoint(150, 170))
    moved = viewer.image_rect().topLeft() - start.topLeft()
    assert (moved.x(), moved.y()) == pytest.approx((50, 20))
    assert viewer.split_position() == 0.5


def test_double_click_toggles_fit_and_actual_size(viewer, qtbot):
    viewer.set_mode("original")
    qtbot.mouseDClick(viewer, Qt.LeftButton, pos=QPoint(120, 150))
    assert viewer.zoom() == pytest.approx(1.0) and not viewer.is_fitted()
    qtbot.mouseDClick(viewer, Qt.LeftButton, pos=QPoint(120, 150))
    assert viewer.is_fitted() and viewer.zoom() == pytest.approx(6.25)


def test_zoomed_in_pixels_stay_crisp(viewer):
    checker = np.zeros((4, 4, 3), np.uint8)
    checker[::2, ::2] = checker[1::2, 1::2] = 255
    viewer.set_frames(checker, None)
    viewer.set_mode("original")
    viewer.set_zoom(40.0)
    edge = viewer.image_to_widget(QPointF(2, 1.5))  # white (1, 1) meets black (2, 1) here
    x, y = round(edge.x()), round(edge.y())
    image = pixels(viewer)
    # Nearest-neighbour: the pixels beside a cell boundary are fully black or white.
    assert set(np.unique(image[y, x - 6 : x + 6])) <= {0, 255}
    assert is_colour(image[y, x - 3], (255, 255, 255)) and is_colour(image[y, x + 3], (0, 0, 0))
    # Zoomed out, cell edges are smoothed into greys (a 256x256 checker at 0.3x, centred).
    viewer.set_frames(np.kron(checker, np.ones((64, 64, 1), np.uint8)), None)
    viewer.set_zoom(0.3)
    assert not set(np.unique(pixels(viewer)[150, 170:230])) <= {0, 255}


def test_a_smaller_rendered_preview_covers_the_original(viewer):
    viewer.set_frames(solid(RED, 64, 48), solid(BLUE, 16, 12))  # a downscaled live preview
    viewer.set_mode("rendered")
    rect = viewer.image_rect().toRect()
    image = pixels(viewer)
    assert is_colour(image[rect.top() + 2, rect.left() + 2], BLUE)
    assert is_colour(image[rect.bottom() - 2, rect.right() - 2], BLUE)


def test_frames_are_copied(viewer):
    frame = solid(RED)
    viewer.set_frames(frame, frame)
    viewer.set_mode("original")
    frame[:] = BLUE  # the engine reuses its buffers
    del frame
    assert is_colour(pixels(viewer)[150, 200], RED)
