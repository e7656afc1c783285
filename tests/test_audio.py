"""Sound for playback: PCM from any time of a clip, resampled for the output device."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_clip

from zvstudio.errors import MediaError
from zvstudio.media.audio import AudioReader
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
