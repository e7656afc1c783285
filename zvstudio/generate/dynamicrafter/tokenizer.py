"""OpenCLIP's text tokenizer for DynamiCrafter's text tower, fully offline.

DynamiCrafter encodes prompts with `open_clip.tokenize` (ViT-H/14, laion2b). Its byte-level BPE
is OpenAI CLIP's: the same merges file (`bpe_simple_vocab_16e6.txt.gz`, which our dependency
`openai-clip` ships; see `zvstudio.diffusion.tokenizer`) and the same 49408-token vocabulary.
What OpenCLIP does around it, and what this module does too:

* the text is cleaned: ftfy's mojibake fixes, HTML entities unescaped (twice), runs of
  whitespace made one space, stripped, lower-cased;
* it is split by CLIP's regular expression (contractions, letter runs, single digits, runs of
  other symbols) and each piece is BPE-merged, lowest merge rank first;
* the ids are framed by start-of-text (49406) and end-of-text (49407), cut to the context
  length (77) keeping end-of-text last, and padded with 0 (which is "!"; transformers' CLIP
  tokenizers pad with end-of-text instead, which changes the text tower's output).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from functools import lru_cache
from itertools import pairwise

import torch

from zvstudio.diffusion.tokenizer import (
    BOS,
    CLIP_VOCAB_SIZE,
    EOS,
    bytes_to_unicode,
    clip_vocab,
    find_bpe_file,
    read_bpe_merges,
)
from zvstudio.errors import ZvsError

__all__ = [
    "CONTEXT_LENGTH",
    "OpenCLIPTokenizer",
    "clean_text",
    "load_open_clip_tokenizer",
    "tokenizer_for",
]

CONTEXT_LENGTH = 77
# CLIP's pre-tokenizer: special tokens, English contractions, letter runs, one digit at a time,
# runs of anything else that is not whitespace (matched case-insensitively).
_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)


def clean_text(text: str) -> str:
    """OpenCLIP's text cleaning: ftfy fixes, HTML unescaped twice, whitespace collapsed,
    stripped, lower-cased."""
    try:
        import ftfy
    except ImportError:  # an openai-clip dependency; without it only mojibake stays unfixed
        pass
    else:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


class OpenCLIPTokenizer:
    """Text -> (batch, context_length) token ids, as `open_clip.tokenize` makes them.

    `vocab_size` smaller than CLIP's folds the ids into that many (start and end of text become
    the last two ids, padding stays 0): only for the tiny random text towers of tests.
    """

    def __init__(
        self,
        merges: Sequence[str],
        context_length: int = CONTEXT_LENGTH,
        vocab_size: int | None = None,
    ) -> None:
        import regex

        if context_length < 2:
            raise ValueError("the context must hold start- and end-of-text")
        self.encoder = clip_vocab(merges)
        self.ranks = {tuple(m.split()): i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.context_length = context_length
        self.vocab_size = vocab_size or len(self.encoder)
        self.sot, self.eot = self.encoder[BOS], self.encoder[EOS]
        self._pattern = regex.compile(_PATTERN, regex.IGNORECASE)
        self._bpe_cache: dict[str, tuple[str, ...]] = {}

    def bpe(self, piece: str) -> tuple[str, ...]:
        """The BPE symbols of one pre-tokenized piece (already mapped to byte characters);
        the last symbol carries the end-of-word marker."""
        cached = self._bpe_cache.get(piece)
        if cached is not None:
            return cached
        word = (*piece[:-1], piece[-1] + "</w>")
        while len(word) > 1:
            pairs = set(pairwise(word))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self._bpe_cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        """The ids of `text` without start/end of text (in CLIP's full vocabulary)."""
        ids: list[int] = []
        for piece in self._pattern.findall(clean_text(text)):
            chars = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self.bpe(chars))
        return ids

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """(len(texts), context_length) int64 ids: SOT, tokens, EOT, zeros."""
        if isinstance(texts, str):
            texts = [texts]
        rows = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > self.context_length:  # cut, keeping end-of-text last
                ids = [*ids[: self.context_length - 1], self.eot]
            rows[row, : len(ids)] = torch.tensor(self._fold(ids))
        return rows

    def _fold(self, ids: list[int]) -> list[int]:
        if self.vocab_size >= len(self.encoder):
            return ids
        size = self.vocab_size
        special = {self.sot: size - 2, self.eot: size - 1}
        return [special.get(i, 1 + i % (size - 3)) for i in ids]


@lru_cache(maxsize=4)
def load_open_clip_tokenizer(
    context_length: int = CONTEXT_LENGTH, vocab_size: int = CLIP_VOCAB_SIZE
) -> OpenCLIPTokenizer:
    """The tokenizer with CLIP's real vocabulary, from the merges file an installed package
    ships (no download). Raises ZvsError when no package has it."""
    path = find_bpe_file()
    if path is None:
        raise ZvsError(
            "The CLIP tokenizer vocabulary that DynamiCrafter needs was not found.",
            hint="reinstall zvstudio (its dependency 'openai-clip' ships the vocabulary)",
        )
    return OpenCLIPTokenizer(read_bpe_merges(path), context_length, vocab_size)


def tokenizer_for(config) -> OpenCLIPTokenizer:
    """The tokenizer for a `DynamiCrafterConfig`'s text tower (its context length and, for
    tiny test towers, its vocabulary size)."""
    text = config.text
    return load_open_clip_tokenizer(text.context_length, min(text.vocab_size, CLIP_VOCAB_SIZE))
