"""An example zvstudio plugin: the 'sepia' style (old-photo toning with a vignette).

Install it with `pip install plugins/zvstudio-sepia`; then `zvstudio styles` lists it and
`zvstudio render clip.mp4 --style sepia --every 10 -o out.mp4` uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from zvstudio.stylize import StylizerRenderer
from zvstudio.stylize.settings import StyleSettings, param

# Rows give B, G, R of the output from the input's B, G, R (the classic sepia matrix).
_SEPIA_BGR = np.array(
    [[0.131, 0.534, 0.272], [0.168, 0.686, 0.349], [0.189, 0.769, 0.393]], np.float32
)


@dataclass(frozen=True)
class SepiaSettings(StyleSettings):
    vignette: float = param(0.5, 0, 1)  # how dark the corners get


class SepiaRenderer(StylizerRenderer):
    name = "sepia"
    description = "Sepia: warm old-photo toning with a vignette."
    settings_type = SepiaSettings
    settings: SepiaSettings

    def _stylize(self, bgr: np.ndarray) -> np.ndarray:
        toned = cv2.transform(bgr.astype(np.float32), _SEPIA_BGR)
        height, width = bgr.shape[:2]
        y, x = np.ogrid[-1 : 1 : height * 1j, -1 : 1 : width * 1j]
        falloff = 1.0 - self.settings.vignette * np.clip((x * x + y * y) / 2, 0, 1)
        return np.clip(toned * falloff[..., None], 0, 255).astype(np.uint8)


def register(api) -> None:
    """Called by zvstudio once, with its plugin API."""
    api.register_style("sepia", SepiaRenderer.from_params, SepiaRenderer.description)
