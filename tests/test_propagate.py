"""Key propagation on sequences with a known motion, and its edge cases."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
import torch
from helpers import make_clip

from zvstudio.cli import main
from zvstudio.errors import RenderCancelled, ZvsError
from zvstudio.flow import DISFlow, FlowCache, identity_grid
from zvstudio.media import VideoReader, probe
from zvstudio.metrics import psnr
from zvstudio.progress import CancelToken
from zvstudio.propagate.clip import check_keys, load_key_image, propagate_clip
from zvstudio.propagate.patchmatch import PatchMatchSettings, best_of, refine, vote
from zvstudio.propagate.pixels import NUMPY
from zvstudio.propagate.segment import (
    BLEND_MODES,
    Propagated,
    PropagationSettings,
    _reanchor,
    blend_soft,
    brightness_gain,
    carry_key,
    style_follows_brightness,
)

SIZE = 128


class ListReader:
    """The part of VideoReader that propagation uses, over frames in memory; it records how
    many frames each read asks for."""

    def __init__(self, frames):
        self.images = frames
        self.reads = []
        self.furthest = -1  # the last frame read so far

    def __len__(self):
        return len(self.images)

    def frames(self, start, stop):
        self.reads.append(stop - start)
        self.furthest = max(self.furthest, stop - 1)
        return ((n, self.images[n]) for n in range(start, stop))


def texture(size: int = 3 * SIZE, seed: int = 0) -> np.ndarray:
    """Smooth colourful noise with enough detail for optical flow at every scale."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3), np.float32)
    for cells, weight in ((6, 1.0), (16, 0.6), (48, 0.4), (128, 0.3)):
        grid = rng.random((cells, cells, 3), dtype=np.float32)
        image += weight * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    image -= image.min()
    return (255 * image / image.max()).astype(np.uint8)


def moving_sequence(motion: str, count: int = 9) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames of a texture under a known motion, and each frame's affine map from frame 0.

    The map A_t sends a pixel of frame 0 to where it appears in frame t.
    """
    big = texture()
    centre = np.array([1.5 * SIZE, 1.5 * SIZE])
    frames, maps = [], []
    for t in range(count):
        if motion == "translate":
            matrix = np.array([[1, 0, 2.0 * t], [0, 1, -1.0 * t]])
        elif motion == "rotate":
            matrix = cv2.getRotationMatrix2D(tuple(centre), 1.5 * t, 1.0)
        else:  # zoom
            matrix = cv2.getRotationMatrix2D(tuple(centre), 0.0, 1.02**t)
        frame = cv2.warpAffine(
            big, matrix, big.shape[1::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT
        )
        frames.append(frame[SIZE : 2 * SIZE, SIZE : 2 * SIZE].copy())
        maps.append(matrix)
    return frames, maps


def style(frame: np.ndarray) -> np.ndarray:
    """A per-pixel 'style' (a colour remapping), so the true answer for every frame is known."""
    return np.ascontiguousarray(255 - frame[..., ::-1])


def flows_for(tmp_path) -> FlowCache:
    return FlowCache(DISFlow("fine"), "test-clip", root=tmp_path / "flows")


def interior(image: np.ndarray, margin: int = 24) -> np.ndarray:
    return image[margin:-margin, margin:-margin]


@pytest.mark.parametrize("motion", ["translate", "rotate", "zoom"])
def test_propagated_frames_match_the_known_answer(tmp_path, motion):
    frames, _ = moving_sequence(motion)
    keys = {0: style(frames[0]), 8: style(frames[8])}
    result = dict(propagate_clip(ListReader(frames), keys, flows_for(tmp_path)))
    assert sorted(result) == list(range(9))
    assert np.array_equal(result[0], keys[0]) and np.array_equal(result[8], keys[8])
    for t in range(1, 8):
        expected = style(frames[t])
        fidelity = psnr(interior(result[t]), interior(expected))
        assert fidelity > 30, (motion, t)
        # Holding the nearest key is far worse: the motion is really followed.
        nearest = keys[0] if t <= 4 else keys[8]
        assert psnr(interior(nearest), interior(expected)) < fidelity - 8


@pytest.mark.parametrize("motion", ["translate", "rotate", "zoom"])
def test_recovered_field_matches_the_known_motion(tmp_path, motion):
    frames, maps = moving_sequence(motion)
    cache = flows_for(tmp_path)
    reader = ListReader(frames)
    carried = dict(
        carry_key(
            dict(enumerate(frames)),
            0,
            style(frames[0]),
            list(range(1, 9)),
            lambda i, j: cache.get(i, j, frames[i], frames[j]),
            PropagationSettings(),
        )
    )
    for t in (3, 8):
        # Where pixel x of frame t came from in frame 0: invert A_t (in crop coordinates).
        forward = np.vstack([maps[t], [0, 0, 1]])
        inverse = np.linalg.inv(forward)
        points = identity_grid(SIZE, SIZE).reshape(-1, 2) + SIZE
        source = points @ inverse[:2, :2].T + inverse[:2, 2] - SIZE
        true_flow = (source - (points - SIZE)).reshape(SIZE, SIZE, 2)
        error = np.linalg.norm(interior(carried[t].flow - true_flow), axis=2)
        assert np.median(error) < 0.3, (motion, t, np.median(error))
    assert reader.reads == []  # carry_key itself reads nothing; frames were given


def test_single_key_propagates_both_ways(tmp_path):
    frames, _ = moving_sequence("translate", count=7)
    result = dict(propagate_clip(ListReader(frames), {3: style(frames[3])}, flows_for(tmp_path)))
    assert sorted(result) == list(range(7))
    for t in (0, 6):
        assert psnr(interior(result[t]), interior(style(frames[t]))) > 28


def test_adjacent_keys_and_keys_at_every_frame(tmp_path):
    frames, _ = moving_sequence("translate", count=4)
    keys = {n: style(frames[n]) for n in range(4)}
    result = dict(propagate_clip(ListReader(frames), keys, flows_for(tmp_path)))
    assert all(np.array_equal(result[n], keys[n]) for n in range(4))


def test_clip_shorter_than_a_key_interval(tmp_path):
    frames, _ = moving_sequence("translate", count=3)
    result = dict(propagate_clip(ListReader(frames), {0: style(frames[0])}, flows_for(tmp_path)))
    assert sorted(result) == [0, 1, 2]


def test_memory_is_bounded_by_two_segments(tmp_path):
    frames, _ = moving_sequence("translate", count=25)
    reader = ListReader(frames)
    keys = {n: style(frames[n]) for n in (0, 6, 12, 18, 24)}
    for number, _ in propagate_clip(reader, keys, flows_for(tmp_path)):
        # The segment being carried and the next one, whose flows are under way.
        assert reader.furthest <= (number // 6 + 2) * 6, number
    assert number == 24
    assert max(reader.reads) <= 7  # never more than the frames between two keys


class RecordingFlows(FlowCache):
    """A flow cache that records which thread asked for which flow."""

    def __init__(self, root):
        super().__init__(DISFlow("ultrafast"), "test-clip", root=root)
        self.requests = []

    def get(self, i, j, frame_i, frame_j):
        self.requests.append(((i, j), threading.current_thread().name))
        return super().get(i, j, frame_i, frame_j)


@pytest.mark.parametrize("reanchor", [True, False])
def test_a_segments_flows_are_estimated_up_front_on_the_flow_threads(tmp_path, reanchor):
    frames, _ = moving_sequence("translate", count=12)
    keys = {2: style(frames[2]), 8: style(frames[8])}  # one-way segments on both sides
    flows = RecordingFlows(tmp_path)
    settings = PropagationSettings(reanchor=reanchor)
    assert len(dict(propagate_clip(ListReader(frames), keys, flows, settings))) == 12
    prefetched = {pair for pair, thread in flows.requests if thread.startswith("zvstudio-flow")}
    used = {pair for pair, thread in flows.requests if not thread.startswith("zvstudio-flow")}
    # Carrying asks only for flows already estimated (one consecutive estimate gives both
    # directions), and nothing was estimated in vain.
    assert used <= prefetched | {(j, i) for i, j in prefetched if abs(i - j) == 1}
    assert all(pair in used or pair[::-1] in used for pair in prefetched)
    assert flows.misses == len(prefetched)
    direct = {pair for pair in used if abs(pair[0] - pair[1]) > 1}
    assert bool(direct) == reanchor


class FlowsWaitingForAKey(RecordingFlows):
    """Flows that are estimated only once the last key is being rendered (or after 3 s in
    vain)."""

    def __init__(self, root):
        super().__init__(root)
        self.key_asked = threading.Event()
        self.waited_in_vain = False

    def get(self, i, j, frame_i, frame_j):
        if not self.waited_in_vain and not self.key_asked.wait(timeout=3):
            self.waited_in_vain = True
        return super().get(i, j, frame_i, frame_j)


class KeysRenderedOnDemand(dict):
    """Keys 'rendered' when first asked for, as a diffusion render's are."""

    def __init__(self, images, flows):
        super().__init__(images)
        self.flows = flows

    def __getitem__(self, number):
        if number == max(self):
            self.flows.key_asked.set()
        return super().__getitem__(number)


def test_keys_are_rendered_while_the_segments_flows_are_estimated(tmp_path):
    # A key's render (on a GPU) and its segment's flows (on the CPU) overlap: the flows wait
    # for the segment's second key to be asked for, which comes after them if the two run in
    # turn.
    frames, _ = moving_sequence("translate", count=13)
    flows = FlowsWaitingForAKey(tmp_path)
    keys = KeysRenderedOnDemand({n: style(frames[n]) for n in (0, 12)}, flows)
    assert sorted(dict(propagate_clip(ListReader(frames), keys, flows))) == list(range(13))
    assert not flows.waited_in_vain
    assert any(thread.startswith("zvstudio-flow") for _, thread in flows.requests)


class CarryingWaitsForTheNextSegment(RecordingFlows):
    """Carrying the first segment (frames up to `boundary`) asks for flows only once a flow
    thread has started on the next segment's (or after 3 s in vain)."""

    def __init__(self, root, boundary):
        super().__init__(root)
        self.boundary = boundary
        self.next_started = threading.Event()
        self.waited_in_vain = False

    def get(self, i, j, frame_i, frame_j):
        flow_thread = threading.current_thread().name.startswith("zvstudio-flow")
        if flow_thread and min(i, j) >= self.boundary:
            self.next_started.set()
        elif not flow_thread and max(i, j) <= self.boundary and not self.waited_in_vain:
            self.waited_in_vain = not self.next_started.wait(timeout=3)
        return super().get(i, j, frame_i, frame_j)


def test_the_next_segments_flows_are_estimated_while_one_is_carried(tmp_path):
    frames, _ = moving_sequence("translate", count=13)
    keys = {n: style(frames[n]) for n in (0, 6, 12)}
    flows = CarryingWaitsForTheNextSegment(tmp_path, boundary=6)
    assert sorted(dict(propagate_clip(ListReader(frames), keys, flows))) == list(range(13))
    assert not flows.waited_in_vain
    assert flows.misses == 12 + 2 * 8  # each flow estimated once: no segment's twice


@pytest.mark.parametrize("blend", BLEND_MODES)
def test_no_key_is_carried_across_a_shot_cut(tmp_path, monkeypatch, blend):
    shot_a, _ = moving_sequence("translate", count=5)  # frames 0-4
    other = texture(seed=7)
    shot_b = [other[SIZE - t : 2 * SIZE - t, SIZE + 2 * t : 2 * SIZE + 2 * t] for t in range(6)]
    frames = shot_a + shot_b  # a cut between frames 4 and 5
    keys = {0: style(frames[0]), 10: style(frames[10])}
    settings = PropagationSettings(blend=blend)
    flows = RecordingFlows(tmp_path / "cut")
    result = dict(propagate_clip(ListReader(frames), keys, flows, settings))
    quality = [psnr(interior(result[t]), interior(style(frames[t]))) for t in range(1, 10)]
    assert min(quality) > 28, quality
    # Neither key was carried across the cut, nor were flows across it estimated.
    assert all((i < 5) == (j < 5) for (i, j), _ in flows.requests)
    if blend == "histogram":  # which, blind to the cut, mixes in the other shot's key
        monkeypatch.setattr("zvstudio.propagate.clip.shot_cuts", lambda frames: [])
        blind = dict(propagate_clip(ListReader(frames), keys, RecordingFlows(tmp_path), settings))
        worse = [psnr(interior(blind[t]), interior(style(frames[t]))) for t in range(1, 10)]
        assert min(worse) < min(quality) - 3, (worse, quality)


def test_keys_outside_the_clip_and_no_keys():
    with pytest.raises(ZvsError, match=r"outside the clip's frames 0\.\.9"):
        check_keys({3: None, 12: None}, 0, 9)
    with pytest.raises(ZvsError, match="at least one key"):
        check_keys({}, 0, 9)


def test_cancel_stops_propagation(tmp_path):
    frames, _ = moving_sequence("translate", count=9)
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(RenderCancelled):
        list(
            propagate_clip(
                ListReader(frames),
                {0: style(frames[0]), 8: style(frames[8])},
                flows_for(tmp_path),
                cancel=cancel,
            )
        )


def test_histogram_blend_mode_also_follows_the_motion(tmp_path):
    frames, _ = moving_sequence("translate")
    keys = {0: style(frames[0]), 8: style(frames[8])}
    result = dict(
        propagate_clip(
            ListReader(frames), keys, flows_for(tmp_path), PropagationSettings(blend="histogram")
        )
    )
    assert psnr(interior(result[4]), interior(style(frames[4]))) > 28
    with pytest.raises(ZvsError, match="blend mode"):
        list(
            propagate_clip(
                ListReader(frames), keys, flows_for(tmp_path), PropagationSettings(blend="average")
            )
        )


def test_soft_blend_weights():
    shape = (16, 16)
    no_flow = np.zeros((*shape, 2), np.float32)
    black = Propagated(
        np.zeros((*shape, 3), np.uint8), np.zeros(shape, np.float32), np.ones(shape, bool), no_flow
    )
    white = Propagated(
        np.full((*shape, 3), 255, np.uint8),
        np.zeros(shape, np.float32),
        np.ones(shape, bool),
        no_flow,
    )
    settings = PropagationSettings()
    # Equal errors: the temporal weight decides.
    assert blend_soft(black, white, 0.75, settings).mean() == pytest.approx(0.25 * 255, abs=1)
    assert blend_soft(black, white, 1.0, settings).max() == 0
    # A direction whose flow was occluded, or whose error is high, hands over to the other.
    occluded = Propagated(black.image, black.error, np.zeros(shape, bool), no_flow)
    expected = 255 * 0.25 / (0.25 + settings.occluded_weight * 0.75)
    assert blend_soft(occluded, white, 0.75, settings).mean() == pytest.approx(expected, abs=1)
    wrong = Propagated(black.image, np.full(shape, 5000, np.float32), black.valid, no_flow)
    assert blend_soft(wrong, white, 0.75, settings).mean() > 0.99 * 255


def high_frequency(image: np.ndarray) -> float:
    return float(np.abs(cv2.Laplacian(image.astype(np.float32), cv2.CV_32F)).mean())


def test_poisson_fusion_takes_the_detail_of_the_nearer_key(tmp_path):
    frames, _ = moving_sequence("translate")
    # Key b is soft: the plain blend passes some of its blur to every frame.
    keys = {0: style(frames[0]), 8: cv2.GaussianBlur(style(frames[8]), (0, 0), 2)}

    def propagated(poisson: bool) -> dict[int, np.ndarray]:
        settings = PropagationSettings(poisson=poisson)
        return dict(propagate_clip(ListReader(frames), keys, flows_for(tmp_path), settings))

    plain, fused = propagated(False), propagated(True)
    assert np.array_equal(fused[0], keys[0]) and np.array_equal(fused[8], keys[8])
    for t in (1, 3):  # key a's sharp result dominates: its gradients come back
        truth = interior(style(frames[t]))
        assert psnr(interior(fused[t]), truth) > psnr(interior(plain[t]), truth) + 1
        assert high_frequency(interior(fused[t])) > high_frequency(interior(plain[t]))
    # Near key b the detail is key b's: Poisson does not invent sharpness.
    assert high_frequency(interior(fused[7])) < 1.05 * high_frequency(interior(plain[7]))
    # The colours stay the blend's.
    for t in range(1, 8):
        means = fused[t].reshape(-1, 3).mean(0), plain[t].reshape(-1, 3).mean(0)
        np.testing.assert_allclose(*means, atol=1.0)


def faded(frames: list[np.ndarray], levels) -> list[np.ndarray]:
    pairs = zip(frames, levels, strict=True)
    return [np.clip(f * level + 0.5, 0, 255).astype(np.uint8) for f, level in pairs]


def test_brightness_gain_measures_a_fade_and_ignores_noise():
    key_frame = texture(SIZE)
    still = np.zeros((SIZE, SIZE, 2), np.float32)
    valid = np.ones((SIZE, SIZE), bool)
    darker = faded([key_frame], [0.6])[0]
    assert brightness_gain(darker, key_frame, still, valid, 0.0) == pytest.approx(0.6, abs=0.005)
    # Past the tolerance the change is shrunk by it, so a slow drift does not jump.
    assert brightness_gain(darker, key_frame, still, valid, 0.03) == pytest.approx(0.63, abs=0.005)
    assert brightness_gain(faded([key_frame], [1.02])[0], key_frame, still, valid, 0.03) == 1.0
    # Only the pixels the flow explains count: the others may be anything.
    half = valid.copy()
    half[:, SIZE // 2 :] = False
    darker[:, SIZE // 2 :] = 255
    assert brightness_gain(darker, key_frame, still, half, 0.0) == pytest.approx(0.6, abs=0.005)
    # A black key frame cannot say.
    assert brightness_gain(key_frame, np.zeros_like(key_frame), still, valid) == 1.0


def test_the_keys_say_whether_their_style_follows_brightness():
    frame = texture(SIZE)
    dark = faded([frame], [0.3])[0]
    follows = style_follows_brightness
    # A rendering that darkens with its frame, one that does not (paper stays white), and
    # one that darkens half as much.
    assert follows(dark, style(frame) // 3, frame, style(frame)) == pytest.approx(1.0, abs=0.1)
    paper = np.full_like(frame, 240)
    assert follows(dark, paper, frame, paper) == 0.0
    assert follows(frame, paper, dark, paper // 2) == pytest.approx(0.5 / 0.7, abs=0.02)
    # Keys on equally bright frames cannot tell: most styles follow brightness.
    assert follows(frame, paper, frame, paper) == 1.0


@pytest.mark.parametrize("black_end", ["first", "last"])
def test_a_fade_is_propagated_as_a_fade(tmp_path, black_end):
    # Frames fade from black (or to black) while the texture moves; the style follows the
    # frames' brightness, as most renderings do. Each frame's answer is the style of that frame.
    moving, _ = moving_sequence("translate")
    levels = np.linspace(0, 1, 9) if black_end == "first" else np.linspace(1, 0, 9)
    frames = faded(moving, levels)
    keys = {0: style_of_faded(moving[0], levels[0]), 8: style_of_faded(moving[8], levels[8])}
    result = dict(propagate_clip(ListReader(frames), keys, flows_for(tmp_path)))
    without = dict(
        propagate_clip(
            ListReader(frames),
            keys,
            flows_for(tmp_path),
            settings=PropagationSettings(follow_brightness=False),
        )
    )
    fidelity, fidelity_without = [], []
    for t in range(1, 8):
        expected = interior(style_of_faded(moving[t], levels[t]))
        fidelity.append(psnr(interior(result[t]), expected))
        fidelity_without.append(psnr(interior(without[t]), expected))
    assert min(fidelity) > 30, fidelity
    # Without following the brightness the frames near the black key stay black.
    assert np.mean(fidelity) > np.mean(fidelity_without) + 3, (fidelity, fidelity_without)


def style_of_faded(frame: np.ndarray, level: float) -> np.ndarray:
    """A style whose brightness follows the frame's: a colour remapping, then the fade."""
    return faded([np.ascontiguousarray(frame[..., ::-1])], [level])[0]


def test_a_style_that_ignores_brightness_is_carried_as_it_was(tmp_path):
    # Keys that stay as bright whatever the frame (a sketch's white paper): the fade must not
    # darken them, and the result is what it was before brightness was followed at all.
    moving, _ = moving_sequence("translate")
    frames = faded(moving, np.linspace(0.2, 1, 9))
    keys = {0: style(moving[0]), 8: style(moving[8])}
    result = dict(propagate_clip(ListReader(frames), keys, flows_for(tmp_path)))
    unchanged = PropagationSettings(follow_brightness=False)
    before = dict(propagate_clip(ListReader(frames), keys, flows_for(tmp_path), settings=unchanged))
    for t in range(1, 8):
        assert np.abs(result[t].astype(int) - before[t]).max() <= 2, t


def test_reanchoring_takes_the_direct_flow_only_where_it_is_clearly_better():
    frames, _ = moving_sequence("translate", count=2)
    frame, key = frames[1], frames[0]
    truth = np.zeros((SIZE, SIZE, 2), np.float32)
    truth[...] = (-2.0, 1.0)  # frame 1 pixel x came from x + (-2, 1) in frame 0
    drifted = truth + np.float32(3.0)
    settings = PropagationSettings()
    error_drifted = np.full((SIZE, SIZE), 1e4, np.float32)
    chosen, error = _reanchor(frame, key, drifted, error_drifted, truth, settings)
    assert np.allclose(interior(chosen), interior(truth))
    assert interior(error).max() < 1e4
    kept, _ = _reanchor(frame, key, truth, np.zeros((SIZE, SIZE), np.float32), drifted, settings)
    assert np.array_equal(kept, truth)


def test_key_images_of_another_size_are_resized_with_a_warning(tmp_path):
    image = np.zeros((60, 80, 3), np.uint8)
    image[:, :40] = (255, 0, 0)
    cv2.imwrite(str(tmp_path / "k.png"), image[..., ::-1])
    loaded, warning = load_key_image(tmp_path / "k.png", (160, 120))
    assert loaded.shape == (120, 160, 3) and loaded[60, 10, 0] == 255
    assert "80x60" in warning and "resized" in warning and "stretched" not in warning
    _, warning = load_key_image(tmp_path / "k.png", (160, 90))
    assert "stretched" in warning
    same, warning = load_key_image(tmp_path / "k.png", (80, 60))
    assert warning == "" and np.array_equal(same, image)
    smaller, warning = load_key_image(tmp_path / "k.png", (40, 30), painted_at=(80, 60))
    assert warning == "" and smaller.shape == (30, 40, 3)  # painted at the clip's size: expected
    (tmp_path / "bad.png").write_text("not a picture")
    with pytest.raises(ZvsError, match="not an image"):
        load_key_image(tmp_path / "bad.png", (80, 60))
    with pytest.raises(ZvsError, match="cannot read key image"):
        load_key_image(tmp_path / "missing.png", (80, 60))


# -- guided PatchMatch (reference implementation) ----------------------------------------------
def test_patchmatch_recovers_a_translation_from_a_poor_start():
    frames, _ = moving_sequence("translate", count=3)
    source = torch.from_numpy(frames[0].transpose(2, 0, 1).astype(np.float32))
    target = torch.from_numpy(frames[2].transpose(2, 0, 1).astype(np.float32))
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    identity = torch.stack([ys, xs])
    field, error = best_of(target, source, [identity], 5)
    field, error = refine(
        target, source, field, error, PatchMatchSettings(iterations=6, search_radius=8)
    )
    shift = (field - identity)[:, 16:-16, 16:-16].reshape(2, -1)
    # Frame 2 is frame 0 moved by (+4, -2): target pixel (y, x) came from (y + 2, x - 4).
    assert (shift[0] == 2).float().mean() > 0.95 and (shift[1] == -4).float().mean() > 0.95
    assert vote(source, identity, 5).allclose(source)


# -- zvstudio propagate ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def painted_clip(tmp_path_factory):
    """A clip with audio and two 'painted' keys: the style applied to frames 0 and 10."""
    folder = tmp_path_factory.mktemp("painted")
    clip, _, _ = make_clip(folder / "c.mp4", count=16, audio=True, bframes=2)
    with VideoReader(clip) as reader:
        for number in (0, 10):
            cv2.imwrite(str(folder / f"key{number}.png"), style(reader.frame(number))[..., ::-1])
    return folder, clip


def test_propagate_command_writes_every_frame_with_audio(painted_clip, tmp_path, capsys):
    folder, clip = painted_clip
    out = tmp_path / "out.mp4"
    assert (
        main(
            [
                "propagate",
                str(clip),
                "--key",
                f"0={folder / 'key0.png'}",
                "--key",
                f"10={folder / 'key10.png'}",
                "-q",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    info, source = probe(out), probe(clip)
    assert info.frame_count == source.frame_count == 16
    assert info.has_audio and info.duration == pytest.approx(source.duration)
    with VideoReader(clip) as original, VideoReader(out) as result:
        # The numbered test clip changes colour rather than moving, so only ask for a clear
        # gain over holding the nearest key.
        for number, nearest in ((4, 0), (13, 10)):
            expected = style(original.frame(number))
            held = style(original.frame(nearest))
            assert psnr(result.frame(number), expected) > psnr(held, expected) + 2


def test_propagate_command_at_a_smaller_size(painted_clip, tmp_path, capsys):
    folder, clip = painted_clip
    keys = ["--key", f"0={folder / 'key0.png'}", "--key", f"10={folder / 'key10.png'}"]
    out = tmp_path / "frames"
    assert main(["propagate", str(clip), *keys, "--size", "56", "-q", "-o", str(out)]) == 0
    assert "resized" not in capsys.readouterr().err  # keys painted at the clip's size fit
    written = sorted(out.glob("frame_*.png"))
    assert len(written) == 16
    small = (96, 56)  # 192 x 112 at 56 on the short side
    with VideoReader(clip, output_size=small) as original:
        for number, nearest in ((4, 0), (13, 10)):
            result = cv2.imread(str(written[number]))[..., ::-1]
            assert result.shape == (56, 96, 3)
            expected = style(original.frame(number))
            held = style(original.frame(nearest))
            assert psnr(result, expected) > psnr(held, expected) + 2
    assert main(["propagate", str(clip), *keys, "--size", "8", "-q", "-o", str(out)]) != 0
    assert "at least 16 pixels on the short side" in capsys.readouterr().err


def test_propagate_command_to_png_frames(painted_clip, tmp_path):
    folder, clip = painted_clip
    assert (
        main(
            [
                "propagate",
                str(clip),
                "--key",
                f"10={folder / 'key10.png'}",
                "--blend",
                "histogram",
                "--poisson",
                "-q",
                "-o",
                str(tmp_path / "frames"),
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == 16


def test_propagate_command_with_patch_synthesis(painted_clip, tmp_path):
    folder, clip = painted_clip
    frames = tmp_path / "frames"
    keys = ["--key", f"0={folder / 'key0.png'}", "--key", f"10={folder / 'key10.png'}"]
    options = ["--synthesis", "patch", "--patch-size", "3", "--levels", "2", "--iterations", "1"]
    options += ["--guide-weights", "colour=4, temporal=1", "--uniformity", "1000"]
    assert main(["propagate", str(clip), *keys, *options, "-q", "-o", str(frames)]) == 0
    written = sorted(frames.glob("frame_*.png"))
    assert len(written) == 16
    with VideoReader(clip) as original:
        expected = style(original.frame(4))
        held = style(original.frame(0))
    result = cv2.imread(str(written[4]))[..., ::-1]
    assert psnr(result, expected) > psnr(held, expected) + 2


@pytest.mark.parametrize(
    "options, message",
    [
        (["--patch-size", "4"], "--patch-size must be an odd number"),
        (["--levels", "0"], "--levels must be at least 1"),
        (["--guide-weights", "colour=much"], "is not NAME=WEIGHT"),
        (["--guide-weights", "hue=1"], "is not NAME=WEIGHT"),
        (["--uniformity", "-1"], "--uniformity must not be negative"),
    ],
)
def test_propagate_command_refuses_bad_patch_options(
    painted_clip, tmp_path, capsys, options, message
):
    folder, clip = painted_clip
    out = tmp_path / "o.mp4"
    key = ["--key", f"0={folder / 'key0.png'}"]
    assert (
        main(["propagate", str(clip), *key, "--synthesis", "patch", *options, "-o", str(out)]) == 1
    )
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_propagate_command_refuses_a_gpu_that_is_not_there(painted_clip, tmp_path, capsys):
    import torch

    folder, clip = painted_clip
    out = tmp_path / "o.mp4"
    key = ["--key", f"0={folder / 'key0.png'}"]
    gpu = f"cuda:{torch.cuda.device_count()}"  # one past the last
    assert main(["propagate", str(clip), *key, "--device", gpu, "-q", "-o", str(out)]) == 1
    assert "CUDA GPU" in capsys.readouterr().err
    assert not out.exists()


def test_propagate_command_bad_input(painted_clip, tmp_path, capsys):
    folder, clip = painted_clip
    out = str(tmp_path / "o.mp4")
    assert main(["propagate", str(clip), "--key", "seven=x.png", "-o", out]) == 1
    assert "N=IMAGE" in capsys.readouterr().err
    assert main(["propagate", str(clip), "--key", f"40={folder / 'key0.png'}", "-o", out]) == 1
    assert "outside the clip" in capsys.readouterr().err
    assert main(["propagate", str(clip), "--key", f"0={tmp_path / 'none.png'}", "-o", out]) == 1
    assert "cannot read key image" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), cv2.resize(cv2.imread(str(folder / "key0.png")), (96, 56)))
    assert main(["propagate", str(clip), "--key", f"0={small}", "-q", "-o", out]) == 0
    assert "resized" in capsys.readouterr().err


def test_segment_cache_round_trip_and_eviction(tmp_path):
    import os
    import time

    from zvstudio.propagate.cache import SegmentCache

    frames = {n: np.full((8, 8, 3), n * 20, np.uint8) for n in range(3)}
    cache = SegmentCache("clip-a", root=tmp_path, limit=10**9)
    assert cache.load(0, 2, ("k0", "k3")) is None
    cache.store(0, 2, ("k0", "k3"), frames)
    loaded = cache.load(0, 2, ("k0", "k3"))
    assert all(np.array_equal(loaded[n], frames[n]) for n in range(3))
    assert cache.load(0, 2, ("k0", "k3-repainted")) is None  # another key: not this segment
    assert (cache.hits, cache.misses) == (1, 2)
    one_segment = cache.size()
    old = next(p for p in tmp_path.glob("segments/*/*") if p.is_dir())
    os.utime(old, (time.time() - 100, time.time() - 100))
    small = SegmentCache("clip-b", root=tmp_path, limit=one_segment)
    small.store(3, 5, ("k3", "k6"), {n + 3: image for n, image in frames.items()})
    assert small.load(3, 5, ("k3", "k6")) is not None
    assert cache.load(0, 2, ("k0", "k3")) is None  # the older segment was evicted
    assert not [p for p in tmp_path.rglob("*") if "partial" in p.name]


class NoFlowThreads:
    """A flow pool that estimates nothing up front: each flow is estimated when asked for."""

    def submit(self, function, *args):
        from concurrent.futures import Future

        done = Future()
        done.set_result(None)
        return done


def frames_only(reader, span, flows):
    from zvstudio.propagate.clip import _SegmentFrames

    return _SegmentFrames(reader, span, flows, reanchor=True, pool=NoFlowThreads())


def test_the_two_directions_run_at_once_and_give_the_sequential_result(tmp_path):
    import threading

    from zvstudio.propagate.clip import _both_directions
    from zvstudio.propagate.segment import carry_key

    frames, _ = moving_sequence("translate")
    keys = {0: style(frames[0]), 8: style(frames[8])}
    segment = frames_only(ListReader(frames), (0, 7, (0, 8)), flows_for(tmp_path))
    threads, flow = set(), segment.flow

    def recording_flow(i, j):
        threads.add(threading.current_thread().name)
        return flow(i, j)

    segment.flow = recording_flow
    inner = list(range(1, 8))
    settings = PropagationSettings()
    forward, backward = _both_directions(
        segment, 0, 8, keys, ([], inner, []), settings, None, NUMPY
    )
    assert len(threads) == 2  # the backward chain ran in its own thread
    alone = dict(carry_key(segment.frames, 8, keys[8], inner[::-1], flow, settings))
    assert sorted(forward) == sorted(backward) == inner
    for t in inner:
        assert np.array_equal(backward[t].image, alone[t].image)
        assert np.array_equal(backward[t].error, alone[t].error)


def test_a_failing_direction_stops_the_other(tmp_path):
    import threading

    from zvstudio.propagate.clip import _both_directions

    frames, _ = moving_sequence("translate", count=30)
    keys = {0: style(frames[0]), 29: style(frames[29])}
    segment = frames_only(ListReader(frames), (0, 28, (0, 29)), flows_for(tmp_path))
    backward_started, asked, flow = threading.Event(), [], segment.flow

    def failing_flow(i, j):
        if threading.current_thread().name.startswith("zvstudio-backward"):
            asked.append(min(i, j))
            backward_started.set()
        elif i == 2:  # the forward chain's second frame
            backward_started.wait(5)
            raise RuntimeError("flow failed")
        return flow(i, j)

    segment.flow = failing_flow
    inner = list(range(1, 29))
    with pytest.raises(RuntimeError, match="flow failed"):
        _both_directions(segment, 0, 29, keys, ([], inner, []), PropagationSettings(), None, NUMPY)
    # The backward chain stopped within a few frames instead of carrying its key all the way.
    assert asked and min(asked) > 20


def test_pausing_holds_both_directions(tmp_path):
    import threading

    from zvstudio.propagate.clip import _both_directions

    frames, _ = moving_sequence("translate")
    keys = {0: style(frames[0]), 8: style(frames[8])}
    segment = frames_only(ListReader(frames), (0, 7, (0, 8)), flows_for(tmp_path))
    token = CancelToken()
    token.pause()
    outcome = []

    def run():
        try:
            _both_directions(
                segment,
                0,
                8,
                keys,
                ([], list(range(1, 8)), []),
                PropagationSettings(),
                token,
                NUMPY,
            )
        except RenderCancelled as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(0.5)
    assert worker.is_alive() and not outcome  # held at the first frame
    token.cancel()
    worker.join(5)
    assert not worker.is_alive() and "cancelled by the user" in str(outcome[0])
