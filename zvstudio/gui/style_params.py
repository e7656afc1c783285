"""Editors for a weightless style's parameters, built from the style's own declaration.

Each style declares its parameters (type, range, allowed words, help) in its settings class
(`zvstudio.stylize.style_parameters`), so the editor needs no per-style code and a plugin's
style gets the same widgets as a built-in one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QSignalBlocker, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from zvstudio.errors import ZvsError
from zvstudio.stylize import StyleParameter, style_parameters

# Ranges for parameters that declare none (a plugin's): wide, but finite for the spin box.
OPEN_RANGE = 1e6


def parameter_label(name: str) -> str:
    """'line_threshold' -> 'Line threshold'."""
    return name.replace("_", " ").capitalize()


def value_range(parameter: StyleParameter) -> tuple[float, float]:
    """The parameter's declared range, open ends made finite."""
    low = -OPEN_RANGE if parameter.low is None else parameter.low
    high = OPEN_RANGE if parameter.high is None else parameter.high
    return low, high


def float_step(parameter: StyleParameter) -> tuple[float, int]:
    """A spin box's step and decimals: about a hundredth of the range, a power of ten."""
    low, high = value_range(parameter)
    span = max(high - low, 1e-6)
    step = 10.0 ** round(math.log10(span / 100))
    step = min(step, 1.0)
    return step, max(1, -math.floor(math.log10(step)))


class StyleParamsEditor(QWidget):
    """The current style's parameters as widgets. After each edit `changed` carries the
    edited parameter's name ("" for a reset) and the values that differ from the style's
    defaults (what a project stores)."""

    changed = Signal(str, dict)

    def __init__(self) -> None:
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.form = QFormLayout()
        self.form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        layout.addLayout(self.form)
        self.reset_button = QPushButton("Reset to the style's defaults")
        self.reset_button.clicked.connect(lambda: self.changed.emit("", {}))
        layout.addWidget(self.reset_button)
        self.style: str | None = None
        self.parameters: tuple[StyleParameter, ...] = ()
        self.editors: dict[str, QWidget] = {}

    def show_style(self, style: str, values: dict[str, Any]) -> None:
        """Show `style`'s parameters with `values` (the rest at their defaults)."""
        if style != self.style:
            self._rebuild(style)
        for parameter in self.parameters:
            self._show_value(parameter, values.get(parameter.name, parameter.default))
        self.reset_button.setEnabled(bool(self.values()))

    def values(self) -> dict[str, Any]:
        """The edited values that differ from the defaults."""
        out = {}
        for parameter in self.parameters:
            value = self._value(parameter)
            if value != parameter.default:
                out[parameter.name] = value
        return out

    # -- building ----------------------------------------------------------------------------
    def _rebuild(self, style: str) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)  # deletes the row's widgets
        self.style, self.editors = style, {}
        try:
            self.parameters = style_parameters(style)
        except ZvsError:  # a plugin's style that is not installed here
            self.parameters = ()
        for parameter in self.parameters:
            editor = self._editor(parameter, lambda *_, name=parameter.name: self._edited(name))
            tip = parameter.help or parameter.name
            editor.setToolTip(tip)
            label = QLabel(parameter_label(parameter.name))
            label.setToolTip(tip)
            self.form.addRow(label, editor)
            self.editors[parameter.name] = editor

    def _editor(self, parameter: StyleParameter, edited: Callable[..., None]) -> QWidget:
        default = parameter.default
        if isinstance(default, bool):
            editor = QCheckBox()
            editor.toggled.connect(edited)
        elif isinstance(default, int):
            editor = QSpinBox()
            low, high = value_range(parameter)
            editor.setRange(int(low), int(high))
            editor.setSingleStep(2 if parameter.odd else 1)
            editor.valueChanged.connect(edited)
        elif isinstance(default, float):
            editor = QDoubleSpinBox()
            step, decimals = float_step(parameter)
            editor.setDecimals(decimals)
            editor.setRange(*value_range(parameter))
            editor.setSingleStep(step)
            editor.valueChanged.connect(edited)
        else:
            editor = QComboBox()
            for word in parameter.choices or (str(default),):
                editor.addItem(word, word)
            editor.currentIndexChanged.connect(edited)
        return editor

    # -- values ------------------------------------------------------------------------------
    def _show_value(self, parameter: StyleParameter, value: Any) -> None:
        editor = self.editors[parameter.name]
        blocker = QSignalBlocker(editor)  # showing the project is not an edit
        try:
            if isinstance(editor, QCheckBox):
                editor.setChecked(bool(value))
            elif isinstance(editor, (QSpinBox, QDoubleSpinBox)):
                try:
                    editor.setValue(type(parameter.default)(value))
                except (TypeError, ValueError):  # a bad value in the file: show the default
                    editor.setValue(parameter.default)
            else:
                index = editor.findData(str(value).strip().lower())
                editor.setCurrentIndex(max(index, 0))
        finally:
            blocker.unblock()

    def _value(self, parameter: StyleParameter) -> Any:
        editor = self.editors[parameter.name]
        if isinstance(editor, QCheckBox):
            return editor.isChecked()
        if isinstance(editor, QSpinBox):
            value = editor.value()
            # Odd-only parameters step by 2; a typed even number goes to the next odd one.
            if parameter.odd and value % 2 == 0:
                value += 1 if value < editor.maximum() else -1
            return value
        if isinstance(editor, QDoubleSpinBox):
            return round(editor.value(), editor.decimals())
        return editor.currentData()

    def _edited(self, name: str) -> None:
        values = self.values()
        self.reset_button.setEnabled(bool(values))
        self.changed.emit(name, values)
