"""An SD1.5-sized diffusers model folder with random weights, for timing the diffusion path.

Speed and memory depend on the architecture, not on the weights, so a randomly initialised
model built from our SD1.5 configs (`resources/sd15`) measures what a real checkpoint would,
with nothing downloaded. The folder is what users have (safetensors in fp16, the CLIP
tokenizer the loader uses) so it goes through the real loading code.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from zvstudio.diffusion.tokenizer import clip_vocab_files, sd15_config_dir

FOLDER_NAME = "random-sd15-fp16"
_WEIGHTS = (
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
)


def is_complete(folder: Path) -> bool:
    return (folder / "model_index.json").is_file() and all(
        (folder / name).is_file() for name in _WEIGHTS
    )


def random_sd15_folder(parent: Path, seed: int = 0) -> Path:
    """`parent/random-sd15-fp16`, built on first use and reused after (about 2 GB)."""
    dest = Path(parent) / FOLDER_NAME
    if is_complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Built beside it and renamed, so an interrupted build never looks like a model.
    partial = Path(tempfile.mkdtemp(prefix=FOLDER_NAME + "-", dir=dest.parent))
    try:
        _write_folder(partial, seed)
        shutil.rmtree(dest, ignore_errors=True)
        partial.rename(dest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return dest


def model_or_random(
    model: Path | None, model_dir: Path | None, scratch: Path
) -> tuple[Path, float | None]:
    """(`model`, None), or without one the random SD1.5 folder (kept in `model_dir`, else in
    `scratch`) with the seconds it took to build or find."""
    if model is not None:
        return model, None
    started = time.perf_counter()
    folder = random_sd15_folder(model_dir or scratch)
    return folder, round(time.perf_counter() - started, 1)


def _write_folder(dest: Path, seed: int) -> None:
    import torch

    config = sd15_config_dir()
    shutil.copyfile(config / "model_index.json", dest / "model_index.json")
    shutil.copytree(config / "scheduler", dest / "scheduler")
    clip_vocab_files(dest / "tokenizer")
    torch.manual_seed(seed)
    for sub in ("unet", "vae", "text_encoder"):
        print(f"zvstudio bench: building a random SD1.5 {sub}", file=sys.stderr, flush=True)
        # One at a time: the fp32 UNet alone is 3.4 GB before it is halved.
        _random_model(config, sub).to(torch.float16).save_pretrained(dest / sub)


def _random_model(config: Path, sub: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if sub == "text_encoder":
        text_config = CLIPTextConfig.from_pretrained(config, subfolder=sub, local_files_only=True)
        return CLIPTextModel(text_config)
    cls = UNet2DConditionModel if sub == "unet" else AutoencoderKL
    return cls.from_config(cls.load_config(config, subfolder=sub))
