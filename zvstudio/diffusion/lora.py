"""LoRAs on an SD1.x model: several at once, each with its own weight.

Loading goes through diffusers' LoRA loader (which reads kohya, diffusers and peft layouts and
injects peft adapters), so every format diffusers supports works here too. Each file is
identified first, so a LoRA for another base model is refused before any weights are touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zvstudio.diffusion.identify import identify
from zvstudio.diffusion.library import check_compatible, check_loadable
from zvstudio.diffusion.loading import Components, force_offline
from zvstudio.errors import ZvsError


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and the weight it is applied with (1.0 = as trained)."""

    path: Path
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """'PATH' or 'PATH:WEIGHT' as given on the command line."""
        path, sep, weight = text.rpartition(":")
        if not sep or not _is_number(weight):
            return cls(Path(text))
        return cls(Path(path), float(weight))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def apply_loras(components: Components, loras: Sequence[LoraSpec]) -> list[str]:
    """Load `loras` into the model with their weights; returns the adapter names.

    Raises ZvsError, before loading anything, for a file that is not a LoRA or is made for
    another base model than the checkpoint's.
    """
    if not loras:
        return []
    checkpoint = identify(components.source)
    infos = []
    for spec in loras:
        if not spec.path.exists():
            raise ZvsError(f"LoRA file not found: {spec.path}")
        info = identify(spec.path)
        check_loadable(info)
        infos.append(info)
    check_compatible(checkpoint, loras=infos)
    pipeline = lora_pipeline(components)
    names = [f"lora_{index}" for index in range(len(loras))]
    force_offline()
    for name, spec in zip(names, loras, strict=True):
        try:
            pipeline.load_lora_weights(str(spec.path), adapter_name=name)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise ZvsError(
                f"cannot apply LoRA {spec.path}: {exc}", hint="is it a LoRA for SD1.x checkpoints?"
            ) from exc
    pipeline.set_adapters(names, adapter_weights=[spec.weight for spec in loras])
    return names


def lora_pipeline(components: Components):
    """A diffusers pipeline around the loaded parts, for its LoRA loading methods only."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=components.make_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
