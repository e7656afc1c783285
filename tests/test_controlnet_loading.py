"""ControlNet loading (diffusers folder, original and diffusers single files) and resolving."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import (
    build_tiny_controlnet,
    build_tiny_models,
    controlnet_key_to_original,
    write_tiny_controlnet_config_dir,
    write_tiny_controlnet_single_file,
)

from zvstudio.diffusion.controlnet import (
    ControlNetChoice,
    controlnet_annotator,
    empty_controlnet,
    load_controlnet_model,
    match_controlnet_checkpoint,
    resolve_controlnet,
)
from zvstudio.diffusion.identify import ModelInfo
from zvstudio.diffusion.tokenizer import sd15_config_dir
from zvstudio.engine.preview import load_controlnet
from zvstudio.errors import ZvsError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny ControlNet written in every layout, and the config folder for single files."""
    root = tmp_path_factory.mktemp("controlnet")
    unet = build_tiny_models()[0]
    controlnet = build_tiny_controlnet(unet)
    save_file(
        {k: v.contiguous() for k, v in controlnet.state_dict().items()},
        str(root / "diffusers_layout.safetensors"),
    )
    unet.save_pretrained(root / "unet_folder")
    controlnet.save_pretrained(root / "folder")
    return {
        "root": root,
        "unet": unet,
        "model": controlnet,
        "state": controlnet.state_dict(),
        "config": write_tiny_controlnet_config_dir(root / "config", controlnet),
        "original": write_tiny_controlnet_single_file(root / "canny.safetensors", controlnet),
        "bare": write_tiny_controlnet_single_file(root / "bare.safetensors", controlnet, prefix=""),
        "diffusers_file": root / "diffusers_layout.safetensors",
        "folder": root / "folder",
    }


def assert_same_weights(model, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k].to(loaded[k].dtype)) for k in state)


def test_network_guard_works():
    with pytest.raises(AssertionError, match="network"):
        socket.create_connection(("127.0.0.1", 9))


def test_sd15_config_is_the_sd15_controlnet():
    model = empty_controlnet()
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 361_279_120  # ~361.3M
    unet = json.loads((sd15_config_dir() / "unet" / "config.json").read_text())
    for field in ("block_out_channels", "layers_per_block", "cross_attention_dim", "in_channels"):
        assert model.config[field] == unet[field]
    assert list(model.config.conditioning_embedding_out_channels) == [16, 32, 96, 256]


def test_sd15_original_names_map_completely():
    """Every SD1.5 tensor has its lllyasviel name, through diffusers' own converter."""
    model = empty_controlnet()
    shapes = {
        "control_model." + controlnet_key_to_original(k, model.config): tuple(v.shape)
        for k, v in model.state_dict().items()
    }
    assert "control_model.input_hint_block.14.weight" in shapes
    assert "control_model.zero_convs.11.0.weight" in shapes
    assert "control_model.middle_block_out.0.bias" in shapes
    rename = match_controlnet_checkpoint(model, shapes)
    assert len(rename) == len(shapes) == len(set(rename.values()))


@pytest.mark.parametrize("layout", ["original", "bare", "diffusers_file", "folder"])
def test_every_layout_loads_the_same_weights(tiny, layout):
    model = load_controlnet_model(tiny[layout], "cpu", torch.float32, config_dir=tiny["config"])
    assert_same_weights(model, tiny["state"])
    assert not model.training


def test_original_file_has_the_original_names(tiny):
    from safetensors import safe_open

    with safe_open(str(tiny["original"]), "pt") as f:
        keys = list(f.keys())
    assert all(k.startswith("control_model.") for k in keys)
    assert {"control_model.input_hint_block.14.weight", "control_model.zero_convs.0.0.bias"} <= set(
        keys
    )


def test_dtype_and_preview_entry_point(tiny):
    model = load_controlnet_model(tiny["original"], "cpu", torch.float16, config_dir=tiny["config"])
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert_same_weights(load_controlnet(tiny["folder"], "cpu", torch.float32), tiny["state"])
    # preview's loader reads single files into the SD1.5 architecture, which a tiny one is not.
    with pytest.raises(ZvsError, match="wrong shape"):
        load_controlnet(tiny["original"], "cpu", torch.float32)


def test_a_controlnet_with_bundled_sd_model_ignores_it(tiny, tmp_path):
    """ControlNet 1.0 files carry the whole SD model beside control_model.*."""
    from safetensors.torch import load_file

    state = load_file(str(tiny["original"]))
    state["model.diffusion_model.out.2.weight"] = torch.zeros(4, 32, 3, 3)
    save_file(state, str(tmp_path / "full.safetensors"))
    model = load_controlnet_model(tmp_path / "full.safetensors", config_dir=tiny["config"])
    assert_same_weights(model, tiny["state"])


def test_wrong_files_are_clear_errors(tiny, tmp_path):
    config = tiny["config"]
    unet_file = tmp_path / "unet.safetensors"
    save_file({k: v.contiguous() for k, v in tiny["unet"].state_dict().items()}, str(unet_file))
    with pytest.raises(ZvsError, match=r"\d+ tensors missing, \d+ unexpected") as err:
        load_controlnet_model(unet_file, config_dir=config)
    assert "a UNet, not a ControlNet" in str(err.value)

    lora = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, 32),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(32, 4),
    }
    save_file(lora, str(tmp_path / "lora.safetensors"))
    with pytest.raises(ZvsError, match="a LoRA, not a ControlNet"):
        load_controlnet_model(tmp_path / "lora.safetensors", config_dir=config)

    # A ControlNet whose cross-attention reads SDXL's 2048-wide text embeddings.
    xl = {k: v.contiguous() for k, v in tiny["state"].items()}
    xl["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"] = torch.zeros(32, 2048)
    save_file(xl, str(tmp_path / "xl.safetensors"))
    with pytest.raises(ZvsError, match="1 of the wrong shape") as err:
        load_controlnet_model(tmp_path / "xl.safetensors", config_dir=config)
    assert "ControlNet for SDXL" in str(err.value)

    with pytest.raises(ZvsError, match="UNet"):
        load_controlnet_model(tiny["root"] / "unet_folder", config_dir=config)
    with pytest.raises(ZvsError, match="not found"):
        load_controlnet_model(tmp_path / "none.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZvsError, match="not a ControlNet folder"):
        load_controlnet_model(tmp_path / "empty")


def test_pickles_refused_unless_allowed(tiny, tmp_path):
    from safetensors.torch import load_file

    pth = tmp_path / "control_canny.pth"
    torch.save({"state_dict": load_file(str(tiny["original"]))}, pth)
    with pytest.raises(ZvsError, match="pickled"):
        load_controlnet_model(pth, config_dir=tiny["config"])
    model = load_controlnet_model(pth, config_dir=tiny["config"], allow_pickle=True)
    assert_same_weights(model, tiny["state"])

    folder = tmp_path / "bin_folder"
    tiny["model"].save_pretrained(folder, safe_serialization=False)
    with pytest.raises(ZvsError, match="pickled"):
        load_controlnet_model(folder)
    assert_same_weights(load_controlnet_model(folder, allow_pickle=True), tiny["state"])


# ------------------------------------------------------------------------- resolve_controlnet


@pytest.fixture
def library(tiny, tmp_path, monkeypatch):
    """A home model folder and a ZVSTUDIO_MODELS folder, each with a canny ControlNet."""
    home, extra = tmp_path / "home", tmp_path / "extra"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("ZVSTUDIO_MODELS", str(extra))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    models = home / "zvstudio" / "models"
    models.mkdir(parents=True)
    extra.mkdir()
    short = shutil.copy(tiny["original"], models / "control_v11p_sd15_canny.safetensors")
    shutil.copy(tiny["original"], extra / "my_favourite_canny_controlnet.safetensors")
    shutil.copy(tiny["original"], extra / "control_v11f1p_sd15_depth.safetensors")
    return {"home": models, "extra": extra, "short": Path(short)}


def test_resolve_canny_from_the_library(library, tiny):
    choice = resolve_controlnet("canny:0.5")
    assert choice == (library["short"], 0.5, choice.note)
    assert "my_favourite_canny_controlnet" in choice.note and "shortest" in choice.note
    path, scale, _ = resolve_controlnet("Canny")
    assert (path, scale) == (library["short"], 0.7)
    model = load_controlnet_model(path, config_dir=tiny["config"])
    assert_same_weights(model, tiny["state"])


def test_resolve_paths(library):
    depth = library["extra"] / "control_v11f1p_sd15_depth.safetensors"
    assert resolve_controlnet(f"{library['short']}:0.3") == ControlNetChoice(
        library["short"], 0.3, ""
    )
    assert resolve_controlnet(str(library["short"])) == (library["short"], 0.7, "")
    # Its name says depth, and no depth annotator is here: said before any work, not fed
    # canny edges it was not trained on.
    with pytest.raises(ZvsError, match="is a depth ControlNet, and the depth annotator is not"):
        resolve_controlnet(str(depth))
    unnamed = library["extra"] / "my_controlnet.safetensors"
    unnamed.write_bytes(b"")
    path, scale, note = resolve_controlnet(str(unnamed))
    assert (path, scale) == (unnamed, 0.7) and "fed canny edges" in note
    assert controlnet_annotator(str(unnamed)) == "canny"
    with pytest.raises(ZvsError, match="not found"):
        resolve_controlnet(str(library["extra"] / "none.safetensors:0.5"))


def test_resolve_missing_and_unsupported(library, tmp_path, monkeypatch):
    for spec, weights in (
        ("hed", "ControlNetHED.pth"),
        ("lineart", "sk_model.pth"),
        ("depth:0.5", "ZVSTUDIO_DEPTH_MODEL"),
        ("openpose", "body_pose_model.pth"),
        ("mlsd", "mlsd_large_512_fp32.pth"),
        ("seg:0.8", "ZVSTUDIO_SEG_MODEL"),
        ("normal", "ZVSTUDIO_DEPTH_MODEL"),
    ):
        with pytest.raises(ZvsError, match="is not available") as err:
            resolve_controlnet(spec)
        assert "canny" in str(err.value.hint)
        assert (weights in err.value.hint) if weights else ("annotators/" not in err.value.hint)
    for spec in ("canny:-1", "canny:abc", "canny:nan"):
        with pytest.raises(ZvsError, match="scale"):
            resolve_controlnet(spec)

    shutil.rmtree(library["extra"])
    library["short"].unlink()
    with pytest.raises(ZvsError, match=r"no SD1\.x canny ControlNet in") as err:
        resolve_controlnet("canny")
    assert str(library["home"]) in str(err.value)  # names the folders it scanned
    assert "ZVSTUDIO_MODELS" in str(err.value.hint)

    xl = ModelInfo(tmp_path / "canny_xl.safetensors", "canny_xl", "controlnet", "sdxl", "", 1)
    with pytest.raises(ZvsError, match="'canny_xl' is for SDXL"):
        resolve_controlnet("canny", [xl])
    sd1 = ModelInfo(tmp_path / "c.safetensors", "sd15_canny", "controlnet", "sd1", "", 1)
    assert resolve_controlnet("canny:1", [xl, sd1]) == (sd1.path, 1.0, "")
