"""AnimateZero's positional-corrected window attention for AnimateDiff motion modules.

A motion module's temporal attention is global: every frame attends to every frame, each token
carrying its frame's sinusoidal position. AnimateZero (METHOD 3) makes it causal so that frame 0
(the still image) is never changed by the frames after it: with F frames, frame i attends to
frames 0..i only, and the key/value sequence is padded back to F tokens with copies of frame 0,
so attention keeps the length (and the softmax temperature) the module was trained with.

The exact layout for query frame i (0-based positions into the block's sinusoidal table):

    key/value slots:  [f0] * (F - n) + [f(i-n+1), ..., fi]      n = min(window_length, i + 1)
    their positions:  0, 1, ..., F - 1
    query:            fi at position F - 1

so frame i's own token sits at the last slot with the same position as its query. With the
default window (all frames so far, n = i + 1) the slots are [f0 * (F-1-i), f0, ..., fi]; for the
last frame (i = F - 1) that is ordinary full attention with the standard positions. A shorter
`window_length` drops the oldest frames (frame 0 stays reachable through the padding).

diffusers' `BasicTransformerBlock` adds the positions to the normalised hidden states before
calling `attn1` and `attn2` (both temporal self-attention in a motion module), so a processor
cannot give the query and the keys different positions. `install_window_attention` therefore
swaps the block's `pos_embed` for an identity while installed and the processor adds the
positions itself, from the same table; `restore()` puts both back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# Motion modules as UNetMotionModel and MotionAdapter name them.
_MOTION_NAME = re.compile(r"(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.motion_modules\.\d+")
_GROUPS = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}


class WindowLayout(NamedTuple):
    """What query frame `index` attends to: the frame in each key/value slot, the position each
    slot is given, and the query's position (all 0-based)."""

    frames: tuple[int, ...]
    positions: tuple[int, ...]
    query_position: int


def window_layout(num_frames: int, index: int, window_length: int | None = None) -> WindowLayout:
    """The padded key/value sequence of frame `index` (see the module docstring)."""
    if not 0 <= index < num_frames:
        raise ValueError(f"frame {index} is outside 0..{num_frames - 1}")
    if window_length is not None and window_length < 1:
        raise ValueError("the window must hold at least one frame")
    attended = index + 1 if window_length is None else min(window_length, index + 1)
    frames = (0,) * (num_frames - attended) + tuple(range(index - attended + 1, index + 1))
    return WindowLayout(frames, tuple(range(num_frames)), num_frames - 1)


class WindowAttnProcessor:
    """Temporal self-attention with AnimateZero's causal, position-corrected window.

    Receives the block's hidden states WITHOUT positions, (batch * pixels, frames, channels),
    and `positions`, the block's sinusoidal table (1, max_frames, channels).
    """

    def __init__(self, positions: torch.Tensor, window_length: int | None = None) -> None:
        self.positions = positions
        self.window_length = window_length
        self._slots: dict[tuple[int, torch.device], torch.Tensor] = {}

    def slot_frames(self, frames: int, device: torch.device) -> torch.Tensor:
        """(frames, frames): the frame in each key/value slot of each query frame. Built once
        per clip length and device: a table copied to the GPU per frame would stall the GPU
        on every temporal attention call."""
        key = (frames, device)
        if key not in self._slots:
            table = [window_layout(frames, i, self.window_length).frames for i in range(frames)]
            self._slots[key] = torch.tensor(table, device=device)
        return self._slots[key]

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("window attention is temporal self-attention (no context, no mask)")
        frames = hidden_states.shape[1]
        if frames > self.positions.shape[1]:
            raise ValueError(
                f"{frames} frames, but the motion module knows only "
                f"{self.positions.shape[1]} positions"
            )
        table = self.positions[0, :frames].to(hidden_states)
        last = window_layout(frames, 0, self.window_length).query_position
        query = attn.to_q(hidden_states + table[last])
        # The projections are affine, so K(x + p) = K(x) + K(p) - K(0): each frame and each
        # position is projected once, and the padded sequences are sums of gathered rows.
        zero = table.new_zeros(1, table.shape[1])
        keys, values = attn.to_k(hidden_states), attn.to_v(hidden_states)
        key_pos = attn.to_k(table) - attn.to_k(zero)
        value_pos = attn.to_v(table) - attn.to_v(zero)
        out = torch.empty_like(query)
        slots = self.slot_frames(frames, keys.device)
        # Slot s of every query frame has position s (window_layout's positions).
        for i in range(frames):  # one query frame at a time: memory stays that of plain attention
            key = keys[:, slots[i]] + key_pos
            value = values[:, slots[i]] + value_pos
            out[:, i] = _attend(attn, query[:, i : i + 1], key, value)[:, 0]
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor


def _attend(attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Multi-head scaled dot-product attention of (B, Lq, C) on (B, Lk, C)."""
    batch, heads = query.shape[0], attn.heads
    split = lambda t: t.view(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(query), split(key), split(value))
    return out.transpose(1, 2).reshape(batch, -1, query.shape[-1]).to(query.dtype)


def motion_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The AnimateDiff motion modules of a UNetMotionModel or MotionAdapter, by name."""
    return {n: m for n, m in model.named_modules() if _MOTION_NAME.fullmatch(n)}


def select_motion_modules(names: Sequence[str], placement: str | Sequence[str]) -> list[str]:
    """The motion modules `placement` picks: "all", "none", "down", "mid", "up", block names
    ("down_blocks.1", "up_blocks.0.motion_modules.2"), or several of those (a sequence or a
    comma-separated string). Raises ValueError for a name that picks nothing."""
    items = placement.split(",") if isinstance(placement, str) else list(placement)
    chosen: set[str] = set()
    for item in (s.strip() for s in items):
        if item == "none":
            continue
        if item == "all":
            picked = set(names)
        else:
            prefix = _GROUPS.get(item, item + ".")
            picked = {n for n in names if n == item or n.startswith(prefix)}
        if not picked and item not in _GROUPS:
            raise ValueError(
                f"no motion module is called {item!r}; use all, none, down, mid, up or "
                f"block names like {names[0] if names else 'down_blocks.0'}"
            )
        chosen |= picked
    return [n for n in names if n in chosen]


class InstalledWindows:
    """Window attention installed on some motion modules; `restore()` undoes it."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._undo: list[tuple[nn.Module, nn.Module, Any, Any]] = []

    def add(self, name: str, block: nn.Module, window_length: int | None) -> None:
        if block.pos_embed is None or block.attn2 is None or block.attn1.is_cross_attention:
            raise ValueError(f"{name} is not an AnimateDiff temporal transformer block")
        self._undo.append((block, block.pos_embed, block.attn1.processor, block.attn2.processor))
        processor = WindowAttnProcessor(block.pos_embed.pe, window_length)
        block.pos_embed = nn.Identity()  # positions are added by the processor instead
        block.attn1.set_processor(processor)
        block.attn2.set_processor(processor)

    def restore(self) -> None:
        while self._undo:
            block, pos_embed, first, second = self._undo.pop()
            block.pos_embed = pos_embed
            block.attn1.set_processor(first)
            block.attn2.set_processor(second)


def install_window_attention(
    model: nn.Module, placement: str | Sequence[str] = "all", window_length: int | None = None
) -> InstalledWindows:
    """Give the motion modules `placement` selects window attention (both of each block's
    temporal attentions); the others keep their global attention."""
    modules = motion_modules(model)
    installed = InstalledWindows()
    try:
        for name in select_motion_modules(list(modules), placement):
            for k, block in enumerate(modules[name].transformer_blocks):
                installed.add(f"{name}.transformer_blocks.{k}", block, window_length)
            installed.names.append(name)
    except BaseException:
        installed.restore()
        raise
    return installed
