"""Guided PatchMatch: the reference implementation in PyTorch (runs on the CPU or any device).

A nearest-neighbour field (NNF) maps every target pixel to a source pixel so that the 5x5
patches around them match in every guide channel (colour, edges, position, previous output).
The stylised key is then resampled through the NNF by voting: each output pixel averages the
source pixels that the overlapping target patches assign to it.

Unlike EbSynth, which starts from a random field, the field starts from optical flow (the best
of several flow hypotheses per pixel), so most pixels begin converged. Only pixels whose patch
error is still high are refined, which is what makes this fast.

Everything works on index lists of "active" pixels, so the same code serves the whole frame
and a sparse set of unconverged pixels. Tensors are (C, H, W) float32 guides and (2, H, W)
int64 fields holding (y, x) source coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PatchMatchSettings:
    """Search parameters. `search_radius` is where random search starts, in pixels."""

    patch_size: int = 5
    iterations: int = 4
    search_radius: float = 12.0
    search_shrink: float = 0.5
    search_samples: int = 3
    converged: float = 0.0  # pixels whose patch error is below this are left alone
    seed: int = 0


def offsets(patch_size: int) -> list[tuple[int, int]]:
    radius = patch_size // 2
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]


def patch_distance(
    target: torch.Tensor,
    source: torch.Tensor,
    target_yx: torch.Tensor,
    source_yx: torch.Tensor,
    patch_size: int,
) -> torch.Tensor:
    """Sum of squared guide differences between the patches at `target_yx` and `source_yx`.

    `target_yx` and `source_yx` are (2, N) pixel coordinates; patch pixels beyond the border
    are clamped (replicated), as the warps are. Returns (N,) distances.
    """
    channels, height, width = target.shape
    _, source_h, source_w = source.shape
    flat_target = target.reshape(channels, -1)
    flat_source = source.reshape(channels, -1)
    total = torch.zeros(target_yx.shape[1], dtype=target.dtype, device=target.device)
    for dy, dx in offsets(patch_size):
        ty = (target_yx[0] + dy).clamp(0, height - 1)
        tx = (target_yx[1] + dx).clamp(0, width - 1)
        sy = (source_yx[0] + dy).clamp(0, source_h - 1)
        sx = (source_yx[1] + dx).clamp(0, source_w - 1)
        difference = flat_target[:, ty * width + tx] - flat_source[:, sy * source_w + sx]
        total += difference.square().sum(0)
    return total


def clamp_field(field: torch.Tensor, source_h: int, source_w: int) -> torch.Tensor:
    return torch.stack([field[0].clamp(0, source_h - 1), field[1].clamp(0, source_w - 1)])


def best_of(
    target: torch.Tensor,
    source: torch.Tensor,
    candidates: list[torch.Tensor],
    patch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every pixel, the candidate field (2, H, W) with the lowest patch distance."""
    _, height, width = target.shape
    yx = _all_pixels(height, width, target.device)
    best_field = candidates[0].reshape(2, -1).clone()
    best_error = patch_distance(target, source, yx, best_field, patch_size)
    for candidate in candidates[1:]:
        flat = candidate.reshape(2, -1)
        error = patch_distance(target, source, yx, flat, patch_size)
        better = error < best_error
        best_field[:, better] = flat[:, better]
        best_error = torch.where(better, error, best_error)
    return best_field.reshape(2, height, width), best_error.reshape(height, width)


def _all_pixels(height: int, width: int, device: torch.device) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    return torch.stack([ys.reshape(-1), xs.reshape(-1)])


def refine(
    target: torch.Tensor,
    source: torch.Tensor,
    field: torch.Tensor,
    error: torch.Tensor,
    settings: PatchMatchSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PatchMatch iterations (propagation from the 4 neighbours, then random search) on the
    pixels whose error is above `settings.converged`. Returns the new field and errors."""
    _, height, width = target.shape
    _, source_h, source_w = source.shape
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    field, error = field.clone(), error.clone()
    for iteration in range(settings.iterations):
        active = (error > settings.converged).reshape(-1).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        yx = torch.stack([active // width, active % width])
        step = 1 if iteration % 2 == 0 else -1  # alternate the scan direction's bias
        for dy, dx in ((0, step), (step, 0), (0, -step), (-step, 0)):
            # The neighbour at x - d maps to n(x - d); its shifted candidate is n(x - d) + d.
            ny = (yx[0] - dy).clamp(0, height - 1)
            nx = (yx[1] - dx).clamp(0, width - 1)
            neighbour = field[:, ny, nx] + torch.tensor([[dy], [dx]], device=field.device)
            _try(
                target, source, field, error, yx, neighbour, source_h, source_w, settings.patch_size
            )
        radius = settings.search_radius
        while radius >= 1.0:
            for _ in range(settings.search_samples):
                jitter = (torch.rand((2, yx.shape[1]), generator=generator) * 2 - 1) * radius
                candidate = field[:, yx[0], yx[1]] + jitter.round().long().to(field.device)
                _try(
                    target,
                    source,
                    field,
                    error,
                    yx,
                    candidate,
                    source_h,
                    source_w,
                    settings.patch_size,
                )
            radius *= settings.search_shrink
    return field, error


def _try(target, source, field, error, yx, candidate, source_h, source_w, patch_size) -> None:
    """Replace the field at `yx` by `candidate` wherever the candidate matches better."""
    candidate = clamp_field(candidate, source_h, source_w)
    distance = patch_distance(target, source, yx, candidate, patch_size)
    current = error[yx[0], yx[1]]
    better = distance < current
    if better.any():
        chosen = yx[:, better]
        field[:, chosen[0], chosen[1]] = candidate[:, better]
        error[chosen[0], chosen[1]] = distance[better]


def vote(style: torch.Tensor, field: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Resample `style` (C, Hs, Ws) through the field by averaging overlapping patches.

    Output pixel x receives, from each target patch centred at x - o that covers it, the
    source pixel n(x - o) + o. Patches centred outside the frame do not exist, so border
    pixels average fewer votes.
    """
    channels, source_h, source_w = style.shape
    _, height, width = field.shape
    yx = _all_pixels(height, width, field.device)
    flat_style = style.reshape(channels, -1)
    total = torch.zeros((channels, height * width), dtype=style.dtype, device=style.device)
    votes = torch.zeros(height * width, dtype=style.dtype, device=style.device)
    for dy, dx in offsets(patch_size):
        cy, cx = yx[0] - dy, yx[1] - dx
        inside = (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
        cy, cx = cy.clamp(0, height - 1), cx.clamp(0, width - 1)
        sy = (field[0, cy, cx] + dy).clamp(0, source_h - 1)
        sx = (field[1, cy, cx] + dx).clamp(0, source_w - 1)
        total += flat_style[:, sy * source_w + sx] * inside
        votes += inside
    return (total / votes).reshape(channels, height, width)
