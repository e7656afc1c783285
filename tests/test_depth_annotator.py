"""The depth annotator: available when a transformers depth model is on disk (a tiny random
DPT written by the test), never downloaded, never from a pickle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zvstudio.diffusion import annotators
from zvstudio.diffusion.controlnet import controlnet_annotator, resolve_controlnet
from zvstudio.diffusion.depth import DepthAnnotator, find_depth_model
from zvstudio.diffusion.library import ModelInfo
from zvstudio.errors import ZvsError


def write_tiny_dpt(folder):
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=32,
        patch_size=8,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        backbone_out_indices=[0, 1, 2, 3],
        architectures=["DPTForDepthEstimation"],
    )
    torch.manual_seed(0)
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(
        folder
    )
    return folder


def frame() -> np.ndarray:
    ramp = np.linspace(0, 255, 56, dtype=np.float32)[None, :, None]
    image = np.broadcast_to(ramp, (40, 56, 3)).astype(np.uint8).copy()
    image[10:30, 20:40] = (220, 40, 40)
    return image


def test_a_depth_model_in_the_hf_cache_makes_depth_available(tmp_path):
    import os

    snapshot = tmp_path / "hf-cache" / "models--Intel--dpt-tiny" / "snapshots" / "abc"
    write_tiny_dpt(snapshot)
    assert os.environ["HF_HUB_CACHE"] == str(tmp_path / "hf-cache")  # conftest's
    assert find_depth_model() == snapshot
    annotators.refresh_local_annotators()
    assert "depth" in annotators.available_annotators()
    image = annotators.annotate("depth", frame())
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8
    assert image.min() == 0 and image.max() == 255  # stretched to the full range
    assert np.array_equal(image[..., 0], image[..., 2])  # grey
    assert annotators.annotator_identity("depth").startswith("depth@:abc:")
    # A depth ControlNet is now found by its word, like canny.
    depth = ModelInfo(tmp_path / "sd15_depth.safetensors", "sd15_depth", "controlnet", "sd1", "", 1)
    assert resolve_controlnet("depth:0.6", [depth]) == (depth.path, 0.6, "")


def test_model_folders_and_the_environment_variable(tmp_path, monkeypatch):
    models = tmp_path / "models"
    write_tiny_dpt(models / "annotators" / "depth-anything")
    (models / "annotators" / "not-depth").mkdir()
    (models / "annotators" / "not-depth" / "config.json").write_text(
        json.dumps({"architectures": ["CLIPTextModel"]})
    )
    assert find_depth_model([models]) == models / "annotators" / "depth-anything"
    assert find_depth_model([tmp_path / "nothing"]) is None
    monkeypatch.setenv("ZVSTUDIO_DEPTH_MODEL", str(models / "annotators" / "not-depth"))
    with pytest.raises(ZvsError, match="not a depth-estimation model folder"):
        find_depth_model([models])


def test_pickled_weights_are_refused(tmp_path):
    folder = write_tiny_dpt(tmp_path / "dpt")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ZvsError, match="no safetensors weights") as err:
        DepthAnnotator(folder)(frame())
    assert "pickle" in err.value.hint


def test_without_a_model_depth_says_where_to_put_one():
    annotators.refresh_local_annotators()
    assert "depth" not in annotators.available_annotators()
    with pytest.raises(ZvsError, match="is not available") as err:
        resolve_controlnet("depth", [])
    assert "annotators" in err.value.hint and "ZVSTUDIO_DEPTH_MODEL" in err.value.hint


def sphere_depth(height: int = 64, width: int = 96) -> np.ndarray:
    """The relative depth (0 far .. 1 near) of a ball in front of a far wall."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = height * 0.4
    dx, dy = (xx - width / 2) / radius, (yy - height / 2) / radius
    bulge = np.sqrt(np.clip(1 - dx**2 - dy**2, 0, 1))
    return np.where(bulge > 0, 0.5 + 0.5 * bulge, 0.0).astype(np.float32)


def test_normals_follow_controlnets_axes():
    from zvstudio.diffusion.depth import normals_from_depth

    normal = normals_from_depth(sphere_depth()).astype(int)
    assert normal.shape == (64, 96, 3)
    centre_y, centre_x = 32, 48
    left, right = normal[centre_y, centre_x - 15], normal[centre_y, centre_x + 15]
    top, bottom = normal[centre_y - 15, centre_x], normal[centre_y + 15, centre_x]
    # ControlNet's axes: red where the surface faces left, green where it faces up.
    assert left[0] > 170 and right[0] < 85 and abs(left[1] - 128) < 3
    assert top[1] > 170 and bottom[1] < 85 and abs(top[0] - 128) < 3
    centre = normal[centre_y, centre_x]
    assert tuple(centre) == (127, 127, 255)  # facing the camera (truncated as ControlNet does)
    assert tuple(normal[2, 2]) == (127, 127, 255)  # the far background is flat
    # Unit normals: the three channels' offsets make a vector of length 127.5.
    offsets = (normal[20:44, 30:66] - 127.5) / 127.5
    assert np.allclose(np.linalg.norm(offsets, axis=2), 1, atol=0.03)


def test_normals_do_not_depend_on_the_frame_size():
    from zvstudio.diffusion.depth import normals_from_depth

    small = normals_from_depth(sphere_depth(64, 96)).astype(int)
    large = normals_from_depth(sphere_depth(128, 192)).astype(int)
    assert np.abs(large[::2, ::2][20:44, 30:66] - small[20:44, 30:66]).max() <= 12


def test_a_depth_model_also_draws_normals_for_normal_controlnets(tmp_path):
    snapshot = tmp_path / "hf-cache" / "models--Intel--dpt-tiny" / "snapshots" / "abc"
    write_tiny_dpt(snapshot)
    annotators.refresh_local_annotators()
    assert "normal" in annotators.available_annotators()
    image = annotators.annotate("normal", frame())
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8
    assert image[..., 2].min() >= 127  # every normal faces the camera's side
    depth = DepthAnnotator(snapshot)
    assert np.array_equal(image, depth.normals(frame()))
    assert not np.array_equal(image, annotators.annotate("depth", frame()))
    # lllyasviel's normalbae ControlNet is found by "normal" and fed normal maps.
    normalbae = tmp_path / "control_v11p_sd15_normalbae.safetensors"
    normalbae.write_bytes(b"")
    info = ModelInfo(normalbae, normalbae.stem, "controlnet", "sd1", "", 1)
    assert resolve_controlnet("normal", [info]) == (normalbae, 0.7, "")
    assert controlnet_annotator(str(normalbae)) == "normal"


def test_a_normalbae_controlnet_without_a_depth_model_says_so(tmp_path):
    annotators.refresh_local_annotators()
    normalbae = tmp_path / "control_v11p_sd15_normalbae.safetensors"
    normalbae.write_bytes(b"")
    with pytest.raises(ZvsError, match="is a normal ControlNet, and the normal annotator") as err:
        resolve_controlnet(str(normalbae))
    assert "depth model" in err.value.hint and "ZVSTUDIO_DEPTH_MODEL" in err.value.hint
