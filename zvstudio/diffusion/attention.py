"""Style-aware cross-frame attention (Rerender-A-Video, METHOD 1.1 constraint 1).

In the UNet's self-attention layers the query stays the current frame's, while keys and values
come from the anchor key's and the previous key's features at the same layer and step:

    K' = W_K [v_anchor; v_prev],   V' = W_V [v_anchor; v_prev]

`ReferenceStore` keeps those features (fp16, only for the layers a processor is installed on,
keyed by (layer, step, batch index) so that the [uncond, cond] halves of a classifier-free
guidance batch each see their own branch). `CrossFrameAttnProcessor` is a diffusers attention
processor built on `scaled_dot_product_attention`; in mode "off" it computes exactly what
diffusers' `AttnProcessor2_0` computes. Cross-attention (text) calls pass through unchanged.

Typical use for a sequence of key frames::

    store = ReferenceStore()
    installed = install_cross_frame_attention(unet, store, "decoder")
    store.set_mode("store")                 # key 0 (the anchor): plain attention, record
    for i, t in enumerate(timesteps):
        store.begin_step(i); ...unet(...)
    store.promote()                         # key 0 becomes "anchor" and "previous"
    store.set_mode("use", record=True)      # key 1..n: attend to the references, record too
    ...
    store.promote()                         # key i becomes "previous"
    installed.restore()                     # put the original processors back
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Literal

import torch
import torch.nn.functional as F

Mode = Literal["off", "store", "use"]
Layers = Literal["decoder", "decoder_loose", "all"]
ROLES = ("anchor", "previous")

# Key of one recording: (layer name, step index, batch index).
_Key = tuple[str, Hashable, int]


class ReferenceStore:
    """Reference features for cross-frame attention, shared by all installed processors.

    Recordings of the frame being rendered go to a "current" slot; `promote()` turns them
    into the "previous" references (and, for the first frame or on request, the "anchor").
    Memory stays bounded: at most three frames' worth (anchor, previous, current) of the
    installed layers' features, in `dtype` (fp16 by default); anchor and previous share
    tensors while they are the same frame.
    """

    def __init__(
        self, dtype: torch.dtype = torch.float16, device: torch.device | str | None = None
    ) -> None:
        self.dtype = dtype
        self.device = None if device is None else torch.device(device)  # None: the features'
        self.mode: Mode = "off"
        self.record = False
        self.step: Hashable | None = None
        self._current: dict[_Key, torch.Tensor] = {}
        self._roles: dict[str, dict[_Key, torch.Tensor]] = {}

    # ----------------------------------------------------------------- control
    def set_mode(self, mode: Mode, record: bool | None = None) -> None:
        """ "off": plain self-attention; "store": plain self-attention and record the features;
        "use": attend to the anchor + previous references (`record=True` also records the
        current frame, so it can become the next key's "previous")."""
        if mode not in ("off", "store", "use"):
            raise ValueError(f"unknown cross-frame attention mode {mode!r}")
        self.mode = mode
        self.record = (mode == "store") if record is None else (record and mode != "off")

    def begin_step(self, step: Hashable) -> None:
        """Set the sampling step that the next UNet call belongs to. References are matched by
        this key, so pass the same value for the same timestep in every key frame (the step
        index of a fixed schedule, or the timestep itself)."""
        self.step = step

    def promote(self, as_anchor: bool = False) -> None:
        """The current frame's recording becomes "previous"; it also becomes "anchor" when no
        anchor exists yet or `as_anchor` is set (re-anchoring). The current slot is emptied."""
        if not self._current:
            raise RuntimeError("nothing recorded for the current frame; nothing to promote")
        if as_anchor or "anchor" not in self._roles:
            self._roles["anchor"] = self._current
        self._roles["previous"] = self._current
        self._current = {}

    def clear(self) -> None:
        """Drop every recording and role (a new clip, or a new anchor rendered from scratch)."""
        self._current = {}
        self._roles = {}
        self.step = None

    def discard_current(self) -> None:
        """Drop the current frame's recording (e.g. a cancelled render)."""
        self._current = {}

    # ------------------------------------------------------------- inspection
    def has(self, role: str) -> bool:
        return role in self._roles

    def layers(self, role: str = "current") -> set[str]:
        """Names of the layers with recordings in `role` ("current", "anchor" or "previous")."""
        return {k[0] for k in self._recordings(role)}

    def tensors(self, role: str = "current") -> dict[_Key, torch.Tensor]:
        return dict(self._recordings(role))

    def nbytes(self) -> int:
        """Bytes held, counting tensors shared by several roles once."""
        seen: dict[int, int] = {}
        for group in (self._current, *self._roles.values()):
            for t in group.values():
                seen[id(t)] = t.numel() * t.element_size()
        return sum(seen.values())

    def _recordings(self, role: str) -> dict[_Key, torch.Tensor]:
        if role == "current":
            return self._current
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected 'current', 'anchor' or 'previous'")
        return self._roles.get(role, {})

    # ------------------------------------------------------ used by processors
    def put(self, layer: str, features: torch.Tensor) -> None:
        """Record (B, N, C) features of `layer` at the current step, one entry per batch index."""
        step = self._require_step()
        device = features.device if self.device is None else self.device
        # copy=True: never alias a tensor the model might reuse.
        stored = features.detach().to(device=device, dtype=self.dtype, copy=True)
        for b in range(stored.shape[0]):
            self._current[(layer, step, b)] = stored[b]

    def kv_features(self, layer: str, like: torch.Tensor) -> torch.Tensor:
        """[v_anchor; v_prev] for every batch element of `like` (B, N, C): (B, N_a + N_p, C)."""
        step = self._require_step()
        # The key after the anchor has the anchor as its previous key too. Attending to two
        # copies of the same keys and values gives exactly the weights of one copy, so one
        # copy is used: the attention then costs half.
        same = self._roles.get("anchor") is self._roles.get("previous")
        roles = ROLES[:1] if same else ROLES
        rows = []
        for b in range(like.shape[0]):
            parts = []
            for role in roles:
                try:
                    parts.append(self._roles[role][(layer, step, b)])
                except KeyError:
                    raise KeyError(
                        f"no {role!r} features for layer {layer!r} at step {step!r}, batch index "
                        f"{b}: render the reference frames with the same steps, strength and "
                        "guidance batch layout first"
                    ) from None
            rows.append(torch.cat(parts, dim=0))
        return torch.stack(rows).to(device=like.device, dtype=like.dtype)

    def _require_step(self) -> Hashable:
        if self.step is None:
            raise RuntimeError("ReferenceStore.begin_step() was not called for this step")
        return self.step


class CrossFrameAttnProcessor:
    """A diffusers attention processor: `AttnProcessor2_0`, with cross-frame keys/values.

    Only self-attention calls (`encoder_hidden_states is None`) are affected, according to
    `store.mode`; cross-attention calls are computed exactly as by `AttnProcessor2_0`.
    """

    def __init__(self, name: str, store: ReferenceStore) -> None:
        self.name = name
        self.store = store

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        # The statements mirror diffusers' AttnProcessor2_0 one for one, so that mode "off"
        # gives the same numbers; only the source of keys and values differs.
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        is_self = encoder_hidden_states is None
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )

        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(
                attention_mask, sequence_length, batch_size
            )
            attention_mask = attention_mask.view(
                batch_size, attn.heads, -1, attention_mask.shape[-1]
            )

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)

        if is_self:
            encoder_hidden_states = self._kv_source(hidden_states, attention_mask)
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        key, value = self._project_kv(attn, encoder_hidden_states, is_self)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(
                batch_size, channel, height, width
            )

        if attn.residual_connection:
            hidden_states = hidden_states + residual

        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states

    def _project_kv(
        self, attn: Any, source: torch.Tensor, is_self: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values projected from `source` (a subclass may project fewer rows and
        share them between frames)."""
        return attn.to_k(source), attn.to_v(source)

    def _kv_source(
        self, features: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The features v that keys and values are projected from (after the layer's norm)."""
        store = self.store
        if store.mode == "off":
            return features
        if store.record:
            store.put(self.name, features)
        if store.mode != "use":
            return features
        if attention_mask is not None:
            # A mask is laid out for the frame's own tokens; it has no meaning for references.
            raise ValueError("cross-frame attention does not support self-attention masks")
        return store.kv_features(self.name, features)


class InstalledProcessors(dict):
    """The processors `install_cross_frame_attention` installed, by processor name.

    `restore()` puts back the processors the model had before.
    """

    def __init__(self, model: Any, installed: dict[str, Any], originals: dict[str, Any]) -> None:
        super().__init__(installed)
        self._model = model
        self._originals = originals

    def restore(self) -> None:
        self._model.set_attn_processor(dict(self._originals))


def select_self_attention_layers(processor_names: list[str], layers: Layers) -> list[str]:
    """Processor names of the self-attention (attn1) layers that `layers` selects.

    "all": every attn1. "decoder": the attn1 layers of the up blocks; the mid block is left
    out, as in the authors' code (it hooks the output blocks only) — its 8x8 features carry
    layout rather than style, and skipping it saves memory. "decoder_loose": the decoder
    layers minus those of the lowest-resolution up block that has attention (up_blocks.1 in
    SD1.5, the 1280-channel layers the authors' `loose_cfattn` skips), so results follow the
    input more closely.
    """
    self_attn = [n for n in processor_names if n.endswith("attn1.processor")]
    if layers == "all":
        return self_attn
    if layers not in ("decoder", "decoder_loose"):
        raise ValueError(f"unknown layer selection {layers!r}")
    decoder = [n for n in self_attn if n.startswith("up_blocks.")]
    if layers == "decoder_loose" and decoder:
        # up_blocks are ordered from the lowest resolution to the highest.
        lowest = min(int(n.split(".")[1]) for n in decoder)
        decoder = [n for n in decoder if int(n.split(".")[1]) != lowest]
    return decoder


def install_cross_frame_attention(
    unet: Any, store: ReferenceStore, layers: Layers = "decoder"
) -> InstalledProcessors:
    """Install `CrossFrameAttnProcessor`s on the self-attention layers `layers` selects.

    Every other processor (cross-attention, unselected layers) is kept as it is. Returns the
    installed processors by processor name (a dict); call `.restore()` on it to put the
    original processors back.
    """
    originals = dict(unet.attn_processors)
    if any(isinstance(p, CrossFrameAttnProcessor) for p in originals.values()):
        raise RuntimeError("cross-frame attention is already installed; restore() it first")
    chosen = select_self_attention_layers(list(originals), layers)
    if not chosen:
        raise ValueError(f"the model has no self-attention layers for selection {layers!r}")
    installed = {n: CrossFrameAttnProcessor(n.removesuffix(".processor"), store) for n in chosen}
    # set_attn_processor consumes the dict it is given and needs an entry for every layer.
    unet.set_attn_processor({**originals, **installed})
    return InstalledProcessors(unet, installed, originals)
