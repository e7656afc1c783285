"""Whole renders, keys then propagation, on synthetic clips and on the real footage: the output
has the source's frames, timing and audio, whatever renders the keys."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_CLIPS, needs_shared_clips
from helpers import make_clip

from zvstudio.engine.render import render
from zvstudio.engine.request import KeyRendererSpec, RenderRequest
from zvstudio.media import probe


def seconds(info, first: int = 0, last: int | None = None) -> np.ndarray:
    """Each frame's time from the range's first frame."""
    pts = info.index.pts[first : None if last is None else last + 1].astype(np.float64)
    return (pts - pts[0]) * float(info.index.time_base)


def span(info, first: int, last: int) -> float:
    """Seconds from frame `first`'s start to frame `last`'s end."""
    index = info.index
    end = index.pts[last + 1] if last + 1 < len(index) else index.pts[-1] + index.last_duration
    return float((int(end) - int(index.pts[first])) * index.time_base)


def assert_same_timing(source, output, first: int = 0, last: int | None = None) -> None:
    last = source.frame_count - 1 if last is None else last
    assert output.frame_count == last - first + 1
    np.testing.assert_allclose(seconds(output), seconds(source, first, last), atol=1e-3)
    # The last frame lasts as long as in the source (MP4/MOV edit lists count milliseconds).
    assert output.duration == pytest.approx(span(source, first, last), abs=1e-3)
    if source.has_audio and output.has_audio:
        assert output.audio[0].duration == pytest.approx(output.duration, abs=0.03)


def tiny_diffusion(root):
    from tiny_models import write_tiny_config_dir, write_tiny_diffusers

    from zvstudio.diffusion.sampler import KeySettings
    from zvstudio.engine.preview import DiffusionSpec

    spec = DiffusionSpec(
        write_tiny_diffusers(root / "model"),
        KeySettings(prompt="an ink drawing", steps=2),
        device="cpu",
        config_dir=write_tiny_config_dir(root / "config"),
    )
    return KeyRendererSpec(kind="diffusion", diffusion=spec)


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory):
    path, _, _ = make_clip(
        tmp_path_factory.mktemp("e2e") / "vfr.mp4",
        count=20,
        vfr=True,
        audio=True,
        width=96,
        height=64,
    )
    return path


def test_stylizer_keys_keep_variable_timing_and_audio(vfr_clip, tmp_path):
    out = tmp_path / "out.mp4"
    result = render(RenderRequest(vfr_clip, out, KeyRendererSpec(style="pencil"), key_interval=5))
    assert (result.frames, result.keys, result.rendered_keys) == (20, 4, 4)
    source, output = probe(vfr_clip), probe(out)
    assert source.is_vfr and output.has_audio
    assert_same_timing(source, output)


def test_diffusion_keys_keep_variable_timing_and_audio(vfr_clip, tmp_path):
    out = tmp_path / "out.mov"
    request = RenderRequest(
        vfr_clip, out, tiny_diffusion(tmp_path), first=3, last=14, key_interval=6
    )
    result = render(request)
    assert (result.frames, result.keys) == (12, 2)
    assert_same_timing(probe(vfr_clip), probe(out), first=3, last=14)
    assert probe(out).has_audio


@needs_shared_clips
@pytest.mark.parametrize("clip_path", SHARED_CLIPS[:1], ids=lambda p: p.name)
def test_real_footage_with_stylizer_keys(clip_path, tmp_path):
    # (Tiny-model diffusion keys at this clip's 480x480 are far too slow on a CPU runner; they
    # run on the synthetic clip above.)
    source = probe(clip_path)
    whole = render(
        RenderRequest(
            clip_path, tmp_path / "a.mp4", KeyRendererSpec(style="stylization"), key_interval=10
        )
    )
    assert whole.frames == source.frame_count
    output = probe(tmp_path / "a.mp4")
    assert (output.width, output.height) == (source.width, source.height)
    assert_same_timing(source, output)
