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
    are clamped (replicated), as the warps are. Returns (N,) distances: those of
    `patch_distance_reference`, computed by the fastest path for the device (`PatchScorer`).
    """
    return PatchScorer(target, source, target_yx, patch_size)(source_yx)


class PatchScorer:
    """Patch distances from fixed target pixels to any candidate source pixels.

    Where Triton runs (a CUDA device), one fused kernel per call (`kernels`). Elsewhere the
    source is read channels-last, so each patch pixel is one contiguous row, and the target
    patches are gathered once and kept (up to `KEEP_FLOATS`): about 3x faster than the
    reference on a CPU, with the same sums up to float rounding.
    """

    KEEP_FLOATS = 32 * 2**20  # 128 MB of kept target patches at most
    CHUNK = 8192  # pixels per step: bounds the temporaries, keeps them in cache

    def __init__(
        self, target: torch.Tensor, source: torch.Tensor, target_yx: torch.Tensor, patch_size: int
    ) -> None:
        from zvstudio.propagate import kernels

        self.target, self.source = target, source
        self.target_yx, self.patch_size = target_yx, patch_size
        self.fused = kernels.fused_available(target.device)
        if self.fused:
            return
        channels = target.shape[0]
        self.source_rows = source.reshape(channels, -1).T.contiguous()
        self.target_rows = target.reshape(channels, -1).T.contiguous()
        self.offsets = torch.tensor(offsets(patch_size), device=target.device).T[..., None]
        pixels = target_yx.shape[1]
        keep = pixels * len(self.offsets[0]) * channels <= self.KEEP_FLOATS
        self.chunks = [
            (start, stop, self._target_patches(start, stop) if keep else None)
            for start, stop in _spans(pixels, self.CHUNK)
        ]

    def __call__(self, source_yx: torch.Tensor) -> torch.Tensor:
        if self.fused:
            from zvstudio.propagate.kernels import patch_distance_fused

            return patch_distance_fused(
                self.target, self.source, self.target_yx, source_yx, self.patch_size
            )
        distances = torch.empty(
            source_yx.shape[1], dtype=self.target.dtype, device=self.target.device
        )
        for start, stop, patches in self.chunks:
            if patches is None:
                patches = self._target_patches(start, stop)
            rows = self.source_rows[
                _patch_indices(source_yx[:, start:stop], self.offsets, self.source.shape[1:])
            ]
            distances[start:stop] = (rows - patches).square().sum(2).sum(0)
        return distances

    def _target_patches(self, start: int, stop: int) -> torch.Tensor:
        """(offsets, pixels, channels) guide values of the target patches start..stop."""
        indices = _patch_indices(self.target_yx[:, start:stop], self.offsets, self.target.shape[1:])
        return self.target_rows[indices]


def _spans(count: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def _patch_indices(yx: torch.Tensor, patch_offsets: torch.Tensor, shape) -> torch.Tensor:
    """(offsets, N) flat indices of the clamped patch pixels around `yx` in an image of
    `shape` (H, W); `patch_offsets` is (2, offsets, 1)."""
    height, width = shape
    ys = (yx[0][None] + patch_offsets[0]).clamp(0, height - 1)
    xs = (yx[1][None] + patch_offsets[1]).clamp(0, width - 1)
    return ys * width + xs


def patch_distance_reference(
    target: torch.Tensor,
    source: torch.Tensor,
    target_yx: torch.Tensor,
    source_yx: torch.Tensor,
    patch_size: int,
) -> torch.Tensor:
    """`patch_distance` in eager PyTorch: one gather per patch offset (readable, and slow)."""
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
    scorer = PatchScorer(target, source, yx, patch_size)
    best_field = candidates[0].reshape(2, -1).clone()
    best_error = scorer(best_field)
    for candidate in candidates[1:]:
        flat = candidate.reshape(2, -1)
        error = scorer(flat)
        better = error < best_error
        best_field[:, better] = flat[:, better]
        best_error = torch.where(better, error, best_error)
    return best_field.reshape(2, height, width), best_error.reshape(height, width)


def mask_pixels(mask: torch.Tensor) -> torch.Tensor:
    """(2, N) (y, x) coordinates of the True pixels of a bool (H, W) mask."""
    pixels = mask.reshape(-1).nonzero().squeeze(1)
    return torch.stack([pixels // mask.shape[1], pixels % mask.shape[1]])


def _all_pixels(height: int, width: int, device: torch.device) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    return torch.stack([ys.reshape(-1), xs.reshape(-1)])


class Occupancy:
    """LazyFluids' uniformity term: a cost for source patches that are already used a lot.

    Omega(q) counts the target patches whose pixels cover source pixel q. A candidate patch at q
    costs `weight` * sum of Omega over its pixels / (patch area * Omega_best), where Omega_best
    is the count under perfectly even use: 1 when used evenly, 2 when twice as much. Counts
    are refreshed once per PatchMatch iteration (Jacobi style, so the result does not depend on
    the order pixels are visited, which a parallel GPU pass needs).
    """

    def __init__(
        self, source_h: int, source_w: int, target_pixels: int, patch_size: int, weight: float
    ) -> None:
        self.source_h, self.source_w = source_h, source_w
        self.patch_size = patch_size
        area = patch_size * patch_size
        self.scale = weight / (area * area * target_pixels / (source_h * source_w))
        self.cost_map = torch.zeros(source_h * source_w)

    def update(self, field: torch.Tensor) -> None:
        """Recount from the field (2, H, W) of every target pixel."""
        flat = (field[0] * self.source_w + field[1]).reshape(-1)
        # index_add_ rather than bincount, which reads the range back from the GPU (a stall).
        counts = torch.zeros(self.source_h * self.source_w, device=flat.device)
        counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
        omega = _box_sum(counts.reshape(self.source_h, self.source_w), self.patch_size)
        self.cost_map = (_box_sum(omega, self.patch_size) * self.scale).reshape(-1)

    def cost(self, source_yx: torch.Tensor) -> torch.Tensor:
        return self.cost_map.to(source_yx.device)[source_yx[0] * self.source_w + source_yx[1]]


def _box_sum(image: torch.Tensor, size: int) -> torch.Tensor:
    """Sum over each size x size window (zeros beyond the border), same shape as `image`."""
    pooled = torch.nn.functional.avg_pool2d(
        image[None, None], size, stride=1, padding=size // 2, count_include_pad=True
    )
    return pooled[0, 0] * (size * size)


def refine(
    target: torch.Tensor,
    source: torch.Tensor,
    field: torch.Tensor,
    error: torch.Tensor,
    settings: PatchMatchSettings,
    active: torch.Tensor | None = None,
    occupancy: Occupancy | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PatchMatch iterations (propagation from the 4 neighbours, then random search).

    Only `active` pixels (a bool (H, W) mask) are refined; by default those whose error is
    above `settings.converged`, re-chosen each iteration. With an `occupancy`, the uniformity
    cost joins every distance, `error` included. Returns the new field and errors.
    """
    _, height, width = target.shape
    # On the field's device: jitter drawn on the CPU and copied would stall a GPU per sample.
    generator = torch.Generator(device=field.device).manual_seed(settings.seed)
    field, error = field.clone(), error.clone()
    scorer = None
    for iteration in range(settings.iterations):
        if scorer is None or active is None:  # a fixed active set keeps its target patches
            yx = mask_pixels(active if active is not None else error > settings.converged)
            if yx.shape[1] == 0:
                break
            scorer = PatchScorer(target, source, yx, settings.patch_size)
        search = _Search(field, error, scorer, occupancy)
        step = 1 if iteration % 2 == 0 else -1  # alternate the scan direction's bias
        for dy, dx in ((0, step), (step, 0), (0, -step), (-step, 0)):
            # The neighbour at x - d maps to n(x - d); its shifted candidate is n(x - d) + d.
            ny = (yx[0] - dy).clamp(0, height - 1)
            nx = (yx[1] - dx).clamp(0, width - 1)
            search.try_candidates(torch.stack((field[0, ny, nx] + dy, field[1, ny, nx] + dx)))
        radius = settings.search_radius
        while radius >= 1.0:
            for _ in range(settings.search_samples):
                jitter = torch.rand((2, yx.shape[1]), generator=generator, device=field.device)
                search.try_candidates(
                    field[:, yx[0], yx[1]] + ((jitter * 2 - 1) * radius).round().long()
                )
            radius *= settings.search_shrink
    return field, error


class _Search:
    """One PatchMatch iteration's candidate tests for the pixels `yx`, updating `field` and
    `error` in place."""

    def __init__(self, field, error, scorer: PatchScorer, occupancy) -> None:
        self.field, self.error = field, error
        self.yx, self.scorer, self.occupancy = scorer.target_yx, scorer, occupancy
        yx = self.yx
        if occupancy is not None:
            occupancy.update(field)
            # The stored error predates this count: re-score the current matches with it.
            error[yx[0], yx[1]] = self.score(field[:, yx[0], yx[1]])

    def score(self, candidate: torch.Tensor) -> torch.Tensor:
        distance = self.scorer(candidate)
        if self.occupancy is not None:
            distance = distance + self.occupancy.cost(candidate)
        return distance

    def try_candidates(self, candidate: torch.Tensor) -> None:
        """Replace the field at `yx` by `candidate` wherever the candidate matches better."""
        _, source_h, source_w = self.scorer.source.shape
        candidate = clamp_field(candidate, source_h, source_w)
        distance = self.score(candidate)
        yx = self.yx
        # Selects by where, not by boolean masks, whose varying sizes make the GPU report
        # back (a stall per candidate); the pixels yx are distinct, so the result is the same.
        current = self.error[yx[0], yx[1]]
        better = distance < current
        self.error[yx[0], yx[1]] = torch.where(better, distance, current)
        self.field[:, yx[0], yx[1]] = torch.where(better, candidate, self.field[:, yx[0], yx[1]])


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
