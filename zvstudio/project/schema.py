"""Declarative field rules shared by the in-memory checks, the loader and the saver.

Every dataclass field of the project document carries a `Rule` in its metadata, so the
constructors, `load_project` and `save_project` check exactly the same things and word the
problems the same way, each prefixed by a JSON path such as ``keyframes[1].seed``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, fields
from typing import Any

from zvstudio.errors import ProjectError

EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "path": "a file path",
    "object": "an object",
    "list": "a list",
    "params": "an object of parameter values",
}

# Stands for a value that could not be read; its problems have already been reported.
BAD: Any = type("Bad", (), {"__repr__": lambda self: "<bad>"})()


@dataclass(frozen=True)
class Rule:
    """What one field accepts. `item` is the dataclass an "object" or "list" field holds;
    `unique` names an item attribute that must differ between the items of a list."""

    kind: str
    nullable: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    pattern: tuple[str, str] | None = None  # (regular expression, what it means to a user)
    nonempty: bool = False
    item: type | None = None
    unique: str | None = None

    def problems(self, value: Any) -> Iterator[tuple[str, str]]:
        """(path suffix, message) for each way `value` breaks this rule."""
        if self.kind == "list" and isinstance(value, list):
            yield from self._list_problems(value)
        elif why := self._problem(value):
            yield "", why

    def _problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.nullable else f"expected {EXPECTED[self.kind]}, got null"
        if not self.type_ok(value):
            return f"expected {EXPECTED[self.kind]}, got {show(value)}"
        if self.kind == "float" and not _finite(value):
            return f"must be a finite number, got {show(value)}"
        if self.kind == "params":
            return _params_problem(value)
        low, high = self.low, self.high
        if low is not None and high is not None and not low <= value <= high:
            return f"must be between {show(low)} and {show(high)}, got {show(value)}"
        if low is not None and value < low:
            return f"must be at least {show(low)}, got {show(value)}"
        if high is not None and value > high:
            return f"must be at most {show(high)}, got {show(value)}"
        if self.choices and value not in self.choices:
            allowed = ", ".join(show(c) for c in self.choices)
            return f"must be one of {allowed}; got {show(value)}"
        if (self.nonempty or self.kind == "path") and not value:
            return "must not be empty"
        if self.pattern and not re.fullmatch(self.pattern[0], value):
            return f"must be {self.pattern[1]}, got {show(value)}"
        return None

    def type_ok(self, value: Any) -> bool:
        if isinstance(value, bool):  # bool is an int subclass; never let True pass as 1
            return self.kind == "bool"
        return isinstance(value, _TYPES.get(self.kind) or self.item)

    def _list_problems(self, items: list) -> Iterator[tuple[str, str]]:
        seen: dict[Any, int] = {}
        for i, item in enumerate(items):
            if item is BAD:
                continue
            if not isinstance(item, self.item):
                yield f"[{i}]", f"expected {EXPECTED['object']}, got {show(item)}"
            elif self.unique:
                key = getattr(item, self.unique)
                if key in seen:
                    yield (
                        f"[{i}].{self.unique}",
                        f"duplicate {show(key)} (item {seen[key]} has it too)",
                    )
                seen.setdefault(key, i)


_TYPES: dict[str, type | tuple[type, ...]] = {
    "int": int,
    "float": (int, float),
    "bool": bool,
    "str": str,
    "path": str,
    "list": list,
    "params": dict,
}


def _params_problem(params: dict) -> str | None:
    """Parameter values are named and scalar: numbers, words or true/false."""
    for name, value in params.items():
        if not isinstance(name, str) or not name:
            return f"parameter names must be non-empty strings, got {show(name)}"
        if not isinstance(value, (bool, int, float, str)):
            return f"{name} must be a number, a word or true/false, got {show(value)}"
        if isinstance(value, float) and not _finite(value):
            return f"{name} must be a finite number, got {show(value)}"
    return None


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def show(value: Any) -> str:
    """A value as a user reading the JSON file would recognise it."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str) and len(value) > 40:
        value = value[:37] + "..."
    return repr(value)


def rule(kind: str, **options: Any) -> dict[str, Rule]:
    """Field metadata saying the value must follow `Rule(kind, **options)`:
    ``strength: float = field(default=0.75, metadata=rule("float", low=0, high=1))``."""
    return {"rule": Rule(kind, **options)}


def rule_of(f: Any) -> Rule:
    return f.metadata["rule"]


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def check_values(cls: type, values: Mapping[str, Any], path: str) -> list[str]:
    """Problems of one object's field values (nested objects are checked on their own)."""
    problems = [p for f in fields(cls) for p in _field_problems(f, values.get(f.name, BAD), path)]
    return problems or _extra_problems(cls, values, path)


def _field_problems(f: Field, value: Any, path: str) -> list[str]:
    if value is BAD:  # could not be read; already reported
        return []
    return [f"{join(path, f.name)}{sub}: {why}" for sub, why in rule_of(f).problems(value)]


def _extra_problems(cls: type, values: Mapping[str, Any], path: str) -> list[str]:
    """Checks between fields: a class may define a static `extra_problems(values)` yielding
    (field, message). It runs only when every field is present and valid on its own."""
    extra = getattr(cls, "extra_problems", None)
    if extra is None or any(values.get(f.name, BAD) is BAD for f in fields(cls)):
        return []
    return [f"{join(path, name)}: {why}" for name, why in extra(values)]


class Validated:
    """Base of the document's dataclasses: a constructor given a bad value raises at once."""

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        problems = check_values(type(self), values, "")
        if problems:
            raise ProjectError(f"invalid {type(self).__name__}: " + "; ".join(problems))


def problems_in(obj: Any, path: str = "") -> list[str]:
    """Every problem in `obj` and the objects it holds: a saved file must load again, even
    after code changed a mutable list or bypassed a constructor."""
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}
    problems = check_values(type(obj), values, path)
    for f in fields(obj):
        spec, value, where = rule_of(f), values[f.name], join(path, f.name)
        if spec.kind == "object" and isinstance(value, spec.item):
            problems += problems_in(value, where)
        elif spec.kind == "list" and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, spec.item):
                    problems += problems_in(item, f"{where}[{i}]")
    return problems


def read_object(
    cls: type,
    data: Any,
    path: str,
    problems: list[str],
    resolve: Callable[[str], str],
    allowed: tuple[str, ...] = (),
) -> Any:
    """Build `cls` from parsed JSON, appending every problem found to `problems`.

    Returns BAD when anything is wrong. `resolve` turns a stored path into an absolute one;
    `allowed` names extra keys that are not fields (such as the top-level "format").
    """
    if not isinstance(data, dict):
        problems.append(f"{path}: expected {EXPECTED['object']}, got {show(data)}")
        return BAD
    before = len(problems)
    known = {f.name: f for f in fields(cls)}
    problems += [
        f"{join(path, k)}: unknown field" for k in data if k not in known and k not in allowed
    ]
    problems += [f"{join(path, k)}: given more than once" for k in getattr(data, "repeated", ())]
    values = {}
    valid = True  # every field valid on its own, so checks between fields can run
    for name, f in known.items():
        if name in data:
            values[name] = _read_value(rule_of(f), data[name], join(path, name), problems, resolve)
            own = _field_problems(f, values[name], path)
            problems += own
            valid = valid and not own
        elif f.default is not MISSING:
            values[name] = f.default
        elif f.default_factory is not MISSING:
            values[name] = f.default_factory()
        else:
            problems.append(f"{join(path, name)}: missing required field")
    if valid:
        problems += _extra_problems(cls, values, path)
    return cls(**values) if len(problems) == before else BAD


def _read_value(
    spec: Rule, raw: Any, path: str, problems: list[str], resolve: Callable[[str], str]
) -> Any:
    if raw is None:
        return None
    if spec.kind == "object":
        return read_object(spec.item, raw, path, problems, resolve)
    if spec.kind == "list" and isinstance(raw, list):
        return [
            read_object(spec.item, x, f"{path}[{i}]", problems, resolve) for i, x in enumerate(raw)
        ]
    if spec.kind == "path" and isinstance(raw, str) and raw:
        return resolve(raw)
    if spec.kind == "float" and spec.type_ok(raw) and _finite(raw):
        return float(raw)
    if spec.kind == "params" and isinstance(raw, dict):
        return dict(raw)
    return raw


def to_json(obj: Any, relative: Callable[[str], str]) -> dict[str, Any]:
    """`obj`'s fields as JSON values; `relative` turns an absolute path into a stored one."""
    return {f.name: _value_to_json(rule_of(f), getattr(obj, f.name), relative) for f in fields(obj)}


def _value_to_json(spec: Rule, value: Any, relative: Callable[[str], str]) -> Any:
    if value is None:
        return None
    if spec.kind == "object":
        return to_json(value, relative)
    if spec.kind == "list":
        return [to_json(item, relative) for item in value]
    if spec.kind == "params":
        return dict(value)
    return relative(value) if spec.kind == "path" else value
