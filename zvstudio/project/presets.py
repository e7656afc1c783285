"""Render presets: a look made on one shot, used on the others.

A preset is a project's render settings under a name (its file's), less what belongs to one
clip (its matte): the renderer, the style or the model with its LoRAs, ControlNet and
prompts, the cross-frame constraints, keys, propagation and output. Applying one replaces
those settings and keeps the project's matte. Presets are JSON files in the settings folder's
`presets/`, one per preset, written atomically (the previous version kept as `.bak`), so the
editor and `zvstudio render --preset NAME` share them and they can be copied to another
machine. Model paths are stored as they are (absolute): a preset is not beside any project.
"""

from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path

from zvstudio.atomic import write_atomically
from zvstudio.errors import ProjectError
from zvstudio.paths import config_root
from zvstudio.project.model import RenderSettings
from zvstudio.project.schema import read_object, show, to_json

FORMAT = "zvstudio-preset"
# Settings of one clip, not of a look: applying a preset keeps the project's.
CLIP_FIELDS = ("matte", "matte_invert", "matte_feather", "matte_crop")
MAX_NAME = 64
_SUFFIX = ".json"


@dataclass(frozen=True)
class Preset:
    """A preset's name, file and settings (every field of `RenderSettings` but CLIP_FIELDS)."""

    name: str
    path: Path
    settings: RenderSettings

    def applied_to(self, settings: RenderSettings) -> RenderSettings:
        """`settings` with this preset's look, keeping their clip's own fields (the matte)."""
        kept = {name: getattr(settings, name) for name in CLIP_FIELDS}
        return replace(self.settings, **kept)


def describe(settings: RenderSettings) -> str:
    """A line saying what a preset does: its renderer, keys and prompt."""
    if settings.renderer == "diffusion":
        model = Path(settings.model).name if settings.model else "no model"
        loras = "".join(f" + {Path(lora.path).stem}:{lora.weight:g}" for lora in settings.loras)
        vae = f" with VAE {Path(settings.vae).stem}" if settings.vae else ""
        what = f"diffusion: {model}{vae}{loras}"
        controls = settings.controlnets()
        if controls:
            names = " + ".join(f"{Path(name).name} {scale:g}" for name, scale in controls)
            what += f", ControlNet {names}"
            if (settings.controlnet_start, settings.controlnet_end) != (0, 1):
                start, end = settings.controlnet_start, settings.controlnet_end
                what += f" (steps {start:g} to {end:g})"
        if settings.reference_image:
            strength = settings.reference_strength
            what += f", reference {Path(settings.reference_image).name} {strength:g}"
        what += f", strength {settings.strength:g}"
        if settings.clip_skip != 1:
            what += f", clip skip {settings.clip_skip}"
    elif settings.renderer == "stylize":
        params = ", ".join(f"{k} {v}" for k, v in sorted(settings.style_params.items()))
        what = f"style {settings.style}" + (f" ({params})" if params else "")
    else:
        what = "painted keys"
    what += f"; a key every {settings.key_interval} frames"
    if settings.renderer == "diffusion" and settings.prompt:
        prompt = settings.prompt if len(settings.prompt) <= 60 else settings.prompt[:57] + "..."
        what += f'; "{prompt}"'
    return what


def presets_folder() -> Path:
    return config_root() / "presets"


def check_name(name: str) -> str:
    """`name` stripped, if it can name a preset (and its file) on every system."""
    stripped = name.strip()
    problem = None
    if not stripped:
        problem = "is empty"
    elif len(stripped) > MAX_NAME:
        problem = f"is longer than {MAX_NAME} characters"
    elif stripped.startswith("."):
        problem = "starts with a dot"
    elif any(c in '/\\:*?"<>|' or unicodedata.category(c)[0] == "C" for c in stripped):
        problem = 'has one of / \\ : * ? " < > | or a control character'
    if problem:
        raise ProjectError(f"the preset name {name!r} {problem}", hint="e.g. 'Ink noir'")
    return stripped


def preset_path(name: str) -> Path:
    return presets_folder() / f"{check_name(name)}{_SUFFIX}"


def save_preset(name: str, settings: RenderSettings) -> Preset:
    """Save `settings` (less CLIP_FIELDS) as the preset `name`, replacing one of that name."""
    name = check_name(name)
    path = preset_path(name)
    look = {k: v for k, v in to_json(settings, lambda p: p).items() if k not in CLIP_FIELDS}
    data = {"format": FORMAT, "settings": look}
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(str(path), (text + "\n").encode("utf-8"))
    except OSError as exc:
        raise ProjectError(f"could not save the preset {name!r}: {exc.strerror or exc}") from exc
    return Preset(name, path, _look(settings))


def load_preset(name: str) -> Preset:
    """The preset `name`; `ProjectError` names what is wrong (and the presets there are)."""
    path = preset_path(name)
    if not path.is_file():
        known = ", ".join(p.name for p in list_presets()) or "none yet"
        raise ProjectError(
            f"there is no preset {name!r} (presets: {known})",
            hint="save one in the editor (Render > Presets > Save settings as preset) or with "
            "'zvstudio presets save NAME --from PROJECT.zvs'",
        )
    return read_preset(path)


def read_preset(path: Path) -> Preset:
    """The preset in the file `path`, every field checked."""
    source = f"the preset {path.name}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProjectError(f"cannot read {source}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = show(data.get("format")) if isinstance(data, dict) else show(data)
        raise ProjectError(f"{source} is not a zvstudio preset (its format is {found})")
    look = data.get("settings")
    problems: list[str] = []
    if isinstance(look, dict):
        clip_fields = [k for k in look if k in CLIP_FIELDS]
        problems += [f"settings.{k}: belongs to a clip, not a preset" for k in clip_fields]
    settings = read_object(RenderSettings, look, "settings", problems, lambda p: p)
    if problems:
        listed = "; ".join(problems[:10])
        raise ProjectError(f"{source} has problems: {listed}", hint="save the preset again")
    return Preset(path.stem, path, settings)


def list_presets(problems: list[str] | None = None) -> list[Preset]:
    """Every readable preset, by name; what is wrong with the others goes to `problems`."""
    presets = []
    folder = presets_folder()
    for path in sorted(folder.glob(f"*{_SUFFIX}")) if folder.is_dir() else []:
        try:
            presets.append(read_preset(path))
        except ProjectError as exc:
            if problems is not None:
                problems.append(str(exc))
    return sorted(presets, key=lambda preset: preset.name.casefold())


def delete_preset(name: str) -> None:
    """Remove the preset `name` (its `.bak` stays, to undo by hand)."""
    path = load_preset(name).path
    try:
        os.replace(path, f"{path}.bak")
    except OSError as exc:
        raise ProjectError(f"could not delete the preset {name!r}: {exc.strerror or exc}") from exc


def _look(settings: RenderSettings) -> RenderSettings:
    """`settings` with the clip's fields at their defaults, as a preset holds them."""
    defaults = RenderSettings()
    return replace(settings, **{name: getattr(defaults, name) for name in CLIP_FIELDS})
