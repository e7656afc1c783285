"""The HED soft-edge annotator, from the user's own `ControlNetHED.pth` (lllyasviel's
Annotators), for soft-edge ControlNets.

No library ships this network, so it is written here from its checkpoint's layout: five VGG
stages (2, 2, 3, 3, 3 convolutions of 3x3 with ReLU, 64-128-256-512-512 channels, 2x2 max-pool
before stages 2-5), a learned mean subtracted from the 0-255 RGB input, and a 1x1 projection to
one channel after each stage. The five side outputs, resized to the frame, are averaged and
squashed by a sigmoid: the edge strength. The file is a plain state dict, read as tensors only
(`torch.load(weights_only=True)`), or a safetensors copy of it. It is looked for in the model
folders (`annotators/`, or directly inside) and in the Hugging Face cache
(lllyasviel/Annotators).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

import numpy as np

from zvstudio.diffusion.annotator_weights import (
    COMFYUI_ANNOTATORS,
    CheckpointAnnotator,
    a1111_annotators,
    find_weights_file,
)

FILE_NAMES = ("ControlNetHED.pth", "ControlNetHED.safetensors")
INSTALL_LOCATIONS = (a1111_annotators("hed"), COMFYUI_ANNOTATORS)
STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))


def find_hed_weights(folders: Iterable[Path] | None = None) -> Path | None:
    """The first HED checkpoint in the model folders or the Hugging Face cache, or None."""
    return find_weights_file(FILE_NAMES, INSTALL_LOCATIONS, folders)


def build_hed():
    """The network, randomly initialised (load a state dict into it)."""
    import torch
    from torch import nn

    class Stage(nn.Module):
        def __init__(self, channels_in: int, channels: int, convs: int) -> None:
            super().__init__()
            sizes = [channels_in] + [channels] * convs
            self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in pairwise(sizes))
            self.projection = nn.Conv2d(channels, 1, 1)

        def forward(self, x, pool: bool):
            if pool:
                x = nn.functional.max_pool2d(x, 2, 2)
            for conv in self.convs:
                x = nn.functional.relu(conv(x))
            return x, self.projection(x)

    class HED(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
            for index, stage in enumerate(STAGES, start=1):
                self.add_module(f"block{index}", Stage(*stage))

        def forward(self, rgb):
            x, sides = rgb - self.norm, []
            for index in range(1, len(STAGES) + 1):
                x, side = getattr(self, f"block{index}")(x, pool=index > 1)
                sides.append(side)
            return sides

    return HED()


class HedAnnotator(CheckpointAnnotator):
    """annotate(rgb) -> soft edges as RGB uint8 (white on black), the frame's size."""

    kind = "HED annotator"
    expected = "lllyasviel's ControlNetHED.pth"

    def build(self):
        return build_hed()

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        model = self._load()
        image = torch.from_numpy(np.ascontiguousarray(rgb[..., :3])).float()
        with torch.no_grad():
            sides = model(image.permute(2, 0, 1)[None])
            size = rgb.shape[:2]
            stacked = torch.cat(
                [F.interpolate(s, size=size, mode="bilinear", align_corners=False) for s in sides]
            )
            edges = torch.sigmoid(stacked.mean(dim=0))[0]
        grey = (edges * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        return np.repeat(grey[..., None], 3, axis=2)
