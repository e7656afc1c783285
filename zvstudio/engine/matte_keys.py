"""Keys rendered closer: each key's matte area rendered at the size of the whole frame.

A renderer that scales frames down (diffusion renders at 512 pixels on the short side) leaves
a small subject few pixels. With `MatteSpec.crop`, each key's matte area (the box around where
its matte shows the render, a margin of context, widened to the frame's shape) is cut out,
scaled up to the frame's size, rendered, and put back; outside it the key is the frame itself,
which the matte hides in the output. AUTOMATIC1111 calls this "inpaint only masked".

Each key has its own area, found from its own matte frame, so adding a key moves no other.
A key's references (the anchor, the previous key) are cut to their own areas, so the renderer
sees every image at one size and its flow-based constraints follow the subject from crop to
crop. A key whose matte is empty, or covers most of the frame, is rendered whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from zvstudio.keyrender import KeyContext, KeyParams, KeyRenderer, RenderedKey
from zvstudio.media.matte import MatteReader, MatteSpec
from zvstudio.media.sequence import clip_hash
from zvstudio.progress import CancelToken, ProgressCallback, ignore_progress

# Part of the keys' cache identity: change it when the areas below are found differently.
AREA_VERSION = "matte area v1"
VISIBLE = 0.02  # matte weights above this show the render (below: invisible at 8 bits)
MARGIN = 1 / 16  # of the frame's short side around the matte: context for the model
SMALLEST = 1 / 4  # of the frame's sides: a tiny matte is not magnified more than 4 times
WHOLE = 0.9  # an area this close to the frame's size gains nothing: the frame is rendered


@dataclass(frozen=True)
class Area:
    """A rectangle of a frame in pixels, with the frame's aspect ratio."""

    x: int
    y: int
    width: int
    height: int

    def cut(self, image: np.ndarray) -> np.ndarray:
        """This area of `image`, scaled up to the size of `image` (Lanczos)."""
        height, width = image.shape[:2]
        part = image[self.y : self.y + self.height, self.x : self.x + self.width]
        return cv2.resize(part, (width, height), interpolation=cv2.INTER_LANCZOS4)

    def paste(self, frame: np.ndarray, rendered: np.ndarray) -> np.ndarray:
        """`frame` with this area replaced by `rendered` (the frame's size) scaled down."""
        result = frame.copy()
        part = cv2.resize(rendered, (self.width, self.height), interpolation=cv2.INTER_AREA)
        result[self.y : self.y + self.height, self.x : self.x + self.width] = part
        return result


def matte_area(weights: np.ndarray) -> Area | None:
    """The area of a frame to render as a key for the matte `weights` (height x width, 0..1):
    the box around its visible part with a margin, widened to the frame's aspect ratio, at
    least `SMALLEST` of the frame and inside it. None: render the whole frame (the matte is
    empty, or the area would be nearly all of it)."""
    height, width = weights.shape
    visible = weights > VISIBLE
    rows = np.flatnonzero(visible.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(visible.any(axis=0))
    margin = min(height, width) * MARGIN
    top, bottom = rows[0] - margin, rows[-1] + 1 + margin
    left, right = cols[0] - margin, cols[-1] + 1 + margin
    scale = max((bottom - top) / height, (right - left) / width, SMALLEST)
    if scale >= WHOLE:
        return None
    area_width, area_height = round(width * scale), round(height * scale)
    x = round((left + right - area_width) / 2)
    y = round((top + bottom - area_height) / 2)
    x = min(max(x, 0), width - area_width)
    y = min(max(y, 0), height - area_height)
    return Area(x, y, area_width, area_height)


class MatteAreaRenderer(KeyRenderer):
    """`base`'s keys, each rendered on its matte area (see the module docstring). `base` may be
    anything with `key_identity` and `uses_references` when only identities are needed."""

    def __init__(self, base, matte: MatteSpec, frame_count: int) -> None:
        self.base, self.matte, self.frame_count = base, matte, frame_count
        self.name = getattr(base, "name", "")
        self.needs_weights = getattr(base, "needs_weights", False)
        self.uses_references = base.uses_references
        self._areas: dict[tuple[int, tuple[int, int]], Area | None] = {}
        # One reader per size, open for the renderer's life (one render): probing a matte
        # video reads all of it, and keys come in order, so decoding goes on without seeks.
        self._mattes: dict[tuple[int, int], MatteReader] = {}
        self._matte_id: str | None = None

    def settings_key(self) -> str:
        return f"{self.base.settings_key()}|{self._identity()}"

    def key_identity(self, frame_index: int, params: KeyParams | None = None) -> str:
        return f"{self.base.key_identity(frame_index, params)}|{self._identity()}"

    def _identity(self) -> str:
        """What the areas depend on: the matte's pictures and how they are read."""
        if self._matte_id is None:
            self._matte_id = clip_hash(self.matte.path)
        matte = self.matte
        return f"{AREA_VERSION} {self._matte_id} invert={matte.invert} feather={matte.feather}"

    def area(self, number: int, size: tuple[int, int]) -> Area | None:
        """Frame `number`'s area at `size` (width, height); None: the whole frame."""
        if (number, size) not in self._areas:
            if size not in self._mattes:
                self._mattes[size] = MatteReader(self.matte, size, self.frame_count)
            self._areas[number, size] = matte_area(self._mattes[size].weights(number))
        return self._areas[number, size]

    def render(
        self,
        frame: np.ndarray,
        context: KeyContext,
        progress: ProgressCallback = ignore_progress,
        cancel: CancelToken | None = None,
    ) -> np.ndarray:
        size = frame.shape[1], frame.shape[0]
        area = self.area(context.frame_index, size)
        cut = {}  # each reference once: the renderer tells the anchor by identity
        for key in (context.anchor, context.previous):
            if key is not None and id(key) not in cut:
                cut[id(key)] = self._cut_key(key, size)
        closer = KeyContext(
            context.frame_index,
            cut.get(id(context.anchor)),
            cut.get(id(context.previous)),
            context.params,
            context.shot_first,
        )
        if area is None:
            return self.base.render(frame, closer, progress, cancel)
        rendered = self.base.render(area.cut(frame), closer, progress, cancel)
        return area.paste(frame, rendered)

    def _cut_key(self, key: RenderedKey, size: tuple[int, int]) -> RenderedKey:
        area = self.area(key.frame_index, size)
        if area is None:
            return key
        return RenderedKey(key.frame_index, area.cut(key.source), area.cut(key.result))
