"""RAFT optical flow (torchvision's implementation) from a local weights file.

Weights are never downloaded: the user points at a torchvision RAFT state dict (`.pth` or
`.safetensors`), e.g. the file torchvision itself would fetch for `Raft_Large_Weights`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import ModuleType

import numpy as np

from zvstudio.errors import ZvsError
from zvstudio.flow.base import FlowEstimator, check_frames
from zvstudio.hashing import file_hash
from zvstudio.statedict import read_state_dict

_VERSION = 1
# RAFT works at 1/8 resolution: sides must be multiples of 8, and torchvision's correlation
# pyramid needs feature maps of at least 16x16, i.e. 128x128 pixels (smaller frames are padded).
_MULTIPLE = 8
_MIN_SIDE = 128
# raft_small's encoders use bottleneck blocks (three convolutions), raft_large's residual
# blocks have two, and only raft_large has a learned upsampling mask.
_SMALL_MARKER = "convnormrelu3"
_LARGE_MARKER = "mask_predictor."


def _import_optical_flow() -> ModuleType:
    """torchvision.models.optical_flow; a separate function so tests can simulate its absence."""
    import torchvision.models.optical_flow as optical_flow

    return optical_flow


class RAFTFlow(FlowEstimator):
    """torchvision's raft_large or raft_small with weights from a local file."""

    name = "raft"

    def __init__(
        self,
        weights: str | Path,
        device: str = "cpu",
        small: bool | None = None,
        iterations: int = 12,
    ) -> None:
        self.weights = Path(weights).expanduser()
        if not self.weights.is_file():
            raise ZvsError(
                f"RAFT weights file not found: {self.weights}",
                hint="download torchvision's RAFT weights (.pth) and give their path",
            )
        if iterations < 1:
            raise ZvsError(f"RAFT needs at least one iteration, got {iterations}")
        self.device = device
        self.iterations = iterations
        optical_flow = self._torchvision()
        state = read_state_dict(
            self.weights,
            "RAFT weights",
            "use a torchvision RAFT state dict saved as .pth or .safetensors",
        )
        if small is None:
            small = any(_SMALL_MARKER in k for k in state) and not any(
                k.startswith(_LARGE_MARKER) for k in state
            )
        self.small = small
        model = (optical_flow.raft_small if small else optical_flow.raft_large)(weights=None)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            variant = "raft_small" if small else "raft_large"
            raise ZvsError(
                f"{self.weights} does not hold torchvision {variant} weights",
                hint="use torchvision's RAFT weights; checkpoints of the original RAFT "
                "repository name their layers differently",
            ) from exc
        self._model = model.eval().to(device)
        # One forward pass at a time: parallel passes on one device only contend for it and
        # multiply the memory use.
        self._lock = threading.Lock()

    @staticmethod
    def _torchvision() -> ModuleType:
        try:
            return _import_optical_flow()
        except (ImportError, RuntimeError, OSError) as exc:
            # A torchvision built for another torch fails with RuntimeError (missing C++ ops)
            # or OSError (unloadable library), not only ImportError.
            raise ZvsError(
                f"RAFT needs torchvision, which cannot be imported here: {exc}",
                hint="install the torchvision release that matches your torch, "
                "or use the 'dis' flow estimator",
            ) from exc

    def settings_key(self) -> str:
        # The device is left out on purpose: CPU and GPU results differ only by float noise,
        # and a cache filled on one should serve the other.
        variant = "small" if self.small else "large"
        return (
            f"raft/v{_VERSION}/{variant}/iterations={self.iterations}"
            f"/weights={file_hash(self.weights)}"
        )

    def _run(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Flows from first[n] to second[n] for batches of RGB uint8 NxHxWx3."""
        import torch
        import torch.nn.functional as functional

        height, width = first.shape[1:3]
        pad_h = max(_MIN_SIDE, -(-height // _MULTIPLE) * _MULTIPLE) - height
        pad_w = max(_MIN_SIDE, -(-width // _MULTIPLE) * _MULTIPLE) - width

        def prepare(frames: np.ndarray) -> torch.Tensor:
            tensor = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
            tensor = tensor.permute(0, 3, 1, 2).float() / 127.5 - 1.0
            # Replicate, not zeros: a black band would create false motion at the border.
            return functional.pad(tensor, (0, pad_w, 0, pad_h), mode="replicate")

        with self._lock, torch.inference_mode():
            predictions = self._model(
                prepare(first), prepare(second), num_flow_updates=self.iterations
            )
            flow = predictions[-1][:, :, :height, :width]
            return flow.permute(0, 2, 3, 1).float().cpu().numpy()

    def compute(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        check_frames(source, target)
        return self._run(source[None], target[None])[0]

    def compute_pair(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        check_frames(a, b)
        flows = self._run(np.stack([a, b]), np.stack([b, a]))
        return flows[0], flows[1]
