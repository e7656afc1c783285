"""Guided patch synthesis (EbSynth's method, METHOD.md 1.4) for the pixels no flow explains.

The target frame is rebuilt from patches of the rendered key: a nearest-neighbour field (NNF)
maps each target patch to the key patch that matches it best in the guides (the input frames'
colour and edges, positions advected along the flow, the previous output, and the style being
synthesised), searched by multi-scale PatchMatch with a uniformity term, then the key is
resampled through the NNF by voting.

Unlike EbSynth, the search starts from the optical flow at every level (the caller's map of
where each pixel came from in the key) and refines only the `active` pixels, those the flow
does not explain; everywhere else the flow's match is already the answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from zvstudio.flow.ops import identity_grid
from zvstudio.propagate.patchmatch import (
    Occupancy,
    PatchMatchSettings,
    PatchScorer,
    clamp_field,
    mask_pixels,
    patch_distance,
    refine,
    vote,
)
from zvstudio.propagate.synthesis_settings import GuideWeights, SynthesisSettings


@dataclass
class Guides:
    """One side's guide images, float32 in 0-255 units, all H x W x C."""

    colour: np.ndarray  # the input frame
    edge: np.ndarray  # its Laplacian
    position: np.ndarray  # where each pixel sits in the key, as an (x, y) ramp
    temporal: np.ndarray  # target: the previous output warped here; source: the key's render

    def stacked(self, weights: GuideWeights) -> torch.Tensor:
        """(C, H, W) with each guide scaled by sqrt(weight / channels), so that a plain sum
        of squared differences is the weighted patch distance."""
        parts = [
            (self.colour, weights.colour),
            (self.edge, weights.edge),
            (self.position, weights.position),
            (self.temporal, weights.temporal),
        ]
        return torch.cat([_scaled(image, weight) for image, weight in parts])


def _tensor(image: np.ndarray) -> torch.Tensor:
    """(C, H, W) float32 from H x W (x C)."""
    image = image if image.ndim == 3 else image[..., None]
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)


def _scaled(image: np.ndarray, weight: float) -> torch.Tensor:
    tensor = _tensor(image)
    return tensor * math.sqrt(weight / tensor.shape[0])


def frame_guides(frame: np.ndarray, key_coords: np.ndarray, temporal: np.ndarray) -> Guides:
    """Guides of a frame (RGB uint8) whose pixels sit at `key_coords` (H x W x 2, (x, y)
    pixel coordinates in the key's frame: identity for the key itself, identity + flow for a
    target) and whose temporal guide is `temporal` (RGB)."""
    height, width = frame.shape[:2]
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    ramp = (
        key_coords
        * np.float32(255.0)
        / np.array([max(width - 1, 1), max(height - 1, 1)], dtype=np.float32)
    )
    return Guides(
        colour=frame.astype(np.float32),
        edge=cv2.Laplacian(grey, cv2.CV_32F, ksize=3),
        position=ramp.astype(np.float32),
        temporal=temporal.astype(np.float32),
    )


def key_guides(key_frame: np.ndarray, key_image: np.ndarray) -> Guides:
    height, width = key_frame.shape[:2]
    return frame_guides(key_frame, identity_grid(height, width), key_image)


@dataclass
class Synthesis:
    image: np.ndarray  # float32 RGB, 0-255
    error: np.ndarray  # float32: the final match's mean colour error per patch pixel
    field: np.ndarray  # int64 (2, H, W): (y, x) key pixel matched by each target pixel


def synthesize(
    style: np.ndarray,
    source: Guides,
    target: Guides,
    key_coords: np.ndarray,
    active: np.ndarray,
    settings: SynthesisSettings | None = None,
) -> Synthesis:
    """Synthesise the target from `style` (the key's render, RGB) by guided patch synthesis.

    `key_coords` (H x W x 2, (x, y)) is where the flow says each target pixel came from: the
    starting field at every level. `active` (bool H x W) marks the pixels to refine.
    """
    settings = settings or SynthesisSettings()
    height, width = active.shape
    if source.colour.shape[:2] != (height, width):
        raise ValueError("the key and the target frame must have the same size")
    sizes = _pyramid(height, width, settings)
    device = torch.device(settings.device)
    source_full = source.stacked(settings.weights).to(device)
    target_full = target.stacked(settings.weights).to(device)
    style_full = _tensor(style).to(device)
    style_weight = math.sqrt(settings.weights.style / 3)
    start = _field_from_coords(key_coords).to(device)
    active_full = torch.from_numpy(active[None].astype(np.float32)).to(device)
    field_ = None
    for level_h, level_w in sizes:
        level = _Level(
            _resized(source_full, (level_h, level_w)),
            _resized(target_full, (level_h, level_w)),
            _resized(style_full, (level_h, level_w)),
            style_weight,
        )
        level_active = _resized(active_full, (level_h, level_w))[0] > 0
        initial = _scaled_field(start, (height, width), (level_h, level_w))
        if field_ is not None:
            # Where the coarser level found better matches than the flow, start from them.
            upscaled = _upscaled(field_, level_h, level_w)
            # Also around the active pixels: their patches vote into the feathered seam.
            around = _dilated(level_active, settings.patch_size)
            initial = level.better(initial, upscaled, around, settings.patch_size)
        field_ = level.search(initial, level_active, settings)
    image = vote(style_full, field_, settings.patch_size)
    error = _colour_error(target, source, field_, active, settings.patch_size)
    return Synthesis(image.permute(1, 2, 0).cpu().numpy(), error, field_.cpu().numpy())


@dataclass
class _Level:
    """The guides at one pyramid level."""

    source: torch.Tensor
    target: torch.Tensor
    style: torch.Tensor
    style_weight: float

    def better(self, field_, other, active, patch_size: int) -> torch.Tensor:
        """`field_` with `other`'s match wherever that matches the guides better, among the
        active pixels (elsewhere the flow's match stands)."""
        yx = mask_pixels(active)
        scorer = PatchScorer(self.target, self.source, yx, patch_size)
        mine, theirs = field_[:, yx[0], yx[1]], other[:, yx[0], yx[1]]
        wins = scorer(theirs) < scorer(mine)
        chosen = field_.clone()
        chosen[:, yx[0][wins], yx[1][wins]] = theirs[:, wins]
        return chosen

    def search(self, field_: torch.Tensor, active: torch.Tensor, settings: SynthesisSettings):
        """EM: vote a style estimate, then search with it as one more guide; repeat."""
        _, height, width = self.target.shape
        _, source_h, source_w = self.source.shape
        occupancy = Occupancy(
            source_h, source_w, height * width, settings.patch_size, settings.uniformity
        )
        patchmatch = PatchMatchSettings(
            patch_size=settings.patch_size,
            iterations=settings.patchmatch_iterations,
            search_radius=settings.search_radius,
            search_samples=settings.search_samples,
            seed=settings.seed,
        )
        source = torch.cat([self.source, self.style * self.style_weight])
        for _ in range(settings.em_iterations):
            estimate = vote(self.style, field_, settings.patch_size)
            target = torch.cat([self.target, estimate * self.style_weight])
            # refine() scores the active pixels' matches itself (with their occupancy cost);
            # no other pixel's error is read.
            unscored = torch.zeros(height, width, device=field_.device)
            field_, _ = refine(target, source, field_, unscored, patchmatch, active, occupancy)
        return field_


def _dilated(mask: torch.Tensor, radius: int) -> torch.Tensor:
    grown = torch.nn.functional.max_pool2d(
        mask[None, None].float(), 2 * radius + 1, stride=1, padding=radius
    )
    return grown[0, 0] > 0


def _pyramid(height: int, width: int, settings: SynthesisSettings) -> list[tuple[int, int]]:
    """Level sizes, coarsest first; no side drops below two patches."""
    sizes = [(height, width)]
    while len(sizes) < settings.levels:
        h, w = sizes[-1]
        if min(h, w) // 2 < 2 * settings.patch_size:
            break
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes[::-1]


def _resized(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[1:]) == size:
        return image
    return torch.nn.functional.interpolate(image[None], size=size, mode="area")[0]


def _field_from_coords(key_coords: np.ndarray) -> torch.Tensor:
    """(2, H, W) float (y, x) from H x W x 2 (x, y)."""
    return torch.from_numpy(np.ascontiguousarray(key_coords[..., ::-1].transpose(2, 0, 1)))


def _scaled_field(coords: torch.Tensor, full: tuple[int, int], size: tuple[int, int]):
    """The full-resolution coordinate field at a level of `size`: averaged over each level
    pixel's footprint, in that level's pixel units, rounded to the nearest pixel."""
    averaged = _resized(coords.float(), size)
    scale = torch.tensor([size[0] / full[0], size[1] / full[1]], device=coords.device)
    scale = scale.view(2, 1, 1)
    level = ((averaged + 0.5) * scale - 0.5).round().long()
    return clamp_field(level, *size)


def _upscaled(field_: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A coarser level's field at (height, width): each pixel takes its parent's match,
    shifted by its own offset within the parent."""
    _, coarse_h, coarse_w = field_.shape
    ys = torch.arange(height, device=field_.device)
    xs = torch.arange(width, device=field_.device)
    parent_y = (ys * coarse_h // height).clamp(max=coarse_h - 1)
    parent_x = (xs * coarse_w // width).clamp(max=coarse_w - 1)
    parent = field_[:, parent_y[:, None], parent_x[None, :]]
    up_y = parent[0] * height // coarse_h + (ys - parent_y * height // coarse_h)[:, None]
    up_x = parent[1] * width // coarse_w + (xs - parent_x * width // coarse_w)[None, :]
    return clamp_field(torch.stack([up_y, up_x]), height, width)


def _colour_error(
    target: Guides, source: Guides, field_: torch.Tensor, active: np.ndarray, patch_size: int
) -> np.ndarray:
    """Mean squared colour difference per patch pixel (the scale of `segment.guide_error`),
    for the active pixels; zero elsewhere."""
    height, width = active.shape
    error = np.zeros((height, width), np.float32)
    device = field_.device
    pixels = torch.from_numpy(np.argwhere(active).T.copy()).to(device)
    if pixels.numel():
        distance = patch_distance(
            _tensor(target.colour).to(device),
            _tensor(source.colour).to(device),
            pixels,
            field_[:, pixels[0], pixels[1]],
            patch_size,
        )
        error[active] = (distance / patch_size**2).cpu().numpy()
    return error
