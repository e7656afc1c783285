"""Image sequences as clips: finding them, their timing and sound, exact frames, identity,
and a PNG export read back as a clip."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from helpers import frame_number, make_clip, numbered_frame
from test_export import audio_seconds, export

from zvstudio.errors import MediaError
from zvstudio.media import ExportSettings, VideoReader, check_output, probe
from zvstudio.media.sequence import (
    clip_audio_file,
    clip_exists,
    clip_hash,
    clip_label,
    clip_sound_hash,
    find_sequence,
    frame_rate,
    named_after_clip,
    rate_text,
    sequence_path,
)


def write_frames(folder: Path, numbers, name: str = "frame_{:04d}.png", **size) -> list[Path]:
    """Frames whose pictures say their position in the sequence (0, 1, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for position, number in enumerate(numbers):
        path = folder / name.format(number)
        cv2.imwrite(str(path), cv2.cvtColor(numbered_frame(position, **size), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)


# -- finding a sequence ------------------------------------------------------------------------


def test_a_folder_a_frame_and_a_pattern_name_the_same_sequence(tmp_path):
    frames = write_frames(tmp_path / "shot", range(1, 11))
    (tmp_path / "shot" / "timing.json").write_text('{"fps": 25}')
    (tmp_path / "shot" / "notes.txt").write_text("not a frame")
    pattern = str(tmp_path / "shot" / "frame_%04d.png")
    for named in (tmp_path / "shot", frames[6], pattern, tmp_path / "shot" / "frame_####.png"):
        sequence = find_sequence(named)
        assert sequence is not None
        assert sequence.pattern == pattern
        assert sequence.numbers == tuple(range(1, 11))
        assert sequence_path(named) == pattern
    assert clip_label(frames[0]) == "shot/frame_####.png"
    assert find_sequence(tmp_path / "clip.mp4") is None
    assert sequence_path(tmp_path / "clip.mp4") == str(tmp_path / "clip.mp4")


def test_unpadded_numbers_are_taken_in_numeric_order(tmp_path):
    write_frames(tmp_path, range(1, 13), name="f{}.png")
    sequence = find_sequence(tmp_path)
    assert sequence.pattern == str(tmp_path / "f%d.png")
    assert [p.name for p in sequence.files[8:11]] == ["f9.png", "f10.png", "f11.png"]
    with VideoReader(tmp_path) as reader:
        assert [frame_number(reader.frame(n)) for n in (8, 9, 11)] == [8, 9, 11]


def test_padding_that_overflows_and_a_constant_step_are_one_sequence(tmp_path):
    write_frames(tmp_path / "a", [9998, 9999, 10000])
    assert find_sequence(tmp_path / "a").numbers == (9998, 9999, 10000)
    write_frames(tmp_path / "b", range(0, 20, 2))  # every other frame rendered
    assert len(find_sequence(tmp_path / "b")) == 10


def test_frames_missing_from_a_sequence_are_named(tmp_path):
    write_frames(tmp_path, [1, 2, 3, 5, 6, 9, 10])
    with pytest.raises(MediaError, match="missing frames 4, 7-8") as caught:
        find_sequence(tmp_path)
    assert "copy" in caught.value.hint


def test_a_folder_of_several_sequences_asks_which(tmp_path):
    beauty = write_frames(tmp_path, range(3), name="beauty.{:04d}.png")
    write_frames(tmp_path, range(5), name="depth.{:04d}.png")
    with pytest.raises(MediaError, match=r"several image sequences: beauty\.####\.png \(3"):
        find_sequence(tmp_path)
    assert len(find_sequence(beauty[1])) == 3  # one of its frames says which


def test_what_is_not_a_sequence_is_refused_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MediaError, match="holds no numbered images"):
        probe(tmp_path / "empty")
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), numbered_frame(0))
    with pytest.raises(MediaError, match="single image, not a clip"):
        probe(still)
    with pytest.raises(MediaError, match="no frames match"):
        probe(tmp_path / "shot_%04d.png")
    assert not clip_exists(tmp_path / "gone" / "frame_%04d.png")
    assert not clip_exists(tmp_path / "gone.mp4")


# -- probing and reading ---------------------------------------------------------------------


def test_probe_of_a_sequence_without_timing_assumes_24_fps(tmp_path):
    write_frames(tmp_path, range(12), width=96, height=64)
    info = probe(tmp_path)
    assert info.is_sequence and info.timing_assumed
    assert (info.codec, info.width, info.height, info.frame_count) == ("png", 96, 64, 12)
    assert info.fps == 24 and not info.is_vfr
    assert info.duration == pytest.approx(0.5)
    assert not info.has_audio and clip_audio_file(tmp_path) is None


@pytest.mark.parametrize(("written", "rate"), [(25, 25), ("30000/1001", Fraction(30000, 1001))])
def test_timing_json_sets_the_rate(tmp_path, written, rate):
    write_frames(tmp_path, range(6))
    (tmp_path / "timing.json").write_text(json.dumps({"fps": written}))
    info = probe(tmp_path)
    assert info.fps == rate and not info.timing_assumed
    assert info.index.seconds(5) == pytest.approx(5 / float(rate))


@pytest.mark.parametrize(
    ("typed", "rate"),
    [
        ("25", Fraction(25)),
        ("12.5", Fraction(25, 2)),
        (" 29.97 ", Fraction(30000, 1001)),
        ("23.976", Fraction(24000, 1001)),
        ("23.98", Fraction(24000, 1001)),
        ("59.94", Fraction(60000, 1001)),
        ("30000/1001", Fraction(30000, 1001)),
        (29.97, Fraction(30000, 1001)),
    ],
)
def test_frame_rates_are_read_as_people_write_them(typed, rate):
    assert frame_rate(typed) == rate
    assert frame_rate(rate_text(rate)) == rate


@pytest.mark.parametrize("typed", ["", "fast", "1/0", "0", "-24", "1e9"])
def test_what_is_not_a_frame_rate_is_refused(typed):
    with pytest.raises(ValueError, match="frame rate"):
        frame_rate(typed)


def test_setting_the_rate_of_a_sequence_keeps_its_renders(tmp_path, capsys):
    """An image sequence imported at the assumed 24 fps and rendered, then set to its real
    rate: the next render takes every frame from the cache and plays at the new rate."""
    from zvstudio.cli import main

    source, _, _ = make_clip(tmp_path / "c.mp4", count=12, audio=True)
    export(source, tmp_path / "frames", ExportSettings("png"))  # per-frame times, VFR-capable
    frames = tmp_path / "frames"
    render = ["render", str(frames), "--style", "cartoon", "--every", "4"]
    assert main([*render, "-o", str(tmp_path / "first.mp4")]) == 0
    pictures = clip_hash(frames)
    capsys.readouterr()

    assert main(["probe", str(frames), "--set-fps", "12.5", "--json"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out)["fps"] == 12.5
    assert "12.500 fps" in printed.err
    assert json.loads((frames / "timing.json").read_text()) == {"fps": "25/2"}
    assert clip_hash(frames) == pictures

    assert main([*render, "-o", str(tmp_path / "second.mp4")]) == 0
    assert "0 of 3 keys needed rendering" in capsys.readouterr().err
    second = probe(tmp_path / "second.mp4")
    assert second.frame_count == 12 and second.fps == Fraction(25, 2)
    assert second.duration == pytest.approx(12 / 12.5, abs=0.01)


def test_a_rate_is_refused_for_a_video_and_a_failed_write_changes_nothing(tmp_path, capsys):
    from zvstudio.cli import main
    from zvstudio.media.writer import write_sequence_rate

    video, _, _ = make_clip(tmp_path / "c.mp4", count=3)
    with pytest.raises(MediaError, match="video file: its frame rate is in the file"):
        write_sequence_rate(video, Fraction(25))
    assert main(["probe", str(tmp_path / "c.mp4"), "--set-fps", "fast"]) == 1
    assert "not a frame rate" in capsys.readouterr().err

    write_frames(tmp_path / "s", range(3))
    (tmp_path / "s" / "timing.json").mkdir()  # stands in for a folder that cannot be written
    with pytest.raises(MediaError, match="cannot write") as caught:
        write_sequence_rate(tmp_path / "s", Fraction(25))
    assert "writable" in caught.value.hint
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "frame_0000.png",
        "frame_0001.png",
        "frame_0002.png",
        "timing.json",
    ]


def test_a_broken_timing_json_is_named(tmp_path):
    write_frames(tmp_path, range(3))
    (tmp_path / "timing.json").write_text("{fps: 25")
    with pytest.raises(MediaError, match=r"timing\.json") as caught:
        probe(tmp_path)
    assert '{"fps": 25}' in caught.value.hint


def test_frames_read_exactly_in_any_order_and_in_sequence(tmp_path):
    paths = write_frames(tmp_path, range(100, 130))
    with VideoReader(tmp_path) as reader:
        for number in (17, 3, 29, 0, 18):
            assert np.array_equal(reader.frame(number), read_rgb(paths[number]))
        sequential = list(reader.frames(4, 21, size=(96, 56)))
        assert [n for n, _ in sequential] == list(range(4, 21))
        assert [frame_number(image) for _, image in sequential] == list(range(4, 21))
        assert sequential[0][1].shape == (56, 96, 3)
        thumbnails = reader.thumbnails(4, max_side=64)
        assert [frame_number(image) for _, image in thumbnails] == [n for n, _ in thumbnails]


def test_a_frame_of_another_size_comes_at_the_clips_size(tmp_path):
    write_frames(tmp_path, range(4))
    larger = cv2.resize(numbered_frame(2), (384, 224), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(tmp_path / "frame_0002.png"), larger[..., ::-1])
    with VideoReader(tmp_path) as reader:
        assert reader.frame(2).shape == (112, 192, 3)
        assert frame_number(reader.frame(2)) == 2
        assert {image.shape for _, image in reader.frames()} == {(112, 192, 3)}
        assert reader.resized_frames == {2: (384, 224)}


def test_a_render_says_which_frames_had_another_size(tmp_path, capsys):
    from zvstudio.cli import main

    write_frames(tmp_path / "shot", range(6))
    for number in (2, 3):
        larger = cv2.resize(numbered_frame(number), (384, 224), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(tmp_path / "shot" / f"frame_{number:04d}.png"), larger[..., ::-1])
    args = ["render", str(tmp_path / "shot"), "--style", "posterize", "-o"]
    assert main([*args, str(tmp_path / "out.mp4")]) == 0
    assert "frames 2, 3 are 384x224, not 192x112 like the first: scaled" in capsys.readouterr().err


def test_other_image_formats_read_as_their_pictures(tmp_path):
    picture = numbered_frame(5)
    deep = tmp_path / "deep"
    deep.mkdir()
    for number in range(2):  # 16-bit PNG, as compositors write
        cv2.imwrite(str(deep / f"d_{number:03d}.png"), picture[..., ::-1].astype(np.uint16) * 257)
    with VideoReader(deep) as reader:
        assert np.abs(reader.frame(1).astype(int) - picture).max() <= 1
    for suffix in (".tif", ".jpg", ".webp"):
        folder = tmp_path / suffix[1:]
        folder.mkdir()
        for number in range(2):
            cv2.imwrite(str(folder / f"x{number:02d}{suffix}"), picture[..., ::-1])
        with VideoReader(folder) as reader:
            image = reader.frame(1)
        assert frame_number(image) == 5
        assert np.abs(image.astype(int) - picture).mean() < 4, suffix


def test_an_exr_sequence_shows_its_linear_light_as_srgb(tmp_path):
    linear = np.zeros((16, 32, 3), np.float32)
    linear[:, :16] = 0.18  # mid grey in scene light
    linear[:, 16:] = 1.0
    for number in range(2):
        with av.open(str(tmp_path / f"plate.{number:04d}.exr"), "w", format="image2") as out:
            stream = out.add_stream("exr", rate=1)
            stream.width, stream.height, stream.pix_fmt = 32, 16, "gbrpf32le"
            frame = av.VideoFrame.from_ndarray(linear[..., [1, 2, 0]].copy(), format="gbrpf32le")
            for packet in [*stream.encode(frame), *stream.encode()]:
                out.mux(packet)
    with VideoReader(tmp_path) as reader:
        image = reader.frame(1).astype(int)
    assert abs(image[8, 4, 0] - 118) <= 2  # sRGB encodes 0.18 as 0.46
    assert image[8, 24].min() >= 254


def test_a_damaged_frame_is_named(tmp_path):
    write_frames(tmp_path, range(5))
    (tmp_path / "frame_0003.png").write_bytes(b"not a picture")
    with VideoReader(tmp_path) as reader:
        assert frame_number(reader.frame(2)) == 2
        with pytest.raises(MediaError, match=r"frame 3 .*frame_0003\.png is not a readable"):
            reader.frame(3)


# -- identity --------------------------------------------------------------------------------


def test_the_clip_hash_follows_the_frames_content(tmp_path):
    frames = write_frames(tmp_path / "s", range(6))
    first = clip_hash(tmp_path / "s")
    assert clip_hash(frames[2]) == first == clip_hash(str(tmp_path / "s" / "frame_%04d.png"))
    frames[4].write_bytes(frames[3].read_bytes())
    changed = clip_hash(tmp_path / "s")
    assert changed != first
    # Timing and sound are not the pictures: what was rendered from them stays valid.
    sound = clip_sound_hash(tmp_path / "s")
    (tmp_path / "s" / "timing.json").write_text('{"fps": 30}')
    assert clip_hash(tmp_path / "s") == changed
    assert clip_sound_hash(tmp_path / "s") != sound  # the sound at each frame moved
    # Renumbered frames are the same pictures: the same clip.
    (tmp_path / "s" / "timing.json").unlink()
    for frame in sorted((tmp_path / "s").glob("*.png"), reverse=True):
        number = int(frame.stem.split("_")[1])
        frame.rename(frame.with_name(f"frame_{number + 100:04d}.png"))
    assert clip_hash(tmp_path / "s") == changed


def test_an_export_never_replaces_the_clip_it_renders(tmp_path):
    write_frames(tmp_path / "shot", range(3))
    with pytest.raises(MediaError, match="the clip being rendered"):
        check_output(tmp_path / "shot", ExportSettings("png"), tmp_path / "shot" / "frame_0001.png")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    with pytest.raises(MediaError, match="the clip being rendered"):
        check_output(video, ExportSettings(), video)
    check_output(tmp_path / "out", ExportSettings("png"), tmp_path / "shot")


def test_files_named_after_a_sequence_sit_beside_its_folder(tmp_path):
    write_frames(tmp_path / "walk", range(3))
    pattern = tmp_path / "walk" / "frame_%04d.png"
    assert named_after_clip(pattern, ".zvs") == tmp_path / "walk.zvs"
    assert (
        named_after_clip(tmp_path / "walk.mp4", "_zvstudio.mp4") == tmp_path / "walk_zvstudio.mp4"
    )


# -- round trip ------------------------------------------------------------------------------


def test_a_png_export_reads_back_as_the_same_clip_with_timing_and_sound(tmp_path):
    """Export PNGs, retouch them elsewhere, import the folder: every frame's time and the
    sound come back."""
    source, times, _ = make_clip(tmp_path / "vfr.mp4", count=30, vfr=True, audio=True)
    export(source, tmp_path / "frames", ExportSettings("png"), first=4, stop=24)
    info = probe(tmp_path / "frames")
    assert info.frame_count == 20 and info.is_vfr and not info.timing_assumed
    shown = [info.index.seconds(n) for n in range(20)]
    assert np.allclose(shown, times[4:24] - times[4], atol=1e-6)
    assert info.has_audio and info.audio[0].codec == "pcm_s16le"
    with VideoReader(tmp_path / "frames") as reader:
        assert [frame_number(reader.frame(n)) for n in (0, 19)] == [4, 23]

    export(tmp_path / "frames", tmp_path / "again.mp4")
    again = probe(tmp_path / "again.mp4")
    assert again.frame_count == 20
    assert np.allclose(again.index.pts * float(again.index.time_base), shown, atol=2e-3)
    assert audio_seconds(tmp_path / "again.mp4") == pytest.approx(info.duration, abs=0.03)


# -- commands and projects -------------------------------------------------------------------


def test_render_and_probe_take_a_sequence(tmp_path, capsys):
    from zvstudio.cli import main

    source, _, _ = make_clip(tmp_path / "c.mp4", count=24, audio=True)
    export(source, tmp_path / "frames", ExportSettings("png"))
    (tmp_path / "frames" / "timing.json").unlink()  # a sequence from elsewhere: no timing
    assert main(["probe", str(tmp_path / "frames")]) == 0
    printed = capsys.readouterr().out
    assert "image sequence" in printed and "24.000 fps" in printed and "--set-fps" in printed
    assert "files      frames/frame_######.png, numbered 0-23" in printed
    assert "pcm_s16le, 48000 Hz, stereo" in printed  # a WAV without a channel mask

    frame = tmp_path / "frames" / "frame_000003.png"
    out = tmp_path / "out.mp4"
    assert (
        main(["render", str(frame), "--style", "cartoon", "--every", "8", "-q", "-o", str(out)])
        == 0
    )
    rendered = probe(out)
    assert rendered.frame_count == 24 and rendered.fps == 24
    assert audio_seconds(out) == pytest.approx(
        audio_seconds(tmp_path / "frames" / "audio.wav"), abs=0.03
    )

    assert main(["render", str(tmp_path / "frames"), "-q", "-o", str(tmp_path / "frames")]) == 1
    assert "the clip being rendered" in capsys.readouterr().err
    assert len(list((tmp_path / "frames").glob("*.png"))) == 24


def test_a_project_keeps_a_sequence_by_its_pattern(tmp_path):
    from zvstudio.project import (
        ClipMissingError,
        ClipRef,
        Project,
        check_clip,
        load_project,
        save_project,
    )

    frames = write_frames(tmp_path / "walk", range(8))
    clip = ClipRef.from_file(frames[5])
    assert clip.path == str(tmp_path / "walk" / "frame_%04d.png")
    assert clip.content_hash == clip_hash(tmp_path / "walk")
    save_project(Project(clip=clip), tmp_path / "walk.zvs")
    project = load_project(tmp_path / "walk.zvs")
    assert project.clip == clip
    check_clip(project, tmp_path / "walk.zvs")
    (tmp_path / "walk").rename(tmp_path / "moved")
    with pytest.raises(ClipMissingError):
        check_clip(project, tmp_path / "walk.zvs")


def test_a_sequence_that_is_there_but_unreadable_still_exists(tmp_path):
    # A project whose sequence lost a frame is not "moved": opening it says what is wrong.
    write_frames(tmp_path, [1, 2, 4])
    assert clip_exists(tmp_path / "frame_%04d.png")
    with pytest.raises(MediaError, match="missing frames 3"):
        probe(tmp_path / "frame_%04d.png")
    odd = tmp_path / "odd"
    write_frames(odd, [7], name="take#2_{:03d}.png")  # a real name that looks like a pattern
    assert find_sequence(odd / "take#2_007.png").pattern == str(odd / "take#2_%03d.png")


def test_a_png_export_of_a_sequence_keeps_its_frame_numbers(tmp_path):
    from zvstudio.cli import main

    write_frames(tmp_path / "plate", range(1001, 1013))  # numbered from 1001, as VFX plates are
    out = tmp_path / "out"
    args = ["render", str(tmp_path / "plate"), "--style", "posterize", "--from", "2", "-q"]
    assert main([*args, "-o", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png"))[:2] == ["frame_001003.png", "frame_001004.png"]
    again = find_sequence(out)
    assert again.numbers == tuple(range(1003, 1013))
    assert not probe(out).timing_assumed  # timing.json's first frame is the first file's
    propagated = tmp_path / "propagated"
    key = str(tmp_path / "plate" / "frame_1001.png")
    assert (
        main(
            ["propagate", str(tmp_path / "plate"), "--key", f"0={key}", "-q", "-o", str(propagated)]
        )
        == 0
    )
    assert find_sequence(propagated).numbers == tuple(range(1001, 1013))
    every_other = tmp_path / "twos"
    write_frames(every_other, range(1, 13, 2))
    assert main(["render", str(every_other), "--style", "posterize", "-q", "-o", str(out)]) == 0
    assert find_sequence(out).numbers == tuple(range(6))  # by position where numbers skip


def test_exr_plates_render_to_exr_frames_with_their_numbers(tmp_path):
    """The compositing round trip: EXR plates numbered from 1001 in, EXR frames with the same
    numbers out, in linear light again (read back as the same pictures the render made)."""
    from zvstudio.cli import main
    from zvstudio.media.writer import encode_image

    plate = tmp_path / "plate"
    plate.mkdir()
    for position, number in enumerate(range(1001, 1009)):
        (plate / f"sh010.{number}.exr").write_bytes(encode_image(numbered_frame(position), "exr"))
    common = [str(plate), "--style", "posterize", "--every", "4", "-q"]
    assert main(["render", *common, "--format", "exr", "-o", str(tmp_path / "comp")]) == 0
    assert main(["render", *common, "-o", str(tmp_path / "check")]) == 0  # the same, as PNG
    comp = find_sequence(tmp_path / "comp")
    assert comp.suffix == ".exr" and comp.numbers == tuple(range(1001, 1009))
    with VideoReader(tmp_path / "comp") as exr, VideoReader(tmp_path / "check") as png:
        for n in (0, 5):
            assert np.abs(exr.frame(n).astype(int) - png.frame(n).astype(int)).max() <= 1
