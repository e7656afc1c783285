"""Optical flow: estimators (DIS, RAFT), flow arithmetic and a per-clip flow cache.

A flow F_{s->t} is float32 HxWx2 (dx, dy) such that pixel x of frame s corresponds to pixel
x + F(x) of frame t; `warp(image_t, F_{s->t})` gives an image aligned with frame s.
"""

from __future__ import annotations

import inspect
from typing import Any

from zvstudio.errors import ZvsError
from zvstudio.flow.base import FlowEstimator
from zvstudio.flow.cache import FlowCache
from zvstudio.flow.dis import PRESETS as DIS_PRESETS
from zvstudio.flow.dis import DISFlow
from zvstudio.flow.ops import (
    INTERPOLATIONS,
    compose,
    consistency_mask,
    dilate_mask,
    feather,
    identity_grid,
    occlusion_mask,
    resize_flow,
    warp,
)
from zvstudio.flow.raft import RAFTFlow

ESTIMATORS: dict[str, type[FlowEstimator]] = {"dis": DISFlow, "raft": RAFTFlow}

__all__ = [
    "DIS_PRESETS",
    "ESTIMATORS",
    "INTERPOLATIONS",
    "DISFlow",
    "FlowCache",
    "FlowEstimator",
    "RAFTFlow",
    "compose",
    "consistency_mask",
    "create_flow_estimator",
    "dilate_mask",
    "feather",
    "identity_grid",
    "occlusion_mask",
    "resize_flow",
    "warp",
]


def create_flow_estimator(name: str = "dis", **options: Any) -> FlowEstimator:
    """The estimator called `name`: "dis" (options: preset) or "raft" (weights, device, ...)."""
    if name not in ESTIMATORS:
        raise ZvsError(
            f"unknown flow estimator {name!r}", hint=f"choose one of: {', '.join(ESTIMATORS)}"
        )
    cls = ESTIMATORS[name]
    parameters = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ZvsError(
            f"flow estimator {name!r} has no option {', '.join(unknown)}",
            hint=f"its options are: {', '.join(parameters)}",
        )
    missing = [
        p.name for p in parameters.values() if p.default is p.empty and p.name not in options
    ]
    if missing:
        raise ZvsError(f"flow estimator {name!r} needs {', '.join(missing)}")
    return cls(**options)
