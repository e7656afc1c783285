"""Optical flow: estimators (DIS, RAFT, plugins'), flow arithmetic and a per-clip flow cache.

A flow F_{s->t} is float32 HxWx2 (dx, dy) such that pixel x of frame s corresponds to pixel
x + F(x) of frame t; `warp(image_t, F_{s->t})` gives an image aligned with frame s.
"""

from __future__ import annotations

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
from zvstudio.flow.registry import ESTIMATORS, create_flow_estimator, register_flow_estimator

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
    "register_flow_estimator",
    "resize_flow",
    "warp",
]
