"""Probe, frame-exact reading, proxies and thumbnails on synthetic and real clips."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import SHARED_CLIPS, needs_shared_clips
from helpers import frame_number, make_clip, numbered_frame

from zvstudio.errors import MediaError
from zvstudio.media import FrameCache, Proxy, VideoReader, build_proxy, probe, proxy_path

CLIP_KINDS = {
    "cfr-bframes-audio": dict(audio=True),
    "vfr-bframes": dict(vfr=True),
    "rotated-90": dict(rotation=90),
    "rotated-270-audio": dict(rotation=270, audio=True),
    "intra-only": dict(bframes=0, gop=1),
}


@pytest.fixture(params=list(CLIP_KINDS), scope="module")
def clip(request, tmp_path_factory):
    kwargs = CLIP_KINDS[request.param]
    path = tmp_path_factory.mktemp("clips") / f"{request.param}.mp4"
    return make_clip(path, **kwargs), kwargs


def test_probe_reports_the_written_stream(clip):
    (path, times, _), kwargs = clip
    info = probe(path)
    assert info.frame_count == len(times) == 48
    assert info.codec == "h264"
    assert info.is_vfr == kwargs.get("vfr", False)
    assert info.rotation == kwargs.get("rotation", 0)
    assert (info.display_width, info.display_height) == (192, 112)
    if info.rotation in (90, 270):
        assert (info.width, info.height) == (112, 192)  # stored pixels are turned
    last_gap = times[-1] - times[-2]
    assert info.duration == pytest.approx(
        times[-1] + (0.04 if not info.is_vfr else last_gap), abs=0.07
    )
    if not info.is_vfr:
        assert float(info.fps) == pytest.approx(25.0)
    assert info.has_audio == kwargs.get("audio", False)
    if info.has_audio:
        assert info.audio[0].codec == "aac"
        assert info.audio[0].sample_rate == 48000
        assert info.audio[0].channels == 2


def test_frame_timestamps_match_the_written_ones(clip):
    (path, times, _), _ = clip
    index = probe(path).index
    assert np.allclose([index.seconds(n) for n in range(len(index))], times, atol=1e-6)


def test_random_access_returns_exactly_the_requested_frame(clip):
    (path, times, _), _ = clip
    order = list(range(len(times))) * 2
    random.Random(3).shuffle(order)
    with VideoReader(path, cache=FrameCache(0)) as reader:
        assert [frame_number(reader.frame(n)) for n in order] == order
        assert reader.frame(5).shape == (112, 192, 3)


def test_sequential_reading_equals_random_access(clip):
    (path, _, _), _ = clip
    with VideoReader(path, cache=FrameCache(0)) as reader:
        sequential = list(reader.frames(7, 31))
        assert [n for n, _ in sequential] == list(range(7, 31))
        for number, image in sequential[::5]:
            assert np.array_equal(image, reader.frame(number))


def test_scaled_frames_keep_orientation(clip):
    (path, _, _), _ = clip
    with VideoReader(path) as reader:
        small = reader.frame(13, size=(96, 56))
        assert small.shape == (56, 96, 3)
        assert frame_number(small) == 13


def test_a_reader_with_an_output_size_serves_every_frame_at_it(clip):
    (path, _, _), _ = clip
    with VideoReader(path) as plain:
        width, height = plain.size
        scaled = VideoReader(path, output_size=(width // 2, height // 2))
        assert scaled.size == (width // 2, height // 2)
        assert np.array_equal(scaled.frame(13), plain.frame(13, size=scaled.size))
        sequence = dict(scaled.frames(10, 14))
        assert all(np.array_equal(sequence[n], plain.frame(n, size=scaled.size)) for n in sequence)
        assert scaled.frame(13, size=(width, height)).shape == (height, width, 3)  # asked for
        scaled.close()
        assert VideoReader(path, output_size=plain.size).size == plain.size


def test_frame_outside_the_clip_is_an_index_error(clip):
    (path, _, _), _ = clip
    with VideoReader(path) as reader, pytest.raises(IndexError):
        reader.frame(48)


def test_frame_cache_is_bounded_and_evicts_least_recently_used():
    frame = np.zeros((10, 10, 3), np.uint8)
    cache = FrameCache(max_bytes=3 * frame.nbytes)
    for key in range(3):
        cache.put((key,), frame + key)
    assert cache.get((0,)) is not None  # 0 is now the most recently used
    cache.put((3,), frame)
    assert cache.get((1,)) is None
    assert cache.get((0,)) is not None and cache.get((2,)) is not None
    assert cache.nbytes == 3 * frame.nbytes
    cache.put(("huge",), np.zeros((100, 100, 3), np.uint8))  # larger than the cache: skipped
    assert len(cache) == 3


def test_reader_serves_repeated_requests_from_the_cache(tmp_path):
    path, _, _ = make_clip(tmp_path / "c.mp4", count=12)
    with VideoReader(path) as reader:
        first = reader.frame(4)
        assert reader.frame(4) is first
        assert not first.flags.writeable  # shared cached frames must not be modified


def test_thumbnails_come_from_keyframes_in_order(tmp_path):
    path, _, _ = make_clip(tmp_path / "c.mp4", count=60, gop=10)
    with VideoReader(path) as reader:
        thumbs = reader.thumbnails(6, max_side=96)
    numbers = [n for n, _ in thumbs]
    assert numbers == sorted(numbers) and len(numbers) == 6
    assert all(n % 10 == 0 for n in numbers)  # keyframes every 10 frames
    for number, image in thumbs:
        assert max(image.shape[:2]) <= 96
        assert frame_number(image) == number


def test_proxy_previews_match_the_exact_frames(tmp_path):
    path, _, _ = make_clip(tmp_path / "c.mp4", count=30, rotation=90)
    with VideoReader(path) as reader:
        proxy = build_proxy(reader, max_side=96)
        assert proxy.path == proxy_path(path, 96)
        assert len(proxy) == 30
        reader.attach_proxy(proxy)
        for number in (0, 17, 29):
            preview = reader.preview(number, max_side=96)
            exact = reader.frame(number, size=(96, 56))
            assert preview.shape == exact.shape == (56, 96, 3)
            assert frame_number(preview) == number
            assert np.abs(preview.astype(int) - exact).mean() < 6  # JPEG, not a different frame
        # Building again reuses the proxy instead of decoding the clip again.
        assert (
            build_proxy(reader, max_side=96).path.stat().st_mtime_ns
            == proxy.path.stat().st_mtime_ns
        )


def test_proxy_building_shows_each_frame_to_an_observer_and_progress(tmp_path):
    path, _, _ = make_clip(tmp_path / "c.mp4", count=12)
    seen, reports = [], []
    with VideoReader(path) as reader:
        proxy = build_proxy(reader, 96, progress=reports.append, each_frame=seen.append)
        assert [frame_number(image) for image in seen] == list(range(12))
        # Progress shows the frame reached, for a live thumbnail.
        assert [(r.done, frame_number(r.image)) for r in reports] == [(1, 0), (11, 10), (12, 11)]
        assert all(np.array_equal(image.shape, proxy.frame(0).shape) for image in seen)
        build_proxy(reader, 96, each_frame=seen.append)  # reused: nothing decoded, nothing seen
    assert len(seen) == 12


def test_damaged_proxy_is_rejected_and_rebuilt(tmp_path):
    path, _, _ = make_clip(tmp_path / "c.mp4", count=10)
    target = tmp_path / "p.zvproxy"
    target.write_bytes(b"not a proxy at all")
    with pytest.raises(MediaError, match="damaged proxy"):
        Proxy(target)
    with VideoReader(path) as reader:
        assert len(build_proxy(reader, 64, destination=target)) == 10


def test_preview_without_proxy_decodes_at_preview_size(tmp_path):
    path, _, _ = make_clip(tmp_path / "c.mp4", count=10)
    with VideoReader(path) as reader:
        preview = reader.preview(3, max_side=96)
    assert preview.shape == (56, 96, 3) and frame_number(preview) == 3


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(MediaError, match="file not found"):
        probe(tmp_path / "nope.mp4")


def test_non_video_file_is_a_clear_error(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("these are not video frames\n" * 100)
    with pytest.raises(MediaError, match="not a video file"):
        probe(text)


def test_truncated_file_is_a_clear_error(tmp_path):
    path, _, _ = make_clip(tmp_path / "c.mp4", count=40)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the index (moov) at the end is lost
    with pytest.raises(MediaError, match="cannot read"):
        probe(path)


def test_a_file_cut_short_names_the_frames_that_still_render(tmp_path):
    import re

    import av

    path = tmp_path / "cut.mp4"
    rng = np.random.default_rng(0)
    # The index first (faststart), as cameras and web exports write it: a copy cut short
    # still lists every frame, but the later ones are gone.
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for _ in range(40):
            image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    info = probe(path)
    with VideoReader(path, info=info) as reader, pytest.raises(MediaError) as failure:
        for _ in reader.frames():
            pass
    found = re.search(r"cannot decode frame (\d+)", failure.value.message)
    assert found is not None, failure.value.message
    broken = int(found.group(1))
    assert 0 < broken < info.frame_count
    assert f"frames 0..{broken - 1} may still render" in failure.value.hint
    with VideoReader(path, info=info) as reader:  # and they do
        assert len(list(reader.frames(0, broken))) == broken


def test_audio_only_file_has_no_video(tmp_path):
    import av

    path = tmp_path / "tone.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((2, 1024), np.float32), format="fltp", layout="stereo"
        )
        frame.sample_rate = 48000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(MediaError, match="no video stream"):
        probe(path)


def test_numbered_frames_read_back():
    assert [frame_number(numbered_frame(n)) for n in (0, 1, 517, 1023)] == [0, 1, 517, 1023]


@needs_shared_clips
@pytest.mark.parametrize("clip_path", SHARED_CLIPS, ids=lambda p: p.name)
def test_real_clip_random_access_matches_sequential_decoding(clip_path):
    expected_counts = {
        "pexels-antoni-shkraba-8048492-540x960-25fps.mp4": 353,
        "pexels-cottonbro-studio-6649832-960x506-25fps.mp4": 270,
        "pexels-koolshooters-7322716.mp4": 231,
        "boxer-punching-towards-camera.mp4": 32,
        "car-turn.mp4": 80,
        "dog.mp4": 300,
        "music.mp4": 240,
    }
    info = probe(clip_path)
    if clip_path.name in expected_counts:
        assert info.frame_count == expected_counts[clip_path.name]
    picks = sorted({0, info.frame_count - 1, *random.Random(5).sample(range(info.frame_count), 6)})
    with VideoReader(clip_path, cache=FrameCache(0), info=info) as reader:
        small = (info.display_width // 4 * 2, info.display_height // 4 * 2)
        sequential = {n: image for n, image in reader.frames(size=small) if n in picks}
        for number in reversed(picks):
            assert np.array_equal(reader.frame(number, size=small), sequential[number]), number
