"""Source timecode: read from clips, counted on (drop-frame too) and written on every output
rendered from a clip, so an editor can conform the render into the cut."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from zvstudio.cli import main
from zvstudio.media import ExportSettings, FrameTiming, VideoWriter, probe
from zvstudio.media.timecode import timecode_at, timecode_frames, valid_timecode
from zvstudio.media.writer import write_sequence_rate

NTSC = Fraction(30000, 1001)


@pytest.mark.parametrize(
    ("start", "fps", "frames", "expected"),
    [
        ("01:00:10:05", Fraction(25), 20, "01:00:11:00"),
        ("01:00:00:00", Fraction(24000, 1001), 24 * 60, "01:01:00:00"),  # counts 24 a second
        ("00:00:00;00", NTSC, 1800, "00:01:00;02"),  # drop-frame skips ;00 and ;01
        ("00:00:00;00", NTSC, 17982, "00:10:00;00"),  # ... except every tenth minute
        ("00:00:00:00", NTSC, 1800, "00:01:00:00"),  # non-drop-frame at 29.97
        ("00:00:59;29", NTSC, 1, "00:01:00;02"),
        ("10:00:00;00", Fraction(60000, 1001), 1800, "10:00:30;00"),
        ("23:59:59:24", Fraction(25), 1, "00:00:00:00"),  # past midnight
    ],
)
def test_timecode_is_counted_on_as_editors_count_it(start, fps, frames, expected):
    assert timecode_at(start, fps, frames) == expected
    if expected > start:  # not past midnight
        assert timecode_frames(start, fps, expected) == frames


def test_timecode_at_rates_it_is_not_counted_at():
    assert timecode_at("01:00:00:00", Fraction(25, 2), 0) == "01:00:00:00"  # its own start
    assert timecode_at("01:00:00:00", Fraction(25, 2), 10) is None  # 12.5 fps: no count
    assert timecode_at(None, Fraction(25), 10) is None
    assert valid_timecode("1:00:00:00") is None and valid_timecode("01:61:00:00") is None
    assert valid_timecode(" 01:00:00;00 ") == "01:00:00;00" and valid_timecode(5) is None


def write_clip(path: Path, count: int, fps: Fraction, timecode: str | None, fmt="h264"):
    rng = np.random.default_rng(0)
    timing = FrameTiming.constant(fps, count)
    timing = FrameTiming(timing.time_base, timing.pts, timing.last_duration, timecode)
    with VideoWriter(path, (64, 48), timing, ExportSettings(format=fmt)) as writer:
        for _ in range(count):
            writer.write(rng.integers(0, 255, (48, 64, 3), np.uint8))
    return path


@pytest.mark.parametrize("suffix", [".mov", ".mp4", ".mkv"])
def test_a_written_timecode_is_read_back(tmp_path, suffix):
    clip = write_clip(tmp_path / f"a{suffix}", 3, Fraction(25), "01:00:10:05")
    assert probe(clip).timecode == "01:00:10:05"
    if suffix != ".mkv":  # QuickTime and MP4 keep it as a tmcd track, as cameras write it
        with av.open(str(clip)) as container:
            assert [s.type for s in container.streams] == ["video", "data"]
    assert probe(write_clip(tmp_path / f"b{suffix}", 3, Fraction(25), None)).timecode is None


def test_a_render_of_a_range_starts_at_its_first_frames_timecode(tmp_path, capsys):
    clip = write_clip(tmp_path / "shot.mov", 30, NTSC, "00:59:59;20")
    assert main(["probe", str(clip)]) == 0
    assert "timecode   00:59:59;20" in capsys.readouterr().out
    args = ["render", str(clip), "--style", "posterize", "--every", "10", "-q"]
    assert main([*args, "--from", "12", "-o", str(tmp_path / "out.mov")]) == 0
    # Frame 12 of a clip starting at 00:59:59;20 is 01:00:00;02 (;00 and ;01 are dropped).
    assert probe(tmp_path / "out.mov").timecode == "01:00:00;02"

    # Frames keep it in timing.json, read back as the sequence's own, and carried on again.
    assert main([*args, "--from", "12", "-o", str(tmp_path / "frames")]) == 0
    stored = json.loads((tmp_path / "frames" / "timing.json").read_text())
    assert stored["timecode"] == "01:00:00;02"
    sequence = tmp_path / "frames" / "frame_000012.png"
    assert probe(sequence).timecode == "01:00:00;02"
    again = ["render", str(sequence), "--style", "pencil", "--from", "5", "-q"]
    assert main([*again, "-o", str(tmp_path / "again.mp4")]) == 0
    assert probe(tmp_path / "again.mp4").timecode == "01:00:00;07"

    # Setting the sequence's rate keeps its timecode.
    write_sequence_rate(sequence, NTSC)
    assert probe(sequence).timecode == "01:00:00;02"


def test_a_clip_without_timecode_renders_without_one(tmp_path):
    clip = write_clip(tmp_path / "plain.mp4", 6, Fraction(24), None)
    args = ["render", str(clip), "--style", "posterize", "--from", "2", "-q"]
    assert main([*args, "-o", str(tmp_path / "out.mov")]) == 0
    assert probe(tmp_path / "out.mov").timecode is None
    with av.open(str(tmp_path / "out.mov")) as container:
        assert [s.type for s in container.streams] == ["video"]
