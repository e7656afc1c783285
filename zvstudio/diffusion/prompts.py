"""Prompts as AUTOMATIC1111 reads them: attention weights and prompts of any length.

Prompts shared for SD1.x are written for AUTOMATIC1111, so zvstudio reads them the same way:

- `(words)` gives the words 1.1 times the attention, `[words]` 1/1.1, `(words:1.3)` 1.3;
  brackets nest (their factors multiply) and `\\(` is a plain bracket;
- CLIP reads 75 tokens at a time, so a longer prompt is encoded in chunks of 75 (each between
  its own start and end tokens) whose embeddings are joined; `BREAK` starts a new chunk;
- a weight scales its tokens' embeddings, and each chunk is then scaled back to its mean
  before weighting (as A1111 does, so weights shift emphasis without changing overall scale).

A prompt without brackets or BREAK that fits one chunk is encoded exactly as before. All
prompts of one batch (negative and positive) get as many chunks as the longest, the others
padded with empty chunks. The parser is ours (A1111's syntax has no maintained library; compel
reads its own syntax), written from A1111's documented behaviour.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zvstudio.errors import ZvsError
from zvstudio.keyrender import MAX_CLIP_SKIP

if TYPE_CHECKING:
    import torch

UP, DOWN = 1.1, 1 / 1.1  # ( ) and [ ]
CHUNK = 75  # tokens CLIP reads between its start and end tokens (77 in all)
BREAK = "BREAK"
# Part of a key's identity when its prompt reads otherwise than plain CLIP truncation did.
SYNTAX_VERSION = "a1111 prompts v1"

_PARTS = re.compile(
    r"\\[\\()\[\]]"  # an escaped bracket or backslash
    r"|\(|\["  # an opening bracket
    r"|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)"  # ":1.3)" closes a weighted group
    r"|\)|\]"  # a closing bracket
    r"|[^\\()\[\]:]+|:|\\"  # text
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def uses_syntax(prompt: str) -> bool:
    """Whether `prompt` may read otherwise than a plain, truncated CLIP prompt: it has weight
    brackets or BREAK, or is long enough to pass one chunk (a token is at least a character)."""
    return bool(re.search(r"[()\[\]]|\bBREAK\b", prompt)) or len(prompt) > CHUNK


def parse_weights(prompt: str) -> list[tuple[str, float]]:
    """`prompt` as (text, weight) pieces in order; `BREAK` is a piece of its own (weight 0)."""
    pieces: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _PARTS.finditer(prompt):
        part, weight = match.group(0), match.group(1)
        if part.startswith("\\") and len(part) == 2:
            pieces.append([part[1], 1.0])
        elif part == "(":
            round_open.append(len(pieces))
        elif part == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif part == ")" and round_open:
            scale(round_open.pop(), UP)
        elif part == "]" and square_open:
            scale(square_open.pop(), DOWN)
        else:
            for index, text in enumerate(_BREAK.split(part)):
                if index:
                    pieces.append([BREAK, 0.0])
                if text:
                    pieces.append([text, 1.0])
    for start in round_open:  # unclosed: as if closed at the end
        scale(start, UP)
    for start in square_open:
        scale(start, DOWN)
    merged: list[tuple[str, float]] = []
    for text, weight in pieces:
        if merged and merged[-1][1] == weight and text != BREAK and merged[-1][0] != BREAK:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged or [("", 1.0)]


def chunked_tokens(tokenizer: Any, prompt: str) -> list[tuple[list[int], list[float]]]:
    """`prompt`'s token ids and weights in chunks of at most CHUNK (without start/end)."""
    chunks: list[tuple[list[int], list[float]]] = [([], [])]
    for text, weight in parse_weights(prompt):
        if text == BREAK:
            chunks.append(([], []))
            continue
        # verbose=False: a piece longer than CLIP reads is what the chunks are for.
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        for token in ids:
            if len(chunks[-1][0]) == CHUNK:
                chunks.append(([], []))
            chunks[-1][0].append(token)
            chunks[-1][1].append(weight)
    return chunks


def check_clip_skip(clip_skip: int) -> None:
    """Refuse a clip skip outside A1111's range (1: none)."""
    if not 1 <= clip_skip <= MAX_CLIP_SKIP:
        raise ZvsError(
            f"clip skip must be between 1 (CLIP's last layer) and {MAX_CLIP_SKIP}, got {clip_skip}",
            hint="2 is what models trained on CLIP's penultimate layer (most anime models) want",
        )


def encode_ids(encoder: Any, ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
    """CLIP's hidden states of token `ids`. With `clip_skip` N > 1 they are those N - 1 layers
    before the last, normalised as the last ones are: A1111's "Clip skip" (2 for models
    trained on the penultimate layer, as most anime models are)."""
    if clip_skip <= 1:
        return encoder(ids)[0]
    layers = encoder.config.num_hidden_layers
    if clip_skip > layers:
        raise ZvsError(f"clip skip {clip_skip} skips more than the text encoder's {layers} layers")
    hidden = encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
    # transformers >= 5.6 dropped the text_model level that earlier versions have.
    text_model = getattr(encoder, "text_model", encoder)
    return text_model.final_layer_norm(hidden)


def encode_weighted(
    tokenizer: Any, encoder: Any, prompts: Sequence[str], device, clip_skip: int = 1
) -> torch.Tensor:
    """CLIP embeddings of `prompts` read as A1111 reads them: (prompts, 77 x chunks, width)."""
    import torch

    per_prompt = [chunked_tokens(tokenizer, prompt) for prompt in prompts]
    count = max(len(chunks) for chunks in per_prompt)
    ids, weights = [], []
    for chunks in per_prompt:
        for tokens, token_weights in chunks + [([], [])] * (count - len(chunks)):
            padding = CHUNK - len(tokens)
            ids.append(
                [tokenizer.bos_token_id, *tokens, tokenizer.eos_token_id]
                + [tokenizer.pad_token_id] * padding
            )
            weights.append([1.0, *token_weights, 1.0] + [1.0] * padding)
    hidden = encode_ids(encoder, torch.tensor(ids, device=device), clip_skip)
    factors = torch.tensor(weights, device=hidden.device, dtype=hidden.dtype)[..., None]
    weighted = hidden * factors
    # Each chunk keeps its mean: weights move emphasis between tokens, not overall scale.
    before = hidden.mean(dim=(1, 2), keepdim=True)
    after = weighted.mean(dim=(1, 2), keepdim=True)
    ratio = torch.where(after.abs() > 1e-6, before / after, torch.ones_like(after))
    weighted = weighted * ratio
    return weighted.reshape(len(prompts), count * (CHUNK + 2), hidden.shape[-1])
