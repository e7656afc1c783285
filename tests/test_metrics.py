"""Metrics: known values, and numerical agreement with the benchmark referee when it is present."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import SHARED_CLIPS, needs_shared_clips

from zvstudio.metrics import (
    consistent_pixels,
    psnr,
    sequence_warp_error,
    ssim,
    warp_error,
    warp_error_dis,
)

REFEREE = Path(__file__).resolve().parents[2] / "shared" / "tools" / "eval_propagation.py"


@pytest.fixture(scope="module")
def referee():
    if not REFEREE.is_file():
        pytest.skip(f"{REFEREE} is absent")
    spec = importlib.util.spec_from_file_location("eval_propagation", REFEREE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def textured(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth random RGB texture (something optical flow can lock on to)."""
    noise = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 2.0)


def moving_clip(n: int = 6, step: float = 1.5, seed: int = 0) -> list[np.ndarray]:
    """n frames of a texture translated by `step` px per frame, with a little noise."""
    big = textured(140, 180, seed)
    rng = np.random.default_rng(seed + 1)
    frames = []
    for t in range(n):
        m = np.float32([[1, 0, -20 + step * t], [0, 1, -10 + 0.5 * step * t]])
        frame = cv2.warpAffine(big, m, (128, 96), flags=cv2.INTER_LINEAR)
        frames.append(np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8))
    return frames


def bgr(frames: list[np.ndarray]) -> list[np.ndarray]:
    return [np.ascontiguousarray(f[..., ::-1]) for f in frames]


def test_psnr_known_values():
    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 1) == pytest.approx(20 * math.log10(255))
    assert psnr(a, a + 1, peak=1.0) == pytest.approx(0.0)


def test_ssim_of_identical_images_is_one():
    x = textured()
    assert ssim(x, x) == pytest.approx(1.0)
    assert ssim(x, np.roll(x, 7, axis=1)) < 0.5


@pytest.mark.parametrize("seed", [0, 1])
def test_psnr_and_ssim_match_the_referee(referee, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (37, 53, 3), np.uint8)
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255).astype(np.uint8)
    x, y = textured(seed=seed), textured(seed=seed + 10)
    for p, q in ((a, b), (x, y), (x, np.roll(x, 3, axis=0))):
        # the referee sees BGR; both metrics are symmetric in the channels
        assert psnr(p, q) == pytest.approx(referee.psnr(p[..., ::-1], q[..., ::-1]), rel=1e-12)
        assert ssim(p, q) == pytest.approx(
            referee.ssim(p[..., ::-1].copy(), q[..., ::-1].copy()), rel=1e-12
        )


def test_warp_error_is_zero_for_content_that_follows_the_flow():
    big = textured(100, 140)
    frames = [np.ascontiguousarray(big[:96, t * 2 : t * 2 + 128]) for t in range(4)]
    # content moves 2 px left per frame: pixel x of frame t is pixel x + 2 of frame t-1
    flows = [np.full((96, 128, 2), (2.0, 0.0), np.float32)] * 3
    assert warp_error(frames, flows, None) == pytest.approx(0.0, abs=1e-12)
    masks = [np.ones((96, 128), bool)] * 3
    assert warp_error(frames, flows, masks) > 0  # the replicated border column now counts


def test_warp_error_skips_transitions_without_valid_pixels():
    frames = [textured(seed=s) for s in range(3)]
    flows = [np.zeros((96, 128, 2), np.float32)] * 2
    masks = [np.zeros((96, 128), bool), np.ones((96, 128), bool)]
    expected = np.mean(((frames[2] / 255.0 - frames[1] / 255.0) ** 2).mean(axis=2))
    assert warp_error(frames, flows, masks) == pytest.approx(expected, rel=1e-5)


def test_consistency_check_rejects_occlusions():
    f = np.zeros((20, 30, 2), np.float32)
    b = np.zeros_like(f)
    b[5:10, 5:10] = 3.0  # the backward flow disagrees there
    valid = consistent_pixels(f, b)
    assert not valid[5:10, 5:10].any()
    assert valid.sum() == 20 * 30 - 25


def test_sequence_warp_error_matches_the_referee(referee, tmp_path):
    inputs = moving_clip()
    rng = np.random.default_rng(3)
    outputs = [np.clip(f + rng.normal(0, 6, f.shape), 0, 255).astype(np.uint8) for f in inputs]
    segment = referee.Segment("synthetic", 0, bgr(inputs), 25.0, str(tmp_path))
    expected = float(np.nanmean(referee.warp_errors(segment, bgr(outputs))))
    assert sequence_warp_error(outputs, inputs) == pytest.approx(expected, rel=1e-6)
    own = float(np.nanmean(referee.warp_errors(segment, bgr(inputs))))
    assert warp_error_dis(inputs) == pytest.approx(own, rel=1e-6)
    assert warp_error_dis(inputs) < sequence_warp_error(outputs, inputs)


@needs_shared_clips
def test_sequence_warp_error_matches_the_referee_on_real_footage(referee, tmp_path):
    frames = []
    with av.open(str(SHARED_CLIPS[0])) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == 5:
                break
    h, w = referee.target_size(*frames[0].shape[:2], 128)
    frames = [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames]
    styled = [cv2.stylization(f, sigma_s=60, sigma_r=0.45) for f in frames]
    segment = referee.Segment("clip", 0, bgr(frames), 25.0, str(tmp_path))
    expected = float(np.nanmean(referee.warp_errors(segment, bgr(styled))))
    assert sequence_warp_error(styled, frames) == pytest.approx(expected, rel=1e-6)
