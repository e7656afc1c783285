"""Render status: which keys and segments are in the cache, as the editor shows them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import make_clip

from zvstudio.engine.render import render
from zvstudio.engine.request import KeyRendererSpec, RenderRequest
from zvstudio.engine.status import render_status
from zvstudio.keyrender import KeyParams
from zvstudio.media import ExportSettings
from zvstudio.propagate.segment import PropagationSettings


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path, _, _ = make_clip(tmp_path_factory.mktemp("clip") / "c.mp4", count=14, width=96, height=64)
    return path


def request(
    clip: Path, output: Path, style="cartoon", painted=(), params=(), **changes
) -> RenderRequest:
    return RenderRequest(
        clip,
        output,
        KeyRendererSpec(kind="stylize", style=style, params=params, painted=tuple(painted)),
        ExportSettings(format="png"),
        key_frames=(0, 5, 10),
        flow_preset="ultrafast",
        **changes,
    )


def write_painting(path: Path, colour: tuple[int, int, int]) -> Path:
    cv2.imwrite(str(path), np.full((64, 96, 3), colour, np.uint8))
    return path


def test_before_any_render_every_key_is_pending_and_nothing_is_cached(clip, tmp_path):
    status = render_status(request(clip, tmp_path / "out"))
    assert status.keys == {0: "pending", 5: "pending", 10: "pending"}
    assert [(s.first, s.last, s.keys) for s in status.segments] == [
        (0, 4, (0, 5)),
        (5, 9, (5, 10)),
        (10, 13, (10,)),
    ]
    assert not any(s.cached for s in status.segments) and not status.complete
    assert status.rendered_frame(3) is None


def test_after_a_render_everything_is_cached_and_frames_are_the_output(clip, tmp_path):
    render(request(clip, tmp_path / "out"))
    status = render_status(request(clip, tmp_path / "other"))
    assert status.keys == {0: "rendered", 5: "rendered", 10: "rendered"}
    assert status.complete
    for number in (0, 3, 5, 13):
        written = cv2.imread(str(tmp_path / "out" / f"frame_{number:06d}.png"))
        assert np.array_equal(status.rendered_frame(number), written[..., ::-1])


def test_a_global_change_makes_every_key_stale(clip, tmp_path):
    render(request(clip, tmp_path / "out"))
    status = render_status(request(clip, tmp_path / "out", style="pencil"))
    assert set(status.keys.values()) == {"stale"}
    assert not any(s.cached for s in status.segments)


def test_a_style_parameter_makes_every_key_stale_and_a_propagation_setting_no_key(clip, tmp_path):
    render(request(clip, tmp_path / "out"))
    # The default value given explicitly is the same render.
    assert render_status(request(clip, tmp_path / "o", params=(("colors", 8),))).complete
    status = render_status(request(clip, tmp_path / "o", params=(("colors", 4),)))
    assert set(status.keys.values()) == {"stale"}
    propagation = PropagationSettings(poisson=True)
    status = render_status(request(clip, tmp_path / "o", propagation=propagation))
    assert set(status.keys.values()) == {"rendered"}
    assert not any(s.cached for s in status.segments[:2])  # the blended ones


def test_one_painted_key_makes_only_it_and_its_segments_stale(clip, tmp_path):
    red = write_painting(tmp_path / "red.png", (0, 0, 255))
    render(request(clip, tmp_path / "out", painted=[(5, red)]))
    blue = write_painting(tmp_path / "blue.png", (255, 0, 0))
    status = render_status(request(clip, tmp_path / "out", painted=[(5, blue)]))
    assert status.keys == {0: "rendered", 5: "stale", 10: "rendered"}
    assert [s.cached for s in status.segments] == [False, False, True]
    # The painting is the key's result in a stylized render.
    result = render(request(clip, tmp_path / "again", painted=[(5, blue)]))
    assert (result.rendered_keys, result.reused_keys) == (1, 2)
    key = cv2.imread(str(tmp_path / "again" / "frame_000005.png"))
    assert np.abs(key.astype(int) - (255, 0, 0)).max() <= 2


def test_per_key_params_that_a_stylizer_ignores_change_nothing(clip, tmp_path):
    render(request(clip, tmp_path / "out"))
    params = ((5, KeyParams(prompt="a cat")),)
    assert render_status(request(clip, tmp_path / "o", key_params=params)).complete
