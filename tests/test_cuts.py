"""Shot-cut detection (zvstudio.media.cuts) on synthetic shots with known cuts, and on the
shared clips (single shots: no cut may be found in them)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from zvstudio.media import VideoReader
from zvstudio.media.cuts import (
    FLASH_LENGTH,
    MIN_SCORE,
    CutFinder,
    change_scores,
    find_cuts,
    keys_by_shot,
    shot_cuts,
)

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "clips"


def scene(seed: int, count: int, step: float = 2.0, size: int = 96) -> list[np.ndarray]:
    """`count` frames of a camera panning over a colourful texture of its own palette."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (2, 3)).astype(np.float32)
    noise = cv2.resize(rng.random((12, 12), dtype=np.float32), (3 * size, 3 * size))
    detail = cv2.resize(rng.random((48, 48), dtype=np.float32), (3 * size, 3 * size))
    mix = (0.7 * noise + 0.3 * detail)[..., None]
    big = (palette[0] * (1 - mix) + palette[1] * mix).astype(np.uint8)
    offsets = (round(size + step * t) for t in range(count))
    return [big[size : 2 * size, x : x + size].copy() for x in offsets]


def test_a_single_panning_shot_has_no_cut():
    assert shot_cuts(scene(0, 20)) == []


def test_cuts_are_found_at_the_first_frame_of_each_new_shot():
    frames = scene(0, 8) + scene(1, 6) + scene(2, 9)
    assert shot_cuts(frames) == [8, 14]


def test_fast_motion_raises_every_score_and_is_no_cut():
    frames = scene(3, 10, step=9.0)
    assert min(change_scores(frames)) > 0  # the frames do change...
    assert shot_cuts(frames) == []  # ...but uniformly


@pytest.mark.parametrize("length", [1, 2])
def test_a_flash_is_no_cut(length):
    frames = scene(4, 12)
    frames[6 : 6 + length] = [np.full_like(frames[6], 255)] * length
    assert find_cuts(change_scores(frames)) == [6, 6 + length]  # two jumps...
    assert shot_cuts(frames) == []  # ...back to the same shot


def test_a_fade_to_black_is_no_cut():
    frames = [(f * (1 - t / 15)).astype(np.uint8) for t, f in enumerate(scene(5, 16))]
    assert shot_cuts(frames) == []


def test_the_rule_needs_both_a_high_score_and_quiet_neighbours():
    assert find_cuts([1, 1, 40, 1, 1]) == [3]
    assert find_cuts([1, 1, MIN_SCORE - 1, 1, 1]) == []  # small, however quiet around it
    assert find_cuts([30, 30, 40, 30, 30]) == []  # large, but so is everything around it


def test_fewer_than_two_frames_have_no_cut():
    assert shot_cuts([]) == shot_cuts(scene(0, 1)) == []


@pytest.mark.skipif(not CLIPS.is_dir(), reason="../shared/clips is absent")
def test_the_shared_clips_are_single_shots_and_a_splice_of_two_is_found():
    spliced = []
    for path in sorted(CLIPS.glob("*.mp4")):
        with VideoReader(path) as reader:
            frames = [
                cv2.resize(f, (160, 90), interpolation=cv2.INTER_AREA)
                for _, f in reader.frames(0, min(len(reader), 60))
            ]
        assert shot_cuts(frames) == [], path.name
        spliced += frames[:10]
    assert shot_cuts(spliced) == list(range(10, len(spliced), 10))


def test_keys_start_every_shot_and_repeat_within_it():
    assert keys_by_shot(0, 29, 10, []) == [0, 10, 20]
    assert keys_by_shot(0, 29, 10, [14]) == [0, 10, 14, 24]
    assert keys_by_shot(0, 29, 10, [3, 5]) == [0, 3, 5, 15, 25]
    # Cuts outside the range, or at its first frame, add nothing.
    assert keys_by_shot(5, 25, 10, [0, 5, 26, 40]) == [5, 15, 25]


def test_a_long_clip_streams_through_the_finder_with_the_same_cuts():
    frames = scene(0, 8) + scene(1, 6) + scene(2, 9)
    frames[3] = np.full_like(frames[3], 255)  # and a flash
    finder = CutFinder()
    for frame in frames:
        finder.add(frame)
    assert finder.cuts() == shot_cuts(frames) == [8, 14]
    assert len(finder._recent) <= FLASH_LENGTH + 1  # it holds a few frames, not the clip
