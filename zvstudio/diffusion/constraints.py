"""Latent-space cross-frame constraints of Rerender-A-Video (METHOD 1.1), as tensor functions.

Conventions: latents are (B, C, h, w); masks are (B, 1, h, w) in [0, 1] with 1 = the warped
reference is valid there (replace), 0 = occluded or outside (keep). Flows are (B, 2, H, W) in
pixels, channel 0 = x, channel 1 = y, and are *backward* flows: the warped image at x is the
source at x + flow(x). Pixel centres sit at integer coordinates.

The schedule of the four constraints is given in fractions of T_max (`ConstraintSchedule`);
`check_schedule` tells the user when a truncated SDEdit schedule never reaches one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------- resampling


def _as_flow(flow: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(flow, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32))
        if t.ndim == 3:  # H x W x 2
            t = t[None]
        return t.permute(0, 3, 1, 2)
    return flow[None] if flow.ndim == 3 else flow


def _as_mask(mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(B, 1, H, W) float from a (B, 1, H, W), (B, H, W) or (H, W) tensor or array."""
    t = torch.from_numpy(np.asarray(mask, np.float32)) if isinstance(mask, np.ndarray) else mask
    t = t if t.is_floating_point() else t.float()
    if t.ndim == 2:
        t = t[None]
    return t[:, None] if t.ndim == 3 else t


def downsample_flow(flow: torch.Tensor | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """A pixel flow ((B, 2, H, W) tensor, or an H x W x 2 array) at latent size (h, w).

    The vectors are area-averaged over each latent cell (the mean motion of the pixels it
    covers) and rescaled to latent pixels (x by w/W, y by h/H).
    """
    f = _as_flow(flow).float()
    h, w = size
    H, W = f.shape[-2:]
    out = F.interpolate(f, size=(h, w), mode="area")
    scale = torch.tensor([w / W, h / H], dtype=out.dtype, device=out.device).view(1, 2, 1, 1)
    return out * scale


def downsample_mask(
    mask: torch.Tensor | np.ndarray, size: tuple[int, int], threshold: float | None = None
) -> torch.Tensor:
    """A validity mask ((B, 1, H, W), (H, W), bool or float) at latent size: (B, 1, h, w).

    Each latent cell gets the fraction of its pixels that are valid (a soft mask, the default:
    fusion then blends partially covered cells in proportion). With `threshold` the result
    is binary, valid where that fraction >= threshold; threshold=1.0 keeps only fully valid
    cells (the authors' choice: one occluded pixel invalidates its 8x8 cell).
    """
    m = F.interpolate(_as_mask(mask), size=size, mode="area")
    if threshold is None:
        return m.clamp(0.0, 1.0)
    return (m >= threshold - 1e-6).to(m.dtype)  # tolerance: area sums of ones round


def warp_latent(latent: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Backward warp: out(x) = latent(x + flow(x)), bilinear, borders replicated.

    `flow` is (B or 1, 2, h, w) in the latent's pixels (see `downsample_flow`). Samples outside
    the latent take the nearest border value, never zeros (zero padding leaves grey seams).
    """
    b, _, h, w = latent.shape
    flow = flow.to(device=latent.device, dtype=latent.dtype)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=latent.device, dtype=latent.dtype),
        torch.arange(w, device=latent.device, dtype=latent.dtype),
        indexing="ij",
    )
    # Pixel centres at integer coordinates <=> align_corners=False normalisation (2p + 1)/n - 1.
    gx = (2.0 * (xs + flow[:, 0]) + 1.0) / w - 1.0
    gy = (2.0 * (ys + flow[:, 1]) + 1.0) / h - 1.0
    grid = torch.stack([gx, gy], dim=-1).expand(b, h, w, 2)
    return F.grid_sample(latent, grid, mode=mode, padding_mode="border", align_corners=False)


def _to_latent_size(t: torch.Tensor, like: torch.Tensor, kind: str) -> torch.Tensor:
    size = tuple(like.shape[-2:])
    if tuple(t.shape[-2:]) == size:
        return t
    return downsample_flow(t, size) if kind == "flow" else downsample_mask(t, size)


def _blend(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # (1 - v) x + v y rather than lerp: bit-exact x where v = 0 and y where v = 1.
    v = v.to(device=x.device, dtype=x.dtype)
    return (1.0 - v) * x + v * y


# --------------------------------------------------------------------- constraints


def shape_aware_fusion(
    x0_pred: torch.Tensor,
    anchor_x0: torch.Tensor,
    flow_to_anchor: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """Constraint 2: x̂0 <- (1 - V) x̂0 + V warp(x̂0_anchor).

    `flow_to_anchor` maps the current frame to the anchor (current(x) ~ anchor(x + flow(x)));
    `valid` is 1 where that correspondence holds. Both may be given at pixel size, in which
    case they are downsampled (area) to the latent's size.
    """
    flow = _to_latent_size(_as_flow(flow_to_anchor), x0_pred, "flow")
    v = _to_latent_size(_as_mask(valid), x0_pred, "mask")
    return _blend(x0_pred, warp_latent(anchor_x0, flow), v)


def q_sample(
    x0: torch.Tensor, noise: torch.Tensor, alpha_bar: float | torch.Tensor
) -> torch.Tensor:
    """Forward diffusion: sqrt(ᾱ) x0 + sqrt(1 - ᾱ) noise (ᾱ of the target timestep)."""
    a = torch.as_tensor(alpha_bar, dtype=x0.dtype, device=x0.device)
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def pixel_aware_fusion(
    x_prev: torch.Tensor,
    composite_latent_noised: torch.Tensor,
    valid: torch.Tensor,
    weight: float = 1.0,
) -> torch.Tensor:
    """Constraint 3 (hard form): x_{t-1} <- (1 - wV) x_{t-1} + wV q_sample(E*(composite), t-1).

    The caller noises the composite's latent to the level of x_prev (`q_sample`), so the
    choice of noise stays with the sampler. weight=1 is the structure-guided inpainting of
    the paper; `pixel_aware_fusion_soft` is the variant the authors ship.
    """
    v = weight * _to_latent_size(_as_mask(valid), x_prev, "mask")
    return _blend(x_prev, composite_latent_noised, v)


def flat_region(mask: torch.Tensor) -> torch.Tensor:
    """1 where the mask is locally constant (zero 3x3 Prewitt gradient, borders replicated):
    the interior of the valid and invalid regions, 0 along their boundary."""
    m = _as_mask(mask)
    kx = torch.tensor([[-1.0, 0.0, 1.0]] * 3, dtype=m.dtype, device=m.device)
    kernels = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    grad = F.conv2d(F.pad(m, (1, 1, 1, 1), mode="replicate"), kernels)
    return (grad.abs().sum(dim=1, keepdim=True) == 0).to(m.dtype)


def pixel_aware_fusion_soft(
    x_prev: torch.Tensor,
    direction: torch.Tensor,
    composite_latent_noised: torch.Tensor,
    valid: torch.Tensor,
    weight: float = 0.5,
    detail: float = 0.9,
    smooth_boundary: bool = True,
) -> torch.Tensor:
    """Constraint 3 as the authors' code applies it (mask_strength=0.5, inner_strength=0.9).

    x_prev = sqrt(ᾱ) x̂0 + `direction` is a DDIM latent split into its clean part and its
    noise direction (for eta=0, direction = sqrt(1 - ᾱ) ε̂). With w = weight·V:

        out = w·c + (1 - w)·(x_prev - direction) + r·direction,
        r   = max(1 - w, sqrt(1 - w²)·detail)

    where c is the noised composite. The clean parts blend linearly; the noise direction is
    scaled by r instead of (1 - w), because a linear blend of two independent noises has
    std sqrt(w² + (1 - w)²) < 1 and renders blurry: sqrt(1 - w²) restores unit variance
    together with c's noise, and `detail` (< 1) keeps a little less of the frame's own
    noise inside the fused region. With `smooth_boundary` this applies only to the interior
    of the mask (`flat_region`); along its boundary r = 1 - w (the plain linear blend), which
    avoids seams. detail → r = 1 - w everywhere reduces to `pixel_aware_fusion`.
    """
    valid = _to_latent_size(_as_mask(valid), x_prev, "mask").to(x_prev)
    w = weight * valid
    r = torch.maximum(1.0 - w, (1.0 - w * w).clamp_min(0.0).sqrt() * detail)
    if smooth_boundary:
        flat = flat_region(valid)
        r = (1.0 - w) * (1.0 - flat) + r * flat
    return w * composite_latent_noised + (1.0 - w) * (x_prev - direction) + r * direction


def adain(x: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Constraint 4: give each sample's channels the reference's spatial mean and std.

    Statistics are per (sample, channel) over h, w (population std); a reference with batch
    1 applies to every sample. A channel of x with std < eps (flat) becomes the reference's
    mean: there is no variation to rescale.
    """
    dims = (-2, -1)
    mu_x, sd_x = x.mean(dims, keepdim=True), x.std(dims, keepdim=True, correction=0)
    ref = reference.to(x)
    mu_r, sd_r = ref.mean(dims, keepdim=True), ref.std(dims, keepdim=True, correction=0)
    return (x - mu_x) / sd_x.clamp_min(eps) * sd_r + mu_r


# ------------------------------------------------------------------------ schedule

CONSTRAINT_LABELS = {
    "cross_frame": "Cross-frame attention",
    "shape_fusion": "Shape-aware fusion",
    "pixel_fusion": "Pixel-aware fusion",
    "adain": "Colour-aware AdaIN",
}


def in_range(step_fraction: float, start: float, end: float) -> bool:
    """Whether t / T_max lies in the range (start, end).

    The range is open, so (0.9, 1.0) means t > 0.9 T_max and (0.0, 0.2) t < 0.2 T_max, except
    that a bound at the schedule's limit is closed: start <= 0 includes t = 0 and end >= 1
    includes t = T_max.
    """
    above = step_fraction > start or start <= 0.0
    below = step_fraction < end or end >= 1.0
    return above and below


@dataclass
class ConstraintSchedule:
    """When each constraint acts, as (start, end) fractions of T_max (see `in_range`).

    None switches a constraint off. Defaults are the paper's: cross-frame attention at all
    steps, shape-aware fusion in the first 10% (t > 0.9 T_max), pixel-aware fusion in
    0.5-0.8 T_max, AdaIN in the last 20% (t < 0.2 T_max).
    """

    cross_frame: tuple[float, float] | None = (0.0, 1.0)
    shape_fusion: tuple[float, float] | None = (0.9, 1.0)
    pixel_fusion: tuple[float, float] | None = (0.5, 0.8)
    adain: tuple[float, float] | None = (0.0, 0.2)

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {f.name: r for f in fields(self) if (r := getattr(self, f.name)) is not None}

    def active(self, t: float, t_max: float = 1000) -> set[str]:
        """Names of the constraints acting at timestep t."""
        return {name for name, (a, b) in self.ranges().items() if in_range(t / t_max, a, b)}


def check_schedule(
    schedule: ConstraintSchedule,
    strength: float,
    timesteps: list[float] | None = None,
    t_max: float = 1000,
) -> list[str]:
    """User-facing warnings for constraints that the truncated SDEdit schedule never runs.

    Sampling starts at T = strength * T_max, so a constraint whose range lies above that
    never acts. Pass the actual `timesteps` to also catch ranges that no discrete step hits.
    """
    warnings = []
    for name, (start, end) in schedule.ranges().items():
        label = CONSTRAINT_LABELS[name]
        if start > 0.0 and strength <= start:
            warnings.append(
                f"{label} will not run: it acts at t > {start:.2f}·T_max, but strength "
                f"{strength:.2f} starts sampling at {strength:.2f}·T_max. Raise the strength "
                f"above {start:.2f} or lower the start of its range below {strength:.2f}."
            )
        elif timesteps is not None and not any(
            name in schedule.active(t, t_max) for t in timesteps
        ):
            warnings.append(
                f"{label} will not run: no sampling step falls in its range "
                f"{start:.2f}-{end:.2f}·T_max. Use more steps or widen the range."
            )
    return warnings


# ---------------------------------------------------------------- colour correction


def _match_channel(src: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Histogram matching of one uint8 channel through the two cumulative histograms."""
    src_levels, src_counts = np.unique(src, return_counts=True)
    ref_levels, ref_counts = np.unique(ref, return_counts=True)
    # Each source level goes to the reference level at the same cumulative frequency,
    # interpolated between the levels the reference uses (as skimage's match_histograms).
    mapped = np.interp(
        np.cumsum(src_counts) / src.size, np.cumsum(ref_counts) / ref.size, ref_levels
    )
    lut = np.zeros(256, dtype=np.uint8)
    lut[src_levels] = np.clip(np.rint(mapped), 0, 255).astype(np.uint8)
    return lut[src]


def match_colours_lab(
    image: np.ndarray, reference: np.ndarray, keep_lightness: bool = False
) -> np.ndarray:
    """Match an RGB uint8 image's colour histogram to a reference's, per Lab channel.

    Used to pull the input frames toward the colours of a render of the first frame before
    SDEdit (METHOD 1.1, optional colour correction). `keep_lightness` matches only a and b
    and keeps the image's L (the authors blend the result back in luminosity mode).
    """
    import cv2

    lab = cv2.cvtColor(np.ascontiguousarray(image[..., :3], dtype=np.uint8), cv2.COLOR_RGB2LAB)
    ref = cv2.cvtColor(np.ascontiguousarray(reference[..., :3], dtype=np.uint8), cv2.COLOR_RGB2LAB)
    out = lab.copy()
    for c in range(1 if keep_lightness else 0, 3):
        out[..., c] = _match_channel(lab[..., c], ref[..., c])
    return cv2.cvtColor(out, cv2.COLOR_LAB2RGB)
