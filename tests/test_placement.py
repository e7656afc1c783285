"""Key placement by motion: the analysis's predicted errors and the optimal placement."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from zvstudio.errors import ZvsError
from zvstudio.media.cuts import keys_by_shot
from zvstudio.propagate.placement import (
    KeyCosts,
    MotionAnalyser,
    analyse,
    keys_by_motion,
    max_gap,
    place_keys,
    predicted_errors,
)


def _texture(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def _costs(rng: np.random.Generator, frames: int, window: int) -> KeyCosts:
    """Random predicted errors growing with distance, inf beyond the run's ends."""
    steps = rng.uniform(0.0, 10.0, (2, frames, window + 1))
    steps[:, :, 0] = 0.0
    forward, backward = np.cumsum(steps, axis=2)
    for a in range(frames):
        forward[a, frames - a :] = np.inf
        backward[a, a + 1 :] = np.inf
    return KeyCosts(forward.astype(np.float32), backward.astype(np.float32))


def _total(costs: KeyCosts, keys: list[int], cuts: list[int]) -> float:
    """The placement's predicted error, written plainly: each frame from its shot's keys."""
    starts = [0, *cuts]
    total = 0.0
    for t in range(costs.frame_count):
        if t in keys:
            continue
        shot = max(s for s in starts if s <= t)
        shot_end = min([s for s in starts if s > t], default=costs.frame_count)
        before = max(k for k in keys if shot <= k < t)
        after = [k for k in keys if t < k < shot_end]
        error = costs.forward[before, t - before]
        if after:
            error = min(error, costs.backward[after[0], after[0] - t])
        total += float(error)
    return total


def _feasible(keys: list[int], frames: int, cuts: list[int], gap: int) -> bool:
    ends = [*keys, frames - 1]
    return (
        keys[0] == 0
        and set(cuts) <= set(keys)
        and all(b - a <= gap for a, b in itertools.pairwise(ends))
    )


@pytest.mark.parametrize("cuts", [[], [6]])
def test_placement_is_the_optimum_of_a_brute_force_search(cuts):
    rng = np.random.default_rng(len(cuts))
    frames, window, gap = 12, 6, 5
    for trial in range(4):
        costs = _costs(rng, frames, window)
        for count in (3, 4, 5):
            keys = place_keys(costs, count, cuts, gap)
            assert len(keys) == count, (trial, count, keys)
            assert _feasible(keys, frames, cuts, gap)
            best = min(
                _total(costs, [0, *rest], cuts)
                for rest in itertools.combinations(range(1, frames), count - 1)
                if _feasible([0, *rest], frames, cuts, gap)
            )
            assert _total(costs, keys, cuts) == pytest.approx(best, rel=1e-6)


def test_costs_alike_everywhere_give_evenly_spaced_keys():
    frames, window = 31, 20
    reach = np.arange(window + 1)
    error = (reach**2).astype(np.float32)  # the same everywhere: growing with distance
    forward = np.stack([np.where(reach < frames - a, error, np.inf) for a in range(frames)])
    backward = np.stack([np.where(reach <= b, error, np.inf) for b in range(frames)])
    keys = place_keys(KeyCosts(forward, backward), 4, (), 15)
    gaps = np.diff(keys)
    assert keys[0] == 0 and len(keys) == 4 and gaps.max() - gaps.min() <= 1
    assert frames - 1 - keys[-1] < gaps.min()  # the one-way tail is the shortest stretch


def test_too_few_keys_are_refused():
    costs = _costs(np.random.default_rng(0), 30, 10)
    with pytest.raises(ZvsError, match="cannot cover"):
        place_keys(costs, 2, (), 10)  # 30 frames need keys at most 10 apart: at least 3


def _moving_clip(still: int, moving: int, speed: int) -> list[np.ndarray]:
    """A textured frame held still, then panned fast over a wider texture (new content)."""
    wide = _texture(64 + speed * moving + 64, 1)[:64]
    frames = [wide[:, :64].copy() for _ in range(still)]
    frames += [wide[:, speed * i : speed * i + 64].copy() for i in range(1, moving + 1)]
    return frames


def test_analysis_predicts_small_errors_where_nothing_changes():
    frames = _moving_clip(still=10, moving=10, speed=6)
    costs = analyse(frames, 5)
    assert costs.frame_count == 20 and costs.window == 5
    assert np.all(costs.forward[:, 0] == 0) and np.all(costs.backward[:, 0] == 0)
    assert np.isinf(costs.forward[18, 2]) and np.isinf(costs.backward[1, 2])  # past the ends
    assert costs.forward[0, 5] < 1.0  # a still frame predicts the next ones exactly
    assert costs.forward[12, 5] > 50 * max(costs.forward[0, 5], 1.0)
    # Farther keys predict worse while content keeps coming into view.
    assert costs.forward[12, 1] < costs.forward[12, 3] < costs.forward[12, 5]


def test_streamed_analysis_equals_whole():
    frames = _moving_clip(still=3, moving=6, speed=4)
    analyser = MotionAnalyser(4)
    for frame in frames:
        analyser.add(frame)
    streamed, whole = analyser.costs(), analyse(frames, 4)
    np.testing.assert_array_equal(streamed.forward, whole.forward)
    np.testing.assert_array_equal(streamed.backward, whole.backward)


def test_keys_by_motion_gather_where_the_clip_moves():
    frames = _moving_clip(still=30, moving=30, speed=3)
    interval = 10
    costs = analyse(frames, max_gap(interval))
    keys = keys_by_motion(costs, 100, interval)  # frame numbers start at 100
    even = keys_by_shot(100, 159, interval, [])
    assert len(keys) == len(even) and keys[0] == 100
    assert sum(k >= 130 for k in keys) > sum(k >= 130 for k in even)
    assert all(b - a <= max_gap(interval) for a, b in itertools.pairwise(keys))


def test_keys_by_motion_start_every_shot():
    frames = _moving_clip(still=12, moving=12, speed=3) + _moving_clip(still=4, moving=20, speed=2)
    costs = analyse(frames, max_gap(5))
    keys = keys_by_motion(costs, 0, 5, cuts=[24])
    assert 0 in keys and 24 in keys
    assert len(keys) == len(keys_by_shot(0, len(frames) - 1, 5, [24]))


def test_predicted_errors_take_each_frame_from_its_better_key_in_its_shot():
    costs = _costs(np.random.default_rng(3), 12, 4)
    errors = predicted_errors(costs, [0, 4, 6, 9], cuts=[6])
    assert errors[0] == errors[4] == errors[6] == errors[9] == 0
    assert errors[2] == min(costs.forward[0, 2], costs.backward[4, 2])
    assert errors[5] == costs.forward[4, 1]  # key 6 is in the next shot
    assert errors[8] == min(costs.forward[6, 2], costs.backward[9, 1])
    assert errors[11] == costs.forward[9, 2]  # after the last key: one way
    far = predicted_errors(costs, [0], cuts=[])
    assert np.isinf(far[5]) and far[4] == costs.forward[0, 4]  # beyond the window: unknown
    assert np.isinf(predicted_errors(costs, [3], cuts=[])[8])
    assert predicted_errors(costs, [3], cuts=[])[1] == costs.backward[3, 2]  # before the first


@pytest.mark.parametrize("frames", [1, 2, 3, 10])
def test_clips_shorter_than_the_interval_get_their_first_frame(frames):
    rng = np.random.default_rng(frames)
    clip = [rng.integers(0, 256, (36, 20, 3), dtype=np.uint8) for _ in range(frames)]
    costs = analyse(clip, max_gap(10))
    assert keys_by_motion(costs, 5, 10) == keys_by_shot(5, 4 + frames, 10, []) == [5]
    errors = predicted_errors(costs, [0])
    assert errors[0] == 0 and np.all(np.isfinite(errors))
