"""Where propagation's per-pixel work runs: numpy/OpenCV on the CPU, torch on a GPU.

Carrying a key along the flow and blending two directions (warps, flow composition,
consistency masks, windowed guide errors, weighted sums) is the same arithmetic on either, so
`segment` is written once against this small interface. The CPU keeps numpy/OpenCV: cv2.remap
and cv2.blur are several times faster there than torch's equivalents, and the referee figures
were measured with them. On a GPU the same steps take milliseconds per frame in torch, which
leaves the CPU cores to the optical flow, the one step that stays on them.

Arrays keep numpy's layout on both: images HxWx3 uint8, flows HxWx2 float32, maps HxW.
The torch backend differs from OpenCV only by rounding (OpenCV interpolates with 1/32-pixel
fixed-point weights), which tests bound.
"""

from __future__ import annotations

from typing import Any, Protocol

import cv2
import numpy as np

from zvstudio.flow import ops


class Pixels(Protocol):
    """The array operations propagation needs, on one device."""

    device: str

    def upload(self, array: np.ndarray) -> Any: ...
    def download(self, array: Any) -> np.ndarray: ...
    def warp(self, image: Any, flow: Any, interpolation: str = "linear") -> Any: ...
    def consistency_mask(self, flow_ab: Any, flow_ba: Any) -> Any: ...
    def box_blur(self, values: Any, size: int) -> Any: ...
    def as_float(self, image: Any) -> Any: ...
    def to_uint8(self, values: Any) -> Any: ...
    def channel_sum(self, values: Any) -> Any: ...
    def where(self, condition: Any, a: Any, b: Any) -> Any: ...
    def exp(self, values: Any) -> Any: ...
    def mean(self, values: Any, mask: Any = None) -> float: ...


class NumpyPixels:
    """numpy and OpenCV on the CPU (`zvstudio.flow.ops`)."""

    device = "cpu"

    def upload(self, array: np.ndarray) -> np.ndarray:
        return array

    def download(self, array: np.ndarray) -> np.ndarray:
        return array

    def warp(self, image: np.ndarray, flow: np.ndarray, interpolation: str = "linear"):
        return ops.warp(image, flow, interpolation)

    def consistency_mask(self, flow_ab: np.ndarray, flow_ba: np.ndarray) -> np.ndarray:
        return ops.consistency_mask(flow_ab, flow_ba)

    def box_blur(self, values: np.ndarray, size: int) -> np.ndarray:
        return cv2.blur(values, (size, size))

    def as_float(self, image: np.ndarray) -> np.ndarray:
        return image.astype(np.float32)

    def to_uint8(self, values: np.ndarray) -> np.ndarray:
        return np.clip(values + 0.5, 0, 255).astype(np.uint8)

    def channel_sum(self, values: np.ndarray) -> np.ndarray:
        return values.sum(axis=2)

    def where(self, condition, a, b) -> np.ndarray:
        return np.where(condition, a, b)

    def exp(self, values: np.ndarray) -> np.ndarray:
        return np.exp(values)

    def mean(self, values: np.ndarray, mask: np.ndarray | None = None) -> float:
        return float((values if mask is None else values[mask]).mean())


NUMPY = NumpyPixels()


class TorchPixels:
    """The same operations in torch, on any torch device (a GPU in practice)."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = str(torch.device(device))
        self._grids: dict[tuple[int, int], Any] = {}

    def upload(self, array: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def download(self, array) -> np.ndarray:
        return array.cpu().numpy()

    def _grid(self, height: int, width: int):
        grid = self._grids.get((height, width))
        if grid is None:
            grid = self.upload(ops.identity_grid(height, width))
            self._grids[(height, width)] = grid
        return grid

    def warp(self, image, flow, interpolation: str = "linear"):
        """`zvstudio.flow.ops.warp`: out(x) = image(x + flow(x)), borders replicated."""
        torch = self.torch
        if interpolation not in ("linear", "nearest"):
            raise ValueError("interpolation must be 'linear' or 'nearest'")
        if image.dtype == torch.bool:
            return self.warp(image.to(torch.uint8) * 255, flow, interpolation) >= 128
        height, width = flow.shape[:2]
        coords = self._grid(height, width) + flow
        if interpolation == "nearest":
            coords = torch.round(coords)  # the pixel nearest to x + flow(x), as ops.warp does
        # align_corners=True maps -1 and 1 to the centres of the first and last pixels;
        # "border" padding clamps the coordinates, which is OpenCV's BORDER_REPLICATE.
        scale = torch.tensor(
            [2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], device=coords.device
        )
        grid = (coords * scale - 1.0)[None]
        planes = image if image.ndim == 3 else image[..., None]
        values = planes.permute(2, 0, 1)[None].float()
        mode = "bilinear" if interpolation == "linear" else "nearest"
        sampled = torch.nn.functional.grid_sample(
            values, grid, mode=mode, padding_mode="border", align_corners=True
        )[0].permute(1, 2, 0)
        if image.dtype == torch.uint8:
            sampled = self.to_uint8(sampled)
        return sampled if image.ndim == 3 else sampled[..., 0]

    def consistency_mask(self, flow_ab, flow_ba):
        """`zvstudio.flow.ops.consistency_mask`, the same forward-backward check."""
        height, width = flow_ab.shape[:2]
        backward = self.warp(flow_ba, flow_ab)
        norm = self.torch.linalg.vector_norm
        bound = 0.01 * (norm(flow_ab, dim=2) + norm(backward, dim=2)) + 0.5
        consistent = norm(flow_ab + backward, dim=2) <= bound
        target = self._grid(height, width) + flow_ab
        x, y = target[..., 0], target[..., 1]
        return consistent & (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)

    def box_blur(self, values, size: int):
        """cv2.blur: the mean over a size x size box, borders mirrored (BORDER_REFLECT_101,
        which is torch's "reflect")."""
        functional = self.torch.nn.functional
        radius = size // 2
        # Mirroring needs a side longer than the radius; a tinier map repeats its edge.
        mode = "reflect" if radius < min(values.shape) else "replicate"
        padded = functional.pad(values[None, None], (radius,) * 4, mode=mode)
        return functional.avg_pool2d(padded, size, stride=1)[0, 0]

    def as_float(self, image):
        return image.float()

    def to_uint8(self, values):
        return (values + 0.5).clamp(0, 255).to(self.torch.uint8)

    def channel_sum(self, values):
        return values.sum(dim=2)

    def where(self, condition, a, b):
        return self.torch.where(condition, a, b)

    def exp(self, values):
        return self.torch.exp(values)

    def mean(self, values, mask=None) -> float:
        if mask is None:
            return float(values.float().mean())
        return float(values[mask].float().mean())


def pixels_for(device: str) -> Pixels:
    """The backend for `device`: "cuda" or "cuda:N" that GPU; "auto" a CUDA GPU when torch
    sees one; else the CPU (Apple's MPS GPU too: this path is untested there)."""
    if device.startswith("cuda"):
        return TorchPixels(device)
    if device == "auto":
        import torch

        return TorchPixels("cuda") if torch.cuda.is_available() else NUMPY
    return NUMPY
