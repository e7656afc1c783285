"""A VAE file used in place of the checkpoint's own (AUTOMATIC1111's "SD VAE" setting).

Many SD1.5 fine-tunes ship a VAE that washes colours out or none at all (pruned files), and
artists fix that with a separate VAE such as `vae-ft-mse-840000-ema-pruned.safetensors`. It
may come as:

* a single file in the original layout (`encoder.down.*`, with or without the
  `first_stage_model.` prefix), as A1111 and civitai distribute them;
* a single file in diffusers layout (`encoder.down_blocks.*`);
* a diffusers VAE folder (`config.json` + weights), or a diffusers model folder, whose `vae/`
  is taken.

The architecture is our SD1.5 VAE config (tests pass a tiny one); every tensor must fit it, as
for checkpoints. SDXL's VAE has the same architecture but another latent scale and training:
on an SD1.x model it gives wrong colours, so a VAE named or configured as SDXL's is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from zvstudio.diffusion.identify import BASE_LABELS, identify
from zvstudio.diffusion.library import check_loadable, wrong_kind
from zvstudio.diffusion.loading import (
    VAE_PREFIX,
    from_pretrained_checked,
    load_renamed,
    mismatches,
    open_checkpoint,
    rename_map,
    sd15_config_dir,
    weights_kwargs,
)
from zvstudio.errors import ZvsError

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

# Keys a VAE file may carry that inference does not use: the training loss (LPIPS and the
# discriminator) and an EMA copy.
_UNUSED_PREFIXES = ("loss.", "model_ema.")
_FILE_PREFIXES = (VAE_PREFIX, "vae.")
VAE_HINT = "pick an SD1.x VAE, such as vae-ft-mse-840000-ema-pruned.safetensors"

__all__ = ["VAE_HINT", "check_vae", "load_vae"]


def check_vae(path: Path, allow_pickle: bool = False) -> Path:
    """The file or folder to load for the VAE at `path`, refused (ZvsError) when it is missing,
    a pickle that was not allowed, not a VAE, or a VAE for another base model. Reads headers
    only."""
    path = Path(path)
    if not path.exists():
        raise ZvsError(f"VAE not found: {path}")
    if path.is_dir() and (path / "vae" / "config.json").is_file():
        path = path / "vae"  # a whole diffusers model: its VAE
    info = identify(path)
    check_loadable(info, allow_pickle)
    if info.kind not in ("vae", "unknown"):  # unknown: a pickle with an uninformative name
        raise ZvsError(wrong_kind(info, "vae"), hint=VAE_HINT)
    if info.base not in ("sd1", "unknown"):
        raise ZvsError(
            f"'{info.name}' is a VAE for {BASE_LABELS[info.base]}: on an SD1.x "
            "model its latents come out with the wrong colours and contrast.",
            hint=VAE_HINT,
        )
    return path


def load_vae(
    path: Path,
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
    config_dir: Path | None = None,
) -> AutoencoderKL:
    """The VAE at `path` (see the module's docstring), in `dtype` on the CPU, in eval mode."""
    path = check_vae(path, allow_pickle)
    config_dir = Path(config_dir) if config_dir is not None else sd15_config_dir()
    if path.is_dir():
        model = _load_folder(path, config_dir, dtype, allow_pickle)
    else:
        model = _load_file(path, config_dir, dtype, allow_pickle)
    return model.eval()


def _load_folder(
    path: Path, config_dir: Path, dtype: torch.dtype, allow_pickle: bool
) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    theirs = json.loads((path / "config.json").read_text(encoding="utf-8"))
    ours = AutoencoderKL.load_config(config_dir, subfolder="vae")
    scale, expected = theirs.get("scaling_factor"), ours["scaling_factor"]
    if scale is not None and abs(scale - expected) > 1e-6:
        raise ZvsError(
            f"the VAE {path} scales its latents by {scale}, SD1.x models by {expected} "
            "(0.13025 is SDXL's VAE).",
            hint=VAE_HINT,
        )
    kwargs = weights_kwargs(path, allow_pickle)
    return from_pretrained_checked(
        AutoencoderKL, path, f"The VAE {path}", torch_dtype=dtype, **kwargs
    )


def _load_file(path: Path, config_dir: Path, dtype: torch.dtype, allow_pickle: bool):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    tensors = open_checkpoint(path, allow_pickle)
    with init_empty_weights():
        model = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir, subfolder="vae"))
    rename = match_vae_file(model, {k: tensors.shape(k) for k in tensors}, path.name)
    load_renamed(model, tensors, rename, dtype)
    return model


def match_vae_file(model, shapes: dict[str, tuple[int, ...]], name: str) -> dict[str, str]:
    """{parameter name: file key} for a VAE file described by its key shapes, in either
    layout. Raises ZvsError, with the count of missing, unexpected and misshapen tensors,
    unless the file fits `model` exactly."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    bare = {_strip_prefix(k): k for k in shapes}
    bare = {k: v for k, v in bare.items() if not k.startswith(_UNUSED_PREFIXES)}
    if any(".down_blocks." in k or ".up_blocks." in k for k in bare):  # diffusers layout
        rename = dict(bare)
    else:  # the converter maps names under the checkpoint prefix
        converted = rename_map(
            convert_ldm_vae_checkpoint, [VAE_PREFIX + k for k in bare], {**model.config}
        )
        rename = {param: bare[key.removeprefix(VAE_PREFIX)] for param, key in converted.items()}
    params = model.state_dict()
    missing, unexpected, misshapen = mismatches(params, rename, shapes, bare.values())
    if missing or unexpected or misshapen:
        raise ZvsError(
            f"{name} is not an SD1.x VAE: {missing} tensors missing, {unexpected} unexpected, "
            f"{misshapen} of the wrong shape.",
            hint=VAE_HINT,
        )
    return {p: rename[p] for p in params}


def _strip_prefix(key: str) -> str:
    for prefix in _FILE_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key
