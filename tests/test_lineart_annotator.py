"""The lineart annotator from a checkpoint in lllyasviel's layout (written by the test with
random or chosen weights), read as tensors only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_annotator_found, save_state_dict, textured_frame

from zvstudio.diffusion import annotators
from zvstudio.diffusion.lineart import (
    FILE_NAMES,
    LineartAnnotator,
    build_lineart,
    find_lineart_weights,
)
from zvstudio.errors import ZvsError


def write_checkpoint(path, state=None):
    torch.manual_seed(0)
    return save_state_dict(path, build_lineart().state_dict() if state is None else state)


def test_the_layout_is_lllyasviels():
    keys = build_lineart().state_dict()
    assert keys["model0.1.weight"].shape == (64, 3, 7, 7)
    assert keys["model1.0.weight"].shape == (128, 64, 3, 3)
    assert keys["model1.3.weight"].shape == (256, 128, 3, 3)
    assert keys["model2.2.conv_block.5.weight"].shape == (256, 256, 3, 3)
    assert keys["model3.0.weight"].shape == (256, 128, 3, 3)  # transposed: (in, out, k, k)
    assert keys["model3.3.weight"].shape == (128, 64, 3, 3)
    assert keys["model4.1.weight"].shape == (1, 64, 7, 7)
    # Weight and bias of 1 + 2 + 3 * 2 + 2 + 1 convolutions; instance norms have none.
    assert len(keys) == 2 * 12


def test_the_drawing_is_inverted_to_white_lines_on_black(tmp_path):
    # A zero last convolution with bias b draws sigmoid(b) everywhere: the lines image is the
    # inverse, 255 - 255 * sigmoid(b).
    state = build_lineart().state_dict()
    state["model4.1.weight"].zero_()
    state["model4.1.bias"].fill_(1.5)
    image = LineartAnnotator(write_checkpoint(tmp_path / "sk_model.pth", state))(textured_frame())
    expected = 255 - round(255 / (1 + np.exp(-1.5)))
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8
    assert np.all(image == expected)


@pytest.mark.parametrize("size", [(37, 53), (4, 9), (64, 64)])
def test_any_frame_size_gives_a_frame_sized_image(tmp_path, size):
    annotate = LineartAnnotator(write_checkpoint(tmp_path / "sk_model.pth"))
    image = annotate(textured_frame(*size))
    assert image.shape == (*size, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 2]).all()  # grey


def test_the_output_lines_up_with_the_frame(tmp_path):
    # A 45x70 frame is padded to 48x72 at the bottom and right. Its lines match those of the
    # 48x72 frame it was cut from where the padding is out of reach, far better than lines one
    # row apart do: the output is not shifted by the padding.
    annotate = LineartAnnotator(write_checkpoint(tmp_path / "sk_model.pth"))
    whole = textured_frame(48, 72)
    part = annotate(whole[:45, :70]).astype(int)[:20, :45]
    aligned = annotate(whole).astype(int)[:20, :45]
    off_by_one = np.abs(aligned - annotate(whole).astype(int)[1:21, :45]).mean()
    # Instance norm uses whole-image statistics, which the cut changes slightly.
    assert np.abs(part - aligned).mean() < 0.2 * off_by_one


def test_the_fine_model_is_preferred_and_the_coarse_one_is_a_fallback(tmp_path):
    models = tmp_path / "models"
    coarse = write_checkpoint(models / "annotators" / "sk_model2.pth")
    assert find_lineart_weights([models]) == coarse
    fine = write_checkpoint(models / "annotators" / "sk_model.safetensors")
    assert find_lineart_weights([models]) == fine


@pytest.mark.parametrize("name", FILE_NAMES[:2])
def test_a_checkpoint_in_the_model_folder_makes_lineart_available(tmp_path, name, monkeypatch):
    models = tmp_path / "models"
    weights = write_checkpoint(models / "annotators" / name)
    assert_annotator_found("lineart", models, weights, monkeypatch)
    image = annotators.annotate("lineart", textured_frame())
    assert image.shape == (40, 56, 3) and image.std() > 0  # lines vary over the frame


def test_installs_and_the_hf_cache_are_searched(tmp_path):
    snapshot = tmp_path / "hub" / "models--lllyasviel--Annotators" / "snapshots" / "x"
    write_checkpoint(snapshot / "sk_model.pth")
    assert find_lineart_weights([tmp_path / "hub"]) == snapshot / "sk_model.pth"
    webui = tmp_path / "webui"
    (webui / "models" / "Stable-diffusion").mkdir(parents=True)
    weights = webui / "extensions/sd-webui-controlnet/annotator/downloads/lineart/sk_model.pth"
    write_checkpoint(weights)
    assert find_lineart_weights([webui / "models" / "Stable-diffusion"]) == weights
    assert find_lineart_weights([tmp_path / "none"]) is None


def test_other_files_are_refused_clearly(tmp_path):
    hed_like = write_checkpoint(tmp_path / "a" / "sk_model.pth", {"norm": torch.zeros(1, 3, 1, 1)})
    with pytest.raises(ZvsError, match="not a lineart annotator checkpoint") as info:
        LineartAnnotator(hed_like)(textured_frame())
    assert "sk_model.pth" in info.value.hint
    state = build_lineart().state_dict()
    state["model4.1.weight"] = torch.zeros(3, 64, 7, 7)  # three output channels
    wrong_shape = write_checkpoint(tmp_path / "b" / "sk_model.pth", state)
    with pytest.raises(ZvsError, match="not a lineart annotator checkpoint"):
        LineartAnnotator(wrong_shape)(textured_frame())
    objects = tmp_path / "c" / "sk_model.pth"
    objects.parent.mkdir()
    torch.save({"model0.1.weight": torch.zeros(1), "extra": object()}, objects)
    with pytest.raises(ZvsError, match="cannot read the lineart annotator checkpoint"):
        LineartAnnotator(objects)(textured_frame())
