"""A key's settings as AUTOMATIC1111's "infotext", the `parameters` text of its PNGs.

A1111's PNG Info tab, ComfyUI and civitai read this text back, so a previewed key can be
reproduced there or here: the prompt (with each LoRA as `<lora:name:weight>`, as A1111 writes
it), `Negative prompt: ...`, then `Name: value` pairs, values with commas or quotes quoted as
JSON strings. Hashes are A1111's short "AutoV2" hashes (the first 10 hex digits of the
sha256, remembered on disk); folders get none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zvstudio import __version__
from zvstudio.errors import ZvsError

INFOTEXT_KEY = "parameters"  # the PNG text chunk A1111 writes it to


def key_infotext(
    spec: Any, settings: Any, size: tuple[int, int], extra: Mapping[str, Any] | None = None
) -> str:
    """The infotext of a key rendered with `spec` (a DiffusionSpec) and `settings` (its
    KeySettings, seed included) at `size` (width, height); `extra` adds fields of ours."""
    from zvstudio.diffusion.control import control_units  # torch: not on the editor's start

    loras = "".join(f" <lora:{Path(lora.path).stem}:{lora.weight:g}>" for lora in spec.loras)
    lines = [settings.prompt + loras]
    if settings.negative_prompt:
        lines.append(f"Negative prompt: {settings.negative_prompt}")
    fields: dict[str, Any] = {
        "Steps": settings.steps,
        "Sampler": "DDIM",
        "CFG scale": f"{settings.guidance_scale:g}",
        "Seed": settings.seed,
        "Size": f"{size[0]}x{size[1]}",
        "Model hash": _short_hash(spec.model),
        "Model": Path(spec.model).stem if Path(spec.model).is_file() else Path(spec.model).name,
    }
    if spec.vae is not None:
        fields["VAE hash"] = _short_hash(spec.vae)
        fields["VAE"] = Path(spec.vae).name
    fields["Denoising strength"] = f"{settings.strength:g}"
    if settings.clip_skip != 1:
        fields["Clip skip"] = settings.clip_skip
    start, end = settings.control_steps
    steps = f", Guidance Start: {start:g}, Guidance End: {end:g}" if (start, end) != (0, 1) else ""
    units = zip(spec.controlnets, control_units(settings), strict=False)
    for index, (path, (module, weight)) in enumerate(units):
        model = Path(path).stem
        text = f"Module: {module}, Model: {model}, Weight: {weight:g}{steps}"
        fields[f"ControlNet {index}"] = text
    if getattr(settings, "reference_image", "") and spec.ip_adapter is not None:
        fields["Reference image"] = Path(settings.reference_image).name
        fields["Reference strength"] = f"{settings.reference_scale:g}"
        fields["IP-Adapter"] = Path(spec.ip_adapter).stem
        fields["IP-Adapter hash"] = _short_hash(spec.ip_adapter)
    if spec.loras:
        fields["Lora hashes"] = ", ".join(
            f"{Path(lora.path).stem}: {_short_hash(lora.path)}" for lora in spec.loras
        )
    fields.update(extra or {})
    fields["Version"] = f"zvstudio {__version__}"
    lines.append(", ".join(f"{k}: {_quoted(v)}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


def _short_hash(path: Path) -> str | None:
    from zvstudio.diffusion.identify import short_hash

    if not Path(path).is_file():
        return None
    try:
        return short_hash(path)
    except (OSError, ZvsError):
        return None


def _quoted(value: Any) -> str:
    """A1111 quotes a value holding a comma, colon or quote as a JSON string."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"') else text
