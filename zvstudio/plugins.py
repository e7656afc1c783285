"""Plugins: third-party key renderers (styles), ControlNet annotators and flow estimators.

A plugin is a Python package that declares an entry point in the `zvstudio.plugins` group
pointing to a function `register(api)`; zvstudio calls it once with a `PluginAPI`. Loading is
lazy (the first time styles, annotators or flow estimators are listed or created) and a broken
plugin is reported, never fatal: the program keeps working without it.

A plugin is all or nothing: if `register` raises (a bad name, a class that is not a flow
estimator, an import error...), none of what it registered is kept. A name that is already taken
(a built-in such as "canny" or "dis", or an earlier plugin's) is refused with a warning in the
report, and the rest of the plugin still loads.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

GROUP = "zvstudio.plugins"
log = logging.getLogger(__name__)
_NAME = re.compile(r"[a-z][a-z0-9_-]*\Z")


def check_name(kind: str, name: object) -> None:
    """Refuse a name that is not lower-case letters, digits, _ and - (it is typed on a command
    line and stored in project files)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"invalid {kind} name {name!r}: use lower-case letters, digits, _ and -")


@dataclass
class PluginReport:
    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # names refused, the plugin still loaded


class PluginAPI:
    """What a plugin's `register(api)` may call."""

    def __init__(self, plugin: str = "", loaded_from: str = "", version: str = "") -> None:
        self.plugin = plugin  # the entry point's name, used in messages
        self.loaded_from = loaded_from
        self.version = version  # the plugin distribution's version, if known
        self.warnings: list[str] = []

    def register_style(self, name: str, factory: Callable[..., Any], description: str) -> None:
        """A key renderer: `factory(**params)` returns a `KeyRenderer` (see zvstudio.stylize)."""
        from zvstudio.stylize import registry
        from zvstudio.stylize.filters import BUILTIN_STYLIZERS

        if name in registry._styles:
            builtin = name in {cls.name for cls in BUILTIN_STYLIZERS}
            self._refuse("style", name, "built in" if builtin else "registered")
            return
        registry.register_style(name, factory, description)

    def register_flow_estimator(
        self, name: str, factory: Callable[..., Any], options: Sequence[str] | None = None
    ) -> None:
        """A flow estimator: `factory(**options)` returns a `zvstudio.flow.FlowEstimator`.

        `options` names the keyword options it takes (default: read from its signature).
        """
        from zvstudio.flow import registry

        taken = registry._estimators.get(name)
        if taken is not None:
            self._refuse("flow estimator", name, _owner(taken.plugin))
            return
        registry.register_flow_estimator(name, factory, options=options, plugin=self.plugin)

    def register_annotator(
        self, name: str, annotate: Callable[[Any], Any], version: str | None = None
    ) -> None:
        """A ControlNet annotator: `annotate(rgb)` maps an RGB uint8 HxWx3 frame to an RGB uint8
        control image of the same size. `--controlnet NAME` then picks the library ControlNet
        whose name contains NAME. `version` (default: the plugin's) is part of cache keys."""
        from zvstudio.diffusion import annotators

        taken = annotators._annotators.get(name)
        if taken is not None:
            self._refuse("annotator", name, _owner(taken.plugin))
            return
        annotators.register_annotator(
            name, annotate, plugin=self.plugin, version=self.version if version is None else version
        )

    def _refuse(self, kind: str, name: str, owner: str) -> None:
        self.warnings.append(
            f"plugin {self.plugin!r}: {kind} {name!r} is already {owner}; the plugin's is ignored"
        )


def _owner(plugin: str) -> str:
    return f"provided by plugin {plugin!r}" if plugin else "built in"


def _registries() -> list[dict]:
    """The registries a plugin can add to (looked up each time: tests swap them)."""
    from zvstudio.diffusion import annotators
    from zvstudio.flow import registry as flows
    from zvstudio.stylize import registry as styles

    return [styles._styles, flows._estimators, annotators._annotators]


_report: PluginReport | None = None
# Registries load plugins on first use, from any thread; a plugin's own register() may list
# styles too, which must not load the plugins again (the lock is re-entrant).
_lock = threading.RLock()


def load_plugins(discover: Callable[[], list[EntryPoint]] | None = None) -> PluginReport:
    """Call every installed plugin's `register` once; returns what loaded, failed and was
    refused. `discover` (tests) replaces the installed entry points, and is not remembered."""
    global _report
    with _lock:
        if _report is not None and discover is None:
            return _report
        report = PluginReport()
        if discover is None:
            _report = report  # before loading: a plugin that lists styles gets this one
        found = discover() if discover else list(entry_points(group=GROUP))
        for entry in found:
            _load(entry, report)
        return report


def _load(entry: EntryPoint, report: PluginReport) -> None:
    registries = _registries()
    before = [dict(r) for r in registries]
    dist = getattr(entry, "dist", None)
    api = PluginAPI(entry.name, entry.value, getattr(dist, "version", "") or "")
    try:
        register = entry.load()
        register(api)
    except Exception as exc:
        for registry, saved in zip(registries, before, strict=True):  # all or nothing
            registry.clear()
            registry.update(saved)
        report.failed[entry.name] = f"{type(exc).__name__}: {exc}"
        log.warning("plugin %s failed to load: %s", entry.name, exc)
        return
    report.loaded.append(entry.name)
    report.warnings += api.warnings
    for warning in api.warnings:
        log.warning("%s", warning)
