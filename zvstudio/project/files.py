"""The files a project refers to besides its clip (model, VAE, LoRAs, ControlNet files, the
IP-Adapter, reference images, the matte, painted keys): which are missing, and where they went.

A project moved to another machine or drive keeps paths that no longer lead anywhere. The
editor lists every missing file at once, as an editing tool's "media offline" does, and finds
them again under a folder the user picks, by name (`find_moved`); the command line refuses to
start a render that would stop at the first one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from zvstudio.media.sequence import clip_exists
from zvstudio.project.model import KeyFrame, Project, RenderSettings, Version

MAX_SEARCHED = 500_000  # folder entries a search looks at before it gives up on the rest
# What the diffusion settings' own files are (`ProjectFile.what`), in the inspector's order.
MODEL_FILES = ("checkpoint", "VAE", "LoRA", "ControlNet", "IP-Adapter", "reference image")


@dataclass(frozen=True)
class ProjectFile:
    """A file or folder the project names: what it is for the user, and its path."""

    what: str
    path: str


def project_files(project: Project) -> list[ProjectFile]:
    """Every file or folder `project` refers to, besides its clip, in the order of the
    inspector. Only the diffusion renderer's models count when it renders the keys."""
    settings = project.settings
    files = list(_model_files(settings)) if settings.renderer == "diffusion" else []
    if settings.matte:
        files.append(ProjectFile("matte", settings.matte))
    for key in project.keyframes:
        if key.painted_image:
            files.append(ProjectFile(f"key {key.frame}'s painting", key.painted_image))
        elif key.reference_image and settings.renderer == "diffusion":
            files.append(ProjectFile(f"key {key.frame}'s reference image", key.reference_image))
    return files


def _model_files(settings: RenderSettings) -> Iterator[ProjectFile]:
    checkpoint, vae, lora, controlnet, ip_adapter, reference = MODEL_FILES
    named = [
        (checkpoint, settings.model),
        (vae, settings.vae),
        *((lora, ref.path) for ref in settings.loras),
        *((controlnet, name) for name, _ in settings.controlnets() if _is_path(name)),
        (ip_adapter, settings.ip_adapter),
        (reference, settings.reference_image),
    ]
    yield from (ProjectFile(what, path) for what, path in named if path)


def _is_path(controlnet: str) -> bool:
    """Whether a ControlNet setting is a file or folder, not an annotator name ("depth")."""
    return "/" in controlnet or "\\" in controlnet or bool(Path(controlnet).suffix)


def missing_files(project: Project) -> list[ProjectFile]:
    """The files `project` refers to that are not there (an image sequence when none of its
    frames is)."""
    return [f for f in project_files(project) if not clip_exists(f.path)]


def describe_missing(missing: Sequence[ProjectFile]) -> str:
    """One line per missing file, for a message."""
    return "\n".join(f"{f.what}: {f.path}" for f in missing)


def find_moved(missing: Sequence[ProjectFile], folder: str | os.PathLike[str]) -> dict[str, str]:
    """Where each missing file went under `folder` (old path -> new path), found by its name;
    of several files of that name, the one whose folders match the old path's most closely.
    Files not found are left out."""
    wanted = {Path(f.path).name: Path(f.path) for f in missing}
    candidates: dict[str, list[Path]] = {}
    for entry in _entries(Path(folder)):
        if entry.name in wanted:
            candidates.setdefault(entry.name, []).append(entry)
    moved = {}
    for file in missing:
        old = Path(file.path)
        found = candidates.get(old.name)
        if found:
            best = max(found, key=lambda p: (_common_tail(old, p), -len(p.parts)))
            moved[file.path] = str(best)
    return moved


def _entries(folder: Path) -> Iterator[Path]:
    """Files and folders under `folder`, hidden ones left out, at most MAX_SEARCHED."""
    seen = 0
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in (*dirs, *names):
            seen += 1
            if seen > MAX_SEARCHED:
                return
            yield Path(root) / name


def _common_tail(old: Path, new: Path) -> int:
    """How many of the folders holding `old` and `new` agree, from the innermost out."""
    count = 0
    for a, b in zip(reversed(old.parts[:-1]), reversed(new.parts[:-1]), strict=False):
        if a != b:
            break
        count += 1
    return count


def relinked(
    project: Project | Version, moved: Mapping[str, str]
) -> tuple[RenderSettings, list[KeyFrame]]:
    """The settings and keys of a project (or of one of its versions) with each path in
    `moved` replaced by where it went."""

    def new(path: str | None) -> str | None:
        return moved.get(path, path) if path else path

    settings = project.settings
    settings = replace(
        settings,
        model=new(settings.model),
        vae=new(settings.vae),
        loras=[replace(lora, path=new(lora.path)) for lora in settings.loras],
        controlnet=new(settings.controlnet),
        more_controlnets=[
            replace(ref, controlnet=new(ref.controlnet)) for ref in settings.more_controlnets
        ],
        ip_adapter=new(settings.ip_adapter),
        reference_image=new(settings.reference_image),
        matte=new(settings.matte),
    )
    keys = [
        replace(key, painted_image=new(key.painted_image), reference_image=new(key.reference_image))
        for key in project.keyframes
    ]
    return settings, keys
