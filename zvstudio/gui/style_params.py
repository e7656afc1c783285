"""Editors for a weightless style's parameters, built from the style's own declaration.

Each style declares its parameters (type, range, allowed words, help) in its settings class
(`zvstudio.stylize.style_parameters`), so the editor needs no per-style code and a plugin's
style gets the same widgets as a built-in one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QSignalBlocker, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
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


class StyleParamsEditor(QObject):
    """The current style's parameters as rows of `form`, right after the row of `anchor`, so
    they line up with the rows around them. After each edit `changed` carries the edited
    parameter's name ("" for a reset) and the values that differ from the style's defaults
    (what a project stores)."""

    changed = Signal(str, dict)

    def __init__(self, form: QFormLayout, anchor: QWidget) -> None:
        super().__init__()
        self.form, self.anchor = form, anchor
        self.style: str | None = None
        self.parameters: tuple[StyleParameter, ...] = ()
        self.editors: dict[str, QWidget] = {}
        self.reset_button = self._reset_button()
        self._fields: list[QWidget] = []  # the field widget of each row this editor added
        self._visible = True

    def show_style(self, style: str, values: dict[str, Any]) -> None:
        """Show `style`'s parameters with `values` (the rest at their defaults)."""
        if style != self.style:
            self._rebuild(style)
        for parameter in self.parameters:
            self._show_value(parameter, values.get(parameter.name, parameter.default))
        self.reset_button.setEnabled(bool(self.values()))

    def set_visible(self, visible: bool) -> None:
        """Show or hide this editor's rows (the form keeps them)."""
        self._visible = visible
        for field in self._fields:
            self.form.setRowVisible(field, visible)

    def is_visible(self) -> bool:
        return self._visible and bool(self._fields) and self._fields[0].isVisible()

    def values(self) -> dict[str, Any]:
        """The edited values that differ from the defaults."""
        out = {}
        for parameter in self.parameters:
            value = self._value(parameter)
            if value != parameter.default:
                out[parameter.name] = value
        return out

    # -- building ----------------------------------------------------------------------------
    def _reset_button(self) -> QPushButton:
        button = QPushButton("Reset to the style's defaults")
        button.clicked.connect(lambda: self.changed.emit("", {}))
        return button

    def _rebuild(self, style: str) -> None:
        for field in self._fields:
            self.form.removeRow(field)  # deletes the row's label and field
        self.style, self.editors, self._fields = style, {}, []
        try:
            self.parameters = style_parameters(style)
        except ZvsError:  # a plugin's style that is not installed here
            self.parameters = ()
        row = self.form.getWidgetPosition(self.anchor)[0] + 1
        for parameter in self.parameters:
            editor = self._editor(parameter, lambda *_, name=parameter.name: self._edited(name))
            tip = parameter.help or parameter.name
            editor.setToolTip(tip)
            label = QLabel(parameter_label(parameter.name))
            label.setToolTip(tip)
            self.form.insertRow(row, label, editor)
            self.editors[parameter.name] = editor
            self._fields.append(editor)
            row += 1
        if self.parameters:
            self.reset_button = self._reset_button()
            self.form.insertRow(row, self.reset_button)
            self._fields.append(self.reset_button)
        self.set_visible(self._visible)

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
