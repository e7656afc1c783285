"""Keys painted by hand, in bulk: write a clip's key frames to a folder for an artist to paint
over (or to touch up rendered keys), then take the paintings back as keys.

Files are named by frame number, `frame_000120.png`, as the PNG export names frames, so a
painting finds its frame whatever program it went through. Writing never replaces a file that
is there already: it may be a painting.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from zvstudio.errors import ZvsError
from zvstudio.media.sequence import IMAGE_SUFFIXES, NUMBERED_NAME
from zvstudio.media.writer import write_png
from zvstudio.progress import CancelToken

PAINT_NAME = "frame_{:06d}.png"


@dataclass
class PaintExport:
    """Frames written, and frames whose file was there already (kept as it was)."""

    written: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)


@dataclass
class Paintings:
    """Painted keys found in a folder: frame -> image; the images that fit no frame; the
    frames whose image is still as it was exported (not painted)."""

    by_frame: dict[int, Path] = field(default_factory=dict)
    outside: list[Path] = field(default_factory=list)
    untouched: list[int] = field(default_factory=list)


Unpainted = Callable[[int, np.ndarray], bool]


def write_frames_for_painting(
    folder: str | os.PathLike[str],
    images: Iterable[tuple[int, np.ndarray]],
    cancel: CancelToken | None = None,
) -> PaintExport:
    """Write each (frame, RGB image) to `folder` as `frame_NNNNNN.png`; files already there
    are kept. Each file appears whole or not at all."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ZvsError(f"cannot create {folder}: {exc.strerror or exc}") from exc
    result = PaintExport()
    for frame, image in images:
        if cancel is not None:
            cancel.raise_if_cancelled()
        target = folder / PAINT_NAME.format(frame)
        if target.exists():
            result.kept.append(frame)
            continue
        write_png(target, image)
        result.written.append(frame)
    return result


def as_exported(*sources: Callable[[int], np.ndarray | None]) -> Unpainted:
    """An `unpainted` test for `paintings_in`: the image is exactly what one of `sources`
    gives for its frame (the clip's frame, its render), so nobody painted it."""

    def unpainted(frame: int, image: np.ndarray) -> bool:
        exports = (source(frame) for source in sources)
        return any(
            exported is not None
            and exported.shape == image.shape
            and np.array_equal(exported, image)
            for exported in exports
        )

    return unpainted


def paintings_in(
    folder: str | os.PathLike[str], frame_count: int, unpainted: Unpainted | None = None
) -> Paintings:
    """The images in `folder` whose names end in a frame number of a clip of `frame_count`
    frames (frame_000120.png, key_120.jpg, ...). Where several files carry one number (a .png
    and a .jpg of it), the one saved last is the painting. With `unpainted(frame, rgb)`, images
    it says are still as exported (an artist painted only some of the keys) are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ZvsError(f"folder not found: {folder}")
    found = Paintings()
    newest: dict[int, float] = {}
    for path in sorted(folder.iterdir()):
        match = NUMBERED_NAME.match(path.stem)
        if path.suffix.lower() not in IMAGE_SUFFIXES or not match or not path.is_file():
            continue
        frame = int(match[2])
        if frame >= frame_count:
            found.outside.append(path)
            continue
        saved = path.stat().st_mtime
        if frame not in newest or saved > newest[frame]:
            newest[frame] = saved
            found.by_frame[frame] = path.resolve()
    if unpainted is not None:
        for frame, path in list(found.by_frame.items()):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None and unpainted(frame, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)):
                del found.by_frame[frame]
                found.untouched.append(frame)
        found.untouched.sort()
    found.by_frame = dict(sorted(found.by_frame.items()))
    return found
