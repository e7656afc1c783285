"""`zvstudio bench generate`: the report's structure on tiny models (speed targets are for a
GPU and never go in tests)."""

from __future__ import annotations

import json

import pytest
from tiny_models import build_tiny_motion_adapter, write_tiny_config_dir, write_tiny_diffusers

from zvstudio.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    build_tiny_motion_adapter().save_pretrained(root / "motion")
    return write_tiny_diffusers(root / "model"), write_tiny_config_dir(root / "config"), root


def test_report_has_both_modes_with_their_frames_and_times(tiny, capsys):
    model, config, root = tiny
    args = ["bench", "generate", "--model", str(model), "--config", str(config)]
    args += ["--motion-adapter", str(root / "motion"), "--size", "32", "--frames", "3"]
    assert main([*args, "--steps", "3", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "generate"
    assert report["settings"]["size"] == [32, 32] and report["settings"]["device"] == "cpu"
    assert report["model_build_seconds"] is None and report["model_load_seconds"] > 0
    assert set(report["runs"]) == {"t2v", "animate"}
    for run in report["runs"].values():
        assert run["frames"] == 3 and run["steps"] == 3
        assert run["seconds"] > 0
        assert run["seconds_per_frame"] == pytest.approx(run["seconds"] / 3, rel=1e-2)
        assert run["peak_gpu_mb"] is None and run["peak_ram_mb"] > 0
        assert run["target_met"] is None  # the targets are for 512x512 on a GPU


def test_unknown_size_is_refused(tiny, capsys):
    model, config, _ = tiny
    args = ["bench", "generate", "--model", str(model), "--config", str(config), "--size", "30"]
    assert main(args) == 1
    assert "multiple of 8" in capsys.readouterr().err


def test_bench_dynamicrafter_prints_its_report(capsys):
    args = ["bench", "dynamicrafter", "--tiny", "--frames", "2", "--steps", "1", "--device", "cpu"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "dynamicrafter" and report["settings"]["steps"] == 1
    assert report["frames_made"] == 2 and report["target_met"] is None
