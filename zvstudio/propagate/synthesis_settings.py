"""Settings of guided patch synthesis, importable without torch (the CLI and GUI start fast)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GuideWeights:
    """The authors' guide weights (each divided by its channel count when applied)."""

    colour: float = 6.0
    edge: float = 0.5
    position: float = 2.0
    temporal: float = 0.5
    style: float = 1.0


@dataclass(frozen=True)
class SynthesisSettings:
    patch_size: int = 5
    levels: int = 3  # pyramid levels; the coarsest keeps a side of at least 2 patches
    em_iterations: int = 2  # search-vote rounds per level
    patchmatch_iterations: int = 2  # PatchMatch iterations per round
    search_radius: float = 8.0  # random search starts this far (pixels at each level)
    search_samples: int = 1  # random candidates per radius (3 cost 2x, gained 0.1 dB)
    uniformity: float = 3500.0  # LazyFluids' weight, 0-255 units
    weights: GuideWeights = field(default_factory=GuideWeights)
    seed: int = 0
    device: str = "cpu"  # where the search runs ("cuda" uses the fused kernel)


__all__ = ["GuideWeights", "SynthesisSettings"]
