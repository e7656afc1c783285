"""`zvstudio bench render`: the whole render path, end to end, per output frame.

A synthetic clip (the demo scene at size x size, 24 fps, with its audio tone) is rendered by
the engine's `render()` with a key every K frames, keys from a stylizer or a diffusion model,
into an H.264 file. Each clip length runs in a fresh worker process with an empty cache
folder, so nothing is reused between lengths and the peak RAM reported is that run's alone;
comparing a short and a long clip shows whether memory grows with the clip's length (it must
not: frames stream from the decoder to the encoder). Writing the clip is timed separately.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from zvstudio.bench import gpu_peaks, machine, peak_rss_mb, reset_gpu_peak
from zvstudio.errors import ZvsError
from zvstudio.progress import Progress

FPS = 24
DEFAULT_LENGTHS = (100, 1000)
PROMPT = "a watercolour painting, soft colours"
TARGET_SECONDS_PER_FRAME = 0.2
TARGET_APPLIES_TO = "one H100, diffusion keys (SD1.5-sized), 512x512, a key every 10 frames"


@dataclass(frozen=True)
class BenchSettings:
    """What one benchmark renders; `model` (a path) switches the keys to diffusion."""

    size: int = 512
    every: int = 10
    style: str = "cartoon"
    device: str = "auto"
    model: str | None = None
    steps: int = 20
    flow_preset: str = "fine"


def parse_lengths(text: str) -> list[int]:
    """'100,1000' -> [100, 1000]: the clip lengths to measure, shortest first."""
    try:
        lengths = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        lengths = []
    if not lengths or lengths[0] < 1:
        raise ZvsError(f"--frames {text!r} is not a list of frame counts", hint="e.g. 100,1000")
    return lengths


def run_render_benchmark(
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    settings: BenchSettings | None = None,
    random_sd15: bool = False,
    model_dir: Path | None = None,
) -> dict:
    """Render a clip of each length in its own process; the JSON-ready report."""
    settings = settings or BenchSettings()
    _check(lengths, settings)
    with tempfile.TemporaryDirectory(prefix="zvstudio-bench-render-") as scratch:
        scratch = Path(scratch)
        build_seconds = None
        if random_sd15:
            settings, build_seconds = _with_random_model(settings, model_dir or scratch)
        runs = [measure_length(n, settings, scratch) for n in sorted(set(lengths))]
    return _report(settings, runs, random_sd15, build_seconds)


def _check(lengths: Sequence[int], settings: BenchSettings) -> None:
    if not lengths or min(lengths) < 1:
        raise ZvsError("give at least one clip length of 1 frame or more")
    if settings.size < 32 or settings.size % 2:
        raise ZvsError(f"--size must be even and at least 32, got {settings.size}")
    if settings.every < 1:
        raise ZvsError(f"--every must be at least 1, got {settings.every}")
    if settings.steps < 1:
        raise ZvsError(f"--steps must be at least 1, got {settings.steps}")
    if settings.model is None:
        from zvstudio.stylize import create_stylizer

        create_stylizer(settings.style)  # an unknown style fails now, before any clip is written


def _with_random_model(settings: BenchSettings, parent: Path) -> tuple[BenchSettings, float]:
    from zvstudio.bench.random_sd15 import random_sd15_folder

    started = time.perf_counter()
    folder = random_sd15_folder(parent)
    return replace(settings, model=str(folder)), round(time.perf_counter() - started, 1)


def write_bench_clip(path: Path, frames: int, size: int) -> None:
    """The demo scene at size x size, `frames` frames at 24 fps, with its audio tone."""
    from zvstudio.demo import load_scene, write_demo_clip

    scene = {**load_scene(), "width": size, "height": size, "fps": FPS, "seconds": frames / FPS}
    write_demo_clip(path, scene)


def measure_length(frames: int, settings: BenchSettings, scratch: Path) -> dict:
    """Write a clip of `frames` frames and render it in a fresh worker; that run's figures."""
    clip, output = scratch / f"clip-{frames}.mp4", scratch / f"out-{frames}.mp4"
    cache = scratch / f"cache-{frames}"
    _say(f"writing a {frames}-frame {settings.size}x{settings.size} clip")
    started = time.perf_counter()
    write_bench_clip(clip, frames, settings.size)
    clip_seconds = time.perf_counter() - started
    job = {
        "source": str(clip),
        "output": str(output),
        "frames": frames,
        "settings": asdict(settings),
    }
    try:
        run = _run_worker(job, cache, frames)
    finally:
        # A 1000-frame run leaves gigabytes of cached flows: free them before the next run.
        clip.unlink(missing_ok=True)
        output.unlink(missing_ok=True)
        shutil.rmtree(cache, ignore_errors=True)
    return {**run, "clip_write_seconds": round(clip_seconds, 2)}


def _run_worker(job: dict, cache: Path, frames: int) -> dict:
    env = {**os.environ, "ZVSTUDIO_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "zvstudio.bench.render", "--worker", json.dumps(job)]
    # stderr (progress, errors) passes through; stdout carries the one JSON line.
    completed = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        raise ZvsError(
            f"the {frames}-frame benchmark run failed (exit status {completed.returncode}); "
            "its error is printed above"
        )
    return json.loads(lines[-1])


def _report(
    settings: BenchSettings, runs: list[dict], random_sd15: bool, build_seconds: float | None
) -> dict:
    device = runs[0]["device"]
    diffusion = settings.model is not None
    report = {
        "benchmark": "render",
        "machine": {**machine(), "gpu": runs[0]["gpu"]},
        "settings": {
            "size": [settings.size, settings.size],
            "fps": FPS,
            "key_interval": settings.every,
            "keys": "diffusion" if diffusion else f"stylize/{settings.style}",
            "model": "random SD1.5 (fp16)" if random_sd15 else settings.model,
            "steps": settings.steps if diffusion else None,
            "device": device,
            "flow": f"dis/{settings.flow_preset}",
        },
        "runs": [{k: v for k, v in run.items() if k not in ("device", "gpu")} for run in runs],
        "ram_growth_mb": round(runs[-1]["peak_ram_mb"] - runs[0]["peak_ram_mb"], 1),
        "targets": {
            "seconds_per_frame": TARGET_SECONDS_PER_FRAME,
            "applies_to": TARGET_APPLIES_TO,
            "met": _target_met(runs) if diffusion and device == "cuda" else None,
        },
    }
    if build_seconds is not None:
        report["model_build_seconds"] = build_seconds
    return report


def _target_met(runs: list[dict]) -> bool:
    return all(run["seconds_per_frame"] < TARGET_SECONDS_PER_FRAME for run in runs)


# ------------------------------------------------------------------------------ the worker


class _StderrProgress:
    """Progress lines on stderr every few seconds (stdout is the JSON), and when the first
    key is done (the start-up cost: probing, loading a model, the first key)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.perf_counter()
        self.first_key_seconds: float | None = None
        self._last = 0.0

    def __call__(self, event: Progress) -> None:
        now = time.perf_counter() - self.started
        if event.stage == "keys" and self.first_key_seconds is None:
            self.first_key_seconds = round(now, 2)
        if now - self._last >= 5.0 or event.done == event.total:
            self._last = now
            _say(f"{self.label}: {event.stage} {event.done}/{event.total} ({now:.0f} s)")


def _say(text: str) -> None:
    print(f"zvstudio bench render: {text}", file=sys.stderr, flush=True)


def _key_renderer(settings: BenchSettings):
    """(KeyRendererSpec, device the keys run on)."""
    from zvstudio.engine.request import KeyRendererSpec

    if settings.model is None:
        if settings.device == "cuda":
            _say("note: stylizer keys run on the CPU; --device applies to diffusion keys")
        return KeyRendererSpec(kind="stylize", style=settings.style), "cpu"
    from zvstudio.diffusion.sampler import KeySettings
    from zvstudio.engine.preview import DiffusionSpec, choose_device

    device, _ = choose_device(settings.device)
    if device == "cpu":
        _say("note: diffusion keys on the CPU are very slow (minutes per key at 512x512)")
    keys = KeySettings(PROMPT, steps=settings.steps)
    spec = DiffusionSpec(Path(settings.model), keys, device=device)
    return KeyRendererSpec(kind="diffusion", diffusion=spec), device


def measure_render(job: dict) -> dict:
    """Render `job`'s clip once, in this process; its figures (run inside a fresh worker)."""
    from zvstudio.engine.render import render
    from zvstudio.engine.request import RenderRequest

    settings = BenchSettings(**job["settings"])
    renderer, device = _key_renderer(settings)
    request = RenderRequest(
        source=Path(job["source"]),
        output=Path(job["output"]),
        renderer=renderer,
        key_interval=settings.every,
        flow_preset=settings.flow_preset,
    )
    gpu = reset_gpu_peak(device)
    ram_before = peak_rss_mb()
    progress = _StderrProgress(f"{job['frames']} frames")
    started = time.perf_counter()
    result = render(request, progress)
    seconds = time.perf_counter() - started
    return {
        "frames": result.frames,
        "keys": result.keys,
        "reused_segments": result.reused_segments,  # 0: the cache started empty
        "seconds": round(seconds, 2),
        "seconds_per_frame": round(seconds / result.frames, 4),
        "first_key_seconds": progress.first_key_seconds,
        "ram_before_render_mb": round(ram_before, 1),
        "peak_ram_mb": round(peak_rss_mb(), 1),
        **gpu_peaks(device),
        "load_average_1min": _load_average(),  # above the core count: the run shared the CPU
        "device": device,
        "gpu": gpu,
    }


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _worker_main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m zvstudio.bench.render --worker JOB_JSON", file=sys.stderr)
        return 2
    try:
        figures = measure_render(json.loads(argv[1]))
    except ZvsError as exc:
        print(f"zvstudio: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
