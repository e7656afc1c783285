"""`zvstudio bench render`: the report's structure (speed targets never go in tests)."""

from __future__ import annotations

import json
import math

import pytest

from zvstudio.bench.render import BenchSettings, parse_lengths, run_render_benchmark
from zvstudio.cli import main
from zvstudio.errors import ZvsError

TINY = BenchSettings(size=64, every=6)


def test_report_structure():
    report = run_render_benchmark([24, 12], TINY)
    _check_runs(report)
    _check_summary(report)


def _check_runs(report: dict) -> None:
    assert [run["frames"] for run in report["runs"]] == [12, 24]
    for run in report["runs"]:
        assert run["keys"] == math.ceil(run["frames"] / TINY.every)
        assert run["reused_segments"] == 0  # each run starts from an empty cache
        assert run["seconds"] > 0 and run["seconds_per_frame"] > 0
        assert run["clip_write_seconds"] > 0
        assert run["peak_ram_mb"] >= run["ram_before_render_mb"] > 0
        assert run["peak_gpu_mb"] is None  # stylizer keys: no GPU


def _check_summary(report: dict) -> None:
    assert report["benchmark"] == "render"
    assert report["machine"]["cpus"] >= 1
    assert report["settings"]["size"] == [64, 64]
    assert report["settings"]["key_interval"] == 6
    assert report["settings"]["keys"] == "stylize/cartoon"
    shortest, longest = report["runs"]
    expected = round(longest["peak_ram_mb"] - shortest["peak_ram_mb"], 1)
    assert report["ram_growth_mb"] == pytest.approx(expected, abs=0.11)
    assert report["targets"]["seconds_per_frame"] == 0.2
    assert report["targets"]["met"] is None  # the target is for diffusion keys on a GPU


def test_cli_prints_json(capsys):
    assert main(["bench", "render", "--frames", "12", "--size", "64", "--every", "6"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(run["frames"], run["keys"]) for run in report["runs"]] == [(12, 2)]
    assert report["ram_growth_mb"] == 0


def test_bad_input_is_refused():
    assert parse_lengths("1000, 100") == [100, 1000]
    with pytest.raises(ZvsError):
        parse_lengths("ten")
    with pytest.raises(ZvsError):
        run_render_benchmark([12], BenchSettings(size=63))
    with pytest.raises(ZvsError):
        run_render_benchmark([12], BenchSettings(style="no-such-style"))
