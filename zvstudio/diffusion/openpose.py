"""The OpenPose body annotator, from the user's own `body_pose_model.pth` (lllyasviel's
Annotators: CMU's COCO 18-keypoint body model converted to PyTorch), for openpose ControlNets.

No library ships this network apart from annotator packages that download their weights, so it
is written here from its checkpoint's layout: VGG-19's first ten 3x3 convolutions (2x2 max-pools
after conv1_2, conv2_2 and conv3_4) and two more, to 256 and 128 channels, give features at 1/8
size; six stages of two branches then predict 38 part affinity fields (PAFs, branch L1: an x, y
vector field along each of 19 limbs) and 19 heatmaps (branch L2: 18 keypoints and the
background). Each stage after the first reads the previous one's maps beside the features
(38 + 19 + 128 = 185 channels). The file's keys are the layers' names (`conv1_1.weight`,
`conv5_1_CPM_L1.weight`, `Mconv1_stage2_L1.weight`, ...), which are the module's own.

The skeletons follow the reference implementation (CMU's, via Hzzone's pytorch-openpose, as in
ControlNet's annotator and controlnet_aux) that ControlNet's openpose models were trained on:
the frame in BGR at 184 rows (one scale, half the 368-pixel box), the maps back at the frame's
size, keypoints at the maxima of the smoothed heatmaps, limbs scored along the PAFs and
connected greedily, people gathered limb by limb, and their skeletons drawn in OpenPose's
colours on black. The file is read as tensors only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import cv2
import numpy as np

from zvstudio.diffusion.annotator_weights import (
    COMFYUI_ANNOTATORS,
    CheckpointAnnotator,
    a1111_annotators,
    find_weights_file,
)

FILE_NAMES = ("body_pose_model.pth", "body_pose_model.safetensors")
INSTALL_LOCATIONS = (a1111_annotators("openpose"), COMFYUI_ANNOTATORS)

# The network. Backbone layers: (name, channels in, channels out, kernel size).
BACKBONE = (
    ("conv1_1", 3, 64, 3),
    ("conv1_2", 64, 64, 3),
    ("conv2_1", 64, 128, 3),
    ("conv2_2", 128, 128, 3),
    ("conv3_1", 128, 256, 3),
    ("conv3_2", 256, 256, 3),
    ("conv3_3", 256, 256, 3),
    ("conv3_4", 256, 256, 3),
    ("conv4_1", 256, 512, 3),
    ("conv4_2", 512, 512, 3),
    ("conv4_3_CPM", 512, 256, 3),
    ("conv4_4_CPM", 256, 128, 3),
)
POOLED_AFTER = ("conv1_2", "conv2_2", "conv3_4")
FEATURES = 128
PARTS = 18  # COCO order: nose, neck, right/left shoulder-elbow-wrist, right/left hip-knee-ankle,
# right eye, left eye, right ear, left ear
PAF_CHANNELS = 38
HEATMAP_CHANNELS = PARTS + 1  # the last is the background
STAGES = 6

# The input: the frame scaled to `scale` x 368 rows for each scale, the maps averaged.
BOX_SIZE = 368
DEFAULT_SCALES = (0.5,)
STRIDE = 8
PAD_VALUE = 128

# Post-processing, as the reference.
HEATMAP_SIGMA = 3.0
PEAK_THRESHOLD = 0.1
PAF_THRESHOLD = 0.05
PAF_SAMPLES = 10
MIN_ALIGNED = 0.8  # the share of samples along the PAF for a limb
MIN_PARTS = 4
MIN_MEAN_SCORE = 0.4
# Limbs as (part A, part B), and the PAF channels (x, y) of each.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
    (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)  # fmt: skip
LIMB_PAFS = (
    (12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7),
    (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27),
)  # fmt: skip
# The last two limbs (shoulder to ear) only join parts of people found by the others: they
# start no person and are not drawn.
MAIN_LIMBS = 17

# Drawing: OpenPose's colours (RGB) of the keypoints, and of the limbs (the first 17).
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
LIMB_ALPHA = 0.6
STICK_WIDTH = 4
KEYPOINT_RADIUS = 4


def find_openpose_weights(folders: Iterable[Path] | None = None) -> Path | None:
    """The first OpenPose body checkpoint in the model folders or the Hugging Face cache, or
    None."""
    return find_weights_file(FILE_NAMES, INSTALL_LOCATIONS, folders)


def branch_layers(stage: int, branch: int) -> list[tuple[str, int, int, int]]:
    """(name, channels in, channels out, kernel size) of stage `stage`'s (1-6) branch `branch`
    (1: PAFs, 2: heatmaps)."""
    out = PAF_CHANNELS if branch == 1 else HEATMAP_CHANNELS
    if stage == 1:
        names = [f"conv5_{i}_CPM_L{branch}" for i in range(1, 6)]
        shapes = [(FEATURES, 128, 3)] * 3 + [(128, 512, 1), (512, out, 1)]
    else:
        names = [f"Mconv{i}_stage{stage}_L{branch}" for i in range(1, 8)]
        stacked = PAF_CHANNELS + HEATMAP_CHANNELS + FEATURES
        shapes = [(stacked, 128, 7)] + [(128, 128, 7)] * 4 + [(128, 128, 1), (128, out, 1)]
    return [(name, *shape) for name, shape in zip(names, shapes, strict=True)]


def build_body_model():
    """The network, randomly initialised (load a state dict into it). Each convolution is an
    attribute named as in the checkpoint, so that its state dict loads as it is."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    stages = [(branch_layers(stage, 1), branch_layers(stage, 2)) for stage in range(1, STAGES + 1)]

    class BodyPose(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, channels_in, channels_out, kernel in chain(BACKBONE, *chain(*stages)):
                conv = nn.Conv2d(channels_in, channels_out, kernel, padding=kernel // 2)
                self.add_module(name, conv)

        def run(self, x, layers, relu_last: bool):
            for index, (name, *_) in enumerate(layers):
                x = getattr(self, name)(x)
                if relu_last or index < len(layers) - 1:
                    x = F.relu(x)
                if name in POOLED_AFTER:
                    x = F.max_pool2d(x, 2, 2)
            return x

        def forward(self, bgr):
            features = x = self.run(bgr, BACKBONE, relu_last=True)
            for stage, (paf_layers, heatmap_layers) in enumerate(stages, start=1):
                pafs = self.run(x, paf_layers, relu_last=False)
                # The reference's list of layers without a ReLU names stage 6's PAF layer
                # twice and misses its heatmap layer: its final heatmaps are rectified, and
                # the skeletons ControlNet learnt came from those.
                heatmaps = self.run(x, heatmap_layers, relu_last=stage == STAGES)
                x = torch.cat([pafs, heatmaps, features], dim=1)
            return pafs, heatmaps

    return BodyPose()


def find_peaks(heatmaps: np.ndarray) -> list[np.ndarray]:
    """Per keypoint, its candidates as rows of x, y, score: the pixels of the smoothed heatmap
    above the threshold and not below their 4 neighbours, scored by the heatmap itself (H x W x
    18 or more channels). Rows are in raster order."""
    from scipy.ndimage import gaussian_filter

    maps = np.asarray(heatmaps[..., :PARTS], dtype=np.float64)
    smooth = gaussian_filter(maps, sigma=(HEATMAP_SIGMA, HEATMAP_SIGMA, 0))
    around = np.pad(smooth, ((1, 1), (1, 1), (0, 0)))  # 0 beyond the border
    is_peak = (
        (smooth > PEAK_THRESHOLD)
        & (smooth >= around[:-2, 1:-1])
        & (smooth >= around[2:, 1:-1])
        & (smooth >= around[1:-1, :-2])
        & (smooth >= around[1:-1, 2:])
    )
    peaks = []
    for part in range(PARTS):
        ys, xs = np.nonzero(is_peak[..., part])
        peaks.append(np.stack([xs, ys, maps[ys, xs, part]], axis=1).astype(np.float64))
    return peaks


def connect_limbs(
    peaks: Sequence[np.ndarray], pafs: np.ndarray, image_height: int
) -> list[list[tuple[int, int, float]]]:
    """Per limb, its connections as (index of part A's peak, of part B's, score): see
    `connect_peaks`. `pafs` is H x W x 38."""
    return [
        connect_peaks(peaks[a], peaks[b], pafs[..., list(channels)], image_height)
        for (a, b), channels in zip(LIMBS, LIMB_PAFS, strict=True)
    ]


def connect_peaks(
    starts: np.ndarray, ends: np.ndarray, field: np.ndarray, image_height: int
) -> list[tuple[int, int, float]]:
    """The (start index, end index, score) pairs of one limb. A pair's score is the mean of the
    limb's PAF (`field`, H x W x 2) along the segment at evenly spaced samples, less a penalty
    for segments longer than half the image's height. Pairs aligned with the field at most
    samples and of positive score are taken, best first, each peak at most once."""
    if not len(starts) or not len(ends):
        return []
    a, b = starts[:, None, :2], ends[None, :, :2]
    vector = b - a  # (starts, ends, 2)
    length = np.maximum(np.linalg.norm(vector, axis=-1), 1e-3)
    steps = np.linspace(0, 1, PAF_SAMPLES)[:, None]
    samples = np.rint(a[..., None, :] + steps * vector[..., None, :]).astype(int)
    along = field[samples[..., 1], samples[..., 0]]  # (starts, ends, samples, 2)
    alignment = np.einsum("abkc,abc->abk", along, vector / length[..., None])
    score = alignment.mean(axis=-1) + np.minimum(0.5 * image_height / length - 1, 0)
    aligned = (alignment > PAF_THRESHOLD).sum(axis=-1) > MIN_ALIGNED * PAF_SAMPLES
    good = aligned & (score > 0)
    pairs = np.argwhere(good)[np.argsort(-score[good], kind="stable")]  # ties: raster order
    connections: list[tuple[int, int, float]] = []
    used_starts, used_ends = set(), set()
    for i, j in pairs.tolist():
        if i in used_starts or j in used_ends:
            continue
        connections.append((i, j, float(score[i, j])))
        used_starts.add(i)
        used_ends.add(j)
        if len(connections) == min(len(starts), len(ends)):
            break
    return connections


@dataclass(eq=False)
class _Person:
    parts: np.ndarray  # the peak index of each keypoint, -1 where missing
    score: float
    count: int  # the reference's part count (what it filters people on)


def assemble_people(
    peaks: Sequence[np.ndarray], connections: Sequence[Sequence[tuple[int, int, float]]]
) -> np.ndarray:
    """The people as rows of peak indices per keypoint (-1: missing), from each limb's
    connections in turn: a connection extends the person holding one of its ends, joins two
    people holding one end each (when they share no keypoint) or starts a person. People with
    fewer than 4 keypoints or a low mean score (keypoints' and connections') are left out."""
    people: list[_Person] = []
    for limb, ((a, b), links) in enumerate(zip(LIMBS, connections, strict=True)):
        for i, j, score in links:
            # The reference keeps two (more only arise in unusual crossings; it fails there).
            owners = [p for p in people if p.parts[a] == i or p.parts[b] == j][:2]
            if len(owners) == 2 and not np.any((owners[0].parts >= 0) & (owners[1].parts >= 0)):
                first, second = owners
                first.parts = np.maximum(first.parts, second.parts)
                first.score += second.score + score
                first.count += second.count
                people.remove(second)
            elif owners:
                person = owners[0]
                if len(owners) == 2 or person.parts[b] != j:
                    person.parts[b] = j
                    person.count += 1
                    person.score += peaks[b][j, 2] + score
            elif limb < MAIN_LIMBS:
                parts = np.full(PARTS, -1)
                parts[[a, b]] = i, j
                people.append(_Person(parts, peaks[a][i, 2] + peaks[b][j, 2] + score, 2))
    kept = [p.parts for p in people if p.count >= MIN_PARTS and p.score / p.count >= MIN_MEAN_SCORE]
    return np.array(kept, dtype=int).reshape(-1, PARTS)


def detect_people(heatmaps: np.ndarray, pafs: np.ndarray) -> np.ndarray:
    """The people in a frame's heatmaps (H x W x 19) and PAFs (H x W x 38): their keypoints'
    x, y (people x 18 x 2), NaN where missing."""
    peaks = find_peaks(heatmaps)
    people = assemble_people(peaks, connect_limbs(peaks, pafs, heatmaps.shape[0]))
    keypoints = np.full((len(people), PARTS, 2), np.nan)
    for part in range(PARTS):
        found = people[:, part] >= 0
        keypoints[found, part] = peaks[part][people[found, part], :2]
    return keypoints


def draw_bodypose(canvas: np.ndarray, people: np.ndarray) -> np.ndarray:
    """`canvas` (RGB uint8, drawn on in place) with the people's skeletons (keypoints x, y as
    from `detect_people`) as OpenPose draws them: the 17 limbs as ellipses 2 x 4 pixels wide
    in their colours at 60%, then the keypoints as discs of radius 4 in theirs."""
    # The reference dims the whole canvas after drawing the limbs on black: the same.
    dimmed = (np.array(COLORS) * LIMB_ALPHA).astype(np.uint8).tolist()
    for limb, (a, b) in enumerate(LIMBS[:MAIN_LIMBS]):
        for keypoints in people:
            if np.isnan(keypoints[[a, b]]).any():
                continue
            (x0, y0), (x1, y1) = keypoints[[a, b]]
            center = (int((x0 + x1) / 2), int((y0 + y1) / 2))
            length = math.sqrt((x0 - x1) ** 2 + (y0 - y1) ** 2)
            angle = int(math.degrees(math.atan2(y0 - y1, x0 - x1)))
            polygon = cv2.ellipse2Poly(center, (int(length / 2), STICK_WIDTH), angle, 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, dimmed[limb])
    for part, color in enumerate(COLORS):
        for x, y in people[:, part]:
            if not (np.isnan(x) or np.isnan(y)):
                cv2.circle(canvas, (int(x), int(y)), KEYPOINT_RADIUS, color, thickness=-1)
    return canvas


class OpenposeAnnotator(CheckpointAnnotator):
    """annotate(rgb) -> the people's body skeletons in OpenPose's colours on black, RGB uint8,
    the frame's size. The network runs at each of `scales` x 368 rows (the reference: one
    scale, 184 rows, whatever the frame's size) and its maps are averaged."""

    kind = "body pose (OpenPose)"
    expected = "lllyasviel's body_pose_model.pth"

    def __init__(self, weights: Path, scales: Sequence[float] = DEFAULT_SCALES) -> None:
        super().__init__(weights)
        self.scales = tuple(scales)

    @property
    def identity(self) -> str:
        identity = super().identity
        return identity if self.scales == DEFAULT_SCALES else f"{identity}:{self.scales}"

    def build(self):
        return build_body_model()

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        people = detect_people(*self.maps(rgb))
        return draw_bodypose(np.zeros((*rgb.shape[:2], 3), np.uint8), people)

    def maps(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The heatmaps (H x W x 19) and PAFs (H x W x 38) of a frame, at its size."""
        import torch

        model = self._load()
        height, width = rgb.shape[:2]
        bgr = np.ascontiguousarray(rgb[..., 2::-1])  # the network was trained on BGR (Caffe)
        heatmaps = np.zeros((height, width, HEATMAP_CHANNELS))
        pafs = np.zeros((height, width, PAF_CHANNELS))
        for scale in self.scales:
            factor = scale * BOX_SIZE / height
            image = cv2.resize(bgr, (0, 0), fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
            size = image.shape[:2]
            # Padded at the bottom and right to the network's stride, so that its maps line up.
            padding = ((0, -size[0] % STRIDE), (0, -size[1] % STRIDE), (0, 0))
            image = np.pad(image, padding, constant_values=PAD_VALUE)
            tensor = torch.from_numpy(image.astype(np.float32) / 256 - 0.5).permute(2, 0, 1)
            with torch.no_grad():
                scale_pafs, scale_heatmaps = model(tensor[None])
            heatmaps += _to_frame(scale_heatmaps, size, (height, width)) / len(self.scales)
            pafs += _to_frame(scale_pafs, size, (height, width)) / len(self.scales)
        return heatmaps, pafs


def _to_frame(maps, size: tuple[int, int], frame_size: tuple[int, int]) -> np.ndarray:
    """The network's maps (1 x C x h x w, at 1/8 of the padded input) as H x W x C at the
    frame's size: upsampled by the stride, the padding cut, resized (bicubic, as the
    reference)."""
    array = np.ascontiguousarray(maps[0].permute(1, 2, 0).numpy())
    array = cv2.resize(array, (0, 0), fx=STRIDE, fy=STRIDE, interpolation=cv2.INTER_CUBIC)
    array = np.ascontiguousarray(array[: size[0], : size[1]])
    return cv2.resize(array, frame_size[::-1], interpolation=cv2.INTER_CUBIC)
