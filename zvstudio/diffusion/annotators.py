"""ControlNet annotators: what turns a frame into the control image a ControlNet follows.

An annotator is `annotate(rgb) -> image`: an RGB uint8 HxWx3 frame in, an RGB uint8 control image
of the same size out (a grey HxW image is accepted and repeated to RGB). Canny (OpenCV, no
weights) is built in; plugins add more through `PluginAPI.register_annotator`, loaded the first
time annotators are listed or used. The annotator's name is also the word `--controlnet NAME`
looks for in the model library's ControlNet names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from zvstudio.errors import ZvsError
from zvstudio.plugins import check_name

Annotate = Callable[[np.ndarray], np.ndarray]
BUILTIN_ANNOTATORS = ("canny",)
DEFAULT_CANNY_THRESHOLDS = (100, 200)  # KeySettings.canny_thresholds' default
# Annotator types that would need annotator weights (HED, MiDaS, OpenPose, ...) that zvstudio
# cannot download, unless a plugin provides them.
UNAVAILABLE_ANNOTATORS = (
    "hed",
    "softedge",
    "lineart",
    "depth",
    "normal",
    "openpose",
    "mlsd",
    "scribble",
    "seg",
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
    return f"{name}@{entry.plugin}:{entry.version}" if entry.plugin else name


def canny(rgb: np.ndarray, thresholds: tuple[int, int] = DEFAULT_CANNY_THRESHOLDS) -> np.ndarray:
    """Canny edges as white on black, RGB uint8."""
    edges = cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), *thresholds)
    return np.repeat(edges[..., None], 3, axis=2)


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
    try:
        image = np.asarray(entry.annotate(rgb))
    except ZvsError:
        raise
    except Exception as exc:
        raise ZvsError(
            f"{what} failed: {type(exc).__name__}: {exc}",
            hint="update or uninstall the plugin, or use --controlnet canny",
        ) from exc
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.dtype != np.uint8 or image.shape != rgb.shape:
        raise ZvsError(
            f"{what} returned a {image.dtype} {'x'.join(map(str, image.shape))} image for a "
            f"{'x'.join(map(str, rgb.shape))} frame",
            hint="an annotator must return an RGB uint8 image of the frame's size; "
            "update or uninstall the plugin",
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
