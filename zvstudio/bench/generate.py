"""`zvstudio bench generate`: seconds per generated frame and peak memory of the two modes.

Text2Video-Zero (8 frames by default, 50 steps) and AnimateZero (16 frames, 25 steps) at
size x size, with a model given by path or an SD1.5-sized model of random weights (speed does
not depend on the weights) and, for AnimateZero, a motion module of the published SD1.5 shape
with random weights. Each mode runs once untimed first (kernel selection, allocator warm-up),
then timed; model loading is timed separately. Targets (issue 7), on one H100 at 512x512:
Text2Video-Zero 8 frames in under 3 s, AnimateZero 16 frames in under 8 s.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from zvstudio.bench import gpu_peaks, machine, peak_rss_mb, reset_gpu_peak
from zvstudio.bench.random_sd15 import model_or_random
from zvstudio.errors import ZvsError

PROMPT = "a corgi running on the beach, golden hour"
MODES = ("t2v", "animate")
TARGETS = {
    "t2v": {"seconds": 3.0, "frames": 8, "applies_to": "one H100, 512x512, 8 frames, 50 steps"},
    "animate": {
        "seconds": 8.0,
        "frames": 16,
        "applies_to": "one H100, 512x512, 16 frames, 25 steps",
    },
}


@dataclass(frozen=True)
class GenerateBenchSettings:
    modes: tuple[str, ...] = MODES
    size: int = 512
    t2v_frames: int = 8
    t2v_steps: int = 50
    animate_frames: int = 16
    animate_steps: int = 25
    device: str = "auto"
    model: Path | None = None  # None: a random SD1.5-sized model
    config_dir: Path | None = None  # the model's architecture configs (tests: tiny models)
    motion_adapter: Path | None = None  # None: a random SD1.5 motion module
    model_dir: Path | None = None  # where the random model is kept between runs


def run_generate_benchmark(settings: GenerateBenchSettings) -> dict:
    """Load the models once, then time each mode; the JSON-ready report."""
    _check(settings)
    with tempfile.TemporaryDirectory(prefix="zvstudio-bench-generate-") as scratch:
        model, build_seconds = model_or_random(settings.model, settings.model_dir, Path(scratch))
        started = time.perf_counter()
        components = _load(settings, model)
        load_seconds = time.perf_counter() - started
        runs = {mode: _measure(mode, settings, components) for mode in settings.modes}
    return {
        "benchmark": "generate",
        "machine": {**machine(), "gpu": _gpu_name(components)},
        "settings": {
            "size": [settings.size, settings.size],
            "device": str(components.device),
            "dtype": str(components.unet.dtype).removeprefix("torch."),
            "model": "random SD1.5 (fp16)" if settings.model is None else str(settings.model),
        },
        "model_build_seconds": build_seconds,
        "model_load_seconds": round(load_seconds, 2),
        "runs": runs,
    }


def _check(settings: GenerateBenchSettings) -> None:
    unknown = set(settings.modes) - set(MODES)
    if unknown or not settings.modes:
        raise ZvsError(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    if settings.size < 16 or settings.size % 8:
        raise ZvsError(f"--size must be a multiple of 8, got {settings.size}")


def _load(settings: GenerateBenchSettings, model: Path):
    from zvstudio.diffusion.sampler import KeySettings
    from zvstudio.engine.preview import DiffusionSpec, load_diffusion_models

    spec = DiffusionSpec(
        model, KeySettings(), device=settings.device, config_dir=settings.config_dir, offload="none"
    )
    components, _ = load_diffusion_models(spec)
    return components


def _measure(mode: str, settings: GenerateBenchSettings, components) -> dict:
    run = _t2v(settings, components) if mode == "t2v" else _animate(settings, components)
    _run_once(run, components.device)  # untimed: kernel choice, allocator, caches
    reset_gpu_peak(components.device)
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    frames = _run_once(run, components.device)
    seconds = time.perf_counter() - started
    target = TARGETS[mode]
    meets_size = (
        settings.size == 512 and frames == target["frames"] and components.device.type == "cuda"
    )
    return {
        "frames": frames,
        "steps": settings.t2v_steps if mode == "t2v" else settings.animate_steps,
        "seconds": round(seconds, 3),
        "seconds_per_frame": round(seconds / frames, 4),
        **gpu_peaks(components.device),
        "peak_ram_mb": round(max(rss_before, peak_rss_mb()), 1),
        "target_seconds": target["seconds"],
        "target_applies_to": target["applies_to"],
        "target_met": (seconds < target["seconds"]) if meets_size else None,
    }


def _run_once(run, device) -> int:
    frames = run()
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
    return frames


def _t2v(settings: GenerateBenchSettings, components):
    from zvstudio.generate.t2v_zero import TextToVideoSettings, TextToVideoZero

    generator = TextToVideoZero(components)
    t2v = TextToVideoSettings(
        prompt=PROMPT,
        frames=settings.t2v_frames,
        steps=settings.t2v_steps,
        width=settings.size,
        height=settings.size,
    )
    return lambda: len(generator.generate(t2v))


def _animate(settings: GenerateBenchSettings, components):
    from zvstudio.generate.animate_zero import AnimateSettings, animate, load_motion_adapter

    if settings.motion_adapter is not None:
        adapter = load_motion_adapter(
            settings.motion_adapter, components.device, components.unet.dtype
        )
    else:
        adapter = random_motion_adapter(components)
    animation = AnimateSettings(
        prompt=PROMPT,
        frames=settings.animate_frames,
        steps=settings.animate_steps,
        width=settings.size,
        height=settings.size,
    )
    return lambda: len(animate(components, adapter, animation))


def random_motion_adapter(components):
    """A motion module of the published SD1.5 shape (diffusers' defaults: mm_sd_v15_v2, with
    its mid block) with random weights, on the model's device and dtype."""
    import torch
    from diffusers import MotionAdapter

    torch.manual_seed(0)
    adapter = MotionAdapter(use_motion_mid_block=True)
    return adapter.to(components.device, components.unet.dtype).eval()


def _gpu_name(components) -> str | None:
    if components.device.type != "cuda":
        return None
    import torch

    return torch.cuda.get_device_name(components.device)
