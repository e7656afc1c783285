"""The example plugin registers its style through zvstudio's plugin API and renders."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # not installed in CI

from zvstudio.keyrender import KeyContext
from zvstudio.plugins import load_plugins
from zvstudio.stylize import create_stylizer, registry


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_styles", dict(registry._styles))


def test_the_entry_point_registers_the_style(clean_registry):
    entry = EntryPoint("sepia", "zvstudio_sepia:register", "zvstudio.plugins")
    report = load_plugins(discover=lambda: [entry])
    assert report.loaded == ["sepia"] and report.failed == {}
    frame = np.full((40, 60, 3), (200, 120, 60), np.uint8)
    result = create_stylizer("sepia", vignette=0.8).render(frame, KeyContext(0))
    assert result.shape == frame.shape
    red, green, blue = (result[20, 30].astype(int)[i] for i in range(3))
    assert red >= green >= blue  # sepia is warm
    assert result[0, 0].sum() < result[20, 30].sum()  # the vignette darkens the corners


def test_a_broken_plugin_is_reported_not_fatal(clean_registry):
    broken = EntryPoint("broken", "zvstudio_no_such_module:register", "zvstudio.plugins")
    report = load_plugins(discover=lambda: [broken])
    assert report.loaded == [] and "ModuleNotFoundError" in report.failed["broken"]
    assert "cartoon" in registry.available_styles()
