"""Temporal-aware blending (weights, selection, monotone masks, histogram blend) and the DCT
screened-Poisson solver."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import sparse
from scipy.sparse.linalg import spsolve

from zvstudio.propagate import (
    divergence,
    gradients,
    histogram_preserving_blend,
    monotone_masks,
    poisson_blend,
    screened_poisson,
    selection_mask,
    temporal_weight,
)

REFEREE = Path(__file__).resolve().parents[2] / "shared" / "tools" / "eval_propagation.py"


def textured(h: int = 64, w: int = 80, seed: int = 0, lo: int = 40, hi: int = 215) -> np.ndarray:
    """Smooth random RGB texture with moderate colours (the blend stays inside the RGB gamut)."""
    noise = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
    smooth = cv2.GaussianBlur(noise.astype(np.float32), (0, 0), 1.5)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return np.rint(lo + (hi - lo) * smooth).astype(np.uint8)


def lab_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std in 8-bit Lab units, measured without 8-bit quantisation."""
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).astype(np.float64)
    lab[..., 0] *= 255.0 / 100.0
    return lab.mean(axis=(0, 1)), lab.std(axis=(0, 1))


# --- weights and selection ---------------------------------------------------------------------


def test_temporal_weight():
    assert temporal_weight(10, 10, 20) == 1.0
    assert temporal_weight(20, 10, 20) == 0.0
    assert temporal_weight(15, 10, 20) == 0.5
    assert temporal_weight(11, 10, 20) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        temporal_weight(21, 10, 20)
    with pytest.raises(ValueError):
        temporal_weight(5, 5, 5)


def test_selection_prefers_the_nearer_key_when_errors_are_equal():
    errors = np.full((8, 8), 3.0)
    next_to_a = selection_mask(errors, errors, temporal_weight(1, 0, 10))
    next_to_b = selection_mask(errors, errors, temporal_weight(9, 0, 10))
    assert not next_to_a.any()  # forward result
    assert next_to_b.all()  # backward result
    assert selection_mask(errors, errors, 0.5).all()  # ties go to b, like the referee
    # on the keys the key's own side wins whatever the errors
    assert not selection_mask(errors * 100, errors, 1.0).any()
    assert selection_mask(errors, errors * 100, 0.0).all()


def test_selection_weighs_errors_by_distance():
    e_a = np.array([[1.0, 5.0, 20.0]])
    e_b = np.ones((1, 3))
    # next to key a (weight_a 0.9): b wins only where A's error is more than 9 times B's
    assert selection_mask(e_a, e_b, 0.9).tolist() == [[False, False, True]]


@pytest.mark.parametrize("t", range(1, 10))
def test_selection_is_the_referee_rule(t):
    """The referee's w = distance from key a (its 'w_a'): B where w*E_fwd >= (1-w)*E_bwd."""
    rng = np.random.default_rng(t)
    e_a, e_b = rng.random((16, 16)), rng.random((16, 16))
    w_referee = t / 10
    expected = w_referee * e_a >= (1 - w_referee) * e_b
    assert (selection_mask(e_a, e_b, temporal_weight(t, 0, 10)) == expected).all()


# --- monotone masks ----------------------------------------------------------------------------


def square(h: int, w: int, y: int, x: int, size: int = 6) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y : y + size, x : x + size] = True
    return m


def test_a_switched_pixel_stays_switched():
    on = square(20, 30, 5, 5)
    off = np.zeros_like(on)
    still = [np.zeros((20, 30, 2), np.float32)] * 3
    out = monotone_masks([off, on, off, off], still)
    assert not out[0].any()
    for m in out[1:]:
        assert (m == on).all()


def test_the_mask_moves_with_the_content():
    # content moves 2 px right per frame: pixel x of frame t was at x - 2 in frame t-1
    flow = np.zeros((20, 30, 2), np.float32)
    flow[..., 0] = -2.0
    first = square(20, 30, 5, 4)
    later = square(20, 30, 0, 24, size=2)  # a new switch in frame 3 is OR-ed in
    masks = [first, np.zeros_like(first), np.zeros_like(first), later]
    out = monotone_masks(masks, [flow] * 3)
    for t in range(3):
        assert (out[t] == square(20, 30, 5, 4 + 2 * t)).all()
    assert (out[3] == (square(20, 30, 5, 10) | later)).all()


def test_monotone_masks_checks_lengths():
    with pytest.raises(ValueError):
        monotone_masks([np.zeros((4, 4), bool)] * 3, [np.zeros((4, 4, 2), np.float32)])


# --- histogram-preserving blend ----------------------------------------------------------------


def test_histogram_blend_has_the_statistics_of_the_selection():
    a, b = textured(seed=1), textured(seed=2, lo=70, hi=190)
    mask = np.zeros(a.shape[:2], bool)
    mask[:, 50:] = True
    composite = np.where(mask[..., None], b, a)
    for weight_a in (0.2, 0.5, 0.8):
        mean, std = lab_stats(histogram_preserving_blend(a, b, mask, weight_a))
        mean_m, std_m = lab_stats(composite)
        np.testing.assert_allclose(mean, mean_m, atol=1.0)
        np.testing.assert_allclose(std, std_m, atol=1.0)


def test_histogram_blend_of_identical_images_is_the_image():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (48, 64, 3), np.uint8)  # the whole gamut, saturated colours too
    out = histogram_preserving_blend(x, x, rng.random((48, 64)) > 0.5, 0.3)
    assert np.abs(out.astype(int) - x).max() <= 1


def test_histogram_blend_is_not_a_plain_average():
    a, b = textured(seed=3), textured(seed=4)  # unrelated textures: averaging halves contrast
    mask = np.zeros(a.shape[:2], bool)
    out = histogram_preserving_blend(a, b, mask, 0.5)
    average = ((a.astype(np.float32) + b) / 2).round().astype(np.uint8)
    std_a, std_out, std_avg = lab_stats(a)[1][0], lab_stats(out)[1][0], lab_stats(average)[1][0]
    assert std_out == pytest.approx(std_a, abs=1.0)  # keeps the contrast of M (= A here)
    assert std_avg < 0.8 * std_a
    assert np.abs(out.astype(int) - average).mean() > 5


def test_histogram_blend_of_flat_images():
    grey, texture = np.full((32, 48, 3), 128, np.uint8), textured(32, 48)
    # M = the flat image: its zero spread wins, whatever the texture does; no NaN anywhere
    out = histogram_preserving_blend(grey, texture, np.zeros((32, 48), bool), 0.5)
    assert np.abs(out.astype(int) - grey).max() <= 1
    out = histogram_preserving_blend(grey, grey, np.ones((32, 48), bool), 0.5)
    assert np.abs(out.astype(int) - grey).max() <= 1


def test_histogram_blend_soft_mask():
    a, b = textured(seed=5), textured(seed=6)
    hard = np.zeros(a.shape[:2], bool)
    hard[20:40] = True
    assert (
        histogram_preserving_blend(a, b, hard.astype(np.float32), 0.4)
        == histogram_preserving_blend(a, b, hard, 0.4)
    ).all()
    half = histogram_preserving_blend(a, b, np.full(a.shape[:2], 0.5, np.float32), 0.4)
    assert half.shape == a.shape and half.dtype == np.uint8


def test_histogram_blend_agrees_with_the_referee():
    """Same operation as the referee's 8-bit-Lab version, up to that version's quantisation."""
    if not REFEREE.is_file():
        pytest.skip(f"{REFEREE} is absent")
    spec = importlib.util.spec_from_file_location("eval_propagation", REFEREE)
    referee = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(referee)
    a, b = textured(seed=7), textured(seed=8)
    mask = np.random.default_rng(0).random(a.shape[:2]) > 0.7
    composite = np.where(mask[..., None], b, a)
    ours = histogram_preserving_blend(a, b, mask, 0.7)
    theirs = referee.histogram_blend(
        *(np.ascontiguousarray(x[..., ::-1]) for x in (a, b, composite)), 0.7, 0.3
    )[..., ::-1]
    assert np.abs(ours.astype(int) - theirs).mean() < 1.0


# --- screened Poisson ---------------------------------------------------------------------------


def forward_difference(n: int) -> sparse.csr_matrix:
    """n x n forward difference with a zero last row (Neumann)."""
    d = sparse.lil_matrix((n, n))
    for i in range(n - 1):
        d[i, i], d[i, i + 1] = -1.0, 1.0
    return d.tocsr()


def test_divergence_is_the_negative_adjoint_of_the_gradient():
    rng = np.random.default_rng(0)
    u, gx, gy = rng.normal(size=(3, 9, 12))
    ux, uy = gradients(u)
    gx[:, -1] = 0  # components the gradient never produces
    gy[-1] = 0
    assert np.sum(ux * gx + uy * gy) == pytest.approx(-np.sum(u * divergence(gx, gy)))


def test_gradients_of_the_data_give_back_the_data():
    x = np.random.default_rng(1).normal(size=(12, 9, 3)) * 50
    gx, gy = gradients(x)
    np.testing.assert_allclose(screened_poisson(x, gx, gy, 1e-9), x, atol=1e-8)


@pytest.mark.parametrize("screen", [0.16, (0.16, 4.0, 1e-3)])
def test_dct_solve_equals_a_direct_sparse_solve(screen):
    h, w = 12, 9
    rng = np.random.default_rng(2)
    data, gx, gy = rng.normal(size=(3, h, w, 3))
    got = screened_poisson(data, gx, gy, screen)
    dx = sparse.kron(sparse.identity(h), forward_difference(w))
    dy = sparse.kron(forward_difference(h), sparse.identity(w))
    for c, lam in enumerate(np.broadcast_to(screen, (3,))):
        # normal equations of lam |u - d|^2 + |Dx u - gx|^2 + |Dy u - gy|^2
        a = lam * sparse.identity(h * w) + dx.T @ dx + dy.T @ dy
        rhs = lam * data[..., c].ravel() + dx.T @ gx[..., c].ravel() + dy.T @ gy[..., c].ravel()
        expected = spsolve(a.tocsc(), rhs).reshape(h, w)
        np.testing.assert_allclose(got[..., c], expected, atol=1e-8)


def test_float32_solve_agrees_with_float64():
    rng = np.random.default_rng(5)
    data, gx, gy = rng.normal(size=(3, 40, 30, 3)) * 50
    u64 = screened_poisson(data, gx, gy, (0.16, 4.0, 4.0))
    u32 = screened_poisson(data.astype(np.float32), gx, gy, (0.16, 4.0, 4.0))
    assert u32.dtype == np.float32
    np.testing.assert_allclose(u32, u64, atol=1e-3)


def test_a_large_screen_returns_the_data():
    rng = np.random.default_rng(3)
    data, gx, gy = rng.normal(size=(3, 10, 14))
    np.testing.assert_allclose(screened_poisson(data, gx, gy, 1e9), data, atol=1e-7)


def test_constant_offsets():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(10, 14))
    gx, gy = gradients(x)
    data = rng.normal(size=(10, 14)) + 7.0
    # the solution is linear in the data: an offset of the data offsets the solution
    np.testing.assert_allclose(
        screened_poisson(data + 3.0, gx, gy, 0.5), screened_poisson(data, gx, gy, 0.5) + 3.0
    )
    # without screening the gradients fix u up to a constant: the data's mean
    u = screened_poisson(data, gx, gy, 0.0)
    np.testing.assert_allclose(u, x - x.mean() + data.mean(), atol=1e-10)
    for lam in (0.0, 0.1, 10.0):
        assert screened_poisson(data, gx, gy, lam).mean() == pytest.approx(data.mean())


def test_poisson_blend():
    a, b = textured(seed=9), textured(seed=10)
    assert np.abs(poisson_blend(a, a).astype(int) - a).max() <= 1
    # gradients from b everywhere is the same as b as the single gradient source
    everywhere = np.ones(a.shape[:2], bool)
    assert (poisson_blend(a, a, source_b=b, mask=everywhere) == poisson_blend(a, b)).all()
    # L follows the gradient source closely (weight 2.5), a/b stay near the data (0.5)
    flat = np.full_like(a, 128)
    out = poisson_blend(flat, a)
    lab_out, lab_a = (cv2.cvtColor(x, cv2.COLOR_RGB2LAB).astype(float) for x in (out, a))
    corr = [np.corrcoef(lab_out[..., c].ravel(), lab_a[..., c].ravel())[0, 1] for c in range(3)]
    assert corr[0] > 0.9
    assert lab_out[..., 0].std() > 2 * lab_out[..., 1].std()
    with pytest.raises(ValueError):
        poisson_blend(a, b, source_b=b)
