"""The depth annotator: a monocular depth model from the user's own files, through transformers.

Depth ControlNets follow a relative depth map, near bright. Any transformers depth-estimation
model gives one (DPT / MiDaS, as lllyasviel's annotator uses, or Depth Anything): the annotator
is available when such a model is on disk, and nothing is ever downloaded. It is looked for in
`$ZVSTUDIO_DEPTH_MODEL` (a model folder), then in the model folders (`annotators/NAME`, or
`NAME` directly inside a folder), then in the Hugging Face cache. Only safetensors weights are
loaded: a `pytorch_model.bin` is a pickle, which can run code when it is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from zvstudio.errors import ZvsError

ENV_VARIABLE = "ZVSTUDIO_DEPTH_MODEL"


def is_depth_model(folder: Path) -> bool:
    """A transformers folder of a depth-estimation model (by its config's architectures)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    architectures = (config.get("architectures") if isinstance(config, dict) else None) or []
    return any(str(name).endswith("ForDepthEstimation") for name in architectures)


def find_depth_model(folders: Iterable[Path] | None = None) -> Path | None:
    """The first depth model folder found (see the module's docstring), or None."""
    explicit = os.environ.get(ENV_VARIABLE)
    if explicit:
        folder = Path(explicit).expanduser()
        if not is_depth_model(folder):
            raise ZvsError(
                f"${ENV_VARIABLE} is {explicit}, which is not a depth-estimation model folder",
                hint="point it at a transformers folder (config.json and model.safetensors) "
                "of a depth model such as Depth Anything or DPT, or unset it",
            )
        return folder
    if folders is None:
        from zvstudio.diffusion.library import default_model_folders

        folders = default_model_folders()
    return next((f for root in folders for f in candidate_folders(root) if is_depth_model(f)), None)


def candidate_folders(root: Path) -> Iterator[Path]:
    """Folders that may hold an annotator's model under a model folder `root`: those in
    `root/annotators` and in `root`, with Hugging Face cache repos as their snapshots."""
    from zvstudio.diffusion.library import ANNOTATORS_FOLDER

    for parent in (root / ANNOTATORS_FOLDER, root):
        try:
            children = sorted(p for p in parent.iterdir() if p.is_dir())
        except OSError:
            continue
        for child in children:
            if child.name.startswith("models--"):  # a Hugging Face cache repo
                from zvstudio.diffusion.library import hf_snapshot

                snapshot = hf_snapshot(child)
                if snapshot is not None:
                    yield snapshot
            else:
                yield child


class TransformersAnnotator:
    """An annotator backed by a transformers model folder (`auto_model`, the name of its
    transformers Auto class), loaded on first use, on the CPU: one frame per key costs little
    beside the diffusion. `what` words the errors (e.g. "depth model")."""

    auto_model = ""
    what = ""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._model = None
        self._processor = None

    @property
    def identity(self) -> str:
        """What determines the maps, for cache keys: the model's folder and weights' size."""
        weights = sorted(self.folder.glob("*.safetensors"))
        return f"{self.folder.name}:{sum(w.stat().st_size for w in weights)}"

    def _load(self):
        if self._model is None:
            import transformers

            if not any(self.folder.glob("*.safetensors")):
                raise ZvsError(
                    f"the {self.what} {self.folder} has no safetensors weights",
                    hint="its pytorch_model.bin is a pickle, which can run code when it is "
                    "read; use a copy with model.safetensors",
                )
            self._processor = transformers.AutoImageProcessor.from_pretrained(
                self.folder, local_files_only=True
            )
            model = getattr(transformers, self.auto_model).from_pretrained(
                self.folder, local_files_only=True, use_safetensors=True
            )
            self._model = model.eval()
        return self._model, self._processor


class DepthAnnotator(TransformersAnnotator):
    """annotate(rgb) -> the depth map as RGB uint8 (near bright), the frame's size."""

    auto_model = "AutoModelForDepthEstimation"
    what = "depth model"

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        model, processor = self._load()
        inputs = processor(images=np.ascontiguousarray(rgb[..., :3]), return_tensors="pt")
        with torch.no_grad():
            depth = model(**inputs).predicted_depth
        depth = depth.reshape(1, 1, *depth.shape[-2:]).float()
        depth = F.interpolate(depth, size=rgb.shape[:2], mode="bicubic", align_corners=False)[0, 0]
        # These models predict relative inverse depth (disparity): larger is nearer, which is
        # what depth ControlNets were trained on. Stretch it to the full 8-bit range.
        low, high = depth.min(), depth.max()
        scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
        grey = (scaled * 255).round().to(torch.uint8).numpy()
        return np.repeat(grey[..., None], 3, axis=2)
