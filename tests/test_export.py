"""Export round trips: frame count, timestamps, content and audio survive every format."""

from __future__ import annotations

import errno
import io
import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import frame_number, make_clip, numbered_frame

from zvstudio.errors import MediaError
from zvstudio.media import (
    AudioSource,
    ExportSettings,
    FrameTiming,
    VideoReader,
    VideoWriter,
    format_for,
    probe,
)
from zvstudio.media.sequence import clip_audio_file
from zvstudio.media.synth import Tone, write_clip
from zvstudio.media.writer import encode_image

AUDIO_FRAME_SECONDS = 1024 / 48000


def audio_seconds(path) -> float:
    """Decoded audio duration: samples actually played, priming and padding removed."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.rate


def export(source, target, settings=None, first=0, stop=None, transform=None):
    """Export frames first..stop-1 of `source` like the render path does."""
    settings = settings or ExportSettings()
    info = probe(source)
    stop = info.frame_count if stop is None else stop
    timing = FrameTiming.from_index(info.index, first, stop)
    audio = None
    if info.has_audio:
        audio = AudioSource(
            clip_audio_file(source),  # an image sequence's sound is beside it
            start=info.index.seconds(first) + float(info.index.pts[0] * info.index.time_base),
            duration=timing.duration,
            whole_clip=(first == 0 and stop == info.frame_count),
        )
    with (
        VideoReader(source, info=info) as reader,
        VideoWriter(target, reader.size, timing, settings, audio, first_number=first) as writer,
    ):
        for _, image in reader.frames(first, stop):
            writer.write(transform(image) if transform else image)
    return timing


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory):
    path, times, _ = make_clip(
        tmp_path_factory.mktemp("src") / "vfr.mp4", count=40, vfr=True, audio=True
    )
    return path, times


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("out.mp4", ExportSettings("h264")),
        ("out.mp4", ExportSettings("h265", crf=20)),
        ("out.mov", ExportSettings("prores")),
        ("out.mkv", ExportSettings("h264")),
    ],
    ids=["h264-mp4", "h265-mp4", "prores-mov", "h264-mkv"],
)
def test_video_export_keeps_frames_timing_and_audio(vfr_clip, tmp_path, name, settings):
    source, times = vfr_clip
    target = tmp_path / name
    export(source, target, settings)
    out = probe(target)
    assert out.frame_count == len(times)
    assert out.is_vfr
    # Matroska stores milliseconds; MP4 and MOV keep the source's exact ticks.
    tolerance = 5e-4 if name.endswith(".mkv") else 1e-6
    assert np.allclose(
        [out.index.seconds(n) for n in range(out.frame_count)], times, atol=tolerance
    )
    assert out.duration == pytest.approx(probe(source).duration, abs=2 * tolerance)
    assert out.has_audio
    assert audio_seconds(target) == pytest.approx(audio_seconds(source), abs=AUDIO_FRAME_SECONDS)
    with VideoReader(target) as reader:
        assert [frame_number(image) for _, image in reader.frames()] == list(range(len(times)))
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def write_numbered(target, timing: FrameTiming) -> None:
    with VideoWriter(target, (192, 112), timing) as writer:
        for number in range(len(timing.pts)):
            writer.write(numbered_frame(number))


def assert_probed_timing(target, timing: FrameTiming, atol: float):
    """Every frame where `timing` puts it (within `atol` s), and the duration to 1 ms."""
    out = probe(target)
    assert out.frame_count == len(timing.pts)
    np.testing.assert_allclose(
        [out.index.seconds(n) for n in range(out.frame_count)],
        [timing.seconds(n) for n in range(len(timing.pts))],
        atol=atol,
    )
    assert out.duration == pytest.approx(timing.duration, abs=1e-3)
    return out


@pytest.mark.parametrize("name", ["out.mp4", "out.mov"])
def test_last_frame_keeps_its_duration_when_b_frames_reorder_the_end(tmp_path, name):
    # Frames at 60, 30, 25 and 15 fps in 90 kHz ticks, and a last frame of 40.3 ms. MP4/MOV end
    # the track from the last packet in decode order, which with B-frames is not the last shown.
    rates = [30, 25, 15, 15, 60, 60, 15, 15, 60, 30, 15, 30, 30, 15, 30]
    gaps = [90000 // rate for rate in rates]
    timing = FrameTiming(Fraction(1, 90000), np.cumsum([0, *gaps]), last_duration=3625)
    target = tmp_path / name
    write_numbered(target, timing)

    # The case under test: B-frames, and a last decoded packet that is not the last shown.
    with av.open(str(target)) as container:
        decode_order = [p.pts for p in container.demux(video=0) if p.size]
    with av.open(str(target)) as container:
        types = [frame.pict_type for frame in container.decode(video=0)]
    assert av.video.frame.PictureType.B in types
    assert decode_order[-1] != max(decode_order)

    out = assert_probed_timing(target, timing, atol=1e-3)
    # The average rate is frames / duration, not stretched or shrunk by the end's fix.
    assert float(out.fps) == pytest.approx(len(timing.pts) / timing.duration, rel=1e-3)
    with VideoReader(target) as reader:
        assert [frame_number(image) for _, image in reader.frames()] == list(range(len(gaps) + 1))


@pytest.mark.parametrize("name", ["out.mp4", "out.mov"])
def test_last_frame_keeps_its_duration_when_it_is_also_the_last_decoded(tmp_path, name):
    # The timing of the synthetic VFR clip. Noise frames leave no B-frame after the last one, so
    # the packet that closes the sample durations is also the last frame shown; the duration
    # that makes their sum exact is shorter than its own, and alone it would end the edit list
    # (and the video) early.
    gaps = [3000, 3600, 6000, 6000, 1500, 1500, 6000, 6000, 1500, 3000, 6000, 3000, 3000, 6000]
    gaps += [3000, 3000, 3600, 3600, 1500]
    timing = FrameTiming(Fraction(1, 90000), np.cumsum([0, *gaps]), last_duration=3630)
    target = tmp_path / name
    noise = np.random.default_rng(0)
    with VideoWriter(target, (96, 64), timing) as writer:
        for _ in range(len(timing.pts)):
            writer.write(noise.integers(0, 256, (64, 96, 3), dtype=np.uint8))

    with av.open(str(target)) as container:
        packets = [(p.pts, p.dts) for p in container.demux(video=0) if p.size]
    last_pts, last_dts = packets[-1]
    assert last_pts == max(pts for pts, _ in packets)
    sum_fixing_duration = timing.pts[-1] + timing.last_duration - last_dts + packets[0][1]
    assert sum_fixing_duration < timing.last_duration  # the case under test
    out = assert_probed_timing(target, timing, atol=1e-6)
    assert float(out.fps) == pytest.approx(len(timing.pts) / timing.duration, rel=1e-3)


@pytest.mark.parametrize("name", ["out.mp4", "out.mov"])
def test_last_frame_keeps_its_duration_when_the_first_frames_are_the_longest(tmp_path, name):
    # 15 fps first, 60 fps at the end: the encoder's decode times, a few frames behind, already
    # run past the end of the last frame, so no last-packet duration can shorten them.
    gaps = [6000, 6000, 6000, 3000, 3000, 1500, 1500, 1500, 1500]
    timing = FrameTiming(Fraction(1, 90000), np.cumsum([0, *gaps]), last_duration=1500)
    target = tmp_path / name
    write_numbered(target, timing)
    assert_probed_timing(target, timing, atol=1e-6)


def ffprobe_video(path) -> dict | None:
    """ffprobe's view of the first video stream, or None where ffprobe is not installed."""
    if shutil.which("ffprobe") is None:
        return None
    command = ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_streams", "-of", "json"]
    result = subprocess.run(
        [*command, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)["streams"][0]


@pytest.mark.parametrize("name", ["out.mp4", "out.mov"])
@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001)], ids=["25", "29.97"])
@pytest.mark.parametrize("count", [5, 7, 8, 12])
def test_short_constant_rate_outputs_keep_their_rate_and_duration(tmp_path, name, fps, count):
    # The end-of-stream duration fix must not change what players and tools report for short
    # clips, where one stretched sample moves the average rate a lot (e.g. 15 fps for 25).
    timing = FrameTiming.constant(fps, count)
    target = tmp_path / name
    write_numbered(target, timing)
    out = probe(target)
    assert out.frame_count == count and not out.is_vfr
    assert out.fps == fps
    assert out.duration == pytest.approx(count / fps, abs=1e-6)
    with av.open(str(target)) as container:
        stream = container.streams.video[0]
        assert (stream.average_rate, stream.guessed_rate, stream.base_rate) == (fps, fps, fps)
        assert float(stream.duration * stream.time_base) == pytest.approx(count / fps, abs=1e-6)
    reported = ffprobe_video(target)
    if reported is not None:
        assert Fraction(reported["r_frame_rate"]) == fps
        assert Fraction(reported["avg_frame_rate"]) == fps
        assert float(reported["duration"]) == pytest.approx(count / fps, abs=1e-3)


def test_whole_clip_export_copies_the_audio_packets(vfr_clip, tmp_path):
    source, _ = vfr_clip
    target = tmp_path / "copy.mp4"
    export(source, target)

    def packets(path):
        with av.open(str(path)) as container:
            return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]

    assert packets(target) == packets(source)


def test_range_export_cuts_video_and_audio_together(vfr_clip, tmp_path):
    source, times = vfr_clip
    target = tmp_path / "range.mp4"
    timing = export(source, target, first=10, stop=30)
    out = probe(target)
    assert out.frame_count == 20
    expected = times[10:30] - times[10]
    assert np.allclose([out.index.seconds(n) for n in range(20)], expected, atol=1e-4)
    assert audio_seconds(target) == pytest.approx(timing.duration, abs=AUDIO_FRAME_SECONDS)
    with VideoReader(target) as reader:
        assert frame_number(reader.frame(0)) == 10 and frame_number(reader.frame(19)) == 29


def test_png_sequence_export_has_frames_timing_and_audio(vfr_clip, tmp_path):
    source, times = vfr_clip
    target = tmp_path / "frames"
    timing = export(source, target, ExportSettings("png"), first=5, stop=25)
    names = sorted(p.name for p in target.glob("frame_*.png"))
    assert names == [f"frame_{n:06d}.png" for n in range(5, 25)]
    recorded = json.loads((target / "timing.json").read_text())
    tick = Fraction(recorded["time_base"])
    assert np.allclose(
        [float(p * tick) for p in recorded["pts"]], times[5:25] - times[5], atol=1e-6
    )
    assert audio_seconds(target / "audio.wav") == pytest.approx(timing.duration, abs=1e-3)
    import cv2

    image = cv2.cvtColor(cv2.imread(str(target / "frame_000017.png")), cv2.COLOR_BGR2RGB)
    assert frame_number(image) == 17


def test_png_export_is_lossless(tmp_path):
    source, _, _ = make_clip(tmp_path / "c.mp4", count=5)
    target = tmp_path / "frames"
    export(source, target, ExportSettings("png"))
    import cv2

    with VideoReader(source) as reader:
        exact = reader.frame(2)
    saved = cv2.cvtColor(cv2.imread(str(target / "frame_000002.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(saved, exact)


@pytest.mark.parametrize(
    ("fmt", "suffix", "tolerance"), [("tiff", ".tif", 0), ("dpx", ".dpx", 0), ("exr", ".exr", 1)]
)
def test_image_frame_exports_read_back_as_the_same_pictures(
    vfr_clip, tmp_path, fmt, suffix, tolerance
):
    """TIFF, DPX and EXR frames: named by frame number, with timing and sound beside them, and
    read back as a clip with the pictures that were written (EXR through half floats)."""
    source, _ = vfr_clip
    target = tmp_path / "frames"
    export(source, target, ExportSettings(fmt), first=3, stop=9)
    assert sorted(p.name for p in target.glob("frame_*")) == [
        f"frame_{n:06d}{suffix}" for n in range(3, 9)
    ]
    assert (target / "timing.json").is_file() and (target / "audio.wav").is_file()
    info = probe(target)
    assert info.is_sequence and info.codec == suffix.lstrip(".")
    assert info.frame_count == 6 and info.is_vfr and info.has_audio
    with VideoReader(source) as original, VideoReader(target) as written:
        for n in range(6):
            expected = original.frame(3 + n).astype(int)
            assert np.abs(written.frame(n).astype(int) - expected).max() <= tolerance


def test_exr_frames_hold_linear_light():
    """What compositors expect: an sRGB mid grey (128) is 0.2158 in linear light."""
    image = np.zeros((4, 6, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 128, 255, 0
    with av.open(io.BytesIO(encode_image(image, "exr")), format="exr_pipe") as container:
        frame = next(container.decode(video=0))
    linear = frame.to_ndarray(format="gbrpf32le")  # channels in R, G, B order
    assert linear.shape == (4, 6, 3)
    assert np.allclose(linear[0, 0], [0.2158, 1.0, 0.0], atol=5e-4)

    # With alpha, premultiplied as OpenEXR has it: colour times opacity.
    translucent = np.dstack([image, np.full((4, 6), 128, np.uint8)])
    with av.open(io.BytesIO(encode_image(translucent, "exr")), format="exr_pipe") as container:
        rgba = next(container.decode(video=0)).to_ndarray(format="gbrapf32le")
    assert np.allclose(rgba[0, 0], [0.2158 * 0.502, 0.502, 0.0, 0.502], atol=1e-3)
    with pytest.raises(MediaError, match="no alpha"):
        encode_image(translucent, "dpx")


@pytest.mark.parametrize(
    ("name", "preferred", "chosen"),
    [
        ("frames", None, "png"),
        ("frames", "exr", "exr"),
        ("frames", "h264", "png"),
        ("out.mp4", None, "h264"),
        ("out.mp4", "dpx", "h264"),
        ("out.mp4", "prores", "h264"),
        ("out.mov", "prores", "prores"),
    ],
)
def test_the_export_format_fits_the_output(name, preferred, chosen):
    assert format_for(name, preferred) == chosen


def test_export_without_audio_when_asked(vfr_clip, tmp_path):
    source, _ = vfr_clip
    target = tmp_path / "silent.mp4"
    export(source, target, ExportSettings(audio=False))
    assert not probe(target).has_audio


def test_source_without_audio_exports_video_only(tmp_path):
    source, _, _ = make_clip(tmp_path / "c.mp4", count=8)
    export(source, tmp_path / "out.mov", ExportSettings("prores"))
    out = probe(tmp_path / "out.mov")
    assert out.frame_count == 8 and not out.has_audio and out.codec == "prores"


def test_audio_the_container_cannot_hold_is_reencoded_to_aac(tmp_path):
    source = tmp_path / "pcm.mov"
    frames = (np.full((64, 96, 3), n * 10, np.uint8) for n in range(25))
    write_clip(
        source, frames, fps=25, tone=Tone(codec="pcm_s16le"), options={"preset": "ultrafast"}
    )
    assert probe(source).audio[0].codec == "pcm_s16le"
    target = tmp_path / "out.mp4"
    export(source, target)
    assert probe(target).audio[0].codec == "aac"
    assert audio_seconds(target) == pytest.approx(1.0, abs=AUDIO_FRAME_SECONDS)


def test_exported_colours_stay_close_to_the_source(tmp_path):
    source, _, _ = make_clip(tmp_path / "c.mp4", count=4)
    target = tmp_path / "out.mp4"
    export(source, target, ExportSettings(crf=10))
    with VideoReader(source) as a, VideoReader(target) as b:
        difference = np.abs(a.frame(2).astype(int) - b.frame(2)).mean()
    assert difference < 3.0  # a colour-matrix mismatch would shift colours by far more


# -- failures lose nothing -----------------------------------------------------------------------
def test_failure_mid_export_leaves_the_existing_file_untouched(tmp_path):
    source, _, _ = make_clip(tmp_path / "c.mp4", count=12)
    target = tmp_path / "out.mp4"
    target.write_bytes(b"the artist's previous export")

    def explode_on_frame_five(image, seen=[]):  # noqa: B006 - a counter across calls
        seen.append(1)
        if len(seen) == 5:
            raise RuntimeError("render failed")
        return image

    with pytest.raises(RuntimeError):
        export(source, target, transform=explode_on_frame_five)
    assert target.read_bytes() == b"the artist's previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mp4", "out.mp4"]


def test_disk_full_is_reported_and_cleaned_up(tmp_path, monkeypatch):
    source, _, _ = make_clip(tmp_path / "c.mp4", count=12)
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous")
    real_mux = av.container.OutputContainer.mux
    calls = []

    def full_disk(self, packets):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mux(self, packets)

    monkeypatch.setattr(av.container.OutputContainer, "mux", full_disk)
    with pytest.raises(MediaError, match="No space left") as caught:
        export(source, target)
    assert "disk space" in str(caught.value)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mp4", "out.mp4"]


@pytest.mark.parametrize("failing_frame", [2, 11])  # mid-export, and the last frame
def test_disk_full_while_writing_frames_keeps_the_earlier_export(
    tmp_path, monkeypatch, failing_frame
):
    """Frames are compressed and written on worker threads: a failure there still reaches
    the export, which leaves the folder as it was."""
    source, _, _ = make_clip(tmp_path / "c.mp4", count=12)
    target = tmp_path / "frames"
    export(source, target, ExportSettings("exr"))
    before = sorted(p.name for p in target.iterdir())
    real_write = Path.write_bytes

    def full_disk(self, data):
        if self.name == f"frame_{failing_frame:06d}.exr":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(MediaError, match="No space left"):
        export(source, target, ExportSettings("exr"))
    assert sorted(p.name for p in target.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mp4", "frames"]


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("missing/out.mp4", ExportSettings(), "does not exist"),
        ("out.mp4", ExportSettings("prores"), "ProRes needs a .mov"),
        ("out.avi", ExportSettings(), "unknown output type"),
        ("out.mp4", ExportSettings("png"), "does not match"),
        ("out.mov", ExportSettings("exr"), "does not match"),
        ("frames", ExportSettings("h264"), "does not match"),
        ("frames", ExportSettings("prores"), "does not match"),
        ("out.mp4", ExportSettings("vp9"), "unknown export format"),
        ("out.mp4", ExportSettings(alpha=True), "h264 has no alpha channel"),
        ("frames", ExportSettings("dpx", alpha=True), "dpx has no alpha channel"),
    ],
)
def test_impossible_outputs_fail_before_writing(tmp_path, name, settings, message):
    timing = FrameTiming.constant(Fraction(25), 3)
    with pytest.raises(MediaError, match=message):
        VideoWriter(tmp_path / name, (64, 32), timing, settings)
    assert list(tmp_path.iterdir()) == []


def test_png_export_refuses_a_folder_of_other_files(tmp_path):
    folder = tmp_path / "holiday"
    folder.mkdir()
    (folder / "photo.png").write_bytes(b"precious")
    with pytest.raises(MediaError, match="not empty"):
        VideoWriter(folder, (64, 32), FrameTiming.constant(Fraction(25), 3), ExportSettings("png"))
    assert (folder / "photo.png").read_bytes() == b"precious"


def test_png_export_replaces_its_own_earlier_export(tmp_path):
    source, _, _ = make_clip(tmp_path / "c.mp4", count=6)
    target = tmp_path / "frames"
    export(source, target, ExportSettings("png"))
    export(source, target, ExportSettings("png"), first=2, stop=4)
    assert sorted(p.name for p in target.glob("*.png")) == ["frame_000002.png", "frame_000003.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mp4", "frames"]


def test_writer_rejects_wrong_frame_shape_and_extra_frames(tmp_path):
    timing = FrameTiming.constant(Fraction(25), 1)
    with VideoWriter(tmp_path / "o.mp4", (64, 32), timing) as writer:
        with pytest.raises(ValueError, match="64x32"):
            writer.write(np.zeros((64, 64, 3), np.uint8))
        writer.write(np.zeros((32, 64, 3), np.uint8))
        with pytest.raises(MediaError, match="more frames"):
            writer.write(np.zeros((32, 64, 3), np.uint8))
    assert probe(tmp_path / "o.mp4").frame_count == 1


def test_exports_get_the_users_normal_permissions(tmp_path):
    source, _, _ = make_clip(tmp_path / "c.mp4", count=3)
    reference = tmp_path / "reference.txt"
    reference.write_text("made with the user's umask")
    export(source, tmp_path / "out.mp4")
    export(source, tmp_path / "frames", ExportSettings("png"))
    assert (tmp_path / "out.mp4").stat().st_mode == reference.stat().st_mode
    (tmp_path / "reference").mkdir()
    assert (tmp_path / "frames").stat().st_mode == (tmp_path / "reference").stat().st_mode
