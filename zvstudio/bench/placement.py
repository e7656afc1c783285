"""`zvstudio bench placement`: keys placed by motion vs evenly, with the same number of keys.

For each clip (its `frames` frames from `start`), both placements get as many keys as "every
K frames" gives. The keys are stylised by a deterministic OpenCV style, every other frame is
propagated, and each frame is scored against the style applied to that frame itself. The
placements have different non-key frames, so the figures cover the whole clip: its PSNR from
the mean squared error of all frames (keys count as exact) and the worst frame's PSNR; also
the analysis's cost per frame. Clips with fewer than 2K frames from `start` are left out.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from zvstudio.bench import machine, shared_clips
from zvstudio.bench.propagate import _Frames, load_frames
from zvstudio.errors import ZvsError
from zvstudio.flow import DISFlow, FlowCache
from zvstudio.keyrender import KeyContext
from zvstudio.media.cuts import keys_by_shot, shot_cuts
from zvstudio.propagate.clip import propagate_clip
from zvstudio.propagate.placement import analyse, keys_by_motion, max_gap
from zvstudio.stylize import create_stylizer


def _score(frames: list[np.ndarray], truth: list[np.ndarray], keys: dict[int, np.ndarray]) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        flows = FlowCache(DISFlow("fine"), "bench", root=Path(scratch))
        outputs = dict(propagate_clip(_Frames(frames), keys, flows))
    errors = np.array(
        [np.mean((outputs[n].astype(np.float64) - truth[n]) ** 2) for n in range(len(frames))]
    )
    worst = max((errors[n] for n in range(len(frames)) if n not in keys), default=0.0)
    return {
        "keys": sorted(keys),
        "clip_psnr": _psnr(float(errors.mean())),
        "worst_frame_psnr": _psnr(worst),
    }


def _psnr(mean_squared_error: float) -> float:
    # Capped at 100 dB so that an exact result stays a number in JSON.
    return round(min(100.0, 10 * np.log10(255.0**2 / max(mean_squared_error, 1e-30))), 3)


def bench_clip(
    path: Path, count: int, short_side: int, interval: int, style: str, start: int = 0
) -> dict | None:
    frames = load_frames(path, count, short_side, start)
    if len(frames) < 2 * interval:
        return None  # too short from `start` to place keys anywhere but evenly
    stylizer = create_stylizer(style)
    truth = [stylizer.render(frame, KeyContext(n)) for n, frame in enumerate(frames)]
    cuts = shot_cuts(frames)
    last = len(frames) - 1
    started = time.perf_counter()
    costs = analyse(frames, max_gap(interval))
    analysed = time.perf_counter()
    motion = keys_by_motion(costs, 0, interval, cuts)
    placed = time.perf_counter()
    even = keys_by_shot(0, last, interval, cuts)
    return {
        "clip": path.name,
        "start": start,
        "frames": len(frames),
        "cuts": cuts,
        "analysis_ms_per_frame": round(1e3 * (analysed - started) / len(frames), 2),
        "placement_seconds": round(placed - analysed, 3),
        "even": _score(frames, truth, {n: truth[n] for n in even}),
        "motion": _score(frames, truth, {n: truth[n] for n in motion}),
    }


def run_placement_benchmark(
    videos: list[Path],
    size: int = 256,
    frames: int = 150,
    interval: int = 10,
    style: str = "stylization",
    start: int = 0,
) -> dict:
    clips = list(videos) or shared_clips()
    if not clips:
        raise ZvsError("no clips to measure", hint="give video files or provide ../shared/clips")
    measured = [bench_clip(Path(c), frames, size, interval, style, start) for c in clips]
    results = [r for r in measured if r is not None]
    if not results:
        raise ZvsError(f"no clip has {2 * interval} frames from frame {start}")
    figures = ("clip_psnr", "worst_frame_psnr")
    return {
        "benchmark": "placement",
        "machine": machine(),
        "short_side": size,
        "key_interval": interval,
        "style": style,
        "start": start,
        "clips": results,
        "mean": {
            placement: {
                figure: round(float(np.mean([r[placement][figure] for r in results])), 3)
                for figure in figures
            }
            for placement in ("even", "motion")
        },
        "analysis_ms_per_frame": round(
            float(np.mean([r["analysis_ms_per_frame"] for r in results])), 2
        ),
    }
