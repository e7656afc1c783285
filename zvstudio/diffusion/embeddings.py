"""Textual inversion embeddings: prompt words that stand for learnt vectors ("EasyNegative").

AUTOMATIC1111 keeps embeddings in an `embeddings` folder (ComfyUI in `models/embeddings`) and
uses one wherever a prompt writes its name, the file's stem. zvstudio does the same with the
embeddings in the model folders: when a model loads, every SD1.x embedding there is added to
its tokenizer and text encoder (before any offload hooks, as LoRAs are), and a prompt word that
names one, in any letter case, uses it. diffusers' `load_textual_inversion` adds the tokens (a
multi-vector embedding becomes `name`, `name_1`, ...); `expand_prompt` writes a named embedding
as all its tokens.

Pickled embeddings (`.pt`, `.bin`) load only when pickles are allowed, and then with torch's
weights-only unpickler. A key's cache identity names the embeddings its prompts use with their
content hashes (`embeddings_identity`), so replacing one renders those keys again.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from zvstudio.diffusion.identify import ModelInfo, embedding_vectors_shape, sha256_file
from zvstudio.diffusion.library import default_model_folders, scan_embeddings
from zvstudio.errors import ZvsError
from zvstudio.progress import LogCallback, ignore_log

if TYPE_CHECKING:
    import torch

    from zvstudio.diffusion.loading import Components

# The bases whose text encoder an embedding can fit: SD1.x, or one too small to tell (tests'
# tiny models; its width is checked against the text encoder when it loads).
_FITTING_BASES = ("sd1", "unknown")


def available_embeddings(folders: Iterable[Path] | None = None) -> dict[str, ModelInfo]:
    """name -> embedding, for every embedding in `folders` (default: the model folders); of
    two files with one name, the first by path."""
    chosen = default_model_folders() if folders is None else folders
    found: dict[str, ModelInfo] = {}
    for info in scan_embeddings(chosen):
        found.setdefault(info.name, info)
    return found


def loadable_embeddings(
    allow_pickle: bool, folders: Iterable[Path] | None = None
) -> dict[str, ModelInfo]:
    """The embeddings a model loads: those that can fit SD1.x, pickled ones only if allowed."""
    return {
        name: info
        for name, info in available_embeddings(folders).items()
        if info.base in _FITTING_BASES and (info.format != "pickle" or allow_pickle)
    }


def _word(name: str) -> re.Pattern[str]:
    """`name` as a whole prompt word, in any letter case."""
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)


def names_in(prompts: Iterable[str], names: Iterable[str]) -> list[str]:
    """The embedding `names` that any of `prompts` uses, sorted."""
    text = "\n".join(prompts)
    return sorted(name for name in names if _word(name).search(text))


def embeddings_identity(prompts: Iterable[str], allow_pickle: bool) -> str:
    """What the embeddings that `prompts` use contribute to a key's identity ("" for none)."""
    embeddings = loadable_embeddings(allow_pickle)
    used = names_in(prompts, embeddings)
    return ",".join(f"{name}={sha256_file(embeddings[name].path)[:16]}" for name in used)


def load_vectors(info: ModelInfo, allow_pickle: bool) -> torch.Tensor:
    """An embedding's vectors, [count, width], from a safetensors or (allowed) pickled file."""
    import torch
    from safetensors.torch import load_file

    if info.format == "pickle":
        if not allow_pickle:
            raise ZvsError(f"the embedding {info.path.name} is pickled", hint="allow pickles")
        try:
            data = torch.load(info.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a weights-only unpickler refuses anything but tensors
            raise ZvsError(f"cannot read the embedding {info.path.name}: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict):
            data = {f"string_to_param.{k}": v for k, v in data["string_to_param"].items()}
    else:
        data = load_file(str(info.path))
    if not isinstance(data, Mapping):
        data = {}
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    shape = embedding_vectors_shape({k: tuple(v.shape) for k, v in tensors.items()})
    vectors = next((v for v in tensors.values() if tuple(v.shape) == shape), None)
    if vectors is None:
        raise ZvsError(f"{info.path.name} is not a textual inversion embedding")
    return vectors.reshape(-1, vectors.shape[-1]).float()


def apply_embeddings(
    components: Components,
    embeddings: Mapping[str, ModelInfo],
    allow_pickle: bool,
    log: LogCallback = ignore_log,
) -> dict[str, int]:
    """Add `embeddings` to the model's tokenizer and text encoder; returns name -> vector
    count of those added (kept in `components.embeddings` for `expand_prompt`). One that does
    not fit (another text encoder's width, a name the vocabulary has) is skipped with a note."""
    from zvstudio.diffusion.lora import lora_pipeline

    width = components.text_encoder.get_input_embeddings().weight.shape[1]
    pipeline = lora_pipeline(components)
    added: dict[str, int] = {}
    for name, info in sorted(embeddings.items()):
        try:
            vectors = load_vectors(info, allow_pickle)
            if vectors.shape[1] != width:
                raise ZvsError(f"its vectors are {vectors.shape[1]} wide, the model's {width}")
            if " " in name:
                raise ZvsError("a name with a space cannot be one prompt word (rename the file)")
            vectors = vectors.to(components.text_encoder.dtype)
            with _quiet_transformers():  # it announces how it resizes the vocabulary
                pipeline.load_textual_inversion({name: vectors}, token=name)
        except (ZvsError, ValueError, RuntimeError) as exc:
            log(f"embedding {info.path.name} not used: {exc}")
            continue
        added[name] = vectors.shape[0]
    components.embeddings.update(added)
    if added:
        log(f"embeddings: {', '.join(added)} (write a name in a prompt to use it)")
    return added


def expand_prompt(prompt: str, embeddings: Mapping[str, int]) -> str:
    """`prompt` with each embedding it names written as that embedding's tokens (`name`,
    then `name_1`... for each further vector), whatever the letter case it was written in."""
    for name, count in embeddings.items():
        tokens = " ".join([name, *(f"{name}_{i}" for i in range(1, count))])
        prompt = _word(name).sub(lambda _, tokens=tokens: tokens, prompt)
    return prompt


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
