"""Key frames painted outside zvstudio by an artist, loaded from image files."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from zvstudio.errors import ZvsError
from zvstudio.keyrender import KeyContext, KeyParams, KeyRenderer
from zvstudio.progress import CancelToken, Progress, ProgressCallback, ignore_progress
from zvstudio.stylize.filters import check_frame

#: Relative aspect-ratio difference up to which a painting is resized to the frame size.
ASPECT_TOLERANCE = 0.01
_DEPTH_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


class PaintedKeyRenderer(KeyRenderer):
    """Returns the painted image for each key frame instead of rendering one.

    Paintings may be 8- or 16-bit, grey, RGB or RGBA; transparent parts show the source
    frame. A painting whose aspect ratio matches the video's is resized to the frame size.
    """

    name = "painted"
    version = 1

    def __init__(self, paintings: Mapping[int, str | os.PathLike[str]]) -> None:
        self.paintings = {int(index): Path(path) for index, path in paintings.items()}
        negative = [index for index in self.paintings if index < 0]
        if negative:
            raise ZvsError(f"painted key frame numbers must be >= 0, got {negative}")

    @property
    def key_frames(self) -> list[int]:
        """The frame indices that have a painting."""
        return sorted(self.paintings)

    def settings_key(self) -> str:
        # Content hashes, not paths or times, so repainting a key invalidates cached results
        # and moving the files does not. Files are re-read each call: mtimes are too coarse to
        # notice a quick repaint of the same size.
        hashes = {str(index): _file_hash(path) for index, path in sorted(self.paintings.items())}
        return f"painted:v{self.version}:{json.dumps(hashes, sort_keys=True)}"

    def key_identity(self, frame_index: int, params: KeyParams | None = None) -> str:
        # One painting per key: repainting one key must not invalidate the others.
        path = self.paintings.get(frame_index)
        return f"painted:v{self.version}:{_file_hash(path) if path else 'none'}"

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
        path = self.paintings.get(context.frame_index)
        if path is None:
            raise ZvsError(
                f"frame {context.frame_index} has no painted key",
                hint=f"painted frames: {', '.join(map(str, self.key_frames)) or 'none'}",
            )
        result = load_painting(path, frame)
        progress(Progress(stage="key", done=1, total=1))
        return result


def load_painting(path: Path, frame: np.ndarray) -> np.ndarray:
    """Load `path` as an RGB uint8 image the size of `frame`, composited over it if it has alpha."""
    image = _read_image(path)
    rgb, alpha = _split_float(image, path)
    height, width = frame.shape[:2]
    if rgb.shape[:2] != (height, width):
        _check_aspect(path, rgb.shape[1], rgb.shape[0], width, height)
        rgb, alpha = _resize(rgb, width, height), _resize(alpha, width, height)
    if alpha is not None:
        # Premultiplied alpha (also through the resize) avoids dark fringes at soft edges.
        alpha = np.clip(alpha, 0.0, 1.0)[..., None]
        rgb = rgb + frame.astype(np.float32) * np.float32(1 / 255) * (1.0 - alpha)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _file_hash(path: Path) -> str:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return "missing"  # render() reports it; the key just must not match a real file


def _read_image(path: Path) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ZvsError(
            f"cannot read the painted key {path}: {exc.strerror or exc}",
            hint="check that the file exists and is readable",
        ) from exc
    # imdecode rather than imread: imread cannot open non-ASCII paths on Windows.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ZvsError(
            f"the painted key {path} is not an image that can be read",
            hint="save it as PNG, JPEG or TIFF",
        )
    return image


def _split_float(image: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Convert any supported layout to premultiplied float RGB in [0, 1] plus optional alpha."""
    if image.dtype in _DEPTH_SCALE:
        image = image.astype(np.float32) * np.float32(1 / _DEPTH_SCALE[image.dtype])
    elif image.dtype == np.float32:
        image = np.clip(image, 0.0, 1.0)  # float TIFF/EXR: assume display-referred 0..1
    else:
        raise ZvsError(f"the painted key {path} has an unsupported pixel type ({image.dtype})")
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[2]
    if channels > 4:
        raise ZvsError(f"the painted key {path} has {channels} channels; expected 1 to 4")
    # Layouts: grey, grey + alpha, BGR, BGRA.
    rgb = image[..., 2::-1] if channels >= 3 else np.repeat(image[..., :1], 3, axis=2)
    alpha = image[..., -1] if channels in (2, 4) else None
    if alpha is not None:
        rgb = rgb * alpha[..., None]
    return np.ascontiguousarray(rgb), alpha


def _check_aspect(path: Path, width: int, height: int, frame_w: int, frame_h: int) -> None:
    if abs((width / height) / (frame_w / frame_h) - 1.0) > ASPECT_TOLERANCE:
        raise ZvsError(
            f"the painted key {path} is {width}x{height} but the video frames are "
            f"{frame_w}x{frame_h}: the aspect ratios differ",
            hint="paint over an exported frame, or crop the painting to the video's aspect ratio",
        )


def _resize(image: np.ndarray | None, width: int, height: int) -> np.ndarray | None:
    if image is None:
        return None
    # INTER_AREA to shrink without aliasing, INTER_CUBIC to enlarge smoothly.
    shrinking = width * height < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(image, (width, height), interpolation=interpolation)


class WithPaintedKeys(KeyRenderer):
    """Another renderer's keys, except the frames the artist painted, which are the paintings:
    a project may replace single keys of a stylized or diffusion render by hand."""

    def __init__(self, base: KeyRenderer, paintings: PaintedKeyRenderer) -> None:
        self.base, self.paintings = base, paintings
        self.name = base.name
        self.needs_weights = base.needs_weights
        self.uses_references = base.uses_references

    def settings_key(self) -> str:
        return f"{self.base.settings_key()}+{self.paintings.settings_key()}"

    def key_identity(self, frame_index: int, params: KeyParams | None = None) -> str:
        if frame_index in self.paintings.paintings:
            return self.paintings.key_identity(frame_index)
        return self.base.key_identity(frame_index, params)

    def render(
        self,
        frame: np.ndarray,
        context: KeyContext,
        progress: ProgressCallback = ignore_progress,
        cancel: CancelToken | None = None,
    ) -> np.ndarray:
        renderer = self.paintings if context.frame_index in self.paintings.paintings else self.base
        return renderer.render(frame, context, progress, cancel)
