"""`render --every K --placement motion`: as many keys, placed where the clip moves; the motion
analysis is made once per clip and range, then read from the cache (also by the status)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from test_placement import _moving_clip

from zvstudio.engine import shots
from zvstudio.engine.render import render
from zvstudio.engine.request import RenderRequest
from zvstudio.engine.status import render_status
from zvstudio.errors import ZvsError
from zvstudio.hashing import file_hash
from zvstudio.media import ExportSettings
from zvstudio.media.synth import write_clip


@pytest.fixture(scope="module")
def still_then_moving(tmp_path_factory):
    """Frames 0-19 still, 20-39 a fast pan over new texture."""
    path = tmp_path_factory.mktemp("motion") / "still_then_moving.mp4"
    frames = [np.kron(f, np.ones((2, 2, 1), np.uint8)) for f in _moving_clip(20, 20, 4)]
    write_clip(path, frames, options={"crf": "10"})
    return path


def request_for(clip, output, **options) -> RenderRequest:
    export = ExportSettings(format="png")
    return RenderRequest(
        clip, output, export=export, key_interval=10, flow_preset="medium", **options
    )


def test_motion_placement_puts_the_keys_where_the_clip_moves(still_then_moving, tmp_path):
    request = request_for(still_then_moving, tmp_path / "out", key_placement="motion")
    assert sorted(render_status(request).keys) == [0, 10, 20, 30]  # not analysed yet: even
    stages, lines = [], []
    result = render(request, lambda p: stages.append(p.stage), log=lines.append)
    assert "motion" in stages and result.frames == 40
    assert "cuts" not in stages  # found in the same decoding pass as the motion
    keys = sorted(render_status(request).keys)  # the status now reads the analysis
    assert result.keys == len(keys) == 4 and keys[0] == 0
    # The still half needs only its first key (and one at most 2K later); even: 2 of 4.
    assert sum(k >= 20 for k in keys) == 3
    assert any(
        f"placed where the motion needs them: {', '.join(map(str, keys))}" in line for line in lines
    )
    assert len(list((tmp_path / "out").glob("frame_*.png"))) == 40


def test_the_analysis_is_made_once(still_then_moving, tmp_path, monkeypatch):
    request = request_for(still_then_moving, tmp_path / "a", key_placement="motion", last=29)
    render(request)
    monkeypatch.setattr(shots, "MotionAnalyser", None)  # analysing again would fail
    stages = []
    render(request, lambda p: stages.append(p.stage))
    assert "motion" not in stages
    # An unreadable entry is made again.
    clip_id = file_hash(still_then_moving)
    path = shots.motion_path(clip_id, 0, 29, 20)
    path.write_bytes(b"not an npz")
    assert shots.cached_motion(clip_id, 0, 29, 20) is None
    monkeypatch.undo()
    analysis = shots.analyse_motion(still_then_moving, 0, 29, 20)
    assert analysis.costs.frame_count == 30 and analysis.cuts == ()
    assert shots.cached_motion(clip_id, 0, 29, 20) is not None


def test_even_placement_and_explicit_keys_need_no_analysis(still_then_moving, tmp_path):
    stages = []
    render(request_for(still_then_moving, tmp_path / "e"), lambda p: stages.append(p.stage))
    explicit = request_for(still_then_moving, tmp_path / "k", key_placement="motion")
    render(replace(explicit, key_frames=(0, 20)), lambda p: stages.append(p.stage))
    assert "motion" not in stages


def test_an_unknown_placement_is_refused(still_then_moving, tmp_path):
    with pytest.raises(ZvsError, match="unknown key placement"):
        request_for(still_then_moving, tmp_path / "x", key_placement="random")


def test_probe_suggests_keys(still_then_moving, capsys):
    import json

    from zvstudio.cli import main

    assert main(["probe", str(still_then_moving), "--suggest-keys", "10", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    keys = report["suggested_keys"]
    assert report["shot_cuts"] == [] and len(keys) == 4 and sum(k >= 20 for k in keys) == 3
    assert main(["probe", str(still_then_moving), "--suggest-keys", "10"]) == 0
    assert f"  keys       {', '.join(map(str, keys))}\n" in capsys.readouterr().out


def test_placement_benchmark_scores_both_placements(still_then_moving):
    from zvstudio.bench.placement import run_placement_benchmark

    report = run_placement_benchmark([still_then_moving], size=128, frames=40, interval=10)
    (clip,) = report["clips"]
    assert clip["frames"] == 40 and clip["even"]["keys"] == [0, 10, 20, 30]
    assert clip["motion"]["keys"] != clip["even"]["keys"] and len(clip["motion"]["keys"]) == 4
    # Keys where the new content comes in make the whole clip closer to the style.
    assert clip["motion"]["clip_psnr"] > clip["even"]["clip_psnr"]
    assert report["mean"]["motion"]["clip_psnr"] == clip["motion"]["clip_psnr"]


def test_render_command_places_keys_by_motion(still_then_moving, tmp_path, capsys):
    from zvstudio.cli import main

    out = tmp_path / "frames"
    args = ["render", str(still_then_moving), "--every", "10", "--placement", "motion", "-q"]
    assert main([*args, "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "4 keys placed where the motion needs them: 0, 20," in captured.err
    assert "4 keys, the rest propagated" in captured.out
    assert len(list(out.glob("frame_*.png"))) == 40
    explicit = ["render", str(still_then_moving), "--keys", "0,20", "--placement", "motion"]
    assert main([*explicit, "-q", "-o", str(tmp_path / "k")]) == 0
    assert "--placement places the keys of --every K" in capsys.readouterr().err


def test_motion_placement_starts_every_shot(tmp_path):
    from test_cuts import scene

    clip = tmp_path / "two_shots.mp4"
    write_clip(clip, scene(0, 9) + scene(1, 14), options={"crf": "12"})
    request = request_for(clip, tmp_path / "out", key_placement="motion")
    result = render(request)
    keys = sorted(render_status(request).keys)
    assert result.keys == len(keys) == 3 and keys[:2] == [0, 9]  # as many as 0 | 9, 19
    assert shots.cached_cuts(file_hash(clip), 0, 22) == [9]


def test_placement_benchmark_from_a_later_frame(still_then_moving):
    from zvstudio.bench.placement import run_placement_benchmark

    report = run_placement_benchmark([still_then_moving], size=128, frames=40, start=20)
    (clip,) = report["clips"]
    assert clip["start"] == 20 and clip["frames"] == 20 and clip["even"]["keys"] == [0, 10]
    with pytest.raises(ZvsError, match="no clip has 20 frames from frame 35"):
        run_placement_benchmark([still_then_moving], size=128, frames=40, start=35)
