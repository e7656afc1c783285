"""AUTOMATIC1111's prompt editing: a prompt that changes during sampling.

- `[from:to:when]` reads `from` up to step `when`, then `to`; `[to:when]` adds `to` after
  `when`, `[from::when]` removes `from` after it. A `when` below 1 is a fraction of the steps,
  else a step number.
- `[a|b|c]` alternates: `a` on the first step, `b` on the second, and so on.

They nest, and may hold weights (`[(cat:1.2):dog:0.5]`); `[words]` without `:` or `|` stays a
weight bracket, and `\\[` a plain bracket. The steps are those a key actually runs, counted
from 1 (with strength 0.75 and 20 steps: 15, so `[a:b:0.5]` reads `a` for 7 of them and `b`
for 8). The parser is ours: A1111's is a lark grammar inside its web UI, not a library.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from zvstudio.errors import ZvsError

# Part of a key's identity when its prompt changes during sampling.
EDITING_VERSION = "prompt editing v1"
_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*")


@dataclass(frozen=True)
class _Edit:
    before: tuple
    after: tuple
    when: float


@dataclass(frozen=True)
class _Alternation:
    options: tuple[tuple, ...]


def prompts_per_step(prompt: str, steps: int) -> list[str]:
    """The prompt that each of `steps` sampling steps reads (one item per step)."""
    nodes = _parse(prompt)
    return [_resolve(nodes, step, steps) for step in range(1, steps + 1)]


def uses_editing(prompt: str) -> bool:
    """Whether `prompt` changes during sampling."""
    return "[" in prompt and any(not isinstance(node, str) for node in _walk(_parse(prompt)))


def refuse_editing(prompts: tuple[str, ...], what: str) -> None:
    """Raise ZvsError when one of `prompts` uses prompt editing, which `what` cannot follow."""
    if any(uses_editing(prompt) for prompt in prompts):
        raise ZvsError(
            f"{what} reads one prompt throughout: prompt editing ([from:to:when], [a|b]) "
            "works for key frames",
            hint="write the prompt without it (\\[ is a plain bracket)",
        )


def _walk(nodes: tuple):
    for node in nodes:
        yield node
        if isinstance(node, _Edit):
            yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, _Alternation):
            for option in node.options:
                yield from _walk(option)


def _resolve(nodes: tuple, step: int, steps: int) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Edit):
            last = node.when * steps if node.when < 1 else node.when
            parts.append(_resolve(node.before if step <= last else node.after, step, steps))
        else:
            options = node.options
            parts.append(_resolve(options[(step - 1) % len(options)], step, steps))
    return "".join(parts)


def _parse(text: str) -> tuple:
    """`text` as a tuple of plain strings, edits and alternations (no two strings in a row)."""
    nodes: list = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            nodes.append(text[index : index + 2])  # the weight parser reads escapes
            index += 2
        elif char == "[" and (end := _closing(text, index)) is not None:
            nodes.extend(_bracket(text[index + 1 : end]))
            index = end + 1
        else:
            nodes.append(char)
            index += 1
    merged: list = []
    for node in nodes:
        if isinstance(node, str) and merged and isinstance(merged[-1], str):
            merged[-1] += node
        elif node != "":
            merged.append(node)
    return tuple(merged)


def _bracket(inner: str) -> tuple:
    """The nodes `[inner]` stands for: an alternation, an edit, or a weight bracket (whose
    inside may still hold edits)."""
    options = _split_top(inner, "|")
    if len(options) > 1:
        return (_Alternation(tuple(_parse(option) for option in options)),)
    parts = _split_top(inner, ":")
    if len(parts) in (2, 3) and (number := _NUMBER.fullmatch(parts[-1])):
        when = float(number.group(1))
        if math.isfinite(when) and when >= 0:
            before = _parse(parts[0]) if len(parts) == 3 else ()
            return (_Edit(before, _parse(parts[-2]), when),)
    return ("[", *_parse(inner), "]")


def _closing(text: str, start: int) -> int | None:
    """The index of the `]` closing the `[` at `start`, None when it is never closed."""
    depth = 0
    index = start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return None


def _split_top(text: str, separator: str) -> list[str]:
    """`text` split at each `separator` outside brackets (and not escaped)."""
    parts, depth, current = [], 0, []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            current.append(text[index : index + 2])
            index += 2
            continue
        if char in "([":
            depth += 1
        elif char in ")]":
            depth = max(0, depth - 1)
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts
