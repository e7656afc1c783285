"""Writing rendered frames: H.264, H.265, ProRes 422 or a PNG sequence, with the source audio.

Every output keeps the source's frame timing (each frame's own timestamp, so a variable frame
rate survives) and muxes the source audio: copied untouched when the container accepts its
codec and the whole clip is exported, otherwise re-encoded (AAC, or WAV beside a PNG sequence)
and cut to the exported range with sample accuracy.

Outputs are written to a temporary name beside the target and moved into place only when
complete, so a failure, a cancel or a full disk never leaves a half file or destroys an
existing one.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import json
import os
import re
import secrets
import shutil
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from zvstudio.atomic import write_atomically
from zvstudio.errors import MediaError
from zvstudio.media.probe import FrameIndex, named_layout, open_input
from zvstudio.media.sequence import AUDIO_FILE, TIMING_FILE, find_sequence

VIDEO_FORMATS = ("h264", "h265", "prores")
# Frames written as numbered images into a folder, by format: the file suffix and what it is.
IMAGE_FORMATS = {
    "png": (".png", "PNG, 8-bit"),
    "tiff": (".tif", "TIFF, 8-bit, LZW"),
    "exr": (".exr", "OpenEXR, linear light, half float"),
    "dpx": (".dpx", "DPX, 10-bit"),
}
FORMATS = VIDEO_FORMATS + tuple(IMAGE_FORMATS)
ALPHA_FORMATS = ("prores", "png", "tiff", "exr")  # those that can carry an alpha channel
FOLDER = "folder"  # the output kind of a path without extension: a folder of image frames
_VIDEO_CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".m4v": "mp4"}
_ALLOWED_FORMATS = {
    "mp4": {"h264", "h265"},
    "mov": {"h264", "h265", "prores"},
    "matroska": {"h264", "h265", "prores"},
}
# Audio codecs each container takes as a stream copy; anything else is re-encoded to AAC.
_COPYABLE_AUDIO = {
    "mp4": {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"},
    "mov": {
        "aac",
        "mp3",
        "alac",
        "ac3",
        "eac3",
        "pcm_s16le",
        "pcm_s24le",
        "pcm_s16be",
        "pcm_s24be",
        "pcm_f32le",
    },
    # Matroska keeps no edit list, so lossy codecs' encoder delay (AAC's 1024 priming
    # samples) would play as extra audio; copy only codecs without one.
    "matroska": {"flac", "opus", "pcm_s16le", "pcm_s24le", "pcm_f32le"},
}


@dataclass(frozen=True)
class ExportSettings:
    """How to encode. `crf` is the quality for H.264/H.265 (lower = better, 18 ~ transparent)."""

    format: str = "h264"
    crf: int = 18
    preset: str = "medium"
    audio: bool = True
    alpha: bool = False  # frames come as RGBA and keep their alpha (ProRes 4444, PNG, TIFF, EXR)


@dataclass(frozen=True)
class FrameTiming:
    """Presentation time of each output frame: `pts[i]` ticks of `time_base`, from 0."""

    time_base: Fraction
    pts: np.ndarray
    last_duration: int
    timecode: str | None = None  # the first frame's (source) timecode, tagged on the output

    @classmethod
    def from_index(cls, index: FrameIndex, start: int = 0, stop: int | None = None) -> FrameTiming:
        """The timing of source frames start..stop-1, shifted to begin at 0."""
        stop = len(index) if stop is None else stop
        pts = index.pts[start:stop]
        last = (int(index.pts[stop]) - int(pts[-1])) if stop < len(index) else index.last_duration
        return cls(index.time_base, pts - pts[0], last)

    @classmethod
    def constant(cls, fps: Fraction, count: int) -> FrameTiming:
        fps = Fraction(fps)
        return cls(1 / fps, np.arange(count, dtype=np.int64), 1)

    @property
    def duration(self) -> float:
        return float((int(self.pts[-1]) + self.last_duration) * self.time_base)

    def seconds(self, number: int) -> float:
        return float(int(self.pts[number]) * self.time_base)

    def average_rate(self) -> Fraction:
        return Fraction(len(self.pts) / self.duration).limit_denominator(100000)


@dataclass(frozen=True)
class AudioSource:
    """Audio to mux: the first audio stream of `path`, from `start` seconds for `duration`."""

    path: str
    start: float = 0.0
    duration: float | None = None
    whole_clip: bool = True


def output_kind(path: str | os.PathLike[str]) -> str:
    """`FOLDER` for a path without extension (image frames), else the container name;
    unknown -> MediaError."""
    suffix = Path(path).suffix.lower()
    if suffix == "":
        return FOLDER
    if suffix not in _VIDEO_CONTAINERS:
        raise MediaError(
            f"cannot write {path}: unknown output type '{suffix}'",
            hint="use .mp4, .mov or .mkv, or a folder name for image frames",
        )
    return _VIDEO_CONTAINERS[suffix]


def output_suffixes(fmt: str) -> tuple[str, ...]:
    """The file suffixes an export in `fmt` can be written to ("" for a folder of frames)."""
    if fmt in IMAGE_FORMATS:
        return ("",)
    return tuple(s for s, kind in _VIDEO_CONTAINERS.items() if fmt in _ALLOWED_FORMATS[kind])


def format_for(path: str | os.PathLike[str], preferred: str | None = None) -> str:
    """The export format for output `path`: `preferred` where that output takes it, else the
    usual one for it (PNG frames in a folder, H.264 in a video file)."""
    kind = output_kind(path)
    fitting = IMAGE_FORMATS if kind == FOLDER else _ALLOWED_FORMATS[kind]
    if preferred in fitting:
        return preferred
    return "png" if kind == FOLDER else "h264"


def check_output(
    path: str | os.PathLike[str],
    settings: ExportSettings,
    source: str | os.PathLike[str] | None = None,
) -> None:
    """Fail early, before any rendering, if `path` cannot receive this export (of the clip at
    `source`, which it must not replace)."""
    path = Path(path)
    if source is not None and _is_clip_itself(path, source):
        raise MediaError(
            f"cannot write {path}: it is the clip being rendered",
            hint="choose another output name, so that the clip is kept",
        )
    kind = output_kind(path)
    if settings.format not in FORMATS:
        raise MediaError(
            f"unknown export format '{settings.format}'; choose one of " + ", ".join(FORMATS)
        )
    if kind == FOLDER and settings.format not in IMAGE_FORMATS:
        raise MediaError(
            f"format '{settings.format}' does not match output {path}",
            hint=f"{settings.format} makes a video file: name one, e.g. {path.name}.mp4",
        )
    if kind != FOLDER and settings.format in IMAGE_FORMATS:
        raise MediaError(
            f"format '{settings.format}' does not match output {path}",
            hint="image frames are written to a folder (a path without extension)",
        )
    if settings.alpha and settings.format not in ALPHA_FORMATS:
        raise MediaError(
            f"{settings.format} has no alpha channel",
            hint="use prores (a .mov: ProRes 4444), or png, tiff or exr frames",
        )
    if kind != FOLDER and settings.format not in _ALLOWED_FORMATS[kind]:
        raise MediaError(
            f"{settings.format} cannot be stored in a {path.suffix} file",
            hint="ProRes needs a .mov (or .mkv) output",
        )
    parent = path.absolute().parent
    if not parent.is_dir():
        raise MediaError(f"cannot write {path}: folder {parent} does not exist")
    _probe_writable(path)
    if path.is_dir() and kind != FOLDER:
        raise MediaError(f"cannot write {path}: a folder of that name exists")
    if kind == FOLDER and path.exists():
        _check_replaceable_folder(path)


def _is_clip_itself(path: Path, source: str | os.PathLike[str]) -> bool:
    try:
        sequence = find_sequence(source)
    except MediaError:
        sequence = None  # not readable as a clip: reading it will say why
    held = sequence.folder if sequence is not None else Path(source)
    return path.resolve() == held.resolve()


def _check_replaceable_folder(path: Path) -> None:
    if not path.is_dir():
        raise MediaError(f"cannot write image frames to {path}: a file of that name exists")
    if any(path.iterdir()) and not (path / TIMING_FILE).exists():
        raise MediaError(
            f"folder {path} is not empty and is not an earlier zvstudio export",
            hint="choose an empty or new folder so that nothing of yours is overwritten",
        )


def _probe_writable(path: Path) -> None:
    """Create and remove a file beside `path`: permissions alone do not tell (root ignores
    them; read-only and special file systems refuse anyway)."""
    probe_file = partial_sibling(path)
    try:
        with open(probe_file, "xb"):
            pass
        probe_file.unlink()
    except OSError as exc:
        raise MediaError(
            f"cannot write {path}: {exc.strerror or exc} in {path.absolute().parent}",
            hint="choose a folder you can write to",
        ) from exc


def partial_sibling(path: Path) -> Path:
    """A fresh hidden name beside `path` for writing it before it is complete.

    Unlike `tempfile`, which creates files readable only by their owner, files made under
    this name get the user's normal permissions once moved into place. The name carries the
    writing process's id, so a later export can tell the leftovers of a killed one.
    """
    while True:
        name = f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.partial{path.suffix}"
        candidate = path.absolute().parent / name
        if not candidate.exists():
            return candidate


def write_png(path: Path, image: np.ndarray, text: Mapping[str, str] | None = None) -> None:
    """Write an RGB image as a PNG atomically: a half-written file never replaces one there.
    `text` becomes the PNG's text chunks (such as A1111's "parameters")."""
    data = _png_with_text(image, text) if text else encode_image(image, "png")
    _write_bytes(path, data, "choose a folder you can write to, with free space")


def _png_with_text(image: np.ndarray, text: Mapping[str, str]) -> bytes:
    """A PNG with text chunks, which OpenCV cannot write: Pillow's encoder (iTXt for text
    that Latin-1 cannot hold)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG", pnginfo=info, compress_level=3)
    return buffer.getvalue()


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """An RGB or RGBA uint8 image as the bytes of an image file in `fmt` (one of
    `IMAGE_FORMATS`; RGBA for those in `ALPHA_FORMATS`)."""
    alpha = image.shape[2] == 4
    if fmt in ("png", "tiff"):
        flags = [cv2.IMWRITE_PNG_COMPRESSION, 3] if fmt == "png" else []
        suffix = IMAGE_FORMATS[fmt][0]
        bgr = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if alpha else cv2.COLOR_RGB2BGR)
        ok, data = cv2.imencode(suffix, bgr, flags)
        if not ok:
            raise MediaError(f"cannot encode a {fmt.upper()} frame")
        return data.tobytes()
    if fmt == "exr":
        # Compositors expect scene-linear light in EXR: undo the sRGB curve that the reader
        # applies to EXR frames, so a round trip gives the same pixels back. EXR's alpha is
        # premultiplied (OpenEXR's convention): colour times alpha.
        linear = srgb_to_linear(image[..., :3])
        if alpha:
            opacity = image[..., 3:].astype(np.float32) / 255.0
            linear = np.concatenate([linear * opacity, opacity], axis=2)
        frame = av.VideoFrame.from_ndarray(linear, format="gbrapf32le" if alpha else "gbrpf32le")
        # ZIP by scanline: lossless, Nuke's default, and faster to write than ZIP16.
        return _encoded_still("exr", frame, {"format": "half", "compression": "zip1"})
    if alpha:
        raise MediaError(f"{fmt} frames have no alpha channel")
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="gbrp10le")
    return _encoded_still("dpx", frame, {})


def _srgb_to_linear_table() -> np.ndarray:
    values = np.arange(256, dtype=np.float64) / 255.0
    low = values / 12.92
    high = ((values + 0.055) / 1.055) ** 2.4
    return np.where(values <= 0.04045, low, high).astype(np.float32)


_SRGB_TO_LINEAR = _srgb_to_linear_table()  # a lookup: 18x faster than the curve per pixel


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """RGB uint8 encoded with the sRGB curve, as float32 linear light (0..1)."""
    return _SRGB_TO_LINEAR[image]


def _encoded_still(codec: str, frame: av.VideoFrame, options: dict[str, str]) -> bytes:
    """One frame encoded by FFmpeg's image encoder `codec` (what OpenCV cannot write without
    optional build flags: EXR, DPX)."""
    context = av.CodecContext.create(codec, "w")
    context.width, context.height = frame.width, frame.height
    context.pix_fmt = frame.format.name
    context.time_base = Fraction(1, 1)
    context.options = options
    return b"".join(bytes(packet) for packet in [*context.encode(frame), *context.encode(None)])


def write_sequence_rate(clip: str | os.PathLike[str], rate: Fraction) -> Path:
    """Set the frame rate of the image sequence `clip` names: `{"fps": rate}` in the
    timing.json beside its frames (replacing the per-frame times an export wrote there).
    Returns that file. Its frames and everything rendered from them stay as they are."""
    sequence = find_sequence(clip)
    if sequence is None:
        raise MediaError(
            f"{Path(clip).name} is a video file: its frame rate is in the file",
            hint="only image sequences, whose frames carry no timing, take a frame rate",
        )
    fps: int | str = rate.numerator if rate.denominator == 1 else str(rate)
    target = sequence.folder / TIMING_FILE
    timing: dict[str, int | str] = {"fps": fps}
    timecode = sequence.timing().timecode if target.is_file() else None
    if timecode:  # the frames' timecode stays theirs
        timing["timecode"] = timecode
    text = json.dumps(timing) + "\n"
    _write_bytes(
        target,
        text.encode(),
        "the frame rate is kept beside the frames: make that "
        "folder writable, or copy the frames to one that is",
    )
    return target


def _write_bytes(path: Path, data: bytes, hint: str) -> None:
    """Write a file atomically: a half-written file never replaces one there."""
    try:
        write_atomically(str(path), data, backup=False)
    except OSError as exc:
        raise MediaError(f"cannot write {path}: {exc.strerror or exc}", hint=hint) from exc


def remove_stale_partials(path: Path) -> None:
    """Delete what killed exports of `path` left behind: partial files or folders whose
    writing process no longer runs. (A clean failure or cancel removes its own.)"""
    pattern = re.compile(rf"^\.{re.escape(path.stem)}\.(\d+)-[0-9a-f]+\.partial")
    for candidate in path.absolute().parent.glob(f".{glob.escape(path.stem)}.*.partial*"):
        match = pattern.match(candidate.name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        if candidate.is_dir():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                candidate.unlink()


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":
        return True  # no cheap check without extra packages: leave the file alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists but belongs to someone else
    return True


def _disk_error(path: Path, exc: OSError) -> MediaError:
    reason = exc.strerror or str(exc)
    return MediaError(
        f"cannot write {path}: {reason}",
        hint="free some disk space" if exc.errno == errno.ENOSPC else None,
        code="disk_full" if exc.errno == errno.ENOSPC else "error",
    )


class VideoWriter:
    """Write RGB frames with the given timing; `close()` finishes, `abort()` discards.

    Use as a context manager: leaving it through an exception aborts, so the target is
    either the complete new export or exactly what was there before.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        size: tuple[int, int],
        timing: FrameTiming,
        settings: ExportSettings = ExportSettings(),
        audio: AudioSource | None = None,
        first_number: int = 0,
    ) -> None:
        check_output(path, settings)
        self.path = Path(path)
        remove_stale_partials(self.path)
        self.size = size
        self.timing = timing
        self.settings = settings
        self.written = 0
        audio = audio if settings.audio else None
        try:
            if settings.format in IMAGE_FORMATS:
                self._sink = _FramesSink(self.path, settings.format, timing, audio, first_number)
            else:
                self._sink = _EncodedSink(self.path, size, timing, settings, audio)
        except OSError as exc:  # the folder refuses new files (read-only, full, special)
            raise _disk_error(self.path, exc) from exc

    def write(self, image: np.ndarray) -> None:
        if self.written >= len(self.timing.pts):
            raise MediaError(f"more frames than the {len(self.timing.pts)} planned for {self.path}")
        channels = 4 if self.settings.alpha else 3
        if image.shape != (self.size[1], self.size[0], channels) or image.dtype != np.uint8:
            kind = "RGBA" if self.settings.alpha else "RGB"
            raise ValueError(
                f"expected a {self.size[0]}x{self.size[1]} {kind} uint8 frame, "
                f"got {image.shape} {image.dtype}"
            )
        try:
            self._sink.write(self.written, image)
        except OSError as exc:
            self.abort()
            raise _disk_error(self.path, exc) from exc
        self.written += 1

    def close(self) -> None:
        """Finish the file (flush encoders, mux the rest of the audio) and move it into place."""
        try:
            self._sink.finish(self.written)
        except OSError as exc:
            self.abort()
            raise _disk_error(self.path, exc) from exc
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self._sink.discard()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _EncodedSink:
    """A video file: one encoded video stream plus the audio."""

    def __init__(self, path, size, timing, settings, audio) -> None:
        self.target = path
        self.kind = output_kind(path)
        self.temp = partial_sibling(path)
        self.timing = timing
        # Each packet's duration, so the last frame lasts as long as in the source.
        self._durations = dict(
            zip(
                timing.pts.tolist(),
                [*np.diff(timing.pts).tolist(), timing.last_duration],
                strict=True,
            )
        )
        # MP4/MOV only: the first video packet's (pts, dts) in decode order, and the latest two
        # packets, held back until later ones show they are not the last (see _mux_last_video).
        self._decode_start: tuple[int, int] | None = None
        self._held: list[av.Packet] = []
        self.container = av.open(str(self.temp), "w", format=self.kind)
        try:
            self.stream = _add_video_stream(self.container, self.kind, size, timing, settings)
            if timing.timecode:  # for an editor to conform the render by
                tags = self.stream if self.kind in ("mp4", "mov") else self.container
                tags.metadata["timecode"] = timing.timecode  # MP4/MOV: a tmcd track
            self.audio = _AudioFeed.open(audio, self.container, self.kind) if audio else None
        except BaseException:
            self.discard()
            raise

    def write(self, number: int, image: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(image, format="rgba" if image.shape[2] == 4 else "rgb24")
        frame = frame.reformat(
            format=self.stream.codec_context.pix_fmt,
            dst_colorspace="itu709",
            dst_color_range="MPEG",
        )
        frame.pts = int(self.timing.pts[number])
        frame.time_base = self.timing.time_base
        self._mux_video(self.stream.encode(frame))
        if self.audio is not None:
            self.audio.mux_until(self.timing.seconds(number) + 1.0)

    def _mux_video(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            packet.duration = self._durations.get(packet.pts, packet.duration)
            if self.kind not in ("mp4", "mov"):
                self.container.mux(packet)
                continue
            if self._decode_start is None and packet.pts is not None and packet.dts is not None:
                self._decode_start = (int(packet.pts), int(packet.dts))
            self._held.append(packet)
            if len(self._held) > 2:
                self.container.mux(self._held.pop(0))

    def _mux_last_video(self, written: int) -> None:
        """Mux the last two packets in decode order with durations that end the video exactly.

        MP4/MOV keep one duration per sample in decode order: each is the gap to the next dts,
        only the last comes from the packet. FFmpeg's reader takes the track's duration as the
        smaller of their sum and the edit list's, which FFmpeg's muxer writes as the latest
        pts + packet duration over all packets; it reads the average rate as frames / sum. The
        encoder's dts run a few frames behind the pts (B-frames), so at a variable rate the last
        frame's own duration left the sum, and the video, up to a frame short. So:
        - the last packet gets the duration that makes the sum equal the span from the first pts
          to the end (at a constant rate that is its own duration anyway). Its dts stays as
          encoded: moving it stretches the previous sample instead, and short clips then report
          e.g. 15 fps for 25;
        - when that leaves the last packet ending before the video does (it is the last frame
          shown, no B-frames after it), the packet before it, whose duration no sample stores,
          carries the end for the edit list.
        If the dts already run past the end (first frames longer than the last), no duration can
        shorten the sum; the frame keeps its own and the edit list's end sets the duration.
        """
        held, self._held = self._held, []
        if not held:
            return
        last = held[-1]
        if written and self._decode_start is not None and last.dts is not None:
            final_pts = int(self.timing.pts[written - 1])
            end = final_pts + self._durations[final_pts]
            first_pts, first_dts = self._decode_start
            duration = (end - first_pts) - (int(last.dts) - first_dts)
            if duration > 0:
                last.duration = duration
            previous = held[0] if len(held) == 2 else None
            ends_early = last.pts is not None and last.pts + last.duration < end
            if ends_early and previous is not None and previous.pts is not None:
                previous.duration = end - int(previous.pts)
        for packet in held:
            self.container.mux(packet)

    def finish(self, written: int) -> None:
        self._mux_video(self.stream.encode(None))
        self._mux_last_video(written)
        if self.audio is not None:
            self.audio.mux_until(None)
            self.audio.close()
        self.container.close()
        os.replace(self.temp, self.target)

    def discard(self) -> None:
        try:
            if self.audio is not None:
                self.audio.close()
            self.container.close()
        except Exception:
            pass
        self.temp.unlink(missing_ok=True)


def _add_video_stream(container, kind, size, timing: FrameTiming, settings: ExportSettings):
    codec, options, pix_fmt = {
        "h264": ("libx264", {"crf": str(settings.crf), "preset": settings.preset}, "yuv420p"),
        "h265": (
            "libx265",
            {"crf": str(settings.crf), "preset": settings.preset, "x265-params": "log-level=error"},
            "yuv420p",
        ),
        # Profile 2 is ProRes 422 (standard); 10-bit 4:2:2 is what ProRes stores.
        "prores": ("prores_ks", {"profile": "2"}, "yuv422p10le"),
    }[settings.format]
    if settings.alpha:  # ProRes 4444, the profile that keeps an alpha channel
        codec, options, pix_fmt = "prores_ks", {"profile": "4"}, "yuva444p10le"
    stream = container.add_stream(codec, rate=timing.average_rate(), options=options)
    stream.width, stream.height = size
    stream.pix_fmt = pix_fmt
    stream.time_base = timing.time_base
    stream.codec_context.time_base = timing.time_base
    context = stream.codec_context
    # Tag what we encode (BT.709, limited range) so players convert colours back correctly.
    context.colorspace = 1
    context.color_primaries = 1
    context.color_trc = 1
    context.color_range = 1
    if settings.format == "h265" and kind in ("mp4", "mov"):
        context.codec_tag = "hvc1"  # the tag Apple players require for HEVC
    return stream


class _AudioFeed:
    """Muxes the source audio into an output container a little ahead of the video."""

    def __init__(self, source: AudioSource, output, copy: bool, codec: str) -> None:
        self.source = source
        self.input = open_input(source.path)
        self.in_stream = self.input.streams.audio[0]
        self.copy = copy
        self.output = output
        self.end = None if source.duration is None else source.start + source.duration
        start_ticks = self.in_stream.start_time or 0
        # Where output time 0 falls in this stream's samples (audio may not start at 0).
        self.offset = source.start - float(start_ticks * self.in_stream.time_base)
        if copy:
            self.out_stream = output.add_stream_from_template(self.in_stream)
            self._items = self._copied_packets()
        else:
            rate = self.in_stream.rate or 48000
            self.out_stream = output.add_stream(
                codec, rate=rate, layout=named_layout(self.in_stream)
            )
            self._items = self._encoded_packets()
        self._pending = None

    @classmethod
    def open(cls, source: AudioSource, output, kind: str) -> _AudioFeed | None:
        with open_input(source.path) as probe_container:
            if not probe_container.streams.audio:
                return None
            codec = probe_container.streams.audio[0].codec_context.name
        if kind == "wav":
            return cls(source, output, copy=False, codec="pcm_s16le")
        copy = source.whole_clip and codec in _COPYABLE_AUDIO.get(kind, set())
        return cls(source, output, copy=copy, codec="aac")

    def mux_until(self, seconds: float | None) -> None:
        """Mux every audio packet that starts before `seconds` (None: all the rest)."""
        while True:
            if self._pending is None:
                self._pending = next(self._items, None)
                if self._pending is None:
                    return
            packet, packet_seconds = self._pending
            if seconds is not None and packet_seconds >= seconds:
                return
            self.output.mux(packet)
            self._pending = None

    def _copied_packets(self) -> Iterator[tuple[av.Packet, float]]:
        for packet in self.input.demux(self.in_stream):
            if packet.dts is None or packet.size == 0:
                continue
            shift = round(self.source.start / packet.time_base)
            packet.pts = packet.pts - shift if packet.pts is not None else None
            packet.dts -= shift
            seconds = float(packet.pts * packet.time_base) if packet.pts is not None else 0.0
            packet.stream = self.out_stream
            yield packet, seconds

    def _encoded_packets(self) -> Iterator[tuple[av.Packet, float]]:
        rate = self.out_stream.codec_context.sample_rate
        for frame in self._trimmed_frames(rate):
            for packet in self.out_stream.encode(frame):
                yield packet, float(packet.pts * packet.time_base) if packet.pts else 0.0
        for packet in self.out_stream.encode(None):
            yield packet, float(packet.pts * packet.time_base) if packet.pts else 0.0

    def _trimmed_frames(self, rate: int) -> Iterator[av.AudioFrame]:
        """Decoded source audio cut to [start, end) with sample accuracy, in encoder frames."""
        context = self.out_stream.codec_context
        resampler = av.AudioResampler(
            format=context.format,
            layout=context.layout,
            rate=rate,
            frame_size=context.frame_size or 1024,
        )
        skip = max(0, round(self.offset * rate))
        keep = None if self.end is None else round((self.end - self.source.start) * rate)
        written = 0
        decoded = self._decoded_frames()
        for chunk in _resampled(resampler, decoded):
            samples = chunk.to_ndarray()
            first = min(skip, chunk.samples)
            skip -= first
            last = chunk.samples if keep is None else min(chunk.samples, first + keep - written)
            if last <= first:
                if keep is not None and written >= keep:
                    return
                continue
            yield _audio_frame(samples, first, last, context, rate, written)
            written += last - first

    def _decoded_frames(self) -> Iterator[av.AudioFrame]:
        try:
            for frame in self.input.decode(self.in_stream):
                frame.pts = None  # the resampler counts samples itself
                yield frame
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot decode the audio of {self.source.path}: {exc}") from exc

    def close(self) -> None:
        self.input.close()


def _resampled(resampler: av.AudioResampler, frames) -> Iterator[av.AudioFrame]:
    for frame in frames:
        yield from resampler.resample(frame)
    yield from resampler.resample(None)


def _audio_frame(samples, first, last, context, rate, pts) -> av.AudioFrame:
    planar = context.format.is_planar
    part = (
        samples[:, first:last]
        if planar
        else samples[:, first * context.layout.nb_channels : last * context.layout.nb_channels]
    )
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(part), format=context.format.name, layout=context.layout.name
    )
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = Fraction(1, rate)
    return frame


class _FramesSink:
    """A folder of image files named by source frame number, plus timing.json and audio.wav."""

    def __init__(self, path: Path, fmt: str, timing: FrameTiming, audio, first_number: int):
        self.target = path
        self.format = fmt
        self.timing = timing
        self.first_number = first_number
        self.audio = audio
        self.temp = partial_sibling(path)
        self.temp.mkdir()
        # Frames are compressed on every core: the encoders (OpenCV's, FFmpeg's) release the
        # GIL, and one 1080p frame takes 0.1-0.5 s (PNG, EXR) on one core.
        self._workers = os.cpu_count() or 2
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="zvs-frames")
        self._pending: deque[Future] = deque()

    def write(self, number: int, image: np.ndarray) -> None:
        suffix = IMAGE_FORMATS[self.format][0]
        name = self.temp / f"frame_{self.first_number + number:06d}{suffix}"
        # A copy: the caller may reuse its array while this frame waits for a worker.
        self._pending.append(self._pool.submit(self._write_frame, name, image.copy()))
        while len(self._pending) > 2 * self._workers:  # a bounded number of frames in memory
            self._pending.popleft().result()  # raises what writing that frame raised

    def _write_frame(self, name: Path, image: np.ndarray) -> None:
        name.write_bytes(encode_image(image, self.format))

    def _wait(self) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def finish(self, written: int) -> None:
        self._wait()
        timing = {
            "writer": "zvstudio",
            "time_base": f"{self.timing.time_base.numerator}/{self.timing.time_base.denominator}",
            "first_frame": self.first_number,
            "pts": [int(p) for p in self.timing.pts[:written]],
            "last_duration": self.timing.last_duration,
        }
        if self.timing.timecode:
            timing["timecode"] = self.timing.timecode
        (self.temp / TIMING_FILE).write_text(json.dumps(timing, indent=1) + "\n")
        if self.audio is not None:
            self._write_wav(self.temp / AUDIO_FILE)
        self._move_into_place()

    def _write_wav(self, path: Path) -> None:
        with av.open(str(path), "w", format="wav") as output:
            feed = _AudioFeed.open(self.audio, output, "wav")
            if feed is not None:
                feed.mux_until(None)
                feed.close()
        if path.stat().st_size <= 44:
            path.unlink()

    def _move_into_place(self) -> None:
        old = None
        if self.target.exists():
            _check_replaceable_folder(self.target)
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
        os.replace(self.temp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        with contextlib.suppress(Exception):  # already failing: the first error is reported
            self._wait()
        shutil.rmtree(self.temp, ignore_errors=True)
