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
    """annotate(rgb) -> the depth map as RGB uint8 (near bright), the frame's size;
    `normals(rgb)` -> the normal map drawn from it, for normal ControlNets."""

    auto_model = "AutoModelForDepthEstimation"
    what = "depth model"

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        grey = np.round(self.relative_depth(rgb) * 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)

    def normals(self, rgb: np.ndarray) -> np.ndarray:
        return normals_from_depth(self.relative_depth(rgb))

    def annotator_for(self, name: str):
        """The callable that draws annotator `name`'s images ("depth" or "normal")."""
        return self.normals if name == "normal" else self

    def relative_depth(self, rgb: np.ndarray) -> np.ndarray:
        """The model's depth of `rgb` at its size, float32 stretched to 0 (farthest) .. 1
        (nearest)."""
        import torch
        import torch.nn.functional as F

        model, processor = self._load()
        inputs = processor(images=np.ascontiguousarray(rgb[..., :3]), return_tensors="pt")
        with torch.no_grad():
            depth = model(**inputs).predicted_depth
        depth = depth.reshape(1, 1, *depth.shape[-2:]).float()
        depth = F.interpolate(depth, size=rgb.shape[:2], mode="bicubic", align_corners=False)[0, 0]
        # These models predict relative inverse depth (disparity): larger is nearer, which is
        # what depth ControlNets were trained on.
        low, high = depth.min(), depth.max()
        scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
        return scaled.clamp(0, 1).numpy().astype(np.float32)


# Normal maps as ControlNet's "normal from MiDaS" draws them (the maps sd-controlnet-normal
# was trained on, and which normalbae ControlNets follow too: the same axes, red facing left,
# green up, blue towards the viewer). The relative depth is read as a relief whose nearest
# point stands NORMAL_RELIEF short sides in front of its farthest, so that a map does not
# depend on the frame's size or on the depth model's units, which differ between models.
NORMAL_RELIEF = 0.5
# Where the relative depth is below this the surface is drawn facing the camera: the far
# background is flat, as in ControlNet's preprocessor (its "background threshold").
NORMAL_BACKGROUND = 0.4


def normals_from_depth(relative_depth: np.ndarray) -> np.ndarray:
    """The normal map (RGB uint8) of a relative depth map (0 far .. 1 near, HxW float)."""
    import cv2

    relief = relative_depth.astype(np.float32) * (NORMAL_RELIEF * min(relative_depth.shape))
    # A 3x3 Sobel sums eight times the slope per pixel.
    slope_x = cv2.Sobel(relief, cv2.CV_32F, 1, 0, ksize=3) / 8
    slope_y = cv2.Sobel(relief, cv2.CV_32F, 0, 1, ksize=3) / 8
    background = relative_depth < NORMAL_BACKGROUND
    slope_x[background] = 0
    slope_y[background] = 0
    normal = np.stack([slope_x, slope_y, np.ones_like(slope_x)], axis=2)
    normal /= np.linalg.norm(normal, axis=2, keepdims=True)
    return np.clip(normal * 127.5 + 127.5, 0, 255).astype(np.uint8)
