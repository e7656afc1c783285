"""Mattes: where the render shows and where the original footage stays.

A matte is a clip of its own, frame for frame with the clip it belongs to: a video or an image
sequence, as a roto or segmentation tool exports it. Frames with an alpha channel (PNG, TIFF
or EXR images with transparency, ProRes 4444, WebM with alpha) give their alpha; anything
else its brightness (white: the render, black: the original). `composite` puts each rendered
frame over the original through its matte, so a subject can be restyled while the rest of the
shot stays as filmed.

The matte acts after rendering: keys and propagated segments are cached without it, so
changing or removing a matte only composites again. The one exception is `MatteSpec.crop`,
which renders each key's matte area closer (`zvstudio.engine.matte_keys`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from zvstudio.errors import MediaError
from zvstudio.media.probe import MediaInfo, probe
from zvstudio.media.reader import FrameCache, Size, VideoReader

# Rec. 709 luma weights: a grey matte of any hue reads as its brightness.
_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)
MAX_FEATHER = 200.0  # pixels; a wider soft edge is a different matte, not a feather


@dataclass(frozen=True)
class MatteSpec:
    """The matte clip at `path`; `invert` swaps what shows (black: the render), `feather`
    softens its edge by a Gaussian blur of that many pixels (at the render's size); `crop`
    renders each key's matte area at the size of the whole frame (more detail on a small
    subject; see `zvstudio.engine.matte_keys`)."""

    path: Path
    invert: bool = False
    feather: float = 0.0
    crop: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.feather <= MAX_FEATHER:
            raise MediaError(f"a matte's feather must be 0-{MAX_FEATHER:g} px, not {self.feather}")


class MatteReader:
    """The weights of a matte's frames (float32, 0..1, height x width) at `size`."""

    def __init__(self, spec: MatteSpec, size: Size, frame_count: int) -> None:
        self.spec = spec
        self.size = size
        try:
            info = probe(spec.path)
        except MediaError as exc:  # say that it is the matte, not the clip, that is wrong
            raise MediaError(f"the matte: {exc.message}", hint=exc.hint) from exc
        if info.frame_count != frame_count:
            raise MediaError(
                f"the matte {Path(spec.path).name} has {info.frame_count} frames and the clip "
                f"{frame_count}",
                hint="export the matte from the same frames as the clip, one image per frame",
            )
        # Read like any clip (video levels, rotation and all); a frame is used once, so
        # nothing is kept.
        self._reader = VideoReader(spec.path, FrameCache(0), info, size)
        self._rotation = info.rotation
        try:
            components = self._reader.decoded(0).format.components
        except BaseException:
            self._reader.close()
            raise
        self.has_alpha = any(component.is_alpha for component in components)

    def weights(self, number: int) -> np.ndarray:
        """Frame `number`'s matte: 1 where the render shows, 0 where the original does."""
        if self.has_alpha:
            return self._shaped(self._alpha(number))
        return self._shaped(_brightness(self._reader.frame(number)))

    def frames(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """(number, weights) for frames start..stop-1 in order."""
        if self.has_alpha:  # exact decoding goes on from frame to frame: no seeks
            for number in range(start, stop):
                yield number, self.weights(number)
            return
        for number, image in self._reader.frames(start, stop):
            yield number, self._shaped(_brightness(image))

    def _alpha(self, number: int) -> np.ndarray:
        """The alpha channel of frame `number`, upright, at `size`, as 0..1."""
        width, height = self.size if self._rotation % 180 == 0 else self.size[::-1]
        frame = self._reader.decoded(number)
        rgba = frame.reformat(width=width, height=height, format="rgba", interpolation="AREA")
        alpha = rgba.to_ndarray()[..., 3]
        if self._rotation:
            alpha = np.rot90(alpha, k=self._rotation // 90)
        return alpha.astype(np.float32) / 255.0

    def _shaped(self, matte: np.ndarray) -> np.ndarray:
        if self.spec.feather > 0:
            matte = cv2.GaussianBlur(matte, (0, 0), self.spec.feather)
        if self.spec.invert:
            matte = 1.0 - matte
        return np.clip(matte, 0.0, 1.0)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> MatteReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _brightness(image: np.ndarray) -> np.ndarray:
    """An RGB uint8 frame's luma, 0..1."""
    return image.astype(np.float32) @ (_LUMA / 255.0)


def composite(rendered: np.ndarray, original: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`rendered` over `original` through `weights` (1: rendered), as RGB uint8."""
    alpha = weights[..., None]
    mixed = rendered.astype(np.float32) * alpha + original.astype(np.float32) * (1.0 - alpha)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def matted_frames(
    frames: Iterator[tuple[int, np.ndarray]],
    info: MediaInfo,
    spec: MatteSpec,
    size: Size,
    first: int,
    last: int,
    alpha: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """`frames` (rendered frames first..last of the clip `info` describes, in order, at
    `size`), each put over the original frame through its matte; with `alpha`, given the matte
    as their alpha channel instead (RGBA), for a compositor to do it."""
    with MatteReader(spec, size, info.frame_count) as mattes:
        matte_frames = mattes.frames(first, last + 1)
        if alpha:
            for (number, image), (_, matte) in zip(frames, matte_frames, strict=True):
                opacity = np.clip(matte * 255.0 + 0.5, 0, 255).astype(np.uint8)
                yield number, np.dstack([image, opacity])
            return
        with VideoReader(info.path, FrameCache(0), info, size) as originals:
            original_frames = originals.frames(first, last + 1)
            for (number, image), (_, matte), (_, original) in zip(
                frames, matte_frames, original_frames, strict=True
            ):
                yield number, composite(image, original, matte)


def check_matte(spec: MatteSpec | None, frame_count: int, alpha: bool = False) -> None:
    """Fail before any work if the matte cannot be read or does not fit the clip, or if an
    alpha channel is asked for without one."""
    if spec is not None:
        MatteReader(spec, (16, 16), frame_count).close()
    elif alpha:
        raise MediaError(
            "an alpha channel needs a matte", hint="give the matte that the alpha comes from"
        )
