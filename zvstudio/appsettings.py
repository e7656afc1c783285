"""The user's application settings: model folders, device policy, cache, autosave, recent files,
and the values last used in the generation dialogs.

Stored as one JSON object in `config_root()/settings.json` with a `version`, written atomically
(temp file beside it, fsync, rename) so a crash never leaves half a file. Loading never fails:
a damaged, unreadable or unknown file is moved aside to `settings.json.bad` and the defaults
are used, with `load_warning` saying why so the GUI can tell the user. Values are checked on
construction with the same rules (and wording) as the project document's fields.

`apply_settings` hands the engine its share through the environment variables it already reads
(`ZVSTUDIO_CACHE_DIR`, `ZVSTUDIO_CACHE_LIMIT_GB`), so the CLI and the GUI configure it alike,
and the model folders to every lookup of model files (`set_app_model_folders`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from zvstudio.atomic import write_atomically
from zvstudio.errors import ZvsError
from zvstudio.paths import config_root
from zvstudio.project.schema import rule, rule_of, show

SETTINGS_VERSION = 1
SETTINGS_FILE = "settings.json"
MAX_RECENT = 10
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")
# Mirrors engine.device.OFFLOAD_MODES (a test keeps them equal): importing the engine's device
# module here would load torch just to read the settings.
OFFLOAD_CHOICES = ("auto", "none", "model", "sequential")
DEVICE_PATTERN = (r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, mps, cuda or cuda:N")
MAX_AUTOSAVE_MINUTES = 120


@dataclass
class AppSettings:
    """Everything the user sets once for the application (not per project).

    `model_folders` are scanned besides the default folders; `autosave_minutes` 0 turns
    autosave off; `recent_projects` is most recent first; `show_risk` is the View menu's "Show
    where propagation may fail", `loop_playback`, `mute` and `scrub_sound` the Timeline menu's
    "Loop playback", "Mute sound" and "Scrub sound", `volume` the transport bar's playback
    volume. `text_to_video` and `animate_image` remember the New from text... and Animate
    image... dialogs' last values (name -> string, number, bool or null; the dialogs ignore
    names and values they do not know).
    `load_warning` is not saved: it says why `load_settings` fell back to the defaults.
    """

    version: int = field(
        default=SETTINGS_VERSION, metadata=rule("int", low=1, high=SETTINGS_VERSION)
    )
    model_folders: list[str] = field(default_factory=list)
    models_dir: str | None = field(default=None, metadata=rule("str", nullable=True, nonempty=True))
    allow_pickle: bool = field(default=False, metadata=rule("bool"))
    device: str = field(default="auto", metadata=rule("str", pattern=DEVICE_PATTERN))
    precision: str = field(default="auto", metadata=rule("str", choices=PRECISION_CHOICES))
    memory_limit_gb: float | None = field(
        default=None, metadata=rule("float", nullable=True, low=1, high=4096)
    )
    offload: str = field(default="auto", metadata=rule("str", choices=OFFLOAD_CHOICES))
    cache_dir: str | None = field(default=None, metadata=rule("str", nullable=True, nonempty=True))
    cache_limit_gb: float = field(default=10.0, metadata=rule("float", low=0.5, high=1_000_000))
    autosave_minutes: int = field(default=3, metadata=rule("int", low=0, high=MAX_AUTOSAVE_MINUTES))
    recent_projects: list[str] = field(default_factory=list)
    show_risk: bool = field(default=False, metadata=rule("bool"))
    loop_playback: bool = field(default=False, metadata=rule("bool"))
    mute: bool = field(default=False, metadata=rule("bool"))
    scrub_sound: bool = field(default=True, metadata=rule("bool"))
    volume: float = field(default=1.0, metadata=rule("float", low=0, high=1))
    text_to_video: dict[str, Any] = field(default_factory=dict)
    animate_image: dict[str, Any] = field(default_factory=dict)
    load_warning: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ZvsError listing every bad value (the fields are mutable, so check again
        before saving)."""
        problems = [
            f"{f.name}{sub}: {why}"
            for f in fields(self)
            if "rule" in f.metadata
            for sub, why in rule_of(f).problems(getattr(self, f.name))
        ]
        problems += _string_list_problems("model_folders", self.model_folders)
        problems += _string_list_problems("recent_projects", self.recent_projects)
        problems += _remembered_problems("text_to_video", self.text_to_video)
        problems += _remembered_problems("animate_image", self.animate_image)
        if isinstance(self.recent_projects, list) and len(self.recent_projects) > MAX_RECENT:
            problems.append(f"recent_projects: at most {MAX_RECENT} entries")
        if problems:
            raise ZvsError(
                "invalid settings: " + "; ".join(problems),
                hint="fix the value, or delete the settings file to start from the defaults",
            )

    def add_recent(self, path: str | os.PathLike[str]) -> None:
        """Put `path` first in the recent projects (once), keeping the newest MAX_RECENT."""
        entry = os.path.abspath(path)
        others = [p for p in self.recent_projects if p != entry]
        self.recent_projects = [entry, *others][:MAX_RECENT]

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "load_warning"}

    @classmethod
    def from_json(cls, data: Any) -> AppSettings:
        """Settings from a parsed file; raises ZvsError for anything it cannot take."""
        if not isinstance(data, dict):
            raise ZvsError(f"expected a JSON object, got {show(data)}")
        version = data.get("version")
        if isinstance(version, int) and version > SETTINGS_VERSION:
            raise ZvsError(f"written by a newer zvstudio (settings version {version})")
        known = {f.name for f in fields(cls)} - {"load_warning"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ZvsError("unknown settings: " + ", ".join(unknown))
        return cls(**data)


def _string_list_problems(name: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        return [f"{name}: expected a list, got {show(value)}"]
    return [
        f"{name}[{i}]: expected a non-empty string, got {show(item)}"
        for i, item in enumerate(value)
        if not isinstance(item, str) or not item
    ]


def _remembered_problems(name: str, value: Any) -> list[str]:
    if not isinstance(value, dict):
        return [f"{name}: expected an object, got {show(value)}"]
    scalars = (str, int, float, bool, type(None))
    return [
        f"{name}.{key}: expected a string, number, true/false or null, got {show(item)}"
        for key, item in value.items()
        if not isinstance(key, str) or not isinstance(item, scalars)
    ]


def settings_path() -> Path:
    return config_root() / SETTINGS_FILE


def load_settings(path: str | os.PathLike[str] | None = None) -> AppSettings:
    """The saved settings, or the defaults when there are none.

    Never raises: a file that cannot be used is kept as `<name>.bad` (so the user's values are
    not lost when the defaults are saved over it) and the result's `load_warning` says why.
    """
    path = Path(path) if path is not None else settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return AppSettings()
    except (OSError, UnicodeDecodeError) as exc:
        return _fall_back(path, f"cannot read it: {exc}")
    try:
        return AppSettings.from_json(json.loads(text))
    except json.JSONDecodeError as exc:
        return _fall_back(path, f"it is not valid JSON ({exc})")
    except (ZvsError, TypeError) as exc:
        return _fall_back(path, getattr(exc, "message", str(exc)))


def _fall_back(path: Path, why: str) -> AppSettings:
    bad = path.with_name(path.name + ".bad")
    try:
        os.replace(path, bad)
        kept = f"it was kept as {bad}"
    except OSError as exc:
        kept = f"it could not be moved aside ({exc.strerror or exc})"
    return AppSettings(load_warning=f"the settings in {path} were not used: {why}; {kept}.")


def save_settings(settings: AppSettings, path: str | os.PathLike[str] | None = None) -> None:
    """Write `settings` atomically; raises ZvsError when it is invalid or cannot be written."""
    settings.validate()
    path = Path(path) if path is not None else settings_path()
    text = json.dumps(settings.to_json(), indent=2) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(str(path), text.encode("utf-8"), backup=False)
    except OSError as exc:
        raise ZvsError(
            f"cannot save the settings to {path}: {exc.strerror or exc}",
            hint="the previous settings file was not changed",
        ) from exc


def apply_settings(settings: AppSettings) -> None:
    """Point the engine at the settings' cache folder and limit through the environment it
    reads (without a cache folder the environment's own, or the platform default, stays), and
    at the settings' model folders, where annotators' weights are looked for again."""
    if settings.cache_dir:
        os.environ["ZVSTUDIO_CACHE_DIR"] = os.path.expanduser(settings.cache_dir)
    os.environ["ZVSTUDIO_CACHE_LIMIT_GB"] = repr(float(settings.cache_limit_gb))
    from zvstudio.diffusion.annotators import forget_local_annotators
    from zvstudio.diffusion.library import set_app_model_folders

    set_app_model_folders(settings.models_dir, settings.model_folders)
    forget_local_annotators()


def edited(settings: AppSettings, **changes: Any) -> AppSettings:
    """A validated copy with `changes`, without the original's load warning."""
    return replace(settings, load_warning=None, **changes)
