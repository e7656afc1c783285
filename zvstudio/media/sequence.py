"""Image sequences as clips: numbered frames in a folder (frame_0001.png, frame_0002.png, ...),
as renderers, compositors, painting apps and our own PNG export write them.

A sequence is named by a pattern path, FFmpeg's way: `shots/frame_%04d.png` (`%d` when the
numbers are not padded; Nuke's `frame_####.png` is read too). A folder that holds one sequence,
or any one of its frames, names it as well; `sequence_path` turns each into the pattern.
Frame i of the clip is the i-th file in number order. The numbers must run without gaps (a
constant step such as every other frame is fine), since a missing frame would shift the rest.

Images carry no timing. `timing.json` beside the frames gives it: zvstudio's export of frames
writes every frame's timestamp there, so a round trip keeps even a variable frame rate; the
editor's File > Frame rate of sequence and `zvstudio probe --set-fps` write `{"fps": 25}`, as a
user can by hand. Without it the rate is 24 fps. `audio.wav` beside the frames is
the clip's sound.

Each frame is decoded by FFmpeg on its own (PNG, JPEG, TIFF, BMP, WebP, DPX, 16-bit included;
OpenEXR's scene-linear light is encoded as sRGB), so a sequence reads as a video whose every
frame is a keyframe.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import reduce
from pathlib import Path

import av
import numpy as np

from zvstudio.errors import MediaError
from zvstudio.hashing import file_hash, files_hash
from zvstudio.media.timecode import valid_timecode

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".exr", ".dpx"}
)
TIMING_FILE = "timing.json"
AUDIO_FILE = "audio.wav"
DEFAULT_RATE = Fraction(24)
MAX_RATE = 1000  # fps; beyond it a typed rate is a typo (a high-speed camera shoots ~1000)
CONTAINER_NAME = "image sequence"
ASSUMED_RATE_NOTE = f"images carry no timing, so {DEFAULT_RATE} fps is assumed"

NUMBERED_NAME = re.compile(r"^(.*?)(\d+)$")  # a file stem: prefix, frame number
_PRINTF = re.compile(r"%(0\d+)?d")
_HASHES = re.compile(r"#+")


class FramesNotFound(MediaError):
    """No frames are where a sequence's path points."""


@dataclass(frozen=True)
class SequenceTiming:
    """When each frame shows: `pts[i]` ticks of `time_base`; `source` says where that came
    from ("timing.json" or "assumed")."""

    time_base: Fraction
    pts: np.ndarray
    last_duration: int
    source: str
    timecode: str | None = None  # the first frame's source timecode, kept by an export


@dataclass(frozen=True)
class ImageSequence:
    """Frames `prefix + number + suffix` in `folder`; `digits` is the zero-padded width (0:
    the numbers are written without padding)."""

    folder: Path
    prefix: str
    suffix: str
    digits: int
    numbers: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def step(self) -> int:
        """How far apart the numbers of consecutive frames are (1 unless frames were skipped)."""
        return self.numbers[1] - self.numbers[0] if len(self.numbers) > 1 else 1

    @property
    def pattern(self) -> str:
        """The FFmpeg-style pattern path that names this sequence."""
        number = f"%0{self.digits}d" if self.digits else "%d"
        return str(self.folder / f"{_escape_percent(self.prefix)}{number}{self.suffix}")

    @property
    def label(self) -> str:
        """A short name for people: `shots/frame_####.png`."""
        return _label(self.folder, self.prefix, self.digits, self.suffix)

    def file(self, index: int) -> Path:
        number = self.numbers[index]
        return self.folder / f"{self.prefix}{number:0{self.digits}d}{self.suffix}"

    @property
    def files(self) -> list[Path]:
        return [self.file(index) for index in range(len(self.numbers))]

    @property
    def audio_path(self) -> Path | None:
        path = self.folder / AUDIO_FILE
        return path if path.is_file() else None

    def decode(self, index: int) -> av.VideoFrame:
        """Frame `index` (0-based) as FFmpeg decodes its file."""
        path = self.file(index)
        try:
            with av.open(str(path), "r") as container:
                stream = container.streams.video[0]
                if stream.codec_context.name == "exr":
                    # Scene-linear light: show it as sRGB, as image viewers do.
                    stream.codec_context.options = {"apply_trc": "iec61966_2_1"}
                return next(container.decode(stream))
        except (av.error.FFmpegError, IndexError, StopIteration) as exc:
            raise MediaError(
                f"cannot read frame {index} of {self.label}: {path.name} is not a readable image",
                hint="export that frame again, or replace it with a copy of a neighbour",
            ) from exc
        except OSError as exc:
            raise MediaError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def timing(self) -> SequenceTiming:
        """The frames' timing: from `timing.json` beside them, else `DEFAULT_RATE`."""
        path = self.folder / TIMING_FILE
        if not path.is_file():
            return _constant_timing(DEFAULT_RATE, len(self), "assumed")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return replace(self._timing_from(data), timecode=valid_timecode(data.get("timecode")))
        except (ValueError, TypeError, KeyError, ZeroDivisionError, AttributeError) as exc:
            raise MediaError(
                f"cannot read the timing of {self.label} from {path}: {exc}",
                hint='write it as {"fps": 25}, or remove it to use 24 fps',
            ) from None

    def _timing_from(self, data: dict) -> SequenceTiming:
        if "pts" in data:
            time_base = Fraction(data["time_base"])
            pts = np.asarray(data["pts"], dtype=np.int64)
            first = int(data.get("first_frame", self.numbers[0]))
            if len(pts) == len(self) and first == self.numbers[0]:
                return SequenceTiming(time_base, pts, int(data["last_duration"]), TIMING_FILE)
            # Frames were added or removed since it was written: keep its average rate.
            span = (int(pts[-1]) - int(pts[0]) + int(data["last_duration"])) * time_base
            rate = Fraction(len(pts) / float(span)).limit_denominator(1001)
            return _constant_timing(rate, len(self), TIMING_FILE)
        return _constant_timing(frame_rate(data["fps"]), len(self), TIMING_FILE)


def frame_rate(value: str | float | Fraction) -> Fraction:
    """A frame rate as people write it: 25, "29.97", "30000/1001", 23.976. The rounded NTSC
    rates mean their exact values (29.97 is 30000/1001), as every video tool takes them.
    Raises ValueError for anything that is not a positive rate."""
    try:
        rate = Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{value!r} is not a frame rate (write 25, 29.97 or 30000/1001)") from None
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"a frame rate must be above 0 and at most {MAX_RATE} fps, not {value}")
    ntsc = round(rate * Fraction(1001, 1000)) * Fraction(1000, 1001)
    if rate.denominator != 1 and abs(rate - ntsc) < Fraction(1, 200):
        return ntsc
    return rate.limit_denominator(1001)


def rate_text(rate: Fraction) -> str:
    """A frame rate as people write it: "25", "29.97" (for 30000/1001), "12.5"."""
    return f"{float(rate):.3f}".rstrip("0").rstrip(".")


def _constant_timing(rate: Fraction, count: int, source: str) -> SequenceTiming:
    return SequenceTiming(1 / rate, np.arange(count, dtype=np.int64), 1, source)


def _escape_percent(text: str) -> str:
    return text.replace("%", "%%")


def _label(folder: Path, prefix: str, digits: int, suffix: str) -> str:
    return f"{folder.name}/{prefix}{'#' * max(digits, 1)}{suffix}"


# -------------------------------------------------------------------------- finding


def looks_like_sequence(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names an image sequence rather than a video file (cheap: no listing)."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    return path.is_dir()


def find_sequence(path: str | os.PathLike[str]) -> ImageSequence | None:
    """The image sequence that `path` names (a pattern, a folder or one of its frames), or
    None when it names something else (a video file). A path that names a sequence badly (an
    empty folder, a folder of several sequences, frames missing) raises `MediaError`."""
    if not looks_like_sequence(path):
        return None
    path = Path(path)
    if path.is_dir():
        return _only_sequence_in(path)
    parsed = _parsed_pattern(path)
    if parsed is not None:
        return _sequence_from_pattern(path, *parsed)
    return _sequence_of_frame(path)


def sequence_path(path: str | os.PathLike[str]) -> str:
    """The pattern of the sequence `path` names, or `path` itself for a video file."""
    sequence = find_sequence(path)
    return sequence.pattern if sequence is not None else os.fspath(path)


def clip_exists(path: str | os.PathLike[str]) -> bool:
    """Whether the clip at `path` (a video file or an image sequence) is there."""
    if not looks_like_sequence(path):
        return os.path.isfile(path)
    try:
        return find_sequence(path) is not None
    except FramesNotFound:
        return False
    except MediaError:
        return True  # there, though not readable as it is: reading it says why


def clip_audio_file(path: str | os.PathLike[str]) -> str | None:
    """The file that holds a clip's sound: the video itself, or a sequence's `audio.wav`
    (None without one)."""
    sequence = find_sequence(path)
    if sequence is None:
        return os.fspath(path)
    audio = sequence.audio_path
    return str(audio) if audio is not None else None


def clip_title(path: str | os.PathLike[str]) -> str:
    """What to call a clip in titles and file names: a video's stem, a sequence's folder."""
    path = Path(path)
    if looks_like_sequence(path):
        return (path if path.is_dir() else path.parent).name or path.stem
    return path.stem


def named_after_clip(path: str | os.PathLike[str], ending: str) -> Path:
    """A file named after the clip, beside it (beside a sequence's folder): `clip` + `ending`."""
    path = Path(path)
    beside = path if path.is_dir() else path.parent
    if looks_like_sequence(path):
        beside = beside.parent
    return beside / f"{clip_title(path)}{ending}"


def clip_label(path: str | os.PathLike[str]) -> str:
    """A clip's name for people: a video's file name, `shots/frame_####.png` for a sequence."""
    parsed = _parsed_pattern(Path(path)) if looks_like_sequence(path) else None
    if parsed is not None:  # a project's clip: named without listing its folder each time
        return _label(Path(path).parent, *parsed)
    try:
        sequence = find_sequence(path)
    except MediaError:
        sequence = None
    return sequence.label if sequence is not None else Path(path).name


def _image_groups(folder: Path) -> dict[tuple[str, str], dict[int, str]]:
    """Numbered images in `folder` by (prefix, suffix): number -> the digits as written."""
    groups: dict[tuple[str, str], dict[int, str]] = {}
    try:
        names = [entry.name for entry in os.scandir(folder) if entry.is_file()]
    except OSError as exc:
        raise MediaError(f"cannot list {folder}: {exc.strerror or exc}") from exc
    for name in names:
        stem, suffix = os.path.splitext(name)
        match = NUMBERED_NAME.match(stem)
        if suffix.lower() in IMAGE_SUFFIXES and match:
            groups.setdefault((match[1], suffix), {})[int(match[2])] = match[2]
    return groups


def _only_sequence_in(folder: Path) -> ImageSequence:
    groups = _image_groups(folder)
    if not groups:
        raise MediaError(
            f"{folder} holds no numbered images",
            hint="a clip can be a video file or a folder of frames named like frame_0001.png",
        )
    sequences = [
        _sequence(folder, prefix, suffix, written)
        for (prefix, suffix), written in sorted(groups.items())
    ]
    if len(sequences) > 1:
        listed = ", ".join(f"{s.label.split('/', 1)[1]} ({len(s)} frames)" for s in sequences)
        raise MediaError(
            f"{folder} holds several image sequences: {listed}",
            hint="choose one of the frames of the sequence you mean",
        )
    return _checked(sequences[0])


def _sequence_of_frame(path: Path) -> ImageSequence:
    if not path.is_file():
        raise FramesNotFound(f"file not found: {path}")
    match = NUMBERED_NAME.match(path.stem)
    if match is None:
        raise MediaError(
            f"{path} is a single image, not a clip",
            hint="a clip can be a video file or numbered frames (frame_0001.png, ...); "
            "to make a clip from a still, use animate",
        )
    written = _image_groups(path.parent)[(match[1], path.suffix)]
    return _checked(_sequence(path.parent, match[1], path.suffix, written))


def _parsed_pattern(path: Path) -> tuple[str, int, str] | None:
    """(prefix, digits, suffix) of a pattern path (`frame_%04d.png`, `frame_####.png`); None
    for any other path, an existing file whose name only looks like a pattern included."""
    name = path.name
    printf = _PRINTF.search(name)
    token = printf or _HASHES.search(name)
    if token is None or path.is_file():
        return None
    prefix, suffix = name[: token.start()].replace("%%", "%"), name[token.end() :]
    if printf:
        digits = int(printf[1]) if printf[1] else 0
    else:
        digits = len(token[0]) if len(token[0]) > 1 else 0
    return prefix, digits, suffix


def _sequence_from_pattern(path: Path, prefix: str, digits: int, suffix: str) -> ImageSequence:
    if not path.parent.is_dir():
        raise FramesNotFound(f"folder not found: {path.parent}")
    written = _image_groups(path.parent).get((prefix, suffix), {})
    numbers = [n for n, text in written.items() if _fits(text, digits)]
    if not numbers:
        raise FramesNotFound(f"no frames match {path}")
    return _checked(ImageSequence(path.parent, prefix, suffix, digits, tuple(sorted(numbers))))


def _fits(text: str, digits: int) -> bool:
    """Whether number `text` is written with padding `digits` (longer numbers overflow it)."""
    if digits == 0:
        return text == "0" or not text.startswith("0")
    return len(text) == digits or (len(text) > digits and not text.startswith("0"))


def _sequence(folder: Path, prefix: str, suffix: str, written: dict[int, str]) -> ImageSequence:
    """The sequence of the numbers in `written` (number -> digits as written), with the padding
    that the zero-padded ones show, or that all share."""
    texts = list(written.values())
    padded = [len(t) for t in texts if t.startswith("0") and len(t) > 1]
    lengths = {len(t) for t in texts}
    if padded:
        digits = min(padded)
    elif len(lengths) == 1 and len(texts) > 1:
        digits = lengths.pop()  # 1000..1099 reads as %04d or %d alike
    else:
        digits = 0
    digits = digits if digits > 1 else 0
    numbers = tuple(sorted(n for n, t in written.items() if _fits(t, digits)))
    return ImageSequence(folder, prefix, suffix, digits, numbers)


def _checked(sequence: ImageSequence) -> ImageSequence:
    """Refuse a sequence with frames missing: its frames would shift in time."""
    numbers = sequence.numbers
    if len(numbers) < 2:
        return sequence
    step = reduce(math.gcd, np.diff(numbers).tolist())
    expected = range(numbers[0], numbers[-1] + 1, step)
    if len(expected) != len(numbers):
        missing = sorted(set(expected) - set(numbers))
        raise MediaError(
            f"{sequence.label} is missing frames {_ranges(missing)}",
            hint="render or copy the missing frames in (a copy of a neighbour will do)",
        )
    return sequence


def _ranges(numbers: list[int], shown: int = 6) -> str:
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    parts = [f"{r[0]}" if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs[:shown]]
    return ", ".join(parts) + (f" and {len(runs) - shown} more" if len(runs) > shown else "")


# -------------------------------------------------------------------------- identity


def sequence_hash(sequence: ImageSequence) -> str:
    """A content hash of the pictures: every frame in order, as "b2:<hex>"; remembered for the
    process by each file's path, size and modification time."""
    # Frames by position, not name: renumbered frames are the same clip. Timing and sound are
    # left out: frames, flows and renders do not depend on them, so setting the rate of a
    # sequence or giving it new sound keeps every rendered frame (see `clip_sound_hash`).
    parts = [(b"\0frame", path) for path in sequence.files]
    return _hashed(sequence, parts, b"image sequence v2")


def clip_hash(path: str | os.PathLike[str]) -> str:
    """The content hash that identifies a clip's pictures (a video file: the whole file)."""
    sequence = find_sequence(path)
    return sequence_hash(sequence) if sequence is not None else file_hash(path)


def clip_sound_hash(path: str | os.PathLike[str]) -> str:
    """A content hash of a clip's sound and timing, for what is measured from both (the sound
    at each frame): the file of a video; a sequence's audio.wav and timing.json."""
    sequence = find_sequence(path)
    if sequence is None:
        return file_hash(path)
    beside = (sequence.folder / TIMING_FILE, sequence.folder / AUDIO_FILE)
    parts = [(b"\0" + extra.name.encode(), extra) for extra in beside if extra.is_file()]
    return _hashed(sequence, parts, b"image sequence sound v1")


def _hashed(sequence: ImageSequence, parts: list[tuple[bytes, Path]], salt: bytes) -> str:
    try:
        return files_hash(parts, salt=salt)
    except OSError as exc:
        raise MediaError(f"cannot read {sequence.label}: {exc.strerror or exc}") from exc
