"""Propagation's per-pixel work in torch (the GPU path) gives numpy/OpenCV's results.

Both backends run here on the CPU; where CUDA exists, the same comparisons run on the GPU.
OpenCV interpolates with 1/32-pixel fixed-point weights and torch in float, so images may
differ by a level in rounding and a mask at a pixel that sits on its threshold, no more.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from test_propagate import ListReader, flows_for, moving_sequence, style

from zvstudio.metrics import psnr
from zvstudio.propagate.clip import propagate_clip
from zvstudio.propagate.pixels import NUMPY, TorchPixels, pixels_for
from zvstudio.propagate.segment import (
    PropagationSettings,
    brightness_gain,
    carry_key,
    guide_error,
)
from zvstudio.propagate.synthesis_settings import SynthesisSettings

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def backend(request) -> TorchPixels:
    return TorchPixels(request.param)


def random_flow(rng, height: int, width: int, scale: float) -> np.ndarray:
    """A smooth flow with fractional vectors that also points outside the frame."""
    coarse = rng.normal(0, scale, (4, 4, 2)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def test_warps_agree(backend):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    flow = random_flow(rng, 40, 56, 6.0)
    on = backend.upload
    linear = backend.download(backend.warp(on(image), on(flow)))
    assert linear.dtype == np.uint8 and linear.shape == image.shape
    assert np.abs(linear.astype(int) - NUMPY.warp(image, flow)).max() <= 1
    nearest = backend.download(backend.warp(on(image), on(flow), "nearest"))
    assert np.array_equal(nearest, NUMPY.warp(image, flow, "nearest"))
    mask = rng.random((40, 56)) > 0.5
    warped_mask = backend.download(backend.warp(on(mask), on(flow), "nearest"))
    assert warped_mask.dtype == np.bool_
    assert np.array_equal(warped_mask, NUMPY.warp(mask, flow, "nearest"))
    composed = backend.download(backend.warp(on(flow), on(flow)))
    assert np.allclose(composed, NUMPY.warp(flow, flow), atol=0.05)


def test_consistency_masks_agree(backend):
    rng = np.random.default_rng(1)
    forward = random_flow(rng, 48, 48, 4.0)
    backward = -forward + random_flow(rng, 48, 48, 0.6)  # consistent in places, not everywhere
    mask = backend.download(
        backend.consistency_mask(backend.upload(forward), backend.upload(backward))
    )
    expected = NUMPY.consistency_mask(forward, backward)
    assert 0.1 < expected.mean() < 0.9  # both outcomes occur
    assert (mask != expected).mean() < 0.01


@pytest.mark.parametrize("shape", [(40, 56), (5, 9)])
def test_box_blurs_agree_including_the_borders(backend, shape):
    values = np.random.default_rng(2).random(shape, dtype=np.float32) * 1000
    blurred = backend.download(backend.box_blur(backend.upload(values), 7))
    if min(shape) > 3:  # cv2's mirroring of a map this small has no torch equivalent
        assert np.allclose(blurred, NUMPY.box_blur(values, 7), rtol=1e-4, atol=1e-2)
    assert blurred.shape == shape


def test_guide_error_and_brightness_gain_agree(backend):
    frames, _ = moving_sequence("translate", count=3)
    flow = flows_for_frames(frames, 2, 0)
    on = backend.upload
    expected = guide_error(frames[2], frames[0], flow, 7)
    error = guide_error(on(frames[2]), on(frames[0]), on(flow), 7, pixels=backend)
    assert np.allclose(backend.download(error), expected, rtol=0.02, atol=2.0)
    darker = (frames[2] * 0.7).astype(np.uint8)
    valid = np.ones(flow.shape[:2], bool)
    gain = brightness_gain(on(darker), on(frames[0]), on(flow), on(valid), pixels=backend)
    assert gain == pytest.approx(brightness_gain(darker, frames[0], flow, valid), abs=1e-3)
    assert gain == pytest.approx(0.7 + 0.03, abs=0.02)  # the tolerance shrinks the change


def flows_for_frames(frames, i, j):
    from zvstudio.flow import DISFlow

    return DISFlow("fine").compute(frames[i], frames[j])


def test_carrying_a_key_agrees(backend, tmp_path):
    frames, _ = moving_sequence("rotate")
    flows = flows_for(tmp_path)

    def flow(i, j):
        return flows.get(i, j, frames[i], frames[j])

    settings = PropagationSettings()
    key = style(frames[0])
    expected = dict(carry_key(dict(enumerate(frames)), 0, key, range(1, 9), flow, settings))
    carried = carry_key(
        dict(enumerate(frames)), 0, key, range(1, 9), flow, settings, pixels=backend
    )
    for number, result in carried:
        image = backend.download(result.image)
        assert psnr(image, expected[number].image) > 55, number
        assert (backend.download(result.valid) != expected[number].valid).mean() < 0.01


@pytest.mark.parametrize(
    "settings",
    [
        PropagationSettings(),
        PropagationSettings(blend="histogram"),
        PropagationSettings(poisson=True),
        PropagationSettings(synthesis="patch", patch=SynthesisSettings(levels=1, em_iterations=1)),
    ],
    ids=["soft", "histogram", "poisson", "patch"],
)
def test_a_propagated_clip_agrees(backend, tmp_path, settings):
    frames, _ = moving_sequence("zoom")
    keys = {0: style(frames[0]), 8: style(frames[8])}
    reader = ListReader(frames)
    expected = dict(propagate_clip(reader, keys, flows_for(tmp_path), settings, pixels=NUMPY))
    result = dict(propagate_clip(reader, keys, flows_for(tmp_path), settings, pixels=backend))
    assert sorted(result) == list(range(9))
    for number in range(9):
        assert result[number].dtype == np.uint8
        assert psnr(result[number], expected[number]) > 55, number


def test_the_backend_follows_the_device_setting():
    assert pixels_for("cpu") is pixels_for("mps") is NUMPY
    if not torch.cuda.is_available():
        assert pixels_for("auto") is NUMPY  # torch on the CPU would only be slower
    assert isinstance(pixels_for("cuda:1"), TorchPixels)  # named, not touched until used
    # Segments cached on one device serve the other: the device is not in their key.
    assert repr(PropagationSettings(device="cuda")) == repr(PropagationSettings())
