"""The one object that describes a render.

The GUI builds a `RenderRequest` from a project, the CLI from its arguments, and the engine
consumes it; nothing else (no widget, no global) reaches the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from zvstudio.errors import ZvsError
from zvstudio.keyrender import KeyParams, working_size
from zvstudio.media.matte import MatteSpec
from zvstudio.media.probe import MediaInfo
from zvstudio.media.writer import ALPHA_FORMATS, ExportSettings, format_for
from zvstudio.project import Project
from zvstudio.project.model import MIN_SHORT_SIDE, KeyFrame, OutputSettings, RenderSettings
from zvstudio.propagate.segment import PropagationSettings

KEY_PLACEMENTS = ("even", "motion")


@dataclass(frozen=True)
class KeyRendererSpec:
    """Which key renderer to use and its settings.

    `kind` is "stylize" (a weightless OpenCV style named by `style`, tuned by `params`),
    "painted" (the artist's own images, `painted` maps frame numbers to image files) or
    "diffusion" (an SD1.x model with the settings in `diffusion`).
    """

    kind: str = "stylize"
    style: str = "stylization"
    params: tuple[tuple[str, float | int | str | bool], ...] = ()
    painted: tuple[tuple[int, str], ...] = ()
    diffusion: object | None = None  # zvstudio.engine.preview.DiffusionSpec for "diffusion"


@dataclass(frozen=True)
class RenderRequest:
    """Render frames `first..last` (inclusive; None = the whole clip) of `source` to `output`.

    Key frames are `key_frames` if given, else every `key_interval` frames from `first` (and
    from each shot cut), or as many placed where the motion needs them with `key_placement`
    "motion"; the key renderer renders them and propagation makes every other frame. With
    neither (and a stylizer), every frame is rendered on its own. Painted keys are the
    painted frames.
    """

    source: Path
    output: Path
    renderer: KeyRendererSpec = field(default_factory=KeyRendererSpec)
    export: ExportSettings = field(default_factory=ExportSettings)
    first: int | None = None
    last: int | None = None
    key_frames: tuple[int, ...] = ()
    key_interval: int | None = None
    key_placement: str = "even"  # of keys at an interval: "even" or "motion"
    key_params: tuple[tuple[int, KeyParams], ...] = ()  # per-key overrides (prompt, seed, ...)
    propagation: PropagationSettings = field(default_factory=PropagationSettings)
    flow_preset: str = "fine"  # the DIS estimator's quality
    flow_estimator: str = "dis"  # "dis", "raft" or one a plugin registered
    # Render (and export) at most this many pixels on the short side; 0: at the clip's size.
    short_side: int = 0
    matte: MatteSpec | None = None  # where the render shows over the original footage

    def __post_init__(self) -> None:
        if self.key_placement not in KEY_PLACEMENTS:
            raise ZvsError(
                f"unknown key placement {self.key_placement!r}",
                hint=f"choose one of: {', '.join(KEY_PLACEMENTS)}",
            )
        check_short_side(self.short_side)

    def frame_size(self, info: MediaInfo) -> tuple[int, int]:
        """The (width, height) the clip is rendered and exported at (see `render_size`)."""
        return render_size(info.display_width, info.display_height, self.short_side)


def check_short_side(short_side: int) -> None:
    """Refuse a render size too small to make sense (0 is the clip's size)."""
    if short_side != 0 and short_side < MIN_SHORT_SIDE:
        raise ZvsError(
            f"the render size must be at least {MIN_SHORT_SIDE} pixels on the short side "
            f"(or 0, the clip's size), got {short_side}"
        )


def render_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """A clip of `width` x `height` rendered at most `short_side` pixels on its short side
    (0: as it is): scaled down when larger, both sides then even (as video encoders need)."""
    scaled_height, scaled_width = working_size(height, width, short_side)
    if (scaled_width, scaled_height) == (width, height):
        return width, height
    return max(2, scaled_width // 2 * 2), max(2, scaled_height // 2 * 2)


def request_from_project(project: Project, output: Path) -> RenderRequest:
    """The render that a project describes, written to `output`."""
    if project.clip is None:
        raise ZvsError("the project has no clip to render", hint="import a clip first")
    settings = project.settings
    out = settings.output
    frame_range = project.frame_range
    return RenderRequest(
        source=Path(project.clip.path),
        output=output,
        renderer=_project_renderer(project),
        export=export_settings(output, out, settings.matte is not None),
        first=frame_range.first if frame_range else None,
        last=frame_range.last if frame_range else None,
        key_frames=tuple(key.frame for key in project.keyframes),
        key_interval=settings.key_interval,
        key_params=tuple(
            (key.frame, params)
            for key in project.keyframes
            if (params := key_params(key)) != KeyParams()
        ),
        propagation=PropagationSettings(
            synthesis=settings.synthesis, blend=settings.blend, poisson=settings.poisson
        ),
        flow_preset=settings.flow_preset,
        short_side=settings.short_side,
        matte=project_matte(settings),
    )


def key_params(key: KeyFrame) -> KeyParams:
    """A project key's overrides as the key renderer takes them."""
    return KeyParams(
        key.prompt,
        key.negative_prompt,
        key.seed,
        key.strength,
        key.reference_image,
        key.reference_strength,
    )


def export_settings(output: Path, out: OutputSettings, has_matte: bool) -> ExportSettings:
    """How to write `output` as a project's output settings say, where that output can: a
    folder gets image frames, a video file a video format; the matte becomes an alpha channel
    only where the format has one and there is a matte."""
    fmt = format_for(output, out.format)
    alpha = out.alpha and has_matte and fmt in ALPHA_FORMATS
    return ExportSettings(format=fmt, crf=out.crf, audio=out.audio, alpha=alpha)


def project_matte(settings: RenderSettings) -> MatteSpec | None:
    """The project's matte, None without one."""
    if settings.matte is None:
        return None
    return MatteSpec(
        Path(settings.matte), settings.matte_invert, settings.matte_feather, settings.matte_crop
    )


def _project_renderer(project: Project) -> KeyRendererSpec:
    settings = project.settings
    # A painted key is its painting whatever the renderer of the other keys.
    painted = tuple(
        (key.frame, key.painted_image) for key in project.keyframes if key.painted_image
    )
    if settings.renderer == "painted":
        return KeyRendererSpec(kind="painted", painted=painted)
    if settings.renderer == "stylize":
        params = tuple(sorted(settings.style_params.items()))
        return KeyRendererSpec(kind="stylize", style=settings.style, params=params, painted=painted)
    if settings.renderer == "diffusion":
        references = (k.reference_image for k in project.keyframes if not k.painted_image)
        diffusion = _project_diffusion(settings, tuple(r for r in references if r))
        return KeyRendererSpec(kind="diffusion", diffusion=diffusion, painted=painted)
    raise ZvsError(f"unknown renderer '{settings.renderer}' in the project")


def _project_diffusion(settings, key_references: tuple[str, ...] = ()):
    """The diffusion spec of a project's settings and its keys' own reference images (the
    model files are checked when loaded)."""
    from zvstudio.diffusion.constraints import ConstraintSchedule
    from zvstudio.diffusion.lora import LoraSpec
    from zvstudio.diffusion.sampler import KeySettings
    from zvstudio.engine.preview import (
        DiffusionSpec,
        choose_controlnet,
        control_fields,
        with_reference_models,
    )
    from zvstudio.project.model import CONSTRAINT_RANGES

    if not settings.model:
        raise ZvsError(
            "the project uses diffusion but names no model",
            hint="choose a Stable Diffusion 1.5 checkpoint in the project settings",
        )
    choices = [choose_controlnet(f"{name}:{scale}") for name, scale in settings.controlnets()]
    key_settings = KeySettings(
        **control_fields(choices, settings.controlnet_scale),
        control_steps=(settings.controlnet_start, settings.controlnet_end),
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        strength=settings.strength,
        seed=settings.seed,
        cross_frame_layers=settings.cross_frame_layers,
        schedule=ConstraintSchedule(
            # Cross-frame attention acts at every step; its layers switch it off.
            cross_frame=None if settings.cross_frame_layers == "off" else (0.0, 1.0),
            **{name: settings.constraint_range(name) for name in CONSTRAINT_RANGES},
        ),
        pixel_fusion_weight=settings.pixel_fusion_weight,
        pixel_fusion_detail=settings.pixel_fusion_detail,
        pixel_fusion_mode=settings.pixel_fusion_mode,
        colour_correction=settings.colour_correction,
        key_size=settings.key_size,
        clip_skip=settings.clip_skip,
        reference_image=settings.reference_image or "",
        reference_scale=settings.reference_strength,
    )
    loras = tuple(LoraSpec(Path(lora.path), lora.weight) for lora in settings.loras)
    vae = Path(settings.vae) if settings.vae else None
    controlnets = tuple(choice.path for choice in choices)
    adapter = Path(settings.ip_adapter) if settings.ip_adapter else None
    spec = DiffusionSpec(
        Path(settings.model),
        key_settings,
        loras,
        controlnets,
        vae=vae,
        ip_adapter=adapter,
        key_references=key_references,
    )
    return with_reference_models(spec)
