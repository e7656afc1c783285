"""`zvstudio bench keys`: the report on tiny models (speed targets are for a GPU and never go
in tests), and the renders it times are the ones it claims to time."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import write_tiny_config_dir, write_tiny_diffusers

from zvstudio.bench.keys import KeysBenchSettings, bench_frames, run_keys_benchmark
from zvstudio.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return write_tiny_diffusers(root / "model"), write_tiny_config_dir(root / "config")


def test_report_times_every_mode_against_plain_img2img(tiny, capsys):
    model, config = tiny
    args = ["bench", "keys", "--model", str(model), "--config", str(config), "--sizes", "48,64"]
    assert main([*args, "--steps", "6", "--keys", "3", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "keys"
    assert report["settings"]["device"] == "cpu" and report["settings"]["steps"] == 6
    assert report["settings"]["controlnet"].startswith("shaped after the UNet")
    assert "Shape-aware fusion will not run" in report["settings"]["constraints_not_run"][0]
    assert [entry["size"] for entry in report["sizes"]] == [[48, 48], [64, 64]]
    for entry in report["sizes"]:
        modes = entry["modes"]
        assert set(modes) == {"diffusers", "plain", "two_pass", "single_pass"}
        for name, mode in modes.items():
            assert len(mode["key_seconds"]) == 3 and min(mode["key_seconds"]) > 0
            assert mode["peak_gpu_mb"] is None and mode["peak_ram_mb"] > 0
            if name in ("two_pass", "single_pass"):
                # The anchor is timed apart; the figure is the constrained keys' mean.
                assert mode["anchor_seconds"] == mode["key_seconds"][0]
                assert mode["seconds_per_key"] == pytest.approx(
                    np.mean(mode["key_seconds"][1:]), abs=1e-3
                )
                ratio = mode["seconds_per_key"] / modes["plain"]["seconds_per_key"]
                assert mode["ratio_to_plain"] == pytest.approx(ratio, rel=1e-2)
                assert mode["targets_met"] is None  # the targets are for 512x512 on a GPU
        assert modes["single_pass"]["mean_abs_difference_to_two_pass"] >= 0


def test_the_modes_render_what_they_claim(tiny):
    # The constrained modes are constrained: they differ from plain img2img.
    model, config = tiny
    settings = KeysBenchSettings(
        sizes=(64,), steps=6, keys=3, device="cpu", model=model, config_dir=config
    )
    from zvstudio.bench import keys

    images = {}
    components, controlnet, _ = keys._load(settings, model)
    frames = bench_frames(64, 3)
    for mode in ("plain", "two_pass", "single_pass"):
        _, images[mode] = keys._measure_mode(mode, frames, settings, components, controlnet)
    assert all(image.shape == (64, 64, 3) for stack in images.values() for image in stack)
    for constrained in ("two_pass", "single_pass"):
        assert not np.array_equal(images[constrained][1], images["plain"][1])
    # The anchor is rendered without references: two-pass and single-pass agree on it.
    assert np.array_equal(images["two_pass"][0], images["single_pass"][0])


def test_bad_settings_are_refused(tiny, capsys):
    model, config = tiny
    base = ["bench", "keys", "--model", str(model), "--config", str(config), "--device", "cpu"]
    assert main([*base, "--sizes", "50"]) == 1
    assert "multiples of 8" in capsys.readouterr().err
    assert main([*base, "--modes", "plain,fast"]) == 1
    assert "unknown modes" in capsys.readouterr().err
    assert main([*base, "--sizes", "a,b"]) == 1
    assert "whole numbers" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a model or --random-weights is required
        main(["bench", "keys"])


def test_bench_frames_move():
    frames = bench_frames(64, 3)
    assert [frame.shape for frame in frames] == [(64, 64, 3)] * 3
    assert not np.array_equal(frames[0], frames[1])
    assert run_keys_benchmark  # the public entry point the CLI calls


def test_out_of_gpu_memory_is_reported_per_mode(tiny, monkeypatch):
    import torch

    from zvstudio.bench import keys

    measure = keys._measure_mode

    def two_pass_runs_out(mode, *args):
        if mode == "two_pass":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return measure(mode, *args)

    monkeypatch.setattr(keys, "_measure_mode", two_pass_runs_out)
    model, config = tiny
    settings = KeysBenchSettings(
        sizes=(32,),
        steps=4,
        keys=2,
        modes=("plain", "two_pass", "single_pass"),
        device="cpu",
        model=model,
        config_dir=config,
    )
    modes = run_keys_benchmark(settings)["sizes"][0]["modes"]
    assert "out of memory" in modes["two_pass"]["error"] and "--sizes" in modes["two_pass"]["hint"]
    assert modes["single_pass"]["ratio_to_plain"] > 0
    assert "mean_abs_difference_to_two_pass" not in modes["single_pass"]
