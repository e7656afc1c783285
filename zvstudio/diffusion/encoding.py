"""Fidelity-oriented image encoding E* (Rerender-A-Video, METHOD 1.2).

Every VAE encode/decode round loses a roughly constant part of the image (blur, colour
shift), which accumulates when rendered frames are re-encoded frame after frame. E* adds
back the predictable loss: with x_r = E(I) and x_rr = E(D(x_r)),

    E'(I) = x_r + λ (x_r - x_rr)
    E*(I) = x_r + M · λ (x_r - x_rr)

where M (latent size) is 0 wherever the compensated latent decodes worse than a threshold
(mean |D(E'(I)) - I| > 0.25 on the [-1, 1] scale), dilated, and 1 elsewhere.

Images are (B, 3, H, W) in [-1, 1]. Latents are scaled by the VAE's scaling factor (what the
UNet sees). Encoding uses the posterior mean, never a sample, so it is deterministic. Results
are float32 whatever the VAE's dtype, so the compensation arithmetic is not done in fp16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _vae_dtype(vae: Any, fallback: torch.dtype) -> torch.dtype:
    dtype = getattr(vae, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    param = next(iter(vae.parameters()), None) if hasattr(vae, "parameters") else None
    return param.dtype if param is not None else fallback


def _scale_shift(vae: Any) -> tuple[float, float]:
    config = vae.config
    scale = getattr(config, "scaling_factor", None) or 1.0
    shift = getattr(config, "shift_factor", None) or 0.0  # SD1.x has none
    return float(scale), float(shift)


@torch.no_grad()
def encode_mean(vae: Any, images: torch.Tensor) -> torch.Tensor:
    """E(I): the posterior mean of the VAE encoder, scaled for the UNet (float32)."""
    scale, shift = _scale_shift(vae)
    mean = vae.encode(images.to(_vae_dtype(vae, images.dtype))).latent_dist.mean
    return (mean.float() - shift) * scale


@torch.no_grad()
def decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """D(x): images in [-1, 1] (float32, not clamped) from UNet-scaled latents."""
    scale, shift = _scale_shift(vae)
    z = latents.float() / scale + shift
    return vae.decode(z.to(_vae_dtype(vae, latents.dtype))).sample.float()


def rgb_frames(images: torch.Tensor) -> list[np.ndarray]:
    """(n, 3, H, W) images in [-1, 1] (as `decode` gives them) -> n RGB uint8 frames."""
    scaled = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [np.ascontiguousarray(frame) for frame in scaled.permute(0, 2, 3, 1).cpu().numpy()]


@dataclass
class FidelityEncoding:
    """E*(I) and what it was built from (latents are (B, C, h, w), float32)."""

    latent: torch.Tensor  # E*(I)
    mask: torch.Tensor  # M, (B, 1, h, w): 1 where the compensation is kept
    plain: torch.Tensor  # x_r = E(I)
    compensation: torch.Tensor  # λ (x_r - x_rr)


@torch.no_grad()
def fidelity_encode_details(
    vae: Any,
    images: torch.Tensor,
    lam: float = 1.0,
    threshold: float = 0.25,
    dilate: int = 1,
) -> FidelityEncoding:
    """E*(I) with its mask and parts; see `fidelity_encode`."""
    images = images.float()
    x_r = encode_mean(vae, images)
    x_rr = encode_mean(vae, decode(vae, x_r))
    compensation = lam * (x_r - x_rr)
    # Where the compensated latent decodes far from the input, compensation did harm.
    error = (decode(vae, x_r + compensation) - images).abs().mean(dim=1, keepdim=True)
    bad = (error > threshold).float()
    # A latent cell is bad if any of its pixels is, then the bad region grows by `dilate`
    # cells: compensation artefacts spread over neighbouring cells when decoded.
    bad = F.adaptive_max_pool2d(bad, x_r.shape[-2:])
    if dilate > 0:
        bad = F.max_pool2d(bad, kernel_size=2 * dilate + 1, stride=1, padding=dilate)
    mask = 1.0 - bad
    return FidelityEncoding(x_r + mask * compensation, mask, x_r, compensation)


def fidelity_encode(
    vae: Any,
    images: torch.Tensor,
    lam: float = 1.0,
    threshold: float = 0.25,
    dilate: int = 1,
) -> torch.Tensor:
    """E*(I) = x_r + M·λ(x_r - x_rr) for (B, 3, H, W) images in [-1, 1] (float32 latents).

    `lam` is the compensation gain λ (1 in the paper); `threshold` the mean absolute error
    (over channels, [-1, 1] scale) of D(E'(I)) above which a pixel counts as made worse;
    `dilate` how many latent cells the bad region grows by (the authors use 1: a 3x3 max).
    """
    return fidelity_encode_details(vae, images, lam, threshold, dilate).latent
