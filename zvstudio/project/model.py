"""The project document: what an artist edits and saves in a `.zvs` file.

Plain dataclasses with no Qt, so the engine, the CLI and the tests use them directly. The
value types are frozen and check their fields on construction (a bad value raises
`ProjectError` at once instead of surfacing in the middle of a render); edit them with
`dataclasses.replace`. Each field's rule lives next to it (see `schema.rule`) and is the
same rule the loader applies to a file. File paths are absolute in memory; `io` stores them
relative to the project's folder where it can.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from zvstudio.keyrender import DEFAULT_KEY_SIZE, MAX_CLIP_SKIP
from zvstudio.media.sequence import sequence_path
from zvstudio.project.hashing import content_hash
from zvstudio.project.schema import Validated, rule

CURRENT_SCHEMA_VERSION = 1

RENDERERS = ("stylize", "diffusion", "painted")
OUTPUT_FORMATS = ("h264", "h265", "prores", "png", "tiff", "exr", "dpx")  # media.writer.FORMATS
SEED_MAX = 2**32 - 1  # the range every UI and RNG in use accepts
# Which UNet self-attention layers attend to the anchor and previous key ("off": none).
CROSS_FRAME_LAYERS = ("decoder", "decoder_loose", "all", "off")
# Constraints acting in a range of the sampling schedule, each with `<name>` (on/off),
# `<name>_start` and `<name>_end` (fractions of T_max) in `RenderSettings`.
CONSTRAINT_RANGES = ("shape_fusion", "pixel_fusion", "adain")
PIXEL_FUSION_MODES = ("single_pass", "two_pass")  # the sampler's (tested), without torch
# Propagation's choices (tested equal to zvstudio.propagate's and zvstudio.flow's), without cv2.
SYNTHESIS_MODES = ("flow", "patch")
BLEND_MODES = ("soft", "histogram")
FLOW_PRESETS = ("ultrafast", "fast", "medium", "fine")
MIN_SHORT_SIDE = 16  # the smallest render size (pixels on the short side)
HASH_PATTERN = (r"(b2:[0-9a-f]{32})?", "empty or 'b2:' followed by 32 hex digits")


def _fraction() -> dict:
    """The rule of a fraction of the sampling schedule (or a 0-1 weight)."""
    return rule("float", low=0, high=1)


@dataclass(frozen=True)
class ClipRef(Validated):
    """The source video. Its content hash tells whether the file on disk is still the one
    the project and its render cache were made from; an empty hash means "not yet hashed"
    (projects migrated from the pre-release format), to be filled in when the clip opens."""

    path: str = field(metadata=rule("path"))
    content_hash: str = field(default="", metadata=rule("str", pattern=HASH_PATTERN))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ClipRef:
        """Reference the clip at `path` (a video file, or an image sequence by its pattern)
        with its current content hash."""
        return cls(os.path.abspath(sequence_path(path)), content_hash(path))


@dataclass(frozen=True)
class FrameRange(Validated):
    """The frames to render, inclusive at both ends like an editor's in and out points."""

    first: int = field(metadata=rule("int", low=0))
    last: int = field(metadata=rule("int", low=0))

    @staticmethod
    def extra_problems(values: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        if values["last"] < values["first"]:
            yield "last", f"must not be before first ({values['first']}), got {values['last']}"

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class KeyFrame(Validated):
    """A frame rendered by the key renderer; every other frame is propagated from keys.
    Each override left as None uses the global value from `RenderSettings`;
    `painted_image` is an image painted outside zvstudio to use as this key's result."""

    frame: int = field(metadata=rule("int", low=0))
    prompt: str | None = field(default=None, metadata=rule("str", nullable=True))
    negative_prompt: str | None = field(default=None, metadata=rule("str", nullable=True))
    seed: int | None = field(
        default=None, metadata=rule("int", nullable=True, low=0, high=SEED_MAX)
    )
    strength: float | None = field(
        default=None, metadata=rule("float", nullable=True, low=0, high=1)
    )
    painted_image: str | None = field(default=None, metadata=rule("path", nullable=True))
    # A reference image of its own, instead of the project's (`RenderSettings.reference_image`)
    reference_image: str | None = field(default=None, metadata=rule("path", nullable=True))
    # How strongly this key takes the look of its reference (own or the project's)
    reference_strength: float | None = field(
        default=None, metadata=rule("float", nullable=True, low=0, high=2)
    )


@dataclass(frozen=True)
class LoraRef(Validated):
    """A LoRA file applied to the diffusion model, scaled by `weight` (negative inverts it)."""

    path: str = field(metadata=rule("path"))
    weight: float = field(default=1.0, metadata=rule("float"))


@dataclass(frozen=True)
class ControlNetRef(Validated):
    """A ControlNet guiding the keys beside the first (`RenderSettings.controlnet`): an
    annotator name that picks one from the model library, or a file or folder."""

    controlnet: str = field(metadata=rule("str", nonempty=True))
    scale: float = field(default=0.7, metadata=rule("float", low=0, high=2))


@dataclass(frozen=True)
class OutputSettings(Validated):
    """How the finished video is exported; `crf` is the H.264/H.265 quality (lower is better)."""

    format: str = field(default="h264", metadata=rule("str", choices=OUTPUT_FORMATS))
    crf: int = field(default=18, metadata=rule("int", low=0, high=51))
    audio: bool = field(default=True, metadata=rule("bool"))
    # The matte as the output's alpha channel, where the format has one (else over the original)
    alpha: bool = field(default=False, metadata=rule("bool"))


@dataclass(frozen=True)
class RenderSettings(Validated):
    """The global render settings; key frames may override the prompt, seed and strength."""

    renderer: str = field(default="stylize", metadata=rule("str", choices=RENDERERS))
    style: str = field(default="stylization", metadata=rule("str", nonempty=True))
    # The style's parameters that differ from its defaults (`zvstudio styles` lists them);
    # checked against the style when it is built, since a plugin's style may be absent here.
    style_params: dict[str, Any] = field(default_factory=dict, metadata=rule("params"))
    key_interval: int = field(default=10, metadata=rule("int", low=1))
    prompt: str = field(default="", metadata=rule("str"))
    negative_prompt: str = field(default="", metadata=rule("str"))
    seed: int = field(default=0, metadata=rule("int", low=0, high=SEED_MAX))
    strength: float = field(default=0.75, metadata=rule("float", low=0, high=1))
    steps: int = field(default=20, metadata=rule("int", low=1, high=1000))
    guidance_scale: float = field(default=7.5, metadata=rule("float", low=0, high=100))
    model: str | None = field(default=None, metadata=rule("str", nullable=True, nonempty=True))
    # A VAE file or folder used instead of the model's own (`zvstudio.diffusion.vae`).
    vae: str | None = field(default=None, metadata=rule("path", nullable=True))
    loras: list[LoraRef] = field(default_factory=list, metadata=rule("list", item=LoraRef))
    controlnet: str | None = field(
        default="canny", metadata=rule("str", nullable=True, nonempty=True)
    )
    controlnet_scale: float = field(default=0.7, metadata=rule("float", low=0, high=2))
    # Where the ControlNets guide, as fractions of the steps a key runs (A1111's "Starting and
    # Ending Control Step").
    controlnet_start: float = field(default=0.0, metadata=_fraction())
    controlnet_end: float = field(default=1.0, metadata=_fraction())
    # More ControlNets, their guidance added to the first's (A1111's multi-ControlNet).
    more_controlnets: list[ControlNetRef] = field(
        default_factory=list, metadata=rule("list", item=ControlNetRef)
    )
    # A reference image every key takes its look from, through an IP-Adapter (`ip_adapter`, or
    # one from the model library), and how strongly (`zvstudio.diffusion.ip_adapter`).
    reference_image: str | None = field(default=None, metadata=rule("path", nullable=True))
    reference_strength: float = field(default=0.6, metadata=rule("float", low=0, high=2))
    ip_adapter: str | None = field(default=None, metadata=rule("path", nullable=True))
    # The cross-frame constraints (METHOD 1.1), with the sampler's defaults (`KeySettings`,
    # `ConstraintSchedule`); cross-frame attention acts at every step.
    cross_frame_layers: str = field(
        default="decoder", metadata=rule("str", choices=CROSS_FRAME_LAYERS)
    )
    shape_fusion: bool = field(default=True, metadata=rule("bool"))
    shape_fusion_start: float = field(default=0.9, metadata=_fraction())
    shape_fusion_end: float = field(default=1.0, metadata=_fraction())
    pixel_fusion: bool = field(default=True, metadata=rule("bool"))
    pixel_fusion_start: float = field(default=0.5, metadata=_fraction())
    pixel_fusion_end: float = field(default=0.8, metadata=_fraction())
    pixel_fusion_weight: float = field(default=1.0, metadata=_fraction())
    # 0 is the paper's linear blend; 0.9 the soft form of the authors' code (see KeySettings).
    pixel_fusion_detail: float = field(default=0.0, metadata=_fraction())
    pixel_fusion_mode: str = field(
        default="single_pass", metadata=rule("str", choices=PIXEL_FUSION_MODES)
    )
    adain: bool = field(default=True, metadata=rule("bool"))
    colour_correction: bool = field(default=False, metadata=rule("bool"))
    key_size: int = field(default=DEFAULT_KEY_SIZE, metadata=rule("int", low=0, high=16384))
    # A1111's "Clip skip": 2 reads the prompt from CLIP's penultimate layer (anime models).
    clip_skip: int = field(default=1, metadata=rule("int", low=1, high=MAX_CLIP_SKIP))
    # Render and export at most this many pixels on the short side; 0: at the clip's size.
    short_side: int = field(default=0, metadata=rule("int", low=0, high=16384))
    adain_start: float = field(default=0.0, metadata=_fraction())
    adain_end: float = field(default=0.2, metadata=_fraction())
    # How keys are carried to the other frames (`PropagationSettings`, with its defaults).
    synthesis: str = field(default="flow", metadata=rule("str", choices=SYNTHESIS_MODES))
    flow_preset: str = field(default="fine", metadata=rule("str", choices=FLOW_PRESETS))
    blend: str = field(default="soft", metadata=rule("str", choices=BLEND_MODES))
    poisson: bool = field(default=False, metadata=rule("bool"))
    # A matte clip (`zvstudio.media.matte`): the render shows where it is white or opaque.
    matte: str | None = field(default=None, metadata=rule("path", nullable=True))
    matte_invert: bool = field(default=False, metadata=rule("bool"))
    matte_feather: float = field(default=0.0, metadata=rule("float", low=0, high=200))
    # Render each key's matte area at the frame's size (`zvstudio.engine.matte_keys`).
    matte_crop: bool = field(default=False, metadata=rule("bool"))
    output: OutputSettings = field(
        default_factory=OutputSettings, metadata=rule("object", item=OutputSettings)
    )

    @staticmethod
    def extra_problems(values: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        if 0 < values["short_side"] < MIN_SHORT_SIDE:
            yield "short_side", f"must be 0 (the clip's size) or at least {MIN_SHORT_SIDE}"
        for name in (*CONSTRAINT_RANGES, "controlnet"):
            start, end = values[f"{name}_start"], values[f"{name}_end"]
            if end <= start:  # an empty range would silently never run
                yield f"{name}_end", f"must be after {name}_start ({start}), got {end}"

    def controlnets(self) -> list[tuple[str, float]]:
        """(annotator name or path, strength) of every ControlNet in use, the first first."""
        first = [(self.controlnet, self.controlnet_scale)] if self.controlnet else []
        return first + [(ref.controlnet, ref.scale) for ref in self.more_controlnets]

    def constraint_range(self, name: str) -> tuple[float, float] | None:
        """The (start, end) fractions of T_max where constraint `name` acts; None when off."""
        if name not in CONSTRAINT_RANGES:
            raise ValueError(f"unknown constraint {name!r}")
        if not getattr(self, name):
            return None
        return getattr(self, f"{name}_start"), getattr(self, f"{name}_end")


@dataclass(frozen=True)
class Version(Validated):
    """A look the artist kept, to compare renders with and to go back to: the render settings
    and the keys (with their overrides) as they were. Its renders stay in the cache, found
    again by their content, so comparing costs no render while the cache keeps them."""

    name: str = field(metadata=rule("str", nonempty=True))
    settings: RenderSettings = field(
        default_factory=RenderSettings, metadata=rule("object", item=RenderSettings)
    )
    keyframes: list[KeyFrame] = field(
        default_factory=list, metadata=rule("list", item=KeyFrame, unique="frame")
    )
    kept: str = field(default="", metadata=rule("str"))  # when, as ISO 8601 local time


@dataclass
class Project(Validated):
    """The whole document. `keyframes` is kept sorted by frame with unique frames; change it
    through `set_key` and `remove_key`, which keep it that way."""

    clip: ClipRef | None = field(default=None, metadata=rule("object", nullable=True, item=ClipRef))
    frame_range: FrameRange | None = field(
        default=None, metadata=rule("object", nullable=True, item=FrameRange)
    )
    keyframes: list[KeyFrame] = field(
        default_factory=list, metadata=rule("list", item=KeyFrame, unique="frame")
    )
    settings: RenderSettings = field(
        default_factory=RenderSettings, metadata=rule("object", item=RenderSettings)
    )
    versions: list[Version] = field(
        default_factory=list, metadata=rule("list", item=Version, unique="name")
    )
    schema_version: int = field(
        default=CURRENT_SCHEMA_VERSION, metadata=rule("int", choices=(CURRENT_SCHEMA_VERSION,))
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.keyframes = sorted(self.keyframes, key=lambda key: key.frame)

    def _index(self, frame: int) -> int:
        return bisect.bisect_left(self.keyframes, frame, key=lambda key: key.frame)

    def key_at(self, frame: int) -> KeyFrame | None:
        """The key frame at `frame`, or None when that frame is not a key."""
        i = self._index(frame)
        found = i < len(self.keyframes) and self.keyframes[i].frame == frame
        return self.keyframes[i] if found else None

    def set_key(self, key: KeyFrame) -> KeyFrame | None:
        """Add `key`, replacing the key at the same frame; returns the replaced one (for undo)."""
        if not isinstance(key, KeyFrame):
            raise TypeError(f"expected a KeyFrame, got {type(key).__name__}")
        old = self.key_at(key.frame)
        i = self._index(key.frame)
        if old is None:
            self.keyframes.insert(i, key)
        else:
            self.keyframes[i] = key
        return old

    def remove_key(self, frame: int) -> KeyFrame | None:
        """Remove the key at `frame`; returns it, or None when there was none."""
        old = self.key_at(frame)
        if old is not None:
            self.keyframes.pop(self._index(frame))
        return old
