"""`zvstudio bench decode`: how fast clips decode sequentially, exactly at random, and as
previews from a proxy (what scrubbing the timeline costs)."""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import cv2

from zvstudio.bench import machine, shared_clips, timing_summary
from zvstudio.media import FrameCache, VideoReader, build_proxy, probe

PREVIEW_SIDE = 640
PREVIEW_TARGET_MS = 50.0


def make_1080p_clip(path: Path, seconds: float = 10.0, fps: int = 25) -> Path:
    """A long-GOP 1080p H.264 clip (the demo scene scaled up), as phones and cameras write."""
    from zvstudio.demo import DemoScene
    from zvstudio.media.synth import write_clip

    scene = DemoScene()
    count = int(seconds * fps)
    frames = (
        cv2.resize(scene.frame(n % scene.frame_count), (1920, 1080), interpolation=cv2.INTER_CUBIC)
        for n in range(count)
    )
    write_clip(
        path, frames, fps=fps, options={"preset": "veryfast", "crf": "20", "g": "250", "bf": "3"}
    )
    return path


def bench_clip(path: Path, samples: int, seed: int = 0) -> dict:
    started = time.perf_counter()
    info = probe(path)
    index_seconds = time.perf_counter() - started
    rng = random.Random(seed)
    picks = [rng.randrange(info.frame_count) for _ in range(samples)]
    with VideoReader(path, cache=FrameCache(0), info=info) as reader:
        sequential = _sequential_fps(reader)
        exact = _timed(lambda n: reader.frame(n), picks)
        uncached = _timed(lambda n: reader.preview(n, PREVIEW_SIDE), picks)
        with tempfile.TemporaryDirectory() as scratch:
            started = time.perf_counter()
            proxy = build_proxy(reader, PREVIEW_SIDE, Path(scratch) / "bench.zvproxy")
            proxy_seconds = time.perf_counter() - started
            reader.attach_proxy(proxy)
            preview = _timed(lambda n: reader.preview(n, PREVIEW_SIDE), picks)
            proxy.close()
    return {
        "clip": path.name,
        "size": [info.display_width, info.display_height],
        "codec": info.codec,
        "frames": info.frame_count,
        "fps": round(float(info.fps), 3),
        "index_seconds": round(index_seconds, 3),
        "sequential_decode_fps": round(sequential, 1),
        "random_exact_full_res": exact,
        "random_preview_without_proxy": uncached,
        "proxy_build_seconds": round(proxy_seconds, 2),
        "random_preview_from_proxy": preview,
        "preview_target_met": preview["max_ms"] < PREVIEW_TARGET_MS,
    }


def _sequential_fps(reader: VideoReader) -> float:
    started = time.perf_counter()
    count = sum(1 for _ in reader.frames())
    return count / (time.perf_counter() - started)


def _timed(fetch, picks: list[int]) -> dict:
    times = []
    for number in picks:
        started = time.perf_counter()
        fetch(number)
        times.append(1000 * (time.perf_counter() - started))
    return timing_summary(times)


def run_decode_benchmark(videos: list[Path], samples: int = 40, include_1080p: bool = True) -> dict:
    clips = list(videos) or shared_clips()
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        if include_1080p:
            clips.append(make_1080p_clip(Path(scratch) / "synthetic-1080p-h264.mp4"))
        for clip in clips:
            results.append(bench_clip(Path(clip), samples))
    return {
        "benchmark": "decode",
        "machine": machine(),
        "preview_side": PREVIEW_SIDE,
        "preview_target_ms": PREVIEW_TARGET_MS,
        "clips": results,
    }
