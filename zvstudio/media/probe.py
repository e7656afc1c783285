"""Probing media files: what a clip contains and exactly when each frame is shown.

The frame count, frame rate and duration come from the video stream's own packet timestamps,
not from container headers (which are often wrong or missing and cannot describe a variable
frame rate). Demuxing reads the file but decodes nothing, so it is fast.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from zvstudio.errors import MediaError
from zvstudio.media.hdr import describe
from zvstudio.media.sequence import CONTAINER_NAME, ImageSequence, find_sequence
from zvstudio.media.timecode import read_timecode

# Relative spread of frame durations above which a clip counts as variable frame rate; below
# it, the spread is timestamp rounding (e.g. 1/30 s in a 1/1000 time base).
_VFR_TOLERANCE = 0.02


@dataclass(frozen=True)
class AudioStreamInfo:
    index: int
    codec: str
    sample_rate: int
    channels: int
    layout: str
    duration: float | None
    language: str | None


@dataclass(frozen=True)
class FrameIndex:
    """Presentation timestamps of every frame, in display order, plus the keyframes.

    `pts[i]` is frame i's timestamp in `time_base` units; `keyframe_pts` lists (sorted) the
    timestamps of frames a decoder can start from.
    """

    time_base: Fraction
    pts: np.ndarray
    keyframe_pts: np.ndarray
    last_duration: int

    def __len__(self) -> int:
        return len(self.pts)

    def seconds(self, frame: int) -> float:
        return float((int(self.pts[frame]) - int(self.pts[0])) * self.time_base)

    def seek_points(self, frame: int) -> list[int]:
        """Keyframe timestamps to try, nearest first, when seeking to `frame`."""
        target = int(self.pts[frame])
        position = int(np.searchsorted(self.keyframe_pts, target, side="right"))
        return [int(p) for p in self.keyframe_pts[:position][::-1]]

    def frame_at_seconds(self, seconds: float) -> int:
        """The frame shown at `seconds` from the start."""
        ticks = int(self.pts[0]) + round(seconds / self.time_base)
        return max(0, int(np.searchsorted(self.pts, ticks, side="right")) - 1)


@dataclass(frozen=True)
class MediaInfo:
    """What `probe` found. Sizes are in stored pixels; `display_*` apply the rotation."""

    path: str
    container: str
    codec: str
    pixel_format: str
    width: int
    height: int
    rotation: int
    fps: Fraction
    is_vfr: bool
    frame_count: int
    duration: float
    bit_rate: int | None
    audio: tuple[AudioStreamInfo, ...]
    index: FrameIndex
    colour: str = ""  # "HDR (HLG)", "HDR (PQ)" or "BT.2020": frames are converted to SDR BT.709
    timing_assumed: bool = False  # an image sequence without timing.json: DEFAULT_RATE
    first_number: int = 0  # the number in the name of an image sequence's first frame
    timecode: str | None = None  # the first frame's source timecode ("01:00:10:05"), if any

    def frame_name_number(self, frame: int) -> int:
        """The number that frame `frame` goes by in file names: its own in an image sequence
        numbered one by one (frame_1001.png in, frame_1001.png out), else `frame`."""
        return self.first_number + frame

    @property
    def is_sequence(self) -> bool:
        return self.container == CONTAINER_NAME

    @property
    def display_width(self) -> int:
        return self.height if self.rotation % 180 else self.width

    @property
    def display_height(self) -> int:
        return self.width if self.rotation % 180 else self.height

    @property
    def has_audio(self) -> bool:
        return bool(self.audio)

    def to_dict(self) -> dict:
        """A JSON-ready summary (the frame index itself is left out)."""
        data = {key: value for key, value in asdict(self).items() if key != "index"}
        data["fps"] = float(self.fps)
        data["fps_fraction"] = f"{self.fps.numerator}/{self.fps.denominator}"
        data["display_width"] = self.display_width
        data["display_height"] = self.display_height
        data["audio"] = [asdict(stream) for stream in self.audio]
        return data


def open_input(path: str | os.PathLike[str]) -> av.container.InputContainer:
    """Open a media file for reading, turning every failure into a clear `MediaError`."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"file not found: {path}")
    if path.is_dir():
        raise MediaError(f"{path} is a folder, not a video file")
    try:
        return av.open(str(path), "r")
    except av.error.FFmpegError as exc:
        raise MediaError(
            f"cannot read {path}: not a video file or damaged ({_ffmpeg_reason(exc)})"
        ) from exc
    except OSError as exc:
        raise MediaError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _ffmpeg_reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _video_stream(container: av.container.InputContainer, path: str) -> av.video.VideoStream:
    if not container.streams.video:
        raise MediaError(f"{path} has no video stream")
    return container.streams.video[0]


def build_frame_index(container: av.container.InputContainer, path: str) -> FrameIndex:
    """Demux every video packet of `container` (no decoding) into a `FrameIndex`."""
    stream = _video_stream(container, path)
    pts_list: list[int] = []
    key_list: list[int] = []
    durations: list[int] = []
    try:
        for packet in container.demux(stream):
            timestamp = packet.pts if packet.pts is not None else packet.dts
            if timestamp is None or packet.size == 0 or packet.is_discard:
                continue
            pts_list.append(timestamp)
            durations.append(packet.duration or 0)
            if packet.is_keyframe:
                key_list.append(timestamp)
    except av.error.FFmpegError as exc:
        if not pts_list:
            raise MediaError(f"cannot read {path}: damaged video ({_ffmpeg_reason(exc)})") from exc
        # A truncated file: keep the frames before the damage, as players do.
    if not pts_list:
        raise MediaError(f"{path} has a video stream with no frames")
    pts = np.unique(np.asarray(pts_list, dtype=np.int64))
    keys = np.unique(np.asarray(key_list or [pts[0]], dtype=np.int64))
    time_base = Fraction(stream.time_base or Fraction(1, 1))
    ends = np.asarray(pts_list, dtype=np.int64) + np.asarray(durations, dtype=np.int64)
    last_duration = _last_frame_duration(container, stream, pts, int(ends.max()))
    return FrameIndex(time_base, pts, keys, last_duration)


def _last_frame_duration(container, stream, pts: np.ndarray, packet_end: int) -> int:
    """How long the last frame is shown, in stream ticks.

    MP4 stores decode durations per sample, so the last frame's own duration is only known
    from the stream's total duration (the end of presentation). Fall back to the packets'
    latest end, then to the container's duration (which may include longer audio), then to a
    typical frame gap.
    """
    start = stream.start_time or 0
    stream_end = start + stream.duration if stream.duration else None
    container_end = None
    if container.duration:
        seconds = Fraction(container.duration, av.time_base)
        container_end = start + round(seconds / stream.time_base)
    for candidate in (stream_end, packet_end, container_end):
        if candidate is not None and candidate > pts[-1]:
            return int(candidate - pts[-1])
    return int(np.median(np.diff(pts))) if len(pts) > 1 else 1


def _is_variable_rate(pts: np.ndarray) -> bool:
    if len(pts) < 3:
        return False
    gaps = np.diff(pts)
    median = float(np.median(gaps))
    # One tick of slack absorbs timestamp rounding in coarse time bases.
    return bool(np.max(np.abs(gaps - median)) > max(1.0, _VFR_TOLERANCE * median))


def _frame_rate(stream: av.video.VideoStream, index: FrameIndex, duration: float) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if rate:
        return Fraction(rate)
    return Fraction(len(index) / duration).limit_denominator(1001) if duration > 0 else Fraction(0)


# VP8/VP9 keep an alpha channel in each packet's side data (WebM's "alpha_mode" track tag
# says so), which only libvpx's decoders read; FFmpeg's own drop it.
_ALPHA_DECODERS = {"vp8": "libvpx", "vp9": "libvpx-vp9"}


def alpha_decoder(stream: av.video.stream.VideoStream) -> str | None:
    """The decoder that keeps `stream`'s alpha channel where FFmpeg's default would drop
    it (VP8/VP9 with alpha), if this FFmpeg has it; None: the default decoder."""
    name = _ALPHA_DECODERS.get(stream.codec_context.name)
    if name is None or stream.metadata.get("alpha_mode") != "1":
        return None
    try:
        av.codec.Codec(name, "r")
    except (av.error.FFmpegError, ValueError):
        return None
    return name


def _first_frame_looks(container: av.container.InputContainer, path: str) -> tuple[int, str]:
    """The display rotation in degrees counter-clockwise (0, 90, 180 or 270) and the colour
    encoding (see `hdr.describe`), from the first frame (the bitstream's own tags)."""
    stream = _video_stream(container, path)
    for frame in container.decode(stream):
        return _frame_looks(frame)
    return 0, ""


def _frame_looks(frame: av.VideoFrame) -> tuple[int, str]:
    """A decoded frame's display rotation (0, 90, 180 or 270) and colour encoding."""
    rotation = round((frame.rotation or 0) / 90.0) * 90 % 360
    return rotation, describe(frame.color_trc, frame.color_primaries)


_USUAL_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 8: "7.1"}


def named_layout(stream: av.audio.AudioStream) -> str:
    """The stream's channel layout. An unnamed one (a WAV without a channel mask reads as "2
    channels", which the AAC encoder refuses) gets the usual layout for its channel count."""
    name = stream.layout.name if stream.layout else ""
    if name and not name.endswith("channels"):
        return name
    return _USUAL_LAYOUTS.get(stream.channels or 2, "stereo")


def _audio_info(stream: av.audio.AudioStream) -> AudioStreamInfo:
    duration = float(stream.duration * stream.time_base) if stream.duration else None
    layout = named_layout(stream)
    return AudioStreamInfo(
        index=stream.index,
        codec=stream.codec_context.name,
        sample_rate=stream.rate or 0,
        channels=stream.channels or 0,
        layout=layout,
        duration=duration,
        language=stream.language,
    )


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Describe the clip at `path` (a video file or an image sequence, see `sequence`); raises
    `MediaError` if it is not a readable clip."""
    sequence = find_sequence(path)
    if sequence is not None:
        return _probe_sequence(sequence)
    path_str = str(path)
    with open_input(path) as container:
        index = build_frame_index(container, path_str)
    with open_input(path) as container:
        stream = _video_stream(container, path_str)
        codec = stream.codec_context
        try:
            rotation, colour = _first_frame_looks(container, path_str)
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot decode {path_str}: {_ffmpeg_reason(exc)}") from exc
        audio = tuple(_audio_info(s) for s in container.streams.audio)
        timecode = read_timecode(container)
        bit_rate = container.bit_rate or None
        container_name = container.format.name
        fps = _frame_rate(stream, index, _span_seconds(index))
        codec_name, pixel_format = codec.name, codec.format.name if codec.format else ""
        if alpha_decoder(stream) and pixel_format == "yuv420p":
            pixel_format = "yuva420p"  # what the decoder that keeps the alpha gives
        width, height = codec.width, codec.height
    duration = _span_seconds(index)
    return MediaInfo(
        path=path_str,
        container=container_name,
        codec=codec_name,
        pixel_format=pixel_format,
        width=width,
        height=height,
        rotation=rotation,
        fps=fps,
        is_vfr=_is_variable_rate(index.pts),
        frame_count=len(index),
        duration=duration,
        bit_rate=bit_rate,
        audio=audio,
        index=index,
        colour=colour,
        timecode=timecode,
    )


def _probe_sequence(sequence: ImageSequence) -> MediaInfo:
    timing = sequence.timing()
    index = FrameIndex(timing.time_base, timing.pts, timing.pts.copy(), timing.last_duration)
    first = sequence.decode(0)
    rotation, colour = _frame_looks(first)
    audio: tuple[AudioStreamInfo, ...] = ()
    if sequence.audio_path is not None:
        with open_input(sequence.audio_path) as container:
            audio = tuple(_audio_info(s) for s in container.streams.audio)
    duration = _span_seconds(index)
    is_vfr = _is_variable_rate(index.pts)
    if len(index) > 1 and not is_vfr:
        rate = 1 / (index.time_base * int(np.median(np.diff(index.pts))))
    else:
        rate = Fraction(len(index) / duration).limit_denominator(1001)
    return MediaInfo(
        path=sequence.pattern,
        container=CONTAINER_NAME,
        codec=sequence.suffix.lower().lstrip("."),
        pixel_format=first.format.name,
        width=first.width,
        height=first.height,
        rotation=rotation,
        fps=rate,
        is_vfr=is_vfr,
        frame_count=len(index),
        duration=duration,
        bit_rate=None,
        audio=audio,
        index=index,
        colour=colour,
        timing_assumed=timing.source == "assumed",
        first_number=sequence.numbers[0] if sequence.step == 1 else 0,
        timecode=timing.timecode,
    )


def _span_seconds(index: FrameIndex) -> float:
    """From the first frame's start to the last frame's end."""
    span = int(index.pts[-1] - index.pts[0]) + index.last_duration
    return float(span * index.time_base)
