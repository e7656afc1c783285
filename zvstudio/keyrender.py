"""The key-frame renderer interface.

Weightless stylizers, externally painted keys and the diffusion renderer all implement
`KeyRenderer`, so the engine renders keys the same way whatever produces them. Images are
RGB `uint8` arrays of shape (height, width, 3) throughout zvstudio.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from zvstudio.progress import CancelToken, ProgressCallback, ignore_progress

# Diffusion renders keys at most this many pixels on the short side (SD1.x's training size) and
# scales them to the frame's size (see zvstudio.diffusion.sampler); 0: at the frame's size.
DEFAULT_KEY_SIZE = 512
# The most layers a prompt may skip from CLIP's end (A1111's "Clip skip" slider; SD1.x's text
# encoder has 12): see zvstudio.diffusion.prompts.encode_ids.
MAX_CLIP_SKIP = 12


def working_size(height: int, width: int, key_size: int) -> tuple[int, int]:
    """The (height, width) a key of that size is rendered at by a renderer that works best at
    `key_size` pixels on the short side (diffusion): scaled down to it, never up (0: as is)."""
    short = min(height, width)
    if key_size <= 0 or short <= key_size:
        return height, width
    scale = key_size / short
    return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass(frozen=True)
class RenderedKey:
    """A key frame that has already been rendered: the input frame and its result."""

    frame_index: int
    source: np.ndarray
    result: np.ndarray


@dataclass(frozen=True)
class KeyParams:
    """Per-key settings; `None` means "use the renderer's global setting"."""

    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    strength: float | None = None
    reference_image: str | None = None  # a reference image of its own (IP-Adapter)
    reference_strength: float | None = None  # its (or the global reference's) strength


@dataclass(frozen=True)
class KeyContext:
    """What a key renderer may use besides the frame itself.

    `anchor` is the first rendered key and `previous` the key rendered just before this one;
    diffusion uses them for its cross-frame constraints, per-frame stylizers ignore them.
    `shot_first` is the first frame of this key's shot: a reference from an earlier shot
    shares its style, but no optical flow leads to it.
    """

    frame_index: int
    anchor: RenderedKey | None = None
    previous: RenderedKey | None = None
    params: KeyParams = field(default_factory=KeyParams)
    shot_first: int = 0

    def in_shot(self, key: RenderedKey) -> bool:
        """Whether `key` is in this key's shot (flow-based constraints can use it)."""
        return key.frame_index >= self.shot_first


class KeyRenderer(ABC):
    """Renders one key frame. Implementations must be deterministic for equal inputs."""

    #: Short identifier used on the command line, in projects and in cache keys.
    name: str = ""
    #: Whether rendering needs model weights (the weightless stylizers do not).
    needs_weights: bool = False
    #: Whether a key's result depends on the anchor and previous keys (diffusion does).
    uses_references: bool = False

    @abstractmethod
    def settings_key(self) -> str:
        """A stable string of every setting that determines the output (for content caching)."""

    def key_identity(self, frame_index: int, params: KeyParams | None = None) -> str:
        """A stable string of everything that determines the key at `frame_index` with the
        per-key overrides `params` (besides the frame itself and, when `uses_references`, the
        earlier keys): its cache identity. Renderers that ignore `params` leave it out."""
        return self.settings_key()

    @abstractmethod
    def render(
        self,
        frame: np.ndarray,
        context: KeyContext,
        progress: ProgressCallback = ignore_progress,
        cancel: CancelToken | None = None,
    ) -> np.ndarray:
        """Render `frame` (RGB uint8, HxWx3) and return an image of the same shape."""
