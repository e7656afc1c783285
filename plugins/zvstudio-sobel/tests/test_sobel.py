"""The example plugin registers its annotator through zvstudio's plugin API and draws edges."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # not installed in CI

from zvstudio.diffusion import annotators
from zvstudio.diffusion.controlnet import controlnet_annotator, resolve_controlnet
from zvstudio.diffusion.identify import ModelInfo
from zvstudio.errors import ZvsError
from zvstudio.plugins import load_plugins


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(annotators, "_annotators", dict(annotators._annotators))
    # Not zvstudio's own annotators from the user's model files: their "softedge" is HED's.
    monkeypatch.setattr(annotators, "_local_models_checked", True)


def load_sobel():
    entry = EntryPoint("sobel", "zvstudio_sobel:register", "zvstudio.plugins")
    return load_plugins(discover=lambda: [entry])


def test_the_entry_point_registers_a_softedge_annotator(clean_registry):
    with pytest.raises(ZvsError, match="is not available"):
        resolve_controlnet("softedge", [])
    report = load_sobel()
    assert report.loaded == ["sobel"] and report.failed == {} and report.warnings == []
    assert "softedge" in annotators.available_annotators()

    frame = np.zeros((32, 48, 3), np.uint8)
    frame[:, 24:] = 255  # a vertical black-to-white step
    edges = annotators.annotate("softedge", frame)
    assert edges.shape == frame.shape and edges.dtype == np.uint8
    assert edges[16, 23:25].min() == 255  # the step is white...
    assert edges[:, :20].max() == 0 and edges[:, 28:].max() == 0  # ...flat areas black
    condition = annotators.control_condition(frame, "softedge")
    assert condition.dtype == np.float32 and condition.max() == 1.0


def test_softedge_picks_the_softedge_controlnet(clean_registry, tmp_path):
    load_sobel()
    softedge = ModelInfo(
        tmp_path / "control_v11p_sd15_softedge.safetensors",
        "control_v11p_sd15_softedge",
        "controlnet",
        "sd1",
        "",
        1,
    )
    assert resolve_controlnet("softedge:0.6", [softedge]) == (softedge.path, 0.6, "")
    assert controlnet_annotator("softedge:0.6") == "softedge"
