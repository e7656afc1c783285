"""A clip's sound: PCM from any time for playback, and its level at every frame."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import make_clip

from zvstudio.engine import shots
from zvstudio.engine.shots import clip_levels
from zvstudio.errors import MediaError
from zvstudio.media import probe
from zvstudio.media.audio import LEVELS_RATE, AudioReader, frame_levels
from zvstudio.media.synth import Tone, tone_samples, write_clip

AAC_TOLERANCE = 0.02  # the tone's amplitude is 0.25; AAC at its default rate stays well within


def as_float(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) / 32768


@pytest.fixture(scope="module")
def tone_clip(tmp_path_factory):
    path, _, _ = make_clip(tmp_path_factory.mktemp("audio") / "tone.mp4", 50, audio=True)
    return path


def test_sound_starts_exactly_at_the_asked_time_wherever_the_last_read_ended(tone_clip):
    reader = AudioReader(tone_clip)
    assert reader.has_audio and (reader.rate, reader.channels) == (48000, 2)
    # Out of order, near the start (no room to decode ahead) and after the last read.
    for seconds in (0.5, 0.0, 0.1, 0.26, 1.23, 1.9, 0.04):
        reader.start(seconds)
        got = as_float(reader.read(4800))
        want = tone_samples(Tone(), round(seconds * 48000), len(got))[0]
        assert len(got) == 4800
        np.testing.assert_allclose(got, np.stack([want, want], axis=1), atol=AAC_TOLERANCE)
    reader.close()


def test_reads_continue_seamlessly_and_end_with_the_sound(tone_clip):
    reader = AudioReader(tone_clip)
    reader.start(1.5)
    parts = [reader.read(n) for n in (7, 1000, 2048, 3)]
    joined = as_float(np.concatenate(parts))
    want = tone_samples(Tone(), 72000, len(joined))[0]
    np.testing.assert_allclose(joined[:, 0], want, atol=AAC_TOLERANCE)
    rest = reader.read(10**6)
    # The tone lasts as long as the video (50 frames at 25 fps), 2 s, plus the padding of
    # AAC's last 1024-sample frame.
    assert 0 <= 72000 + len(joined) + len(rest) - 2 * 48000 < 1024
    assert len(reader.read(100)) == 0
    reader.start(5.0)  # after the end: nothing, no error
    assert len(reader.read(100)) == 0
    reader.close()


def test_other_rates_and_layouts_are_resampled_for_the_device(tmp_path):
    tone = Tone(frequency=1000.0, sample_rate=44100, layout="mono")
    path = tmp_path / "mono.mp4"
    write_clip(path, (np.zeros((32, 32, 3), np.uint8) for _ in range(25)), fps=25, tone=tone)
    reader = AudioReader(path, rate=48000, channels=2)
    reader.start(0.3)
    got = as_float(reader.read(9600))
    assert got.shape == (9600, 2)
    np.testing.assert_array_equal(got[:, 0], got[:, 1])
    spectrum = np.abs(np.fft.rfft(got[:, 0]))
    assert np.fft.rfftfreq(9600, 1 / 48000)[spectrum.argmax()] == pytest.approx(1000, abs=5)
    assert np.sqrt(np.mean(got[:, 0] ** 2)) == pytest.approx(0.25 * 0.8 / np.sqrt(2), rel=0.2)


def test_a_clip_without_sound_and_a_damaged_file(tmp_path):
    path, _, _ = make_clip(tmp_path / "silent.mp4", 10)
    reader = AudioReader(path)
    assert not reader.has_audio
    reader.start(0.2)
    assert len(reader.read(100)) == 0
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(MediaError, match="cannot read"):
        AudioReader(broken)


def write_bursts(path: Path, frame_times: list[float], loud: set[int], end: float) -> None:
    """A clip whose sound is a ±0.5 square wave while the frames in `loud` show and silence
    otherwise; frame i shows from frame_times[i] (variable rate), the last until `end`."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        video.time_base = video.codec_context.time_base = Fraction(1, 1000)
        audio = container.add_stream("pcm_s16le", rate=LEVELS_RATE, layout="mono")
        edges = [*frame_times, end]
        wave = np.zeros(round(end * LEVELS_RATE), np.int16)
        for frame in loud:
            first, last = (round(edges[i] * LEVELS_RATE) for i in (frame, frame + 1))
            wave[first:last] = np.where(np.arange(first, last) % 8 < 4, 16384, -16384)
        for seconds in frame_times:
            image = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            image.pts, image.time_base = round(seconds * 1000), video.time_base
            container.mux(video.encode(image))
        container.mux(video.encode(None))
        for start in range(0, len(wave), 1600):
            chunk = av.AudioFrame.from_ndarray(wave[None, start : start + 1600], "s16", "mono")
            chunk.sample_rate, chunk.pts = LEVELS_RATE, start
            container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))


def test_each_frame_gets_the_level_of_the_sound_while_it_shows(tmp_path):
    # Frames of uneven length: 40, 60, 20, 80 ms ...; loud while frames 2, 3 and 7 show.
    times = list(np.cumsum([0, 0.04, 0.06, 0.02, 0.08, 0.04, 0.04, 0.04, 0.06, 0.04]))
    path = tmp_path / "bursts.mov"
    write_bursts(path, times, {2, 3, 7}, end=times[-1] + 0.04)
    info = probe(path)
    assert info.frame_count == len(times)
    reports = []
    levels = frame_levels(path, info.index, reports.append)
    assert levels.shape == (len(times), 2)
    loud = np.zeros(len(times), bool)
    loud[[2, 3, 7]] = True
    np.testing.assert_allclose(levels[loud], 0.5, atol=1e-3)  # peak and RMS of a square wave
    np.testing.assert_array_equal(levels[~loud], 0.0)
    assert reports[-1].done == reports[-1].total == len(times)


def test_levels_are_measured_once_per_clip(tmp_path, tone_clip, monkeypatch):
    info = probe(tone_clip)
    levels = clip_levels(tone_clip, "tone-id", info)
    assert levels.shape == (50, 2)
    envelope = 0.25 * (0.8 + 0.2 * np.sin(3 * np.arange(50) / 25))
    np.testing.assert_allclose(levels[:, 1], envelope / np.sqrt(2), rtol=0.05)  # RMS of a sine

    def measured_again(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(shots, "frame_levels", measured_again)
    np.testing.assert_array_equal(clip_levels(tone_clip, "tone-id", info), levels)
    silent, _, _ = make_clip(tmp_path / "silent.mp4", 10)
    assert clip_levels(silent, "silent-id", probe(silent)) is None


def test_a_beaten_tone_is_loud_on_each_beat_and_dies_away():
    tone = Tone(beats_per_second=2.0, volume=0.5)
    wave = tone_samples(tone, 0, 48000)[0]  # one second: beats at 0 and 0.5 s

    def peak(start: float, stop: float) -> float:
        return float(np.abs(wave[round(start * 48000) : round(stop * 48000)]).max())

    assert peak(0.0, 0.01) > 0.45 and peak(0.5, 0.51) > 0.45  # struck
    assert peak(0.40, 0.49) < 0.15 and peak(0.9, 0.99) < 0.15  # died away before the next


def test_the_demo_clips_sound_is_struck_when_its_ball_lands(tmp_path):
    from zvstudio.demo import write_demo_clip

    path = tmp_path / "demo.mp4"
    demo = write_demo_clip(path)
    info = probe(path)
    peaks = frame_levels(path, info.index)[:, 0]
    bounce = demo.scene["ball"]["bounces_per_second"]
    # The frame showing while the ball lands (at k / bounce seconds) holds its strike.
    landings = [int(k / bounce * info.fps) for k in range(4)]
    loud = [i for i in range(1, len(peaks) - 1) if peaks[i] >= max(peaks[i - 1], peaks[i + 1])]
    loud = [i for i in loud if peaks[i] > 2 * np.median(peaks)]
    assert landings[1:] == loud  # frame 0's strike has no frame before it to compare
    assert peaks[0] > 2 * np.median(peaks)
