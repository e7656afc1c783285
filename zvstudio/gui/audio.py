"""The clip's sound during playback: it follows the transport's clock.

Sound plays while the transport plays forwards at 1x and is silent when stopped or muted.
Every start, jump or speed change of the clock restarts it at the clock's time, so a seek or a
loop keeps picture and sound together. With playback stopped, `scrub` plays a moment of a
frame's sound, as video editors do while the playhead is dragged or stepped, so that a beat can
be found frame by frame. Shuttling faster or backwards (J/L) plays such moments one after
another from wherever the clock is: speech stays at its pitch and can still be followed, where
resampling would turn it into chirps, and backwards each moment still plays forwards. Samples
come from `media.audio.AudioReader` and are pushed into a Qt audio sink a little at a time
from a timer; the sink is made by a factory so that tests can listen without a sound card.
QtMultimedia is imported only here and only when a sink is made: it needs PulseAudio's
library on Linux, and without it (or without an output device) the editor says so once and
plays silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal

from zvstudio.errors import ZvsError
from zvstudio.gui.transport import Transport
from zvstudio.media.audio import PLAYBACK_CHANNELS, PLAYBACK_RATE, AudioReader
from zvstudio.media.probe import FrameIndex

log = logging.getLogger(__name__)

FEED_INTERVAL_MS = 15
SINK_BUFFER_SECONDS = 0.12  # short, so sound starts and stops with the picture
# Sound further behind the picture than this is caught up by skipping samples: an output can
# take a long while to start playing (a second and more), and its clock can drift.
CATCH_UP_SECONDS = 0.04
BYTES_PER_SAMPLE = 2  # signed 16-bit
# A scrubbed frame sounds for at least this long (one frame's 40 ms is hard to hear), faded in
# and out so that it does not click.
SCRUB_SECONDS = 0.08
SCRUB_FADE_SECONDS = 0.005


class Writable(Protocol):
    def write(self, data: bytes) -> int: ...


class AudioSink(Protocol):
    """What playback needs of an output: Qt's QAudioSink in push mode has these."""

    def start(self) -> Writable | None: ...
    def setVolume(self, volume: float) -> None: ...  # 0..1, linear
    def bytesFree(self) -> int: ...
    def processedUSecs(self) -> int: ...  # sound the output has taken since it started
    def stop(self) -> None: ...


SinkFactory = Callable[[int, int], AudioSink | None]


class NoSoundOutput(Exception):
    """Why this machine cannot play sound (the editor then plays silently and says why)."""


def qt_sink(rate: int, channels: int) -> AudioSink:
    """A QAudioSink on the default output; NoSoundOutput where there is none (module doc)."""
    try:
        from PySide6.QtMultimedia import QAudioFormat, QAudioSink, QMediaDevices
    except ImportError as exc:  # QtMultimedia absent or its PulseAudio library missing
        raise NoSoundOutput(
            f"Qt's sound library cannot load ({exc}); on Linux install libpulse0"
        ) from exc
    device = QMediaDevices.defaultAudioOutput()
    if device.isNull():
        raise NoSoundOutput("no sound output device was found")
    audio_format = QAudioFormat()
    audio_format.setSampleRate(rate)
    audio_format.setChannelCount(channels)
    audio_format.setSampleFormat(QAudioFormat.SampleFormat.Int16)
    if not device.isFormatSupported(audio_format):
        raise NoSoundOutput(f"{device.description()} does not take 16-bit {rate} Hz sound")
    sink = QAudioSink(device, audio_format)
    sink.setBufferSize(int(SINK_BUFFER_SECONDS * rate) * channels * BYTES_PER_SAMPLE)
    return sink


class AudioPlayback(QObject):
    """Plays a clip's sound in step with `transport`."""

    failed = Signal(str)  # why there is no sound (no output, a damaged audio stream)

    def __init__(
        self,
        transport: Transport,
        sink_factory: SinkFactory = qt_sink,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._transport = transport
        self._sink_factory = sink_factory
        self._path: str | None = None
        self._index: FrameIndex | None = None
        self._reader: AudioReader | None = None
        self._sink: AudioSink | None = None
        self._sink_made = False
        self._output: Writable | None = None
        self._sound_start = 0.0  # the container time of the first sample sent, plus skips
        self._muted = False
        self._volume = 1.0
        self._scrubbing = True
        self._shuttling = False  # playing moments at the clock (any speed but 1x)
        self._timer = QTimer(self)
        self._timer.setInterval(FEED_INTERVAL_MS)
        self._timer.timeout.connect(self._feed)
        transport.clock_changed.connect(self._follow)

    # -- settings -----------------------------------------------------------------------------
    def set_clip(self, path: str | None, index: FrameIndex | None) -> None:
        """The clip whose sound to play (None, or a clip without sound: silence)."""
        self._halt()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._path, self._index = (path, index) if path and index is not None else (None, None)

    def set_muted(self, muted: bool) -> None:
        self._muted = bool(muted)
        self._follow(self._transport.position(), self._transport.speed())

    def is_muted(self) -> bool:
        return self._muted

    def set_volume(self, volume: float) -> None:
        """The output's volume, 0..1 (applied at once, also while playing)."""
        self._volume = min(max(float(volume), 0.0), 1.0)
        if self._sink is not None:
            self._sink.setVolume(self._volume)

    def volume(self) -> float:
        return self._volume

    def set_scrubbing(self, on: bool) -> None:
        """Whether `scrub` sounds."""
        self._scrubbing = bool(on)

    def is_scrubbing(self) -> bool:
        return self._scrubbing

    def is_playing(self) -> bool:
        """Whether the output is open: playing the clock's sound, or scrubbed moments."""
        return self._output is not None

    # -- following the clock ------------------------------------------------------------------
    def _follow(self, position: float, speed: float) -> None:
        self._halt()
        if speed == 0.0 or self._muted or self._path is None:
            return
        reader = self._open_reader()
        sink = self._open_sink()
        if reader is None or sink is None or not reader.has_audio:
            return
        self._shuttling = speed != 1.0
        if not self._shuttling:
            self._sound_start = self._seconds(position)
            try:
                reader.start(self._sound_start)
            except ZvsError as exc:
                self._fail(str(exc))
                return
        self._output = sink.start()
        if self._output is not None:
            self._feed()
            self._timer.start()

    def scrub(self, frame: int) -> None:
        """Play the sound at `frame` for a moment (`SCRUB_SECONDS`), unless playback runs (the
        clock's sound then plays), scrubbing is off, the sound is muted or there is none.

        The output keeps running between scrubs: starting one can take from a tenth of a second
        to seconds, longer than a scrubbed frame lasts. A frame scrubbed while the output still
        holds a whole moment of earlier frames is skipped, so the sound never lags the drag."""
        if self._transport.is_playing() or not self._scrubbing or self._muted:
            return
        reader = self._open_reader() if self._path is not None else None
        sink = self._open_sink() if reader is not None else None
        if sink is None or not reader.has_audio:
            return
        if self._output is None:
            self._output = sink.start()
        if self._output is not None:
            self._play_moment(frame)

    def _play_moment(self, position: float) -> None:
        """Send a faded moment of the sound at frame `position`, if the output has room for
        a whole one."""
        reader = self._reader
        length = round(max(1.0 / self._transport.fps(), SCRUB_SECONDS) * reader.rate)
        if self._sink.bytesFree() < length * BYTES_PER_SAMPLE * reader.channels:
            return
        try:
            reader.start(self._seconds(position))
            samples = reader.read(length)
        except ZvsError as exc:
            self._fail(str(exc))
            return
        self._output.write(faded(samples, round(SCRUB_FADE_SECONDS * reader.rate)).tobytes())

    def _seconds(self, position: float) -> float:
        """The container time of the (fractional) frame `position`."""
        index = self._index
        frame = min(max(int(position), 0), len(index) - 1)
        ticks = int(index.pts[frame])
        return float(ticks * index.time_base) + (position - frame) / self._transport.fps()

    def _feed(self) -> None:
        """Top the sink's buffer up with the next samples."""
        if self._output is None or self._sink is None or self._reader is None:
            return
        if self._shuttling:
            self._play_moment(self._transport.position())
            return
        try:
            self._catch_up()
            frames = self._sink.bytesFree() // (BYTES_PER_SAMPLE * self._reader.channels)
            if frames <= 0:
                return
            samples = self._reader.read(frames)
        except ZvsError as exc:
            self._fail(str(exc))
            return
        if len(samples):
            self._output.write(samples.tobytes())
        if len(samples) < frames:
            self._timer.stop()  # the end of the sound: the sink plays out what it holds

    def _catch_up(self) -> None:
        """Skip the samples that would play behind the picture, once the output plays."""
        taken = self._sink.processedUSecs() / 1e6
        if taken <= 0:
            return  # not started yet: its delay shows once it runs
        behind = self._seconds(self._transport.position()) - (self._sound_start + taken)
        if behind > CATCH_UP_SECONDS:
            skipped = len(self._reader.read(round(behind * self._reader.rate)))
            self._sound_start += skipped / self._reader.rate

    def _halt(self) -> None:
        self._timer.stop()
        if self._output is not None and self._sink is not None:
            self._sink.stop()
        self._output = None

    def _fail(self, why: str) -> None:
        self._halt()
        self._path = None  # do not try again at every frame of this clip
        self.failed.emit(why)

    def _open_reader(self) -> AudioReader | None:
        if self._reader is None and self._path is not None:
            try:
                self._reader = AudioReader(self._path, PLAYBACK_RATE, PLAYBACK_CHANNELS)
            except ZvsError as exc:
                self._fail(str(exc))
        return self._reader

    def _open_sink(self) -> AudioSink | None:
        if not self._sink_made:  # one attempt: without an output, say why once, then silence
            self._sink_made = True
            try:
                self._sink = self._sink_factory(PLAYBACK_RATE, PLAYBACK_CHANNELS)
                self._sink.setVolume(self._volume)
            except NoSoundOutput as exc:
                log.info("no sound: %s", exc)
                self.failed.emit(str(exc))
        return self._sink


def faded(samples: np.ndarray, ramp: int) -> np.ndarray:
    """`samples` (frames, channels) int16 faded in over the first `ramp` frames and out over
    the last `ramp`."""
    ramp = min(ramp, len(samples) // 2)
    gain = np.ones(len(samples), np.float32)
    if ramp > 0:
        rise = np.arange(ramp, dtype=np.float32) / ramp
        gain[:ramp], gain[len(gain) - ramp :] = rise, rise[::-1]
    return np.round(samples * gain[:, None]).astype(np.int16)
