"""A reference image that every key takes its look from: IP-Adapter (A1111's and ComfyUI's
"IP-Adapter", Krita AI Diffusion's "Reference").

An IP-Adapter file holds an image projection (CLIP image embedding -> a few context tokens) and,
for every cross-attention layer of the UNet, key and value projections for those tokens. The
UNet then attends to the prompt and, scaled, to the image (decoupled cross-attention). The
image embedding comes from a CLIP vision encoder (ViT-H/14 for the SD1.5 adapters), which runs
once per render, so it is loaded, used and freed before sampling starts.

Loading is offline: the adapter from a `.safetensors` file (or an allowed pickle), the encoder
from a transformers folder (the `image_encoder` folder beside h94's adapters, also in the
Hugging Face cache) or a single `.safetensors` file (ComfyUI's `models/clip_vision`), whose
architecture is read from its tensor shapes. diffusers' attention processors do the attention;
the cross-frame attention processors sit on the self-attention layers and leave them alone.

Layouts: "base" adapters (ip-adapter_sd15) project CLIP's image embedding; "plus" (Resampler)
and "full face" adapters project the penultimate layer's patch tokens. Face ID adapters need a
face recognition model zvstudio does not have, and are refused with that reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zvstudio.diffusion.identify import (
    FACE_ID_LAYOUT,
    PICKLE_SUFFIXES,
    ModelInfo,
    ip_adapter_layout,
)
from zvstudio.diffusion.loading import from_pretrained_checked, read_pickled, weights_kwargs
from zvstudio.errors import ZvsError

DEFAULT_REFERENCE_SCALE = 0.6  # how strongly keys follow the reference (0: not at all)
PARTS = ("image_proj", "ip_adapter")
ENCODER_FOLDER = "image_encoder"  # beside h94's adapter files, as in its repository

# CLIP vision widths -> attention heads, for encoders given as one file (the shapes do not say).
_HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}
_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")

Adapter = dict[str, dict[str, torch.Tensor]]  # {"image_proj": {...}, "ip_adapter": {...}}


@dataclass
class ReferenceEmbeds:
    """Reference images' embeddings by image path, each for the [negative, positive] guidance
    batch as the UNet's `added_cond_kwargs["image_embeds"]` takes it: the render's reference
    and each key's own."""

    by_image: dict[str, torch.Tensor]

    def embeds_for(self, image: str) -> torch.Tensor:
        """`image`'s embeddings; for "" (no reference) zeros, which at scale 0 add nothing."""
        if not image:
            return torch.zeros_like(next(iter(self.by_image.values())))
        if image not in self.by_image:
            loaded = ", ".join(repr(path) for path in self.by_image)
            raise ZvsError(
                f"the models were loaded with reference images {loaded}, not {image!r}: load "
                "them again for another reference"
            )
        return self.by_image[image]


# -- the adapter ------------------------------------------------------------------------------
def read_ip_adapter(path: Path, allow_pickle: bool = False) -> Adapter:
    """The adapter's two state dicts from a `.safetensors` file (keys `image_proj.*` and
    `ip_adapter.*`) or, when allowed, a pickle holding plain tensors."""
    path = Path(path)
    if not path.is_file():
        raise ZvsError(f"IP-Adapter file not found: {path}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        flat = _read_pickle(path, allow_pickle)
    else:
        from safetensors.torch import load_file

        try:
            flat = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types, and OSError
            raise ZvsError(f"{path.name} is not a readable .safetensors file: {exc}") from exc
    adapter: Adapter = {part: {} for part in PARTS}
    for key, tensor in flat.items():
        part, _, rest = key.partition(".")
        if part in adapter:
            adapter[part][rest] = tensor
    if not all(adapter.values()):
        raise ZvsError(
            f"'{path.name}' is not an IP-Adapter: it has no image_proj and ip_adapter weights"
        )
    return adapter


def _read_pickle(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    data = read_pickled(path, allow_pickle)
    if not isinstance(data, dict):
        raise ZvsError(f"{path.name} does not contain a state dict")
    return {
        f"{part}.{key}": tensor
        for part, tensors in data.items()
        if isinstance(tensors, dict)
        for key, tensor in tensors.items()
        if isinstance(tensor, torch.Tensor)
    }


def _projection(adapter: Adapter) -> tuple[str | None, int | None]:
    """(layout, input width) of the adapter's image projection (`ip_adapter_layout`)."""
    return ip_adapter_layout({k: tuple(v.shape) for k, v in adapter["image_proj"].items()})


def adapter_layout(adapter: Adapter) -> str:
    """ "base" (projects CLIP's image embedding), "plus" or "full face" (project the patch
    tokens of CLIP's penultimate layer); Face ID adapters are refused."""
    layout, _ = _projection(adapter)
    if layout is not None:
        return layout
    raise ZvsError(
        "this IP-Adapter is a Face ID adapter: it takes face embeddings from InsightFace, which "
        "zvstudio does not include",
        hint="use ip-adapter_sd15 or ip-adapter-plus_sd15 with a reference image",
    )


def embedding_width(adapter: Adapter) -> int:
    """The width of the CLIP vision output the adapter projects (its encoder's)."""
    _, width = _projection(adapter)
    if width is None:
        raise ZvsError("the IP-Adapter's image projection has no input layer")
    return width


def check_adapter_fits(adapter: Adapter, unet: Any, name: str) -> None:
    """Refuse an adapter made for another base (an SDXL adapter on an SD1.x model) or another
    layer layout, before anything is changed."""
    from zvstudio.diffusion.identify import BASE_LABELS, context_width_base

    weights = adapter["ip_adapter"]
    context = unet.config.cross_attention_dim
    first = weights.get("1.to_k_ip.weight")
    width = int(first.shape[-1]) if first is not None else None
    if width != context:
        ours = BASE_LABELS[context_width_base(context)]
        theirs = BASE_LABELS[context_width_base(width)]
        raise ZvsError(
            f"the IP-Adapter '{name}' is for {theirs} models (context width {width}) and the "
            f"model is {ours} ({context})",
            hint="pick an IP-Adapter made for the model's base (ip-adapter_sd15 for SD1.x)",
        )
    layers = sum(1 for n in unet.attn_processors if n.endswith("attn2.processor"))
    given = sum(1 for key in weights if key.endswith(".to_k_ip.weight"))
    if given != layers:
        raise ZvsError(
            f"the IP-Adapter '{name}' has weights for {given} cross-attention layers and the "
            f"model has {layers}"
        )


def install_ip_adapter(unet: Any, adapter: Adapter, name: str = "IP-Adapter") -> None:
    """Put the adapter's projection and attention processors into `unet`. diffusers' public
    `load_ip_adapter` lives on pipelines and fetches its image encoder from the Hub; the UNet
    method it calls does only the part that is ours to want."""
    from diffusers.utils import logging

    check_adapter_fits(adapter, unet, name)
    adapter_layout(adapter)  # refuses Face ID before the UNet changes
    # It ends with unet.to(dtype=its own dtype), which warns about nothing that applies here.
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        unet._load_ip_adapter_weights([adapter], low_cpu_mem_usage=False)
    finally:
        logging.set_verbosity(level)


def set_reference_scale(unet: Any, scale: float) -> int:
    """Scale the image's attention in every IP-Adapter processor; returns how many there are."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    processors = [
        p for p in unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)
    ]
    for processor in processors:
        processor.scale = [float(scale)]
    return len(processors)


# -- the image encoder ------------------------------------------------------------------------
def load_image_encoder(path: Path, allow_pickle: bool = False) -> Any:
    """A CLIP vision encoder with projection, in float32 on the CPU, from a transformers folder
    or one `.safetensors` file in transformers' key layout."""
    from transformers import CLIPVisionModelWithProjection

    path = Path(path)
    if path.is_dir():
        kwargs = weights_kwargs(path, allow_pickle)
        kwargs.pop("variant", None)
        encoder = from_pretrained_checked(
            CLIPVisionModelWithProjection, path, f"the image encoder '{path.name}'", **kwargs
        )
        return encoder.float().eval()
    if not path.is_file():
        raise ZvsError(f"image encoder not found: {path}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ZvsError(
            f"'{path.name}' is a pickled image encoder; use a .safetensors one or its folder",
            hint="h94/IP-Adapter's models/image_encoder folder, or ComfyUI's clip_vision files",
        )
    from safetensors.torch import load_file

    state = load_file(str(path))
    encoder = CLIPVisionModelWithProjection(encoder_config(state, path.name))
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ZvsError(
            f"'{path.name}' is not a CLIP vision encoder in transformers' layout "
            f"({len(missing)} missing and {len(unexpected)} unexpected tensors)"
        )
    return encoder.float().eval()


def encoder_config(state: Mapping[str, torch.Tensor], name: str) -> Any:
    """A CLIPVisionConfig read from a state dict's shapes."""
    from transformers import CLIPVisionConfig

    try:
        patch = state["vision_model.embeddings.patch_embedding.weight"]
        positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
        fc1 = state["vision_model.encoder.layers.0.mlp.fc1.weight"]
        projection = state["visual_projection.weight"]
    except KeyError as exc:
        raise ZvsError(f"'{name}' is not a CLIP vision encoder with projection: no {exc}") from exc
    width = int(patch.shape[0])
    layers = 1 + max(int(m.group(1)) for k in state if (m := _LAYER.match(k)))
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=int(fc1.shape[0]),
        num_hidden_layers=layers,
        num_attention_heads=_HEADS.get(width, max(1, width // 64)),
        patch_size=int(patch.shape[-1]),
        image_size=int(patch.shape[-1]) * math.isqrt(positions - 1),
        projection_dim=int(projection.shape[0]),
        # OpenAI's ViT-L/14 uses quick GELU; the LAION ViT-H and bigG encoders plain GELU.
        hidden_act="quick_gelu" if width == 1024 else "gelu",
    )


def check_encoder_fits(
    encoder: Any, layout: str, adapter: Adapter, encoder_name: str, adapter_name: str
) -> None:
    """Refuse an encoder whose output is not as wide as the adapter's projection takes (a
    ViT-bigG encoder for a ViT-H adapter), before it runs."""
    config = encoder.config
    gives = config.projection_dim if layout == "base" else config.hidden_size
    takes = embedding_width(adapter)
    if gives != takes:
        raise ZvsError(
            f"the image encoder '{encoder_name}' gives {gives}-wide embeddings and the "
            f"IP-Adapter '{adapter_name}' takes {takes}-wide ones",
            hint="use the encoder the adapter was trained with (ViT-H/14 for ip-adapter_sd15)",
        )


@torch.no_grad()
def reference_embeddings(
    encoder: Any, image: np.ndarray, layout: str, device: Any, dtype: torch.dtype
) -> torch.Tensor:
    """The [negative, positive] image embeddings of `image` (RGB uint8) for the guidance batch:
    (2, 1, width) for base adapters, (2, 1, tokens, width) for the others. As the adapters were
    trained, the negative is zeros for base adapters and the embedding of a black image's
    pixel tensor (zeros after normalisation) for the others."""
    pixels = _clip_pixels(image, encoder.config.image_size).to(device)
    encoder = encoder.to(device)
    if layout == "base":
        positive = encoder(pixels).image_embeds
        negative = torch.zeros_like(positive)
    else:
        both = torch.cat([torch.zeros_like(pixels), pixels])
        hidden = encoder(both, output_hidden_states=True).hidden_states[-2]
        negative, positive = hidden[:1], hidden[1:]
    return torch.stack([negative, positive]).to(dtype)


def _clip_pixels(image: np.ndarray, size: int) -> torch.Tensor:
    """CLIP's preprocessing (shortest side to `size`, centre crop, CLIP's mean and std)."""
    try:  # transformers 5; its default processor needs torchvision and differs slightly
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor

    processor = Processor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return processor(images=image, return_tensors="pt").pixel_values


# -- finding the files ------------------------------------------------------------------------
def encoder_beside(adapter_path: Path) -> Path | None:
    """The `image_encoder` folder of h94's layout: beside the adapter file or one level up."""
    for folder in (adapter_path.parent, adapter_path.parent.parent):
        candidate = folder / ENCODER_FOLDER
        if (candidate / "config.json").is_file():
            return candidate
    return None


def resolve_reference_models(
    adapter: Path | None, encoder: Path | None, models: Sequence[ModelInfo] | None = None
) -> tuple[Path, Path]:
    """(IP-Adapter, image encoder) files: the ones given, else found. An adapter is looked up
    among the library's SD1.x ones (the plain ip-adapter_sd15 before plus and light ones:
    the shortest name wins, safetensors first); an encoder is the `image_encoder` folder of
    h94's layout beside the adapter, else a library encoder as wide as the adapter needs."""
    from zvstudio.diffusion.identify import identify

    if models is None and (adapter is None or encoder is None):
        from zvstudio.diffusion.library import default_model_folders, scan

        models = scan(default_model_folders())
    adapter_info = identify(adapter) if adapter is not None else _library_adapter(models or ())
    if adapter_info.kind != "ip_adapter":
        raise ZvsError(f"'{adapter_info.path.name}' is not an IP-Adapter")
    if encoder is not None:
        return adapter_info.path, Path(encoder)
    beside = encoder_beside(adapter_info.path)
    if beside is not None:
        return adapter_info.path, beside
    return adapter_info.path, _library_encoder(adapter_info, models or ())


def usable_adapter(info: ModelInfo) -> bool:
    """Whether the library's IP-Adapter `info` can be loaded (not broken, not Face ID)."""
    return "error" not in info.details and info.details.get("layout") != FACE_ID_LAYOUT


def _library_adapter(models: Sequence[ModelInfo]) -> ModelInfo:
    from zvstudio.diffusion.library import home_models_folder

    found = sorted(
        (
            m
            for m in models
            if m.kind == "ip_adapter" and m.base in ("sd1", "unknown") and usable_adapter(m)
        ),
        key=lambda m: (m.pickled, len(m.name), m.name.lower(), str(m.path)),
    )
    if not found:
        raise ZvsError(
            "a reference image needs an SD1.5 IP-Adapter, and none is in the model folders",
            hint="put ip-adapter_sd15.safetensors and its image_encoder folder (from "
            f"h94/IP-Adapter's models folder) in {home_models_folder()}, or give "
            "--ip-adapter PATH",
        )
    return found[0]


def _library_encoder(adapter: ModelInfo, models: Sequence[ModelInfo]) -> Path:
    width = adapter.details.get("image_width")
    key = "image_width" if adapter.details.get("layout") == "base" else "hidden_width"
    found = sorted(
        (
            m
            for m in models
            if m.kind == "image_encoder"
            and "error" not in m.details
            and m.details.get(key) == width
        ),
        key=lambda m: (m.pickled, m.name.lower(), str(m.path)),
    )
    if not found:
        raise ZvsError(
            f"the IP-Adapter '{adapter.name}' needs a CLIP vision encoder ({width} wide), and "
            "none is in the model folders",
            hint="put h94/IP-Adapter's models/image_encoder folder beside the adapter file, or "
            "a clip_vision .safetensors (CLIP-ViT-H-14) in your model folders, or give "
            "--image-encoder PATH",
        )
    return found[0].path


# -- settings ---------------------------------------------------------------------------------
def check_reference_scale(scale: float) -> None:
    if not math.isfinite(scale) or scale < 0:
        raise ZvsError(f"the reference strength must be a number >= 0, got {scale}")


def reference_identity(image: str, scale: float) -> str:
    """What a key's cache identity says of its reference image: its content, not its path."""
    from zvstudio.diffusion.identify import sha256_file

    try:
        content = sha256_file(image)
    except ZvsError:
        content = "missing"  # the render says so; the key must just not match a real image
    return f"reference {content} {scale:g}"
