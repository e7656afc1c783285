"""The HED soft-edge annotator from a checkpoint in lllyasviel's layout (written by the test
with random or chosen weights), read as tensors only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_annotator_found, save_state_dict, textured_frame

from zvstudio.diffusion import annotators
from zvstudio.diffusion.hed import FILE_NAMES, HedAnnotator, build_hed, find_hed_weights
from zvstudio.errors import ZvsError


def write_checkpoint(path, state=None):
    torch.manual_seed(0)
    return save_state_dict(path, build_hed().state_dict() if state is None else state)


def test_the_layout_is_lllyasviels():
    keys = build_hed().state_dict()
    assert keys["norm"].shape == (1, 3, 1, 1)
    assert keys["block1.convs.0.weight"].shape == (64, 3, 3, 3)
    assert keys["block3.convs.2.weight"].shape == (256, 256, 3, 3)
    assert keys["block5.projection.weight"].shape == (1, 512, 1, 1)
    assert len(keys) == 1 + 2 * (2 + 2 + 3 + 3 + 3) + 2 * 5


def test_side_outputs_are_averaged_and_squashed(tmp_path):
    # Zero projections with biases b1..b5: every pixel is sigmoid(mean(b)).
    state = build_hed().state_dict()
    biases = [0.5, -1.0, 2.0, 1.5, -0.5]
    for index, bias in enumerate(biases, start=1):
        state[f"block{index}.projection.weight"].zero_()
        state[f"block{index}.projection.bias"].fill_(bias)
    image = HedAnnotator(write_checkpoint(tmp_path / "ControlNetHED.pth", state))(textured_frame())
    expected = round(255 / (1 + np.exp(-np.mean(biases))))
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8
    assert np.all(image == expected)


@pytest.mark.parametrize("name", FILE_NAMES)
def test_a_checkpoint_in_the_model_folder_makes_soft_edges_available(tmp_path, name, monkeypatch):
    models = tmp_path / "models"
    weights = write_checkpoint(models / "annotators" / name)
    assert find_hed_weights([models]) == weights
    assert find_hed_weights([tmp_path / "none"]) is None
    assert_annotator_found("hed", models, weights, monkeypatch, listed_as="hed/softedge")
    assert "softedge" in annotators.available_annotators()
    image = annotators.annotate("softedge", textured_frame())
    assert image.shape == (40, 56, 3) and image.std() > 0  # edges vary over the frame


def test_the_hf_cache_holds_lllyasviels_annotators(tmp_path):
    snapshot = tmp_path / "hub" / "models--lllyasviel--Annotators" / "snapshots" / "x"
    write_checkpoint(snapshot / "ControlNetHED.pth")
    assert find_hed_weights([tmp_path / "hub"]) == snapshot / "ControlNetHED.pth"


def test_other_files_are_refused_clearly(tmp_path):
    other = write_checkpoint(tmp_path / "ControlNetHED.pth", {"weight": torch.zeros(3)})
    with pytest.raises(ZvsError, match="not a HED annotator checkpoint"):
        HedAnnotator(other)(textured_frame())
    objects = tmp_path / "objects" / "ControlNetHED.pth"
    objects.parent.mkdir()
    torch.save({"norm": torch.zeros(1), "extra": object()}, objects)
    with pytest.raises(ZvsError, match="cannot read the HED annotator checkpoint"):
        HedAnnotator(objects)(textured_frame())
