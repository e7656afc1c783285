"""Several ControlNets at once (A1111's multi-ControlNet): each with its own annotator and
strength, their residuals added before the UNet takes them, as diffusers'
`MultiControlNetModel` adds them.

Settings name the first ControlNet's annotator and strength in their `annotator` and
`controlnet_scale` fields (one ControlNet is the common case, and keeps the identity of keys
cached before there could be more) and the others' in `more_controls`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import cv2
import numpy as np
import torch

from zvstudio.diffusion.annotators import control_condition
from zvstudio.errors import ZvsError

# (annotator, strength) of a ControlNet after the first.
MoreControls = tuple[tuple[str, float], ...]
# The part of the sampling steps where the ControlNets guide (A1111's "Starting/Ending
# Control Step"), as fractions of the steps a key runs: all of them by default.
ALL_STEPS = (0.0, 1.0)


def control_units(settings: Any) -> list[tuple[str, float]]:
    """(annotator, strength) of each ControlNet the settings describe, the first one first
    (settings with `annotator`, `controlnet_scale` and `more_controls`)."""
    return [(settings.annotator, settings.controlnet_scale), *settings.more_controls]


def check_control_steps(steps: tuple[float, float]) -> None:
    """Raise ZvsError unless `steps` is a (start, end) range with 0 <= start < end <= 1."""
    start, end = steps
    if not 0 <= start < end <= 1:
        raise ZvsError(
            f"the ControlNet steps must run from a start to a later end between 0 and 1, "
            f"got {start:g} to {end:g}",
            hint="e.g. 0,0.6: the ControlNets guide the first 60% of the steps",
        )


def control_active(steps: tuple[float, float], index: int, total: int) -> bool:
    """Whether the ControlNets guide step `index` (0-based) of `total`, as A1111 decides it:
    the fraction of the steps done before it lies in [start, end)."""
    return steps[0] <= index / total < steps[1]


def check_more_controls(more: MoreControls) -> None:
    """Raise ZvsError for a malformed `more_controls` (settings are built from files too)."""
    for unit in more:
        if len(unit) != 2 or not isinstance(unit[0], str) or not unit[0]:
            raise ZvsError(f"a ControlNet after the first needs (annotator, strength), got {unit}")
        if not (isinstance(unit[1], int | float) and math.isfinite(unit[1]) and unit[1] >= 0):
            raise ZvsError(f"a ControlNet's strength must be a number >= 0, got {unit[1]!r}")


class ControlStack:
    """The ControlNets of a render, with their annotators and strengths, called as one model.

    Empty when the render uses none (the settings then still name a default annotator)."""

    def __init__(self, nets: Sequence[Any], settings: Any) -> None:
        units = control_units(settings)
        if (nets or settings.more_controls) and len(nets) != len(units):
            raise ZvsError(
                f"{len(nets)} ControlNets were loaded for {len(units)} annotators and strengths"
            )
        self.nets = list(nets)
        self.annotators = [annotator for annotator, _ in units[: len(self.nets)]]
        self.scales = [scale for _, scale in units[: len(self.nets)]]

    @cached_property
    def model(self) -> Any:
        """The ControlNets as one model (diffusers adds their residuals), None if none."""
        if not self.nets:
            return None
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        return MultiControlNetModel(self.nets)

    def __bool__(self) -> bool:
        return bool(self.nets)

    def condition_size(self, index: int, width: int, height: int, vae_scale: int):
        """(width, height) of ControlNet `index`'s image for a frame of that size: its
        embedding downsamples by 2**(blocks - 1), to the latent's size (with SD1.x's VAE and
        ControlNets, the frame's own size)."""
        blocks = len(self.nets[index].config.conditioning_embedding_out_channels)
        factor = 2 ** (blocks - 1)
        return width // vae_scale * factor, height // vae_scale * factor

    def frame_conditions(
        self, frame: np.ndarray, vae_scale: int, thresholds: tuple[int, int], device: Any
    ) -> list[torch.Tensor]:
        """Each ControlNet's image (1, 3, H, W) of one RGB frame, annotated at the frame's
        size (each annotator once) and resized to what the ControlNet takes."""
        height, width = frame.shape[:2]
        names = dict.fromkeys(self.annotators)  # each once, in order
        annotated = {name: control_condition(frame, name, thresholds) for name in names}
        images = []
        for index, (net, name) in enumerate(zip(self.nets, self.annotators, strict=True)):
            image = annotated[name]
            size = self.condition_size(index, width, height, vae_scale)
            if size != (width, height):
                image = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)
            tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
            images.append(tensor.to(device, net.dtype))
        return images


def frames_of(conditions: Any, ids: Sequence[int]) -> Any:
    """The frames `ids` of per-frame conditions: a tensor (F, ...) or one per ControlNet."""
    if conditions is None:
        return None
    if isinstance(conditions, list):
        return [condition[ids] for condition in conditions]
    return conditions[ids]
