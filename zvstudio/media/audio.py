"""A clip's sound for the editor: PCM from any time for playback, and its loudness per frame.

The editor plays the clip's first audio stream while the transport plays forwards at 1x. It
starts at the time of the frame showing, which can be anywhere in the clip, so this seeks the
demuxer, decodes, resamples (PyAV's swresample) and drops the samples before that time. Times
are the container's own (a frame's pts times its time base), so sound and picture line up
whatever time each stream starts at.

`frame_levels` gives each video frame the peak and RMS level of the sound that plays while
it shows, for the timeline's waveform (artists put keys on beats and accents).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import av
import numpy as np

from zvstudio.errors import MediaError
from zvstudio.media.probe import FrameIndex, open_input
from zvstudio.media.sequence import clip_audio_file
from zvstudio.progress import CancelToken, Progress, ProgressCallback, ignore_progress

PLAYBACK_RATE = 48000
PLAYBACK_CHANNELS = 2
# Decoding starts this long before the asked time and drops it: lapped-transform codecs (AAC,
# MP3, Opus) rebuild each frame from the one before, so the first frame after a seek is wrong.
PREROLL_SECONDS = 0.25
LEVELS_RATE = 16000  # mono, enough to see loudness by the frame


class AudioReader:
    """Interleaved signed 16-bit PCM of a file's first audio stream, from any time on."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        rate: int = PLAYBACK_RATE,
        channels: int = PLAYBACK_CHANNELS,
    ) -> None:
        self.rate = int(rate)
        self.channels = int(channels)
        sound = clip_audio_file(path)  # an image sequence's sound is a file beside it
        self.path = sound or str(path)
        self._container = open_input(sound) if sound is not None else None
        audio = self._container.streams.audio if self._container is not None else ()
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
        if self._container is not None:
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


def frame_levels(
    path: str | os.PathLike[str],
    index: FrameIndex,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
) -> np.ndarray | None:
    """(frames, 2) float32: the peak and RMS level (0..1 of full scale) of the sound that
    plays while each frame shows; None when the file has no sound. Decodes the sound once."""
    reader = AudioReader(path, rate=LEVELS_RATE, channels=1)
    try:
        if not reader.has_audio:
            return None
        edges = _frame_edges(index)
        reader.start(edges[0])
        total = len(index)
        chunks = []
        read = 0
        while True:
            if cancel is not None:
                cancel.raise_if_cancelled()
            chunk = reader.read(LEVELS_RATE)  # a second at a time
            if not len(chunk):
                break
            chunks.append(chunk[:, 0])
            read += len(chunk)
            shown = int(np.searchsorted(edges, edges[0] + read / LEVELS_RATE, side="right"))
            progress(Progress("waveform", min(shown, total), total, "measuring the sound"))
    finally:
        reader.close()
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return _levels(samples.astype(np.float32) / 32768, edges)


def _frame_edges(index: FrameIndex) -> np.ndarray:
    """Container times (seconds) where each frame starts showing, and where the last ends."""
    pts = np.asarray(index.pts, np.int64)
    ends = np.append(pts, pts[-1] + max(1, int(index.last_duration)))
    return ends.astype(np.float64) * float(index.time_base)


def _levels(samples: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Peak and RMS of `samples` (starting at edges[0]) between consecutive edges."""
    bounds = np.round((edges - edges[0]) * LEVELS_RATE).astype(np.int64)
    bounds = np.clip(bounds, 0, len(samples))
    levels = np.zeros((len(edges) - 1, 2), np.float32)
    starts, ends = bounds[:-1], bounds[1:]
    filled = ends > starts  # frames with sound under them
    if filled.any():
        # reduceat ends each frame where the next filled one starts: frames are contiguous,
        # and sound after the last frame is cut off.
        magnitude = np.abs(samples[: bounds[-1]])
        squares = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
        levels[filled, 0] = np.maximum.reduceat(magnitude, starts[filled])
        counts = ends[filled] - starts[filled]
        energy = squares[ends[filled]] - squares[starts[filled]]
        levels[filled, 1] = np.sqrt(energy / counts)
    return levels
