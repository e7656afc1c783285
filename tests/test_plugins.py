"""Plugins add flow estimators and ControlNet annotators (styles: see test_stylize and the
example plugins); clashes and broken plugins are reported, never fatal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from zvstudio import plugins
from zvstudio.diffusion import annotators
from zvstudio.diffusion.controlnet import controlnet_annotator, resolve_controlnet
from zvstudio.diffusion.identify import ModelInfo
from zvstudio.errors import ZvsError
from zvstudio.flow import ESTIMATORS, FlowCache, FlowEstimator, create_flow_estimator
from zvstudio.flow import registry as flows
from zvstudio.flow.registry import estimator_plugin
from zvstudio.stylize import available_styles
from zvstudio.stylize import registry as styles


@dataclass
class FakeEntry:
    """Stands for an installed plugin's entry point."""

    name: str
    register: Callable
    value: str = "fake_plugin:register"
    dist: object = None

    def load(self) -> Callable:
        return self.register


@pytest.fixture(autouse=True)
def clean_registries(monkeypatch):
    monkeypatch.setattr(styles, "_styles", dict(styles._styles))
    monkeypatch.setattr(flows, "_estimators", dict(flows._estimators))
    monkeypatch.setattr(annotators, "_annotators", dict(annotators._annotators))
    plugins.load_plugins()  # the installed plugins, once, before the fakes


def load(*entries: FakeEntry) -> plugins.PluginReport:
    return plugins.load_plugins(discover=lambda: list(entries))


class ShiftFlow(FlowEstimator):
    """A plugin's estimator: every pixel moves by (dx, 0)."""

    name = "shift"

    def __init__(self, dx: float = 1.0) -> None:
        self.dx = dx

    def settings_key(self) -> str:
        return f"shift/v1/dx={self.dx}"

    def compute(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        flow = np.zeros((*source.shape[:2], 2), np.float32)
        flow[..., 0] = self.dx
        return flow


def frames() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return tuple(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8) for _ in range(2))


# --- flow estimators ----------------------------------------------------------------------------


def test_a_plugin_flow_estimator_is_listed_and_created_by_name(tmp_path):
    report = load(FakeEntry("shifty", lambda api: api.register_flow_estimator("shift", ShiftFlow)))
    assert report.loaded == ["shifty"] and report.failed == {} and report.warnings == []
    assert tuple(ESTIMATORS)[:2] == ("dis", "raft") and "shift" in ESTIMATORS
    assert estimator_plugin("shift") == "shifty" and estimator_plugin("dis") == ""
    estimator = create_flow_estimator("shift", dx=2.5)
    a, b = frames()
    assert np.all(estimator.compute(a, b)[..., 0] == 2.5)
    with pytest.raises(ZvsError, match="speed") as err:
        create_flow_estimator("shift", speed=3)
    assert "dx" in str(err.value.hint)
    with pytest.raises(ZvsError, match="unknown flow estimator") as err:
        create_flow_estimator("gmflow")
    assert "dis, raft, shift" in str(err.value.hint)
    # Flow caches key stored flows by the plugin's settings_key().
    cache = FlowCache(estimator, "clip", root=tmp_path)
    assert np.all(cache.get(0, 1, a, b)[..., 0] == 2.5)


def test_a_render_propagates_with_the_plugin_estimator_it_names(tmp_path):
    from helpers import make_clip

    from zvstudio.engine.render import render
    from zvstudio.engine.request import KeyRendererSpec, RenderRequest
    from zvstudio.media import ExportSettings

    used = []

    class CountingShift(ShiftFlow):
        def compute(self, source, target):
            used.append(source.shape)
            return super().compute(source, target)

    load(FakeEntry("shifty", lambda api: api.register_flow_estimator("shift", CountingShift)))
    clip, _, _ = make_clip(tmp_path / "c.mp4", count=6, width=64, height=48)

    def request(flow: str, output: str) -> RenderRequest:
        return RenderRequest(
            clip,
            tmp_path / output,
            KeyRendererSpec(style="pencil"),
            ExportSettings(format="png"),
            key_frames=(0, 5),
            flow_estimator=flow,
        )

    result = render(request("shift", "out"))
    assert result.frames == 6 and used and used[0] == (48, 64, 3)
    with pytest.raises(ZvsError, match="unknown flow estimator"):
        render(request("gmflow", "never"))
    assert not (tmp_path / "never").exists()


def test_plugins_load_lazily_and_once_when_estimators_are_listed(monkeypatch):
    calls = []

    def register(api):
        calls.append(api.plugin)
        assert "cartoon" in available_styles()  # a plugin may list styles while loading
        api.register_flow_estimator("shift", ShiftFlow)

    monkeypatch.setattr(plugins, "_report", None)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [FakeEntry("lazy", register)])
    assert "shift" in tuple(ESTIMATORS)
    report = plugins.load_plugins()
    assert report.loaded == ["lazy"] and report.failed == {} and report.warnings == []
    assert calls == ["lazy"]


class NoKeyFlow(FlowEstimator):
    def compute(self, source, target):  # settings_key() is missing
        return np.zeros((*source.shape[:2], 2), np.float32)


class DuckNoKeyFlow:
    def compute(self, source, target):
        return np.zeros((*source.shape[:2], 2), np.float32)

    def compute_pair(self, a, b):
        return self.compute(a, b), self.compute(b, a)


@pytest.mark.parametrize("cls", [NoKeyFlow, DuckNoKeyFlow])
def test_an_estimator_without_settings_key_fails_its_plugin_clearly(cls):
    def register(api):
        api.register_annotator("invert", lambda rgb: 255 - rgb)  # not kept: all or nothing
        api.register_flow_estimator("nokey", cls)

    report = load(FakeEntry("badflow", register))
    assert report.loaded == []
    message = report.failed["badflow"]
    assert "ZvsError" in message and "'badflow'" in message and "settings_key()" in message
    assert "nokey" not in ESTIMATORS and not annotators.has_annotator("invert")


def test_a_factory_product_is_checked_when_created():
    def register(api):
        api.register_flow_estimator("nokey", lambda: DuckNoKeyFlow())
        api.register_flow_estimator("blank", lambda: shift_with_key(""))
        api.register_flow_estimator("crash", lambda: 1 / 0)

    assert load(FakeEntry("lazyflow", register)).loaded == ["lazyflow"]
    with pytest.raises(ZvsError, match=r"plugin 'lazyflow'.*no settings_key\(\)"):
        create_flow_estimator("nokey")
    with pytest.raises(ZvsError, match=r"plugin 'lazyflow'.*not a non-empty string"):
        create_flow_estimator("blank")
    with pytest.raises(ZvsError, match=r"plugin 'lazyflow' failed to start: ZeroDivisionError"):
        create_flow_estimator("crash")


def shift_with_key(key: str) -> ShiftFlow:
    estimator = ShiftFlow()
    estimator.settings_key = lambda: key  # type: ignore[method-assign]
    return estimator


# --- annotators ---------------------------------------------------------------------------------


def invert(rgb: np.ndarray) -> np.ndarray:
    return 255 - rgb


def test_a_plugin_annotator_makes_the_control_image(tmp_path):
    report = load(FakeEntry("inverter", lambda api: api.register_annotator("invert", invert)))
    assert report.loaded == ["inverter"]
    assert annotators.available_annotators() == ["canny", "scribble", "tile", "ip2p", "invert"]
    frame = frames()[0]
    condition = annotators.control_condition(frame, "invert")
    assert condition.dtype == np.float32 and condition.shape == frame.shape
    np.testing.assert_array_equal(condition, (255 - frame) / np.float32(255))
    assert annotators.annotator_identity("invert") == "invert@inverter:"
    assert annotators.annotator_identity("canny") == "canny"

    # --controlnet invert:0.5 looks an "invert" ControlNet up in the library, fed with it.
    found = ModelInfo(
        tmp_path / "sd15_invert.safetensors", "sd15_invert", "controlnet", "sd1", "", 1
    )
    other = ModelInfo(tmp_path / "sd15_canny.safetensors", "sd15_canny", "controlnet", "sd1", "", 1)
    assert resolve_controlnet("Invert:0.5", [other, found]) == (found.path, 0.5, "")
    assert controlnet_annotator("Invert:0.5") == "invert"
    with pytest.raises(ZvsError, match="not a scale"):
        resolve_controlnet("invert:abc", [found])
    assert controlnet_annotator("canny") == "canny"
    # A ControlNet given by path is fed the annotator its name names, else canny.
    assert controlnet_annotator(str(tmp_path / "control_sd15_invert.safetensors")) == "invert"
    assert controlnet_annotator(str(tmp_path / "my_controlnet.safetensors")) == "canny"


def test_the_sampler_feeds_the_plugin_annotator_to_the_controlnet_and_keys_name_it():
    from types import SimpleNamespace

    import torch

    from zvstudio.diffusion.control import ControlStack
    from zvstudio.diffusion.sampler import KeySettings, diffusion_key_identity

    load(FakeEntry("inverter", lambda api: api.register_annotator("invert", invert, version="3")))
    frame = frames()[0]
    controlnet = SimpleNamespace(
        config=SimpleNamespace(conditioning_embedding_out_channels=(16, 32, 96, 256)),
        dtype=torch.float32,
    )
    controls = ControlStack([controlnet], KeySettings(annotator="invert"))
    image = controls.frame_conditions(frame, 8, (100, 200), "cpu")[0]
    expected = torch.from_numpy((255 - frame) / np.float32(255)).permute(2, 0, 1)
    torch.testing.assert_close(image[0], expected)
    # The annotator (with its plugin's version) is part of a key's cache identity.
    with_plugin = diffusion_key_identity("m", "fp32", KeySettings(annotator="invert"))
    assert "invert@inverter:3" in with_plugin
    assert with_plugin != diffusion_key_identity("m", "fp32", KeySettings())


def test_canny_control_image_is_the_samplers():
    from zvstudio.diffusion.sampler import canny_condition

    frame = frames()[0]
    np.testing.assert_array_equal(
        annotators.control_condition(frame, "canny", (50, 150)), canny_condition(frame, (50, 150))
    )


def test_a_plugin_may_provide_an_unavailable_annotator(tmp_path):
    depth = ModelInfo(tmp_path / "sd15_depth.safetensors", "sd15_depth", "controlnet", "sd1", "", 1)
    with pytest.raises(ZvsError, match="is not available"):
        resolve_controlnet("depth", [depth])
    load(FakeEntry("midas", lambda api: api.register_annotator("depth", invert, version="2")))
    assert resolve_controlnet("depth:1", [depth]) == (depth.path, 1.0, "")
    assert annotators.annotator_identity("depth") == "depth@midas:2"


@pytest.mark.parametrize(
    ("annotate", "message"),
    [
        (lambda rgb: rgb[::2], r"returned a uint8 12x32x3 image for a 24x32x3 frame"),
        (lambda rgb: rgb.astype(np.float32), "returned a float32"),
        (lambda rgb: 1 / 0, "failed: ZeroDivisionError"),
    ],
)
def test_a_bad_annotator_is_a_clear_error(annotate, message):
    load(FakeEntry("badedge", lambda api: api.register_annotator("bad", annotate)))
    with pytest.raises(ZvsError, match=rf"bad annotator \(plugin 'badedge'\) {message}"):
        annotators.control_condition(frames()[0], "bad")


def test_a_grey_annotator_image_becomes_rgb():
    load(FakeEntry("grey", lambda api: api.register_annotator("grey", lambda rgb: rgb[..., 0])))
    frame = frames()[0]
    image = annotators.annotate("grey", frame)
    assert image.shape == frame.shape and np.all(image[..., 2] == frame[..., 0])


# --- clashes ------------------------------------------------------------------------------------


def test_name_clashes_are_refused_with_a_warning_not_a_crash():
    def register(api):
        api.register_annotator("canny", invert)
        api.register_flow_estimator("dis", ShiftFlow)
        api.register_style("cartoon", lambda: None, "not the real cartoon")
        api.register_annotator("invert", invert)

    report = load(FakeEntry("greedy", register), FakeEntry("late", register))
    assert report.loaded == ["greedy", "late"] and report.failed == {}
    assert report.warnings[:3] == [
        "plugin 'greedy': annotator 'canny' is already built in; the plugin's is ignored",
        "plugin 'greedy': flow estimator 'dis' is already built in; the plugin's is ignored",
        "plugin 'greedy': style 'cartoon' is already built in; the plugin's is ignored",
    ]
    assert report.warnings[6] == (
        "plugin 'late': annotator 'invert' is already provided by plugin 'greedy'; "
        "the plugin's is ignored"
    )
    assert annotators.annotator_plugin("invert") == "greedy"
    assert annotators.annotator_plugin("canny") == "" and estimator_plugin("dis") == ""
    frame = np.zeros((16, 16, 3), np.uint8)
    frame[:, 8:] = 255
    assert annotators.annotate("canny", frame)[:, :4].max() == 0  # still edges, not inverted
    assert type(create_flow_estimator("dis")).__name__ == "DISFlow"


def test_a_bad_name_fails_the_plugin():
    report = load(FakeEntry("shouty", lambda api: api.register_annotator("Sobel Edges", invert)))
    assert "invalid annotator name 'Sobel Edges'" in report.failed["shouty"]
    assert not annotators.has_annotator("Sobel Edges")


def test_a_controlnet_path_is_fed_the_annotator_its_name_names(tmp_path: Path):
    """lllyasviel's names (control_v11f1p_sd15_depth) say what a ControlNet was trained on:
    a plugin's depth annotator feeds it, with no doubt to note."""
    path = tmp_path / "control_v11f1p_sd15_depth.safetensors"
    path.write_bytes(b"")
    load(FakeEntry("midas", lambda api: api.register_annotator("depth", invert)))
    assert resolve_controlnet(f"{path}:0.4") == (path, 0.4, "")
    assert controlnet_annotator(f"{path}:0.4") == "depth"
    # The last word that names an annotator wins (a canny model fine-tuned from a depth one).
    assert controlnet_annotator(str(tmp_path / "depth_to_canny.safetensors")) == "canny"
