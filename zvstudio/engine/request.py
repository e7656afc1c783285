"""The one object that describes a render.

The GUI builds a `RenderRequest` from a project, the CLI from its arguments, and the engine
consumes it; nothing else (no widget, no global) reaches the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from zvstudio.errors import ZvsError
from zvstudio.media.writer import ExportSettings, output_kind
from zvstudio.project import Project
from zvstudio.propagate.segment import PropagationSettings


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

    Key frames are `key_frames` if given, else every `key_interval` frames from `first`; the
    key renderer renders them and propagation makes every other frame. With neither (and a
    stylizer), every frame is rendered on its own. Painted keys are the painted frames.
    """

    source: Path
    output: Path
    renderer: KeyRendererSpec = field(default_factory=KeyRendererSpec)
    export: ExportSettings = field(default_factory=ExportSettings)
    first: int | None = None
    last: int | None = None
    key_frames: tuple[int, ...] = ()
    key_interval: int | None = None
    propagation: PropagationSettings = field(default_factory=PropagationSettings)
    flow_preset: str = "fine"


def request_from_project(project: Project, output: Path) -> RenderRequest:
    """The render that a project describes, written to `output`."""
    if project.clip is None:
        raise ZvsError("the project has no clip to render", hint="import a clip first")
    settings = project.settings
    if settings.renderer == "painted":
        painted = tuple(
            (key.frame, key.painted_image) for key in project.keyframes if key.painted_image
        )
        renderer = KeyRendererSpec(kind="painted", painted=painted)
    elif settings.renderer == "stylize":
        renderer = KeyRendererSpec(kind="stylize", style=settings.style)
    else:
        raise ZvsError(
            f"the '{settings.renderer}' renderer is not available in this version",
            hint="choose a weightless style in the project settings",
        )
    out = settings.output
    fmt = "png" if output_kind(output) == "png" else out.format
    export = ExportSettings(format=fmt, crf=out.crf, audio=out.audio)
    frame_range = project.frame_range
    return RenderRequest(
        source=Path(project.clip.path),
        output=output,
        renderer=renderer,
        export=export,
        first=frame_range.first if frame_range else None,
        last=frame_range.last if frame_range else None,
        key_frames=tuple(key.frame for key in project.keyframes),
        key_interval=settings.key_interval,
    )
