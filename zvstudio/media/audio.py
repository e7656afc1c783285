"""Reading a clip's sound for playback: PCM from any time, in the format an output device takes.

The editor plays the clip's first audio stream while the transport plays forwards at 1x. It
starts at the time of the frame showing, which can be anywhere in the clip, so this seeks the
demuxer, decodes, resamples (PyAV's swresample) and drops the samples before that time. Times
are the container's own (a frame's pts times its time base), so sound and picture line up
whatever time each stream starts at.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import av
import numpy as np

from zvstudio.errors import MediaError
from zvstudio.media.probe import open_input

PLAYBACK_RATE = 48000
PLAYBACK_CHANNELS = 2
# Decoding starts this long before the asked time and drops it: lapped-transform codecs (AAC,
# MP3, Opus) rebuild each frame from the one before, so the first frame after a seek is wrong.
PREROLL_SECONDS = 0.25


class AudioReader:
    """Interleaved signed 16-bit PCM of a file's first audio stream, from any time on."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        rate: int = PLAYBACK_RATE,
        channels: int = PLAYBACK_CHANNELS,
    ) -> None:
        self.path = str(path)
        self.rate = int(rate)
        self.channels = int(channels)
        self._container = open_input(self.path)
        audio = self._container.streams.audio
        self._stream = audio[0] if audio else None
        self._chunks: Iterator[np.ndarray] = iter(())
        self._buffer = np.zeros((0, self.channels), np.int16)

    @property
    def has_audio(self) -> bool:
        return self._stream is not None

    def start(self, seconds: float) -> None:
        """Make `read` return the sound from `seconds` (container time) on."""
        if self._stream is None:
            return
        self._buffer = np.zeros((0, self.channels), np.int16)
        stream = self._stream
        start = float((stream.start_time or 0) * stream.time_base)
        if seconds - PREROLL_SECONDS <= start:
            # No room for a preroll: decode from the top, as a fresh decoder does it right.
            self._container.close()
            self._container = open_input(self.path)
            self._stream = self._container.streams.audio[0]
        else:
            target = int((seconds - PREROLL_SECONDS) / stream.time_base)
            try:
                self._container.seek(target, stream=stream, backward=True)
            except av.error.FFmpegError as exc:
                raise MediaError(f"cannot seek in the audio of {self.path}: {exc}") from exc
        self._chunks = self._samples_from(float(seconds))

    def read(self, samples: int) -> np.ndarray:
        """Up to `samples` frames of sound, shape (n, channels); fewer only at the end."""
        while len(self._buffer) < samples:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer = np.concatenate([self._buffer, chunk])
        taken, self._buffer = self._buffer[:samples], self._buffer[samples:]
        return taken

    def close(self) -> None:
        self._chunks = iter(())
        self._container.close()

    def _samples_from(self, seconds: float) -> Iterator[np.ndarray]:
        """Resampled chunks starting exactly at `seconds`: silence before the stream starts."""
        resampler = av.AudioResampler(format="s16", layout=_layout(self.channels), rate=self.rate)
        skip: int | None = None  # samples to drop before `seconds`, known at the first frame
        for frame in self._decoded():
            if skip is None:
                first = float(frame.pts * frame.time_base) if frame.pts is not None else seconds
                skip = round((seconds - first) * self.rate)
                if skip < 0:  # the sound starts after `seconds`
                    yield np.zeros((-skip, self.channels), np.int16)
                    skip = 0
            frame.pts = None  # the resampler counts samples itself
            for chunk in resampler.resample(frame):
                samples = chunk.to_ndarray().reshape(-1, self.channels)
                drop = min(skip, len(samples))
                skip -= drop
                if drop < len(samples):
                    yield samples[drop:]
        for chunk in resampler.resample(None):  # what the resampler still holds
            yield chunk.to_ndarray().reshape(-1, self.channels)

    def _decoded(self) -> Iterator[av.AudioFrame]:
        try:
            yield from self._container.decode(self._stream)
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot decode the audio of {self.path}: {exc}") from exc


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
