"""Plugins: third-party key renderers (and later annotators and flow estimators).

A plugin is a Python package that declares an entry point in the `zvstudio.plugins` group
pointing to a function `register(api)`; zvstudio calls it once with a `PluginAPI`. Loading is
lazy (the first time styles are listed or created) and a broken plugin is reported, never
fatal: the program keeps working without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

GROUP = "zvstudio.plugins"
log = logging.getLogger(__name__)


@dataclass
class PluginAPI:
    """What a plugin's `register(api)` may call."""

    register_style: Callable[..., None]
    loaded_from: str = ""


@dataclass
class PluginReport:
    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


_report: PluginReport | None = None


def load_plugins(discover: Callable[[], list[EntryPoint]] | None = None) -> PluginReport:
    """Call every installed plugin's `register` once; returns what loaded and what failed."""
    global _report
    if _report is not None and discover is None:
        return _report
    from zvstudio.stylize.registry import register_style

    report = PluginReport()
    found = discover() if discover else list(entry_points(group=GROUP))
    for entry in found:
        try:
            register = entry.load()
            register(PluginAPI(register_style=register_style, loaded_from=entry.value))
            report.loaded.append(entry.name)
        except Exception as exc:
            report.failed[entry.name] = f"{type(exc).__name__}: {exc}"
            log.warning("plugin %s failed to load: %s", entry.name, exc)
    if discover is None:
        _report = report
    return report
