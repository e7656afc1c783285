"""The timeline widget and the playback transport (pytest-qt, offscreen): scrubbing, zoom,
lazy cached thumbnails, key markers and their edit requests, painting, and drift-free playback."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QWheelEvent
from PySide6.QtWidgets import QApplication

from zvstudio.gui import timeline as timeline_module
from zvstudio.gui.timeline import (
    CUT_COLOUR,
    KEY_COLOURS,
    MARGIN,
    SEGMENT_COLOURS,
    ZOOM_STEP,
    TimelineWidget,
    parse_position,
    timecode,
)
from zvstudio.gui.transport import Transport

WIDTH, HEIGHT = 800, 140


class Thumbnails:
    """A provider that records which frames it was asked for."""

    def __init__(self, ready: bool = True) -> None:
        self.calls: list[int] = []
        self.ready = ready

    def __call__(self, frame: int) -> np.ndarray | None:
        self.calls.append(frame)
        if not self.ready:
            return None
        image = np.zeros((36, 64, 3), np.uint8)
        image[..., 0] = frame % 256
        return image


@pytest.fixture
def make_timeline(qtbot):
    def make(frames: int = 100, fps: float = 25.0, thumbnails=None) -> TimelineWidget:
        widget = TimelineWidget()
        qtbot.addWidget(widget)
        widget.resize(WIDTH, HEIGHT)
        widget.show()
        qtbot.waitExposed(widget)
        widget.set_clip(frames, fps, thumbnails)
        return widget

    return make


def strip_point(widget: TimelineWidget, frame: int) -> QPoint:
    """A point on the thumbnail strip over `frame` (the middle of the widget's height)."""
    return QPoint(round(widget.x_of(frame)), widget.height() // 2)


def marker_point(widget: TimelineWidget, frame: int) -> QPoint:
    return widget.key_marker_pos(frame).toPoint()


def recorder(signal) -> list:
    seen: list = []
    signal.connect(lambda *args: seen.append(args if len(args) > 1 else args[0]))
    return seen


def close_to(colour: QColor, hex_colour: str, tolerance: int = 6) -> bool:
    want = QColor(hex_colour)
    diffs = (colour.red() - want.red(), colour.green() - want.green(), colour.blue() - want.blue())
    return all(abs(d) <= tolerance for d in diffs)


# -- playhead and scrubbing -------------------------------------------------------------------
def test_click_moves_playhead_and_emits(qtbot, make_timeline):
    widget = make_timeline(100)
    for frame in (37, 0, 99, 50):
        with qtbot.waitSignal(widget.playhead_changed) as blocker:
            qtbot.mouseClick(widget, Qt.LeftButton, pos=strip_point(widget, frame))
        assert blocker.args == [frame]
        assert widget.playhead() == frame
    # The ruler scrubs too.
    qtbot.mouseClick(widget, Qt.LeftButton, pos=QPoint(round(widget.x_of(12)), 8))
    assert widget.playhead() == 12


def test_drag_scrubs_continuously(qtbot, make_timeline):
    widget = make_timeline(100)
    seen, scrubbed = recorder(widget.playhead_changed), recorder(widget.scrubbed)
    qtbot.mousePress(widget, Qt.LeftButton, pos=strip_point(widget, 10))
    for frame in (15, 20, 20, 30):
        qtbot.mouseMove(widget, strip_point(widget, frame))
    qtbot.mouseRelease(widget, Qt.LeftButton, pos=strip_point(widget, 30))
    assert seen == scrubbed == [10, 15, 20, 30]
    assert widget.playhead() == 30
    qtbot.mouseMove(widget, strip_point(widget, 60))  # no button held: no scrubbing
    assert widget.playhead() == 30
    widget.set_playhead(50)  # moved from code: not a scrub
    assert seen[-1] == 50 and scrubbed[-1] == 30


def test_set_playhead_clamps_and_emits_only_on_change(make_timeline):
    widget = make_timeline(50)
    seen = recorder(widget.playhead_changed)
    widget.set_playhead(-5)  # already 0
    widget.set_playhead(10_000)
    widget.set_playhead(49)
    widget.set_playhead(7)
    assert seen == [49, 7]
    assert widget.playhead() == 7


def test_programmatic_playhead_is_kept_in_view(make_timeline):
    widget = make_timeline(1000)
    for _ in range(8):
        widget.zoom_in()
    for frame in (900, 950, 999, 3, 500):
        widget.set_playhead(frame)
        assert 0 <= widget.x_of(frame) <= widget.width()


# -- zoom and scroll ---------------------------------------------------------------------------
def test_zoom_fit_in_out(make_timeline):
    widget = make_timeline(200)
    fit = widget.pixels_per_frame()
    assert fit == pytest.approx((WIDTH - 2 * MARGIN) / 200)
    assert widget.frame_at(0) == 0 and widget.frame_at(WIDTH - 1) == 199
    assert widget.x_of(0) >= 0 and widget.x_of(199) <= WIDTH

    widget.zoom_out()  # cannot zoom out beyond the whole clip
    assert widget.pixels_per_frame() == pytest.approx(fit)

    widget.set_playhead(120)
    x_before = widget.x_of(120)
    widget.zoom_in()
    assert widget.pixels_per_frame() == pytest.approx(fit * ZOOM_STEP)
    assert widget.x_of(120) == pytest.approx(x_before, abs=1.5)  # zoomed about the playhead
    widget.zoom_in()
    assert widget.pixels_per_frame() == pytest.approx(fit * ZOOM_STEP**2)
    assert widget.frame_at(WIDTH - 1) < 199  # no longer shows everything
    widget.zoom_out()
    assert widget.pixels_per_frame() == pytest.approx(fit * ZOOM_STEP)

    widget.zoom_fit()
    assert widget.pixels_per_frame() == pytest.approx(fit)
    assert widget.frame_at(0) == 0 and widget.frame_at(WIDTH - 1) == 199


def test_fit_follows_resize_until_user_zooms(qtbot, make_timeline):
    widget = make_timeline(100)
    widget.resize(500, HEIGHT)
    assert widget.pixels_per_frame() == pytest.approx((500 - 2 * MARGIN) / 100)
    widget.zoom_in()
    zoomed = widget.pixels_per_frame()
    widget.resize(600, HEIGHT)
    assert widget.pixels_per_frame() == pytest.approx(zoomed)


def wheel(widget: TimelineWidget, x: float, dy: int, modifiers=Qt.NoModifier) -> None:
    pos = QPointF(x, widget.height() / 2)
    event = QWheelEvent(
        pos,
        widget.mapToGlobal(pos),
        QPoint(0, 0),
        QPoint(0, dy),
        Qt.NoButton,
        modifiers,
        Qt.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(widget, event)


def test_ctrl_wheel_zooms_about_cursor_and_wheel_scrolls(make_timeline):
    widget = make_timeline(400)
    fit = widget.pixels_per_frame()
    x = widget.x_of(300)
    wheel(widget, x, 120, Qt.ControlModifier)
    assert widget.pixels_per_frame() == pytest.approx(fit * ZOOM_STEP)
    assert widget.frame_at(x) == 300  # the frame under the cursor stays under it
    wheel(widget, x, 240, Qt.ControlModifier)
    assert widget.frame_at(x) == 300

    first_visible = widget.frame_at(0)
    wheel(widget, x, -240)  # plain wheel scrolls towards later frames
    assert widget.frame_at(0) > first_visible
    wheel(widget, x, 240)
    assert widget.frame_at(0) == first_visible


# -- thumbnails --------------------------------------------------------------------------------
def test_thumbnails_are_lazy_and_cached(make_timeline):
    provider = Thumbnails()
    widget = make_timeline(1000, thumbnails=provider)
    widget.grab()
    first = list(provider.calls)
    assert 0 < len(first) < 50  # one per visible slot, not one per frame
    assert len(set(first)) == len(first)
    widget.grab()
    assert provider.calls == first  # the second repaint asks for nothing

    widget.zoom_in()
    widget.grab()
    new = provider.calls[len(first) :]
    assert new and len(set(new)) == len(new)
    widget.grab()
    assert len(provider.calls) == len(first) + len(new)


def test_unready_thumbnails_are_asked_again(make_timeline):
    provider = Thumbnails(ready=False)
    widget = make_timeline(100, thumbnails=provider)
    widget.grab()
    asked = len(provider.calls)
    assert asked > 0
    provider.ready = True  # the proxy has been built
    widget.grab()
    assert len(provider.calls) > asked
    settled = len(provider.calls)
    widget.grab()
    assert len(provider.calls) == settled


def test_thumbnail_cache_is_bounded(monkeypatch, make_timeline):
    monkeypatch.setattr(timeline_module, "THUMBNAIL_CACHE_SIZE", 3)
    provider = Thumbnails()
    widget = make_timeline(1000, thumbnails=provider)
    widget.grab()
    assert len(provider.calls) > 3
    before = len(provider.calls)
    widget.grab()  # the earliest slots were evicted, so they are asked for again
    assert len(provider.calls) > before


def test_failing_provider_does_not_break_painting(make_timeline):
    def broken(frame: int) -> np.ndarray:
        raise RuntimeError("decoder gone")

    widget = make_timeline(100, thumbnails=broken)
    assert not widget.grab().isNull()


# -- keys --------------------------------------------------------------------------------------
def test_click_key_selects_it_and_moves_playhead(qtbot, make_timeline):
    widget = make_timeline(100)
    widget.set_keys({10: "pending", 40: "rendered", 80: "stale"})
    with qtbot.waitSignal(widget.key_selected) as blocker:
        qtbot.mouseClick(widget, Qt.LeftButton, pos=marker_point(widget, 40))
    assert blocker.args == [40]
    assert widget.selected_key() == 40
    assert widget.playhead() == 40
    with qtbot.waitSignal(widget.key_selected) as blocker:
        qtbot.mouseClick(widget, Qt.LeftButton, pos=strip_point(widget, 60))
    assert blocker.args == [-1]
    assert widget.selected_key() is None
    assert widget.playhead() == 60


def drag_key(qtbot, widget: TimelineWidget, source: int, target: int) -> None:
    start = marker_point(widget, source)
    end = QPoint(round(widget.x_of(target)), start.y())
    qtbot.mousePress(widget, Qt.LeftButton, pos=start)
    middle = QPoint((start.x() + end.x()) // 2, start.y())
    qtbot.mouseMove(widget, middle)
    qtbot.mouseMove(widget, end)
    qtbot.mouseRelease(widget, Qt.LeftButton, pos=end)


def test_drag_key_requests_move_without_changing_keys(qtbot, make_timeline):
    widget = make_timeline(100)
    keys = {10: "pending", 40: "rendered", 80: "stale"}
    widget.set_keys(keys)
    moves = recorder(widget.key_move_requested)
    drag_key(qtbot, widget, 40, 60)
    assert moves == [(40, 60)]
    assert widget.keys() == keys  # the document owns the keys
    assert widget.playhead() == 40

    drag_key(qtbot, widget, 40, 80)  # onto an existing key
    qtbot.mouseClick(widget, Qt.LeftButton, pos=marker_point(widget, 10))  # a click, no drag
    assert moves == [(40, 60)]

    # The owner applies a move: the selection follows the key.
    drag_key(qtbot, widget, 10, 25)
    assert moves[-1] == (10, 25)
    assert widget.selected_key() == 10
    with qtbot.waitSignal(widget.key_selected) as blocker:
        widget.set_keys({25: "pending", 40: "rendered", 80: "stale"})
    assert blocker.args == [25]
    assert widget.selected_key() == 25


def test_key_requests(qtbot, make_timeline):
    widget = make_timeline(100)
    widget.set_keys({20: "pending", 70: "rendered"})
    toggles = recorder(widget.key_toggle_requested)
    removals = recorder(widget.key_remove_requested)
    widget.set_playhead(33)
    widget.request_toggle_key()
    assert toggles == [33]
    widget.request_remove_selected()  # no selection and no key at the playhead
    assert removals == []
    widget.set_playhead(70)
    widget.request_remove_selected()
    assert removals == [70]
    qtbot.mouseClick(widget, Qt.LeftButton, pos=marker_point(widget, 20))
    widget.set_playhead(70)
    widget.request_remove_selected()  # the selected key wins over the playhead
    assert removals == [70, 20]
    assert widget.keys() == {20: "pending", 70: "rendered"}
    widget.set_keys({70: "rendered"})  # the owner removed it
    assert widget.selected_key() is None


# -- painting ----------------------------------------------------------------------------------
def test_markers_and_segments_are_painted_in_state_colours(make_timeline):
    widget = make_timeline(100, thumbnails=Thumbnails())
    states = {10: "pending", 35: "rendering", 60: "rendered", 85: "stale"}
    widget.set_keys(states)
    widget.set_segments([(10, 35, "cached"), (35, 60, "rendering"), (60, 85, "pending")])
    widget.set_range(5, 90)
    widget.set_playhead(0)
    image = widget.grab().toImage()
    assert image.width() == WIDTH  # no device-pixel scaling to account for
    for frame, state in states.items():
        point = marker_point(widget, frame)
        assert close_to(image.pixelColor(point), KEY_COLOURS[state]), state
    assert len(set(KEY_COLOURS.values())) == len(KEY_COLOURS)

    def column_has(frame: int, colour: str) -> bool:
        x = round(widget.x_of(frame))
        return any(close_to(image.pixelColor(x, y), colour, 2) for y in range(image.height()))

    assert column_has(20, SEGMENT_COLOURS["cached"])
    assert column_has(45, SEGMENT_COLOURS["rendering"])
    assert not column_has(95, SEGMENT_COLOURS["cached"])  # nothing cached there


def test_empty_and_zoomed_paint(make_timeline):
    widget = make_timeline(0)
    assert not widget.grab().isNull()
    widget.request_toggle_key()  # no clip: nothing to do, no error
    widget.set_clip(100_000, 29.97, Thumbnails())
    assert not widget.grab().isNull()
    for _ in range(30):
        widget.zoom_in()
    assert widget.pixels_per_frame() == pytest.approx(timeline_module.MAX_PIXELS_PER_FRAME)
    assert not widget.grab().isNull()


def test_timecode():
    assert timecode(0, 25) == "0:00:00"
    assert timecode(26, 25) == "0:01:01"
    assert timecode(25 * 3661, 25) == "1:01:01:00"
    assert timecode(30, 29.97) == "0:01:00"
    assert timecode(26, 25, full=True) == "00:00:01:01"
    assert timecode(25 * 36610, 25, full=True) == "10:10:10:00"


@pytest.mark.parametrize("fps", [24, 25, 30000 / 1001, 12.5])
def test_every_timecode_shown_leads_back_to_its_frame(fps):
    count = int(fps * 3700)  # past an hour
    for frame in range(0, count, 7):
        for full in (False, True):
            assert parse_position(timecode(frame, fps, full), fps, count) == frame


def test_positions_are_frames_timecodes_or_offsets_within_the_clip():
    assert parse_position(" 120 ", 25, 1000) == 120
    assert parse_position("1:05", 25, 1000) == 30  # SS:FF
    assert parse_position("00:00:02:10", 25, 1000) == 60
    assert parse_position("+10", 25, 1000, current=50) == 60
    assert parse_position("-1:00", 25, 1000, current=50) == 25  # a second back
    assert parse_position("5000", 25, 1000) == 999  # clamped to the last frame
    assert parse_position("-100", 25, 1000, current=50) == 0
    for bad in ("", "abc", "1:2:3:4:5", "1.5", "+", "12:xx"):
        with pytest.raises(ValueError, match="not a frame number or a timecode"):
            parse_position(bad, 25, 1000)


# -- transport ---------------------------------------------------------------------------------
@pytest.fixture
def transport(qtbot):
    t = Transport()
    yield t
    t.stop()


def test_seek_step_home_end(transport):
    transport.set_clip(50, 25)
    seen = recorder(transport.frame_changed)
    transport.seek(-3)  # already at 0
    transport.seek(99)
    transport.seek(49)
    assert seen == [49]
    transport.step(-5)
    assert transport.frame() == 44
    transport.step(100)
    assert transport.frame() == 49
    transport.go_home()
    assert transport.frame() == 0
    transport.go_end()
    assert transport.frame() == 49


def test_shuttle_speeds(transport):
    transport.set_clip(100_000, 25)
    transport.seek(50_000)
    speeds = []
    for _ in range(5):
        transport.shuttle_forward()
        speeds.append(transport.speed())
    assert speeds == [1, 2, 4, 8, 8]
    transport.shuttle_backward()
    assert transport.speed() == -1
    for _ in range(4):
        transport.shuttle_backward()
    assert transport.speed() == -8
    transport.shuttle_forward()
    assert transport.speed() == 1
    transport.stop()
    assert not transport.is_playing() and transport.speed() == 0
    transport.toggle()
    assert transport.speed() == 1


def test_playback_advances_and_stops_at_the_end(qtbot, transport):
    transport.set_clip(40, 100)
    playing = recorder(transport.playing_changed)
    frames = recorder(transport.frame_changed)
    transport.play()
    assert transport.is_playing()
    qtbot.waitUntil(lambda: transport.frame() >= 10, timeout=5000)
    qtbot.waitUntil(lambda: not transport.is_playing(), timeout=5000)
    assert transport.frame() == 39
    assert playing == [True, False]
    assert frames == sorted(frames) and frames[-1] == 39

    transport.shuttle_backward()
    qtbot.waitUntil(lambda: not transport.is_playing(), timeout=5000)
    assert transport.frame() == 0


def test_toggle_stops_playback(qtbot, transport):
    transport.set_clip(10_000, 100)
    transport.toggle()
    qtbot.waitUntil(lambda: transport.frame() >= 3, timeout=5000)
    transport.toggle()
    assert not transport.is_playing()
    stopped_at = transport.frame()
    qtbot.wait(100)
    assert transport.frame() == stopped_at


def test_step_stops_playback(qtbot, transport):
    transport.set_clip(10_000, 100)
    transport.play()
    qtbot.waitUntil(lambda: transport.frame() >= 3, timeout=5000)
    transport.step(1)
    assert not transport.is_playing()


def test_seek_while_playing_continues_from_there(qtbot, transport):
    transport.set_clip(10_000, 100)
    transport.play()
    transport.seek(5000)
    qtbot.waitUntil(lambda: transport.frame() > 5003, timeout=5000)
    assert transport.is_playing() and transport.frame() < 9000


def test_slow_consumer_drops_frames_instead_of_falling_behind(qtbot, transport):
    transport.set_clip(60, 100)  # 0.6 s of clip
    frames = recorder(transport.frame_changed)
    transport.frame_changed.connect(lambda _: time.sleep(0.03))  # 3 frame periods per frame
    transport.play()
    qtbot.waitUntil(lambda: not transport.is_playing(), timeout=10_000)
    assert transport.frame() == 59
    steps = np.diff([0, *frames])
    assert steps.max() > 1  # frames were skipped to keep up with the clock
    assert len(frames) < 59


def test_play_from_the_end_restarts_and_set_clip_resets(qtbot, transport):
    transport.set_clip(20, 100)
    transport.go_end()
    transport.play()
    assert transport.frame() == 0 and transport.is_playing()
    transport.set_clip(30, 25)
    assert not transport.is_playing() and transport.frame() == 0


def test_shot_cuts_are_drawn_across_the_thumbnails(make_timeline):
    widget = make_timeline(frames=100, thumbnails=Thumbnails())
    widget.set_cuts([60, 30])
    assert widget.cuts() == [30, 60]
    image = widget.grab().toImage()
    middle = round(image.height() / 2)  # over the thumbnail strip

    def line_at(frame: int) -> bool:
        x = round(widget._left(frame))
        return any(close_to(image.pixelColor(x + dx, middle), CUT_COLOUR, 2) for dx in (-1, 0))

    assert line_at(30) and line_at(60) and not line_at(45)
    widget.set_clip(100, 25.0)  # another clip: its cuts are not known yet
    assert widget.cuts() == []


def test_the_risk_band_is_as_high_as_the_predicted_quality_is_poor(make_timeline):
    widget = make_timeline(frames=100)  # no thumbnails: the band shows on the placeholder
    quality = np.full(100, np.inf)
    quality[10:20] = 20.0  # poor: full height
    quality[50:60] = 27.0  # half way between clear (34 dB) and full (20 dB)
    quality[80:90] = 0.0  # no key near enough to tell: full height
    widget.set_quality(quality)
    levels = widget.risk_levels()
    assert levels[0] == 0 and levels[15] == 1 and levels[55] == 0.5 and levels[85] == 1
    with pytest.raises(ValueError, match="values for a clip of 100 frames"):
        widget.set_quality(np.zeros(99))
    image = widget.grab().toImage()
    strip = widget._lanes().strip

    def red_at(frame: int, height: float) -> bool:
        x = round(widget.x_of(frame))
        y = round(strip.bottom() - height * strip.height())
        colour = image.pixelColor(x, y)
        return colour.red() > colour.green() + 60

    assert red_at(15, 0.3) and red_at(85, 0.3)  # a full band reaches 40% of the strip
    assert red_at(55, 0.1) and not red_at(55, 0.3)  # half a band: 20%
    assert not red_at(35, 0.05)
    widget.set_quality(None)
    assert widget.risk_levels() is None
    widget.set_quality(quality)
    widget.set_clip(100, 25.0)  # another clip: nothing known yet
    assert widget.risk_levels() is None


def test_the_waveform_lane_shows_the_sound_on_a_db_scale(make_timeline):
    widget = make_timeline(frames=100)
    height_without = widget.minimumHeight()
    assert widget._lanes().wave.height() == 0 and widget.wave_heights() is None
    levels = np.zeros((100, 2), np.float32)
    levels[10:20] = (1.0, 0.5)  # full scale peaks
    levels[50:60] = (10 ** (-24 / 20), 10 ** (-36 / 20))  # half way down the 48 dB scale
    widget.set_levels(levels)
    heights = widget.wave_heights()
    np.testing.assert_allclose(heights[15], (1.0, 1 - 6.02 / 48), atol=1e-3)
    np.testing.assert_allclose(heights[55], (0.5, 0.25), atol=1e-6)
    assert heights[80].tolist() == [0, 0]  # silence
    assert widget.minimumHeight() > height_without
    with pytest.raises(ValueError, match="for 100 frames"):
        widget.set_levels(np.zeros((99, 2)))

    image = widget.grab().toImage()
    wave = widget._lanes().wave
    assert wave.height() > 0 and wave.top() >= widget._lanes().strip.bottom()

    def blue_at(frame: int, height: float) -> bool:
        colour = image.pixelColor(round(widget.x_of(frame)), round(wave.center().y() - height))
        return colour.blue() > colour.red() + 40

    half = wave.height() / 2
    assert blue_at(15, 0.9 * half) and blue_at(55, 0.4 * half) and not blue_at(55, 0.6 * half)
    assert not blue_at(80, 2)
    widget.set_clip(100, 25.0)  # another clip: its sound is not measured yet
    assert widget.wave_heights() is None and widget._lanes().wave.height() == 0
