"""The interface every optical-flow estimator implements.

Convention: a flow F_{s->t} is a float32 HxWx2 array of (dx, dy) in pixels such that pixel x of
frame s corresponds to pixel x + F(x) of frame t.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class FlowEstimator(ABC):
    """Estimates dense optical flow between two RGB uint8 HxWx3 frames."""

    name: str

    @abstractmethod
    def settings_key(self) -> str:
        """A stable string of everything that determines the output, version tag included.

        Caches key stored flows by it, so bump the version tag whenever the output changes.
        """

    @abstractmethod
    def compute(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """F_{source->target} as float32 HxWx2."""

    def compute_pair(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(F_{a->b}, F_{b->a}); estimators that can batch both directions override this."""
        return self.compute(a, b), self.compute(b, a)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings_key()!r})"


def check_frames(source: np.ndarray, target: np.ndarray) -> None:
    """Reject frames that are not two RGB uint8 images of one size (a programming error)."""
    for frame in (source, target):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"flow needs RGB uint8 HxWx3 frames, got {frame.dtype} {frame.shape}")
    if source.shape != target.shape:
        raise ValueError(f"flow frames differ in size: {source.shape} vs {target.shape}")
