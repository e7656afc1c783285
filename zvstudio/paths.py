"""Where zvstudio keeps files of its own (caches, settings)."""

from __future__ import annotations

import os
from pathlib import Path


def config_root() -> Path:
    """The settings folder: $ZVSTUDIO_CONFIG_DIR, else the platform's user config folder."""
    explicit = os.environ.get("ZVSTUDIO_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    if os.name == "nt":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif os.uname().sysname == "Darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "zvstudio"


def cache_root() -> Path:
    """The cache folder: $ZVSTUDIO_CACHE_DIR, else the platform's user cache folder."""
    explicit = os.environ.get("ZVSTUDIO_CACHE_DIR")
    if explicit:
        return Path(explicit)
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif os.uname().sysname == "Darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "zvstudio"
