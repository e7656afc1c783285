"""Images into DynamiCrafter's inputs: the video frame for the VAE, the CLIP image input.

The frame: the input image scaled to cover the preset's size and centre-cropped (never
stretched; `fit_frame`), as [-1, 1] RGB. The released script resizes the shorter side and
centre-crops too, but pads a frame whose aspect ratio is wider than the target with black;
covering avoids that.

The CLIP image input, as the released image embedder (`FrozenOpenCLIPImageEmbedderV2`, read in
Doubiiu/DynamiCrafter `lvdm/modules/encoders/condition.py`) makes it from that [-1, 1] frame:
resized straight to 224 x 224 (the 320 x 512 frame is squeezed, not cropped: the model was
trained on squeezed frames), bicubic with aligned corners after kornia's anti-alias blur, then
mapped to [0, 1] and normalised with CLIP's mean and standard deviation. The classifier-free
guidance branch embeds an all-zero [-1, 1] frame, i.e. mid grey.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from zvstudio.generate.t2v_zero import fit_frame

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "antialias_blur",
    "clip_image_input",
    "frame_pixels",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def frame_pixels(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """An RGB uint8 image (h, w, 3) fitted to `size` (width, height) as a (1, 3, H, W) float32
    tensor in [-1, 1]."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image (h, w, 3), got shape {image.shape}")
    fitted = fit_frame(np.asarray(image, dtype=np.uint8), size)
    pixels = torch.from_numpy(fitted).permute(2, 0, 1).float() / 127.5 - 1.0
    return pixels.unsqueeze(0)


def _gaussian(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=like.device) - size // 2
    weights = torch.exp(-(x**2) / (2 * sigma**2))
    return (weights / weights.sum()).to(like.dtype)


def antialias_blur(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """kornia's `resize(..., antialias=True)` blur before shrinking (b, c, h, w) to `size`
    (height, width): a separable Gaussian with sigma (factor - 1) / 2 per axis, kernel of
    about 4 sigma (odd, at least 3), reflected borders. Unchanged when not shrinking."""
    h, w = pixels.shape[-2:]
    factors = (h / size[0], w / size[1])
    if max(factors) <= 1:
        return pixels
    sigmas = [max((f - 1.0) / 2.0, 0.001) for f in factors]
    kernels = [int(max(4.0 * s, 3)) for s in sigmas]
    kernels = [k + 1 if k % 2 == 0 else k for k in kernels]
    out = pixels
    channels = pixels.shape[1]
    for axis, (k, sigma) in enumerate(zip(kernels, sigmas, strict=True)):
        weights = _gaussian(k, sigma, pixels)
        view = (1, 1, k, 1) if axis == 0 else (1, 1, 1, k)
        pad = (0, 0, k // 2, k // 2) if axis == 0 else (k // 2, k // 2, 0, 0)
        padded = F.pad(out, pad, mode="reflect")
        kernel = weights.reshape(view).expand(channels, -1, -1, -1)
        out = F.conv2d(padded, kernel, groups=channels)
    return out


def clip_image_input(pixels: torch.Tensor, image_size: int = 224) -> torch.Tensor:
    """(b, 3, h, w) frames in [-1, 1] -> (b, 3, image_size, image_size) CLIP image input:
    squeezed to the square (anti-aliased bicubic, aligned corners), then normalised."""
    size = (image_size, image_size)
    x = pixels.float()
    if tuple(x.shape[-2:]) != size:
        if min(x.shape[-2:]) < 2:  # reflect padding needs a few pixels
            raise ValueError(f"image too small for CLIP preprocessing: {tuple(x.shape)}")
        x = antialias_blur(x, size)
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=True)
    x = (x + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, device=x.device).reshape(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).reshape(1, 3, 1, 1)
    return (x - mean) / std
