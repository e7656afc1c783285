"""The seg annotator: an ADE20K semantic map from the user's own transformers model.

Seg ControlNets (control_v11p_sd15_seg, sd-controlnet-seg) follow a map where each of ADE20K's
150 classes is painted in its fixed colour (`ADE20K_PALETTE`, from `resources/`): the colours
are the condition the ControlNet learned, so a pixel must be exactly its class's colour. Any
transformers semantic-segmentation model trained on ADE20K gives the classes (UperNet, as
diffusers' ControlNet docs use, SegFormer, BEiT, DPT...): the annotator is available when such a
model is on disk, and nothing is ever downloaded. It is looked for like the depth model (see
`zvstudio.diffusion.depth`): `$ZVSTUDIO_SEG_MODEL` (a model folder), then the model folders
(`annotators/NAME`, or `NAME` directly inside a folder), then the Hugging Face cache. A model
with other labels (Cityscapes' 19, Pascal VOC's 21) would paint colours that mean something else
to the ControlNet, so it is never picked. Only safetensors weights are loaded: a
`pytorch_model.bin` is a pickle, which can run code when it is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import numpy as np

from zvstudio.diffusion.depth import TransformersAnnotator, candidate_folders
from zvstudio.errors import ZvsError

ENV_VARIABLE = "ZVSTUDIO_SEG_MODEL"
ADE20K_CLASS_COUNT = 150


def _load_palette() -> tuple[tuple[str, ...], np.ndarray]:
    data = json.loads(
        resources.files("zvstudio.resources").joinpath("ade20k_palette.json").read_text("utf-8")
    )
    colors = np.array(data["colors"], dtype=np.uint8)
    colors.setflags(write=False)  # shared by every annotator: nobody may repaint a class
    return tuple(data["classes"]), colors


#: ADE20K's class names and their RGB colours (150 x 3 uint8), in the models' label order:
#: label k is painted ADE20K_PALETTE[k]. Road and skyscraper share one grey in the original
#: palette, which is kept: the ControlNet was trained on exactly these colours.
ADE20K_CLASSES, ADE20K_PALETTE = _load_palette()


def _read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _is_segmentation_config(config: dict) -> bool:
    architectures = config.get("architectures") or []
    return any(str(name).endswith("ForSemanticSegmentation") for name in architectures)


def _is_ade20k_config(config: dict) -> bool:
    """Whether the labels are ADE20K's 150: by their count, and where the labels are named
    (not transformers' placeholder LABEL_k), by the first, wall, so that another 150-class
    set is not taken for it."""
    id2label = config.get("id2label")
    count = len(id2label) if isinstance(id2label, dict) and id2label else config.get("num_labels")
    if count != ADE20K_CLASS_COUNT:
        return False
    if not isinstance(id2label, dict):
        return True
    first = str(id2label.get("0", id2label.get(0, ""))).strip().lower()
    return first.startswith("label_") or first.startswith(ADE20K_CLASSES[0])


def is_seg_model(folder: Path) -> bool:
    """A transformers folder of a semantic-segmentation model with ADE20K's 150 labels (by its
    config's architectures and labels)."""
    config = _read_config(Path(folder))
    return _is_segmentation_config(config) and _is_ade20k_config(config)


def find_seg_model(folders: Iterable[Path] | None = None) -> Path | None:
    """The first ADE20K segmentation model folder found (see the module's docstring), or None."""
    explicit = os.environ.get(ENV_VARIABLE)
    if explicit:
        folder = Path(explicit).expanduser()
        config = _read_config(folder)
        if not _is_segmentation_config(config):
            raise ZvsError(
                f"${ENV_VARIABLE} is {explicit}, which is not a semantic-segmentation model folder",
                hint="point it at a transformers folder (config.json and model.safetensors) of "
                "an ADE20K segmentation model such as UperNet or SegFormer, or unset it",
            )
        if not _is_ade20k_config(config):
            raise ZvsError(
                f"${ENV_VARIABLE} is {explicit}, a segmentation model that is not trained on "
                "ADE20K's 150 classes",
                hint="seg ControlNets follow ADE20K's classes and colours; point it at an ADE20K "
                "model (such as openmmlab/upernet-convnext-small), or unset it",
            )
        return folder
    if folders is None:
        from zvstudio.diffusion.library import default_model_folders

        folders = default_model_folders()
    return next((f for root in folders for f in candidate_folders(root) if is_seg_model(f)), None)


def colorize(labels: np.ndarray) -> np.ndarray:
    """An HxW map of ADE20K labels -> HxWx3 uint8, each pixel its class's palette colour."""
    return ADE20K_PALETTE[labels]


class SegAnnotator(TransformersAnnotator):
    """annotate(rgb) -> the ADE20K map as RGB uint8 (palette colours), the frame's size."""

    auto_model = "AutoModelForSemanticSegmentation"
    what = "segmentation model"

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return colorize(self.labels(rgb))

    def labels(self, rgb: np.ndarray) -> np.ndarray:
        """Each pixel's ADE20K class (HxW int), the frame's size."""
        import torch
        import torch.nn.functional as F

        model, processor = self._load()
        inputs = processor(images=np.ascontiguousarray(rgb[..., :3]), return_tensors="pt")
        # Only the pixels: some processors add keys (a pixel mask) that UperNet's or
        # SegFormer's forward does not take.
        with torch.no_grad():
            logits = model(pixel_values=inputs["pixel_values"]).logits
        # UperNet's logits come at the processor's size, SegFormer's at a quarter of it; either
        # way the processor squashed the frame to its own (square) size, so the logits are
        # stretched back to the frame's, as transformers' post_process_semantic_segmentation
        # does, before the argmax: class borders land at the frame's resolution.
        logits = F.interpolate(
            logits.float(), size=rgb.shape[:2], mode="bilinear", align_corners=False
        )
        return logits[0].argmax(dim=0).numpy()


#: ADE20K's classes of scenery (ground, sky, water, vegetation, buildings and their surfaces):
#: what stays behind the subject as the camera moves. Every other class is an object.
SCENE_CLASSES = frozenset(
    {
        "wall", "building", "sky", "floor", "tree", "ceiling", "road", "grass", "sidewalk",
        "earth", "mountain", "plant", "water", "sea", "field", "fence", "rock", "sand",
        "skyscraper", "path", "stairs", "runway", "river", "bridge", "hill", "land",
        "dirt track", "waterfall", "lake", "house", "windowpane", "railing", "column",
        "stairway", "tower", "grandstand", "pier", "swimming pool", "palm", "curtain", "rug",
    }
)  # fmt: skip
_SCENE_LABELS = np.array([name in SCENE_CLASSES for name in ADE20K_CLASSES])


class SegForeground:
    """A foreground mask source from a segmentation model: 1 where a pixel's class is an
    object, 0 where it is scenery (`SCENE_CLASSES`). Text2Video-Zero's authors find the
    foreground with a salient-object model; no such model loads in transformers without
    running code from the model's folder, so an ADE20K model's objects stand in for it."""

    def __init__(self, annotator: SegAnnotator) -> None:
        self.annotator = annotator

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return (~_SCENE_LABELS[self.annotator.labels(rgb)]).astype(np.float32)


def find_foreground_source(folders: Iterable[Path] | None = None) -> SegForeground | None:
    """The foreground mask source from the first ADE20K model found (see `find_seg_model`),
    or None when there is none."""
    folder = find_seg_model(folders)
    return None if folder is None else SegForeground(SegAnnotator(folder))
