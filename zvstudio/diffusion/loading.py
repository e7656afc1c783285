"""Load the parts of a Stable Diffusion 1.x model, fully offline.

Two layouts are accepted:

* a diffusers folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, ...), loaded with
  `from_pretrained(local_files_only=True)`;
* a single-file checkpoint in the original CompVis / A1111 key layout
  (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`).
  The architecture comes from our own config folder (`resources/sd15`, written from the
  published SD1.5 numbers), never from the hub. Keys are renamed with diffusers' own
  converters, but we load the tensors ourselves: `from_single_file` leaves missing weights
  uninitialised and only logs unexpected ones, and a wrong file must fail with a clear error.

Pickled checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`) can run code when unpickled, so they are
refused unless the caller allows them, and even then only plain tensors are unpickled
(`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from zvstudio.diffusion.identify import PICKLE_SUFFIXES
from zvstudio.diffusion.tokenizer import load_clip_tokenizer, model_tokenizer_dir, sd15_config_dir
from zvstudio.errors import ZvsError

if TYPE_CHECKING:  # imported lazily at run time: diffusers takes seconds to import
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
_PARTS = ((VAE_PREFIX, "VAE"), (TEXT_PREFIX, "text encoder"))
# Keys an SD1.x checkpoint may carry that no inference component uses.
_IGNORED_SUFFIXES = (".position_ids",)  # a non-persistent buffer in current transformers
_IGNORED_PREFIXES = (VAE_PREFIX + "loss.",)  # the VAE's training loss (LPIPS, discriminator)
# UNet config fields that tell an SD1.x UNet apart (SD2 shares the layout but not the widths).
_UNET_ARCH_FIELDS = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "cross_attention_dim",
    "down_block_types",
    "up_block_types",
)

__all__ = [
    "Components",
    "empty_sd15_models",
    "load_sd15_components",
    "match_original_checkpoint",
    "sd15_config_dir",
]


@dataclass
class Components:
    """The loaded parts of an SD1.x model, in eval mode on the requested device and dtype."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    source: Path
    # Set by an offload plan (zvstudio.engine.device): offloaded weights wait in system RAM, or
    # on the meta device, between calls, so the UNet's own device is not where they compute.
    execution_device: torch.device | None = None
    # Textual inversions added to the tokenizer and text encoder: name -> vector count.
    embeddings: dict[str, int] = field(default_factory=dict)
    # The reference image's embedding, when an IP-Adapter is installed in the UNet
    # (`zvstudio.diffusion.ip_adapter.ReferenceEmbeds`).
    reference: Any = None

    @property
    def device(self) -> torch.device:
        """Where the models compute, so where their inputs must be created."""
        return self.execution_device if self.execution_device is not None else self.unet.device

    def make_scheduler(self) -> DDIMScheduler:
        """A fresh DDIMScheduler (schedulers keep per-run state, so never share one)."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config)


def force_offline() -> None:
    """Make huggingface_hub refuse network access for the rest of this process.

    huggingface_hub reads HF_HUB_OFFLINE once, at import, so setting the variable is not
    enough once it is imported: its module constant is set too.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True


def load_sd15_components(
    path: Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    config_dir: Path | None = None,
    unet_inputs: Sequence[int] = (4,),
    vae: Path | None = None,
) -> Components:
    """Load an SD1.x model from a diffusers folder or a single checkpoint file.

    `config_dir` is the reference architecture (a diffusers-layout config folder); it defaults
    to our SD1.5 configs and exists so that tests can load tiny models through the same path.
    `unet_inputs` are the UNet input channel counts the caller can use: 4 for text-to-image
    models, 8 for InstructPix2Pix (the image latent concatenated to the noise). `vae`, a VAE
    file or folder (`zvstudio.diffusion.vae`), replaces the model's own, which is then not
    loaded and may be absent.
    Raises ZvsError for anything the user can fix: a missing or wrong file, a pickled file
    that was not allowed, a checkpoint that is not SD1.x.
    """
    force_offline()
    path = Path(path)
    config_dir = Path(config_dir) if config_dir is not None else sd15_config_dir()
    own_vae = vae is None
    vae_model = None
    if vae is not None:  # loaded first: a wrong VAE fails before the model is read
        from zvstudio.diffusion.vae import load_vae

        vae_model = load_vae(vae, dtype, allow_pickle, config_dir)
    if path.is_dir():
        parts = _load_diffusers_folder(path, config_dir, allow_pickle, dtype, unet_inputs, own_vae)
        tokenizer = load_clip_tokenizer(path if model_tokenizer_dir(path) else config_dir)
        scheduler_config = _scheduler_config(config_dir, path)
    elif path.is_file():
        parts = _load_single_file(path, config_dir, allow_pickle, dtype, unet_inputs, own_vae)
        tokenizer = load_clip_tokenizer(config_dir)
        scheduler_config = _scheduler_config(config_dir)
    else:
        raise ZvsError(f"Model not found: {path}")
    unet, own, text_encoder = parts
    vae_model = own if vae_model is None else vae_model
    # The weights already have `dtype`: diffusers' `.to(dtype=...)` logs a spurious warning.
    unet, vae_model, text_encoder = (m.to(device).eval() for m in (unet, vae_model, text_encoder))
    return Components(unet, vae_model, text_encoder, tokenizer, scheduler_config, path)


# ---------------------------------------------------------------------------- diffusers folder


def _load_diffusers_folder(
    path: Path,
    config_dir: Path,
    allow_pickle: bool,
    dtype: torch.dtype,
    unet_inputs=(4,),
    own_vae: bool = True,
) -> tuple:
    """(unet, vae, text_encoder); the VAE is None unless `own_vae`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    needed = ("unet", "vae", "text_encoder") if own_vae else ("unet", "text_encoder")
    missing = [s for s in needed if not (path / s).is_dir()]
    if missing:
        raise ZvsError(
            f"{path} is not a diffusers model folder: it has no {', '.join(missing)} folder.",
            hint="pick the folder that holds model_index.json, or a single .safetensors file",
        )
    _check_unet_config(path / "unet" / "config.json", config_dir, path, unet_inputs)
    models = []
    for cls, sub in (
        (UNet2DConditionModel, "unet"),
        (AutoencoderKL, "vae"),
        (CLIPTextModel, "text_encoder"),
    ):
        if sub not in needed:
            models.append(None)
            continue
        kwargs = weights_kwargs(path / sub, allow_pickle)
        if sub != "text_encoder":
            kwargs["torch_dtype"] = dtype
        model = from_pretrained_checked(cls, path, f"The {sub} of {path}", subfolder=sub, **kwargs)
        # transformers names the argument dtype, diffusers torch_dtype: cast afterwards.
        models.append(model if sub != "text_encoder" else model.to(dtype))
    return tuple(models)


def from_pretrained_checked(cls: Any, path: Path, what: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained` from local files only, with every missing, unexpected or
    mismatched tensor an error (diffusers and transformers only log those)."""
    try:
        model, info = cls.from_pretrained(
            path, local_files_only=True, output_loading_info=True, **kwargs
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ZvsError(f"{what} cannot be loaded: {exc}") from exc
    bad = {k: len(v) for k, v in info.items() if k != "error_msgs" and v}
    if bad:
        detail = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in bad.items())
        raise ZvsError(f"{what} does not match its config ({detail}).")
    return model


def weights_kwargs(folder: Path, allow_pickle: bool) -> dict[str, Any]:
    """from_pretrained arguments that pick the folder's safetensors weights (or allowed pickles)."""
    names = {p.name for p in folder.iterdir()}
    for variant in (None, "fp16"):
        infix = f".{variant}" if variant else ""
        if {f"diffusion_pytorch_model{infix}.safetensors", f"model{infix}.safetensors"} & names:
            return {"use_safetensors": True, "variant": variant}
    if any(n.endswith(PICKLE_SUFFIXES) for n in names):
        if not allow_pickle:
            raise pickle_refused(folder)
        return {"use_safetensors": False}
    return {}  # let from_pretrained say what is missing (sharded files, for example)


def _check_unet_config(
    config_file: Path, config_dir: Path, path: Path, unet_inputs: Sequence[int] = (4,)
) -> None:
    try:
        theirs = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ZvsError(f"{config_file} cannot be read: {exc}") from exc
    _check_input_channels(theirs.get("in_channels", 4), unet_inputs, path)
    ours = json.loads((config_dir / "unet" / "config.json").read_text(encoding="utf-8"))
    ours = {**ours, "in_channels": theirs.get("in_channels", ours["in_channels"])}
    differ = [k for k in _UNET_ARCH_FIELDS if k in theirs and theirs[k] != ours[k]]
    if differ:
        k = differ[0]
        raise ZvsError(
            f"{path} is not an SD1.x model: its UNet has {k} = {theirs[k]}, SD1.x has {ours[k]}.",
            hint="only Stable Diffusion 1.x models (SD1.4, SD1.5 and their fine-tunes) work here",
        )


# What a UNet with these input channels is, and where zvstudio can use it.
_INPUT_KINDS = {
    8: (
        "an InstructPix2Pix model",
        "edit a clip with it: zvstudio generate --video IN --prompt 'an instruction'",
    ),
    9: ("an inpainting model", "use a text-to-image SD1.x checkpoint"),
}


def _check_input_channels(channels: int, accepted: Sequence[int], path: Path) -> None:
    """Refuse, with what the model is, a UNet whose inputs the caller cannot use."""
    if channels in accepted:
        return
    what, hint = _INPUT_KINDS.get(
        channels, (f"a model with {channels} UNet input channels", "use an SD1.x checkpoint")
    )
    raise ZvsError(f"{Path(path).name} is {what}; it cannot be used here.", hint=hint)


def _scheduler_config(config_dir: Path, model_dir: Path | None = None) -> dict[str, Any]:
    """Our DDIM config, with the training-schedule values a diffusers folder states itself."""
    from diffusers import DDIMScheduler

    config = json.loads((config_dir / "scheduler" / "scheduler_config.json").read_text())
    theirs_file = model_dir / "scheduler" / "scheduler_config.json" if model_dir else None
    if theirs_file is not None and theirs_file.is_file():
        # Folders usually ship a PNDM config; keep only what DDIM understands.
        accepted = inspect.signature(DDIMScheduler.__init__).parameters
        theirs = json.loads(theirs_file.read_text(encoding="utf-8"))
        config.update({k: v for k, v in theirs.items() if k in accepted})
    return config


# --------------------------------------------------------------------------------- single file


def pickle_refused(path: Path) -> ZvsError:
    return ZvsError(
        f"{path.name} is a pickled PyTorch file; loading one can run code hidden inside it.",
        hint="use a .safetensors version of the model, or allow pickled checkpoints in the "
        "settings if you trust where this file came from",
    )


class _Tensors(Mapping[str, torch.Tensor]):
    """A checkpoint's tensors by name: lazily from a safetensors file, else from a dict."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self._keys = list(source.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        if isinstance(self._source, dict):
            return self._source[key]
        return self._source.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        if isinstance(self._source, dict):
            return tuple(self._source[key].shape)
        return tuple(self._source.get_slice(key).get_shape())


def read_pickled(path: Path, allow_pickle: bool) -> Any:
    """What a pickled weights file holds, read as plain tensors only (never Python objects);
    refused unless pickles are allowed."""
    if not allow_pickle:
        raise pickle_refused(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise ZvsError(
            f"{path.name} holds more than plain tensors (Python objects), so it is not "
            f"loaded even though pickled files are allowed: {exc}",
            hint="convert it to .safetensors with a tool you trust",
        ) from exc


def open_checkpoint(path: Path, allow_pickle: bool) -> _Tensors:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            # Opened lazily: tensors are read only for the keys we use (EMA copies are not).
            return _Tensors(safe_open(str(path), framework="pt", device="cpu"))
        except Exception as exc:  # safetensors raises its own error types, and OSError
            raise ZvsError(f"{path.name} is not a readable .safetensors file: {exc}") from exc
    if suffix not in PICKLE_SUFFIXES:
        raise ZvsError(
            f"{path.name}: unsupported model file type {suffix!r}.",
            hint="use a .safetensors checkpoint or a diffusers model folder",
        )
    data = read_pickled(path, allow_pickle)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # Lightning-style checkpoint
    if not isinstance(data, dict):
        raise ZvsError(f"{path.name} does not contain a state dict.")
    return _Tensors({k: v for k, v in data.items() if isinstance(v, torch.Tensor)})


class _KeyName(str):
    """An original key standing in for its tensor, so diffusers' converters map names only.

    The converters read `.shape`/`.ndim` to reshape VAE attention weights; 2-D means 'leave it'.
    """

    shape = (1, 1)
    ndim = 2


def rename_map(
    convert: Callable[..., dict], keys: list[str], config: Mapping[str, Any]
) -> dict[str, str]:
    """{diffusers key: original key}, from diffusers' converter run on key names."""
    try:
        converted = convert({k: _KeyName(k) for k in keys}, config)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError):
        return {}  # a key set the converter cannot follow: reported as missing tensors
    return {d: str(o) for d, o in converted.items() if isinstance(o, _KeyName)}


def _text_rename_map(model_keys: list[str], keys: list[str]) -> dict[str, str]:
    # The original keys are transformers' own CLIPTextModel names under TEXT_PREFIX, with or
    # without the "text_model." level (it depends on the transformers version that saved the
    # file, and on the one we run: >= 5.6 dropped it again).
    bare = {k[len(TEXT_PREFIX) :].removeprefix("text_model."): k for k in keys}
    return {
        m: bare[m.removeprefix("text_model.")]
        for m in model_keys
        if m.removeprefix("text_model.") in bare
    }


def _same_shape(file_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> bool:
    # Original VAE attention weights are 1x1 convolutions ([C, C, 1, 1]), diffusers' are linear.
    n = len(model_shape)
    return file_shape[:n] == model_shape and all(d == 1 for d in file_shape[n:])


def mismatches(
    params: Mapping[str, torch.Tensor],
    rename: Mapping[str, str],
    shapes: Mapping[str, Sequence[int]],
    keys: Iterable[str],
) -> tuple[int, int, int]:
    """(missing, unexpected, misshapen): how a file's `keys` (with `shapes`) fit a model's
    `params`, each parameter read from the file key `rename` gives it."""
    missing = sum(1 for p in params if p not in rename)
    misshapen = sum(
        1
        for p, tensor in params.items()
        if p in rename and not _same_shape(tuple(shapes[rename[p]]), tuple(tensor.shape))
    )
    used = {rename[p] for p in params if p in rename}
    return missing, sum(1 for key in keys if key not in used), misshapen


def load_renamed(
    model: Any, tensors: Mapping[str, torch.Tensor], rename: Mapping[str, str], dtype
) -> None:
    """Fill `model` (parameters on the meta device) with `tensors`, each parameter from the
    key `rename` gives it, in `dtype`."""
    state = {
        name: tensors[rename[name]].reshape(param.shape).to(dtype)
        for name, param in model.state_dict().items()
    }
    model.load_state_dict(state, strict=True, assign=True)


def empty_sd15_models(
    config_dir: Path | None = None, unet_in_channels: int | None = None
) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """(unet, vae, text_encoder) built from a config folder with parameters on the meta device.

    No memory and no random init; buffers stay real, which matters for CLIP's non-persistent
    position_ids. Fill them with `load_state_dict(..., assign=True)`.
    """
    from accelerate import init_empty_weights  # a dependency of peft, which we require
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    config_dir = Path(config_dir) if config_dir is not None else sd15_config_dir()
    unet_config = UNet2DConditionModel.load_config(config_dir, subfolder="unet")
    if unet_in_channels is not None:
        unet_config = {**unet_config, "in_channels": unet_in_channels}
    vae_config = AutoencoderKL.load_config(config_dir, subfolder="vae")
    text_config = CLIPTextConfig.from_pretrained(
        config_dir, subfolder="text_encoder", local_files_only=True
    )
    with init_empty_weights():
        return (
            UNet2DConditionModel.from_config(unet_config),
            AutoencoderKL.from_config(vae_config),
            CLIPTextModel(text_config),
        )


def match_original_checkpoint(
    models: tuple, shapes: Mapping[str, tuple[int, ...]], name: str = "the checkpoint"
) -> tuple[dict[str, str], ...]:
    """For each of (unet, vae, text_encoder): {parameter name: original checkpoint key}.

    `shapes` lists the checkpoint's keys and tensor shapes. Raises ZvsError, with the count of
    missing, unexpected and misshapen tensors, unless the checkpoint fits the models exactly.
    A VAE of None (one loaded from elsewhere) matches nothing, and the file's VAE is ignored.
    """
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    unet, vae, text = models
    ignored = _IGNORED_PREFIXES if vae is not None else (VAE_PREFIX,)
    keys = [k for k in shapes if not k.startswith(ignored)]
    renames = (
        rename_map(convert_ldm_unet_checkpoint, _under(keys, UNET_PREFIX), unet.config),
        rename_map(convert_ldm_vae_checkpoint, _under(keys, VAE_PREFIX), vae.config)
        if vae is not None
        else {},
        _text_rename_map(list(text.state_dict()), _under(keys, TEXT_PREFIX)),
    )
    missing = misshapen = 0
    for model, rename in zip(models, renames, strict=True):
        if model is not None:  # unexpected keys are counted over the three models below
            absent, _, wrong = mismatches(model.state_dict(), rename, shapes, ())
            missing, misshapen = missing + absent, misshapen + wrong
    used = {k for rename in renames for k in rename.values()}
    unexpected = sum(
        1
        for k in keys
        if k.startswith((UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX))
        and k not in used
        and not k.endswith(_IGNORED_SUFFIXES)
    )
    if missing or unexpected or misshapen:
        raise ZvsError(
            f"{name} is not an SD1.x checkpoint: {missing} tensors missing, "
            f"{unexpected} unexpected, {misshapen} of the wrong shape.",
            hint=_guess_what_it_is(list(shapes)),
        )
    return renames


def _under(keys: list[str], prefix: str) -> list[str]:
    return [k for k in keys if k.startswith(prefix)]


def _load_single_file(
    path: Path,
    config_dir: Path,
    allow_pickle: bool,
    dtype: torch.dtype,
    unet_inputs=(4,),
    own_vae: bool = True,
) -> tuple:
    """(unet, vae, text_encoder); the VAE is None unless `own_vae`."""
    tensors = open_checkpoint(path, allow_pickle)
    conv_in = UNET_PREFIX + "input_blocks.0.0.weight"
    channels = tensors.shape(conv_in)[1] if conv_in in set(tensors) else None
    if channels is not None and channels != 4:
        _check_input_channels(channels, unet_inputs, path)
    unet, vae, text = empty_sd15_models(config_dir, channels)
    models = (unet, vae if own_vae else None, text)
    renames = match_original_checkpoint(models, {k: tensors.shape(k) for k in tensors}, path.name)
    for model, rename in zip(models, renames, strict=True):
        if model is not None:
            load_renamed(model, tensors, rename, dtype)
    return models


def _guess_what_it_is(keys: list[str]) -> str:
    """A hint naming what a non-SD1.x file looks like, from its key names."""
    has = lambda *parts: any(p in k for k in keys for p in parts)  # noqa: E731
    if has("lora_", "lora_A", "lora.down", "hada_w1", "lokr_w1"):
        what = "a LoRA (load it as a LoRA on top of a checkpoint)"
    elif has("conditioner.embedders"):
        what = "an SDXL checkpoint"
    elif has("cond_stage_model.model."):
        what = "an SD2.x checkpoint"
    elif has("control_model.", "input_hint_block"):
        what = "a ControlNet"
    elif not any(k.startswith(UNET_PREFIX) for k in keys):
        what = "not a full Stable Diffusion checkpoint (no UNet in the original layout)"
    elif absent := [n for p, n in _PARTS if not any(k.startswith(p) for k in keys)]:
        if absent == ["VAE"]:  # pruned files leave the VAE to be chosen separately
            return (
                "this checkpoint has no VAE: choose one for it (--vae FILE, or VAE in the "
                "inspector), such as vae-ft-mse-840000-ema-pruned.safetensors"
            )
        what = f"a checkpoint without its {' and '.join(absent)}"
    else:
        what = "an SD-like checkpoint with a different architecture (inpainting, SD2, ...)"
    return f"this file looks like {what}; pick an SD1.x (SD1.4/1.5 or fine-tune) checkpoint"
