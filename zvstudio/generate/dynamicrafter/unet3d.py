"""DynamiCrafter's denoiser: a Stable-Diffusion-shaped UNet made 3D with temporal layers.

Written from the paper and the released checkpoint layout (Doubiiu/DynamiCrafter,
`lvdm/modules/networks/openaimodel3d.py` and `lvdm/modules/attention.py` for the structure and
parameter names; no code is taken from them). Module attribute names reproduce the released
state-dict keys under `model.diffusion_model.`, so a checkpoint loads without a renaming table:
`input_blocks.N.i`, `middle_block.i`, `output_blocks.N.i`, `init_attn.0`, `time_embed`,
`fps_embedding`, `out`, and inside them `in_layers` / `emb_layers` / `out_layers` /
`skip_connection` / `temporal_conv.convK`, `transformer_blocks.0.attn1|attn2|ff|norm1..3`,
`to_q|to_k|to_v|to_out.0|to_k_ip|to_v_ip|alpha`.

Layout. Inputs are videos (b, c, t, h, w); inside, features are frames (b*t, c, h, w), frame
index fastest within a batch item, so spatial layers (convolutions, ResBlocks, spatial
transformers) never mix frames. Three kinds of layers do:
* temporal convolutions (kernel 3 along t) after every ResBlock,
* temporal transformers (self-attention along t at each pixel) after every spatial one, and
  once right after the input convolution ("init_attn"),
* the group norms of those two, whose statistics span all frames of a video.

Conditioning. The input has 8 channels: the noisy latent, then the image latent for every frame
(`image_condition`, "visual detail guidance"). The context is 77 text tokens followed by the
image tokens from the resampler; spatial cross-attention attends to the text and to the image
tokens separately and adds the two (dual cross-attention, the image part scaled by a fixed
factor or by a learned tanh gate). With num_queries * frames image tokens (the released
resampler's per-frame queries), frame f sees only its own block of image tokens
(`frame_contexts`). The frame rate / frame stride is embedded like the timestep and added to the
time embedding.

Parameters keep PyTorch's default initialisation: the released model zero-initialises its
output projections so that fresh layers start as identities, which only matters for training;
weights always come from a checkpoint (`checkpoint.load_dynamicrafter`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zvstudio.generate.dynamicrafter.config import UNetConfig

__all__ = [
    "Attention",
    "DynamiCrafterUNet",
    "ResBlock",
    "SpatialTransformer",
    "TemporalConvBlock",
    "TemporalTransformer",
    "frame_contexts",
    "image_condition",
    "timestep_embedding",
    "unet_input",
]


# ----------------------------------------------------------------------------- small helpers


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding of (possibly fractional) steps: [cos | sin], frequencies falling
    geometrically from 1 to 1/max_period (the released order, cos first)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=timesteps.device)
        / half
    )
    args = timesteps.reshape(-1, 1).float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def to_video(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(b*t, c, h, w) -> (b, c, t, h, w)."""
    return x.unflatten(0, (-1, frames)).transpose(1, 2)


def to_frames(x: torch.Tensor) -> torch.Tensor:
    """(b, c, t, h, w) -> (b*t, c, h, w)."""
    return x.transpose(1, 2).flatten(0, 1)


class GroupNorm32(nn.GroupNorm):
    """Group norm computed in float32 (fp16 variance over large groups loses precision), its
    half-precision weights too: float32 input beside them is refused."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = (None if p is None else p.float() for p in (self.weight, self.bias))
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def frame_contexts(
    context: torch.Tensor, frames: int, text_tokens: int = 77, tokens_per_frame: int = 16
) -> torch.Tensor:
    """The cross-attention context of each frame, (b*t, L, d), from the video's (b, n, d).

    The video's context is `text_tokens` text tokens then the image tokens. When there are
    exactly tokens_per_frame * frames image tokens (the resampler's frame-major per-frame
    queries), frame f gets the text plus image tokens [f*k, (f+1)*k); otherwise (another frame
    count than the resampler was built for, or pooled image tokens) every frame gets all of it,
    which is what the released model does too.
    """
    b, n, d = context.shape
    if n - text_tokens == tokens_per_frame * frames:
        text = context[:, :text_tokens].repeat_interleave(frames, dim=0)
        image = context[:, text_tokens:].reshape(b * frames, tokens_per_frame, d)
        return torch.cat([text, image], dim=1)
    return context.repeat_interleave(frames, dim=0)


def image_condition(
    first: torch.Tensor, frames: int, last: torch.Tensor | None = None
) -> torch.Tensor:
    """The image-latent half of the UNet input, (b, c, t, h, w), from (b, c, h, w) latents.

    Animation: the image latent repeated on every frame. Interpolation / loop (the interp
    model, `last` given; a loop passes the same latent twice): the first latent on frame 0,
    the last on frame t-1, zeros in between (the frames the model has to invent).
    """
    if last is None:
        return first.unsqueeze(2).expand(-1, -1, frames, -1, -1).contiguous()
    if frames < 2:
        raise ValueError("interpolation needs at least 2 frames")
    condition = first.new_zeros(*first.shape[:2], frames, *first.shape[2:])
    condition[:, :, 0] = first
    condition[:, :, -1] = last
    return condition


def unet_input(noisy: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """The 8-channel UNet input: noisy latent channels first, then the image condition."""
    return torch.cat([noisy, condition], dim=1)


# ------------------------------------------------------------------------------- ResBlocks


class TemporalConvBlock(nn.Module):
    """Four norm-SiLU-conv layers with kernel 3 along time only, added to the input.

    Keys: conv1.{0,2}, conv2..conv4.{0,3} (conv2-4 have a dropout before the convolution).
    """

    def __init__(self, channels: int, dropout: float = 0.1, groups: int = 32) -> None:
        super().__init__()
        kernel, padding = (3, 1, 1), (1, 0, 0)

        def layer(with_dropout: bool) -> nn.Sequential:
            parts = [nn.GroupNorm(groups, channels), nn.SiLU()]
            parts += [nn.Dropout(dropout)] if with_dropout else []
            return nn.Sequential(*parts, nn.Conv3d(channels, channels, kernel, padding=padding))

        self.conv1 = layer(False)
        self.conv2 = layer(True)
        self.conv3 = layer(True)
        self.conv4 = layer(True)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return video + self.conv4(self.conv3(self.conv2(self.conv1(video))))


class ResBlock(nn.Module):
    """SD's residual block (time embedding added between the two convolutions), per frame,
    followed by a temporal convolution block when `temporal`."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        temporal: bool = False,
        groups: int = 32,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            GroupNorm32(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)
        self.temporal_conv = TemporalConvBlock(out_channels, 0.1, groups) if temporal else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[..., None, None]
        h = self.skip_connection(x) + self.out_layers(h)
        if self.temporal_conv is not None:
            h = to_frames(self.temporal_conv(to_video(h, frames)))
        return h


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (key `op`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution (key `conv`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ------------------------------------------------------------------------------- attention


class Attention(nn.Module):
    """Multi-head attention: self-attention without a context, else (dual) cross-attention.

    With `image_tokens_from` set, the context is split there: the text part goes through
    to_k/to_v, the image part through to_k_ip/to_v_ip, the two attentions are computed
    separately (each with its own softmax) and summed, the image one times `image_scale`
    (times tanh(alpha) + 1 when the scale is learnable; alpha starts at 0, i.e. a factor 1).
    Without it, a context is cut to its first `text_tokens` tokens (image tokens ignored).
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        dropout: float = 0.0,
        text_tokens: int = 77,
        image_cross_attention: bool = False,
        image_scale: float = 1.0,
        learnable_scale: bool = False,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.text_tokens = text_tokens
        self.image_scale = image_scale
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))
        self.image_cross_attention = image_cross_attention
        if image_cross_attention:
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
            if learnable_scale:
                self.alpha = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        q = self._heads(self.to_q(x))
        if context is None:
            out = self._attend(q, self.to_k(x), self.to_v(x))
            return self.to_out(out)
        text, image = context[:, : self.text_tokens], context[:, self.text_tokens :]
        out = self._attend(q, self.to_k(text), self.to_v(text))
        if self.image_cross_attention and image.shape[1] > 0:
            image_out = self._attend(q, self.to_k_ip(image), self.to_v_ip(image))
            out = out + self.image_weight() * image_out  # a 0-dim weight keeps out.dtype
        return self.to_out(out)

    def image_weight(self) -> torch.Tensor | float:
        """The factor on the image attention (a tensor when learnable)."""
        alpha = getattr(self, "alpha", None)
        if alpha is None:
            return self.image_scale
        return self.image_scale * (torch.tanh(alpha) + 1)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(q, self._heads(k), self._heads(v))
        return out.transpose(1, 2).flatten(2)


class GEGLU(nn.Module):
    """A linear layer to twice the width whose second half gates the first through GELU."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward, 4x wide (keys net.0.proj, net.2)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm block: self-attention, attention to the context (or a second self-attention
    when none is given, as in the temporal transformers), feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0, **cross) -> None:
        super().__init__()
        self.attn1 = Attention(dim, heads, dim_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = Attention(dim, heads, dim_head, dropout=dropout, **cross)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


def _projection(dim_in: int, dim_out: int, linear: bool, conv: type[nn.Module]) -> nn.Module:
    return nn.Linear(dim_in, dim_out) if linear else conv(dim_in, dim_out, 1)


class SpatialTransformer(nn.Module):
    """Attention over the pixels of each frame, with cross-attention to the frame's context."""

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        config: UNetConfig,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.use_linear = config.use_linear
        self.norm = nn.GroupNorm(config.norm_groups, channels, eps=1e-6)
        self.proj_in = _projection(channels, inner, config.use_linear, nn.Conv2d)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(
                inner,
                heads,
                dim_head,
                context_dim=config.context_dim,
                text_tokens=config.text_tokens,
                image_cross_attention=config.image_cross_attention,
                image_scale=config.image_cross_attention_scale,
                learnable_scale=config.image_cross_attention_scale_learnable,
            )
            for _ in range(config.transformer_depth)
        )
        self.proj_out = _projection(inner, channels, config.use_linear, nn.Conv2d)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        _, _, height, width = x.shape
        h = self.norm(x)
        if not self.use_linear:
            h = self.proj_in(h)
        h = h.flatten(2).transpose(1, 2)  # (b*t, h*w, c)
        if self.use_linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear:
            h = self.proj_out(h)
        h = h.transpose(1, 2).unflatten(2, (height, width))
        if not self.use_linear:
            h = self.proj_out(h)
        return h + x


class TemporalTransformer(nn.Module):
    """Self-attention along time at every pixel of a video (b, c, t, h, w).

    Both attentions of its blocks are self-attentions (the released models' temporal layers
    take no context), without positional encoding or causal mask.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        depth: int = 1,
        use_linear: bool = True,
        groups: int = 32,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = _projection(channels, inner, use_linear, nn.Conv1d)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, dim_head) for _ in range(depth)
        )
        self.proj_out = _projection(inner, channels, use_linear, nn.Conv1d)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, c, t, height, width = video.shape
        h = self.norm(video)
        h = h.permute(0, 3, 4, 2, 1).reshape(b * height * width, t, c)  # a sequence per pixel
        h = self._project(self.proj_in, h)
        for block in self.transformer_blocks:
            h = block(h)
        h = self._project(self.proj_out, h)
        h = h.reshape(b, height, width, t, c).permute(0, 4, 3, 1, 2)
        return h + video

    def _project(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if self.use_linear:
            return layer(h)
        return layer(h.transpose(1, 2)).transpose(1, 2)  # 1x1 Conv1d over (n, c, t)


# ---------------------------------------------------------------------------------- the UNet


class Stage(nn.ModuleList):
    """One `input_blocks` / `middle_block` / `output_blocks` entry: layers run in order, each
    given what it needs (released name: TimestepEmbedSequential)."""

    def forward(
        self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, frames: int
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb, frames)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            elif isinstance(layer, TemporalTransformer):
                h = to_frames(layer(to_video(h, frames)))
            else:
                h = layer(h)
        return h


class DynamiCrafterUNet(nn.Module):
    """The denoiser: (b, in_channels, t, h, w) noisy + image latents -> (b, out, t, h, w)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        mc = config.model_channels
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(
            nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        if config.fs_condition:
            self.fps_embedding = nn.Sequential(
                nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )
        self.input_blocks = nn.ModuleList(
            [Stage([nn.Conv2d(config.in_channels, mc, 3, padding=1)])]
        )
        if config.addition_attention:
            # Its own head count, always 1x1-conv projections (not config.use_linear).
            self.init_attn = Stage(
                [
                    TemporalTransformer(
                        mc,
                        config.init_attn_heads,
                        config.num_head_channels,
                        config.transformer_depth,
                        use_linear=False,
                        groups=config.norm_groups,
                    )
                ]
            )
        skip_channels = self._build_down(emb_dim)
        ch = mc * config.channel_mult[-1]
        self.middle_block = Stage(
            [
                self._resblock(ch, emb_dim, ch),
                *self._transformers(ch),
                self._resblock(ch, emb_dim, ch),
            ]
        )
        self._build_up(emb_dim, skip_channels)
        self.out = nn.Sequential(
            GroupNorm32(config.norm_groups, mc),
            nn.SiLU(),
            nn.Conv2d(mc, config.out_channels, 3, padding=1),
        )

    # The construction order below fixes the block indices, i.e. the checkpoint key names.

    def _build_down(self, emb_dim: int) -> list[int]:
        config = self.config
        ch, ds = config.model_channels, 1
        skip_channels = [ch]
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                out = mult * config.model_channels
                layers = [self._resblock(ch, emb_dim, out)]
                ch = out
                if ds in config.attention_resolutions:
                    layers += self._transformers(ch)
                self.input_blocks.append(Stage(layers))
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(Stage([Downsample(ch)]))
                skip_channels.append(ch)
                ds *= 2
        return skip_channels

    def _build_up(self, emb_dim: int, skip_channels: list[int]) -> None:
        config = self.config
        ch = config.model_channels * config.channel_mult[-1]
        ds = 2 ** (len(config.channel_mult) - 1)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                out = mult * config.model_channels
                layers = [self._resblock(ch + skip_channels.pop(), emb_dim, out)]
                ch = out
                if ds in config.attention_resolutions:
                    layers += self._transformers(ch)
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Stage(layers))

    def _resblock(self, ch: int, emb_dim: int, out: int) -> ResBlock:
        config = self.config
        return ResBlock(ch, emb_dim, out, config.dropout, config.temporal_conv, config.norm_groups)

    def _transformers(self, ch: int) -> list[nn.Module]:
        config = self.config
        heads, dim_head = ch // config.num_head_channels, config.num_head_channels
        layers: list[nn.Module] = [SpatialTransformer(ch, heads, dim_head, config)]
        if config.temporal_attention:
            layers.append(
                TemporalTransformer(
                    ch,
                    heads,
                    dim_head,
                    config.transformer_depth,
                    config.use_linear,
                    config.norm_groups,
                )
            )
        return layers

    def embed(self, timesteps: torch.Tensor, fs: torch.Tensor | None, dtype: torch.dtype):
        """The per-video embedding: time, plus frame rate / stride (default_fs when None)."""
        mc = self.config.model_channels
        emb = self.time_embed(timestep_embedding(timesteps, mc).to(dtype))
        if self.config.fs_condition:
            if fs is None:
                fs = torch.full_like(timesteps, self.config.default_fs, dtype=torch.long)
            emb = emb + self.fps_embedding(timestep_embedding(fs, mc).to(dtype))
        return emb

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor | int,
        context: torch.Tensor,
        fs: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """`sample`: (b, in_channels, t, h, w) from `unet_input`; `context`: (b, n, d) text
        then image tokens; `timesteps` and `fs`: per video (b,) or one number for all."""
        b, _, frames = sample.shape[:3]
        device = sample.device
        timesteps = torch.as_tensor(timesteps, device=device).reshape(-1).expand(b)
        if fs is not None:
            fs = torch.as_tensor(fs, device=device).reshape(-1).expand(b)
        dtype = self.input_blocks[0][0].weight.dtype
        emb = self.embed(timesteps, fs, dtype).repeat_interleave(frames, dim=0)
        contexts = frame_contexts(
            context.to(dtype), frames, self.config.text_tokens, self.config.tokens_per_frame
        )
        h = to_frames(sample.to(dtype))
        skips = []
        for index, block in enumerate(self.input_blocks):
            h = block(h, emb, contexts, frames)
            if index == 0 and self.config.addition_attention:
                h = self.init_attn(h, emb, contexts, frames)
            skips.append(h)
        h = self.middle_block(h, emb, contexts, frames)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, contexts, frames)
        return to_video(self.out(h), frames).to(sample.dtype)
