"""Reading still images (a still to animate, a reference image) as RGB arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zvstudio.errors import ZvsError


def read_image(path: Path) -> np.ndarray:
    """An image file as RGB uint8 (alpha dropped); ZvsError when it cannot be read."""
    import cv2

    if not Path(path).is_file():
        raise ZvsError(f"image not found: {path}")
    # imdecode rather than imread: imread cannot open non-ASCII paths on Windows.
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ZvsError(f"cannot read {path} as an image", hint="use a PNG, JPEG or WebP file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
