"""Keys every K frames start again at each shot cut, for `render --every K` and the GUI's
status; the cuts are found once per clip and range, then read from the cache."""

from __future__ import annotations

import json

import pytest
from test_cuts import scene

from zvstudio.engine import shots
from zvstudio.engine.render import render
from zvstudio.engine.request import RenderRequest
from zvstudio.engine.status import render_status
from zvstudio.media import ExportSettings
from zvstudio.media.synth import write_clip


@pytest.fixture(scope="module")
def two_shots(tmp_path_factory):
    """A clip of two shots: frames 0-8 and 9-22."""
    path = tmp_path_factory.mktemp("shots") / "two_shots.mp4"
    write_clip(path, scene(0, 9) + scene(1, 14), options={"crf": "12"})
    return path


def request_for(clip, output, **options) -> RenderRequest:
    export = ExportSettings(format="png")
    return RenderRequest(
        clip, output, export=export, key_interval=10, flow_preset="medium", **options
    )


def test_keys_every_k_start_again_at_the_cut(two_shots, tmp_path):
    stages = []
    result = render(request_for(two_shots, tmp_path / "out"), lambda p: stages.append(p.stage))
    assert result.keys == 3 and result.frames == 23  # 0 | 9, 19
    assert "cuts" in stages
    status = render_status(request_for(two_shots, tmp_path / "out"))
    assert sorted(status.keys) == [0, 9, 19] and status.complete
    assert len(list((tmp_path / "out").glob("frame_*.png"))) == 23


def test_cuts_are_found_once_per_range(two_shots, tmp_path, monkeypatch):
    render(request_for(two_shots, tmp_path / "a"))
    finder = shots.CutFinder
    monkeypatch.setattr(shots, "CutFinder", None)  # finding them again would fail
    stages = []
    render(request_for(two_shots, tmp_path / "b"), lambda p: stages.append(p.stage))
    assert "cuts" not in stages
    # Another range is another question.
    monkeypatch.setattr(shots, "CutFinder", finder)
    part = request_for(two_shots, tmp_path / "c", first=5, last=22)
    assert sorted(render_status(part).keys) == [5, 15]  # not found yet: the status guesses none
    render(part)
    assert sorted(render_status(part).keys) == [5, 9, 19]


def test_an_unreadable_cache_entry_is_found_again(two_shots, tmp_path):
    render(request_for(two_shots, tmp_path / "a"))
    from zvstudio.hashing import file_hash

    path = shots.cuts_path(file_hash(two_shots), 0, 22)
    assert json.loads(path.read_text()) == {"cuts": [9]}
    path.write_text("{not json")
    assert shots.clip_cuts(two_shots, file_hash(two_shots), 0, 22) == [9]
    assert json.loads(path.read_text()) == {"cuts": [9]}


def test_probe_lists_the_shot_cuts(two_shots, capsys):
    from zvstudio.cli import main

    assert main(["probe", str(two_shots), "--cuts"]) == 0
    assert "shot cuts  9\n" in capsys.readouterr().out
    assert main(["probe", str(two_shots), "--cuts", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shot_cuts"] == [9]
    assert main(["probe", str(two_shots), "--json"]) == 0
    assert "shot_cuts" not in json.loads(capsys.readouterr().out)  # only when asked: it decodes
