"""The query transformer that turns CLIP visual tokens into DynamiCrafter's image context.

A Perceiver-style resampler (as in Flamingo / IP-Adapter, which the released
`lvdm/modules/encoders/resampler.py` follows): a set of learned queries attends, layer by layer,
to the projected CLIP ViT tokens concatenated with the queries themselves. DynamiCrafter learns
`num_queries` queries per frame (num_queries * video_length in all, frame-major), so one image
gives every frame its own `num_queries` context tokens.

Parameter names follow the released module (`latents`, `proj_in`, `layers.N.0` attention,
`layers.N.1` feed-forward, `proj_out`, `norm_out`), so a checkpoint's `image_proj_model.*`
tensors load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zvstudio.generate.dynamicrafter.config import ResamplerConfig

__all__ = ["Resampler"]


class PerceiverAttention(nn.Module):
    """Queries attend to [image features; queries], both layer-normed, without biases."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)  # for the image features
        self.norm2 = nn.LayerNorm(dim)  # for the queries
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)  # keys then values, stacked
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, features: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        features, queries = self.norm1(features), self.norm2(queries)
        q = self.to_q(queries)
        k, v = self.to_kv(torch.cat([features, queries], dim=1)).chunk(2, dim=-1)
        q, k, v = (self._split(t) for t in (q, k, v))
        # Softmax in float32: fp16 logits of 1024-wide tokens can overflow.
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        return self.to_out(out.transpose(1, 2).flatten(2))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (b, heads, n, d)


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    # Indices 0 (norm), 1 and 3 (linears) are the released key names.
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class Resampler(nn.Module):
    """(b, n_vis, embedding_dim) CLIP tokens -> (b, total_queries, output_dim) context tokens.

    With `video_length` F, token f * num_queries + j is query j of frame f.
    """

    def __init__(self, config: ResamplerConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.latents = nn.Parameter(torch.randn(1, config.total_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(config.embedding_dim, dim)
        self.proj_out = nn.Linear(dim, config.output_dim)
        self.norm_out = nn.LayerNorm(config.output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(dim, config.dim_head, config.heads),
                    _feed_forward(dim, config.ff_mult),
                ]
            )
            for _ in range(config.depth)
        )

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        features = self.proj_in(image_tokens.to(self.proj_in.weight.dtype))
        queries = self.latents.expand(features.shape[0], -1, -1)
        for attention, feed_forward in self.layers:
            queries = attention(features, queries) + queries
            queries = feed_forward(queries) + queries
        return self.norm_out(self.proj_out(queries))
