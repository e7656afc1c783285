"""`zvstudio preview`: render one key frame with a diffusion model, to try settings quickly."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from zvstudio.errors import ZvsError
from zvstudio.progress import CancelToken, ProgressCallback, ignore_progress


def choose_device(requested: str = "auto"):
    """(device, dtype): the GPU in half precision when there is one, else the CPU in fp32."""
    import torch

    if requested == "auto":
        requested = (
            "cuda"
            if torch.cuda.is_available()
            else ("mps" if torch.backends.mps.is_available() else "cpu")
        )
    if requested == "cuda" and not torch.cuda.is_available():
        raise ZvsError("no CUDA GPU is available", hint="use --device cpu")
    dtype = torch.float32 if requested == "cpu" else torch.float16
    return requested, dtype


def load_controlnet(path: Path, device: str, dtype, allow_pickle: bool = False):
    """A ControlNet from a diffusers folder or a single file (local files only)."""
    from zvstudio.diffusion.controlnet import load_controlnet_model

    return load_controlnet_model(path, device, dtype, allow_pickle=allow_pickle)


@dataclass(frozen=True)
class DiffusionSpec:
    """The diffusion key renderer's model files and settings (one request's worth)."""

    model: Path
    settings: object  # zvstudio.diffusion.sampler.KeySettings
    loras: tuple = ()  # zvstudio.diffusion.lora.LoraSpec
    controlnet: Path | None = None
    device: str = "auto"
    allow_pickle: bool = False
    config_dir: Path | None = None


def build_sampler(spec: DiffusionSpec):
    """Load the model, its LoRAs and ControlNet, and make a key-frame sampler."""
    from zvstudio.diffusion.loading import load_sd15_components
    from zvstudio.diffusion.lora import apply_loras
    from zvstudio.diffusion.sampler import KeyFrameSampler

    device, dtype = choose_device(spec.device)
    components = load_sd15_components(
        spec.model,
        dtype=dtype,
        device=device,
        allow_pickle=spec.allow_pickle,
        config_dir=spec.config_dir,
    )
    apply_loras(components, list(spec.loras))
    controlnet = (
        load_controlnet(spec.controlnet, device, dtype, spec.allow_pickle)
        if spec.controlnet
        else None
    )
    return KeyFrameSampler(components, spec.settings, controlnet=controlnet)


def create_diffusion_renderer(spec: DiffusionSpec):
    """The diffusion `KeyRenderer` for the engine; its cache key names the model files."""
    from zvstudio.diffusion.sampler import DiffusionKeyRenderer

    files = [
        str(spec.model),
        *(f"{lora.path}:{lora.weight}" for lora in spec.loras),
        str(spec.controlnet or ""),
    ]
    return DiffusionKeyRenderer(build_sampler(spec), "|".join(files))


@dataclass(frozen=True)
class PreviewRequest:
    """Render frame `frame` of `video` as a key with `diffusion` and write it to `output`."""

    video: Path
    frame: int
    output: Path
    diffusion: DiffusionSpec


def render_preview(
    request: PreviewRequest,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
) -> list[str]:
    """Render the key and write it as a PNG; returns warnings for the user (for example a
    constraint that the chosen strength never lets run)."""
    import torch

    from zvstudio.diffusion.constraints import check_schedule
    from zvstudio.diffusion.sampler import out_of_memory_error
    from zvstudio.media import VideoReader

    if request.output.suffix.lower() != ".png":
        raise ZvsError(f"the preview is written as PNG: use a .png output, not {request.output}")
    if not request.output.absolute().parent.is_dir():
        raise ZvsError(f"cannot write {request.output}: its folder does not exist")
    with VideoReader(request.video) as reader:
        if not 0 <= request.frame < len(reader):
            raise ZvsError(
                f"frame {request.frame} is outside the clip's frames 0..{len(reader) - 1}"
            )
        frame = reader.frame(request.frame)
    settings = request.diffusion.settings
    warnings = check_schedule(settings.schedule, settings.strength)
    try:
        sampler = build_sampler(request.diffusion)
        image = sampler.render(frame, is_anchor=True, progress=progress, cancel=cancel)
    except torch.cuda.OutOfMemoryError as exc:
        raise out_of_memory_error() from exc
    _write_png(request.output, image)
    return warnings


def _write_png(path: Path, image: np.ndarray) -> None:
    """Write atomically: a half-written file never replaces an existing one."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ZvsError(f"cannot encode {path}")
    temp = path.with_name(f".{path.name}.partial")
    try:
        temp.write_bytes(data.tobytes())
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise ZvsError(f"cannot write {path}: {exc.strerror or exc}") from exc
