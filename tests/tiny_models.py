"""Tiny random SD1.x-shaped models for tests, written in the layouts users have.

The models keep SD1.x's structure (cross-attention UNet, KL VAE, CLIP text encoder, CLIP BPE
tokenizer) at a few hundred kilobytes, so loading and sampling code runs in milliseconds on a
CPU. `write_tiny_diffusers` writes a diffusers folder; `write_tiny_single_file` writes one
`.safetensors` in the ORIGINAL (CompVis / A1111) key layout, and `write_tiny_config_dir` the
config folder to pass as `load_sd15_components(..., config_dir=...)` for it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from zvstudio.diffusion.tokenizer import clip_vocab, sd15_config_dir, write_clip_tokenizer

# A handful of words as BPE merges (first pair merged first), on top of the 2 x 256 byte tokens.
TINY_MERGES = [
    "c a",
    "ca t</w>",
    "d o",
    "do g</w>",
    "p h",
    "o t",
    "ph ot",
    "phot o</w>",
    "o f</w>",
    "r e",
    "re d</w>",
]
TINY_VOCAB_SIZE = len(clip_vocab(TINY_MERGES))

TINY_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [32, 64],
    "cross_attention_dim": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "in_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 8,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}
TINY_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
}
TINY_TEXT = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "hidden_act": "quick_gelu",
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 32,
    "vocab_size": TINY_VOCAB_SIZE,
    "bos_token_id": TINY_VOCAB_SIZE - 2,
    "eos_token_id": TINY_VOCAB_SIZE - 1,
    "pad_token_id": TINY_VOCAB_SIZE - 1,
}


def build_tiny_models(seed: int = 0) -> tuple:
    """(unet, vae, text_encoder) with seeded random weights, in eval mode."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(TINY_UNET)
    vae = AutoencoderKL.from_config(TINY_VAE)
    text = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    # Randomise norms and biases too (they start at 1/0), so a wrongly mapped one shows.
    with torch.no_grad():
        for model in (unet, vae, text):
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    return unet.eval(), vae.eval(), text.eval()


def write_tiny_tokenizer(dest: Path) -> Path:
    """A CLIP tokenizer folder (vocab.json, merges.txt, configs) with the tiny vocabulary."""
    return write_clip_tokenizer(TINY_MERGES, dest)


def write_tiny_config_dir(dest: Path) -> Path:
    """A diffusers-layout config folder (no weights) describing the tiny models."""
    ours = sd15_config_dir()
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ours / "model_index.json", dest / "model_index.json")
    for sub, config, name in (
        ("unet", TINY_UNET, "config.json"),
        ("vae", TINY_VAE, "config.json"),
        ("text_encoder", TINY_TEXT, "config.json"),
    ):
        (dest / sub).mkdir(exist_ok=True)
        (dest / sub / name).write_text(json.dumps(config, indent=2))
    (dest / "scheduler").mkdir(exist_ok=True)
    shutil.copyfile(
        ours / "scheduler" / "scheduler_config.json", dest / "scheduler" / "scheduler_config.json"
    )
    write_tiny_tokenizer(dest / "tokenizer")
    return dest


def write_tiny_diffusers(dest: Path, seed: int = 0) -> Path:
    """A complete diffusers model folder with the tiny models' weights (safetensors)."""
    write_tiny_config_dir(dest)
    for model, sub in zip(build_tiny_models(seed), ("unet", "vae", "text_encoder"), strict=True):
        model.save_pretrained(dest / sub)
    return dest


def write_tiny_single_file(dest: Path, seed: int = 0, extras: bool = True) -> Path:
    """The tiny models as one `.safetensors` in the original SD1.x key layout.

    `extras` adds keys real files carry that no component uses (the DDPM schedule buffers,
    CLIP's position_ids), so loaders are tested against them.
    """
    from safetensors.torch import save_file

    unet, vae, text = build_tiny_models(seed)
    state = to_original_layout(unet.state_dict(), vae.state_dict(), text.state_dict())
    if extras:
        state["alphas_cumprod"] = torch.linspace(0.999, 0.005, 1000)
        state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[
            None
        ]
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(dest))
    return dest


# ---------------------------------------------- diffusers -> original (CompVis) key layout
# The inverse of diffusers' single-file conversion, written after the table in diffusers'
# scripts/convert_diffusers_to_original_stable_diffusion.py, generalised to any block count.

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTN = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _rename_first(rest: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def unet_key_to_original(key: str, config: dict = TINY_UNET) -> str:
    n = config["layers_per_block"] + 1
    for new, old in _UNET_TOP.items():
        if key.startswith(new):
            return old + key[len(new) :]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"input_blocks.{n * i + j + 1}.0.{_rename_first(rest, _UNET_RESNET)}"
        return f"input_blocks.{n * i + j + 1}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{n * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename_first(m[2], _UNET_RESNET)}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"output_blocks.{n * i + j}.0.{_rename_first(rest, _UNET_RESNET)}"
        return f"output_blocks.{n * i + j}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        i = int(m[1])
        slot = 2 if "CrossAttn" in config["up_block_types"][i] else 1
        return f"output_blocks.{n * i + n - 1}.{slot}.{m[2]}"
    raise KeyError(f"no original name for UNet key {key}")


def vae_key_to_original(key: str, config: dict = TINY_VAE) -> str:
    last = len(config["block_out_channels"]) - 1
    key = key.replace("conv_norm_out.", "norm_out.")
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}".replace("conv_shortcut", "nin_shortcut")
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        block = last - int(m[1])  # the original numbers decoder blocks from the bottom
        return f"decoder.up.{block}.block.{m[2]}.{m[3]}".replace("conv_shortcut", "nin_shortcut")
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        return f"decoder.up.{last - int(m[1])}.upsample.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}".replace("conv_shortcut", "nin_shortcut")
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        return f"{m[1]}.mid.attn_1.{_rename_first(m[2], _VAE_ATTN)}"
    return key  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv keep their names


def to_original_layout(
    unet: dict[str, torch.Tensor],
    vae: dict[str, torch.Tensor],
    text: dict[str, torch.Tensor],
    unet_config: dict = TINY_UNET,
    vae_config: dict = TINY_VAE,
) -> dict[str, torch.Tensor]:
    """One state dict in the original SD1.x layout, from diffusers/transformers state dicts."""
    out = {
        "model.diffusion_model." + unet_key_to_original(k, unet_config): v for k, v in unet.items()
    }
    for k, v in vae.items():
        name = "first_stage_model." + vae_key_to_original(k, vae_config)
        # The original VAE attention projections are 1x1 convolutions.
        out[name] = v[..., None, None] if ".mid.attn_1." in name and v.ndim == 2 else v
    for k, v in text.items():
        out["cond_stage_model.transformer.text_model." + k.removeprefix("text_model.")] = v
    return out


# ------------------------------------------------------------------------------- ControlNets


def build_tiny_controlnet(unet, seed: int = 0):
    """A ControlNet made from `unet` (SD1.5's 3-channel hint embedding), seeded random weights."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3)
    # from_unet zeroes the zero convolutions; randomise everything so a wrongly mapped one shows.
    with torch.no_grad():
        for p in controlnet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return controlnet.eval()


def strong_controlnet(unet, seed: int = 2):
    """A tiny ControlNet whose zero convolutions are far from zero, so its images matter."""
    controlnet = build_tiny_controlnet(unet, seed=seed)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(
                ("controlnet_down", "controlnet_mid", "controlnet_cond_embedding.conv_out")
            ):
                parameter.mul_(50)
    return controlnet


def write_tiny_controlnet_config_dir(dest: Path, controlnet) -> Path:
    """The tiny config folder plus `controlnet/config.json`, to pass as `config_dir`."""
    write_tiny_config_dir(dest)
    controlnet.save_config(dest / "controlnet")
    return dest


def controlnet_key_to_original(key: str, config) -> str:
    """The original (lllyasviel) name of a diffusers ControlNet key, without `control_model.`."""
    hint_convs = 2 * (len(config["conditioning_embedding_out_channels"]) - 1)
    if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.*)", key):
        return f"zero_convs.{m[1]}.0.{m[2]}"
    if m := re.fullmatch(r"controlnet_mid_block\.(.*)", key):
        return f"middle_block_out.0.{m[1]}"
    # input_hint_block is a Sequential of convolutions with a SiLU after each but the last.
    if m := re.fullmatch(r"controlnet_cond_embedding\.conv_in\.(.*)", key):
        return f"input_hint_block.0.{m[1]}"
    if m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.*)", key):
        return f"input_hint_block.{2 * int(m[1]) + 2}.{m[2]}"
    if m := re.fullmatch(r"controlnet_cond_embedding\.conv_out\.(.*)", key):
        return f"input_hint_block.{2 * hint_convs + 2}.{m[1]}"
    return unet_key_to_original(key, config)  # the encoder half is named as in the UNet


def write_tiny_controlnet_single_file(
    dest: Path, controlnet, config=None, prefix: str = "control_model."
) -> Path:
    """`controlnet` as one `.safetensors` in the ORIGINAL layout (`control_model.*` keys, or no
    prefix with `prefix=""`); `config` defaults to the model's own."""
    from safetensors.torch import save_file

    config = config or controlnet.config
    state = {
        prefix + controlnet_key_to_original(k, config): v.contiguous()
        for k, v in controlnet.state_dict().items()
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dest))
    return dest


# ---------------------------------------------------------------------- AnimateDiff motion

TINY_MOTION = {
    "block_out_channels": [32, 64],
    "motion_layers_per_block": 1,
    "motion_num_attention_heads": 8,  # what load_motion_adapter assumes for single files
    "motion_norm_num_groups": 32,
    "motion_max_seq_length": 24,
    "use_motion_mid_block": True,
}


def build_tiny_motion_adapter(seed: int = 0, **overrides):
    """A MotionAdapter for the tiny UNet with seeded random weights (the real ones start with
    zeroed output projections; randomised, the temporal attention changes the result)."""
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    adapter = MotionAdapter(**{**TINY_MOTION, **overrides})
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return adapter.eval()


def motion_key_to_original(key: str) -> str:
    """The original AnimateDiff name of a diffusers MotionAdapter key (diffusers' single-file
    conversion, reversed)."""
    key = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", key)
    for new, old in (
        (".norm1", ".norms.0"),
        (".norm2", ".norms.1"),
        (".norm3", ".ff_norm"),
        (".attn1", ".attention_blocks.0"),
        (".attn2", ".attention_blocks.1"),
    ):
        key = key.replace(new, old)
    return key


def write_tiny_motion_single_file(dest: Path, adapter) -> Path:
    """`adapter` as one `.safetensors` in the original AnimateDiff layout (mm_sd_v15_v2 style,
    with the `pos_encoder.pe` tables the original files carry on each attention block)."""
    from safetensors.torch import save_file

    state = {}
    for k, v in adapter.state_dict().items():
        if k.endswith("pos_embed.pe"):
            block = motion_key_to_original(k.removesuffix("pos_embed.pe"))
            for n in (0, 1):
                state[f"{block}attention_blocks.{n}.pos_encoder.pe"] = v.clone()
        else:
            state[motion_key_to_original(k)] = v.contiguous()
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dest))
    return dest


def write_tiny_pix2pix(dest: Path, seed: int = 5) -> Path:
    """A tiny InstructPix2Pix diffusers folder: the tiny model with an 8-input-channel UNet
    (noise + the input image's latent)."""
    from diffusers import UNet2DConditionModel

    write_tiny_diffusers(dest)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config({**TINY_UNET, "in_channels": 8})
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    unet.save_pretrained(dest / "unet")
    return dest


# -- IP-Adapter ------------------------------------------------------------------------------
# A CLIP vision encoder with projection; 128 wide with 2 heads, so that the head count read
# from a single file's shapes (width / 64) is the model's own.
TINY_VISION = {
    "hidden_size": 128,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 24,
    "hidden_act": "gelu",
}


def build_tiny_image_encoder(seed: int = 0):
    """A CLIPVisionModelWithProjection with seeded random weights, in eval mode."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VISION))
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return encoder.eval()


def write_tiny_image_encoder(dest: Path, seed: int = 0) -> Path:
    """The tiny encoder as a transformers folder (config.json + model.safetensors)."""
    build_tiny_image_encoder(seed).save_pretrained(dest)
    return dest


def _cross_attention_sizes(unet) -> list[int]:
    """The hidden size of each cross-attention layer, in the order IP-Adapter numbers them."""
    sizes = []
    channels = unet.config.block_out_channels
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        if name.startswith("mid_block"):
            sizes.append(channels[-1])
        elif name.startswith("up_blocks"):
            sizes.append(list(reversed(channels))[int(name.split(".")[1])])
        else:
            sizes.append(channels[int(name.split(".")[1])])
    return sizes


def tiny_ip_adapter(unet, layout: str = "base", seed: int = 0, strength: float = 1.0) -> dict:
    """An IP-Adapter for `unet` and the tiny encoder in the released files' flat key layout
    (`image_proj.*`, `ip_adapter.N.to_k_ip.weight`, N = 1, 3, 5, ...). `strength` multiplies
    the value projections, so the image's attention can be made to matter."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    generator = torch.Generator().manual_seed(seed)
    context = unet.config.cross_attention_dim

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.1

    state: dict[str, torch.Tensor] = {}
    if layout == "base":
        tokens, width = 4, TINY_VISION["projection_dim"]
        state |= {
            "image_proj.proj.weight": random(context * tokens, width),
            "image_proj.proj.bias": random(context * tokens),
            "image_proj.norm.weight": 1 + random(context),
            "image_proj.norm.bias": random(context),
        }
    elif layout == "plus":
        torch.manual_seed(seed)
        resampler = IPAdapterPlusImageProjection(
            embed_dims=TINY_VISION["hidden_size"],
            output_dims=context,
            hidden_dims=64,
            depth=4,
            dim_head=64,
            heads=1,
            num_queries=4,
        )
        for key, value in _resampler_to_original(resampler.state_dict()).items():
            state[f"image_proj.{key}"] = value + random(*value.shape)
    else:
        raise ValueError(layout)
    for index, size in enumerate(_cross_attention_sizes(unet)):
        key_id = 2 * index + 1
        state[f"ip_adapter.{key_id}.to_k_ip.weight"] = random(size, context) * 3
        state[f"ip_adapter.{key_id}.to_v_ip.weight"] = random(size, context) * 3 * strength
    return state


def _resampler_to_original(state: dict) -> dict:
    """diffusers' IPAdapterPlusImageProjection keys in the IP-Adapter Resampler's own names
    (the inverse of diffusers' conversion)."""
    renames = {
        "ln0": "0.norm1",
        "ln1": "0.norm2",
        "attn.to_q": "0.to_q",
        "attn.to_out.0": "0.to_out",
        "ff.0": "1.0",
        "ff.1.net.0.proj": "1.1",
        "ff.1.net.2": "1.3",
    }
    out = {}
    for key, value in state.items():
        match = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if match is None:
            out[key] = value
            continue
        layer, name, kind = match.groups()
        if name == "attn.to_k":
            value_key = f"layers.{layer}.attn.to_v.{kind}"
            out[f"layers.{layer}.0.to_kv.{kind}"] = torch.cat([value, state[value_key]])
        elif name != "attn.to_v":
            out[f"layers.{layer}.{renames[name]}.{kind}"] = value
    return out
