"""An example zvstudio plugin: a 'softedge' ControlNet annotator from Sobel gradients.

ControlNet 1.1's softedge models follow soft edge maps (white lines on black, brighter where the
edge is stronger) that HED or PiDiNet draw with annotator weights zvstudio cannot download. The
Sobel gradient magnitude of a slightly blurred frame is a rough, weight-free stand-in.

Install it with `pip install plugins/zvstudio-sobel`; then `zvstudio render clip.mp4 --controlnet
softedge:0.7 ...` feeds these edges to the softedge ControlNet of your model folders (such as
control_v11p_sd15_softedge.safetensors).
"""

from __future__ import annotations

import cv2
import numpy as np

# A hard black-to-white step, blurred 3x3, has a Sobel magnitude of 764: it maps to white. The
# gain is fixed rather than each frame's maximum, so every key of a clip gets the same scale.
GAIN = 255 / 764


def sobel_edges(rgb: np.ndarray) -> np.ndarray:
    """Soft edges of an RGB uint8 frame: RGB uint8 of the same size, white on black."""
    grey = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (3, 3), 0)  # tame noise
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    edges = cv2.convertScaleAbs(cv2.magnitude(gx, gy), alpha=GAIN)  # rounds and saturates
    return np.repeat(edges[..., None], 3, axis=2)


def register(api) -> None:
    """Called by zvstudio once, with its plugin API."""
    api.register_annotator("softedge", sobel_edges)
