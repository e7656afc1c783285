"""The project document (`model`), its `.zvs` file format (`io`) and content hashes."""

from zvstudio.project.hashing import content_hash
from zvstudio.project.io import (
    FORMAT,
    MIGRATIONS,
    ClipMissingError,
    check_clip,
    load_project,
    project_from_dict,
    project_to_dict,
    save_project,
)
from zvstudio.project.model import (
    CURRENT_SCHEMA_VERSION,
    ClipRef,
    ControlNetRef,
    FrameRange,
    KeyFrame,
    LoraRef,
    OutputSettings,
    Project,
    RenderSettings,
)

__all__ = [
    "CURRENT_SCHEMA_VERSION",
    "FORMAT",
    "MIGRATIONS",
    "ClipMissingError",
    "ClipRef",
    "ControlNetRef",
    "FrameRange",
    "KeyFrame",
    "LoraRef",
    "OutputSettings",
    "Project",
    "RenderSettings",
    "check_clip",
    "content_hash",
    "load_project",
    "project_from_dict",
    "project_to_dict",
    "save_project",
]
