"""Deterministic key renderers built on OpenCV's non-photorealistic filters (no model weights).

All stylizers take and return RGB uint8 frames; OpenCV works in BGR, so `render()` converts at
the boundary and `_stylize()` always sees BGR. None of them changes OpenCV's global state (thread
count, RNG seed): the engine may run them next to other OpenCV work.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

from zvstudio.keyrender import KeyContext, KeyRenderer
from zvstudio.progress import CancelToken, Progress, ProgressCallback, ignore_progress
from zvstudio.stylize.settings import StyleSettings, param


class StylizerRenderer(KeyRenderer):
    """Base for per-frame stylizers: a frozen settings dataclass plus one BGR image function."""

    settings_type: ClassVar[type[StyleSettings]] = StyleSettings
    #: Bump when the algorithm changes so cached keys rendered by the old one are not reused.
    version: ClassVar[int] = 1
    description: ClassVar[str] = ""

    def __init__(self, settings: StyleSettings | None = None) -> None:
        if settings is None:
            settings = self.settings_type()
        if not isinstance(settings, self.settings_type):
            raise TypeError(f"{self.name} needs {self.settings_type.__name__}, got {settings!r}")
        self.settings = settings

    @classmethod
    def from_params(cls, **params: Any) -> StylizerRenderer:
        """Create the stylizer from loose parameters (e.g. parsed from the command line)."""
        return cls(cls.settings_type.from_params(cls.name, params))

    def settings_key(self) -> str:
        settings = json.dumps(self.settings.as_dict(), sort_keys=True, separators=(",", ":"))
        return f"stylize:{self.name}:v{self.version}:{settings}"

    def render(
        self,
        frame: np.ndarray,
        context: KeyContext,
        progress: ProgressCallback = ignore_progress,
        cancel: CancelToken | None = None,
    ) -> np.ndarray:
        if cancel is not None:
            cancel.raise_if_cancelled()
        check_frame(frame)
        bgr = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
        result = cv2.cvtColor(self._stylize(bgr), cv2.COLOR_BGR2RGB)
        progress(Progress(stage="key", done=1, total=1))
        return result

    @abstractmethod
    def _stylize(self, bgr: np.ndarray) -> np.ndarray:
        """Stylize a BGR uint8 image and return a BGR uint8 image of the same shape."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings!r})"


def check_frame(frame: np.ndarray) -> None:
    """Reject anything but an RGB uint8 HxWx3 array (a caller bug, not a user error)."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 numpy array, got {getattr(frame, 'dtype', frame)!r}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {frame.shape}")


# --- stylization (watercolour) ------------------------------------------------------------


@dataclass(frozen=True)
class StylizationSettings(StyleSettings):
    sigma_s: float = param(60.0, 1, 200, help="Size of the smoothed washes, in pixels")
    sigma_r: float = param(
        0.45, 0.01, 1, help="How strong a colour edge must be to stop the smoothing"
    )
    # "recursive" is ~4x faster; "normconv" is OpenCV's own cv2.stylization.
    filter: str = param(
        "recursive",
        choices=("recursive", "normconv"),
        help="recursive: about 4x faster; normconv: OpenCV's own stylization filter",
    )


class StylizationRenderer(StylizerRenderer):
    name = "stylization"
    description = "Watercolour look: flat washes of colour with soft dark outlines."
    settings_type = StylizationSettings
    settings: StylizationSettings

    def _stylize(self, bgr: np.ndarray) -> np.ndarray:
        s = self.settings
        if s.filter == "normconv":
            return cv2.stylization(bgr, sigma_s=s.sigma_s, sigma_r=s.sigma_r)
        # cv2.stylization's algorithm with the recursive domain-transform filter in place of
        # normalised convolution: smooth, then darken by the summed per-channel gradient.
        smooth = cv2.edgePreservingFilter(
            bgr, flags=cv2.RECURS_FILTER, sigma_s=s.sigma_s, sigma_r=s.sigma_r
        ).astype(np.float32) * np.float32(1 / 255)
        gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
        shade = 1.0 - cv2.magnitude(gx, gy).sum(axis=2, keepdims=True)
        return to_uint8(smooth * shade * 255)


# --- pencil sketch ------------------------------------------------------------------------


@dataclass(frozen=True)
class PencilSettings(StyleSettings):
    sigma_s: float = param(60.0, 1, 200, help="Size of the smoothed areas, in pixels")
    sigma_r: float = param(0.07, 0.01, 1, help="How strong an edge must be to draw a stroke")
    shade_factor: float = param(0.02, 0.005, 0.1, help="Paper brightness: higher is lighter")
    color: bool = param(False, help="Coloured pencils instead of graphite")
    # Gaussian pre-blur in pixels: pencilSketch turns sensor noise into dark scribbles.
    denoise: float = param(
        1.5, 0, 10, help="Blur before sketching, in pixels: keeps noise from turning to scribbles"
    )


class PencilRenderer(StylizerRenderer):
    name = "pencil"
    description = "Pencil sketch: graphite (or coloured pencil) strokes on white paper."
    settings_type = PencilSettings
    settings: PencilSettings

    def _stylize(self, bgr: np.ndarray) -> np.ndarray:
        s = self.settings
        if s.denoise > 0:
            bgr = cv2.GaussianBlur(bgr, (0, 0), s.denoise)
        grey, colour = cv2.pencilSketch(
            bgr, sigma_s=s.sigma_s, sigma_r=s.sigma_r, shade_factor=s.shade_factor
        )
        return colour if s.color else cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)


# --- cartoon ------------------------------------------------------------------------------

_INK = (24, 24, 24)  # the colour of cartoon outlines (BGR)


@dataclass(frozen=True)
class CartoonSettings(StyleSettings):
    colors: int = param(8, 2, 32, help="Number of flat colours")
    line_size: int = param(
        9, 3, 51, odd=True, help="Neighbourhood for outline detection, pixels (odd)"
    )
    line_threshold: float = param(4.0, 0, 50, help="Higher draws fewer, stronger outlines")
    outlines: bool = param(True, help="Draw dark outlines")


class CartoonRenderer(StylizerRenderer):
    name = "cartoon"
    description = "Cartoon: a few flat colours with bold dark outlines."
    settings_type = CartoonSettings
    settings: CartoonSettings

    def _stylize(self, bgr: np.ndarray) -> np.ndarray:
        s = self.settings
        # Smooth first so texture and noise do not fragment the flat colour regions.
        smooth = cv2.medianBlur(cv2.bilateralFilter(bgr, 9, 75, 75), 5)
        out = quantize_kmeans(smooth, s.colors)
        if s.outlines:
            grey = cv2.medianBlur(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), 7)
            lines = cv2.adaptiveThreshold(
                grey,
                255,
                cv2.ADAPTIVE_THRESH_MEAN_C,
                cv2.THRESH_BINARY,
                s.line_size,
                s.line_threshold,
            )
            out[lines == 0] = _INK
        return out


def quantize_kmeans(image: np.ndarray, colors: int) -> np.ndarray:
    """Map every pixel to the nearest of `colors` k-means colours, deterministically."""
    pixels = image.reshape(-1, 3)
    # A fixed-stride sample keeps the clustering cost independent of the frame size.
    sample = pixels[:: max(1, len(pixels) // 8192)].astype(np.float32)
    palette = _kmeans(sample, colors)
    return palette.astype(np.uint8)[_nearest_lut(image, palette)]


def _kmeans(samples: np.ndarray, k: int, iterations: int = 8) -> np.ndarray:
    # No random seeding (which would need cv2.setRNGSeed, a global): start from colours at
    # evenly spaced brightness quantiles, so similar frames also get similar palettes.
    order = np.argsort(samples.sum(axis=1), kind="stable")
    centers = samples[order[(np.arange(k) * 2 + 1) * len(order) // (2 * k)]]
    for _ in range(iterations):
        labels = _nearest(samples, centers)
        counts = np.bincount(labels, minlength=k)
        sums = np.stack([np.bincount(labels, samples[:, c], minlength=k) for c in range(3)], 1)
        centers = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centers)
    return np.clip(np.rint(centers), 0, 255).astype(np.float32)


def _nearest(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    # Per-channel broadcasting rather than a BLAS product: exact, reproducible whatever the
    # threading, and fast for three channels.
    dist = np.zeros((len(points), len(centers)), np.float32)
    for c in range(3):
        dist += np.square(points[:, c, None] - centers[None, :, c])
    return dist.argmin(axis=1)


def _nearest_lut(image: np.ndarray, palette: np.ndarray) -> np.ndarray:
    # Assigning every pixel directly is the slowest step at 1080p, so look the nearest colour
    # up in a 32x32x32 table of colour cells instead (cell error <= 4 levels, not visible).
    grid = np.arange(4, 256, 8, dtype=np.float32)
    cells = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1).reshape(-1, 3)
    table = _nearest(cells, palette).astype(np.uint8)
    q = (image >> 3).astype(np.int32)
    return table[(q[..., 0] << 10) | (q[..., 1] << 5) | q[..., 2]]


# --- oil painting -------------------------------------------------------------------------


@dataclass(frozen=True)
class OilSettings(StyleSettings):
    sigma_s: float = param(60.0, 1, 200, help="Size of the smoothed brush areas, in pixels")
    sigma_r: float = param(0.4, 0.01, 1, help="How strong an edge must be to stop a brush area")
    detail: float = param(0.15, 0, 1, help="Strength of the brush-stroke detail (0: none)")
    levels: int = param(0, 0, 64, help="Colour levels per channel (below 2: no quantising)")


class OilRenderer(StylizerRenderer):
    name = "oil"
    description = "Oil painting: smooth painterly areas with enhanced brush detail."
    settings_type = OilSettings
    settings: OilSettings

    def _stylize(self, bgr: np.ndarray) -> np.ndarray:
        s = self.settings
        out = cv2.edgePreservingFilter(
            bgr, flags=cv2.RECURS_FILTER, sigma_s=s.sigma_s, sigma_r=s.sigma_r
        )
        if s.detail > 0:
            out = cv2.detailEnhance(out, sigma_s=10, sigma_r=s.detail)
        return posterize(out, s.levels) if s.levels >= 2 else out


# --- posterize ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PosterizeSettings(StyleSettings):
    levels: int = param(5, 2, 64, help="Levels per colour channel")
    smooth: bool = param(True, help="Edge-preserving smoothing first, for cleaner regions")


class PosterizeRenderer(StylizerRenderer):
    name = "posterize"
    description = "Posterize: a few uniform levels per colour channel, like a screen print."
    settings_type = PosterizeSettings
    settings: PosterizeSettings

    def _stylize(self, bgr: np.ndarray) -> np.ndarray:
        s = self.settings
        if s.smooth:
            bgr = cv2.bilateralFilter(bgr, 7, 50, 50)
        return posterize(bgr, s.levels)


def posterize(image: np.ndarray, levels: int) -> np.ndarray:
    """Quantise each channel to `levels` evenly spaced values including 0 and 255."""
    bins = np.arange(256) * levels // 256
    table = np.rint(bins * (255 / (levels - 1))).astype(np.uint8)
    return cv2.LUT(image, table)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


BUILTIN_STYLIZERS: tuple[type[StylizerRenderer], ...] = (
    StylizationRenderer,
    PencilRenderer,
    CartoonRenderer,
    OilRenderer,
    PosterizeRenderer,
)
