"""Guided patch synthesis: the CPU scorer, the uniformity term, multi-scale search from a
wrong flow, and its use in propagation where the flow fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_propagate import SIZE, moving_sequence, style

from zvstudio.flow import identity_grid
from zvstudio.metrics import psnr
from zvstudio.propagate.patchmatch import (
    Occupancy,
    PatchMatchSettings,
    PatchScorer,
    patch_distance_reference,
    refine,
)
from zvstudio.propagate.segment import PropagationSettings, carry_key
from zvstudio.propagate.synthesis import (
    SynthesisSettings,
    _upscaled,
    frame_guides,
    key_guides,
    synthesize,
)


def random_problem(pixels: int = 700, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand((7, 21, 26), generator=generator) * 255
    source = torch.rand((7, 19, 23), generator=generator) * 255
    # Coordinates on and near every border, so the clamping is exercised.
    target_yx = torch.stack(
        [
            torch.randint(0, 21, (pixels,), generator=generator),
            torch.randint(0, 26, (pixels,), generator=generator),
        ]
    )
    source_yx = torch.stack(
        [
            torch.randint(0, 19, (pixels,), generator=generator),
            torch.randint(0, 23, (pixels,), generator=generator),
        ]
    )
    return target, source, target_yx, source_yx


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("patch_size", [3, 5])
def test_the_cpu_scorer_equals_the_reference(monkeypatch, keep, patch_size):
    monkeypatch.setattr(PatchScorer, "CHUNK", 128)  # several chunks, one of them partial
    if not keep:
        monkeypatch.setattr(PatchScorer, "KEEP_FLOATS", 0)  # gather target patches per call
    target, source, target_yx, source_yx = random_problem()
    scorer = PatchScorer(target, source, target_yx, patch_size)
    assert not scorer.fused
    for candidate in (source_yx, source_yx.flip(1)):
        expected = patch_distance_reference(target, source, target_yx, candidate, patch_size)
        torch.testing.assert_close(scorer(candidate), expected, rtol=1e-5, atol=1e-3)


def test_uniform_use_costs_the_weight_and_overuse_costs_more():
    size, patch = 20, 5
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    occupancy = Occupancy(size, size, size * size, patch, weight=3500.0)
    occupancy.update(torch.stack([ys, xs]))  # every source patch used once
    inner = torch.stack([ys[4:-4, 4:-4].reshape(-1), xs[4:-4, 4:-4].reshape(-1)])
    torch.testing.assert_close(occupancy.cost(inner), torch.full((inner.shape[1],), 3500.0))
    collapsed = torch.stack([ys * 0 + 10, xs * 0 + 10])  # every pixel uses (10, 10)
    occupancy.update(collapsed)
    # Each of the 400 patches covers (10, 10): 400 uses where even use is 25 (one per
    # patch pixel), so 16 times the cost.
    centre = torch.tensor([[10], [10]])
    assert occupancy.cost(centre).item() == pytest.approx(16 * 3500)


def test_uniformity_spreads_matches_that_the_guides_cannot_tell_apart():
    """On a flat image every patch matches equally: without the uniformity term nothing
    moves a field collapsed onto one source pixel; with it the matches spread out."""
    size = 24
    flat = torch.full((3, size, size), 100.0)
    collapsed = torch.full((2, size, size), size // 2, dtype=torch.long)
    settings = PatchMatchSettings(iterations=4, search_radius=size, converged=-1.0)
    error = torch.zeros(size, size)
    kept, _ = refine(flat, flat, collapsed, error, settings)
    assert torch.equal(kept, collapsed)
    spread, _ = refine(
        flat,
        flat,
        collapsed,
        error,
        settings,
        occupancy=Occupancy(size, size, size * size, 5, weight=3500.0),
    )
    uses = torch.bincount((spread[0] * size + spread[1]).reshape(-1), minlength=size * size)
    assert uses.max() < size * size / 10 and (uses > 0).sum() > size * size / 4


def test_upscaling_a_field_doubles_its_motion():
    coarse_y, coarse_x = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    coarse = torch.stack([coarse_y + 2, coarse_x - 3]).clamp(0, 15)
    fine = _upscaled(coarse, 32, 32)
    ys, xs = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    shift = (fine - torch.stack([ys, xs]))[:, 8:-8, 8:-8]
    assert (shift[0] == 4).all() and (shift[1] == -6).all()


def test_multiscale_synthesis_finds_a_motion_the_flow_missed():
    """The flow claims nothing moved, but frame 6 is frame 0 shifted by (12, -6) px: the
    pyramid finds the true match and the synthesised style is that of the true frame."""
    frames, _ = moving_sequence("translate", count=7)
    key, target = frames[0], frames[6]
    key_style, true_style = style(key), style(target)
    identity = identity_grid(SIZE, SIZE)
    result = synthesize(
        key_style,
        key_guides(key, key_style),
        frame_guides(target, identity, key_style),
        identity,
        np.ones((SIZE, SIZE), bool),
        SynthesisSettings(levels=3, em_iterations=2, patchmatch_iterations=3),
    )
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    inner = (slice(16, -16), slice(16, -16))
    # Frame 6 pixel (y, x) shows frame 0 pixel (y + 6, x - 12).
    correct = (result.field[0] - ys == 6) & (result.field[1] - xs == -12)
    assert correct[inner].mean() > 0.9
    synthesized = np.clip(result.image + 0.5, 0, 255).astype(np.uint8)
    assert psnr(synthesized[inner], true_style[inner]) > 30
    assert psnr(key_style[inner], true_style[inner]) < 20  # the flow's (identity) answer


def test_patch_synthesis_repairs_where_the_flow_fails_and_keeps_the_rest():
    frames, _ = moving_sequence("translate", count=5)
    keys = {0: style(frames[0])}

    def wrong_in_a_square(i, j):
        """The true motion (2, -1) px per frame, except in one square that claims no motion."""
        flow = np.zeros((SIZE, SIZE, 2), np.float32)
        flow[..., 0], flow[..., 1] = -2.0 * (i - j), 1.0 * (i - j)
        flow[40:80, 40:80] = 0
        return flow

    targets = [1, 2, 3, 4]
    plain = dict(carry_key(frames, 0, keys[0], targets, wrong_in_a_square, PropagationSettings()))
    settings = PropagationSettings(synthesis="patch", synthesis_threshold=100.0)
    patched = dict(carry_key(frames, 0, keys[0], targets, wrong_in_a_square, settings))
    square = (slice(44, 76), slice(44, 76))
    truth = style(frames[4])
    assert (
        psnr(patched[4].image[square], truth[square])
        > psnr(plain[4].image[square], truth[square]) + 6
    )
    # Far from the failure (and from the borders, where new content enters), the flow's
    # warp is kept untouched.
    far = (slice(10, 30), slice(96, 120))
    assert np.array_equal(patched[4].image[far], plain[4].image[far])
    assert patched[4].error[square].mean() < plain[4].error[square].mean()


def test_synthesis_refuses_frames_of_another_size():
    key = np.zeros((32, 32, 3), np.uint8)
    other = np.zeros((30, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="same size"):
        synthesize(
            key,
            key_guides(key, key),
            frame_guides(other, identity_grid(30, 32), other),
            identity_grid(30, 32),
            np.ones((30, 32), bool),
        )
