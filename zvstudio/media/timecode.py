"""Source timecode: read from a clip, carried to what is rendered from it.

Cameras and editing systems stamp a clip with the timecode of its first frame (a QuickTime
`tmcd` track, an MXF or Matroska tag). An editor conforms a render back into the cut by that
timecode, so every output of a clip gets its source's timecode, moved on by the frames that
the output starts after (a render of frames 100..) The arithmetic, drop-frame counting at
29.97 and 59.94 fps included, is the `timecode` package's.
"""

from __future__ import annotations

import re
from fractions import Fraction

import av
from timecode import Timecode

# HH:MM:SS:FF, or HH:MM:SS;FF for drop-frame (';' or '.' before the frames, as SMPTE writes).
_TIMECODE = re.compile(r"^(\d{2}):([0-5]\d):([0-5]\d)([:;.])(\d{2,3})$")
# The rates timecode is counted at (29.97 and 59.94 with drop-frame where the clip says so);
# at any other rate only the source's own start is carried, never counted on.
_TIMECODE_RATES = {
    Fraction(24000, 1001),
    Fraction(24),
    Fraction(25),
    Fraction(30000, 1001),
    Fraction(30),
    Fraction(48),
    Fraction(50),
    Fraction(60000, 1001),
    Fraction(60),
    Fraction(100),
    Fraction(120000, 1001),
    Fraction(120),
}


def valid_timecode(text: object) -> str | None:
    """`text` if it is a timecode (`01:00:10:05`, drop-frame `01:00:10;05`), else None."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    return text if _TIMECODE.match(text) else None


def read_timecode(container: av.container.InputContainer) -> str | None:
    """The start timecode a container holds: its video stream's (QuickTime/MP4 with a `tmcd`
    track), a timecode track's, or the file's tag (MXF, Matroska); None without one."""
    streams = sorted(container.streams, key=lambda stream: stream.type != "video")
    for metadata in (*(stream.metadata for stream in streams), container.metadata):
        for key, value in metadata.items():
            if key.lower() == "timecode" and valid_timecode(value):
                return valid_timecode(value)
    return None


def timecode_at(start: str | None, fps: Fraction, frames: int) -> str | None:
    """The timecode `frames` frames after `start` at `fps` (drop-frame when `start` is
    written as drop-frame); None without a start, or at a rate timecode is not counted at
    (except `start` itself, 0 frames on)."""
    if start is None or frames == 0:
        return start
    if Fraction(fps).limit_denominator(1001) not in _TIMECODE_RATES:
        return None
    drop = _TIMECODE.match(start).group(4) != ":"
    counted = Timecode(Fraction(fps), start, force_non_drop_frame=not drop)
    return str(counted + frames)


def timecode_frames(start: str, fps: Fraction, timecode: str) -> int | None:
    """How many frames `timecode` comes after `start` (negative before it); None when either
    is not a timecode or the rate is not one timecode is counted at."""
    if not (valid_timecode(start) and valid_timecode(timecode)):
        return None
    if Fraction(fps).limit_denominator(1001) not in _TIMECODE_RATES:
        return None
    drop = _TIMECODE.match(start).group(4) != ":"
    first = Timecode(Fraction(fps), start, force_non_drop_frame=not drop)
    other = Timecode(Fraction(fps), timecode, force_non_drop_frame=not drop)
    return other.frame_number - first.frame_number
