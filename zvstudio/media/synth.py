"""Writing synthetic clips (the demo clip, test clips) straight from arrays with PyAV.

Unlike `VideoWriter`, which re-times rendered frames after a source clip, this controls every
property of the stream: exact timestamps (constant or variable rate), GOP and B-frame
structure, a display rotation and a generated audio tone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np


@dataclass(frozen=True)
class Tone:
    """A sine tone with a gentle tremolo, as the clip's audio track; with `beats_per_second`,
    struck on each beat instead (loud at t = k / beats_per_second, then dying away), so that
    the waveform and the sound show where the beats fall."""

    frequency: float = 440.0
    sample_rate: int = 48000
    volume: float = 0.25
    codec: str = "aac"
    layout: str = "stereo"
    beats_per_second: float = 0.0


BEAT_DECAY_SECONDS = 0.08  # a struck beat's loudness falls by e in this time...
BEAT_FLOOR = 0.1  # ...down to this fraction of the volume


def tone_samples(tone: Tone, first: int, count: int) -> np.ndarray:
    """Samples first..first+count-1 of `tone`, planar float32, one row per channel."""
    t = (first + np.arange(count)) / tone.sample_rate
    if tone.beats_per_second > 0:
        since_beat = np.mod(t, 1.0 / tone.beats_per_second)
        envelope = BEAT_FLOOR + (1 - BEAT_FLOOR) * np.exp(-since_beat / BEAT_DECAY_SECONDS)
    else:
        envelope = 0.8 + 0.2 * np.sin(3 * t)
    wave = tone.volume * np.sin(2 * np.pi * tone.frequency * t) * envelope
    channels = av.AudioLayout(tone.layout).nb_channels
    return np.repeat(wave.astype(np.float32)[None, :], channels, axis=0)


def write_clip(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    *,
    fps: Fraction | int = 25,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    tone: Tone | None = None,
) -> None:
    """Encode RGB `frames` to `path`; frame i is shown at `pts[i]` (default: i / fps).

    `rotation` is stored as display metadata (degrees counter-clockwise), the pixels unchanged.
    """
    fps = Fraction(fps)
    time_base = time_base or 1 / fps
    with av.open(str(path), "w") as container:
        video = None
        audio = (
            container.add_stream(tone.codec, rate=tone.sample_rate, layout=tone.layout)
            if tone
            else None
        )
        samples_written = 0
        last_seconds = 0.0
        for number, image in enumerate(frames):
            if video is None:
                video = _video_stream(container, codec, fps, time_base, options, pix_fmt, image)
                if rotation:
                    video.set_display_rotation(rotation)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = int(pts[number]) if pts is not None else round(number / fps / time_base)
            frame.time_base = time_base
            last_seconds = float(frame.pts * time_base) + float(1 / fps)
            for packet in video.encode(frame):
                container.mux(packet)
            if audio is not None:
                samples_written = _write_tone(container, audio, tone, samples_written, last_seconds)
        if video is None:
            raise ValueError("write_clip needs at least one frame")
        for packet in video.encode(None):
            container.mux(packet)
        if audio is not None:
            _write_tone(container, audio, tone, samples_written, last_seconds, final=True)
            for packet in audio.encode(None):
                container.mux(packet)


def _video_stream(container, codec, fps, time_base, options, pix_fmt, image):
    stream = container.add_stream(codec, rate=fps, options=options or {})
    stream.height, stream.width = image.shape[:2]
    stream.pix_fmt = pix_fmt
    stream.time_base = time_base
    stream.codec_context.time_base = time_base
    return stream


def _write_tone(
    container, stream, tone: Tone, written: int, until_seconds: float, final: bool = False
) -> int:
    """Encode tone samples up to `until_seconds`; returns the new sample count.

    Encoders take whole frames only, except the very last one, so a partial frame is written
    only when `final`.
    """
    frame_size = stream.codec_context.frame_size or 1024
    target = round(until_seconds * tone.sample_rate)
    while written + (1 if final else frame_size) <= target:
        count = min(frame_size, target - written)
        frame = av.AudioFrame.from_ndarray(
            tone_samples(tone, written, count), format="fltp", layout=tone.layout
        )
        frame.sample_rate = tone.sample_rate
        frame.pts = written
        frame.time_base = Fraction(1, tone.sample_rate)
        for packet in stream.encode(frame):
            container.mux(packet)
        written += count
    return written
