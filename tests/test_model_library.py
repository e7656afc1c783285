"""The model library: identification from safetensors headers, scanning, compatibility checks.

Fixtures are real safetensors files whose headers mimic published layouts: real key names, and
real shapes on the keys that decide (tiny placeholder shapes elsewhere), so every file stays
under about 2 MB. Nothing is downloaded; the Hugging Face cache is a folder the test builds.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zvstudio.diffusion import (
    ModelInfo,
    check_compatible,
    check_loadable,
    classify,
    default_model_folders,
    expand_root,
    find_model,
    format_table,
    hf_cache_dir,
    identify,
    read_safetensors_header,
    scan,
    short_hash,
)
from zvstudio.diffusion.library import format_size
from zvstudio.errors import ZvsError

# The package exports the function `identify`, which hides the module of the same name.
identify_module = importlib.import_module("zvstudio.diffusion.identify")


def write_st(path: Path, shapes: dict[str, tuple[int, ...]], metadata=None) -> Path:
    """A safetensors file of zeros with these names and shapes (uint8 for big tensors)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        key: torch.zeros(shape, dtype=torch.float16 if math.prod(shape) < 600_000 else torch.uint8)
        for key, shape in shapes.items()
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


D = "model.diffusion_model."
SD1_CHECKPOINT = {
    D + "input_blocks.0.0.weight": (320, 4, 3, 3),
    D + "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
    D + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    D + "time_embed.0.weight": (2,),
    D + "output_blocks.11.0.skip_connection.weight": (2,),
    "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
    "first_stage_model.encoder.down.0.block.0.conv1.weight": (2,),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (4, 768),
}
SD2_CHECKPOINT = {
    D + "input_blocks.0.0.weight": (320, 4, 3, 3),
    D + "input_blocks.1.1.proj_in.weight": (320, 320),
    D + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
    "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
    "cond_stage_model.model.token_embedding.weight": (4, 1024),
    "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": (2,),
}
SDXL_CHECKPOINT = {
    D + "input_blocks.0.0.weight": (320, 4, 3, 3),
    D + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
    D + "label_emb.0.0.weight": (2,),
    "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (2,),
    "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": (2,),
}
SD3_CHECKPOINT = {
    D + "joint_blocks.0.context_block.adaLN_modulation.1.bias": (2,),
    D + "x_embedder.proj.weight": (2,),
    "first_stage_model.decoder.conv_in.weight": (512, 16, 3, 3),
    "text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.weight": (2,),
}
FLUX_UNET = {
    "double_blocks.0.img_attn.norm.key_norm.scale": (2,),
    "single_blocks.0.linear1.weight": (2,),
    "img_in.weight": (2,),
}
DIFFUSERS_UNET = {
    "conv_in.weight": (320, 4, 3, 3),
    "time_embedding.linear_1.weight": (2,),
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    "down_blocks.0.resnets.0.conv1.weight": (2,),
    "up_blocks.3.attentions.2.proj_out.weight": (2,),
}
K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
KOHYA_SD1 = {
    K + ".lora_down.weight": (8, 768),
    K + ".lora_up.weight": (320, 8),
    K + ".alpha": (),
    "lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": (8, 768),
    "lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_up.weight": (768, 8),
}
KX = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
KOHYA_SDXL = {
    KX + ".lora_down.weight": (16, 2048),
    KX + ".lora_up.weight": (640, 16),
    KX + ".alpha": (),
    "lora_te1_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": (16, 768),
    "lora_te2_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": (16, 1280),
}
# Conv-only LoRA: no width tells the base, so the kohya metadata has to.
KOHYA_CONV_ONLY = {
    "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": (4, 320, 3, 3),
    "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": (320, 4, 1, 1),
}
P = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
PEFT_SD1 = {P + ".lora_A.weight": (4, 768), P + ".lora_B.weight": (320, 4)}
LOHA_SD1 = {
    K + ".hada_w1_a": (320, 4),
    K + ".hada_w1_b": (4, 768),
    K + ".hada_w2_a": (320, 4),
    K + ".hada_w2_b": (4, 768),
    K + ".alpha": (),
}
LOKR_SDXL = {KX + ".lokr_w1": (8, 8), KX + ".lokr_w2": (80, 256), KX + ".alpha": ()}
CONTROLNET_ORIGINAL = {
    "control_model.input_hint_block.0.weight": (16, 3, 3, 3),
    "control_model.zero_convs.0.0.weight": (2,),
    "control_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "control_model.middle_block_out.0.weight": (2,),
}
CONTROLNET_DIFFUSERS = {
    "controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
    "controlnet_down_blocks.0.weight": (2,),
    "controlnet_mid_block.weight": (2,),
    "conv_in.weight": (320, 4, 3, 3),
    "time_embedding.linear_1.weight": (2,),
}
VAE_ORIGINAL = {
    "encoder.conv_in.weight": (128, 3, 3, 3),
    "encoder.down.0.block.0.conv1.weight": (2,),
    "decoder.conv_in.weight": (512, 4, 3, 3),
    "decoder.up.0.block.0.conv1.weight": (2,),
    "quant_conv.weight": (2,),
}
VAE_DIFFUSERS = {
    "encoder.down_blocks.0.resnets.0.conv1.weight": (2,),
    "decoder.conv_in.weight": (512, 4, 3, 3),
    "decoder.up_blocks.0.resnets.0.conv1.weight": (2,),
}
VAE_16 = {"decoder.conv_in.weight": (512, 16, 3, 3), "decoder.up.0.block.0.conv1.weight": (2,)}


def motion_module(channels: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for block, width in enumerate(channels):
        prefix = f"down_blocks.{block}.motion_modules.0.temporal_transformer."
        shapes[prefix + "proj_in.bias"] = (width,)
        shapes[prefix + "transformer_blocks.0.attention_blocks.0.pos_encoder.pe"] = (1, 32, 2)
    return shapes


def cross_attention(shapes: dict, width: int) -> dict:
    """`shapes` plus an attn2 key projection for a `width`-wide context (prefix from shapes)."""
    prefix = "control_model.input_blocks.1.1." if "control_model." in next(iter(shapes)) else ""
    prefix = prefix or "down_blocks.0.attentions.0."
    return {**shapes, prefix + "transformer_blocks.0.attn2.to_k.weight": (320, width)}


# ---------------------------------------------------------------------------------------------
# Identification


@pytest.mark.parametrize(
    ("shapes", "kind", "base"),
    [
        (SD1_CHECKPOINT, "checkpoint", "sd1"),
        (SD2_CHECKPOINT, "checkpoint", "sd2"),
        (SDXL_CHECKPOINT, "checkpoint", "sdxl"),
        (SD3_CHECKPOINT, "checkpoint", "sd3"),
        (FLUX_UNET, "unet", "flux"),
        (DIFFUSERS_UNET, "unet", "sd1"),
        (KOHYA_SD1, "lora", "sd1"),
        (KOHYA_SDXL, "lora", "sdxl"),
        (PEFT_SD1, "lora", "sd1"),
        (LOHA_SD1, "lora", "sd1"),
        (LOKR_SDXL, "lora", "sdxl"),
        (cross_attention(CONTROLNET_ORIGINAL, 768), "controlnet", "sd1"),
        (cross_attention(CONTROLNET_ORIGINAL, 1024), "controlnet", "sd2"),
        (cross_attention(CONTROLNET_DIFFUSERS, 768), "controlnet", "sd1"),
        (cross_attention(CONTROLNET_DIFFUSERS, 1024), "controlnet", "sd2"),
        (VAE_ORIGINAL, "vae", "sd1"),
        (VAE_DIFFUSERS, "vae", "sd1"),
        (VAE_16, "vae", "sd3"),
        (motion_module((320, 640, 1280, 1280)), "motion_adapter", "sd1"),
        (motion_module((320, 640, 1280)), "motion_adapter", "sdxl"),
        (
            {"text_model.encoder.layers.0.self_attn.k_proj.weight": (768, 768)},
            "text_encoder",
            "sd1",
        ),
    ],
)
def test_identify_from_the_header(tmp_path, shapes, kind, base):
    path = write_st(tmp_path / "model.safetensors", shapes)
    assert path.stat().st_size < 2_100_000
    info = identify(path)
    assert (info.kind, info.base, info.format) == (kind, base, "safetensors")
    assert info.name == "model"
    assert info.size_bytes == path.stat().st_size
    assert not info.pickled


def test_classify_works_on_a_loaded_state_dict_too():
    state = {k: torch.zeros(v) for k, v in cross_attention(CONTROLNET_DIFFUSERS, 768).items()}
    kind, base, details = classify({k: v.shape for k, v in state.items()})
    assert (kind, base, details["layout"]) == ("controlnet", "sd1", "diffusers")


def test_checkpoint_details_tell_variants_parts_and_prediction(tmp_path):
    inpaint = {**SD1_CHECKPOINT, D + "input_blocks.0.0.weight": (320, 9, 3, 3)}
    info = identify(write_st(tmp_path / "inpaint.safetensors", inpaint))
    assert info.details["variant"] == "inpainting"
    assert info.details["components"] == ["unet", "vae", "text_encoder"]
    sd2 = identify(write_st(tmp_path / "sd2.safetensors", SD2_CHECKPOINT))
    assert "v, 512 models epsilon" in sd2.details["note"]
    sd2v = write_st(
        tmp_path / "sd2v.safetensors", SD2_CHECKPOINT, {"modelspec.prediction_type": "v"}
    )
    assert identify(sd2v).details["prediction"] == "v"
    refiner = {D + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (768, 1280)}
    refiner["conditioner.embedders.0.model.text_projection"] = (2,)
    info = identify(write_st(tmp_path / "refiner.safetensors", refiner))
    assert (info.base, info.details["note"]) == ("sdxl", "SDXL refiner")


def test_lora_details(tmp_path):
    kohya = identify(write_st(tmp_path / "k.safetensors", KOHYA_SD1))
    assert kohya.details["lora_format"] == "kohya"
    assert (kohya.details["network"], kohya.details["rank"]) == ("LoRA", 8)
    assert kohya.details["text_encoder"] is True
    peft = identify(write_st(tmp_path / "p.safetensors", PEFT_SD1))
    assert (peft.details["lora_format"], peft.details["rank"]) == ("peft", 4)
    assert peft.details["text_encoder"] is False
    loha = identify(write_st(tmp_path / "h.safetensors", LOHA_SD1))
    assert (loha.details["network"], loha.details["rank"]) == ("LoHa", 4)
    assert identify(write_st(tmp_path / "x.safetensors", LOKR_SDXL)).details["network"] == "LoKr"


def test_lora_base_from_kohya_metadata(tmp_path):
    metadata = {"ss_base_model_version": "sdxl_base_v1-0", "ss_network_dim": "4"}
    info = identify(write_st(tmp_path / "conv.safetensors", KOHYA_CONV_ONLY, metadata))
    assert (info.kind, info.base) == ("lora", "sdxl")
    assert info.details["ss_base_model_version"] == "sdxl_base_v1-0"
    assert info.details["ss_network_dim"] == "4"
    assert "metadata" in info.details["note"]
    no_metadata = identify(write_st(tmp_path / "bare.safetensors", KOHYA_CONV_ONLY))
    assert (no_metadata.kind, no_metadata.base) == ("lora", "unknown")
    v_pred = {"ss_base_model_version": "sd_v2_v"}
    assert identify(write_st(tmp_path / "v.safetensors", KOHYA_CONV_ONLY, v_pred)).base == "sd2"


def test_weights_outrank_contradicting_metadata(tmp_path):
    lying = {"ss_base_model_version": "sdxl_base_v1-0"}
    info = identify(write_st(tmp_path / "l.safetensors", KOHYA_SD1, lying))
    assert info.base == "sd1"
    assert "metadata claims SDXL" in info.details["note"]


def test_unsupported_add_ons_are_unknown_with_a_note(tmp_path):
    control_lora = {"lora_controlnet": (1,), "input_hint_block.0.weight": (16, 3, 3, 3)}
    t2i = {
        "adapter.conv_in.weight": (320, 192, 3, 3),
        "adapter.body.0.resnets.0.block1.weight": (2,),
    }
    for name, shapes, note in (
        ("cl", control_lora, "Control-LoRA"),
        ("t2i", t2i, "T2I-Adapter"),
        ("odd", {"some.random.weight": (2,)}, "no known model layout"),
    ):
        info = identify(write_st(tmp_path / f"{name}.safetensors", shapes))
        assert (info.kind, info.base) == ("unknown", "unknown"), name
        assert note in info.details["note"]


def test_vae_bases_and_notes(tmp_path):
    sd = identify(write_st(tmp_path / "vae-ft-mse-840000.safetensors", VAE_ORIGINAL))
    assert "also used by SDXL" in sd.details["note"]
    xl = identify(write_st(tmp_path / "sdxl_vae.safetensors", VAE_DIFFUSERS))
    assert xl.base == "sdxl"
    assert identify(write_st(tmp_path / "ae.safetensors", VAE_16)).base == "flux"


def test_motion_lora(tmp_path):
    shapes = {
        f"down_blocks.{b}.motion_modules.0.temporal_transformer.transformer_blocks.0."
        "attention_blocks.0.processor.to_q_lora.down.weight": (4, 320)
        for b in range(4)
    }
    info = identify(write_st(tmp_path / "v2_lora_ZoomIn.safetensors", shapes))
    assert (info.kind, info.base) == ("motion_adapter", "sd1")
    assert "motion LoRA" in info.details["note"]


def test_header_is_read_without_tensor_data(tmp_path):
    path = write_st(tmp_path / "m.safetensors", KOHYA_SD1, {"ss_output_name": "m"})
    header = read_safetensors_header(path)
    assert header["__metadata__"] == {"ss_output_name": "m"}
    assert header[K + ".lora_down.weight"]["shape"] == [8, 768]
    # Same header as safetensors' own reader sees.
    from safetensors import safe_open

    with safe_open(str(path), "pt") as reader:
        assert set(reader.keys()) == set(header) - {"__metadata__"}


def test_truncated_and_damaged_files_raise_naming_the_file(tmp_path):
    path = write_st(tmp_path / "cut.safetensors", SD1_CHECKPOINT)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ZvsError, match=r"cut\.safetensors.*truncated"):
        identify(path)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ZvsError, match=r"garbage\.safetensors"):
        read_safetensors_header(garbage)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"\x01")
    with pytest.raises(ZvsError, match=r"tiny\.safetensors"):
        read_safetensors_header(tiny)
    bad_json = tmp_path / "json.safetensors"
    bad_json.write_bytes((5).to_bytes(8, "little") + b"{nope")
    with pytest.raises(ZvsError, match="not valid JSON"):
        read_safetensors_header(bad_json)


# A pickle that imports a module that does not exist: loading it would raise, so any attempt
# to unpickle during scanning shows up.
EVIL_PICKLE = b"cnonexistent_zvs_module\nboom\n(tR."


def test_pickles_are_never_opened(tmp_path):
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(EVIL_PICKLE)
    path = tmp_path / "models" / "Stable-diffusion" / "v1-5-pruned-emaonly.ckpt"
    path.parent.mkdir(parents=True)
    path.write_bytes(EVIL_PICKLE)
    lora = tmp_path / "models" / "Lora" / "style.pt"
    lora.parent.mkdir(parents=True)
    lora.write_bytes(EVIL_PICKLE)
    models = {m.name: m for m in scan([tmp_path / "models"])}
    assert "nonexistent_zvs_module" not in sys.modules
    ckpt = models["v1-5-pruned-emaonly"]
    assert (ckpt.kind, ckpt.base, ckpt.format, ckpt.pickled) == (
        "checkpoint",
        "sd1",
        "pickle",
        True,
    )
    assert "not opened" in ckpt.details["note"]
    assert (models["style"].kind, models["style"].base) == ("lora", "unknown")
    assert ckpt.to_dict(include_hash=False)["pickled"] is True


# ---------------------------------------------------------------------------------------------
# Diffusers folders and the Hugging Face cache


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def make_pipeline(folder: Path, cls: str, cross: int, weights: str = ".safetensors") -> Path:
    version = {"_diffusers_version": "0.30.0"}
    write_json(
        folder / "model_index.json",
        {"_class_name": cls, **version, "unet": ["diffusers", "UNet2DConditionModel"]},
    )
    unet = {"_class_name": "UNet2DConditionModel", **version, "cross_attention_dim": cross}
    if cls.startswith("StableDiffusionXL"):
        unet["addition_embed_type"] = "text_time"
    write_json(folder / "unet" / "config.json", unet)
    weights_file = folder / "unet" / f"diffusion_pytorch_model{weights}"
    if weights == ".safetensors":
        write_st(weights_file, DIFFUSERS_UNET)
    else:
        weights_file.write_bytes(EVIL_PICKLE)
    write_json(folder / "vae" / "config.json", {"_class_name": "AutoencoderKL", **version})
    write_st(folder / "vae" / "diffusion_pytorch_model.safetensors", VAE_DIFFUSERS)
    write_json(folder / "scheduler" / "scheduler_config.json", {"prediction_type": "epsilon"})
    return folder


def test_diffusers_pipelines(tmp_path):
    sd1 = identify(make_pipeline(tmp_path / "sd15", "StableDiffusionPipeline", 768))
    assert (sd1.kind, sd1.base, sd1.format, sd1.name) == ("checkpoint", "sd1", "diffusers", "sd15")
    assert sd1.details["prediction"] == "epsilon"
    assert sd1.short_hash is None
    assert sd1.size_bytes > 0
    sd2 = identify(make_pipeline(tmp_path / "sd21", "StableDiffusionPipeline", 1024))
    assert sd2.base == "sd2"
    xl = identify(make_pipeline(tmp_path / "xl", "StableDiffusionXLPipeline", 2048))
    assert (xl.kind, xl.base) == ("checkpoint", "sdxl")
    old = identify(make_pipeline(tmp_path / "old", "StableDiffusionPipeline", 768, ".bin"))
    assert old.pickled
    with pytest.raises(ZvsError, match="--allow-pickle"):
        check_loadable(old)


def test_diffusers_component_folders(tmp_path):
    version = {"_diffusers_version": "0.30.0"}
    cn = tmp_path / "control_v11p_sd21_canny"
    write_json(
        cn / "config.json",
        {"_class_name": "ControlNetModel", **version, "cross_attention_dim": 1024},
    )
    write_st(
        cn / "diffusion_pytorch_model.safetensors", cross_attention(CONTROLNET_DIFFUSERS, 1024)
    )
    info = identify(cn)
    assert (info.kind, info.base) == ("controlnet", "sd2")
    motion = tmp_path / "animatediff-motion-adapter-v1-5-2"
    write_json(
        motion / "config.json",
        {"_class_name": "MotionAdapter", **version, "block_out_channels": [320, 640, 1280, 1280]},
    )
    assert (identify(motion).kind, identify(motion).base) == ("motion_adapter", "sd1")
    incomplete = tmp_path / "vae_configs_only"
    write_json(incomplete / "config.json", {"_class_name": "AutoencoderKL", **version})
    assert "incomplete download" in identify(incomplete).details["note"]


def test_scanning_does_not_descend_into_diffusers_folders(tmp_path):
    root = tmp_path / "lib"
    make_pipeline(root / "sd15", "StableDiffusionPipeline", 768)
    write_st(root / "sd15" / "v1-5-pruned.safetensors", SD1_CHECKPOINT)  # a single file beside it
    models = scan([root])
    assert sorted((m.name, m.kind, m.format) for m in models) == [
        ("sd15", "checkpoint", "diffusers"),
        ("v1-5-pruned", "checkpoint", "safetensors"),
    ]


def link_blob(snapshot_file: Path, blobs: Path, shapes: dict) -> None:
    """HF cache layout: the snapshot file is a relative symlink to a content-named blob."""
    blobs.mkdir(parents=True, exist_ok=True)
    blob = write_st(blobs / "tmp.safetensors", shapes)
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    blob = blob.rename(blobs / digest)
    snapshot_file.parent.mkdir(parents=True, exist_ok=True)
    snapshot_file.symlink_to(os.path.relpath(blob, snapshot_file.parent))


def make_hf_cache(hub: Path) -> None:
    sd = hub / "models--runwayml--stable-diffusion-v1-5"
    (sd / "refs").mkdir(parents=True)
    (sd / "refs" / "main").write_text("abc123")
    make_pipeline(sd / "snapshots" / "abc123", "StableDiffusionPipeline", 768)
    old = sd / "snapshots" / "0ld"
    write_st(old / "stale.safetensors", SD1_CHECKPOINT)
    os.utime(old, (1, 1))
    lora = hub / "models--someone--pixel-lora"
    link_blob(lora / "snapshots" / "r1" / "pixel.safetensors", lora / "blobs", KOHYA_SD1)
    bert = hub / "models--google--bert-base"
    write_json(bert / "snapshots" / "r1" / "config.json", {"architectures": ["BertModel"]})
    write_st(bert / "snapshots" / "r1" / "model.safetensors", {"bert.embeddings.weight": (2,)})
    (hub / ".locks").mkdir()
    write_st(hub / "datasets--x--y" / "snapshots" / "r" / "data.safetensors", KOHYA_SD1)


def test_hugging_face_cache(tmp_path):
    hub = tmp_path / "hub"
    make_hf_cache(hub)
    models = scan([hub])
    assert [(m.name, m.kind, m.base) for m in models] == [
        ("runwayml/stable-diffusion-v1-5", "checkpoint", "sd1"),
        ("pixel", "lora", "sd1"),  # the file's name, not its blob's hash
    ]
    assert (
        models[0].path == hub / "models--runwayml--stable-diffusion-v1-5" / "snapshots" / "abc123"
    )
    assert models[1].details["hf_repo"] == "someone/pixel-lora"
    # One repo folder on its own is scanned the same way.
    assert [m.name for m in scan([hub / "models--someone--pixel-lora"])] == ["pixel"]


def test_hf_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hf_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hf_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hf_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"


# ---------------------------------------------------------------------------------------------
# Folders


def test_a1111_install(tmp_path):
    root = tmp_path / "stable-diffusion-webui"
    (root / "webui.py").parent.mkdir(parents=True)
    (root / "webui.py").write_text("")
    write_st(root / "models" / "Stable-diffusion" / "dreamshaper.safetensors", SD1_CHECKPOINT)
    write_st(root / "models" / "Lora" / "pixel.safetensors", KOHYA_SD1)
    write_st(root / "models" / "LyCORIS" / "loha.safetensors", LOHA_SD1)
    write_st(root / "models" / "VAE" / "vae-ft-mse.safetensors", VAE_ORIGINAL)
    write_st(
        root / "extensions" / "sd-webui-controlnet" / "models" / "control_sd15_canny.safetensors",
        cross_attention(CONTROLNET_ORIGINAL, 768),
    )
    (root / "models" / "GFPGAN").mkdir()
    (root / "models" / "GFPGAN" / "GFPGANv1.4.pth").write_bytes(EVIL_PICKLE)
    (root / "venv" / "lib").mkdir(parents=True)
    (root / "venv" / "lib" / "test_model.bin").write_bytes(EVIL_PICKLE)
    folders = expand_root(root)
    assert {f.relative_to(root).as_posix() for f in folders} == {
        "models/Stable-diffusion",
        "models/Lora",
        "models/LyCORIS",
        "models/VAE",
        "extensions/sd-webui-controlnet/models",
    }
    models = scan(folders)
    assert [(m.kind, m.name) for m in models] == [
        ("checkpoint", "dreamshaper"),
        ("lora", "loha"),
        ("lora", "pixel"),
        ("controlnet", "control_sd15_canny"),
        ("vae", "vae-ft-mse"),
    ]
    # The install's models folder given as the root finds the same folders.
    assert expand_root(root / "models") == folders


def test_comfyui_install_and_plain_folder(tmp_path):
    root = tmp_path / "ComfyUI"
    for sub in (
        "checkpoints",
        "loras",
        "controlnet",
        "vae",
        "animatediff_models",
        "upscale_models",
    ):
        (root / "models" / sub).mkdir(parents=True)
    assert {f.name for f in expand_root(root)} == {
        "checkpoints",
        "loras",
        "controlnet",
        "vae",
        "animatediff_models",
    }
    # A plain folder is scanned whole, even one organised like a models folder.
    plain = tmp_path / "my models"
    (plain / "loras").mkdir(parents=True)
    write_st(plain / "sd15.safetensors", SD1_CHECKPOINT)
    assert expand_root(plain) == [plain]
    assert expand_root(tmp_path / "elsewhere" / "models") == [tmp_path / "elsewhere" / "models"]


def test_default_model_folders(monkeypatch, tmp_path):
    home = tmp_path / "home"
    (home / "zvstudio" / "models").mkdir(parents=True)
    comfy = tmp_path / "ComfyUI"
    (comfy / "models" / "loras").mkdir(parents=True)
    extra = tmp_path / "extra"
    extra.mkdir()
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("ZVSTUDIO_MODELS", os.pathsep.join([str(comfy), str(tmp_path / "gone")]))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert default_model_folders(roots=[extra]) == [
        home / "zvstudio" / "models",
        comfy / "models" / "loras",
        extra,
        hub,
    ]
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    assert default_model_folders(models_dir=chosen)[0] == chosen


def test_scan_deduplicates_skips_hidden_and_survives_bad_files(tmp_path):
    lib = tmp_path / "lib"
    real = write_st(lib / "a" / "pixel.safetensors", KOHYA_SD1)
    (lib / "b").mkdir()
    (lib / "b" / "pixel-link.safetensors").symlink_to(real)
    (lib / "loop").symlink_to(lib, target_is_directory=True)
    write_st(lib / ".trash" / "old.safetensors", KOHYA_SD1)
    write_st(lib / "cut.safetensors", SD1_CHECKPOINT)
    cut = lib / "cut.safetensors"
    cut.write_bytes(cut.read_bytes()[:1000])
    (lib / "notes.txt").write_text("not a model")
    events = []
    models = scan([lib, lib / "a", lib / "a" / "pixel.safetensors"], progress=events.append)
    assert [(m.kind, m.name) for m in models] == [("lora", "pixel"), ("unknown", "cut")]
    assert models[0].path == real
    assert "truncated" in models[1].details["error"]
    assert events[-1].done == events[-1].total == 2
    assert scan([tmp_path / "missing"]) == []
    with pytest.raises(ZvsError, match="cut"):
        check_loadable(models[1])


def test_annotator_weights_are_not_listed_as_models(tmp_path):
    # `annotators/` holds HED, OpenPose, depth models...: the annotators report those, and as
    # models they would all be "unknown".
    lib = tmp_path / "lib"
    write_st(lib / "lora" / "pixel.safetensors", KOHYA_SD1)
    write_st(lib / "annotators" / "mlsd_large_512_fp32.safetensors", {"block23.conv3.bias": (16,)})
    (lib / "annotators" / "body_pose_model.pth").write_bytes(b"not read")
    write_st(lib / "Annotators" / "upernet" / "model.safetensors", {"decode_head.w": (150, 8)})
    assert [m.name for m in scan([lib])] == ["pixel"]


# ---------------------------------------------------------------------------------------------
# Looking up and checking


@pytest.fixture
def library(tmp_path) -> list[ModelInfo]:
    lib = tmp_path / "lib"
    write_st(lib / "ckpt" / "dreamshaper.safetensors", SD1_CHECKPOINT)
    write_st(lib / "ckpt" / "juggernautXL.safetensors", SDXL_CHECKPOINT)
    write_st(lib / "ckpt" / "sd3_medium.safetensors", SD3_CHECKPOINT)
    write_st(lib / "lora" / "pixel.safetensors", KOHYA_SD1)
    write_st(lib / "lora" / "xl_detail.safetensors", KOHYA_SDXL)
    write_st(lib / "lora_old" / "pixel.safetensors", PEFT_SD1)
    write_st(lib / "cn" / "canny15.safetensors", cross_attention(CONTROLNET_ORIGINAL, 768))
    write_st(lib / "cn" / "canny21.safetensors", cross_attention(CONTROLNET_ORIGINAL, 1024))
    write_st(lib / "cn" / "dreamshaper.safetensors", cross_attention(CONTROLNET_DIFFUSERS, 768))
    (lib / "ckpt" / "old.ckpt").write_bytes(EVIL_PICKLE)
    return scan([lib])


def test_find_model(library, tmp_path):
    assert find_model("juggernautXL", library).base == "sdxl"
    assert find_model("JUGGERNAUTXL.safetensors", library).name == "juggernautXL"
    with pytest.raises(ZvsError) as caught:
        find_model("pixel", library)
    message = str(caught.value)
    assert "matches 2" in message
    assert "lora_old" in message
    assert "full path" in message
    # A kind narrows the choice; a path is exact.
    assert find_model("dreamshaper", library, kind="controlnet").kind == "controlnet"
    path = tmp_path / "lib" / "lora_old" / "pixel.safetensors"
    assert find_model(path, library).details["lora_format"] == "peft"
    with pytest.raises(ZvsError, match="did you mean: pixel"):
        find_model("pixle", library)
    outside = write_st(tmp_path / "elsewhere" / "new.safetensors", KOHYA_SDXL)
    assert find_model(str(outside), library).base == "sdxl"


def test_compatible_combination_passes(library, tmp_path):
    check_compatible(
        find_model("dreamshaper", library, "checkpoint"),
        [find_model(tmp_path / "lib" / "lora" / "pixel.safetensors", library)],
        [find_model("canny15", library)],
    )


def test_sdxl_lora_on_sd1_checkpoint(library):
    ckpt = find_model("dreamshaper", library, "checkpoint")
    with pytest.raises(ZvsError) as caught:
        check_compatible(ckpt, loras=[find_model("xl_detail", library)])
    assert str(caught.value) == (
        "LoRA 'xl_detail' is for SDXL but the checkpoint 'dreamshaper' is SD1.x: pick an SD1.x LoRA"
    )


def test_sd2_controlnet_on_sd1_checkpoint(library):
    ckpt = find_model("dreamshaper", library, "checkpoint")
    with pytest.raises(ZvsError, match=r"ControlNet 'canny21' is for SD2\.x .* pick an SD1\.x"):
        check_compatible(ckpt, controlnets=[find_model("canny21", library)])


def test_wrong_kinds_and_bases(library, tmp_path):
    lora = find_model("xl_detail", library)
    ckpt = find_model("dreamshaper", library, "checkpoint")
    with pytest.raises(ZvsError, match="'xl_detail' is a LoRA, not a checkpoint: use it as a LoRA"):
        check_compatible(lora)
    with pytest.raises(ZvsError, match="is a checkpoint, not a LoRA: use it as the model"):
        check_compatible(ckpt, loras=[ckpt])
    vae = identify(write_st(tmp_path / "vae.safetensors", VAE_ORIGINAL))
    with pytest.raises(ZvsError, match=r"'vae' is a VAE, not a checkpoint$"):
        check_compatible(vae)
    with pytest.raises(ZvsError, match=r"'vae' is a VAE, not a ControlNet$"):
        check_compatible(ckpt, controlnets=[vae])
    with pytest.raises(ZvsError, match=r"is SD3: zvstudio renders with SD1\.x models"):
        check_compatible(find_model("sd3_medium", library))
    with pytest.raises(ZvsError) as caught:
        check_compatible(
            find_model("juggernautXL", library), controlnets=[find_model("canny21", library)]
        )
    assert "do not go together" in str(caught.value)
    assert str(caught.value).count("\n  - ") == 2


def test_pickles_are_refused_unless_allowed(library):
    old = find_model("old", library)
    with pytest.raises(ZvsError) as caught:
        check_loadable(old)
    assert "pickled" in str(caught.value)
    assert "--allow-pickle" in str(caught.value)
    assert "convert" in str(caught.value)
    check_loadable(old, allow_pickle=True)
    check_loadable(find_model("dreamshaper", library, "checkpoint"))


# ---------------------------------------------------------------------------------------------
# Hashes and listings


def test_short_hash_is_autov2_and_cached(tmp_path, monkeypatch):
    path = write_st(tmp_path / "m.safetensors", KOHYA_SD1)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    info = identify(path)
    assert info.short_hash == expected == short_hash(path)

    def no_hashing(*_):
        raise AssertionError("hashed again")

    monkeypatch.setattr(identify_module.hashlib, "sha256", no_hashing)
    assert short_hash(path) == expected  # from memory
    identify_module._hash_memo.clear()
    assert short_hash(path) == expected  # from the on-disk cache
    assert (Path(os.environ["ZVSTUDIO_CACHE_DIR"]) / "model_hashes.json").is_file()
    monkeypatch.undo()
    with open(path, "ab") as stream:  # a changed file is hashed again
        stream.write(b"\0")
    assert short_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:10] != expected


def test_format_table_and_json(library):
    table = format_table(library)
    for model in library:
        assert model.name in table
        assert model.short_hash in table
        assert str(model.path) in table
    assert "(pickle)" in table
    assert table.splitlines()[0].split() == ["KIND", "BASE", "NAME", "SIZE", "HASH", "PATH"]
    assert format_size(library[0].size_bytes) in table
    assert format_size(2_130_000_000) == "2.13 GB"
    assert format_size(144_000_000) == "144.0 MB"
    assert format_size(12_000) == "12 KB"
    assert format_table([]) == "no models found"
    data = json.loads(json.dumps([m.to_dict() for m in library]))
    first = data[0]
    assert set(first) == {
        "path",
        "name",
        "kind",
        "base",
        "format",
        "size_bytes",
        "short_hash",
        "pickled",
        "details",
    }
    assert first["short_hash"] == library[0].short_hash


def test_the_scanner_imports_no_hub_client():
    """Listing models must not import what could reach the network (or take seconds to load)."""
    code = (
        "import sys, zvstudio.diffusion.library\n"
        "hub = ('diffusers', 'huggingface_hub', 'transformers')\n"
        "heavy = [m for m in hub if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_models_command_lists_what_it_finds(tmp_path, monkeypatch, capsys):
    from zvstudio.cli import main

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("ZVSTUDIO_MODELS", raising=False)
    install = tmp_path / "webui"
    loras = install / "models" / "Lora"
    loras.mkdir(parents=True)
    (install / "webui.py").write_text("")
    layer = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    shapes = {f"{layer}.lora_down.weight": (4, 768), f"{layer}.lora_up.weight": (320, 4)}
    write_st(loras / "inkwash.safetensors", shapes)
    # The install's ControlNet extension keeps lllyasviel's HED annotator here.
    hed = install / "extensions/sd-webui-controlnet/annotator/downloads/hed/ControlNetHED.pth"
    hed.parent.mkdir(parents=True)
    hed.write_bytes(b"weights")
    assert main(["models", "--folder", str(install), "--json", "--no-hash"]) == 0
    report = json.loads(capsys.readouterr().out)
    listed = report["models"]
    assert [(m["name"], m["kind"], m["base"]) for m in listed] == [("inkwash", "lora", "sd1")]
    annotator_files = report["annotators"]
    assert annotator_files["hed/softedge"] == str(hed)
    assert annotator_files["depth/normal"] is None and annotator_files["lineart"] is None
    assert main(["models", "--folder", str(install)]) == 0
    out = capsys.readouterr().out
    assert "inkwash" in out and f"hed/softedge: {hed}" in out
    assert "lineart: not found: put lllyasviel's sk_model.pth in a model folder's" in out
    assert main(["models", "--folder", str(tmp_path / "nowhere")]) == 1
    assert "not a folder" in capsys.readouterr().err


def test_dynamicrafter_checkpoints_are_video_models(tmp_path):
    shapes = {
        **SD1_CHECKPOINT,
        D + "init_attn.0.proj_in.weight": (320, 320, 1, 1),
        "image_proj_model.latents": (1, 16, 1024),
    }
    info = identify(write_st(tmp_path / "dc512.safetensors", shapes))
    assert (info.kind, info.base) == ("video_model", "dynamicrafter")
    stride = identify(
        write_st(
            tmp_path / "dc256.safetensors", {**shapes, D + "framestride_embed.0.weight": (1, 1)}
        )
    )
    assert "256" in stride.details["note"]
    # Without the image query transformer, the same UNet keys are an SD checkpoint.
    assert identify(write_st(tmp_path / "sd.safetensors", SD1_CHECKPOINT)).kind == "checkpoint"
    pickled = tmp_path / "models" / "dynamicrafter_1024_v1.ckpt"
    pickled.parent.mkdir()
    pickled.write_bytes(EVIL_PICKLE)
    (found,) = scan([tmp_path / "models"])
    assert (found.kind, found.base, found.pickled) == ("video_model", "dynamicrafter", True)
    assert "nonexistent_zvs_module" not in sys.modules
