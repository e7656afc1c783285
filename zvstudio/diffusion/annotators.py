"""ControlNet annotators: what turns a frame into the control image a ControlNet follows.

An annotator is `annotate(rgb) -> image`: an RGB uint8 HxWx3 frame in, an RGB uint8 control image
of the same size out (a grey HxW image is accepted and repeated to RGB). Canny, scribble (OpenCV,
no weights), tile and ip2p (the frame itself) are built in; those backed by the user's weights
files (depth, HED, ...) are found on disk; plugins add more through
`PluginAPI.register_annotator`. All are loaded the first time annotators are listed or used. The
annotator's name is also the word `--controlnet NAME` looks for in the model library's
ControlNet names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from zvstudio.errors import ZvsError
from zvstudio.plugins import check_name

logger = logging.getLogger(__name__)

Annotate = Callable[[np.ndarray], np.ndarray]
BUILTIN_ANNOTATORS = ("canny", "scribble", "tile", "ip2p")
DEFAULT_CANNY_THRESHOLDS = (100, 200)  # KeySettings.canny_thresholds' default
# Annotator types that need annotator weights (HED, MiDaS, OpenPose, ...) that zvstudio does
# not download: unavailable unless a plugin provides them or (WEIGHTS_NEEDED) their weights
# are on disk.
UNAVAILABLE_ANNOTATORS = (
    "hed",
    "softedge",
    "lineart",
    "depth",
    "normal",
    "openpose",
    "mlsd",
    "seg",
)

# The weights each annotator backed by the user's files needs, for messages.
WEIGHTS_NEEDED = {
    "depth": "a transformers depth model (Depth Anything or DPT, with model.safetensors)",
    "normal": "a transformers depth model (Depth Anything or DPT, with model.safetensors; "
    "normals are drawn from its depth)",
    "hed": "lllyasviel's ControlNetHED.pth",
    "softedge": "lllyasviel's ControlNetHED.pth",
    "lineart": "lllyasviel's sk_model.pth",
    "openpose": "lllyasviel's body_pose_model.pth",
    "mlsd": "lllyasviel's mlsd_large_512_fp32.pth",
    "seg": "a transformers ADE20K segmentation model (UperNet or SegFormer, with "
    "model.safetensors)",
}
# The annotators backed by a transformers model folder, which may also be named by a variable.
MODEL_FOLDER_VARIABLES = {
    "depth": "ZVSTUDIO_DEPTH_MODEL",
    "normal": "ZVSTUDIO_DEPTH_MODEL",
    "seg": "ZVSTUDIO_SEG_MODEL",
}


def weights_hint(name: str) -> str:
    """Where to put annotator `name`'s weights; empty for one zvstudio cannot load itself."""
    needed = WEIGHTS_NEEDED.get(name)
    if needed is None:
        return ""
    variable = MODEL_FOLDER_VARIABLES.get(name)
    also = f", ${variable}" if variable else ""
    return (
        f"put {needed} in a model folder's annotators/ (e.g. ~/zvstudio/models/annotators/), "
        f"the Hugging Face cache{also} or your WebUI/ComfyUI annotator folder"
    )


@dataclass(frozen=True)
class _Annotator:
    annotate: Annotate
    plugin: str = ""  # the plugin's entry-point name; empty for built-ins
    version: str = ""  # part of the identity: a new plugin version may draw other images


_annotators: dict[str, _Annotator] = {}


def register_annotator(
    name: str, annotate: Annotate, *, plugin: str = "", version: str = "", replace: bool = False
) -> None:
    """Make `annotate` available as annotator `name` (lower-case letters, digits, _ -)."""
    check_name("annotator", name)
    if not callable(annotate):
        raise TypeError(f"annotator {name!r} must be callable, got {type(annotate).__name__}")
    if name in _annotators and not replace:
        raise ValueError(f"annotator {name!r} is already registered")
    _annotators[name] = _Annotator(annotate, plugin, version)


def _with_plugins() -> None:
    from zvstudio.plugins import load_plugins

    load_plugins()
    if not _local_models_checked:
        refresh_local_annotators()


_local_models_checked = False


def _local_kinds() -> tuple:
    """(names, finder, annotator class) of each annotator backed by the user's files."""
    from zvstudio.diffusion.depth import DepthAnnotator, find_depth_model
    from zvstudio.diffusion.hed import HedAnnotator, find_hed_weights
    from zvstudio.diffusion.lineart import LineartAnnotator, find_lineart_weights
    from zvstudio.diffusion.mlsd import MlsdAnnotator, find_mlsd_weights
    from zvstudio.diffusion.openpose import OpenposeAnnotator, find_openpose_weights
    from zvstudio.diffusion.seg import SegAnnotator, find_seg_model

    return (
        (("depth", "normal"), find_depth_model, DepthAnnotator),
        (("hed", "softedge"), find_hed_weights, HedAnnotator),
        (("lineart",), find_lineart_weights, LineartAnnotator),
        (("openpose",), find_openpose_weights, OpenposeAnnotator),
        (("mlsd",), find_mlsd_weights, MlsdAnnotator),
        (("seg",), find_seg_model, SegAnnotator),
    )


def forget_local_annotators() -> None:
    """Look for the annotators backed by the user's files again when next asked (the model
    folders changed)."""
    global _local_models_checked
    _local_models_checked = False


def refresh_local_annotators() -> None:
    """Look again for annotators backed by the user's model files (depth, HED soft edges,
    lineart, ...), e.g. after a model was added or $ZVSTUDIO_DEPTH_MODEL changed. A plugin's
    annotator of the same name wins."""
    global _local_models_checked
    _local_models_checked = True
    for names, find, make in _local_kinds():
        names = [n for n in names if not (n in _annotators and _annotators[n].plugin)]
        for name in names:
            _annotators.pop(name, None)
        try:
            found = find() if names else None
        except ZvsError as exc:
            logger.warning("%s", exc)
            continue
        if found is not None:
            annotator = make(found)
            for name in names:
                # One model may draw several kinds of image (depth and normals).
                draws = (
                    annotator.annotator_for(name)
                    if hasattr(annotator, "annotator_for")
                    else annotator
                )
                _annotators[name] = _Annotator(draws, version=annotator.identity)


def local_annotator_files(folders=None) -> dict[str, str | None]:
    """{annotator: the model file or folder it would use, None when there is none} for the
    annotators backed by the user's files, looked for in `folders` (default: the model
    folders). A bad $ZVSTUDIO_DEPTH_MODEL or $ZVSTUDIO_SEG_MODEL is reported as the value
    instead."""
    found: dict[str, str | None] = {}
    for names, find, _ in _local_kinds():
        name = "/".join(names)
        try:
            path = find(folders)
        except ZvsError as exc:
            found[name] = f"error: {exc}"
            continue
        found[name] = str(path) if path is not None else None
    return found


def available_annotators() -> list[str]:
    """The annotators' names, built-ins first."""
    _with_plugins()
    return [*BUILTIN_ANNOTATORS, *sorted(set(_annotators) - set(BUILTIN_ANNOTATORS))]


def has_annotator(name: str) -> bool:
    _with_plugins()
    return name in _annotators


def annotator_plugin(name: str) -> str:
    """The plugin that provides annotator `name`; empty for a built-in or an unknown name."""
    _with_plugins()
    entry = _annotators.get(name)
    return entry.plugin if entry else ""


def annotator_identity(name: str) -> str:
    """What determines annotator `name`'s images, for cache keys: the name, and for a plugin
    annotator the plugin and its version."""
    entry = _lookup(name)
    return f"{name}@{entry.plugin}:{entry.version}" if entry.plugin or entry.version else name


def canny(rgb: np.ndarray, thresholds: tuple[int, int] = DEFAULT_CANNY_THRESHOLDS) -> np.ndarray:
    """Canny edges as white on black, RGB uint8."""
    edges = cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), *thresholds)
    return np.repeat(edges[..., None], 3, axis=2)


# Scribble ControlNets were trained on rough strokes; the extended difference of Gaussians
# (XDoG) draws those from any frame. Its blur widths are for a 512-pixel short side (the size
# ControlNet's preprocessor works at) and scale with the frame, so a clip's look does not depend
# on its resolution.
SCRIBBLE_FINE_SIGMA = 0.5
SCRIBBLE_COARSE_SIGMA = 5.0
SCRIBBLE_THRESHOLD = 16.0  # how much darker than its surroundings (0-255) a stroke must be


def scribble(rgb: np.ndarray, threshold: float = SCRIBBLE_THRESHOLD) -> np.ndarray:
    """Strokes where the frame is darker than its surroundings in every channel (XDoG), white
    on black, RGB uint8."""
    scale = min(rgb.shape[:2]) / 512
    image = rgb[..., :3].astype(np.float32)
    fine = cv2.GaussianBlur(image, (0, 0), max(SCRIBBLE_FINE_SIGMA * scale, 0.1))
    coarse = cv2.GaussianBlur(image, (0, 0), max(SCRIBBLE_COARSE_SIGMA * scale, 0.1))
    darker = (coarse - fine).min(axis=2)
    strokes = np.where(darker > threshold, 255, 0).astype(np.uint8)
    return np.repeat(strokes[..., None], 3, axis=2)


def frame_itself(rgb: np.ndarray) -> np.ndarray:
    """The frame as its own control image, for the ControlNets that follow the picture itself:
    tile (which keeps its details and colours at high strengths) and ip2p (instruction edits)."""
    return np.array(rgb[..., :3], dtype=np.uint8, copy=True)


def annotate(
    name: str, rgb: np.ndarray, canny_thresholds: tuple[int, int] = DEFAULT_CANNY_THRESHOLDS
) -> np.ndarray:
    """The control image of `rgb` (RGB uint8 HxWx3) by annotator `name`, RGB uint8 HxWx3.

    A plugin annotator that fails or returns something else is a ZvsError naming the plugin.
    """
    if name == "canny":  # the thresholds are the built-in's own setting
        return canny(rgb, canny_thresholds)
    entry = _lookup(name)
    what = (
        f"the {name} annotator (plugin {entry.plugin!r})"
        if entry.plugin
        else f"the {name} annotator"
    )
    remedy = "update or uninstall the plugin" if entry.plugin else "check its model files"
    try:
        image = np.asarray(entry.annotate(rgb))
    except ZvsError:
        raise
    except Exception as exc:
        raise ZvsError(
            f"{what} failed: {type(exc).__name__}: {exc}",
            hint=f"{remedy}, or use --controlnet canny",
        ) from exc
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.dtype != np.uint8 or image.shape != rgb.shape:
        raise ZvsError(
            f"{what} returned a {image.dtype} {'x'.join(map(str, image.shape))} image for a "
            f"{'x'.join(map(str, rgb.shape))} frame",
            hint=f"an annotator must return an RGB uint8 image of the frame's size; {remedy}",
        )
    return image


def control_condition(
    rgb: np.ndarray,
    annotator: str = "canny",
    canny_thresholds: tuple[int, int] = DEFAULT_CANNY_THRESHOLDS,
) -> np.ndarray:
    """The ControlNet conditioning image of a frame: RGB float32 in [0, 1], the frame's size."""
    return annotate(annotator, rgb, canny_thresholds).astype(np.float32) / 255.0


def _lookup(name: str) -> _Annotator:
    _with_plugins()
    entry = _annotators.get(name)
    if entry is None:
        raise ZvsError(
            f"unknown annotator {name!r}",
            hint=f"available annotators: {', '.join(available_annotators())}",
        )
    return entry


register_annotator("canny", canny)
register_annotator("scribble", scribble)
register_annotator("tile", frame_itself)
register_annotator("ip2p", frame_itself)
