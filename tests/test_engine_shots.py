"""Keys every K frames start again at each shot cut, for `render --every K` and the GUI's
status; the cuts are found once per clip and range, then read from the cache."""

from __future__ import annotations

import json

import numpy as np
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
    part = request_for(two_shots, tmp_path / "p", first=5, last=22)
    assert sorted(render_status(part).keys) == [5, 15]  # not found yet: the status finds none
    render(part)
    assert sorted(render_status(part).keys) == [5, 9, 19]
    finder = shots.CutFinder
    monkeypatch.setattr(shots, "CutFinder", None)  # finding them again would fail
    stages = []
    render(part, lambda p: stages.append(p.stage))
    assert "cuts" not in stages
    # The whole clip is another question; once answered, it answers for any range of it.
    monkeypatch.setattr(shots, "CutFinder", finder)
    render(request_for(two_shots, tmp_path / "a"))
    monkeypatch.setattr(shots, "CutFinder", None)
    other = request_for(two_shots, tmp_path / "o", first=2, last=20)
    assert sorted(render_status(other).keys) == [2, 9, 19]
    render(other)


def test_an_unreadable_cache_entry_is_found_again(two_shots, tmp_path):
    render(request_for(two_shots, tmp_path / "a"))
    from zvstudio.hashing import file_hash

    path = shots.cuts_path(file_hash(two_shots), 0, 22)
    assert json.loads(path.read_text()) == {"cuts": [9]}
    path.write_text("{not json")
    assert shots.clip_cuts(two_shots, file_hash(two_shots), 0, 22) == [9]
    assert json.loads(path.read_text()) == {"cuts": [9]}


def test_the_editor_gets_proxy_and_cuts_from_one_decode(two_shots, monkeypatch):
    from zvstudio.hashing import file_hash
    from zvstudio.media import VideoReader, probe

    decodes = []
    frames = VideoReader.frames

    def counted(reader, *args, **kwargs):
        decodes.append(args)
        return frames(reader, *args, **kwargs)

    monkeypatch.setattr(VideoReader, "frames", counted)
    info, clip_id = probe(two_shots), file_hash(two_shots)

    def prepare() -> shots.PreparedClip:
        decodes.clear()
        return shots.prepare_clip(two_shots, clip_id, info, 48)

    first = prepare()
    assert first.cuts == [9] and len(first.proxy) == 23 and len(decodes) == 1
    assert shots.cached_cuts(clip_id, 0, 22) == [9]  # as if found on their own
    assert prepare().cuts == [9] and decodes == []  # both from the cache now
    # Either one lost from the cache costs a decode for it alone.
    mtime = first.proxy.path.stat().st_mtime_ns
    shots.cuts_path(clip_id, 0, 22).unlink()
    assert prepare().cuts == [9] and len(decodes) == 1
    assert first.proxy.path.stat().st_mtime_ns == mtime  # the proxy was not built again
    first.proxy.path.unlink()
    rebuilt = prepare()
    assert rebuilt.cuts == [9] and len(rebuilt.proxy) == 23 and len(decodes) == 1
    assert first.proxy.path.stat().st_mtime_ns != mtime


def test_probe_lists_the_shot_cuts(two_shots, capsys):
    from zvstudio.cli import main

    assert main(["probe", str(two_shots), "--cuts"]) == 0
    assert "shot cuts  9\n" in capsys.readouterr().out
    assert main(["probe", str(two_shots), "--cuts", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shot_cuts"] == [9]
    assert main(["probe", str(two_shots), "--json"]) == 0
    assert "shot_cuts" not in json.loads(capsys.readouterr().out)  # only when asked: it decodes


# -- diffusion keys after a cut -----------------------------------------------------------------
class RecordingSampler:
    """The sampler's face that DiffusionKeyRenderer uses, recording what each key was given."""

    def __init__(self):
        from zvstudio.diffusion.sampler import KeySettings

        self.settings = KeySettings()
        self.calls = []

    def set_anchor_frame(self, frame):
        pass

    def render(self, frame, is_anchor, prompt, progress, cancel, references, shape_fusion):
        self.calls.append(([r[0][0, 0, 0] for r in references], shape_fusion))
        return frame


def key(number: int):
    from zvstudio.keyrender import RenderedKey

    image = np.full((8, 8, 3), number, np.uint8)
    return RenderedKey(number, image, image)


@pytest.mark.parametrize(
    "shot_first, references, shape_fusion",
    [(0, [0, 10], True), (5, [10], False), (15, [], False)],
)
def test_flow_based_references_stay_in_the_keys_shot(shot_first, references, shape_fusion):
    from zvstudio.diffusion.sampler import DiffusionKeyRenderer
    from zvstudio.keyrender import KeyContext

    sampler = RecordingSampler()
    renderer = DiffusionKeyRenderer(sampler, "model")
    frame = np.zeros((8, 8, 3), np.uint8)
    renderer.render(frame, KeyContext(20, key(0), key(10), shot_first=shot_first))
    assert sampler.calls == [(references, shape_fusion)]


def test_a_key_after_a_cut_has_its_own_identity():
    from zvstudio.engine.render import key_identities

    class Referring:
        uses_references = True

        def key_identity(self, number, params=None):
            return "settings"

    numbers = [0, 10, 20, 30]
    plain = key_identities(Referring(), numbers, {}, "clip", (64, 48))
    cut = key_identities(Referring(), numbers, {}, "clip", (64, 48), cuts=[15])
    assert [plain[n] == cut[n] for n in numbers] == [True, True, False, False]
    assert key_identities(Referring(), numbers, {}, "clip", (64, 48), cuts=[0, 40]) == plain


def test_a_diffusion_render_across_a_cut_agrees_with_its_status(two_shots, tmp_path, monkeypatch):
    from tiny_models import write_tiny_config_dir, write_tiny_diffusers

    from zvstudio.diffusion.sampler import KeyFrameSampler, KeySettings
    from zvstudio.engine.preview import DiffusionSpec
    from zvstudio.engine.request import KeyRendererSpec

    seen, render_key = [], KeyFrameSampler.render

    def recording(self, frame, is_anchor, *args, references=(), shape_fusion=True, **kwargs):
        seen.append((len(references), shape_fusion))
        options = {**kwargs, "references": references, "shape_fusion": shape_fusion}
        return render_key(self, frame, is_anchor, *args, **options)

    monkeypatch.setattr(KeyFrameSampler, "render", recording)
    spec = DiffusionSpec(
        write_tiny_diffusers(tmp_path / "model"),
        KeySettings(prompt="a red cat", steps=2),
        device="cpu",
        config_dir=write_tiny_config_dir(tmp_path / "config"),
    )
    request = request_for(
        two_shots, tmp_path / "out", renderer=KeyRendererSpec(kind="diffusion", diffusion=spec)
    )
    assert render(request).keys == 3  # 0 | 9, 19
    # Key 9 starts the second shot: no flow-based reference; key 19 follows key 9.
    assert seen == [(0, True), (0, False), (1, False)]
    status = render_status(request)
    assert set(status.keys.values()) == {"rendered"} and status.complete
