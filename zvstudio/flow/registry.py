"""The named flow estimators that `create_flow_estimator()` can build, open to plugins.

DIS and RAFT are built in; plugins add more through `PluginAPI.register_flow_estimator`, loaded
the first time the names are listed or an estimator is created. A plugin's factory must build a
`FlowEstimator` (or an object with the same methods): flow caches key stored flows by its
`settings_key()`, so an estimator without one would mix up cached flows.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zvstudio.errors import ZvsError
from zvstudio.flow.base import FlowEstimator
from zvstudio.flow.dis import DISFlow
from zvstudio.flow.raft import RAFTFlow
from zvstudio.plugins import check_name

FlowFactory = Callable[..., FlowEstimator]
REQUIRED_METHODS = ("settings_key", "compute", "compute_pair")
_FIX = "subclass zvstudio.flow.FlowEstimator and implement settings_key() and compute()"


@dataclass(frozen=True)
class _Estimator:
    factory: FlowFactory
    options: tuple[str, ...] | None = None  # None: the factory's own keyword parameters
    plugin: str = ""  # the plugin's entry-point name; empty for built-ins


_estimators: dict[str, _Estimator] = {}


def register_flow_estimator(
    name: str,
    factory: FlowFactory,
    *,
    options: Sequence[str] | None = None,
    plugin: str = "",
    replace: bool = False,
) -> None:
    """Make `factory(**options)` available as flow estimator `name`.

    `options` names the keyword options it accepts, for checking and messages (default: read
    from its signature). A class that does not implement the `FlowEstimator` methods is refused
    with a ZvsError here; a factory function's product is checked when it is created.
    """
    check_name("flow estimator", name)
    if not callable(factory):
        raise TypeError(f"flow estimator {name!r} must be callable, got {type(factory).__name__}")
    if inspect.isclass(factory):
        if issubclass(factory, FlowEstimator):
            missing = sorted(getattr(factory, "__abstractmethods__", ()))
        else:
            missing = [m for m in REQUIRED_METHODS if not callable(getattr(factory, m, None))]
        if missing:
            raise ZvsError(
                f"{_what(name, plugin)} ({factory.__qualname__}) is not a flow estimator: "
                f"it does not implement {', '.join(f'{m}()' for m in missing)}",
                hint=_FIX,
            )
    if name in _estimators and not replace:
        raise ValueError(f"flow estimator {name!r} is already registered")
    names = tuple(options) if options is not None else None
    _estimators[name] = _Estimator(factory, names, plugin)


def _with_plugins() -> None:
    from zvstudio.plugins import load_plugins

    load_plugins()


class _Estimators(Mapping[str, FlowFactory]):
    """Estimator names to factories, built-ins first; plugins are loaded on first use, so
    `tuple(ESTIMATORS)` lists them too."""

    def __getitem__(self, name: str) -> FlowFactory:
        _with_plugins()
        return _estimators[name].factory

    def __iter__(self) -> Iterator[str]:
        _with_plugins()
        return iter(list(_estimators))

    def __len__(self) -> int:
        _with_plugins()
        return len(_estimators)

    def __repr__(self) -> str:
        return f"ESTIMATORS({', '.join(self)})"


ESTIMATORS = _Estimators()


def estimator_plugin(name: str) -> str:
    """The plugin that provides estimator `name`; empty for a built-in or an unknown name."""
    _with_plugins()
    entry = _estimators.get(name)
    return entry.plugin if entry else ""


def create_flow_estimator(name: str = "dis", **options: Any) -> FlowEstimator:
    """The estimator called `name`: "dis" (options: preset), "raft" (weights, device, ...) or
    one a plugin registered."""
    _with_plugins()
    if name not in _estimators:
        raise ZvsError(
            f"unknown flow estimator {name!r}", hint=f"choose one of: {', '.join(_estimators)}"
        )
    entry = _estimators[name]
    accepted, required = _parameters(entry)
    unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
    if unknown:
        raise ZvsError(
            f"flow estimator {name!r} has no option {', '.join(unknown)}",
            hint=f"its options are: {', '.join(accepted or ()) or 'none'}",
        )
    missing = [p for p in required if p not in options]
    if missing:
        raise ZvsError(f"flow estimator {name!r} needs {', '.join(missing)}")
    if not entry.plugin:
        return entry.factory(**options)
    try:
        estimator = entry.factory(**options)
    except ZvsError:
        raise
    except Exception as exc:
        raise ZvsError(
            f"{_what(name, entry.plugin)} failed to start: {type(exc).__name__}: {exc}",
            hint="update or uninstall the plugin, or use the dis estimator",
        ) from exc
    _check_estimator(estimator, name, entry.plugin)
    return estimator


def _parameters(entry: _Estimator) -> tuple[Sequence[str] | None, list[str]]:
    """(accepted option names, None for any; required ones) of an estimator's factory."""
    try:
        parameters = list(inspect.signature(entry.factory).parameters.values())
    except (TypeError, ValueError):  # some callables (C extensions) have no signature
        parameters = []
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    required = [p.name for p in named if p.default is p.empty]
    if entry.options is not None:
        return entry.options, required
    if not parameters or any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None, required
    return [p.name for p in named], required


def _check_estimator(estimator: object, name: str, plugin: str) -> None:
    """Refuse a plugin's product that is not a flow estimator, naming the plugin."""
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(estimator, m, None))]
    if missing:
        raise ZvsError(
            f"{_what(name, plugin)} made a {type(estimator).__name__}, which is not a flow "
            f"estimator: it has no {', '.join(f'{m}()' for m in missing)}",
            hint=_FIX,
        )
    key = estimator.settings_key()  # type: ignore[attr-defined]
    if not isinstance(key, str) or not key.strip():
        raise ZvsError(
            f"{_what(name, plugin)}: settings_key() returned {key!r}, not a non-empty string",
            hint="flow caches key stored flows by it: return a string of everything that "
            "determines the output, with a version tag",
        )


def _what(name: str, plugin: str) -> str:
    return (
        f"flow estimator {name!r} from plugin {plugin!r}" if plugin else f"flow estimator {name!r}"
    )


register_flow_estimator("dis", DISFlow)
register_flow_estimator("raft", RAFTFlow)
