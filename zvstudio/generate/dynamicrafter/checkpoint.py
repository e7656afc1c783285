"""Load a released DynamiCrafter checkpoint onto our modules, fully offline.

A released `model.ckpt` is one Lightning state dict (layout read from Doubiiu/DynamiCrafter's
`lvdm/models/ddpm3d.py` LatentVisualDiffusion and its configs) with five parts:

* `model.diffusion_model.`: the 3D UNet -> `DynamiCrafterUNet`, same names (the 256 model's
  `framestride_embed` is our `fps_embedding`);
* `image_proj_model.`: the query transformer -> `Resampler`, same names;
* `cond_stage_model.model.`: OpenCLIP ViT-H/14 without its vision tower -> transformers'
  `CLIPTextModel`;
* `embedder.model.`: OpenCLIP ViT-H/14 without its text transformer -> transformers'
  `CLIPVisionModel`;
* `first_stage_model.`: the SD KL autoencoder -> diffusers' `AutoencoderKL` (renamed by
  diffusers' own converter, as `zvstudio.diffusion.loading` does for SD1.x);

plus top-level schedule buffers (`betas`, `alphas_cumprod`, ..., `scale_arr`), which are not
loaded but checked against the chosen preset's schedule (it tells the 256 model apart).

OpenCLIP stacks each attention's q/k/v projections into one `in_proj_weight` / `in_proj_bias`
(torch.nn.MultiheadAttention); transformers keeps them apart, so those are split in three. The
text tower is read at its penultimate layer (then `ln_final`), so we build it one layer short
and its last block is left unused; the embedder's leftover text pieces and the CLIP
projections are unused too. Every other tensor must match: missing, unexpected and misshapen
tensors are counted and reported as a ZvsError (diffusers and transformers only log those).

Pickled checkpoints (the released `.ckpt`) are refused unless the caller allows them, then
unpickled as plain tensors only (`torch.load(weights_only=True)`, as `zvstudio.diffusion.loading`
does) and converted once to `.safetensors` in a cache folder, written atomically, so later
loads are lazy and never unpickle again.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from zvstudio.diffusion.loading import (
    PICKLE_SUFFIXES,
    force_offline,
    open_checkpoint,
    pickle_refused,
    rename_map,
)
from zvstudio.errors import ZvsError
from zvstudio.generate.dynamicrafter.config import DynamiCrafterConfig
from zvstudio.generate.dynamicrafter.resampler import Resampler
from zvstudio.generate.dynamicrafter.schedule import alphas_cumprod
from zvstudio.generate.dynamicrafter.unet3d import DynamiCrafterUNet
from zvstudio.hashing import text_hash

if TYPE_CHECKING:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPVisionModel

__all__ = [
    "PARTS",
    "DynamiCrafterModels",
    "Source",
    "convert_to_safetensors",
    "empty_models",
    "load_dynamicrafter",
    "match_checkpoint",
    "text_tower_config",
    "vision_tower_config",
]

UNET_PREFIX = "model.diffusion_model."
IMAGE_PROJ_PREFIX = "image_proj_model."
TEXT_PREFIX = "cond_stage_model.model."
VISION_PREFIX = "embedder.model."
VAE_PREFIX = "first_stage_model."
# (attribute of DynamiCrafterModels, checkpoint prefix, what to call it in messages)
PARTS = (
    ("unet", UNET_PREFIX, "UNet"),
    ("image_proj", IMAGE_PROJ_PREFIX, "image projection"),
    ("text_encoder", TEXT_PREFIX, "text encoder"),
    ("image_encoder", VISION_PREFIX, "image encoder"),
    ("vae", VAE_PREFIX, "VAE"),
)
# The released 256 model names the fps embedding after the frame stride it conditions on; the
# authors' inference script renames it on load (scripts/evaluation/inference.py).
_UNET_ALIASES = (("fps_embedding.", "framestride_embed."),)
# Present in the towers' checkpoint parts, unused for DynamiCrafter's context: the CLIP
# projections and logit scale, the causal mask buffer some open_clip versions saved, and the
# text pieces the image embedder keeps (only its text *transformer* was deleted).
_UNUSED_TEXT = ("text_projection", "logit_scale", "attn_mask")
_UNUSED_VISION = (
    "text_projection",
    "logit_scale",
    "attn_mask",
    "token_embedding.weight",
    "positional_embedding",
    "ln_final.weight",
    "ln_final.bias",
    "visual.proj",
)


@dataclass(frozen=True)
class Source:
    """Where a parameter comes from: a checkpoint key, or one third of a stacked q/k/v one."""

    key: str
    part: int | None = None  # 0, 1, 2: q, k, v of an OpenCLIP in_proj tensor

    def shape(self, file_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.part is None:
            return tuple(file_shape)
        return (file_shape[0] // 3, *file_shape[1:])

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.part is None else tensor.chunk(3, dim=0)[self.part]


@dataclass
class DynamiCrafterModels:
    """A DynamiCrafter model's parts, in eval mode on the requested device and dtype."""

    config: DynamiCrafterConfig
    unet: DynamiCrafterUNet
    image_proj: Resampler
    text_encoder: CLIPTextModel  # one layer short: its last_hidden_state is the penultimate one
    image_encoder: CLIPVisionModel  # last_hidden_state (before post_layernorm) is what we use
    vae: AutoencoderKL
    source: Path | None = None

    def modules(self) -> list[torch.nn.Module]:
        return [getattr(self, attr) for attr, _, _ in PARTS]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        for module in self.modules():
            module.to(device=device, dtype=dtype)
        return self


# ------------------------------------------------------------------------------ the towers


def text_tower_config(config: DynamiCrafterConfig) -> Any:
    """transformers' CLIPTextConfig for OpenCLIP's text tower, one layer short (penultimate)."""
    from transformers import CLIPTextConfig

    text = config.text
    return CLIPTextConfig(
        vocab_size=text.vocab_size,
        hidden_size=text.width,
        intermediate_size=text.mlp_width,
        projection_dim=text.projection_dim,
        num_hidden_layers=text.layers - 1,
        num_attention_heads=text.heads,
        max_position_embeddings=text.context_length,
        hidden_act="gelu",  # OpenCLIP's laion ViT-H/14 uses exact GELU, not OpenAI's quick GELU
        layer_norm_eps=1e-5,
        bos_token_id=text.vocab_size - 2,  # 49406 / 49407 for the real vocabulary
        eos_token_id=text.vocab_size - 1,
        pad_token_id=0,  # OpenCLIP pads with token 0 ("!")
    )


def vision_tower_config(config: DynamiCrafterConfig) -> Any:
    """transformers' CLIPVisionConfig for OpenCLIP's ViT-H/14 vision tower."""
    from transformers import CLIPVisionConfig

    vision = config.vision
    return CLIPVisionConfig(
        hidden_size=vision.width,
        intermediate_size=vision.mlp_width,
        projection_dim=vision.projection_dim,
        num_hidden_layers=vision.layers,
        num_attention_heads=vision.heads,
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )


def _vae_config(config: DynamiCrafterConfig) -> dict[str, Any]:
    from diffusers import AutoencoderKL

    from zvstudio.diffusion.tokenizer import sd15_config_dir

    vae = dict(AutoencoderKL.load_config(sd15_config_dir(), subfolder="vae"))
    widths = config.vae_block_out_channels
    vae.update(
        block_out_channels=list(widths),
        layers_per_block=config.vae_layers_per_block,
        down_block_types=["DownEncoderBlock2D"] * len(widths),
        up_block_types=["UpDecoderBlock2D"] * len(widths),
        scaling_factor=config.vae_scale_factor,
    )
    return vae


def empty_models(config: DynamiCrafterConfig) -> DynamiCrafterModels:
    """All parts built from `config` with parameters on the meta device (no memory, no init).

    Buffers stay real (CLIP's non-persistent position ids); fill the parameters with
    `load_state_dict(..., assign=True)`.
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPVisionModel

    with init_empty_weights():
        return DynamiCrafterModels(
            config=config,
            unet=DynamiCrafterUNet(config.unet),
            image_proj=Resampler(config.resampler),
            text_encoder=CLIPTextModel(text_tower_config(config)),
            image_encoder=CLIPVisionModel(vision_tower_config(config)),
            vae=AutoencoderKL.from_config(_vae_config(config)),
        )


# ------------------------------------------------------------------------------ key mapping

# transformers' CLIP encoder layer names -> OpenCLIP residual block names.
_LAYER_RULES = (
    (r"self_attn\.q_proj\.(weight|bias)", r"attn.in_proj_\1", 0),
    (r"self_attn\.k_proj\.(weight|bias)", r"attn.in_proj_\1", 1),
    (r"self_attn\.v_proj\.(weight|bias)", r"attn.in_proj_\1", 2),
    (r"self_attn\.out_proj\.(weight|bias)", r"attn.out_proj.\1", None),
    (r"layer_norm1\.(weight|bias)", r"ln_1.\1", None),
    (r"layer_norm2\.(weight|bias)", r"ln_2.\1", None),
    (r"mlp\.fc1\.(weight|bias)", r"mlp.c_fc.\1", None),
    (r"mlp\.fc2\.(weight|bias)", r"mlp.c_proj.\1", None),
)
_TEXT_NAMES = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_VISION_NAMES = {
    "embeddings.class_embedding": "visual.class_embedding",
    "embeddings.patch_embedding.weight": "visual.conv1.weight",
    "embeddings.position_embedding.weight": "visual.positional_embedding",
    "pre_layrnorm.weight": "visual.ln_pre.weight",
    "pre_layrnorm.bias": "visual.ln_pre.bias",
    "post_layernorm.weight": "visual.ln_post.weight",
    "post_layernorm.bias": "visual.ln_post.bias",
}


def open_clip_name(hf_name: str, vision: bool) -> tuple[str, int | None] | None:
    """The OpenCLIP key (and q/k/v part) for a transformers CLIP parameter, None if unknown.

    transformers names parameters with or without a `text_model.` / `vision_model.` level
    depending on its version; both are accepted.
    """
    name = hf_name.removeprefix("vision_model." if vision else "text_model.")
    names = _VISION_NAMES if vision else _TEXT_NAMES
    if name in names:
        return names[name], None
    match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", name)
    if match is None:
        return None
    tower = "visual.transformer" if vision else "transformer"
    for pattern, target, part in _LAYER_RULES:
        if re.fullmatch(pattern, match[2]):
            return f"{tower}.resblocks.{match[1]}.{re.sub(pattern, target, match[2])}", part
    return None


def _direct_sources(module: torch.nn.Module, prefix: str, keys: set[str], aliases=()):
    """Sources for a module whose names are the checkpoint's (after the prefix)."""
    sources = {}
    for name in module.state_dict():
        key = prefix + name
        for ours, theirs in aliases:
            if key not in keys and name.startswith(ours):
                key = prefix + theirs + name[len(ours) :]
        if key in keys:
            sources[name] = Source(key)
    return sources


def _tower_sources(module: torch.nn.Module, prefix: str, keys: set[str], vision: bool):
    sources = {}
    for name in module.state_dict():
        found = open_clip_name(name, vision)
        if found is not None and prefix + found[0] in keys:
            sources[name] = Source(prefix + found[0], found[1])
    return sources


def _vae_sources(vae: torch.nn.Module, keys: set[str]) -> dict[str, Source]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    renames = rename_map(convert_ldm_vae_checkpoint, _under(keys, VAE_PREFIX), vae.config)
    return {name: Source(key) for name, key in renames.items()}


def _unused(keys: Iterable[str], config: DynamiCrafterConfig) -> set[str]:
    """Checkpoint keys that are known and deliberately not loaded."""
    last_text_block = f"{TEXT_PREFIX}transformer.resblocks.{config.text.layers - 1}."
    known = {TEXT_PREFIX + n for n in _UNUSED_TEXT} | {VISION_PREFIX + n for n in _UNUSED_VISION}
    # The last text block (we read the penultimate layer) and a training-only VAE loss.
    skipped = (last_text_block, VAE_PREFIX + "loss.")
    unused = {key for key in keys if key in known or key.startswith(skipped)}
    return unused


def _under(keys: Iterable[str], prefix: str) -> list[str]:
    return [k for k in keys if k.startswith(prefix)]


def _fits(file_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> bool:
    # The VAE's attention projections are 1x1 convolutions in the file, linear layers here.
    n = len(model_shape)
    return tuple(file_shape[:n]) == tuple(model_shape) and all(d == 1 for d in file_shape[n:])


def match_checkpoint(
    models: DynamiCrafterModels,
    shapes: Mapping[str, tuple[int, ...]],
    name: str = "the checkpoint",
) -> dict[str, dict[str, Source]]:
    """{part: {parameter name: Source}} for every part of `models` (see PARTS).

    `shapes` lists the checkpoint's keys and tensor shapes. Raises ZvsError with the counts of
    missing, unexpected and misshapen tensors (in all, and per part in the hint) unless the
    checkpoint fits the models exactly.
    """
    keys = set(shapes)
    sources = {
        "unet": _direct_sources(models.unet, UNET_PREFIX, keys, _UNET_ALIASES),
        "image_proj": _direct_sources(models.image_proj, IMAGE_PROJ_PREFIX, keys),
        "text_encoder": _tower_sources(models.text_encoder, TEXT_PREFIX, keys, vision=False),
        "image_encoder": _tower_sources(models.image_encoder, VISION_PREFIX, keys, vision=True),
        "vae": _vae_sources(models.vae, keys),
    }
    used = {s.key for part in sources.values() for s in part.values()}
    used |= _unused(keys, models.config)
    report, totals = [], [0, 0, 0]
    for attr, prefix, label in PARTS:
        module_state = getattr(models, attr).state_dict()
        missing = sum(1 for p in module_state if p not in sources[attr])
        misshapen = sum(
            1
            for p, src in sources[attr].items()
            if not _fits(src.shape(tuple(shapes[src.key])), tuple(module_state[p].shape))
        )
        unexpected = sum(1 for k in _under(keys, prefix) if k not in used)
        counts = (missing, unexpected, misshapen)
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        if any(counts):
            report.append(f"{label}: {missing} missing, {unexpected} unexpected, {misshapen} wrong")
    if any(totals):
        missing, unexpected, misshapen = totals
        raise ZvsError(
            f"{name} is not a DynamiCrafter {models.config.name} checkpoint: {missing} tensors "
            f"missing, {unexpected} unexpected, {misshapen} of the wrong shape.",
            hint="; ".join(report) + ". " + _guess_variant(keys, models.config),
        )
    return sources


def _guess_variant(keys: set[str], config: DynamiCrafterConfig) -> str:
    """A hint naming the released model a file looks like, from its key names."""
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        return "This file has no DynamiCrafter UNet (model.diffusion_model.*)."
    learnable = any(k.startswith(UNET_PREFIX) and k.endswith(".attn2.alpha") for k in keys)
    if learnable != config.unet.image_cross_attention_scale_learnable:
        looks = "the 256 model" if learnable else "a 512 / 1024 / interpolation model"
        return f"It looks like {looks}; pick that preset."
    return "Pick a released DynamiCrafter checkpoint (256, 512, 1024 or 512 interpolation)."


def check_schedule(
    tensors: Mapping[str, torch.Tensor], config: DynamiCrafterConfig, name: str
) -> None:
    """Compare a checkpoint's saved alpha-bar (when it has one) with the preset's schedule.

    The 256 model was trained on SD's schedule, the others with zero terminal SNR; sampling
    one with the other's schedule gives washed-out or noisy videos, so refuse it.
    """
    if "alphas_cumprod" not in set(tensors):  # (a lazy file's `in` would read the tensor)
        return
    saved = tensors["alphas_cumprod"].to(torch.float64).flatten()
    ours = alphas_cumprod(config.schedule)
    if saved.shape != ours.shape or not torch.allclose(saved, ours, atol=1e-5, rtol=1e-4):
        kind = "zero-terminal-SNR" if float(saved[-1]) < 1e-6 else "Stable Diffusion"
        raise ZvsError(
            f"{name} was trained with another noise schedule ({kind}) than the "
            f"DynamiCrafter {config.name} model.",
            hint="the 256 model uses Stable Diffusion's schedule, 512 / 1024 / interpolation "
            "zero terminal SNR: pick the preset that matches the file",
        )


# ------------------------------------------------------------------------------- loading


def convert_to_safetensors(path: Path, cache_dir: Path, allow_pickle: bool = False) -> Path:
    """The `.safetensors` version of a checkpoint: `path` itself when it already is one, else
    a converted copy in `cache_dir` (made once; named by the source's path, size and mtime).

    A pickled file is refused (ZvsError) unless `allow_pickle`; even then only plain tensors
    are unpickled. The copy is written to a temporary file and renamed, so a crash or a full
    disk never leaves a truncated file that later loads would trust.
    """
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return path
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        open_checkpoint(path, allow_pickle)  # raises the unsupported-type error
    if not allow_pickle:
        raise pickle_refused(path)
    try:
        stat = path.resolve().stat()
    except OSError as exc:
        raise ZvsError(f"Model not found: {path}") from exc
    tag = text_hash(str(path.resolve()), str(stat.st_size), str(stat.st_mtime_ns))[:16]
    target = Path(cache_dir) / f"{path.stem}-{tag}.safetensors"
    if target.is_file():
        return target
    tensors = open_checkpoint(path, allow_pickle=True)
    _write_safetensors({k: tensors[k] for k in tensors}, target, source=path.name)
    return target


def _write_safetensors(tensors: dict[str, torch.Tensor], target: Path, source: str) -> None:
    from safetensors.torch import save_file

    # safetensors refuses tensors that share memory (tied weights, views of one storage):
    # any tensor that does not own its whole storage alone is copied.
    seen: set[int] = set()
    plain = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().contiguous()
        storage = tensor.untyped_storage()
        alone = storage.nbytes() == tensor.numel() * tensor.element_size()
        if not alone or storage.data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        plain[key] = tensor
    temp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=target.parent, prefix=target.stem, suffix=".partial", delete=False
        ) as stream:
            temp = Path(stream.name)
        save_file(plain, str(temp), metadata={"format": "pt", "converted_from": source})
        os.replace(temp, target)
    except OSError as exc:
        if temp is not None:
            temp.unlink(missing_ok=True)
        full = exc.errno == errno.ENOSPC
        raise ZvsError(
            f"{source} cannot be converted to {target}: {exc.strerror or exc}",
            hint="free some disk space" if full else "check that the cache folder is writable",
            code="disk_full" if full else "error",
        ) from exc


def load_dynamicrafter(
    path: Path,
    config: DynamiCrafterConfig,
    dtype: torch.dtype = torch.float16,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    cache_dir: Path | None = None,
) -> DynamiCrafterModels:
    """Load a released DynamiCrafter checkpoint (`.safetensors`, or an allowed `.ckpt`).

    A pickled file is converted once into `cache_dir` (required for one) and loaded from the
    converted copy. Raises ZvsError for anything the user can fix: a missing or pickled file,
    a file that is not this DynamiCrafter model (with counts), another noise schedule.
    """
    force_offline()
    path = Path(path)
    if not path.is_file():
        raise ZvsError(f"Model not found: {path}")
    suffix = path.suffix.lower()
    if suffix != ".safetensors":
        if suffix not in PICKLE_SUFFIXES:
            open_checkpoint(path, allow_pickle)  # raises the unsupported-type error
        if not allow_pickle:
            raise pickle_refused(path)
        if cache_dir is None:
            raise ZvsError(f"{path.name} needs a cache folder to be converted into.")
        path = convert_to_safetensors(path, cache_dir, allow_pickle)
    tensors = open_checkpoint(path, allow_pickle=False)
    check_schedule(tensors, config, path.name)
    models = empty_models(config)
    sources = match_checkpoint(models, {k: tensors.shape(k) for k in tensors}, path.name)
    for attr, _, _ in PARTS:
        module = getattr(models, attr)
        state = {
            name: sources[attr][name]
            .take(tensors[sources[attr][name].key])
            .reshape(param.shape)
            .to(dtype)
            for name, param in module.state_dict().items()
        }
        module.load_state_dict(state, strict=True, assign=True)
        module.to(device).eval()
    models.source = path
    return models
