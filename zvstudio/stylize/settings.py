"""Frozen, self-validating settings shared by the weightless stylizers.

Each stylizer declares its parameters as a frozen dataclass built with `param()`. Values are
coerced to the type of their default, so `sigma_s=60`, `sigma_s=60.0` and `sigma_s="60"` (from
the command line) give equal settings and therefore equal cache keys.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from zvstudio.errors import ZvsError

_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True}
_BOOL_WORDS.update({"false": False, "no": False, "off": False, "0": False})
_KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a word"}


def param(
    default: Any,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] = (),
    odd: bool = False,
    help: str = "",
) -> Any:
    """A settings field with an inclusive range [low, high], allowed words or an odd-int rule;
    `help` says what it does (the editor's tooltip)."""
    metadata = {"range": (low, high), "choices": choices, "odd": odd, "help": help}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class StyleParameter:
    """One parameter of a style, as an editor needs it: its type (that of its default), the
    inclusive range, the allowed words, whether it must be odd, and what it does."""

    name: str
    default: bool | int | float | str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    odd: bool = False
    help: str = ""


def parameters_of(settings_type: type[StyleSettings]) -> tuple[StyleParameter, ...]:
    """The parameters a settings dataclass declares with `param()`, in declaration order."""
    out = []
    for f in dataclasses.fields(settings_type):
        low, high = f.metadata.get("range", (None, None))
        meta = f.metadata
        out.append(
            StyleParameter(
                f.name,
                f.default,
                low,
                high,
                meta.get("choices", ()),
                meta.get("odd", False),
                meta.get("help", ""),
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class StyleSettings:
    """Base for stylizer settings: coerces and validates every field on construction."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _coerce(f.name, getattr(self, f.name), type(f.default))
            _validate(f.name, value, f.metadata)
            object.__setattr__(self, f.name, value)

    @classmethod
    def from_params(cls, style: str, params: dict[str, Any]) -> StyleSettings:
        """Build settings from user parameters, naming the valid ones when a name is wrong."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ZvsError(
                f"unknown parameter(s) for style {style!r}: {', '.join(unknown)}",
                hint=f"valid parameters: {', '.join(valid)}",
            )
        return cls(**params)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, value: Any, kind: type) -> Any:
    try:
        if kind is bool:
            if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
                return _BOOL_WORDS[value.strip().lower()]
            if value in (0, 1):  # also accepts True/False
                return bool(value)
        elif kind is int:
            number = float(value)
            if number.is_integer() and not isinstance(value, bool):
                return int(number)
        elif kind is float:
            number = float(value)
            if math.isfinite(number) and not isinstance(value, bool):
                return number
        elif kind is str and isinstance(value, str):
            return value.strip().lower()  # only choice-like words so far: case-insensitive
    except (TypeError, ValueError):
        pass
    raise ZvsError(f"parameter {name!r} must be {_KIND_NAMES[kind]}, not {value!r}")


def _validate(name: str, value: Any, meta: Any) -> None:
    low, high = meta.get("range", (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        raise ZvsError(f"parameter {name!r} must be between {low} and {high}, not {value!r}")
    choices = meta.get("choices", ())
    if choices and value not in choices:
        raise ZvsError(f"parameter {name!r} must be one of {', '.join(choices)}, not {value!r}")
    if meta.get("odd") and value % 2 == 0:
        raise ZvsError(f"parameter {name!r} must be an odd number, not {value!r}")
