"""`zvstudio bench export`: how fast finished frames are written in each export format, and
what putting them over the original through a matte costs (the last stage of every render)."""

from __future__ import annotations

import tempfile
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from zvstudio.bench import machine
from zvstudio.media import ExportSettings, FrameTiming, VideoWriter
from zvstudio.media.matte import composite
from zvstudio.media.writer import ALPHA_FORMATS, FORMATS, IMAGE_FORMATS

OUTPUT_NAMES = {"h264": "out.mp4", "h265": "out.mp4", "prores": "out.mov"}


def bench_frame(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A frame that compresses like a render: smooth colour regions with some texture."""
    width, height = size
    rng = np.random.default_rng(seed)
    noise = (rng.random((height // 8, width // 8, 3)) * 255).astype(np.uint8)
    smooth = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.integers(-6, 7, (height, width, 3))
    return np.clip(smooth.astype(np.int32) + grain, 0, 255).astype(np.uint8)


def panned(frame: np.ndarray, count: int, alpha: bool = False) -> list[np.ndarray]:
    """`count` frames panning across `frame` (motion, so that inter-frame codecs are not timed
    on copies), with an alpha channel if asked."""
    height, width = frame.shape[:2]
    shots = [np.roll(frame, 4 * n, axis=1) for n in range(count)]
    if alpha:
        opacity = np.full((height, width), 200, np.uint8)
        shots = [np.dstack([shot, opacity]) for shot in shots]
    return shots


def bench_format(fmt: str, frame: np.ndarray, frames: int, alpha: bool = False) -> dict:
    """Write `frames` frames panning across `frame` in `fmt` (no sound) and time it."""
    height, width = frame.shape[:2]
    images = panned(frame, frames, alpha)
    settings = ExportSettings(fmt, audio=False, alpha=alpha)
    timing = FrameTiming.constant(Fraction(24), frames)
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / OUTPUT_NAMES.get(fmt, "frames")
        started = time.perf_counter()
        with VideoWriter(target, (width, height), timing, settings) as writer:
            for image in images:
                writer.write(image)
        seconds = time.perf_counter() - started
        stored = sum(p.stat().st_size for p in Path(scratch).rglob("*") if p.is_file())
    return {
        "format": fmt,
        "alpha": alpha,
        "ms_per_frame": round(1000 * seconds / frames, 1),
        "kib_per_frame": round(stored / frames / 1024, 1),
    }


def bench_composite(frame: np.ndarray, repeats: int = 10) -> float:
    """Milliseconds to put a frame over another through a soft matte."""
    height, width = frame.shape[:2]
    weights = cv2.GaussianBlur(
        (np.indices((height, width))[1] < width // 2).astype(np.float32), (0, 0), 8
    )
    started = time.perf_counter()
    for _ in range(repeats):
        composite(frame, frame[::-1], weights)
    return round(1000 * (time.perf_counter() - started) / repeats, 1)


def run_export_benchmark(size: tuple[int, int] = (1920, 1080), frames: int = 24) -> dict:
    frame = bench_frame(size)
    results = [bench_format(fmt, frame, frames) for fmt in FORMATS]
    results += [bench_format(fmt, frame, frames, alpha=True) for fmt in ALPHA_FORMATS]
    return {
        "benchmark": "export",
        "machine": machine(),
        "size": list(size),
        "frames": frames,
        "image_formats": sorted(IMAGE_FORMATS),
        "formats": results,
        "matte_composite_ms_per_frame": bench_composite(frame),
    }
