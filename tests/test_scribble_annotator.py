"""The built-in scribble annotator (XDoG strokes, no weights) and its ControlNet lookup."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from zvstudio.diffusion import annotators
from zvstudio.diffusion.controlnet import controlnet_annotator, resolve_controlnet
from zvstudio.diffusion.library import ModelInfo


def drawing(height: int, width: int, *, ink: int = 40, paper: int = 220) -> np.ndarray:
    """A dark circle outline and a dark vertical stroke on light paper, sized to the frame."""
    image = np.full((height, width, 3), paper, np.uint8)
    unit = min(height, width) / 128
    centre = (int(width * 0.35), height // 2)
    cv2.circle(image, centre, int(30 * unit), (ink, ink, ink), max(1, int(2 * unit)))
    x = int(width * 0.8)
    image[int(height * 0.2) : int(height * 0.8), x : x + max(1, int(2 * unit))] = ink
    return image


def test_dark_strokes_become_white_lines_on_black():
    frame = drawing(128, 160)
    image = annotators.annotate("scribble", frame)
    assert image.shape == frame.shape and image.dtype == np.uint8
    assert set(np.unique(image)) == {0, 255}
    ink = frame[..., 0] < 128
    # Every ink pixel is marked and nothing far from the ink is.
    assert image[..., 0][ink].min() == 255
    near_ink = cv2.dilate(ink.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert image[..., 0][~near_ink].max() == 0


def test_flat_frames_draw_nothing_and_light_strokes_are_not_strokes():
    assert not annotators.scribble(np.full((64, 64, 3), 128, np.uint8)).any()
    # Only what is darker than its surroundings is a stroke: a light line on dark paper is not
    # (the dark paper beside it may be).
    frame = drawing(128, 128, ink=220, paper=40)
    assert not annotators.scribble(frame)[frame[..., 0] > 128].any()


def test_a_stroke_must_be_darker_in_every_channel():
    frame = drawing(128, 128)
    frame[..., 2] = 220  # the ink is blue: as bright as the paper in the blue channel
    assert not annotators.scribble(frame).any()


def test_the_threshold_is_how_much_darker_a_stroke_must_be():
    faint = drawing(128, 128, ink=200, paper=220)
    assert annotators.scribble(faint, threshold=2).any()
    assert not annotators.scribble(faint, threshold=30).any()


def test_the_strokes_scale_with_the_frame():
    # The blur widths follow the frame's size, so a frame twice as large gives (almost) the
    # same strokes, twice as large.
    small = annotators.scribble(drawing(128, 160))[..., 0] > 0
    large = annotators.scribble(drawing(256, 320))[..., 0] > 0
    shrunk = cv2.resize(large.astype(np.uint8), (160, 128), interpolation=cv2.INTER_AREA) > 0
    agreement = (small == shrunk).mean()
    assert agreement > 0.98
    # With fixed blur widths the large frame's strokes would be relatively thinner.
    assert abs(int(large.sum()) - 4 * int(small.sum())) < 0.25 * large.sum()


def test_scribble_is_built_in_and_picks_a_scribble_controlnet(tmp_path):
    assert annotators.available_annotators()[:2] == ["canny", "scribble"]
    assert "scribble" not in annotators.UNAVAILABLE_ANNOTATORS
    assert controlnet_annotator("scribble:0.6") == "scribble"
    paths = [tmp_path / f"control_v11p_sd15_{kind}.safetensors" for kind in ("canny", "scribble")]
    models = [ModelInfo(p, p.stem, "controlnet", "sd1", "safetensors", 1) for p in paths]
    choice = resolve_controlnet("scribble:0.6", models)
    assert choice.path == paths[1] and choice.scale == pytest.approx(0.6)
