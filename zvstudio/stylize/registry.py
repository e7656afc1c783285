"""The named styles that `create_stylizer()` can build, open to plugins.

Built-in styles are registered on import; plugins call `register_style()` (the engine will
later discover them through the `zvstudio.plugins` entry point group).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from zvstudio.errors import ZvsError
from zvstudio.keyrender import KeyRenderer
from zvstudio.stylize.filters import BUILTIN_STYLIZERS, StylizerRenderer
from zvstudio.stylize.settings import StyleParameter, parameters_of

StyleFactory = Callable[..., KeyRenderer]

_NAME = re.compile(r"[a-z][a-z0-9_-]*\Z")


@dataclass(frozen=True)
class _Style:
    factory: StyleFactory
    description: str


_styles: dict[str, _Style] = {}


def register_style(
    name: str, factory: StyleFactory, description: str, *, replace: bool = False
) -> None:
    """Make `factory(**params)` available as style `name` (lower-case letters, digits, _ -)."""
    if not _NAME.match(name):
        raise ValueError(f"invalid style name {name!r}: use lower-case letters, digits, _ and -")
    if name in _styles and not replace:
        raise ValueError(f"style {name!r} is already registered")
    _styles[name] = _Style(factory, " ".join(description.split()))


def _with_plugins() -> None:
    from zvstudio.plugins import load_plugins

    load_plugins()


def available_styles() -> list[str]:
    _with_plugins()
    return sorted(_styles)


def describe_style(name: str) -> str:
    """A one-line description of the style, for command-line help."""
    return _lookup(name).description


def style_parameters(name: str) -> tuple[StyleParameter, ...]:
    """The parameters of style `name` an editor can offer: those of a `StylizerRenderer`'s
    settings (built-in styles and plugins built on it); none for other factories."""
    owner = getattr(_lookup(name).factory, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, StylizerRenderer):
        return parameters_of(owner.settings_type)
    return ()


def create_stylizer(name: str, **params: Any) -> KeyRenderer:
    """Build the style `name` with `params`; unknown names and parameters raise ZvsError."""
    style = _lookup(name)
    try:
        # Check the names before calling, so a TypeError raised inside a plugin's factory is
        # not mistaken for a wrong parameter.
        inspect.signature(style.factory).bind(**params)
    except TypeError as exc:
        raise ZvsError(f"invalid parameters for style {name!r}: {exc}") from exc
    return style.factory(**params)


def _lookup(name: str) -> _Style:
    _with_plugins()
    style = _styles.get(name.strip().lower())
    if style is None:
        raise ZvsError(
            f"unknown style {name!r}", hint=f"available styles: {', '.join(available_styles())}"
        )
    return style


def _builtin_description(cls: type[StylizerRenderer]) -> str:
    defaults = ", ".join(f"{f.name}={f.default}" for f in fields(cls.settings_type))
    return f"{cls.description} Parameters: {defaults}."


for _cls in BUILTIN_STYLIZERS:
    register_style(_cls.name, _cls.from_params, _builtin_description(_cls))
