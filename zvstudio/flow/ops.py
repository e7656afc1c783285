"""Flow arithmetic: warping, composition, occlusion masks (vectorised numpy/OpenCV).

Flows follow the convention of `zvstudio.flow.base`: F_{s->t}(x) = (dx, dy) such that pixel x
of frame s corresponds to x + F(x) in frame t. Every sampling replicates the border: zero padding
gives grey or black seams at the frame edges (a known flaw of the authors' code).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
}
# cv2.remap handles at most 4 channels at a time.
_REMAP_CHANNELS = 4


@lru_cache(maxsize=8)
def _grid(height: int, width: int) -> np.ndarray:
    # Cached and read-only: every warp of a clip needs the same grid.
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    grid = np.dstack([xs, ys])
    grid.flags.writeable = False
    return grid


def identity_grid(height: int, width: int) -> np.ndarray:
    """float32 HxWx2 of each pixel's own (x, y)."""
    return _grid(height, width).copy()


def _check_flow(flow: np.ndarray, shape: tuple[int, ...] | None = None) -> None:
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"a flow is HxWx2, got {flow.shape}")
    if shape is not None and flow.shape[:2] != shape[:2]:
        raise ValueError(f"flow {flow.shape[:2]} and image {shape[:2]} differ in size")


def warp(image: np.ndarray, flow: np.ndarray, interpolation: str = "linear") -> np.ndarray:
    """Backward warp: out(x) = image(x + flow(x)), aligned with the flow's source frame.

    "nearest" samples the pixel nearest to x + flow(x) (coordinates rounded first).
    `image` is any array cv2.remap takes (HxW or HxWxC; uint8, uint16, int16, float32, float64),
    or a bool mask; the result keeps its shape and dtype. Outside samples replicate the border.
    """
    _check_flow(flow, image.shape)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {list(INTERPOLATIONS)}")
    if image.dtype == np.bool_:
        warped = warp(image.view(np.uint8) * np.uint8(255), flow, interpolation)
        return warped >= 128
    coords = _grid(*flow.shape[:2]) + flow.astype(np.float32, copy=False)
    if interpolation == "nearest":
        # Round explicitly so that "nearest" means the pixel nearest to x + flow(x), whatever
        # OpenCV's internal fixed-point rounding of fractional coordinates does.
        coords = np.rint(coords)

    def remap(part: np.ndarray) -> np.ndarray:
        return cv2.remap(
            part,
            coords,
            None,
            INTERPOLATIONS[interpolation],
            borderMode=cv2.BORDER_REPLICATE,
        )

    if image.ndim == 2:
        return remap(np.ascontiguousarray(image))
    channels = image.shape[2]
    parts = [
        remap(np.ascontiguousarray(image[..., c : c + _REMAP_CHANNELS]))
        for c in range(0, channels, _REMAP_CHANNELS)
    ]
    # remap drops a trailing axis of length 1; put it back so the shape is kept.
    parts = [p.reshape(*p.shape[:2], -1) for p in parts]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)


def compose(flow_ab: np.ndarray, flow_bc: np.ndarray) -> np.ndarray:
    """F_ac(x) = F_ab(x) + F_bc(x + F_ab(x)), sampling F_bc bilinearly."""
    _check_flow(flow_ab)
    _check_flow(flow_bc, flow_ab.shape)
    flow_ab = flow_ab.astype(np.float32, copy=False)
    return flow_ab + warp(flow_bc.astype(np.float32, copy=False), flow_ab)


def _norm(vectors: np.ndarray) -> np.ndarray:
    # cv2.magnitude is ~10x faster than np.linalg.norm(axis=2) on HxWx2.
    return cv2.magnitude(vectors[..., 0], vectors[..., 1])


def consistency_mask(flow_ab: np.ndarray, flow_ba: np.ndarray) -> np.ndarray:
    """bool HxW: True where pixel x of frame a is consistently matched in frame b.

    Forward-backward check of METHOD.md 1.3: consistent where
    |F_ab(x) + F_ba(x')| <= 0.01 (|F_ab(x)| + |F_ba(x')|) + 0.5 with x' = x + F_ab(x),
    and x' lies inside frame b.
    """
    _check_flow(flow_ab)
    _check_flow(flow_ba, flow_ab.shape)
    height, width = flow_ab.shape[:2]
    forward = flow_ab.astype(np.float32, copy=False)
    backward = warp(flow_ba.astype(np.float32, copy=False), forward)
    bound = 0.01 * (_norm(forward) + _norm(backward)) + 0.5
    consistent = _norm(forward + backward) <= bound
    target = _grid(height, width) + forward
    x, y = target[..., 0], target[..., 1]
    return consistent & (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)


def occlusion_mask(flow_ab: np.ndarray, flow_ba: np.ndarray) -> np.ndarray:
    """bool HxW: True where pixel x of frame a is occluded in b or leaves the frame."""
    return ~consistency_mask(flow_ab, flow_ba)


def resize_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a flow to size = (width, height), scaling the vectors by the same ratios."""
    _check_flow(flow)
    width, height = size
    old_height, old_width = flow.shape[:2]
    if (width, height) == (old_width, old_height):
        return flow.astype(np.float32, copy=True)
    shrinking = width * height < old_width * old_height
    resized = cv2.resize(
        flow.astype(np.float32, copy=False),
        (width, height),
        interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
    )
    resized[..., 0] *= width / old_width
    resized[..., 1] *= height / old_height
    return resized


def dilate_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a bool mask by `radius` pixels (a disc), e.g. to cover flow errors at occlusions."""
    if radius <= 0:
        return mask.astype(bool, copy=True)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def feather(mask: np.ndarray, radius: float) -> np.ndarray:
    """float32 [0, 1]: 1 on the mask, falling linearly to 0 over `radius` pixels outside it.

    The mask keeps full weight (a thin occluded sliver is not halved as a blur would do); only
    the surroundings get the soft edge that hides the seam when blending.
    """
    mask = mask.astype(bool)
    if radius <= 0 or not mask.any():
        return mask.astype(np.float32)
    # Distance of each pixel to the nearest mask pixel (0 on the mask); the 5x5 approximation
    # is 3x faster than the exact one and far within what a soft edge needs.
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
    return np.clip(1.0 - distance / (radius + 1.0), 0.0, 1.0).astype(np.float32)
