"""The OpenPose body annotator: the network in lllyasviel's checkpoint layout (written by the
test with random or chosen weights, read as tensors only), and the post-processing from
heatmaps and part affinity fields (PAFs) painted by the test to skeletons."""

from __future__ import annotations

import re
from itertools import chain

import numpy as np
import pytest
import torch
from helpers import assert_annotator_found, save_state_dict, textured_frame
from scipy.ndimage import gaussian_filter

from zvstudio.diffusion import openpose
from zvstudio.diffusion.openpose import (
    COLORS,
    FILE_NAMES,
    LIMB_PAFS,
    LIMBS,
    OpenposeAnnotator,
    assemble_people,
    build_body_model,
    connect_limbs,
    connect_peaks,
    detect_people,
    draw_bodypose,
    find_openpose_weights,
    find_peaks,
)
from zvstudio.errors import ZvsError

# One person's 18 keypoints (x, y) in a 96 x 160 frame, in COCO order: nose, neck, right
# shoulder, elbow, wrist, left shoulder, elbow, wrist, right hip, knee, ankle, left hip, knee,
# ankle, right eye, left eye, right ear, left ear.
SKELETON = {
    0: (30, 12), 1: (30, 22), 2: (22, 22), 3: (20, 34), 4: (20, 46), 5: (38, 22),
    6: (40, 34), 7: (40, 46), 8: (25, 50), 9: (25, 66), 10: (25, 82), 11: (35, 50),
    12: (35, 66), 13: (35, 82), 14: (27, 9), 15: (33, 9), 16: (24, 12), 17: (36, 12),
}  # fmt: skip
SHAPE = (96, 160)


def shifted(person: dict, dx: int) -> dict:
    return {part: (x + dx, y) for part, (x, y) in person.items()}


def paint(people: list[dict], shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps and PAFs as the network would give them for `people` ({part: (x, y)}): a
    Gaussian blob at each keypoint, a unit field along each limb within 1.5 pixels of it."""
    height, width = shape
    heatmaps, pafs = np.zeros((height, width, 19)), np.zeros((height, width, 38))
    ys, xs = np.mgrid[:height, :width]
    for person in people:
        for part, (x, y) in person.items():
            heatmaps[..., part] += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.5**2))
        for (a, b), (cx, cy) in zip(LIMBS, LIMB_PAFS, strict=True):
            if a in person and b in person:
                start, end = np.array(person[a], float), np.array(person[b], float)
                length = np.linalg.norm(end - start)
                ux, uy = (end - start) / length
                along = (xs - start[0]) * ux + (ys - start[1]) * uy
                across = np.abs((ys - start[1]) * ux - (xs - start[0]) * uy)
                on = (along >= -1) & (along <= length + 1) & (across <= 1.5)
                pafs[on, cx], pafs[on, cy] = ux, uy
    return heatmaps, pafs


def frame(height: int = 48, width: int = 64) -> np.ndarray:
    return textured_frame(height, width)


def write_checkpoint(path, state=None):
    torch.manual_seed(0)
    return save_state_dict(path, build_body_model().state_dict() if state is None else state)


def last_layers(pafs_bias: float, heatmaps_bias: float) -> dict:
    """A state dict whose final PAFs and heatmaps are constant: zero last convolutions of
    stage 6 with the given biases."""
    state = build_body_model().state_dict()
    for branch, bias in (("L1", pafs_bias), ("L2", heatmaps_bias)):
        state[f"Mconv7_stage6_{branch}.weight"].zero_()
        state[f"Mconv7_stage6_{branch}.bias"].fill_(bias)
    return state


def test_the_layout_is_lllyasviels(one_torch_thread):
    model = build_body_model()
    keys = model.state_dict()
    assert keys["conv1_1.weight"].shape == (64, 3, 3, 3)
    assert keys["conv4_4_CPM.weight"].shape == (128, 256, 3, 3)
    assert keys["conv5_4_CPM_L1.weight"].shape == (512, 128, 1, 1)
    assert keys["conv5_5_CPM_L1.weight"].shape == (38, 512, 1, 1)
    assert keys["conv5_5_CPM_L2.weight"].shape == (19, 512, 1, 1)
    assert keys["Mconv1_stage2_L1.weight"].shape == (128, 128 + 38 + 19, 7, 7)
    assert keys["Mconv5_stage6_L2.weight"].shape == (128, 128, 7, 7)
    assert keys["Mconv7_stage6_L2.bias"].shape == (19,)
    # Weight and bias of 12 backbone convolutions, 2 x 5 in stage 1, 2 x 7 in stages 2-6.
    assert len(keys) == 2 * (12 + 2 * 5 + 5 * 2 * 7)
    with torch.no_grad():
        pafs, heatmaps = model(torch.zeros(1, 3, 16, 24))
    assert pafs.shape == (1, 38, 2, 3) and heatmaps.shape == (1, 19, 2, 3)
    # Each of the 19 limbs has its own x, y fields; neck to right shoulder is CMU's 12-13.
    assert sorted(chain(*LIMB_PAFS)) == list(range(38))
    assert LIMBS[0] == (1, 2) and LIMB_PAFS[0] == (12, 13) and len(LIMBS) == 19


def test_peaks_are_the_smoothed_maxima_above_the_threshold():
    heatmaps, _ = paint([SKELETON, shifted(SKELETON, 60)])
    peaks = find_peaks(heatmaps)
    assert len(peaks) == 18
    for part, (x, y) in SKELETON.items():
        # Raster order: the two people's keypoints are on one row, the left one first.
        assert peaks[part][:, :2].tolist() == [[x, y], [x + 60, y]]
        assert np.allclose(peaks[part][:, 2], 1.0, atol=1e-3)  # the heatmap's own value
    # Blobs closer than the smoothing's reach are one peak, scored by the heatmap itself.
    close = np.zeros((20, 30, 19))
    close[10, [10, 16], 0] = 1.0
    close[..., 0] = gaussian_filter(close[..., 0], 1.5) * 2 * np.pi * 1.5**2
    (merged, *_) = find_peaks(close)
    assert merged[:, :2].tolist() == [[13, 10]]
    assert merged[0, 2] == close[10, 13, 0] == pytest.approx(2 * np.exp(-2), rel=1e-3)
    # A plateau is a peak everywhere above the threshold, nowhere below it.
    assert sum(map(len, find_peaks(np.full((4, 5, 19), 0.11)))) == 18 * 20
    assert sum(map(len, find_peaks(np.full((4, 5, 19), 0.09)))) == 0


def test_limbs_connect_each_persons_own_keypoints():
    heatmaps, pafs = paint([SKELETON, shifted(SKELETON, 60)])
    connections = connect_limbs(find_peaks(heatmaps), pafs, SHAPE[0])
    assert len(connections) == 19
    for links in connections:
        assert sorted((i, j) for i, j, _ in links) == [(0, 0), (1, 1)]
        assert all(score == pytest.approx(1.0) for _, _, score in links)


def test_a_limb_scores_along_its_field_less_a_penalty_for_length():
    # Two starts, one end, a field at half strength along x: the aligned start wins, the
    # other (at 90 degrees) is not connected; a limb longer than half the image's height
    # costs up to 1.
    starts = np.array([[10.0, 10.0, 1.0], [50.0, 30.0, 1.0]])
    ends = np.array([[50.0, 10.0, 1.0]])
    field = np.zeros((60, 60, 2))
    field[..., 0] = 0.5
    assert connect_peaks(starts, ends, field, image_height=80) == [(0, 0, 0.5)]
    # Length 40, height 60: penalty 0.5 * 60 / 40 - 1 = -0.25.
    assert connect_peaks(starts, ends, field, image_height=60) == [(0, 0, 0.25)]
    assert connect_peaks(starts, ends, field, image_height=20) == []
    assert connect_peaks(starts[:0], ends, field, image_height=80) == []


def test_limbs_are_connected_best_first_each_peak_once():
    # A field along x: the straighter a pair, the better. Start 0 to end 0 is the best pair;
    # start 1 to end 0 comes next but end 0 is taken: start 1 goes to end 1.
    field = np.zeros((60, 60, 2))
    field[..., 0] = 0.5
    starts = np.array([[10.0, 10.0, 1.0], [10.0, 20.0, 1.0]])
    ends = np.array([[50.0, 10.0, 1.0], [50.0, 40.0, 1.0]])
    links = connect_peaks(starts, ends, field, image_height=200)
    assert [(i, j) for i, j, _ in links] == [(0, 0), (1, 1)]
    assert [score for *_, score in links] == pytest.approx([0.5, 0.5 * 40 / np.hypot(40, 20)])


def test_two_people_apart_are_two_people_and_fragments_are_dropped():
    fragment = {0: (140, 12), 1: (140, 22), 2: (132, 22)}  # 3 keypoints: fewer than 4
    people = detect_people(*paint([SKELETON, shifted(SKELETON, 60), fragment]))
    assert people.shape == (2, 18, 2)
    left, right = sorted(people, key=lambda p: p[1, 0])
    assert left.tolist() == [list(SKELETON[part]) for part in range(18)]
    assert right.tolist() == [list(shifted(SKELETON, 60)[part]) for part in range(18)]


def test_without_a_neck_the_shoulder_ear_limbs_join_the_arms_to_the_head():
    # Arms and head start three people; the shoulder-ear limbs merge them into one. The legs
    # join nothing (hips connect to the neck only) and have 3 keypoints each: dropped.
    person = {part: xy for part, xy in SKELETON.items() if part != 1}
    people = detect_people(*paint([person]))
    assert people.shape == (1, 18, 2)
    found = {part for part in range(18) if not np.isnan(people[0, part]).any()}
    assert found == {0, 2, 3, 4, 5, 6, 7, 14, 15, 16, 17}
    assert all(people[0, part].tolist() == list(person[part]) for part in found)


@pytest.mark.parametrize(("score", "kept"), [(1.0, True), (0.1, False)])
def test_people_of_low_mean_score_are_dropped(score, kept):
    # Neck, right shoulder, elbow and wrist: 4 keypoints, connected by limbs 0, 2 and 3.
    peaks = [np.array([[part, part, score]]) if 1 <= part <= 4 else np.zeros((0, 3))
             for part in range(18)]  # fmt: skip
    connections = [[(0, 0, score)] if limb in (0, 2, 3) else [] for limb in range(19)]
    people = assemble_people(peaks, connections)
    expected = [[0 if 1 <= part <= 4 else -1 for part in range(18)]] if kept else []
    assert people.tolist() == expected


def test_skeletons_are_drawn_in_openposes_colours():
    # Neck and right shoulder: limb 0 between them, the elbow is missing (no limb 2).
    people = np.full((1, 18, 2), np.nan)
    people[0, 1], people[0, 2] = (20, 20), (40, 20)
    canvas = draw_bodypose(np.zeros((48, 64, 3), np.uint8), people)
    limb = (np.array(COLORS[0]) * 0.6).astype(np.uint8)
    assert canvas[20, 30].tolist() == limb.tolist() == [153, 0, 0]
    assert canvas[23, 30].tolist() == limb.tolist()  # the ellipse is 4 pixels wide each side
    assert canvas[20, 20].tolist() == list(COLORS[1])  # keypoints at full strength
    assert canvas[20, 43].tolist() == list(COLORS[2])  # radius 4
    assert not canvas[28:].any() and not canvas[:, :14].any() and not canvas[:, 46:].any()
    assert not canvas[20 + 6, 30].any()


def test_the_network_sees_the_bgr_frame_at_184_rows_and_its_maps_come_back_averaged(
    tmp_path, monkeypatch
):
    seen = []

    class Fake(torch.nn.Module):
        # Constant maps, halved at other sizes than 184 rows.
        def forward(self, bgr):
            seen.append(bgr)
            size = (1, 1, bgr.shape[2] // 8, bgr.shape[3] // 8)
            factor = 1.0 if bgr.shape[2] == 184 else 0.5
            pafs = torch.arange(38.0).view(1, 38, 1, 1) / 100 * factor
            heatmaps = torch.arange(19.0).view(1, 19, 1, 1) / 100 + 0.5
            return pafs * torch.ones(size), heatmaps * factor * torch.ones(size)

    monkeypatch.setattr(openpose, "build_body_model", Fake)
    weights = write_checkpoint(tmp_path / "body_pose_model.pth", {})
    rgb = np.full((48, 64, 3), (200, 100, 50), np.uint8)
    heatmaps, pafs = OpenposeAnnotator(weights).maps(rgb)
    (bgr,) = seen
    # 48 rows scaled to 184 (64 columns to 245), padded to a multiple of 8 with 128.
    assert bgr.shape == (1, 3, 184, 248)
    assert torch.allclose(
        bgr[0, :, :, :245].mean(dim=(1, 2)), torch.tensor([50, 100, 200]) / 256 - 0.5
    )
    assert torch.all(bgr[0, :, :, 245:] == 0)
    assert heatmaps.shape == (48, 64, 19) and pafs.shape == (48, 64, 38)
    assert np.allclose(heatmaps, np.arange(19) / 100 + 0.5)
    assert np.allclose(pafs, np.arange(38) / 100)
    # Two scales (184 and 92 rows): their maps are averaged.
    heatmaps, pafs = OpenposeAnnotator(weights, scales=(0.5, 0.25)).maps(rgb)
    assert [s.shape[2] for s in seen[1:]] == [184, 96]
    assert np.allclose(heatmaps, (np.arange(19) / 100 + 0.5) * 0.75)
    assert np.allclose(pafs, np.arange(38) / 100 * 0.75)


def test_the_networks_last_heatmaps_are_rectified(tmp_path, one_torch_thread):
    # As in the reference: a ReLU after stage 6's heatmaps (not after its PAFs).
    weights = write_checkpoint(tmp_path / "body_pose_model.pth", last_layers(-0.3, -0.5))
    heatmaps, pafs = OpenposeAnnotator(weights, scales=(0.125,)).maps(frame())
    assert np.all(heatmaps == 0)
    assert np.allclose(pafs, -0.3, atol=1e-5)


def test_heatmaps_below_the_threshold_draw_nothing(tmp_path, one_torch_thread):
    weights = write_checkpoint(tmp_path / "body_pose_model.pth", last_layers(1.0, 0.09))
    image = OpenposeAnnotator(weights, scales=(0.125,))(frame())
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert not image.any()


@pytest.mark.parametrize("name", FILE_NAMES)
def test_a_checkpoint_in_the_model_folder_is_found_and_annotates(tmp_path, name, one_torch_thread):
    models = tmp_path / "models"
    write_checkpoint(models / "annotators" / name)
    found = find_openpose_weights([models])
    assert found == models / "annotators" / name
    assert find_openpose_weights([tmp_path / "none"]) is None
    annotator = OpenposeAnnotator(found, scales=(0.125,))
    image = annotator(frame())
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert OpenposeAnnotator(found).identity == f"{name}:{found.stat().st_size}"
    assert annotator.identity != OpenposeAnnotator(found).identity


def test_a_checkpoint_in_the_model_folder_makes_openpose_available(tmp_path, monkeypatch):
    models = tmp_path / "models"
    weights = write_checkpoint(models / "annotators" / FILE_NAMES[0])
    assert_annotator_found("openpose", models, weights, monkeypatch)


A1111 = "extensions/sd-webui-controlnet/annotator/downloads/openpose"
COMFYUI = "custom_nodes/comfyui_controlnet_aux/ckpts/lllyasviel/Annotators"


@pytest.mark.parametrize(
    ("root", "folder"),
    [
        ("hub", "hub/models--lllyasviel--Annotators/snapshots/x"),
        ("webui/models/Stable-diffusion", f"webui/{A1111}"),
        ("ComfyUI/models", f"ComfyUI/{COMFYUI}"),
    ],
)
def test_the_hf_cache_and_other_apps_installs_are_looked_in(tmp_path, root, folder):
    weights = tmp_path / folder / "body_pose_model.pth"
    weights.parent.mkdir(parents=True)
    weights.touch()
    assert find_openpose_weights([tmp_path / root]) == weights


def test_other_files_are_refused_clearly(tmp_path):
    for state in ({"weight": torch.zeros(3)}, {"conv1_1.weight": torch.zeros(3)}):
        other = write_checkpoint(tmp_path / "body_pose_model.pth", state)
        with pytest.raises(ZvsError, match=re.escape("not a body pose (OpenPose) checkpoint")):
            OpenposeAnnotator(other)(frame())
    objects = tmp_path / "objects" / "body_pose_model.pth"
    objects.parent.mkdir()
    torch.save({"conv1_1.weight": torch.zeros(1), "extra": object()}, objects)
    with pytest.raises(ZvsError, match=re.escape("cannot read the body pose (OpenPose)")):
        OpenposeAnnotator(objects)(frame())
