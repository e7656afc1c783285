"""The engine's content cache: what a change recomputes, failures that keep finished work, and
resuming a render that was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import make_clip

from zvstudio.engine import render as render_module
from zvstudio.engine.render import render
from zvstudio.engine.request import KeyRendererSpec, RenderRequest
from zvstudio.errors import StageError
from zvstudio.keyrender import KeyParams
from zvstudio.media import ExportSettings
from zvstudio.stylize import create_stylizer


def read_frames(folder: Path) -> list[np.ndarray]:
    return [cv2.imread(str(path)) for path in sorted(folder.glob("frame_*.png"))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import write_tiny_config_dir, write_tiny_diffusers

    root = tmp_path_factory.mktemp("tiny")
    model = write_tiny_diffusers(root / "model")
    config = write_tiny_config_dir(root / "config")
    clip, _, _ = make_clip(root / "c.mp4", count=12, width=64, height=48)
    return model, config, clip


def diffusion_request(tiny, output: Path, key_params=()) -> RenderRequest:
    from zvstudio.diffusion.sampler import KeySettings
    from zvstudio.engine.preview import DiffusionSpec

    model, config, clip = tiny
    spec = DiffusionSpec(
        model, KeySettings(prompt="a red cat", steps=3), device="cpu", config_dir=config
    )
    return RenderRequest(
        clip,
        output,
        KeyRendererSpec(kind="diffusion", diffusion=spec),
        ExportSettings(format="png"),
        key_interval=3,  # keys 0, 3, 6, 9
        key_params=tuple(key_params),
        flow_preset="medium",
    )


def counts(result) -> tuple[int, int, int, int]:
    return (
        result.rendered_keys,
        result.replayed_keys,
        result.reused_segments,
        result.segments,
    )


def test_changing_one_keys_prompt_recomputes_only_what_depends_on_it(tiny, tmp_path, monkeypatch):
    first = render(diffusion_request(tiny, tmp_path / "a"))
    assert counts(first) == (4, 0, 0, 4)
    again = render(diffusion_request(tiny, tmp_path / "b"))
    assert counts(again) == (0, 0, 4, 4)  # nothing recomputed
    assert all(
        np.array_equal(x, y)
        for x, y in zip(read_frames(tmp_path / "a"), read_frames(tmp_path / "b"), strict=True)
    )

    # The last key's prompt: that key and its two segments (9..11 and 6..8, which blends
    # from it). Keys 0..6 are rendered again only to restore the cross-frame references.
    last = [(9, KeyParams(prompt="a blue dog"))]
    changed = render(diffusion_request(tiny, tmp_path / "c", last))
    assert counts(changed) == (1, 3, 2, 4)
    a, c = read_frames(tmp_path / "a"), read_frames(tmp_path / "c")
    assert all(np.array_equal(a[n], c[n]) for n in range(6))
    assert not np.array_equal(a[9], c[9])

    # A middle key: diffusion keys refer to the previous key, so every later key depends on
    # it too; segments before it are reused.
    middle = [(6, KeyParams(prompt="a blue dog")), *last]
    changed_middle = render(diffusion_request(tiny, tmp_path / "d", middle))
    assert counts(changed_middle) == (2, 2, 1, 4)

    # The reused and replayed work gives exactly what a render from nothing gives.
    monkeypatch.setenv("ZVSTUDIO_CACHE_DIR", str(tmp_path / "fresh-cache"))
    fresh = render(diffusion_request(tiny, tmp_path / "e", middle))
    assert counts(fresh) == (4, 0, 0, 4)
    assert all(
        np.array_equal(x, y)
        for x, y in zip(read_frames(tmp_path / "d"), read_frames(tmp_path / "e"), strict=True)
    )


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path, _, _ = make_clip(tmp_path_factory.mktemp("c") / "c.mp4", count=18)
    return path


class FailingPosterize(type(create_stylizer("posterize"))):
    """Posterize with the same cache identity, failing at one frame while `broken`."""

    broken_at: int | None = None

    def render(self, frame, context, **options):
        if context.frame_index == self.broken_at:
            raise RuntimeError("the model file went away")
        return super().render(frame, context, **options)


def test_a_failing_key_names_its_frame_and_finished_work_stays_cached(clip, tmp_path, monkeypatch):
    renderer = FailingPosterize.from_params()
    monkeypatch.setattr(render_module, "create_key_renderer", lambda *args: renderer)
    request = RenderRequest(
        clip, tmp_path / "out.mp4", key_interval=6, flow_preset="medium"
    )  # keys 0, 6, 12
    renderer.broken_at = 12
    with pytest.raises(StageError) as failure:
        render(request)
    assert (failure.value.stage, failure.value.frame, failure.value.code) == (
        "keys",
        12,
        "internal",
    )
    assert "rendering key frame 12 failed: RuntimeError: the model file went away" in str(
        failure.value
    )
    assert not (tmp_path / "out.mp4").exists()
    renderer.broken_at = None
    result = render(request)
    # Segment 0..5 was finished before the failure; keys 0 and 6 too.
    assert (result.reused_segments, result.reused_keys, result.rendered_keys) == (1, 1, 1)


def test_a_failing_segment_names_its_frames(clip, tmp_path, monkeypatch):
    from zvstudio.propagate import clip as clip_module

    def broken(*args, **kwargs):
        raise MemoryError("no room for the segment")

    monkeypatch.setattr(clip_module, "_between", broken)
    request = RenderRequest(clip, tmp_path / "out.mp4", key_interval=6, flow_preset="medium")
    with pytest.raises(StageError, match=r"propagating frames 0\.\.5 failed: MemoryError"):
        render(request)


def test_segments_cached_by_an_older_propagation_are_not_reused(clip, tmp_path, monkeypatch):
    request = RenderRequest(clip, tmp_path / "out.mp4", key_interval=6, flow_preset="medium")
    first = render(request)
    assert render(request).reused_segments == first.segments
    monkeypatch.setattr(render_module, "ALGORITHM_VERSION", render_module.ALGORITHM_VERSION + 1)
    assert render(request).reused_segments == 0


def run_cli(args, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "ZVSTUDIO_CACHE_DIR": str(cache)}
    return subprocess.Popen(
        [sys.executable, "-m", "zvstudio", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished_segments(cache: Path) -> int:
    return len([p for p in cache.glob("segments/*/*") if not p.name.startswith(".")])


def test_a_killed_render_resumes_from_its_finished_segments(tmp_path):
    clip, _, _ = make_clip(tmp_path / "long.mp4", count=60)
    cache = tmp_path / "cache"
    args = ["render", str(clip), "--style", "posterize", "--every", "6", "-q", "-o"]  # 10 segments
    process = run_cli([*args, str(tmp_path / "frames")], cache)
    deadline = time.monotonic() + 120
    while finished_segments(cache) < 2 and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_with = finished_segments(cache)
    assert 2 <= killed_with < 10, "the render finished before it could be killed"
    assert not (tmp_path / "frames").exists()

    resumed = run_cli([*args, str(tmp_path / "frames")], cache)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resumed: {killed_with} of 10 segments came from the cache" in err
    # The killed export's partial folder is gone, and the result equals an uninterrupted one.
    assert not list(tmp_path.glob(".frames.*.partial"))
    whole = run_cli([*args, str(tmp_path / "whole")], tmp_path / "other-cache")
    assert whole.wait(timeout=300) == 0
    resumed_frames, whole_frames = read_frames(tmp_path / "frames"), read_frames(tmp_path / "whole")
    assert len(resumed_frames) == 60
    assert all(np.array_equal(x, y) for x, y in zip(resumed_frames, whole_frames, strict=True))


def test_status_without_loading_the_model_agrees_with_the_render(tiny, tmp_path, monkeypatch):
    from zvstudio.engine import preview
    from zvstudio.engine.status import render_status

    render(diffusion_request(tiny, tmp_path / "a"))

    def no_loading(*args, **kwargs):
        raise AssertionError("the status must not load the model")

    monkeypatch.setattr(preview, "build_sampler", no_loading)
    assert render_status(diffusion_request(tiny, tmp_path / "b")).complete
    # A prompt changed on key 3: it and every later key (their references) are out of date.
    changed = render_status(diffusion_request(tiny, tmp_path / "b", [(3, KeyParams("a dog"))]))
    assert changed.keys == {0: "rendered", 3: "stale", 6: "stale", 9: "stale"}
    assert [s.cached for s in changed.segments] == [False, False, False, False]
