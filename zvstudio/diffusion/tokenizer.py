"""The CLIP tokenizer of SD1.x, built without downloading anything.

SD1.x models use OpenAI's CLIP BPE vocabulary. Single-file checkpoints do not carry it, and we
never fetch it from the hub, so `clip_vocab_files` finds it on disk, in this order:

1. the model's own `tokenizer/` folder (diffusers layout) with `vocab.json` + `merges.txt`;
2. the Hugging Face cache, read from disk only (`openai/clip-vit-large-patch14`, or the
   `tokenizer/` of a cached SD1.5 pipeline snapshot);
3. `bpe_simple_vocab_16e6.txt.gz`, the merges list that OpenAI's CLIP code ships and that
   several PyPI packages carry (our dependency `openai-clip` ships it with no heavy
   dependencies). Its vocabulary is derived exactly as CLIP's `SimpleTokenizer` does.

Derived files are cached under `cache_root()/tokenizers/clip`.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from zvstudio.errors import ZvsError
from zvstudio.paths import cache_root

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

# SimpleTokenizer keeps 49152 - 256 - 2 merges: with 2 x 256 byte tokens and 2 specials that
# gives the 49408-token vocabulary of every SD1.x text encoder.
CLIP_MERGES_COUNT = 49152 - 256 - 2
CLIP_VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"

# Installed distributions known to ship the merges file, and where inside them.
BPE_DISTRIBUTIONS = (
    ("openai-clip", "clip"),
    ("open_clip_torch", "open_clip"),
    ("clip-anytorch", "clip"),
)
# Hugging Face cache repositories (folder names) and the subfolder holding the tokenizer.
HF_CACHE_REPOS = (
    ("models--openai--clip-vit-large-patch14", ""),
    ("models--stable-diffusion-v1-5--stable-diffusion-v1-5", "tokenizer"),
    ("models--runwayml--stable-diffusion-v1-5", "tokenizer"),
)
VOCAB_FILES = ("vocab.json", "merges.txt")


def sd15_config_dir() -> Path:
    """Our SD1.5 architecture configs (diffusers layout), shipped as package data."""
    # A real folder: setuptools and PyInstaller both install package data as plain files.
    return Path(str(files("zvstudio.resources") / "sd15"))


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable unicode character table."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def read_bpe_merges(path: Path, limit: int = CLIP_MERGES_COUNT) -> list[str]:
    """The merges of a CLIP BPE file (gzipped or plain), without its header line."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # Line 0 is a header ("#version: 0.2"); SimpleTokenizer takes lines[1 : limit + 1].
    return [line for line in lines[1 : limit + 1] if line.strip()]


def clip_vocab(merges: Iterable[str]) -> dict[str, int]:
    """The token -> id table that CLIP's SimpleTokenizer builds from its merges."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


def write_clip_tokenizer(merges: list[str], dest: Path) -> Path:
    """Write `vocab.json`, `merges.txt` and the tokenizer configs for `merges` into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(
        json.dumps(clip_vocab(merges), ensure_ascii=False), encoding="utf-8"
    )
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    _write_tokenizer_configs(dest)
    return dest


def _write_tokenizer_configs(dest: Path) -> None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(sd15_config_dir() / "tokenizer" / name, dest / name)


def find_bpe_file() -> Path | None:
    """`bpe_simple_vocab_16e6.txt.gz` from an installed package, without importing it."""
    for dist_name, package in BPE_DISTRIBUTIONS:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            continue
        path = Path(str(dist.locate_file(f"{package}/{BPE_FILE_NAME}")))
        if path.is_file():
            return path
    # A source checkout or a frozen app may have the package without distribution metadata.
    # find_spec on a top-level name locates it without running its (torch-heavy) __init__.
    for package in dict.fromkeys(p for _, p in BPE_DISTRIBUTIONS):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):  # ValueError: imported earlier with no __spec__
            spec = None
        for location in (spec.submodule_search_locations or []) if spec else []:
            path = Path(location) / BPE_FILE_NAME
            if path.is_file():
                return path
    return None


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, from the same variables huggingface_hub reads."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _has_vocab(folder: Path) -> bool:
    return all((folder / name).is_file() for name in VOCAB_FILES)


def model_tokenizer_dir(model_dir: Path | None) -> Path | None:
    """The tokenizer folder with a vocabulary inside a model (diffusers) folder, if any."""
    if model_dir is not None and _has_vocab(model_dir / "tokenizer"):
        return model_dir / "tokenizer"
    return None


def _hf_cached_tokenizer_dirs() -> list[Path]:
    cache = hf_hub_cache()
    found = []
    for repo, sub in HF_CACHE_REPOS:
        for snapshot in sorted((cache / repo / "snapshots").glob("*")):
            if _has_vocab(snapshot / sub):
                found.append(snapshot / sub)
    return found


def clip_vocab_files(dest: Path, model_dir: Path | None = None) -> Path:
    """Write the CLIP tokenizer files (`vocab.json`, `merges.txt`, configs) into `dest`.

    Sources, first found wins: `model_dir`'s tokenizer folder, the Hugging Face cache, the
    merges file of an installed package. Raises ZvsError when none has it.
    """
    folder = model_tokenizer_dir(model_dir) or next(iter(_hf_cached_tokenizer_dirs()), None)
    if folder is not None:
        dest.mkdir(parents=True, exist_ok=True)
        for name in VOCAB_FILES:  # copyfile follows the cache's symlinks to the blobs
            shutil.copyfile(folder / name, dest / name)
        _write_tokenizer_configs(dest)
        return dest
    bpe = find_bpe_file()
    if bpe is None:
        raise ZvsError(
            "The CLIP tokenizer vocabulary that SD1.x models need was not found.",
            hint="reinstall zvstudio (its dependency 'openai-clip' ships the vocabulary), or "
            "use a diffusers model folder that has a tokenizer/ folder with vocab.json and "
            "merges.txt, or put openai/clip-vit-large-patch14 in the Hugging Face cache",
        )
    return write_clip_tokenizer(read_bpe_merges(bpe), dest)


def shared_clip_tokenizer_dir() -> Path:
    """The derived CLIP tokenizer folder in our cache, created on first use."""
    dest = cache_root() / "tokenizers" / "clip"

    def complete() -> bool:
        return _has_vocab(dest) and (dest / "tokenizer_config.json").is_file()

    if complete():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Build beside it and rename, so a crash or a second process never sees half a folder.
    tmp = Path(tempfile.mkdtemp(prefix="clip-", dir=dest.parent))
    try:
        clip_vocab_files(tmp)
        if not complete():
            shutil.rmtree(dest, ignore_errors=True)  # a stale partial folder
            tmp.rename(dest)
    except OSError:
        if not complete():  # else another process has just put it there
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load_clip_tokenizer(model_dir: Path | None = None) -> CLIPTokenizer:
    """The CLIP tokenizer: `model_dir`'s own if it has one, else the shared derived one."""
    from transformers import CLIPTokenizer

    folder = model_tokenizer_dir(model_dir) or shared_clip_tokenizer_dir()
    try:
        # model_max_length: a tokenizer folder without tokenizer_config.json would otherwise
        # not truncate, and SD1.x's text encoder has exactly 77 positions.
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True, model_max_length=77)
    except (OSError, ValueError) as exc:
        raise ZvsError(f"The CLIP tokenizer in {folder} cannot be read: {exc}") from exc
