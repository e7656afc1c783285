"""Optical flow: estimators, flow arithmetic, occlusion masks and the flow cache."""

from __future__ import annotations

import errno
import os
import re
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from zvstudio.errors import ZvsError
from zvstudio.flow import (
    DISFlow,
    FlowCache,
    FlowEstimator,
    RAFTFlow,
    compose,
    consistency_mask,
    create_flow_estimator,
    dilate_mask,
    feather,
    identity_grid,
    occlusion_mask,
    resize_flow,
    warp,
)
from zvstudio.flow import raft as raft_module
from zvstudio.hashing import text_hash

WIDTH, HEIGHT = 160, 128
SHIFT = (3.0, -2.0)


def texture(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> np.ndarray:
    """Smooth random colour texture: upscaled noise, so flow is well defined everywhere."""
    noise = np.random.default_rng(seed).random((height // 4 + 4, width // 4 + 4, 3))
    big = cv2.resize(noise.astype(np.float32), (width + 16, height + 16), cv2.INTER_CUBIC)
    big = cv2.GaussianBlur(big[8 : 8 + height, 8 : 8 + width], (0, 0), 1.0)
    big = (big - big.min()) / (big.max() - big.min())
    return (big * 255).round().astype(np.uint8)


def translate(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """The image moved by (dx, dy): pixel x of `image` lands at x + (dx, dy)."""
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    size = (image.shape[1], image.shape[0])
    return cv2.warpAffine(
        image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )


def constant_flow(dx: float, dy: float, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    flow = np.empty((height, width, 2), np.float32)
    flow[...] = (dx, dy)
    return flow


def rotation_flow(degrees: float, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Flow of a rotation about the frame centre: F(x) = R(x - c) + c - x."""
    grid = identity_grid(height, width).astype(np.float64)
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return ((grid - centre) @ rotation.T + centre - grid).astype(np.float32)


def interior(array: np.ndarray, margin: int = 16) -> np.ndarray:
    return array[margin:-margin, margin:-margin]


def median_vector(flow: np.ndarray) -> np.ndarray:
    return np.median(interior(flow).reshape(-1, 2), axis=0)


@pytest.fixture(scope="module")
def shifted_pair() -> tuple[np.ndarray, np.ndarray]:
    source = texture()
    return source, translate(source, *SHIFT)


# --- DIS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["ultrafast", "fast", "medium"])
def test_dis_recovers_a_known_translation(shifted_pair, preset):
    source, target = shifted_pair
    estimator = DISFlow(preset)
    forward = estimator.compute(source, target)
    backward = estimator.compute(target, source)
    assert forward.shape == (HEIGHT, WIDTH, 2) and forward.dtype == np.float32
    np.testing.assert_allclose(median_vector(forward), SHIFT, atol=0.25)
    np.testing.assert_allclose(-median_vector(backward), SHIFT, atol=0.25)
    pair = estimator.compute_pair(source, target)
    np.testing.assert_allclose(pair[0], forward, atol=1e-5)
    np.testing.assert_allclose(pair[1], backward, atol=1e-5)


def test_dis_consistency_is_true_inside_and_false_where_pixels_leave(shifted_pair):
    source, target = shifted_pair
    forward, backward = DISFlow("medium").compute_pair(source, target)
    mask = consistency_mask(forward, backward)
    assert mask.dtype == np.bool_ and mask.shape == (HEIGHT, WIDTH)
    assert interior(mask).mean() > 0.95
    # dx = +3 pushes the last columns out on the right, dy = -2 the top rows out at the top.
    assert not mask[:, -2:].any()
    assert not mask[:1, :].any()
    assert np.array_equal(occlusion_mask(forward, backward), ~mask)


def test_dis_rejects_bad_presets_and_frames():
    with pytest.raises(ZvsError, match="ultrafast"):
        DISFlow("slowest")
    frame = texture()
    with pytest.raises(ValueError):
        DISFlow().compute(frame, frame[:64])
    with pytest.raises(ValueError):
        DISFlow().compute(frame.astype(np.float32), frame.astype(np.float32))


def test_dis_settings_key_names_the_preset():
    assert DISFlow("fast").settings_key() != DISFlow("medium").settings_key()
    assert DISFlow("fast").settings_key() == DISFlow("fast").settings_key()
    assert DISFlow().name == "dis"


# --- warp --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [SHIFT, (2.5, 1.25)])
def test_warp_with_the_true_flow_undoes_a_translation(shift):
    source = texture()
    target = translate(source, *shift)
    aligned = warp(target, constant_flow(*shift))
    assert aligned.dtype == np.uint8 and aligned.shape == source.shape
    error = np.abs(interior(aligned).astype(int) - interior(source).astype(int)).mean()
    # A fractional shift is interpolated twice (translate, then warp), which blurs a little.
    assert error < (0.5 if float(shift[0]).is_integer() else 4)
    # Without the warp the frames differ a lot: the check above is not vacuous.
    assert np.abs(interior(target).astype(int) - interior(source).astype(int)).mean() > 20


def test_warp_replicates_the_border_instead_of_padding_with_black():
    white = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    for flow in (constant_flow(500, 300), constant_flow(-40.5, -7.25), rotation_flow(30)):
        for interpolation in ("nearest", "linear", "cubic"):
            assert (warp(white, flow, interpolation) == 255).all()
    ramp = np.tile(np.arange(WIDTH, dtype=np.float32), (HEIGHT, 1))
    out = warp(ramp, constant_flow(50, 0))
    assert out[0, -1] == WIDTH - 1  # samples beyond the right edge take the edge value


def test_warp_nearest_and_linear_differ_on_fractional_shifts():
    image = texture()
    flow = constant_flow(0.5, 0.5)
    nearest, linear = warp(image, flow, "nearest"), warp(image, flow, "linear")
    assert not np.array_equal(nearest, linear)
    # Nearest picks existing pixel values; linear averages the 4 neighbours.
    expected = image[:-1, :-1].astype(np.float32) + image[1:, 1:] + image[:-1, 1:] + image[1:, :-1]
    assert np.abs(linear[:-1, :-1] - expected / 4).max() <= 1.0
    with pytest.raises(ValueError):
        warp(image, flow, "bicubic-ish")


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((HEIGHT, WIDTH), np.uint8),
        np.zeros((HEIGHT, WIDTH, 1), np.uint8),
        np.zeros((HEIGHT, WIDTH, 2), np.float32),
        np.zeros((HEIGHT, WIDTH, 3), np.uint16),
        np.zeros((HEIGHT, WIDTH, 6), np.float32),
        np.zeros((HEIGHT, WIDTH), bool),
    ],
    ids=["grey", "grey1", "flow", "rgb16", "six", "mask"],
)
def test_warp_keeps_shape_and_dtype(image):
    image = image.copy()
    image.reshape(-1)[::7] = 1
    out = warp(image, constant_flow(1, 1), "nearest")
    assert out.shape == image.shape and out.dtype == image.dtype
    np.testing.assert_array_equal(out[:-1, :-1], image[1:, 1:])


def test_warp_rejects_mismatched_flow():
    with pytest.raises(ValueError):
        warp(texture(), constant_flow(0, 0, 64, 64))


# --- compose -----------------------------------------------------------------------------------


def test_compose_of_constant_flows_is_their_sum():
    composed = compose(constant_flow(3.5, -1.0), constant_flow(-1.25, 4.0))
    np.testing.assert_allclose(composed, constant_flow(2.25, 3.0), atol=1e-5)


def test_compose_with_the_inverse_is_zero():
    forward, backward = rotation_flow(4), rotation_flow(-4)
    assert np.abs(interior(forward)).max() > 3  # a real motion
    assert np.abs(interior(compose(forward, backward))).max() < 0.05


def test_compose_two_rotations_gives_the_summed_rotation():
    composed = compose(rotation_flow(2), rotation_flow(3))
    expected = rotation_flow(5)
    assert np.abs(interior(composed) - interior(expected)).max() < 0.05
    # Adding the flows pointwise (the naive mistake) is measurably wrong.
    assert np.abs(interior(rotation_flow(2) + rotation_flow(3)) - interior(expected)).max() > 0.05


def test_compose_samples_the_second_flow_where_the_first_lands():
    # F_bc moves column 100 of b by +10 only; F_ab maps column 90 of a to column 100 of b.
    flow_bc = constant_flow(0, 0)
    flow_bc[:, 100] = (10, 0)
    composed = compose(constant_flow(10, 0), flow_bc)
    assert np.allclose(composed[:, 90], (20, 0))
    assert np.allclose(composed[:, 100], (10, 0))


# --- consistency ---------------------------------------------------------------------------------


def expected_inside(dx: float, dy: float) -> np.ndarray:
    grid = identity_grid(HEIGHT, WIDTH)
    x, y = grid[..., 0] + dx, grid[..., 1] + dy
    return (x >= 0) & (x <= WIDTH - 1) & (y >= 0) & (y <= HEIGHT - 1)


def test_exact_translation_flows_are_consistent_wherever_they_stay_inside():
    mask = consistency_mask(constant_flow(*SHIFT), constant_flow(-SHIFT[0], -SHIFT[1]))
    np.testing.assert_array_equal(mask, expected_inside(*SHIFT))
    assert mask[:, -3:].sum() == 0 and mask[:2].sum() == 0 and mask[2:, :-3].all()


def test_an_inconsistent_block_is_flagged():
    forward = constant_flow(*SHIFT)
    forward[40:60, 50:70] = (10, 10)  # disagrees with the backward flow
    mask = consistency_mask(forward, constant_flow(-SHIFT[0], -SHIFT[1]))
    expected = expected_inside(*SHIFT)
    expected[40:60, 50:70] = False
    np.testing.assert_array_equal(mask, expected)


def test_consistency_tolerance_grows_with_the_motion():
    # |F_ab + F_ba| = 0.6 px: inconsistent for small motion, consistent for 20 px of motion
    # (0.01 * 40 + 0.5 = 0.9 px of tolerance), as in METHOD.md 1.3.
    small = consistency_mask(constant_flow(1, 0), constant_flow(-0.4, 0))
    large = consistency_mask(constant_flow(20, 0), constant_flow(-19.4, 0))
    assert not small[:, :100].any()
    assert large[:, : WIDTH - 21].all()


# --- small helpers -----------------------------------------------------------------------------


def test_identity_grid_holds_pixel_coordinates():
    grid = identity_grid(3, 4)
    assert grid.shape == (3, 4, 2) and grid.dtype == np.float32
    assert tuple(grid[2, 1]) == (1.0, 2.0) and tuple(grid[0, 3]) == (3.0, 0.0)
    grid[0, 0] = (9, 9)  # a private copy: the cached grid warps rely on is untouched
    assert tuple(identity_grid(3, 4)[0, 0]) == (0.0, 0.0)


def test_resize_flow_scales_the_vectors():
    flow = constant_flow(2.0, -1.0, 50, 100)
    up = resize_flow(flow, (200, 100))
    assert up.shape == (100, 200, 2) and up.dtype == np.float32
    np.testing.assert_allclose(up, constant_flow(4.0, -2.0, 100, 200), atol=1e-5)
    down = resize_flow(flow, (50, 50))
    np.testing.assert_allclose(down, constant_flow(1.0, -1.0, 50, 50), atol=1e-5)


def test_dilate_and_feather():
    mask = np.zeros((21, 21), bool)
    mask[10, 10] = True
    grown = dilate_mask(mask, 2)
    assert grown.dtype == np.bool_
    assert grown[10, 8] and grown[12, 10] and not grown[10, 13] and not grown[12, 12]
    assert np.array_equal(dilate_mask(mask, 0), mask)

    soft = feather(grown, 4)
    assert soft.dtype == np.float32 and soft.min() >= 0 and soft.max() <= 1
    assert (soft[grown] == 1).all() and soft[0, 0] == 0
    row = soft[10, 12:]
    assert (np.diff(row) <= 0).all() and 0 < row[2] < 1  # falls off outside the mask
    assert np.array_equal(feather(grown, 0), grown.astype(np.float32))
    assert (feather(np.zeros((5, 5), bool), 3) == 0).all()


# --- FlowCache ---------------------------------------------------------------------------------


class CountingDIS(DISFlow):
    """DIS that records the frame sizes it was asked for."""

    def __init__(self, preset: str = "ultrafast") -> None:
        super().__init__(preset)
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def compute(self, source, target):
        self.calls.append(("compute", source.shape))
        return super().compute(source, target)

    def compute_pair(self, a, b):
        self.calls.append(("pair", a.shape))
        return super().compute_pair(a, b)


def test_flow_cache_stores_float16_files_and_hits_the_second_time(tmp_path, shifted_pair):
    source, target = shifted_pair
    estimator = CountingDIS()
    cache = FlowCache(estimator, "clip-1", root=tmp_path)
    first = cache.get(0, 1, source, target)
    assert (cache.hits, cache.misses) == (0, 1)
    np.testing.assert_allclose(median_vector(first), SHIFT, atol=0.3)

    again = cache.get(0, 1, source, target)
    backward = cache.get(1, 0, target, source)  # stored by the same pair computation
    assert (cache.hits, cache.misses) == (2, 1)
    assert estimator.calls == [("pair", source.shape)]
    assert again.dtype == np.float32 and np.array_equal(again, first)
    np.testing.assert_allclose(-median_vector(backward), SHIFT, atol=0.3)

    direct = DISFlow("ultrafast").compute(source, target)
    np.testing.assert_allclose(first, direct, atol=1 / 32)

    folder = tmp_path / text_hash("clip-1")
    assert cache.folder.parent == folder
    files = sorted(p.name for p in cache.folder.iterdir())
    assert files == ["0_1.npy", "1_0.npy"]  # and no temp files left behind
    stored = np.load(cache.folder / "0_1.npy")
    assert stored.dtype == np.float16 and stored.shape == (HEIGHT, WIDTH, 2)


def test_flow_cache_distant_pairs_compute_one_direction(tmp_path, shifted_pair):
    source, target = shifted_pair
    estimator = CountingDIS()
    cache = FlowCache(estimator, "clip", root=tmp_path)
    cache.get(0, 5, source, target)
    cache.get(5, 0, target, source)
    assert cache.misses == 2 and [c[0] for c in estimator.calls] == ["compute", "compute"]
    assert not cache.get(3, 3, source, source).any()  # a frame to itself needs no estimate


def test_flow_cache_defaults_to_the_cache_root(shifted_pair, monkeypatch, tmp_path):
    monkeypatch.setenv("ZVSTUDIO_CACHE_DIR", str(tmp_path))
    cache = FlowCache(DISFlow("ultrafast"), "clip")
    cache.get(0, 1, *shifted_pair)
    assert cache.folder.parent.parent == tmp_path / "flows"
    assert (cache.folder / "0_1.npy").is_file()


def test_flow_cache_folders_depend_on_clip_and_settings(tmp_path):
    def folder(estimator: FlowEstimator, clip: str = "clip", max_side: int | None = None) -> Path:
        return FlowCache(estimator, clip, root=tmp_path, max_side=max_side).folder

    base = folder(DISFlow("fast"))
    assert base == folder(DISFlow("fast"))
    assert base != folder(DISFlow("medium"))
    assert base != folder(DISFlow("fast"), clip="other")
    assert base != folder(DISFlow("fast"), max_side=256)


def test_flow_cache_recomputes_an_unreadable_file(tmp_path, shifted_pair):
    cache = FlowCache(DISFlow("ultrafast"), "clip", root=tmp_path)
    cache.folder.mkdir(parents=True)
    cache.path(0, 1).write_bytes(b"not a numpy file")
    flow = cache.get(0, 1, *shifted_pair)
    assert cache.misses == 1 and flow.shape == (HEIGHT, WIDTH, 2)
    assert np.load(cache.path(0, 1)).shape == (HEIGHT, WIDTH, 2)


def test_a_full_disk_costs_the_flow_cache_not_the_flow(tmp_path, shifted_pair, monkeypatch):
    cache = FlowCache(DISFlow("ultrafast"), "clip", root=tmp_path)
    expected = cache.get(0, 1, *shifted_pair)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    full = FlowCache(DISFlow("ultrafast"), "other clip", root=tmp_path)
    monkeypatch.setattr(np, "save", disk_full)
    assert np.array_equal(full.get(0, 1, *shifted_pair), expected)
    assert np.array_equal(full.get(0, 1, *shifted_pair), expected)  # estimated again
    assert full.misses == 2 and list(full.folder.iterdir()) == []  # no temporary files left
    monkeypatch.setattr(tempfile, "mkstemp", disk_full)
    assert full.get(1, 0, shifted_pair[1], shifted_pair[0]).shape == expected.shape


def test_flow_cache_max_side_estimates_small_and_returns_full_size(tmp_path):
    source = texture(320, 256, seed=3)
    shift = (6.0, -4.0)
    target = translate(source, *shift)
    estimator = CountingDIS("medium")
    cache = FlowCache(estimator, "clip", root=tmp_path, max_side=160)
    forward = cache.get(0, 1, source, target)
    backward = cache.get(1, 0, target, source)
    assert estimator.calls == [("pair", (128, 160, 3))]
    assert forward.shape == backward.shape == (256, 320, 2)
    np.testing.assert_allclose(median_vector(forward), shift, atol=0.5)
    np.testing.assert_allclose(-median_vector(backward), shift, atol=0.5)
    # Frames already small enough are estimated as they are.
    small = CountingDIS()
    FlowCache(small, "clip", root=tmp_path, max_side=400).get(0, 1, source, target)
    assert small.calls == [("pair", (256, 320, 3))]


# --- the factory ---------------------------------------------------------------------------------


def test_create_flow_estimator():
    assert isinstance(create_flow_estimator(), DISFlow)
    assert create_flow_estimator("dis", preset="fast").preset == "fast"
    with pytest.raises(ZvsError, match="dis, raft"):
        create_flow_estimator("gmflow")
    with pytest.raises(ZvsError, match="speed"):
        create_flow_estimator("dis", speed=3)
    with pytest.raises(ZvsError, match="weights"):
        create_flow_estimator("raft")


# --- RAFT ----------------------------------------------------------------------------------------


def test_raft_missing_weights_names_the_file(tmp_path):
    missing = tmp_path / "raft_large.pth"
    with pytest.raises(ZvsError, match=re.escape(str(missing))):
        RAFTFlow(missing)
    with pytest.raises(ZvsError, match=re.escape(str(missing))):
        create_flow_estimator("raft", weights=missing)


@pytest.mark.parametrize("error", [ImportError, RuntimeError, OSError])
def test_raft_without_torchvision_says_so(tmp_path, monkeypatch, error):
    weights = tmp_path / "raft.pth"
    weights.write_bytes(b"")

    def broken():
        raise error("operator torchvision::nms does not exist")

    monkeypatch.setattr(raft_module, "_import_optical_flow", broken)
    with pytest.raises(ZvsError, match="RAFT needs torchvision") as info:
        RAFTFlow(weights)
    assert info.value.hint and "dis" in info.value.hint


def test_raft_with_torchvision_absent_from_the_environment(tmp_path, monkeypatch):
    weights = tmp_path / "raft.pth"
    weights.write_bytes(b"")
    for name in ("torchvision", "torchvision.models", "torchvision.models.optical_flow"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ZvsError, match="RAFT needs torchvision"):
        RAFTFlow(weights)


def fake_optical_flow():
    """Stand-ins for torchvision's raft_small/raft_large with the same key markers.

    Their "flow" is the normalised red channel of each input, so tests can check padding,
    normalisation, cropping and the batch order of the wrapper without torchvision.
    """
    torch = pytest.importorskip("torch")

    class FakeRaft(torch.nn.Module):
        def __init__(self, small: bool) -> None:
            super().__init__()
            if small:
                self.feature_encoder = torch.nn.ModuleDict({"convnormrelu3": torch.nn.Linear(2, 2)})
            else:
                self.mask_predictor = torch.nn.Linear(3, 3)
            self.inputs: list = []

        def forward(self, image1, image2, num_flow_updates=12):
            self.inputs.append((image1.clone(), image2.clone(), num_flow_updates))
            return [image1[:, :2] * 0, torch.stack([image1[:, 0], image2[:, 0]], dim=1)]

    return SimpleNamespace(
        raft_small=lambda weights: FakeRaft(small=True),
        raft_large=lambda weights: FakeRaft(small=False),
        FakeRaft=FakeRaft,
    )


def test_raft_wrapper_pads_normalises_crops_and_batches(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    fake = fake_optical_flow()
    monkeypatch.setattr(raft_module, "_import_optical_flow", lambda: fake)
    small_path, large_path = tmp_path / "small.pth", tmp_path / "large.safetensors"
    torch.save(fake.FakeRaft(small=True).state_dict(), small_path)
    from safetensors.torch import save_file

    save_file(fake.FakeRaft(small=False).state_dict(), str(large_path))

    estimator = RAFTFlow(small_path, iterations=3)
    assert estimator.small is True and estimator.name == "raft"
    assert RAFTFlow(large_path).small is False
    assert "small" in estimator.settings_key() and "iterations=3" in estimator.settings_key()

    a = texture(70, 50, seed=1)
    b = texture(70, 50, seed=2)
    flow = estimator.compute(a, b)
    assert flow.shape == (50, 70, 2) and flow.dtype == np.float32
    np.testing.assert_allclose(flow[..., 0], a[..., 0] / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(flow[..., 1], b[..., 0] / 127.5 - 1, atol=1e-6)
    image1, _, updates = estimator._model.inputs[-1]
    assert updates == 3 and tuple(image1.shape) == (1, 3, 128, 128)
    assert image1.min() >= -1 and image1.max() <= 1
    torch.testing.assert_close(image1[0, :, 50:, :70], image1[0, :, 49:50, :70].expand(3, 78, 70))

    forward, backward = estimator.compute_pair(a, b)
    np.testing.assert_allclose(forward, flow)
    np.testing.assert_allclose(backward[..., 0], b[..., 0] / 127.5 - 1, atol=1e-6)
    assert tuple(estimator._model.inputs[-1][0].shape) == (2, 3, 128, 128)

    estimator.compute(texture(132, 130), texture(132, 130, seed=1))
    assert tuple(estimator._model.inputs[-1][0].shape) == (1, 3, 136, 136)


def test_raft_rejects_weights_of_the_wrong_model(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    fake = fake_optical_flow()
    monkeypatch.setattr(raft_module, "_import_optical_flow", lambda: fake)
    path = tmp_path / "small.pth"
    torch.save(fake.FakeRaft(small=True).state_dict(), path)
    with pytest.raises(ZvsError, match="raft_large"):
        RAFTFlow(path, small=False)
    other = tmp_path / "other.pth"
    torch.save({"fnet.conv1.weight": torch.zeros(2)}, other)
    with pytest.raises(ZvsError, match="does not hold"):
        RAFTFlow(other)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    with pytest.raises(ZvsError, match="cannot read"):
        RAFTFlow(junk)


def test_raft_small_with_real_torchvision(tmp_path):
    try:
        optical_flow = raft_module._import_optical_flow()
    except (ImportError, RuntimeError, OSError) as exc:
        pytest.skip(f"torchvision cannot be imported here: {exc}")
    import torch

    torch.manual_seed(0)
    path = tmp_path / "raft_small_random.pth"
    torch.save(optical_flow.raft_small(weights=None).state_dict(), path)
    estimator = RAFTFlow(path, iterations=2)
    assert estimator.small is True
    a, b = texture(64, 64, seed=1), texture(64, 64, seed=2)
    flow = estimator.compute(a, b)
    assert flow.shape == (64, 64, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()
    forward, backward = estimator.compute_pair(a, b)
    np.testing.assert_allclose(forward, flow, atol=1e-3)
    assert backward.shape == (64, 64, 2)
    with pytest.raises(ZvsError, match="raft_large"):
        RAFTFlow(path, small=False)


def test_flow_cache_estimates_a_pair_once_when_threads_ask_together(tmp_path, shifted_pair):
    # The two directions of a segment meet in its middle and may ask for the same pair at the
    # same moment: one estimates it, the other reads the result.
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    source, target = shifted_pair
    both_waiting = threading.Barrier(2)

    class SlowDIS(CountingDIS):
        def compute_pair(self, a, b):
            time.sleep(0.2)  # long enough for the other thread to be waiting on the pair
            return super().compute_pair(a, b)

    estimator = SlowDIS()
    cache = FlowCache(estimator, "clip", root=tmp_path)

    def ask(i: int, j: int) -> np.ndarray:
        both_waiting.wait()
        frames = {0: source, 1: target}
        return cache.get(i, j, frames[i], frames[j])

    with ThreadPoolExecutor(2) as pool:
        forward, backward = pool.map(ask, (0, 1), (1, 0))
    assert estimator.calls == [("pair", source.shape)]
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_allclose(median_vector(forward), SHIFT, atol=0.3)
    np.testing.assert_allclose(-median_vector(backward), SHIFT, atol=0.3)
