"""The lineart annotator, from the user's own `sk_model.pth` (lllyasviel's Annotators; the
"Informative Drawings" line-drawing generator), for lineart ControlNets.

No library ships this network apart from annotator packages that download their weights, so it
is written here from its checkpoint's layout: a ResNet generator with a 7x7 convolution to 64
channels, two stride-2 downsamplings (128, 256), three residual blocks, two transposed-conv
upsamplings and a 7x7 convolution to one channel with a sigmoid; instance norm (no weights) and
reflection padding throughout. It draws dark lines on white from RGB in [0, 1]; ControlNet's
lineart models follow the inverse, white lines on black. `sk_model2.pth` (coarse lines) has the
same layout and is used when it is the only one present. The file is read as tensors only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from zvstudio.diffusion.annotator_weights import (
    COMFYUI_ANNOTATORS,
    CheckpointAnnotator,
    a1111_annotators,
    find_weights_file,
)

FILE_NAMES = ("sk_model.pth", "sk_model.safetensors", "sk_model2.pth", "sk_model2.safetensors")
INSTALL_LOCATIONS = (a1111_annotators("lineart"), COMFYUI_ANNOTATORS)
RESIDUAL_BLOCKS = 3
SCALE = 4  # two stride-2 downsamplings: the input is padded to a multiple of this
MIN_SIZE = 2 * SCALE  # the residual blocks' reflection padding needs 2 pixels at 1/4 size


def find_lineart_weights(folders: Iterable[Path] | None = None) -> Path | None:
    """The first lineart checkpoint in the model folders or the Hugging Face cache, or None."""
    return find_weights_file(FILE_NAMES, INSTALL_LOCATIONS, folders)


def build_lineart():
    """The generator, randomly initialised (load a state dict into it). Module names follow
    the checkpoint's keys (`model0.1.weight`, `model2.0.conv_block.1.weight`, ...)."""
    from torch import nn

    def conv_norm_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
        return [conv, nn.InstanceNorm2d(channels), nn.ReLU(inplace=True)]

    class ResidualBlock(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.conv_block = nn.Sequential(
                nn.ReflectionPad2d(1),
                *conv_norm_relu(nn.Conv2d(channels, channels, 3), channels),
                nn.ReflectionPad2d(1),
                nn.Conv2d(channels, channels, 3),
                nn.InstanceNorm2d(channels),
            )

        def forward(self, x):
            return x + self.conv_block(x)

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model0 = nn.Sequential(
                nn.ReflectionPad2d(3), *conv_norm_relu(nn.Conv2d(3, 64, 7), 64)
            )
            self.model1 = nn.Sequential(
                *conv_norm_relu(nn.Conv2d(64, 128, 3, stride=2, padding=1), 128),
                *conv_norm_relu(nn.Conv2d(128, 256, 3, stride=2, padding=1), 256),
            )
            self.model2 = nn.Sequential(*(ResidualBlock(256) for _ in range(RESIDUAL_BLOCKS)))
            up = {"stride": 2, "padding": 1, "output_padding": 1}
            self.model3 = nn.Sequential(
                *conv_norm_relu(nn.ConvTranspose2d(256, 128, 3, **up), 128),
                *conv_norm_relu(nn.ConvTranspose2d(128, 64, 3, **up), 64),
            )
            self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

        def forward(self, rgb):
            return self.model4(self.model3(self.model2(self.model1(self.model0(rgb)))))

    return Generator()


class LineartAnnotator(CheckpointAnnotator):
    """annotate(rgb) -> line art as RGB uint8 (white lines on black), the frame's size."""

    kind = "lineart annotator"
    expected = "lllyasviel's sk_model.pth or sk_model2.pth"

    def build(self):
        return build_lineart()

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        model = self._load()
        height, width = rgb.shape[:2]
        image = torch.from_numpy(np.ascontiguousarray(rgb[..., :3])).float() / 255.0
        image = image.permute(2, 0, 1)[None]
        # Padded at the bottom and right to the generator's stride, so that its output lines up
        # with the frame.
        pad_bottom, pad_right = (max(MIN_SIZE, n + -n % SCALE) - n for n in (height, width))
        image = F.pad(image, (0, pad_right, 0, pad_bottom), mode="replicate")
        with torch.no_grad():
            drawing = model(image)[0, 0, :height, :width]
        lines = 255 - (drawing * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        return np.repeat(lines[..., None], 3, axis=2)
