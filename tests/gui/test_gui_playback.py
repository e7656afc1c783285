"""Playback: looping between the in and out points, and the clip's sound following the clock.

The sound goes to a recording sink (no sound card here); what it receives is compared with
the tone the test clip was written with.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import make_clip
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QMessageBox

from zvstudio.appsettings import AppSettings, load_settings
from zvstudio.gui.audio import (
    SCRUB_FADE_SECONDS,
    SCRUB_SECONDS,
    AudioPlayback,
    NoSoundOutput,
    faded,
    qt_sink,
)
from zvstudio.gui.mainwindow import MainWindow
from zvstudio.gui.transport import Transport
from zvstudio.media import probe
from zvstudio.media.audio import AudioReader
from zvstudio.media.synth import Tone, tone_samples

FPS = 25
RATE = 48000
AAC_TOLERANCE = 0.02


class Recording:
    """What a sink was sent since its last start."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def samples(self) -> np.ndarray:
        return np.frombuffer(bytes(self.data), np.int16).reshape(-1, 2).astype(np.float32) / 32768


class RecordingSink:
    """A sound card that keeps everything it is sent: each start begins a new recording. It
    starts playing `start_delay` seconds after `start` and then takes samples in real time
    from a buffer of `buffer_seconds`, as an output device does."""

    def __init__(self, start_delay: float = 0.0, buffer_seconds: float = 0.1) -> None:
        self.start_delay = start_delay
        self.capacity = round(buffer_seconds * RATE)
        self.recordings: list[Recording] = []
        self.started = False
        self.volume = 1.0

    def setVolume(self, volume: float) -> None:
        self.volume = volume

    def start(self) -> Recording:
        self.started = True
        self.started_at = time.monotonic()
        self.recordings.append(Recording())
        return self.recordings[-1]

    def taken(self) -> int:
        """The samples played so far (never more than were sent)."""
        playing_for = time.monotonic() - self.started_at - self.start_delay
        return min(max(0, round(playing_for * RATE)), len(self.recordings[-1].samples()))

    def processedUSecs(self) -> int:
        return self.taken() * 1_000_000 // RATE if self.started else 0

    def bytesFree(self) -> int:
        if not self.started:
            return 0
        return 4 * (self.capacity - (len(self.recordings[-1].samples()) - self.taken()))

    def stop(self) -> None:
        self.started = False


def recorded_from(
    recording: Recording, seconds: float | None = None, between: tuple[float, float] = (0, 0)
) -> None:
    """Assert that `recording` is the test tone from `seconds` on (or from some time in
    `between`, to the sample), for as long as the first feed."""
    got = recording.samples()[:2048, 0]
    assert len(got) > 0
    low, high = (seconds, seconds) if seconds is not None else between
    starts = range(round(low * RATE), round(high * RATE) + 1)
    errors = [np.abs(got - tone_samples(Tone(), s, len(got))[0]).max() for s in starts]
    assert min(errors) < AAC_TOLERANCE


@pytest.fixture(scope="module")
def tone_clip(tmp_path_factory):
    path, _, _ = make_clip(tmp_path_factory.mktemp("playback") / "tone.mp4", 100, audio=True)
    return path


@pytest.fixture
def transport(qtbot):
    t = Transport()
    yield t
    t.stop()


@pytest.fixture
def sound(qtbot, transport, tone_clip):
    sink = RecordingSink()
    playback = AudioPlayback(transport, lambda rate, channels: sink)
    playback.set_clip(str(tone_clip), probe(tone_clip).index)
    transport.set_clip(100, FPS)
    return playback, sink


def test_sound_starts_at_the_playhead_and_follows_every_jump(qtbot, transport, sound):
    playback, sink = sound
    transport.seek(20)
    assert not sink.recordings  # stopped: silent
    transport.play()
    assert playback.is_playing()
    recorded_from(sink.recordings[-1], 20 / FPS)
    # More than the first fill of the output's buffer: the timer keeps feeding it.
    qtbot.waitUntil(lambda: len(sink.recordings[-1].samples()) > sink.capacity + 960, timeout=5000)

    transport.seek(70)  # a jump while playing: the sound starts again there
    assert len(sink.recordings) == 2
    qtbot.wait(30)
    recorded_from(sink.recordings[-1], 70 / FPS)

    transport.shuttle_forward()  # 2x: moments from the clock (the next test)
    assert len(sink.recordings) == 3 and playback.is_playing()
    transport.shuttle_backward()
    assert transport.speed() == -1.0 and len(sink.recordings) == 4
    clocks = []
    transport.clock_changed.connect(lambda frame, speed: clocks.append(frame))
    transport.shuttle_forward()  # 1x forwards again: the sound resumes where the clock is
    assert transport.speed() == 1.0 and sink.started
    qtbot.wait(30)
    recorded_from(sink.recordings[-1], clocks[-1] / FPS)
    transport.stop()
    assert not sink.started


def test_sound_catches_up_with_an_output_that_starts_late(qtbot, transport, tone_clip):
    sink = RecordingSink(start_delay=0.3)
    playback = AudioPlayback(transport, lambda rate, channels: sink)
    playback.set_clip(str(tone_clip), probe(tone_clip).index)
    transport.set_clip(100, FPS)
    transport.seek(20)
    transport.play()
    qtbot.wait(600)
    before = transport.position() / FPS
    playing = sink.taken()  # what the output plays now...
    after = transport.position() / FPS
    heard = Recording()
    heard.data = sink.recordings[-1].data[4 * playing :]
    # ...is the sound of the frame showing (within the output's 10 ms steps here), not of
    # the frame that showed 0.3 s ago when the sound started.
    recorded_from(heard, between=(before - 0.02, after + 0.02))
    transport.stop()


SCRUB_LENGTH = round(SCRUB_SECONDS * RATE)


def scrubbed_at(recording: Recording, seconds: float, nth: int = 0) -> None:
    """Assert that the `nth` scrub in `recording` is the test tone at `seconds`:
    `SCRUB_SECONDS` of it, faded in and out."""
    got = recording.samples()[nth * SCRUB_LENGTH : (nth + 1) * SCRUB_LENGTH, 0]
    ramp = round(SCRUB_FADE_SECONDS * RATE)
    assert len(got) == SCRUB_LENGTH
    tone = tone_samples(Tone(), round(seconds * RATE), len(got))[0]
    assert np.abs(got - tone)[ramp:-ramp].max() < AAC_TOLERANCE
    assert np.abs(got[:4]).max() < 0.01 and np.abs(got[-4:]).max() < 0.01  # no click


def test_scrubbed_frames_sound_for_a_moment_on_a_running_output(qtbot, transport, sound):
    playback, sink = sound
    playback.scrub(50)
    assert len(sink.recordings) == 1
    scrubbed_at(sink.recordings[-1], 50 / FPS)
    playback.scrub(12)  # the output still holds the last frame's moment: skipped, no lag
    assert len(sink.recordings[-1].samples()) == SCRUB_LENGTH
    qtbot.waitUntil(lambda: sink.bytesFree() >= 4 * SCRUB_LENGTH, timeout=2000)
    playback.scrub(12)  # the same output (no new start) plays it next
    assert len(sink.recordings) == 1 and sink.started
    scrubbed_at(sink.recordings[-1], 12 / FPS, nth=1)
    qtbot.waitUntil(lambda: sink.bytesFree() >= 4 * SCRUB_LENGTH, timeout=2000)
    playback.set_scrubbing(False)
    playback.scrub(30)
    playback.set_scrubbing(True)
    playback.set_muted(True)
    playback.scrub(30)
    playback.set_muted(False)
    assert len(sink.recordings[-1].samples()) == 2 * SCRUB_LENGTH  # off, then muted: silent
    transport.play()  # while playing, the clock's sound plays and scrubbing keeps out of it
    playing = sink.recordings[-1]
    sent = len(playing.samples())
    playback.scrub(80)
    assert len(playing.samples()) == sent
    recorded_from(playing, 0.0)
    transport.stop()


@pytest.mark.parametrize("presses", [2, -1, -2])
def test_shuttling_plays_moments_from_where_the_clock_is(
    qtbot, transport, sound, presses, monkeypatch
):
    """J/L faster than 1x or backwards: moments of sound one after another, each read at the
    clock when the output had room, so they follow the clock in its direction."""
    playback, sink = sound
    reads = []  # (where the clock was, where the sound was read), at each read
    start_reading = AudioReader.start

    def spy(reader, seconds):
        reads.append((transport.position() / FPS, seconds))
        start_reading(reader, seconds)

    monkeypatch.setattr(AudioReader, "start", spy)
    transport.seek(10 if presses > 0 else 90)
    press = transport.shuttle_forward if presses > 0 else transport.shuttle_backward
    for _ in range(abs(presses)):
        reads.clear()  # (from 1x on the way to 2x)
        press()
    speed = transport.speed()
    assert speed == (2.0 if presses == 2 else -float(abs(presses))) and playback.is_playing()
    qtbot.waitUntil(lambda: len(sink.recordings[-1].samples()) >= 4 * SCRUB_LENGTH, timeout=5000)
    transport.stop()
    assert not sink.started
    recording = sink.recordings[-1]
    assert len(reads) == len(recording.samples()) // SCRUB_LENGTH >= 4
    for n, (clock, seconds) in enumerate(reads[:4]):
        # Read where the clock was just before (the clip's pts start at 0): the clock has
        # moved on in its direction since, by a few milliseconds of real time.
        assert -1e-3 <= (clock - seconds) / speed <= 0.05, reads
        moment = Recording()
        moment.data = recording.data[4 * n * SCRUB_LENGTH : 4 * (n + 1) * SCRUB_LENGTH]
        scrubbed_at(moment, seconds)  # that moment of the sound, faded in and out
        if n:  # a moment of real time apart, so the clock moved about `speed` moments on
            step = (seconds - reads[n - 1][1]) / speed
            assert SCRUB_SECONDS * 0.5 < step < SCRUB_SECONDS * 5, reads


def test_fading_ramps_the_ends_and_keeps_the_middle():
    samples = np.full((100, 2), 1000, np.int16)
    out = faded(samples, 10)
    assert out.dtype == np.int16 and out.shape == samples.shape
    assert list(out[:10, 0]) == [round(1000 * i / 10) for i in range(10)]
    assert list(out[-10:, 1]) == [round(1000 * i / 10) for i in range(10)][::-1]
    assert np.all(out[10:90] == 1000)
    assert np.array_equal(faded(samples[:4], 10)[:, 0], [0, 500, 500, 0])  # short: half each


def test_mute_and_a_clip_without_sound(qtbot, transport, sound, tmp_path):
    playback, sink = sound
    playback.set_muted(True)
    transport.play()
    assert not sink.recordings
    before = transport.position()
    playback.set_muted(False)  # unmuting while playing starts the sound at the clock
    after = transport.position()
    assert sink.started
    qtbot.wait(20)
    # The clock moved on while unmuting: the sound starts somewhere in between.
    recorded_from(sink.recordings[-1], between=(before / FPS, after / FPS))
    transport.stop()

    silent, _, _ = make_clip(tmp_path / "silent.mp4", 10)
    playback.set_clip(str(silent), probe(silent).index)
    transport.set_clip(10, FPS)
    transport.play()
    assert len(sink.recordings) == 1 and not playback.is_playing()


def test_without_an_output_device_playback_is_silent_and_says_why_once(qtbot, transport, tone_clip):
    made = []

    def no_output(rate, channels):
        made.append(rate)
        raise NoSoundOutput("no sound output device was found")

    playback = AudioPlayback(transport, no_output)
    said = []
    playback.failed.connect(said.append)
    playback.set_clip(str(tone_clip), probe(tone_clip).index)
    transport.set_clip(100, FPS)
    for _ in range(3):
        transport.play()
        transport.stop()
    assert made == [48000]  # one attempt, not one per play
    assert said == ["no sound output device was found"]
    assert not playback.is_playing()


def test_looping_repeats_the_in_to_out_range_and_restarts_the_sound(qtbot, transport, sound):
    _, sink = sound
    transport.set_bounds(30, 34)
    transport.set_loop(True)
    clocks = []
    transport.clock_changed.connect(lambda frame, speed: clocks.append((frame, speed)))
    transport.seek(80)
    transport.play()  # outside the range: starts at the in point
    assert transport.frame() == 30
    frames = set()
    transport.frame_changed.connect(frames.add)
    qtbot.waitUntil(lambda: clocks.count((30.0, 1.0)) >= 3, timeout=5000)
    assert frames == {30, 31, 32, 33, 34}
    recorded_from(sink.recordings[-1], 30 / FPS)
    assert len(sink.recordings) >= 3  # the sound restarted with each pass

    transport.shuttle_backward()  # backwards, it wraps from the in point to the out point
    qtbot.waitUntil(lambda: (34.0, -1.0) in clocks, timeout=5000)
    transport.stop()
    assert clocks[-1][1] == 0.0

    transport.set_loop(False)  # not looping: playback runs on to the end of the clip
    transport.seek(97)
    transport.play()
    qtbot.waitUntil(lambda: not transport.is_playing(), timeout=5000)
    assert transport.frame() == 99


@pytest.fixture
def window_and_sink(qtbot):
    sink = RecordingSink()
    window = MainWindow(settings=AppSettings(), audio_sink=lambda rate, channels: sink)
    window.ask = lambda *args: QMessageBox.Discard
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    window.activateWindow()
    yield window, sink
    window.shutdown()


def test_the_editor_loops_and_mutes_from_its_menu_and_remembers(qtbot, window_and_sink, tone_clip):
    window, sink = window_and_sink
    window.document.import_clip(tone_clip)
    window.transport.seek(40)
    qtbot.keyClick(window, Qt.Key_I)
    window.transport.seek(44)
    qtbot.keyClick(window, Qt.Key_O)
    qtbot.keyClick(window, Qt.Key_L, Qt.ControlModifier)
    assert window.loop_action.isChecked() and load_settings().loop_playback
    window.transport.seek(10)
    qtbot.keyClick(window, Qt.Key_Space)
    assert window.transport.frame() == 40  # looping starts at the in point
    qtbot.wait(50)
    recorded_from(sink.recordings[-1], 40 / FPS)
    qtbot.keyClick(window, Qt.Key_M, Qt.ShiftModifier)
    assert window.mute_action.isChecked() and load_settings().mute
    assert not sink.started
    qtbot.keyClick(window, Qt.Key_Space)
    assert not window.transport.is_playing()


def test_the_editor_scrubs_the_sound_and_the_choice_is_remembered(
    qtbot, window_and_sink, tone_clip
):
    window, sink = window_and_sink
    window.document.import_clip(tone_clip)
    assert window.scrub_action.isChecked()  # on by default, as in video editors
    window.transport.seek(20)
    assert not sink.recordings  # moving the playhead from code is silent
    window.timeline.setFocus()
    qtbot.keyClick(window.timeline, Qt.Key_Right)
    assert window.transport.frame() == 21
    scrubbed_at(sink.recordings[-1], 21 / FPS)
    qtbot.waitUntil(lambda: sink.bytesFree() >= 4 * SCRUB_LENGTH, timeout=2000)
    timeline = window.timeline
    qtbot.mouseClick(timeline, Qt.LeftButton, pos=QPoint(round(timeline.x_of(60)), 8))
    assert window.transport.frame() == 60
    scrubbed_at(sink.recordings[-1], 60 / FPS, nth=1)
    qtbot.waitUntil(lambda: sink.bytesFree() >= 4 * SCRUB_LENGTH, timeout=2000)
    qtbot.keyClick(window.timeline, Qt.Key_S, Qt.ShiftModifier)
    assert not window.scrub_action.isChecked() and not load_settings().scrub_sound
    qtbot.keyClick(window.timeline, Qt.Key_Left)
    assert window.transport.frame() == 59
    assert len(sink.recordings[-1].samples()) == 2 * SCRUB_LENGTH
    again = MainWindow(settings=load_settings(), audio_sink=lambda rate, channels: sink)
    assert not again.scrub_action.isChecked() and not again.audio.is_scrubbing()
    again.shutdown()


def test_the_timeline_shows_the_clips_sound(qtbot, window_and_sink, tone_clip, tmp_path):
    window, _ = window_and_sink
    window.document.import_clip(tone_clip)
    qtbot.waitUntil(lambda: window.timeline.wave_heights() is not None, timeout=20_000)
    heights = window.timeline.wave_heights()
    assert heights.shape == (100, 2)
    # The test tone peaks at 0.16-0.25 of full scale: about 12-16 dB down, 2/3 of the lane.
    assert np.all((heights[:, 0] > 0.6) & (heights[:, 0] < 0.8))
    silent, _, _ = make_clip(tmp_path / "silent.mp4", 10)
    window.document.import_clip(silent)
    qtbot.wait(200)
    assert window.timeline.wave_heights() is None  # no sound, no lane


def test_the_transport_bar_plays_loops_mutes_and_shows_the_timecode(
    qtbot, window_and_sink, tone_clip
):
    window, sink = window_and_sink
    bar = window.transport_bar
    window.document.import_clip(tone_clip)
    assert bar.timecode_label.text() == "00:00:00:00 / 00:00:03:24"  # 100 frames at 25 fps
    window.transport.seek(30)
    assert bar.timecode_label.text() == "00:00:01:05 / 00:00:03:24"

    def button(action):
        return bar.widgetForAction(action)

    def picture(action):
        return action.icon().pixmap(16).toImage()

    play_icon = picture(window.play_action)
    qtbot.mouseClick(button(window.play_action), Qt.LeftButton)
    assert window.transport.is_playing() and sink.started
    assert picture(window.play_action) != play_icon  # shows pause while playing
    qtbot.mouseClick(button(window.play_action), Qt.LeftButton)
    assert not window.transport.is_playing()
    assert picture(window.play_action) == play_icon
    qtbot.mouseClick(button(window.loop_action), Qt.LeftButton)
    assert window.transport.loops()
    sound_icon = picture(window.mute_action)
    qtbot.mouseClick(button(window.mute_action), Qt.LeftButton)
    assert window.audio.is_muted() and picture(window.mute_action) != sound_icon
    qtbot.mouseClick(button(window.end_action), Qt.LeftButton)
    assert window.transport.frame() == 99


def test_the_loop_icon_is_drawn_in_one_colour_like_the_media_icons(qtbot):
    from PySide6.QtGui import QColor

    from zvstudio.gui.transport_bar import loop_icon

    for side in (16, 32):
        image = loop_icon(QColor(200, 30, 40)).pixmap(side).toImage()
        assert (image.width(), image.height()) == (side, side)
        pixels = [image.pixelColor(x, y) for x in range(side) for y in range(side)]
        inked = [c for c in pixels if c.alpha() > 200]
        assert side * 2 < len(inked) < side * side // 2  # a ring, not a blot or nothing
        # (antialiased edges round their colour a little)
        assert all(
            abs(c.red() - 200) + abs(c.green() - 30) + abs(c.blue() - 40) <= 6 for c in inked
        )


def test_the_qt_output_is_made_or_refused_with_a_reason(qtbot):
    """Whatever this machine has: a working QAudioSink, or NoSoundOutput saying why."""
    try:
        sink = qt_sink(RATE, 2)
    except NoSoundOutput as exc:
        assert str(exc)
        return
    output = sink.start()
    assert output is not None and sink.bytesFree() > 0
    assert output.write(bytes(4096)) == 4096
    sink.stop()


def test_the_volume_slider_sets_the_outputs_volume_and_is_remembered(
    qtbot, window_and_sink, tone_clip
):
    window, sink = window_and_sink
    window.document.import_clip(tone_clip)
    slider = window.transport_bar.volume_slider
    assert slider.value() == 100
    slider.setValue(40)  # from the keyboard or the wheel: taken and kept at once
    window.transport.play()  # the output is made now, at the chosen volume
    assert sink.volume == pytest.approx(0.4) and load_settings().volume == pytest.approx(0.4)
    slider.setSliderDown(True)  # a drag changes the sound as it goes, kept on release
    slider.setValue(70)
    assert sink.volume == pytest.approx(0.7) and load_settings().volume == pytest.approx(0.4)
    slider.setSliderDown(False)  # the release
    assert load_settings().volume == pytest.approx(0.7)
    window.transport.stop()
    again = MainWindow(settings=load_settings(), audio_sink=lambda rate, channels: sink)
    assert again.transport_bar.volume_slider.value() == 70
    assert again.audio.volume() == pytest.approx(0.7)
    again.shutdown()
