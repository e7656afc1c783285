"""`zvstudio bench dynamicrafter`: seconds and peak memory of one DynamiCrafter clip.

The model is built at full size with random weights directly on the device (parameters are
created on the meta device, allocated there with `to_empty` and filled in place: no file, no
copy through system RAM); speed does not depend on the weights. One clip is made untimed
first (kernel selection, allocator warm-up; with 2 steps, enough to touch every kernel), then
one timed, from the prompt and the image to the decoded frames.

Target (issue 8): 320x512, 16 frames, 50 DDIM steps with guidance (the released 512 model's
defaults) in under 10 s on one H100. The authors report 20 s and 12.8 GB on an A100 for that.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from zvstudio.bench import gpu_peaks, machine, peak_rss_mb, reset_gpu_peak

PROMPT = "a boat sailing on a calm sea at sunset"
TARGET = {
    "seconds": 10.0,
    "applies_to": "one H100, preset 512 (320x512), 16 frames, 50 steps, full-size model",
}
REFERENCE = {
    "seconds": 20.0,
    "peak_gpu_gb": 12.8,
    "gpu": "A100",
    "source": "the DynamiCrafter authors (320x512, 16 frames)",
}
WARMUP_STEPS = 2

__all__ = ["random_models", "run_dynamicrafter_benchmark", "synthetic_image"]


def random_models(config, device, dtype, seed: int = 0):
    """`DynamiCrafterModels` of `config`'s shape with random weights, built on `device` in
    `dtype`: matrices ~ N(0, 1/fan_in), norm scales 1, biases and other vectors 0."""
    import torch

    from zvstudio.generate.dynamicrafter.checkpoint import empty_models

    models = empty_models(config)
    generator = torch.Generator(device=device).manual_seed(seed)
    for module in models.modules():
        # Buffers are real (CPU) tensors; to_empty would leave them uninitialised.
        buffers = {name: buffer.clone() for name, buffer in module.named_buffers()}
        # On the meta device: no memory yet (nn.Module's own `to`: diffusers' warns about
        # dtype changes that only matter for loaded weights).
        torch.nn.Module.to(module, dtype=dtype)
        module.to_empty(device=device)
        with torch.no_grad():
            for name, buffer in module.named_buffers():
                buffer.copy_(buffers[name])
            for name, param in module.named_parameters():
                if param.ndim >= 2:
                    fan_in = param[0].numel()
                    param.normal_(0.0, fan_in**-0.5, generator=generator)
                elif name.endswith("weight"):  # the 1-D weights are the norms' scales
                    param.fill_(1.0)
                else:
                    param.zero_()
        module.eval()
    return models


def synthetic_image(width: int, height: int) -> np.ndarray:
    """A smooth synthetic RGB uint8 image (gradients and a disc), no file needed."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    disc = ((x - width * 0.6) ** 2 + (y - height * 0.4) ** 2) < (min(width, height) * 0.2) ** 2
    image = np.stack(
        [x / max(width - 1, 1) * 255, y / max(height - 1, 1) * 255, 128 + 100 * disc], axis=-1
    )
    return np.clip(image, 0, 255).astype(np.uint8)


def run_dynamicrafter_benchmark(
    preset: str = "512",
    frames: int = 16,
    steps: int = 50,
    device: str = "auto",
    dtype: str | None = None,
    tiny: bool = False,
    seed: int = 0,
) -> dict:
    """Build the random model, make one clip untimed, then one timed; the JSON-ready report.

    `dtype` None: float16 on a GPU, float32 on the CPU. `tiny`: the tests' tiny model of the
    preset instead of the full-size one (the report's structure, in seconds on a CPU)."""
    from zvstudio.engine.device import plan_device
    from zvstudio.generate.dynamicrafter.checkpoint import PARTS
    from zvstudio.generate.dynamicrafter.config import preset as preset_config
    from zvstudio.generate.dynamicrafter.config import tiny as tiny_config
    from zvstudio.generate.dynamicrafter.sampler import (
        DynamiCrafterSampler,
        DynamiCrafterSettings,
    )

    plan = plan_device(device, dtype or "auto", offload="none", controlnets=0)
    config = tiny_config(preset) if tiny else preset_config(preset)
    torch_device = plan.torch_device
    started = time.perf_counter()
    models = random_models(config, torch_device, plan.torch_dtype, seed)
    _synchronize(torch_device)
    build_seconds = time.perf_counter() - started

    sampler = DynamiCrafterSampler(models, config)
    mode = "interpolate" if config.interpolation else "animate"
    settings = DynamiCrafterSettings(
        prompt=PROMPT, frames=frames, steps=steps, seed=seed, mode=mode
    )
    image = synthetic_image(config.width, config.height)
    last = image[:, ::-1].copy() if mode == "interpolate" else None

    def run(chosen: DynamiCrafterSettings) -> int:
        count = len(sampler.animate(image, chosen, last))
        _synchronize(torch_device)
        return count

    run(replace(settings, steps=min(steps, WARMUP_STEPS)))  # untimed
    gpu = reset_gpu_peak(torch_device)
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    made = run(settings)
    seconds = time.perf_counter() - started

    at_target = (
        not tiny
        and config.name == "512"
        and frames == 16
        and steps == 50
        and torch_device.type == "cuda"
    )
    return {
        "benchmark": "dynamicrafter",
        "machine": {**machine(), "gpu": gpu},
        "settings": {
            "preset": config.name,
            "size": [config.width, config.height],
            "frames": frames,
            "steps": steps,
            "guidance_scale": settings.guidance_scale,
            "mode": mode,
            "device": str(torch_device),
            "dtype": plan.dtype,
            "model": f"random {'tiny' if tiny else 'full-size'} DynamiCrafter {preset}",
        },
        "parameters_millions": {
            attr: round(sum(p.numel() for p in getattr(models, attr).parameters()) / 1e6, 1)
            for attr, _, _ in PARTS
        },
        "model_build_seconds": round(build_seconds, 2),
        "frames_made": made,
        "seconds": round(seconds, 3),
        "seconds_per_frame": round(seconds / made, 4),
        "seconds_per_step": round(seconds / steps, 4),
        **gpu_peaks(torch_device),
        "peak_ram_mb": round(max(rss_before, peak_rss_mb()), 1),
        "target_seconds": TARGET["seconds"],
        "target_applies_to": TARGET["applies_to"],
        "target_met": (seconds < TARGET["seconds"]) if at_target else None,
        "reference": REFERENCE,
    }


def _synchronize(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
