"""Identify model files from their safetensors header, without loading a single tensor.

A `.safetensors` file starts with an 8-byte little-endian length and a JSON header that lists
every tensor's name, dtype, shape and byte range. Names and shapes are enough to tell what a file
is and which base model it belongs to, so the scanner reads a few kilobytes per file however
large it is. Pickled files (`.ckpt`, `.pt`, `.pth`, `.bin`) are never opened: unpickling runs
code, so their kind and base are guessed from the file and folder names and they are flagged.

Kind, from tensor names (first matching rule wins; see `_KIND_RULES`):

| kind           | layout      | tell-tale keys                                                  |
|----------------|-------------|-----------------------------------------------------------------|
| lora           | kohya       | `lora_unet_*`, `lora_te_*` (`lora_te1_*`/`lora_te2_*`: SDXL)    |
|                |             | with `.lora_down.weight`, `.lora_up.weight`, `.alpha`           |
| lora           | peft        | `unet.*.lora_A.weight`, `text_encoder.*.lora_B.weight`          |
| lora           | diffusers   | `*.lora.down.weight`, `*.processor.to_k_lora.down.weight`       |
| lora           | LyCORIS     | `*.hada_w1_a` (LoHa), `*.lokr_w1` (LoKr), `*.oft_blocks` (OFT)   |
| controlnet     | original    | `control_model.*`, `input_hint_block.*`, `zero_convs.*`         |
| controlnet     | diffusers   | `controlnet_cond_embedding.*`, `controlnet_down_blocks.*`       |
| motion_adapter | AnimateDiff | `down_blocks.N.motion_modules.*` (+ `temporal_transformer.`)    |
| checkpoint     | original    | `model.diffusion_model.*` with `first_stage_model.*` (VAE) or   |
|                |             | `cond_stage_model.*`/`conditioner.embedders.*`/`text_encoders.*` |
| unet           | original    | `model.diffusion_model.*` alone; `input_blocks.*`+`time_embed.*` |
| unet           | diffusers   | `down_blocks.*` + `time_embedding.*` (+ `conv_in.weight`)       |
| unet           | MMDiT       | `joint_blocks.*` (SD3), `double_blocks.*` (Flux)                |
| vae            | original    | `encoder.down.*`, `decoder.up.*`                                |
| vae            | diffusers   | `encoder.down_blocks.*`, `decoder.up_blocks.*`                  |
| text_encoder   | HF/OpenCLIP | `text_model.encoder.layers.*`, `transformer.resblocks.*`, T5    |
| embedding      | A1111       | `emb_params`, `string_to_param.*` (SDXL: `clip_l` + `clip_g`)    |
| embedding      | diffusers   | one tensor [768] or [vectors, 768] (1024: SD2)                  |
| unknown        | (a note)    | Control-LoRA (`lora_controlnet`), T2I-Adapter (`body.N` with    |
|                |             | `conv_in`), IP-Adapter (`image_proj.*`)                         |

Base, from the most to the least trusted evidence (see `_generic_base`):

| evidence                                             | sd1 | sd2  | sdxl                 |
|------------------------------------------------------|-----|------|----------------------|
| cross-attention context width: `attn2.to_k.weight`   | 768 | 1024 | 2048 (1280: refiner) |
| [out, ctx]; LoRA `lora_down`/`lora_A` [rank, ctx];   |     |      |                      |
| LoHa `hada_w1_b` [rank, ctx]; LoKr w1[1] * w2[1]      |     |      |                      |
| marker keys (below)                                  |     |      |                      |
| LoRA text encoder `k_proj` down input width          | 768 | 1024 |                      |
| metadata `ss_base_model_version` (kohya)             | sd_v1* | sd_v2* | sdxl*         |
| metadata `modelspec.architecture`                    | stable-diffusion-v1* / -v2* / -xl* |

Marker keys: `double_blocks`/`single_blocks` -> flux; `joint_blocks`, `.add_k_proj.` -> sd3;
`conditioner.embedders.`, `label_emb`, `add_embedding.`, `lora_te1_`/`lora_te2_` -> sdxl;
`cond_stage_model.model.` (OpenCLIP) -> sd2; `cond_stage_model.transformer.` (CLIP) -> sd1.
Metadata `sd3*`/`flux*` values map to sd3/flux too; when metadata and weights disagree, the
weights win and a note says so.

VAEs: SD1.x and SDXL VAEs share one architecture (4 latent channels, read from
`decoder.conv_in.weight` [512, C, 3, 3]), so a 4-channel VAE is "sd1" with a note (or "sdxl" when
its name says so); 16 channels mean SD3/Flux. AnimateDiff motion modules have four down blocks
(320, 640, 1280, 1280 channels) for SD1.x and three for SDXL.

The short hash is A1111's "AutoV2" hash: the first 10 hex digits of the file's sha256 (also what
Civitai shows), so users can match files with what they see elsewhere. Hashing a checkpoint
reads gigabytes, so it is computed only when asked for and remembered in memory and in
`<cache>/model_hashes.json`, keyed by resolved path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zvstudio.errors import ZvsError
from zvstudio.paths import cache_root

KINDS = (
    "checkpoint",
    "lora",
    "controlnet",
    "vae",
    "unet",
    "text_encoder",
    "motion_adapter",
    "video_model",
    "embedding",
    "ip_adapter",
    "image_encoder",
    "unknown",
)
BASES = ("sd1", "sd2", "sdxl", "sd3", "flux", "dynamicrafter", "unknown")
BASE_LABELS = {
    "sd1": "SD1.x",
    "sd2": "SD2.x",
    "sdxl": "SDXL",
    "sd3": "SD3",
    "flux": "Flux",
    "dynamicrafter": "DynamiCrafter",
    "unknown": "of an unknown base",
}
KIND_LABELS = {
    "checkpoint": "checkpoint",
    "lora": "LoRA",
    "controlnet": "ControlNet",
    "vae": "VAE",
    "unet": "UNet",
    "text_encoder": "text encoder",
    "motion_adapter": "motion module",
    "video_model": "video model",
    "embedding": "embedding",
    "ip_adapter": "IP-Adapter",
    "image_encoder": "image encoder",
    "unknown": "unrecognised file",
}
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
MODEL_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES

Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class ModelInfo:
    """One model file or diffusers folder, as identified by the scanner.

    `details` holds what else was learnt (LoRA rank, variant, notes, selected metadata,
    `error` for files that could not be read); it is excluded from equality and hashing.
    """

    path: Path
    name: str
    kind: str
    base: str
    format: str  # "safetensors", "diffusers" or "pickle"
    size_bytes: int
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def pickled(self) -> bool:
        """True when loading would unpickle: a pickle file, or a diffusers folder of .bin only."""
        return self.format == "pickle" or bool(self.details.get("pickled_weights"))

    @property
    def short_hash(self) -> str | None:
        """sha256[:10] of the file (A1111 "AutoV2"); None for folders. Computed on first use."""
        return None if self.format == "diffusers" else short_hash(self.path)

    def _hash_or_none(self) -> str | None:
        try:
            return self.short_hash
        except ZvsError:  # unreadable: the listing still shows the rest
            return None

    def to_dict(self, include_hash: bool = True) -> dict[str, Any]:
        """A JSON-ready description (for `--json`); hashing can be skipped as it reads the file."""
        return {
            "path": str(self.path),
            "name": self.name,
            "kind": self.kind,
            "base": self.base,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "short_hash": self._hash_or_none() if include_hash else None,
            "pickled": self.pickled,
            "details": dict(self.details),
        }


# ---------------------------------------------------------------------------------------------
# Reading headers


_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


def _damaged(path: Path, why: str) -> ZvsError:
    return ZvsError(
        f"'{path}' is not a readable safetensors file: {why}",
        hint="download or copy the file again; an interrupted download leaves it truncated",
    )


def read_safetensors_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> dtype/shape/offsets, and
    "__metadata__"), read without touching tensor data. Damaged or truncated files raise
    `ZvsError` naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            prefix = stream.read(8)
            if len(prefix) < 8:
                raise _damaged(path, f"it is only {len(prefix)} bytes long")
            (length,) = struct.unpack("<Q", prefix)
            if not 2 <= length <= _MAX_HEADER:
                raise _damaged(path, "its header length is invalid")
            if 8 + length > size:
                raise _damaged(path, f"it is truncated ({size} bytes, the header needs {length})")
            raw = stream.read(length)
    except OSError as exc:
        raise ZvsError(f"cannot read '{path}': {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _damaged(path, "its header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shape, (_, end) = list(entry["shape"]), entry["data_offsets"]
            data_end = max(data_end, int(end))
        except (TypeError, KeyError, ValueError) as exc:
            raise _damaged(path, f"the header entry for '{name}' is malformed") from exc
        if not all(isinstance(n, int) for n in shape):
            raise _damaged(path, f"the header entry for '{name}' has a bad shape")
    available = size - 8 - length
    if data_end > available:
        raise _damaged(
            path, f"it is truncated ({available} of {data_end} bytes of tensor data are present)"
        )
    return header


# ---------------------------------------------------------------------------------------------
# Classifying a state dict by names and shapes


@dataclass(frozen=True)
class _KindRule:
    """A file is `kind` when some key matches `key` (and some key matches `also`, if given)."""

    kind: str
    key: re.Pattern[str]
    also: re.Pattern[str] | None
    note: str


_LORA_KEY = (
    r"\.(lora_down|lora_up|lora_A|lora_B)\.|[._]lora\.(down|up)\.weight$"
    r"|_lora\.(down|up)\.weight$|\.(hada_w1_a|lokr_w1|lokr_w1_a|oft_blocks|oft_diag)$"
)
_KIND_RULES = tuple(
    _KindRule(kind, re.compile(key), re.compile(also) if also else None, note)
    for kind, key, also, note in (
        ("unknown", r"^lora_controlnet$", "", "Control-LoRA (not supported; use a ControlNet)"),
        # Before LoRAs: Face ID adapters carry LoRA weights for the UNet beside their own.
        ("ip_adapter", r"^ip_adapter\.\d+\.to_[kv]_ip\.", r"^image_proj\.", ""),
        # DynamiCrafter: an SD-shaped 3D UNet with a temporal block after its input conv and
        # the image query transformer beside it (before the checkpoint rule, which it matches).
        ("video_model", r"^model\.diffusion_model\.init_attn\.", r"^image_proj_model\.", ""),
        ("motion_adapter", r"motion_modules\.", _LORA_KEY, "AnimateDiff motion LoRA"),
        ("lora", _LORA_KEY, "", ""),
        (
            "controlnet",
            r"^(control_model\.)?(input_hint_block|zero_convs)\."
            r"|^controlnet_(cond_embedding|down_blocks|mid_block)\b",
            "",
            "",
        ),
        # T2I-Adapter's body.N needs its conv_in beside it: ESRGAN upscalers have body.N too.
        (
            "unknown",
            r"^(adapter\.)?body\.\d+\.",
            r"^(adapter\.)?conv_in\.",
            "T2I-Adapter (not supported)",
        ),
        ("image_encoder", r"^vision_model\.embeddings\.", r"^visual_projection\.", ""),
        ("embedding", r"^(emb_params|string_to_param\..*|clip_[lg])$", "", ""),
        ("motion_adapter", r"motion_modules\.", "", ""),
        (
            "checkpoint",
            r"^model\.diffusion_model\.",
            r"^(first_stage_model|cond_stage_model|conditioner|text_encoders|vae)\.",
            "",
        ),
        ("unet", r"^model\.diffusion_model\.", "", "UNet only: no VAE or text encoder"),
        ("unet", r"^input_blocks\.\d+\.", r"^time_embed\.", ""),
        ("unet", r"^down_blocks\.\d+\.", r"^time_embedding\.", ""),
        (
            "unet",
            r"^(joint_blocks|double_blocks|single_transformer_blocks)\."
            r"|^transformer_blocks\.\d+\.attn\.add_k_proj\.",
            "",
            "",
        ),
        (
            "vae",
            r"^(first_stage_model\.|vae\.)?(encoder\.down|decoder\.up)(_blocks)?\.\d",
            "",
            "",
        ),
        (
            "text_encoder",
            r"^(text_model\.)?encoder\.layers\.\d+\.self_attn\.|^transformer\.resblocks\."
            r"|^(encoder\.)?block\.\d+\.layer\.",
            "",
            "",
        ),
    )
)
_EMBEDDING_RULE = _KindRule("embedding", re.compile(""), None, "")

# Cross-attention context width -> base. The width is the input dimension of attn2's key
# projection: a full weight [out, ctx]; a LoRA down / lora_A matrix [rank, ctx]; LoHa hada_w1_b
# [rank, ctx]. 1280 is the SDXL refiner (OpenCLIP bigG alone).
_WIDTH_BASES = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl"}


def context_width_base(width: int | None) -> str:
    """The base whose UNet takes a text context this wide ("unknown" for none)."""
    return _WIDTH_BASES.get(width or 0, "unknown")


_CROSS_ATTN = re.compile(
    r"attn2[._]to_k\.weight$|attn2[._]to_k(\.lora)?[._](lora_down|lora_A|down)\.weight$"
    r"|attn2\.processor\.to_k_lora\.down\.weight$|attn2[._]to_k\.hada_w1_b$"
)
_CROSS_ATTN_LOKR = re.compile(r"attn2[._]to_k\.lokr_w1(_b)?$")
# A LoRA's text encoder (SD1 CLIP ViT-L 768, SD2 OpenCLIP ViT-H 1024; SDXL's are lora_te1/2).
_TE_WIDTH_BASES = {768: "sd1", 1024: "sd2"}
_TE_WIDTH = re.compile(
    r"^(lora_te_|text_encoder\.).*self_attn[._]k_proj(\.lora)?[._](lora_down|lora_A|down)\.weight$"
)
# Keys that exist only in one family; consulted when no width is found. Flux before SD3: Flux
# diffusers keys also contain add_k_proj.
_BASE_MARKERS = tuple(
    (re.compile(pattern), base)
    for pattern, base in (
        (r"double_blocks|single_blocks|single_transformer_blocks", "flux"),
        (r"joint_blocks|\.add_k_proj\.", "sd3"),
        (
            r"^(conditioner\.embedders\.|lora_te[12]_|text_encoder_2\.)|label_emb|add_embedding\.",
            "sdxl",
        ),
        (r"^cond_stage_model\.model\.", "sd2"),
        (r"^cond_stage_model\.transformer\.", "sd1"),
    )
)
# (metadata key, value prefix, base), for LoRAs trained with kohya sd-scripts and modelspec.
_METADATA_BASES = (
    ("ss_base_model_version", "sdxl", "sdxl"),
    ("ss_base_model_version", "sd_v1", "sd1"),
    ("ss_base_model_version", "sd_v2", "sd2"),
    ("ss_base_model_version", "sd3", "sd3"),
    ("ss_base_model_version", "flux", "flux"),
    ("modelspec.architecture", "stable-diffusion-xl", "sdxl"),
    ("modelspec.architecture", "stable-diffusion-v1", "sd1"),
    ("modelspec.architecture", "stable-diffusion-v2", "sd2"),
    ("modelspec.architecture", "stable-diffusion-3", "sd3"),
    ("modelspec.architecture", "stable-diffusion-v3", "sd3"),
    ("modelspec.architecture", "flux", "flux"),
    ("ss_v2", "True", "sd2"),
)
_METADATA_KEPT = (
    "ss_base_model_version",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_output_name",
    "ss_sd_model_name",
    "modelspec.architecture",
    "modelspec.title",
    "modelspec.prediction_type",
    "modelspec.resolution",
)
_VAE_NOTE = "4-channel latents: the SD1.x VAE architecture, also used by SDXL"
_XL_NAME = re.compile(r"sd_?xl|xl(?![a-z])", re.IGNORECASE)
_IN_CHANNELS = re.compile(
    r"^(model\.diffusion_model\.)?input_blocks\.0\.0\.weight$|^conv_in\.weight$"
)
_IN_CHANNEL_VARIANTS = {9: "inpainting", 8: "instruct-pix2pix"}
_LATENT_CHANNELS = re.compile(r"(^|\.)decoder\.conv_in\.weight$")
_MOTION_PROJ_IN = re.compile(  # original AnimateDiff keeps a temporal_transformer level
    r"(^|\.)down_blocks\.(\d+)\.motion_modules\.\d+\."
    r"(temporal_transformer\.)?proj_in\.(weight|bias)$"
)
_MOTION_BLOCK = re.compile(r"(^|\.)down_blocks\.(\d+)\.motion_modules\.")
_MOTION_CHANNELS = {(320, 640, 1280, 1280): "sd1", (320, 640, 1280): "sdxl"}
_TEXT_WIDTH = (  # (key, which shape axis is the width)
    (re.compile(r"(^|\.)text_model\.encoder\.layers\.0\.self_attn\.k_proj\.weight$"), 0),
    (re.compile(r"(^|\.)transformer\.resblocks\.0\.attn\.in_proj_weight$"), 1),
)
_TEXT_WIDTH_BASES = {768: "sd1", 1024: "sd2", 1280: "sdxl"}
_LORA_FORMATS = (
    (re.compile(r"^lora_(unet|te\d?)_"), "kohya"),
    (re.compile(r"\.lora_[AB]\."), "peft"),
    (re.compile(r"[._]lora\.(down|up)\.weight$"), "diffusers"),
)
_LORA_NETWORKS = (
    (re.compile(r"\.hada_w"), "LoHa"),
    (re.compile(r"\.lokr_w"), "LoKr"),
    (re.compile(r"\.oft_"), "OFT"),
)
_LORA_RANK = re.compile(r"\.(lora_down|lora_A)\.weight$|[._]lora\.down\.weight$|\.hada_w1_b$")
_CHECKPOINT_PARTS = (
    (re.compile(r"^model\.diffusion_model\."), "unet"),
    (re.compile(r"^(first_stage_model|vae)\."), "vae"),
    (re.compile(r"^(cond_stage_model|conditioner|text_encoders)\."), "text_encoder"),
)


def _matching(shapes: Shapes, pattern: re.Pattern[str]) -> list[str]:
    return [key for key in shapes if pattern.search(key)]


def _any(shapes: Shapes, pattern: re.Pattern[str]) -> bool:
    return any(pattern.search(key) for key in shapes)


def _sizes(shapes: Shapes, pattern: re.Pattern[str], axis: int) -> list[int]:
    """Dimension `axis` of every tensor whose name matches (tensors with fewer dims skipped)."""
    return [shapes[k][axis] for k in _matching(shapes, pattern) if len(shapes[k]) > axis]


def _most_common(values: list[Any]) -> Any:
    return Counter(values).most_common(1)[0][0] if values else None


def _cross_attention_width(shapes: Shapes) -> int | None:
    widths = _sizes(shapes, _CROSS_ATTN, 1)
    for key in _matching(shapes, _CROSS_ATTN_LOKR):
        # LoKr: W = kron(w1, w2), so the input width is w1's times w2's.
        stem = key[: key.rindex(".lokr_w1")]
        w2 = shapes.get(stem + ".lokr_w2") or shapes.get(stem + ".lokr_w2_b")
        if w2 is not None and len(w2) >= 2 and len(shapes[key]) >= 2:
            widths.append(shapes[key][1] * w2[1])
    return _most_common([w for w in widths if w in _WIDTH_BASES])


def _metadata_base(metadata: Mapping[str, str]) -> str | None:
    for key, prefix, base in _METADATA_BASES:
        if str(metadata.get(key, "")).startswith(prefix):
            return base
    return None


# The width of an SD text encoder's token embeddings: a textual inversion's vectors have it.
_EMBEDDING_WIDTHS = {768: "sd1", 1024: "sd2"}


def embedding_vectors_shape(shapes: Shapes) -> tuple[int, ...] | None:
    """The shape of a textual inversion's vectors: A1111's `emb_params` or `string_to_param.*`
    (SDXL's `clip_l`), or a diffusers embedding's one tensor ([width] or [vectors, width]);
    None otherwise."""
    for key, shape in shapes.items():
        if key in ("emb_params", "clip_l") or key.startswith("string_to_param."):
            return tuple(shape)
    if len(shapes) == 1:
        (shape,) = shapes.values()
        if 1 <= len(shape) <= 2 and shape[-1] in _EMBEDDING_WIDTHS:
            return tuple(shape)
    return None


def _embedding_base(shapes: Shapes, metadata: Mapping[str, str], name: str) -> tuple[str, str]:
    if "clip_g" in shapes:
        return "sdxl", ""
    shape = embedding_vectors_shape(shapes)
    return _EMBEDDING_WIDTHS.get(shape[-1] if shape else 0, "unknown"), ""


def _generic_base(shapes: Shapes, metadata: Mapping[str, str], name: str) -> tuple[str, str]:
    """Checkpoints, UNets, ControlNets, LoRAs: width, then marker keys, then metadata."""
    width = _cross_attention_width(shapes)
    if width is not None:
        return _WIDTH_BASES[width], "SDXL refiner" if width == 1280 else ""
    for pattern, base in _BASE_MARKERS:
        if _any(shapes, pattern):
            return base, ""
    te_width = _most_common([w for w in _sizes(shapes, _TE_WIDTH, 1) if w in _TE_WIDTH_BASES])
    if te_width is not None:
        return _TE_WIDTH_BASES[te_width], ""
    base = _metadata_base(metadata)
    return (base, "base taken from the file's metadata") if base else ("unknown", "")


def _vae_base(shapes: Shapes, metadata: Mapping[str, str], name: str) -> tuple[str, str]:
    channels = _most_common(_sizes(shapes, _LATENT_CHANNELS, 1))
    if channels == 4:
        # SD1.x and SDXL VAEs have the same architecture; only the name can tell them apart.
        if _XL_NAME.search(name):
            return "sdxl", "4-channel latents; SDXL guessed from the name"
        return "sd1", _VAE_NOTE
    if channels == 16:
        base = "flux" if re.search(r"flux|^ae$", name, re.IGNORECASE) else "sd3"
        return base, "16-channel latents (SD3 and Flux VAEs look alike)"
    return "unknown", ""


def _motion_base(shapes: Shapes, metadata: Mapping[str, str], name: str) -> tuple[str, str]:
    channels: dict[int, int] = {}
    for key in _matching(shapes, _MOTION_PROJ_IN):
        match = _MOTION_PROJ_IN.search(key)
        assert match is not None
        channels[int(match.group(2))] = shapes[key][0]
    if channels:
        layout = tuple(channels[i] for i in sorted(channels))
        return _MOTION_CHANNELS.get(layout, "unknown"), ""
    # Motion LoRAs carry no full weights: count the down blocks instead.
    blocks = {int(m.group(2)) for k in shapes if (m := _MOTION_BLOCK.search(k))}
    return {4: "sd1", 3: "sdxl"}.get(len(blocks), "unknown"), ""


def _text_encoder_base(shapes: Shapes, metadata: Mapping[str, str], name: str) -> tuple[str, str]:
    for pattern, axis in _TEXT_WIDTH:
        for width in _sizes(shapes, pattern, axis):
            if width == 768:
                return "sd1", "CLIP ViT-L: also SDXL's first text encoder"
            if width in _TEXT_WIDTH_BASES:
                return _TEXT_WIDTH_BASES[width], ""
    if _any(shapes, re.compile(r"(^|\.)block\.\d+\.layer\.")):
        return "unknown", "T5 text encoder (SD3/Flux)"
    return "unknown", ""


def _video_model_base(shapes: Shapes, metadata: Mapping[str, str], name: str) -> tuple[str, str]:
    """DynamiCrafter; which release (256/512/1024/interp) only its name can tell, except the
    256 model, which embeds a frame stride instead of a frame rate."""
    if any(k.startswith("model.diffusion_model.framestride_embed.") for k in shapes):
        return "dynamicrafter", "the 256 release"
    return "dynamicrafter", ""


def _ip_adapter_base(shapes: Shapes, metadata: Mapping[str, str], name: str) -> tuple[str, str]:
    """The UNet's context width that the image tokens' key projections take."""
    widths = _sizes(shapes, re.compile(r"^ip_adapter\.\d+\.to_k_ip\.weight$"), 1)
    return context_width_base(_most_common(widths)), ""


def _image_encoder_base(shapes: Shapes, metadata: Mapping[str, str], name: str) -> tuple[str, str]:
    """CLIP vision encoders serve every base: their IP-Adapter says which."""
    return "unknown", "CLIP vision encoder for IP-Adapters"


_BASE_FINDERS: dict[str, Callable[[Shapes, Mapping[str, str], str], tuple[str, str]]] = {
    "ip_adapter": _ip_adapter_base,
    "image_encoder": _image_encoder_base,
    "video_model": _video_model_base,
    "embedding": _embedding_base,
    "vae": _vae_base,
    "motion_adapter": _motion_base,
    "text_encoder": _text_encoder_base,
}


def _lora_details(shapes: Shapes) -> dict[str, Any]:
    details: dict[str, Any] = {
        "lora_format": next((n for p, n in _LORA_FORMATS if _any(shapes, p)), "unknown"),
        "network": next((n for p, n in _LORA_NETWORKS if _any(shapes, p)), "LoRA"),
        "text_encoder": any(k.startswith(("lora_te", "text_encoder")) for k in shapes),
    }
    rank = _most_common(_sizes(shapes, _LORA_RANK, 0))
    if rank is not None:
        details["rank"] = rank
    return details


def _unet_details(shapes: Shapes) -> dict[str, Any]:
    details: dict[str, Any] = {}
    in_channels = _most_common(_sizes(shapes, _IN_CHANNELS, 1))
    if in_channels in _IN_CHANNEL_VARIANTS:
        details["variant"] = _IN_CHANNEL_VARIANTS[in_channels]
    parts = [part for pattern, part in _CHECKPOINT_PARTS if _any(shapes, pattern)]
    if len(parts) > 1:
        details["components"] = parts
    return details


def _controlnet_details(shapes: Shapes) -> dict[str, Any]:
    keys = list(shapes)
    details: dict[str, Any] = {
        "layout": "diffusers" if any(k.startswith("controlnet_") for k in keys) else "original"
    }
    if any("motion_modules." in k for k in keys):
        details["variant"] = "SparseCtrl"
    elif any("control_add_embedding" in k for k in keys):
        details["variant"] = "union"
    return details


# An IP-Adapter's image projection: the tensor that tells its layout, and those whose input
# width is what it takes from the image encoder (its names without the `image_proj.` prefix).
_IP_LAYOUT_KEYS = (("proj.weight", "base"), ("proj.3.weight", "full face"), ("latents", "plus"))
_IP_INPUT_KEYS = ("proj.weight", "proj_in.weight", "proj.0.weight")


def ip_adapter_layout(projection: Shapes) -> tuple[str | None, int | None]:
    """(layout, input width) of an IP-Adapter's image projection: "base" projects CLIP's image
    embedding, "plus" and "full face" the tokens of its penultimate layer; layout None for
    Face ID adapters (no layout tensor of the others)."""
    layout = next((name for key, name in _IP_LAYOUT_KEYS if key in projection), None)
    width = next((int(projection[key][-1]) for key in _IP_INPUT_KEYS if key in projection), None)
    return layout, width


# The layout the library gives Face ID adapters, which take InsightFace embeddings.
FACE_ID_LAYOUT = "Face ID (not supported)"


def _ip_adapter_details(shapes: Shapes) -> dict[str, Any]:
    prefix = "image_proj."
    projection = {k.removeprefix(prefix): v for k, v in shapes.items() if k.startswith(prefix)}
    layout, width = ip_adapter_layout(projection)
    details: dict[str, Any] = {"layout": layout or FACE_ID_LAYOUT}
    if width is not None:
        details["image_width"] = width
    return details


def _image_encoder_details(shapes: Shapes) -> dict[str, Any]:
    patch = shapes.get("vision_model.embeddings.patch_embedding.weight")
    projection = shapes.get("visual_projection.weight")
    return {
        "hidden_width": patch[0] if patch else None,
        "image_width": projection[0] if projection else None,
    }


_KIND_DETAILS: dict[str, Callable[[Shapes], dict[str, Any]]] = {
    "ip_adapter": _ip_adapter_details,
    "image_encoder": _image_encoder_details,
    "lora": _lora_details,
    "checkpoint": _unet_details,
    "unet": _unet_details,
    "controlnet": _controlnet_details,
    "embedding": lambda shapes: {"vectors": _embedding_count(shapes)},
}


def _embedding_count(shapes: Shapes) -> int:
    shape = embedding_vectors_shape(shapes) or (len(shapes),)
    return shape[0] if len(shape) == 2 else 1


def _add_note(details: dict[str, Any], note: str) -> None:
    if note:
        details["note"] = f"{details['note']}; {note}" if details.get("note") else note


def classify(
    shapes: Shapes, metadata: Mapping[str, str] | None = None, name: str = ""
) -> tuple[str, str, dict[str, Any]]:
    """(kind, base, details) of a state dict described by its tensor names and shapes.

    Usable on a loaded state dict too: `classify({k: v.shape for k, v in sd.items()})`.
    """
    metadata = metadata or {}
    shapes = {k: tuple(v) for k, v in shapes.items()}
    rule = next(
        (
            r
            for r in _KIND_RULES
            if _any(shapes, r.key) and (r.also is None or _any(shapes, r.also))
        ),
        None,
    )
    kind = rule.kind if rule else "unknown"
    if rule is None and embedding_vectors_shape(shapes):  # diffusers' {token: vectors}
        kind, rule = "embedding", _EMBEDDING_RULE
    details = _KIND_DETAILS.get(kind, lambda _: {})(shapes)
    details.update({k: metadata[k] for k in _METADATA_KEPT if k in metadata})
    if kind == "unknown":  # recognised-but-unsupported files get no base: nothing can use them
        base, note = "unknown", ""
    else:
        base, note = _BASE_FINDERS.get(kind, _generic_base)(shapes, metadata, name)
    _add_note(details, rule.note if rule else "no known model layout")
    _add_note(details, note)
    said = _metadata_base(metadata)
    if said and base not in ("unknown", said):
        _add_note(details, f"its metadata claims {BASE_LABELS[said]}; the weights say otherwise")
    prediction = _prediction(metadata)
    if prediction:
        details["prediction"] = prediction
    elif kind == "checkpoint" and base == "sd2":
        _add_note(details, "SD2 768 models predict v, 512 models epsilon: check the model card")
    return kind, base, details


def _prediction(metadata: Mapping[str, str]) -> str | None:
    if metadata.get("modelspec.prediction_type"):
        return str(metadata["modelspec.prediction_type"])
    if str(metadata.get("ss_base_model_version", "")).endswith("_v"):
        return "v_prediction"
    return None


# ---------------------------------------------------------------------------------------------
# Pickled files: never opened, guessed from names


_NAME_KINDS = tuple(
    (re.compile(pattern, re.IGNORECASE), kind)
    for pattern, kind in (
        (r"ip.?adapter", "ip_adapter"),
        (r"control|t2i.?adapter", "controlnet"),
        (r"lora|locon|loha|lycoris", "lora"),
        (r"(^|[^a-z])vae", "vae"),
        (r"^mm_|motion|animatediff", "motion_adapter"),
        (r"dynamicrafter", "video_model"),
    )
)
_FOLDER_KINDS = {
    "stable-diffusion": "checkpoint",
    "checkpoints": "checkpoint",
    "lora": "lora",
    "loras": "lora",
    "lycoris": "lora",
    "controlnet": "controlnet",
    "vae": "vae",
    "animatediff_models": "motion_adapter",
    "unet": "unet",
    "diffusion_models": "unet",
    "embeddings": "embedding",
    "ipadapter": "ip_adapter",
    "clip_vision": "image_encoder",
}
_NAME_BASES = tuple(
    (re.compile(pattern, re.IGNORECASE), base)
    for pattern, base in (
        (r"flux", "flux"),
        (r"dynamicrafter", "dynamicrafter"),
        (r"sd_?3", "sd3"),
        (_XL_NAME.pattern, "sdxl"),
        (r"sd_?v?2|v2-[01]|768-v", "sd2"),
        (r"sd_?v?1|v1-[45]|1\.5", "sd1"),
    )
)


def _guess_pickle(path: Path) -> tuple[str, str, dict[str, Any]]:
    name = path.stem
    kind = next((k for p, k in _NAME_KINDS if p.search(name)), None)
    kind = kind or next(
        (_FOLDER_KINDS[p.name.lower()] for p in path.parents if p.name.lower() in _FOLDER_KINDS),
        None,
    )
    kind = kind or ("checkpoint" if path.suffix.lower() == ".ckpt" else "unknown")
    base = next((b for p, b in _NAME_BASES if p.search(name)), "unknown")
    note = "guessed from the file and folder names: pickled files are not opened by the scanner"
    return kind, base, {"note": note}


# ---------------------------------------------------------------------------------------------
# Diffusers folders


_PIPELINE_BASES = ((r"StableDiffusion3", "sd3"), (r"Flux", "flux"), (r"XL", "sdxl"))
# Pipelines whose base the UNet's cross-attention width tells (others, e.g. video models with
# their own UNets, would be misread).
_SD_PIPELINES = re.compile(r"^(StableDiffusion|AnimateDiff|LatentConsistencyModel)")
_COMPONENT_KINDS = {
    "UNet2DConditionModel": "unet",
    "ControlNetModel": "controlnet",
    "SparseControlNetModel": "controlnet",
    "AutoencoderKL": "vae",
    "MotionAdapter": "motion_adapter",
    "SD3Transformer2DModel": "unet",
    "FluxTransformer2DModel": "unet",
    "SD3ControlNetModel": "controlnet",
    "FluxControlNetModel": "controlnet",
    "CLIPVisionModelWithProjection": "image_encoder",
}
_COMPONENT_BASES = {
    "SD3Transformer2DModel": "sd3",
    "SD3ControlNetModel": "sd3",
    "FluxTransformer2DModel": "flux",
    "FluxControlNetModel": "flux",
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_IMAGE_ENCODER_CLASSES = {"CLIPVisionModelWithProjection"}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def diffusers_folder_kind(folder: Path) -> str | None:
    """ "pipeline" (model_index.json), "component" (a diffusers config.json) or None."""
    if (folder / "model_index.json").is_file():
        return "pipeline"
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    if config and "_class_name" in config and "_diffusers_version" in config:
        return "component"
    if config and _IMAGE_ENCODER_CLASSES & set(config.get("architectures") or ()):
        return "component"  # a transformers folder, listed as one model as diffusers' are
    return None


def _config_base(class_name: str, config: Mapping[str, Any]) -> tuple[str, str]:
    """The base of a diffusers component from its config.json."""
    if class_name in _COMPONENT_BASES:
        return _COMPONENT_BASES[class_name], ""
    if class_name == "AutoencoderKL":
        channels = config.get("latent_channels", 4)
        found = {4: ("sd1", _VAE_NOTE), 16: ("sd3", "16-channel latents (SD3/Flux)")}
        return found.get(channels, ("unknown", ""))
    if class_name == "MotionAdapter":
        layout = tuple(config.get("block_out_channels") or (320, 640, 1280, 1280))
        return _MOTION_CHANNELS.get(layout, "unknown"), ""
    if config.get("addition_embed_type") == "text_time":
        return "sdxl", ""
    width = config.get("cross_attention_dim")
    if isinstance(width, int) and width in _WIDTH_BASES:
        return _WIDTH_BASES[width], "SDXL refiner" if width == 1280 else ""
    return "unknown", ""


def _folder_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _weights_details(files: list[Path]) -> dict[str, Any]:
    """Loading unpickles when some component folder has .bin weights but no .safetensors."""
    suffixes: dict[Path, set[str]] = {}
    for path in files:
        if path.suffix.lower() in _WEIGHT_SUFFIXES:
            suffixes.setdefault(path.parent, set()).add(path.suffix.lower())
    if not suffixes:
        return {"note": "no weight files in the folder (an incomplete download?)"}
    pickled = sorted(p.name for p, found in suffixes.items() if ".safetensors" not in found)
    return {"pickled_weights": pickled} if pickled else {}


def identify_folder(folder: str | os.PathLike[str], name: str | None = None) -> ModelInfo:
    """Identify a diffusers pipeline folder (model_index.json) or component folder."""
    folder = Path(folder)
    files = _folder_files(folder)
    size = sum(p.stat().st_size for p in files)
    layout = diffusers_folder_kind(folder)
    details: dict[str, Any] = {}
    if layout == "pipeline":
        index = _read_json(folder / "model_index.json")
        if index is None:
            raise ZvsError(f"'{folder / 'model_index.json'}' is not valid JSON")
        class_name = str(index.get("_class_name", ""))
        kind = "checkpoint"
        base = next((b for p, b in _PIPELINE_BASES if re.search(p, class_name)), None)
        note = ""
        if base is None and _SD_PIPELINES.search(class_name):
            unet = _read_json(folder / "unet" / "config.json") or {}
            base, note = _config_base("UNet2DConditionModel", unet)
            if base == "unknown":
                text = _read_json(folder / "text_encoder" / "config.json") or {}
                base = _TE_WIDTH_BASES.get(int(text.get("hidden_size") or 0), "unknown")
            in_channels = unet.get("in_channels")
            if in_channels in _IN_CHANNEL_VARIANTS:
                details["variant"] = _IN_CHANNEL_VARIANTS[in_channels]
        scheduler = _read_json(folder / "scheduler" / "scheduler_config.json") or {}
        if scheduler.get("prediction_type"):
            details["prediction"] = scheduler["prediction_type"]
        details["pipeline"] = class_name
        _add_note(details, note)
    elif layout == "component":
        config = _read_json(folder / "config.json") or {}
        class_name = str(config.get("_class_name") or (config.get("architectures") or [""])[0])
        kind = _COMPONENT_KINDS.get(class_name, "unknown")
        base, note = _config_base(class_name, config) if kind != "unknown" else ("unknown", "")
        details["class"] = class_name
        if kind == "image_encoder":
            note = "CLIP vision encoder for IP-Adapters"
            details["hidden_width"] = config.get("hidden_size")
            details["image_width"] = config.get("projection_dim")
        _add_note(details, note)
    else:
        raise ZvsError(
            f"'{folder}' is not a diffusers folder (no model_index.json or diffusers config.json)"
        )
    weights = _weights_details(files)
    _add_note(details, weights.pop("note", ""))
    details.update(weights)
    return ModelInfo(
        folder, name or folder.name, kind, base or "unknown", "diffusers", size, details
    )


# ---------------------------------------------------------------------------------------------
# Files


def identify(path: str | os.PathLike[str], name: str | None = None) -> ModelInfo:
    """Identify a model file or diffusers folder; `name` overrides the file stem / folder name.

    Raises `ZvsError` for a missing path, an unsupported file type or a damaged file.
    """
    path = Path(path)
    if path.is_dir():
        return identify_folder(path, name)
    if not path.is_file():
        raise ZvsError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    size = path.stat().st_size
    name = name or path.stem
    if suffix in SAFETENSORS_SUFFIXES:
        header = read_safetensors_header(path)
        metadata = header.pop("__metadata__", None) or {}
        shapes = {key: entry["shape"] for key, entry in header.items()}
        kind, base, details = classify(shapes, metadata, name)
        return ModelInfo(path, name, kind, base, "safetensors", size, details)
    if suffix in PICKLE_SUFFIXES:
        kind, base, details = _guess_pickle(path)
        return ModelInfo(path, name, kind, base, "pickle", size, details)
    raise ZvsError(
        f"'{path}' is not a model file",
        hint="models are .safetensors files (or pickled .ckpt/.pt/.pth/.bin) or diffusers folders",
    )


# ---------------------------------------------------------------------------------------------
# Short hashes (A1111 "AutoV2": sha256[:10])


_CHUNK = 1 << 20
_hash_memo: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def _hash_cache_file() -> Path:
    return cache_root() / "model_hashes.json"


def _remembered(key: tuple[str, int, int]) -> str | None:
    entry = (_read_json(_hash_cache_file()) or {}).get(key[0])
    if isinstance(entry, dict) and [entry.get("size"), entry.get("mtime_ns")] == list(key[1:]):
        digest = entry.get("sha256")
        return digest if isinstance(digest, str) and len(digest) == 64 else None
    return None


def _remember(key: tuple[str, int, int], digest: str) -> None:
    """Add to the on-disk cache; a cache that cannot be written only costs a rehash later."""
    cache_file = _hash_cache_file()
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        entries = _read_json(cache_file) or {}
        entries[key[0]] = {"size": key[1], "mtime_ns": key[2], "sha256": digest}
        with tempfile.NamedTemporaryFile(
            "w", dir=cache_file.parent, suffix=".tmp", delete=False, encoding="utf-8"
        ) as stream:
            json.dump(entries, stream, indent=1)
        os.replace(stream.name, cache_file)
    except OSError:
        pass


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes (hex), remembered by (resolved path, size, mtime)."""
    try:
        resolved = Path(path).resolve()
        stat = resolved.stat()
        key = (str(resolved), stat.st_size, stat.st_mtime_ns)
        with _hash_lock:
            digest = _hash_memo.get(key) or _remembered(key)
        if digest is None:
            hasher = hashlib.sha256()
            with open(resolved, "rb") as stream:
                while chunk := stream.read(_CHUNK):
                    hasher.update(chunk)
            digest = hasher.hexdigest()
            with _hash_lock:
                _remember(key, digest)
    except OSError as exc:
        raise ZvsError(f"cannot read '{path}' to hash it: {exc.strerror or exc}") from exc
    with _hash_lock:
        _hash_memo[key] = digest
    return digest


def short_hash(path: str | os.PathLike[str]) -> str:
    """A1111's "AutoV2" hash: the first 10 hex digits of the file's sha256."""
    return sha256_file(path)[:10]


def lacks_vae(model: str | os.PathLike[str]) -> bool:
    """Whether the SD model at `model` has no VAE of its own (a pruned single file, or a
    diffusers folder without vae/), from its header or folder only; False when it cannot be
    told."""
    model = Path(model)
    if model.is_dir():
        return (model / "model_index.json").is_file() and not (model / "vae").is_dir()
    try:
        info = identify(model)
    except ZvsError:
        return False
    parts = info.details.get("components")
    return info.kind == "checkpoint" and parts is not None and "vae" not in parts


def unet_input_channels(path: str | os.PathLike[str]) -> int | None:
    """The UNet input channels of an SD model (4: text-to-image, 8: InstructPix2Pix,
    9: inpainting), from its config or safetensors header: no weights read, no torch needed
    (the editor's dialogs ask). None when unknown (a pickle, no UNet, unreadable)."""
    path = Path(path)
    if path.is_dir():
        config = _read_json(path / "unet" / "config.json")
        return int(config.get("in_channels", 4)) if config else None
    if not path.is_file() or path.suffix.lower() != ".safetensors":
        return None  # pickles are never opened just to look
    try:
        header = read_safetensors_header(path)
    except ZvsError:
        return None
    entry = header.get("model.diffusion_model.input_blocks.0.0.weight")
    shape = entry.get("shape") if isinstance(entry, dict) else None
    return int(shape[1]) if isinstance(shape, list) and len(shape) == 4 else None
