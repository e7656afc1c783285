"""The M-LSD straight-line annotator, from the user's own `mlsd_large_512_fp32.pth`
(lllyasviel's Annotators; NAVER's M-LSD "large" line segment detector converted to PyTorch),
for mlsd ControlNets.

No library ships this network apart from annotator packages that download their weights, so it
is written here from its checkpoint's layout and the M-LSD paper: the first 14 blocks of
MobileNetV2 (`backbone.features.*`; a stride-2 stem from RGB plus a ones channel, inverted
residual stages of 16, 24, 32, 64 and 96 channels, batch norm and ReLU6), then a decoder that
merges the features of each stage on the way back up to half the input's size (`block15` to
`block22`: 1x1 projections of the skip and deeper features, concatenated, then two 3x3
convolutions, the first residual) and a head (`block23`: a dilated 3x3, a 3x3 and a 1x1
convolution) giving the 16-channel "tp map". Channel 7 of that map scores line centres and
channels 8-11 hold the displacements from a centre to its segment's two ends.

The lines follow the reference (M-LSD's `pred_lines`, as in ControlNet's annotator): the frame
resized as ControlNet's preprocessor does (short side 512, both sides multiples of 64, so a wide
frame keeps its shape) with a ones channel, both scaled to [-1, 1]; centres at the local maxima
(3 x 3) of the sigmoid of the centre map, the best 200 of them, kept when their score and their
segment's length (in the map's pixels) pass the thresholds; the segments scaled back to the
frame and drawn 1 pixel wide in white on black. The file is looked for in the model folders
(`annotators/`, or directly inside), in the Hugging Face cache (lllyasviel/Annotators) and in
the A1111 and ComfyUI installs' annotator folders. It is read as tensors only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from zvstudio.diffusion.annotator_weights import (
    COMFYUI_ANNOTATORS,
    CheckpointAnnotator,
    a1111_annotators,
    find_weights_file,
)

FILE_NAMES = ("mlsd_large_512_fp32.pth", "mlsd_large_512_fp32.safetensors")
INSTALL_LOCATIONS = (a1111_annotators("mlsd"), COMFYUI_ANNOTATORS)

# The network. MobileNetV2's stages as (expansion, channels, blocks, stride of the first), after
# a 32-channel stem; the decoder reads the last block of each.
STEM_CHANNELS = 32
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
FEATURE_TAPS = (1, 3, 6, 10, 13)
# Decoder steps, deepest first: (skip features' channels, deeper features' channels, whether the
# deeper ones are upsampled 2x to meet the skip); each step is two blocks, 15-16, 17-18, ...
DECODER = ((64, 96, False), (32, 64, True), (24, 64, True), (16, 64, True))
DECODER_CHANNELS = 64
TP_CHANNELS = 16

# The input and the lines, as the reference.
INPUT_SIZE = 512  # the short side
INPUT_MULTIPLE = 64
CENTER = 7
DISPLACEMENT = slice(8, 12)  # x, y of the start, then of the end, from the centre
TOP_K = 200
SCORE_THRESHOLD = 0.1
DISTANCE_THRESHOLD = 0.1


def find_mlsd_weights(folders: Iterable[Path] | None = None) -> Path | None:
    """The first M-LSD checkpoint in the model folders or the Hugging Face cache, or None."""
    return find_weights_file(FILE_NAMES, INSTALL_LOCATIONS, folders)


def build_mlsd():
    """The network, randomly initialised (load a state dict into it): 1 x 4 x H x W in (H and W
    multiples of 32), the 1 x 16 x H/2 x W/2 tp map out. Module names follow the checkpoint's
    keys (`backbone.features.0.0.weight`, `block15.conv1.0.weight`, ...)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ConvBNReLU6(nn.Sequential):
        def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
            padding = 0 if stride == 2 else kernel // 2
            conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False)
            super().__init__(conv, nn.BatchNorm2d(c_out), nn.ReLU6())
            self.stride = stride

        def forward(self, x):
            # The weights come from TensorFlow, whose "same" padding of a stride-2 convolution
            # pads the bottom and right only.
            return super().forward(F.pad(x, (0, 1, 0, 1)) if self.stride == 2 else x)

    class InvertedResidual(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
            super().__init__()
            hidden = c_in * expansion
            expand = [ConvBNReLU6(c_in, hidden, 1)] if expansion != 1 else []
            self.conv = nn.Sequential(
                *expand,
                ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
                nn.Conv2d(hidden, c_out, 1, bias=False),
                nn.BatchNorm2d(c_out),
            )
            self.residual = stride == 1 and c_in == c_out

        def forward(self, x):
            return x + self.conv(x) if self.residual else self.conv(x)

    class Backbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            blocks, c_in = [ConvBNReLU6(4, STEM_CHANNELS, 3, stride=2)], STEM_CHANNELS
            for expansion, channels, count, stride in STAGES:
                for index in range(count):
                    blocks.append(
                        InvertedResidual(c_in, channels, stride if index == 0 else 1, expansion)
                    )
                    c_in = channels
            self.features = nn.Sequential(*blocks)

        def forward(self, x):
            taps = []
            for index, block in enumerate(self.features):
                x = block(x)
                if index in FEATURE_TAPS:
                    taps.append(x)
            return taps

    def conv_bn_relu(c_in: int, c_out: int, kernel: int, dilation: int = 1) -> nn.Sequential:
        conv = nn.Conv2d(c_in, c_out, kernel, padding=dilation * (kernel // 2), dilation=dilation)
        return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU())

    class Merge(nn.Module):  # the reference's BlockTypeA
        def __init__(self, c_skip: int, c_deep: int, upsample: bool) -> None:
            super().__init__()
            self.conv1 = conv_bn_relu(c_deep, DECODER_CHANNELS, 1)
            self.conv2 = conv_bn_relu(c_skip, DECODER_CHANNELS, 1)
            self.upsample = upsample

        def forward(self, skip, deep):
            deep = self.conv1(deep)
            if self.upsample:
                deep = F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=True)
            return torch.cat([self.conv2(skip), deep], dim=1)

    class Refine(nn.Module):  # BlockTypeB
        def __init__(self, channels: int, c_out: int) -> None:
            super().__init__()
            self.conv1 = conv_bn_relu(channels, channels, 3)
            self.conv2 = conv_bn_relu(channels, c_out, 3)

        def forward(self, x):
            return self.conv2(self.conv1(x) + x)

    class Head(nn.Module):  # BlockTypeC
        def __init__(self, channels: int, c_out: int) -> None:
            super().__init__()
            self.conv1 = conv_bn_relu(channels, channels, 3, dilation=5)
            self.conv2 = conv_bn_relu(channels, channels, 3)
            self.conv3 = nn.Conv2d(channels, c_out, 1)

        def forward(self, x):
            return self.conv3(self.conv2(self.conv1(x)))

    class MLSD(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = Backbone()
            for step, (c_skip, c_deep, upsample) in enumerate(DECODER):
                self.add_module(f"block{15 + 2 * step}", Merge(c_skip, c_deep, upsample))
                refine = Refine(2 * DECODER_CHANNELS, DECODER_CHANNELS)
                self.add_module(f"block{16 + 2 * step}", refine)
            self.block23 = Head(DECODER_CHANNELS, TP_CHANNELS)

        def forward(self, x):
            *skips, x = self.backbone(x)
            for step, skip in enumerate(reversed(skips)):
                x = getattr(self, f"block{15 + 2 * step}")(skip, x)
                x = getattr(self, f"block{16 + 2 * step}")(x)
            # The reference returns channels 7-15 only; all 16 are kept here (see CENTER).
            return self.block23(x)

    return MLSD()


def network_size(height: int, width: int) -> tuple[int, int]:
    """The size (rows, columns) a frame is resized to: its short side 512, each side rounded to
    a multiple of 64, as ControlNet's preprocessor does."""
    scale = INPUT_SIZE / min(height, width)
    return tuple(
        max(INPUT_MULTIPLE, round(n * scale / INPUT_MULTIPLE) * INPUT_MULTIPLE)
        for n in (height, width)
    )


def network_input(rgb: np.ndarray) -> np.ndarray:
    """The network's input for a frame (H x W x 3 uint8): 1 x 4 x h x w float32 (`network_size`),
    the frame resized (area) with a ones channel, all scaled by /127.5 - 1 (the ones channel
    too, as the reference)."""
    height, width = network_size(*rgb.shape[:2])
    resized = cv2.resize(
        np.ascontiguousarray(rgb[..., :3]), (width, height), interpolation=cv2.INTER_AREA
    )
    stacked = np.concatenate([resized, np.ones((height, width, 1))], axis=-1)
    return (stacked.transpose(2, 0, 1)[None] / 127.5 - 1.0).astype(np.float32)


def decode_lines(
    tp_map,
    score_threshold: float = SCORE_THRESHOLD,
    distance_threshold: float = DISTANCE_THRESHOLD,
    topk: int = TOP_K,
) -> np.ndarray:
    """The segments in a tp map (16 x h x w, array or tensor) as rows of x, y of the start and
    of the end, in the map's pixels, best first: at the `topk` best local maxima (3 x 3) of the
    sigmoid of the centre map that score more than `score_threshold` and whose segment is longer
    than `distance_threshold`."""
    import torch
    import torch.nn.functional as F

    maps = torch.as_tensor(tp_map, dtype=torch.float32)
    heat = torch.sigmoid(maps[CENTER])[None]
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    scores, indices = torch.topk(peaks.flatten(), min(topk, peaks.numel()))
    ys, xs = np.divmod(indices.numpy(), maps.shape[2])
    displacement = maps[DISPLACEMENT].numpy()[:, ys, xs].T.astype(np.float64)
    start, end = displacement[:, :2], displacement[:, 2:]
    lengths = np.linalg.norm(start - end, axis=1)
    keep = (scores.numpy() > score_threshold) & (lengths > distance_threshold)
    centres = np.stack([xs, ys], axis=1).astype(np.float64)
    lines = np.concatenate([centres + start, centres + end], axis=1)[keep]
    return lines[np.isfinite(lines).all(axis=1)]  # a broken checkpoint's infinities stay out of cv2


def draw_lines(
    lines: np.ndarray, map_size: tuple[int, int], frame_size: tuple[int, int]
) -> np.ndarray:
    """The segments (rows of x0, y0, x1, y1 in a map of `map_size`, rows x columns) drawn at
    `frame_size` 1 pixel wide, white on black, as RGB uint8."""
    (map_height, map_width), (height, width) = map_size, frame_size
    scaled = np.asarray(lines, dtype=np.float64).reshape(-1, 4) * (
        [width / map_width, height / map_height] * 2
    )
    canvas = np.zeros((height, width), np.uint8)
    # Truncated towards zero, as the reference's int().
    for x0, y0, x1, y1 in scaled.astype(np.int64).tolist():
        cv2.line(canvas, (x0, y0), (x1, y1), 255, 1)
    return np.repeat(canvas[..., None], 3, axis=2)


class MlsdAnnotator(CheckpointAnnotator):
    """annotate(rgb) -> straight line segments as RGB uint8 (white on black), the frame's
    size."""

    kind = "M-LSD annotator"
    expected = "lllyasviel's mlsd_large_512_fp32.pth"

    def __init__(
        self,
        weights: Path,
        score_threshold: float = SCORE_THRESHOLD,
        distance_threshold: float = DISTANCE_THRESHOLD,
    ) -> None:
        super().__init__(weights)
        self.score_threshold = score_threshold
        self.distance_threshold = distance_threshold

    @property
    def identity(self) -> str:
        identity = super().identity
        thresholds = (self.score_threshold, self.distance_threshold)
        default = thresholds == (SCORE_THRESHOLD, DISTANCE_THRESHOLD)
        return identity if default else f"{identity}:{thresholds}"

    def build(self):
        return build_mlsd()

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        tp_map = self.tp_map(rgb)
        lines = decode_lines(tp_map, self.score_threshold, self.distance_threshold)
        return draw_lines(lines, tp_map.shape[1:], rgb.shape[:2])

    def tp_map(self, rgb: np.ndarray) -> np.ndarray:
        """The network's 16 x h/2 x w/2 map for a frame (h x w: `network_size`)."""
        import torch

        model = self._load()
        with torch.no_grad():
            return model(torch.from_numpy(network_input(rgb)))[0].numpy()
