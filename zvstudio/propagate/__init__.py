"""Propagation of rendered key frames to the frames between them (METHOD.md 1.4)."""

from zvstudio.propagate.blend import (
    histogram_preserving_blend,
    monotone_masks,
    selection_mask,
    temporal_weight,
)
from zvstudio.propagate.poisson import divergence, gradients, poisson_blend, screened_poisson

__all__ = [
    "divergence",
    "gradients",
    "histogram_preserving_blend",
    "monotone_masks",
    "poisson_blend",
    "screened_poisson",
    "selection_mask",
    "temporal_weight",
]
