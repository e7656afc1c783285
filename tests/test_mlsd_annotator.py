"""The M-LSD straight-line annotator: the network in lllyasviel's checkpoint layout (written by
the test with random or chosen weights, read as tensors only), and the decoding of line segments
from tp maps made by the test, and their drawing at the frame's size."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from helpers import assert_annotator_found, save_state_dict, textured_frame

from zvstudio.diffusion import mlsd
from zvstudio.diffusion.annotator_weights import load_checkpoint
from zvstudio.diffusion.lineart import build_lineart
from zvstudio.diffusion.mlsd import (
    FILE_NAMES,
    MlsdAnnotator,
    build_mlsd,
    decode_lines,
    draw_lines,
    find_mlsd_weights,
    network_input,
    network_size,
)
from zvstudio.errors import ZvsError

BACKGROUND = -10.0  # a centre-map logit that scores ~0


def write_checkpoint(path, state=None):
    torch.manual_seed(0)
    return save_state_dict(path, build_mlsd().state_dict() if state is None else state)


def tp_map(height: int, width: int, centres: dict) -> np.ndarray:
    """A 16-channel map with centre logits and displacements (dx0, dy0, dx1, dy1) at the given
    (x, y): {(x, y): (logit, displacements)}."""
    maps = np.zeros((16, height, width), np.float32)
    maps[7] = BACKGROUND
    for (x, y), (logit, displacement) in centres.items():
        maps[7, y, x] = logit
        maps[8:12, y, x] = displacement
    return maps


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_the_layout_is_lllyasviels():
    keys = build_mlsd().state_dict()
    shapes = {
        "backbone.features.0.0.weight": (32, 4, 3, 3),  # RGB and the ones channel
        "backbone.features.0.1.running_var": (32,),
        "backbone.features.1.conv.0.0.weight": (32, 1, 3, 3),  # depthwise, no expansion
        "backbone.features.1.conv.1.weight": (16, 32, 1, 1),
        "backbone.features.2.conv.0.0.weight": (96, 16, 1, 1),  # expanded 6x
        "backbone.features.7.conv.1.0.weight": (192, 1, 3, 3),
        "backbone.features.13.conv.2.weight": (96, 576, 1, 1),
        "backbone.features.13.conv.3.num_batches_tracked": (),
        "block15.conv1.0.weight": (64, 96, 1, 1),  # the deepest features
        "block15.conv2.0.weight": (64, 64, 1, 1),
        "block16.conv1.0.weight": (128, 128, 3, 3),
        "block21.conv2.0.weight": (64, 16, 1, 1),  # the shallowest skip
        "block22.conv2.0.weight": (64, 128, 3, 3),
        "block22.conv2.1.running_mean": (64,),
        "block23.conv1.0.weight": (64, 64, 3, 3),
        "block23.conv3.weight": (16, 64, 1, 1),
        "block23.conv3.bias": (16,),
    }
    assert {key: tuple(keys[key].shape) for key in shapes} == shapes
    # Backbone: the stem (conv, batch norm: 1 + 5 tensors), block 1 (two of those), blocks
    # 2-13 (three); decoder: 8 blocks of two biased convolutions with batch norm, the head's
    # two and a last biased convolution.
    assert len(keys) == 6 + 12 + 12 * 18 + 8 * 2 * 7 + 2 * 7 + 2
    assert not any(key.startswith(("backbone.features.14", "block24")) for key in keys)


def test_the_network_gives_the_16_channel_map_at_half_size(one_torch_thread):
    model = build_mlsd().eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 4, 512, 512)).shape == (1, 16, 256, 256)
        assert model(torch.zeros(1, 4, 64, 96)).shape == (1, 16, 32, 48)


def test_stride_2_convolutions_pad_the_bottom_and_right_as_tensorflow():
    # The stem's kernel reads only its top-left tap: output (0, 0) sees input (0, 0), where
    # PyTorch's symmetric padding would have it see the padding at (-1, -1).
    stem = build_mlsd().backbone.features[0].eval()
    with torch.no_grad():
        stem[0].weight.zero_()
        stem[0].weight[0, 0, 0, 0] = 1.0
        impulse = torch.zeros(1, 4, 8, 8)
        impulse[0, 0, 0, 0] = 5.0  # ReLU6 caps it at 6
        out = stem(impulse)
    assert out.shape == (1, 32, 4, 4)
    assert out[0, 0, 0, 0] == pytest.approx(5.0, rel=1e-4) and out.sum() == out[0, 0, 0, 0]


def test_the_frame_is_resized_by_area_to_512_with_a_ones_channel_all_scaled_to_pm1():
    # The short side becomes 512 and the long side the nearest multiple of 64 (716.8 -> 704).
    image = network_input(np.full((40, 56, 3), (200, 100, 51), np.uint8))
    assert image.shape == (1, 4, 512, 704) and image.dtype == np.float32
    assert network_size(1080, 1920) == (512, 896) and network_size(600, 300) == (1024, 512)
    expected = np.array([200, 100, 51, 1]) / 127.5 - 1  # the ones channel is scaled too
    assert np.allclose(image[0], expected[:, None, None])
    # One column in four lit at 4x the size: area averaging gives a quarter everywhere, where
    # bilinear sampling between columns 1 and 2 of each four would give 0.
    stripes = np.zeros((2048, 2048, 3), np.uint8)
    stripes[:, ::4] = 255
    assert np.allclose(network_input(stripes)[0, :3], 64 / 127.5 - 1)


def test_segments_come_from_the_centres_displacements_best_first():
    maps = tp_map(32, 48, {(30, 20): (2.0, (-2, -2, 2, 2)), (10, 5): (4.0, (-3, 0, 3.5, 0))})
    lines = decode_lines(maps)
    assert lines.tolist() == [[7, 5, 13.5, 5], [28, 18, 32, 22]]
    assert decode_lines(torch.from_numpy(maps)).tolist() == lines.tolist()
    assert decode_lines(maps, topk=1).tolist() == [[7, 5, 13.5, 5]]
    assert decode_lines(tp_map(32, 48, {})).shape == (0, 4)


def test_only_the_local_maximum_of_a_blob_is_a_centre():
    blob = {(x, y): (2.0, (-5, 0, 5, 0)) for x in range(9, 12) for y in range(4, 7)}
    blob[10, 5] = (3.0, (0, -4, 0, 4))
    assert decode_lines(tp_map(16, 24, blob)).tolist() == [[10, 1, 10, 9]]
    # Two pixels apart, each is the maximum of its own 3 x 3: both are kept.
    apart = {(4, 4): (3.0, (0, -2, 0, 2)), (6, 4): (2.5, (-2, 0, 2, 0))}
    assert decode_lines(tp_map(16, 24, apart)).tolist() == [[4, 2, 4, 6], [4, 4, 8, 4]]


def test_low_scores_and_short_segments_are_dropped():
    scores = {
        (3, 3): (logit(0.11), (-2, 0, 2, 0)),
        (9, 3): (logit(0.09), (-2, 0, 2, 0)),
        (15, 3): (logit(0.6), (-2, 0, 2, 0)),
    }
    assert decode_lines(tp_map(16, 24, scores)).tolist() == [[13, 3, 17, 3], [1, 3, 5, 3]]
    assert decode_lines(tp_map(16, 24, scores), score_threshold=0.5).tolist() == [[13, 3, 17, 3]]
    # The length is the whole segment's, start to end (here 4), not from its centre; by
    # default segments down to 0.1 map pixels long are kept.
    lengths = {(3, 3): (3.0, (-2, 0, 2, 0)), (9, 9): (2.0, (-0.03, 0, 0.03, 0))}
    assert len(decode_lines(tp_map(16, 24, lengths))) == 1
    assert len(decode_lines(tp_map(16, 24, lengths), distance_threshold=0.05)) == 2
    assert len(decode_lines(tp_map(16, 24, lengths), distance_threshold=3.9)) == 1
    assert len(decode_lines(tp_map(16, 24, lengths), distance_threshold=4.1)) == 0


def test_broken_maps_draw_nothing():
    maps = tp_map(16, 24, {(3, 3): (3.0, (np.nan, 0, 2, 0)), (9, 9): (3.0, (-np.inf, 0, 2, 0))})
    assert decode_lines(maps).shape == (0, 4)


def test_lines_are_drawn_one_pixel_wide_at_the_frames_size():
    # Map coordinates (256 x 256) scaled to a 90 x 160 frame: x * 160 / 256, y * 90 / 256.
    lines = np.array([[0, 128, 256, 128], [64, 32, 64, 224]], float)
    image = draw_lines(lines, (256, 256), (90, 160))
    assert image.shape == (90, 160, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 2]).all()
    lit = image[..., 0] == 255
    assert lit[45].all()  # y = 45, the whole width (the end is clipped)
    # x = 40, y from 11.25 to 78.75, truncated as the reference: rows 11 to 78.
    assert lit[11:79, 40].all() and not lit[10, 40] and not lit[79, 40]
    assert lit.sum() == 160 + (79 - 11) - 1
    assert set(np.unique(image)) == {0, 255}
    assert not draw_lines(np.zeros((0, 4)), (256, 256), (90, 160)).any()


def test_the_annotator_draws_the_networks_segments_on_the_frame(tmp_path, monkeypatch):
    seen = []

    class Fake(torch.nn.Module):
        # One segment, from (64, 64) to (192, 64) in the 256 x 256 map.
        def forward(self, image):
            seen.append(image)
            maps = tp_map(256, 256, {(128, 64): (3.0, (-64, 0, 64, 0))})
            return torch.from_numpy(maps)[None]

    monkeypatch.setattr(mlsd, "build_mlsd", Fake)
    weights = write_checkpoint(tmp_path / "mlsd_large_512_fp32.pth", {})
    image = MlsdAnnotator(weights)(np.full((90, 160, 3), 128, np.uint8))
    (batch,) = seen
    assert batch.shape == (1, 4, 512, 896)  # the frame's shape is kept
    assert torch.allclose(batch[0, 3], torch.tensor(1 / 127.5 - 1))
    # At 90 x 160: row 64 * 90 / 256 = 22.5 -> 22, columns 40 to 120.
    lit = np.argwhere(image[..., 0] == 255)
    assert image.shape == (90, 160, 3) and len(lit) == 81
    assert set(lit[:, 0]) == {22} and (lit[:, 1].min(), lit[:, 1].max()) == (40, 120)
    assert not MlsdAnnotator(weights, score_threshold=0.96)(np.zeros((90, 160, 3), np.uint8)).any()


def test_random_weights_give_a_frame_sized_grey_image(tmp_path, one_torch_thread):
    image = MlsdAnnotator(write_checkpoint(tmp_path / "mlsd_large_512_fp32.pth"))(
        textured_frame(37, 53)
    )
    assert image.shape == (37, 53, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all()
    assert set(np.unique(image)) <= {0, 255}


def test_a_centre_map_below_the_threshold_draws_nothing(tmp_path, one_torch_thread):
    # A zero last convolution makes the map its biases: centres at sigmoid(-3) = 0.047
    # everywhere, each with a segment 100 map pixels long.
    state = build_mlsd().state_dict()
    state["block23.conv3.weight"].zero_()
    state["block23.conv3.bias"].zero_()
    state["block23.conv3.bias"][7] = -3.0
    state["block23.conv3.bias"][8:12] = torch.tensor([-50.0, 0, 50, 0])
    weights = write_checkpoint(tmp_path / "mlsd_large_512_fp32.safetensors", state)
    image = MlsdAnnotator(weights)(textured_frame(48, 64))
    assert image.shape == (48, 64, 3) and not image.any()
    lines = MlsdAnnotator(weights, score_threshold=0.04)(textured_frame(48, 64))
    assert lines.any() and not lines[..., 0].all()


def test_thresholds_other_than_the_defaults_are_part_of_the_identity(tmp_path):
    weights = write_checkpoint(tmp_path / FILE_NAMES[0])
    identity = MlsdAnnotator(weights).identity
    assert identity == f"{FILE_NAMES[0]}:{weights.stat().st_size}"
    assert MlsdAnnotator(weights, 0.1, 0.1).identity == identity
    others = {MlsdAnnotator(weights, 0.2).identity, MlsdAnnotator(weights, 0.1, 2.0).identity}
    assert identity not in others and len(others) == 2


def test_a_copy_without_batch_norm_counters_loads(tmp_path):
    # safetensors copies (and state dicts without torch's version metadata) may lack them.
    state = {k: v for k, v in build_mlsd().state_dict().items() if "num_batches" not in k}
    weights = write_checkpoint(tmp_path / FILE_NAMES[1], state)
    load_checkpoint(build_mlsd(), weights, MlsdAnnotator.kind, MlsdAnnotator.expected)


A1111 = "extensions/sd-webui-controlnet/annotator/downloads/mlsd"
COMFYUI = "custom_nodes/comfyui_controlnet_aux/ckpts/lllyasviel/Annotators"


@pytest.mark.parametrize(
    ("root", "folder"),
    [
        ("models", "models/annotators"),
        ("models", "models"),
        ("hub", "hub/models--lllyasviel--Annotators/snapshots/0123abcd"),
        ("webui/models/Stable-diffusion", f"webui/{A1111}"),
        ("ComfyUI/models", f"ComfyUI/{COMFYUI}"),
    ],
)
def test_the_weights_are_found_where_users_keep_them(tmp_path, root, folder):
    (tmp_path / root).mkdir(parents=True, exist_ok=True)
    weights = tmp_path / folder / FILE_NAMES[0]
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.touch()
    assert find_mlsd_weights([tmp_path / root]) == weights
    assert find_mlsd_weights([tmp_path / "none"]) is None


def test_the_pth_is_preferred_to_a_safetensors_copy(tmp_path):
    folder = tmp_path / "models" / "annotators"
    folder.mkdir(parents=True)
    (folder / FILE_NAMES[1]).touch()
    assert find_mlsd_weights([tmp_path / "models"]) == folder / FILE_NAMES[1]
    (folder / FILE_NAMES[0]).touch()
    assert find_mlsd_weights([tmp_path / "models"]) == folder / FILE_NAMES[0]


def test_other_files_are_refused_clearly(tmp_path):
    lineart = write_checkpoint(tmp_path / "a" / FILE_NAMES[0], build_lineart().state_dict())
    with pytest.raises(ZvsError, match=re.escape("not a M-LSD annotator checkpoint")) as info:
        MlsdAnnotator(lineart)(textured_frame())
    assert "mlsd_large_512_fp32.pth" in info.value.hint
    state = build_mlsd().state_dict()
    state["block23.conv3.weight"] = torch.zeros(9, 64, 1, 1)  # nine output channels
    wrong_shape = write_checkpoint(tmp_path / "b" / FILE_NAMES[0], state)
    with pytest.raises(ZvsError, match=re.escape("not a M-LSD annotator checkpoint")):
        MlsdAnnotator(wrong_shape)(textured_frame())
    objects = tmp_path / "c" / FILE_NAMES[0]
    objects.parent.mkdir()
    torch.save({"block23.conv3.bias": torch.zeros(16), "extra": object()}, objects)
    with pytest.raises(ZvsError, match=re.escape("cannot read the M-LSD annotator checkpoint")):
        MlsdAnnotator(objects)(textured_frame())


def test_a_checkpoint_in_the_model_folder_makes_mlsd_available(tmp_path, monkeypatch):
    from zvstudio.diffusion.controlnet import resolve_controlnet
    from zvstudio.diffusion.library import ModelInfo

    models = tmp_path / "models"
    weights = write_checkpoint(models / "annotators" / FILE_NAMES[0])
    assert_annotator_found("mlsd", models, weights, monkeypatch)
    path = tmp_path / "control_v11p_sd15_mlsd.safetensors"
    choice = resolve_controlnet("mlsd", [ModelInfo(path, path.stem, "controlnet", "sd1", "", 1)])
    assert choice.path == path
