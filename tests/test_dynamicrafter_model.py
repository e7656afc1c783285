"""DynamiCrafter's model, schedule and checkpoint mapping, on tiny random configs (CPU).

The released key layout is re-derived here independently of our modules, by walking the
construction code of the released repository (Doubiiu/DynamiCrafter) the way it names things:
`lvdm/modules/networks/openaimodel3d.py` (UNetModel, ResBlock, TemporalConvBlock, Downsample,
Upsample), `lvdm/modules/attention.py` (CrossAttention, BasicTransformerBlock,
SpatialTransformer, TemporalTransformer, FeedForward/GEGLU), `lvdm/modules/encoders/resampler.py`
(Resampler, PerceiverAttention, FeedForward), `lvdm/modules/encoders/condition.py` (OpenCLIP
towers with `del model.visual` / `del model.transformer`), `lvdm/modules/networks/ae_modules.py`
(the LDM KL autoencoder) and `lvdm/models/ddpm3d.py` (part prefixes, schedule buffers). The
network is blocked for every test by conftest's autouse fixture.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from zvstudio.errors import ZvsError
from zvstudio.generate.dynamicrafter import checkpoint as ckpt
from zvstudio.generate.dynamicrafter.config import PRESETS, preset, tiny
from zvstudio.generate.dynamicrafter.resampler import Resampler
from zvstudio.generate.dynamicrafter.schedule import (
    alphas_cumprod,
    ddim_schedule,
    ddim_step,
    ddim_timesteps,
    eps_from_v,
    linear_betas,
    rescale_guidance,
    v_from_x0_eps,
    x0_from_v,
)
from zvstudio.generate.dynamicrafter.unet3d import (
    Attention,
    DynamiCrafterUNet,
    ResBlock,
    SpatialTransformer,
    TemporalConvBlock,
    TemporalTransformer,
    frame_contexts,
    image_condition,
    timestep_embedding,
    unet_input,
)

# Tiny tensors: one thread beats two fighting over a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ============================================================================ released layout
# Shapes as the released modules would create them (see the module docstring for the files).


def _linear(s, name, i, o, bias=True):
    s[f"{name}.weight"] = (o, i)
    if bias:
        s[f"{name}.bias"] = (o,)


def _conv(s, name, i, o, kernel, bias=True):
    s[f"{name}.weight"] = (o, i, *kernel)
    if bias:
        s[f"{name}.bias"] = (o,)


def _norm(s, name, ch):
    s[f"{name}.weight"] = (ch,)
    s[f"{name}.bias"] = (ch,)


def _released_resblock(s, p, ch, out, emb, temporal_conv):
    # openaimodel3d.ResBlock: in_layers (norm, SiLU, conv), emb_layers (SiLU, linear),
    # out_layers (norm, SiLU, dropout, conv), skip_connection when widths differ,
    # temporal_conv = TemporalConvBlock: conv1 (norm, SiLU, conv3d), conv2-4 (+ dropout).
    _norm(s, f"{p}.in_layers.0", ch)
    _conv(s, f"{p}.in_layers.2", ch, out, (3, 3))
    _linear(s, f"{p}.emb_layers.1", emb, out)
    _norm(s, f"{p}.out_layers.0", out)
    _conv(s, f"{p}.out_layers.3", out, out, (3, 3))
    if out != ch:
        _conv(s, f"{p}.skip_connection", ch, out, (1, 1))
    if temporal_conv:
        for k in range(1, 5):
            _norm(s, f"{p}.temporal_conv.conv{k}.0", out)
            _conv(s, f"{p}.temporal_conv.conv{k}.{2 if k == 1 else 3}", out, out, (3, 1, 1))


def _released_block(s, p, dim, heads, dh, context_dim, image, learnable):
    # attention.BasicTransformerBlock: attn1 (self), ff (GEGLU), attn2 (context), norm1-3.
    inner = heads * dh
    for attn, ctx in (("attn1", dim), ("attn2", context_dim or dim)):
        _linear(s, f"{p}.{attn}.to_q", dim, inner, bias=False)
        _linear(s, f"{p}.{attn}.to_k", ctx, inner, bias=False)
        _linear(s, f"{p}.{attn}.to_v", ctx, inner, bias=False)
        _linear(s, f"{p}.{attn}.to_out.0", inner, dim)
    if image:
        _linear(s, f"{p}.attn2.to_k_ip", context_dim, inner, bias=False)
        _linear(s, f"{p}.attn2.to_v_ip", context_dim, inner, bias=False)
        if learnable:
            s[f"{p}.attn2.alpha"] = ()
    _linear(s, f"{p}.ff.net.0.proj", dim, dim * 4 * 2)
    _linear(s, f"{p}.ff.net.2", dim * 4, dim)
    for k in (1, 2, 3):
        _norm(s, f"{p}.norm{k}", dim)


def _released_spatial(s, p, ch, heads, dh, c):
    inner = heads * dh
    _norm(s, f"{p}.norm", ch)
    _linear(s, f"{p}.proj_in", ch, inner)  # use_linear: true in every released config
    for d in range(c.transformer_depth):
        _released_block(
            s,
            f"{p}.transformer_blocks.{d}",
            inner,
            heads,
            dh,
            c.context_dim,
            c.image_cross_attention,
            c.image_cross_attention_scale_learnable,
        )
    _linear(s, f"{p}.proj_out", inner, ch)


def _released_temporal(s, p, ch, heads, dh, depth, use_linear):
    inner = heads * dh
    _norm(s, f"{p}.norm", ch)
    if use_linear:
        _linear(s, f"{p}.proj_in", ch, inner)
    else:
        _conv(s, f"{p}.proj_in", ch, inner, (1,))
    for d in range(depth):  # only_self_att: attn2 gets no context_dim
        _released_block(s, f"{p}.transformer_blocks.{d}", inner, heads, dh, None, False, False)
    if use_linear:
        _linear(s, f"{p}.proj_out", inner, ch)
    else:
        _conv(s, f"{p}.proj_out", inner, ch, (1,))


def released_unet_shapes(c, fs_name="fps_embedding"):
    """openaimodel3d.UNetModel.__init__'s parameters, in its construction order."""
    s = {}
    mc, emb = c.model_channels, c.model_channels * 4
    _linear(s, "time_embed.0", mc, emb)
    _linear(s, "time_embed.2", emb, emb)
    if c.fs_condition:
        _linear(s, f"{fs_name}.0", mc, emb)
        _linear(s, f"{fs_name}.2", emb, emb)
    _conv(s, "input_blocks.0.0", c.in_channels, mc, (3, 3))
    if c.addition_attention:  # n_heads=8 hard-coded, use_linear left at its default False
        _released_temporal(
            s, "init_attn.0", mc, c.init_attn_heads, c.num_head_channels, c.transformer_depth, False
        )

    def transformers(p, ch, start):
        heads, dh = ch // c.num_head_channels, c.num_head_channels
        _released_spatial(s, f"{p}.{start}", ch, heads, dh, c)
        if c.temporal_attention:
            _released_temporal(
                s, f"{p}.{start + 1}", ch, heads, dh, c.transformer_depth, c.use_linear
            )

    chans, ch, ds, n = [mc], mc, 1, 1
    for level, mult in enumerate(c.channel_mult):
        for _ in range(c.num_res_blocks):
            _released_resblock(s, f"input_blocks.{n}.0", ch, mult * mc, emb, c.temporal_conv)
            ch = mult * mc
            if ds in c.attention_resolutions:
                transformers(f"input_blocks.{n}", ch, 1)
            chans.append(ch)
            n += 1
        if level != len(c.channel_mult) - 1:
            _conv(s, f"input_blocks.{n}.0.op", ch, ch, (3, 3))
            chans.append(ch)
            ds *= 2
            n += 1
    _released_resblock(s, "middle_block.0", ch, ch, emb, c.temporal_conv)
    transformers("middle_block", ch, 1)
    last = 3 if c.temporal_attention else 2
    _released_resblock(s, f"middle_block.{last}", ch, ch, emb, c.temporal_conv)
    n = 0
    for level, mult in list(enumerate(c.channel_mult))[::-1]:
        for i in range(c.num_res_blocks + 1):
            ich = chans.pop()
            _released_resblock(s, f"output_blocks.{n}.0", ch + ich, mult * mc, emb, c.temporal_conv)
            ch = mult * mc
            index = 1
            if ds in c.attention_resolutions:
                transformers(f"output_blocks.{n}", ch, 1)
                index = 3
            if level and i == c.num_res_blocks:
                _conv(s, f"output_blocks.{n}.{index}.conv", ch, ch, (3, 3))
                ds //= 2
            n += 1
    _norm(s, "out.0", ch)
    _conv(s, "out.2", mc, c.out_channels, (3, 3))
    return s


def released_resampler_shapes(r):
    # resampler.Resampler: latents (1, num_queries * video_length, dim), proj_in/out, norm_out,
    # layers.N = [PerceiverAttention(norm1, norm2, to_q, to_kv, to_out), FeedForward Sequential].
    s = {"latents": (1, r.num_queries * (r.video_length or 1), r.dim)}
    _linear(s, "proj_in", r.embedding_dim, r.dim)
    _linear(s, "proj_out", r.dim, r.output_dim)
    _norm(s, "norm_out", r.output_dim)
    inner = r.dim_head * r.heads
    for n in range(r.depth):
        _norm(s, f"layers.{n}.0.norm1", r.dim)
        _norm(s, f"layers.{n}.0.norm2", r.dim)
        _linear(s, f"layers.{n}.0.to_q", r.dim, inner, bias=False)
        _linear(s, f"layers.{n}.0.to_kv", r.dim, inner * 2, bias=False)
        _linear(s, f"layers.{n}.0.to_out", inner, r.dim, bias=False)
        _norm(s, f"layers.{n}.1.0", r.dim)
        _linear(s, f"layers.{n}.1.1", r.dim, r.dim * r.ff_mult, bias=False)
        _linear(s, f"layers.{n}.1.3", r.dim * r.ff_mult, r.dim, bias=False)
    return s


def _open_clip_blocks(s, p, width, mlp, layers):
    # open_clip ResidualAttentionBlock: ln_1, attn (nn.MultiheadAttention), ln_2, mlp.c_fc/c_proj
    for i in range(layers):
        b = f"{p}.resblocks.{i}"
        _norm(s, f"{b}.ln_1", width)
        s[f"{b}.attn.in_proj_weight"] = (3 * width, width)
        s[f"{b}.attn.in_proj_bias"] = (3 * width,)
        _linear(s, f"{b}.attn.out_proj", width, width)
        _norm(s, f"{b}.ln_2", width)
        _linear(s, f"{b}.mlp.c_fc", width, mlp)
        _linear(s, f"{b}.mlp.c_proj", mlp, width)


def _open_clip_text_rest(s, t):
    s["token_embedding.weight"] = (t.vocab_size, t.width)
    s["positional_embedding"] = (t.context_length, t.width)
    _norm(s, "ln_final", t.width)
    s["text_projection"] = (t.width, t.projection_dim)
    s["logit_scale"] = ()


def open_clip_text_shapes(cfg):
    """FrozenOpenCLIPEmbedder: the CLIP model after `del model.visual`."""
    s = {}
    _open_clip_text_rest(s, cfg.text)
    _open_clip_blocks(s, "transformer", cfg.text.width, cfg.text.mlp_width, cfg.text.layers)
    return s


def open_clip_embedder_shapes(cfg):
    """FrozenOpenCLIPImageEmbedderV2: the CLIP model after `del model.transformer`."""
    v, s = cfg.vision, {}
    _open_clip_text_rest(s, cfg.text)
    s["visual.class_embedding"] = (v.width,)
    s["visual.positional_embedding"] = (v.tokens, v.width)
    s["visual.proj"] = (v.width, v.projection_dim)
    _conv(s, "visual.conv1", 3, v.width, (v.patch_size, v.patch_size), bias=False)
    _norm(s, "visual.ln_pre", v.width)
    _norm(s, "visual.ln_post", v.width)
    _open_clip_blocks(s, "visual.transformer", v.width, v.mlp_width, v.layers)
    return s


def _ldm_resnet(s, p, i, o):
    _norm(s, f"{p}.norm1", i)
    _conv(s, f"{p}.conv1", i, o, (3, 3))
    _norm(s, f"{p}.norm2", o)
    _conv(s, f"{p}.conv2", o, o, (3, 3))
    if i != o:
        _conv(s, f"{p}.nin_shortcut", i, o, (1, 1))


def _ldm_mid(s, p, ch):
    _ldm_resnet(s, f"{p}.mid.block_1", ch, ch)
    _norm(s, f"{p}.mid.attn_1.norm", ch)
    for name in ("q", "k", "v", "proj_out"):
        _conv(s, f"{p}.mid.attn_1.{name}", ch, ch, (1, 1))
    _ldm_resnet(s, f"{p}.mid.block_2", ch, ch)


def ldm_vae_shapes(widths, layers, z=4):
    """ae_modules Encoder / Decoder and autoencoder.AutoencoderKL (attn_resolutions: [])."""
    s = {}
    _conv(s, "encoder.conv_in", 3, widths[0], (3, 3))
    ins = [widths[0], *widths[:-1]]
    for i, (a, b) in enumerate(zip(ins, widths, strict=True)):
        for j in range(layers):
            _ldm_resnet(s, f"encoder.down.{i}.block.{j}", a if j == 0 else b, b)
        if i != len(widths) - 1:
            _conv(s, f"encoder.down.{i}.downsample.conv", b, b, (3, 3))
    _ldm_mid(s, "encoder", widths[-1])
    _norm(s, "encoder.norm_out", widths[-1])
    _conv(s, "encoder.conv_out", widths[-1], 2 * z, (3, 3))
    _conv(s, "decoder.conv_in", z, widths[-1], (3, 3))
    _ldm_mid(s, "decoder", widths[-1])
    block_in = widths[-1]
    for i in reversed(range(len(widths))):
        for j in range(layers + 1):
            _ldm_resnet(s, f"decoder.up.{i}.block.{j}", block_in, widths[i])
            block_in = widths[i]
        if i != 0:
            _conv(s, f"decoder.up.{i}.upsample.conv", block_in, block_in, (3, 3))
    _norm(s, "decoder.norm_out", widths[0])
    _conv(s, "decoder.conv_out", widths[0], 3, (3, 3))
    _conv(s, "quant_conv", 2 * z, 2 * z, (1, 1))
    _conv(s, "post_quant_conv", z, z, (1, 1))
    return s


def _released_alphas_cumprod(config):
    """The saved `alphas_cumprod` buffer, computed with diffusers (an independent reference)."""
    from diffusers import DDIMScheduler

    sched = config.schedule
    scheduler = DDIMScheduler(
        beta_start=sched.linear_start,
        beta_end=sched.linear_end,
        beta_schedule="scaled_linear",
        rescale_betas_zero_snr=sched.zero_terminal_snr,
    )
    return scheduler.alphas_cumprod.to(torch.float32)


def released_checkpoint(config, seed=0):
    """A synthetic state dict in the released checkpoint's key names, random values."""
    fs_name = "framestride_embed" if config.name.endswith("256") else "fps_embedding"
    parts = {
        "model.diffusion_model.": released_unet_shapes(config.unet, fs_name),
        "image_proj_model.": released_resampler_shapes(config.resampler),
        "cond_stage_model.model.": open_clip_text_shapes(config),
        "embedder.model.": open_clip_embedder_shapes(config),
        "first_stage_model.": ldm_vae_shapes(
            config.vae_block_out_channels, config.vae_layers_per_block
        ),
    }
    generator = torch.Generator().manual_seed(seed)
    state = {
        prefix + name: torch.randn(shape, generator=generator) * 0.1
        for prefix, shapes in parts.items()
        for name, shape in shapes.items()
    }
    # ddpm3d.register_schedule's buffers (a few), and LatentDiffusion's dynamic-rescale array.
    bar = _released_alphas_cumprod(config)
    state["alphas_cumprod"] = bar
    state["betas"] = 1 - bar / torch.cat([torch.ones(1), bar[:-1]])
    if config.schedule.rescale_base is not None:
        state["scale_arr"] = torch.ones(1400)
    return state


def write_released_checkpoint(folder, config):
    """`released_checkpoint(config)` as `folder`/model.safetensors; a released folder name
    (dynamicrafter_512_v1, ...) lets the preset be guessed from it."""
    folder.mkdir(parents=True, exist_ok=True)
    return _save(folder, released_checkpoint(config))


def write_tiny_512_release(folder):
    """(checkpoint, config): a tiny 32x24 stand-in for the released 512 model, written under
    `folder` (name it dynamicrafter_512_v1 for the preset to be guessed)."""
    config = replace(tiny("512"), width=32, height=24)
    return write_released_checkpoint(folder, config), config


class _Payload:
    """Stands for arbitrary Python objects a pickle may carry."""


def _save(tmp_path, state, name="model.safetensors"):
    from safetensors.torch import save_file

    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


# ==================================================================================== presets


def test_presets_carry_the_released_numbers():
    for name, config in PRESETS.items():
        u, r = config.unet, config.resampler
        assert (u.in_channels, u.out_channels, u.model_channels) == (8, 4, 320), name
        assert u.channel_mult == (1, 2, 4, 4) and u.attention_resolutions == (4, 2, 1)
        assert (u.num_head_channels, u.context_dim, u.temporal_length) == (64, 1024, 16)
        assert (r.num_queries, r.video_length, r.embedding_dim, r.output_dim) == (
            16,
            16,
            1280,
            1024,
        )
        assert (r.dim, r.depth, r.heads, r.dim_head) == (1024, 4, 12, 64)
        assert config.steps == 50 and config.guidance_scale == 7.5 and config.frames == 16
        assert config.schedule.linear_start == 0.00085 and config.schedule.linear_end == 0.012
    small, mid, big, interp = (preset(n) for n in ("256", "512", "1024", "512_interp"))
    assert small.schedule.prediction == "eps" and not small.schedule.zero_terminal_snr
    assert small.schedule.spacing == "uniform" and small.schedule.guidance_rescale == 0
    assert small.unet.image_cross_attention_scale_learnable and small.fs_kind == "frame_stride"
    assert (small.default_fs, small.height, small.width) == (3, 256, 256)
    for config in (mid, big, interp):
        assert config.schedule.prediction == "v" and config.schedule.zero_terminal_snr
        assert config.schedule.spacing == "uniform_trailing"
        assert config.schedule.guidance_rescale == 0.7 and config.fs_kind == "fps"
        assert not config.unet.image_cross_attention_scale_learnable
    assert (mid.default_fs, mid.height, mid.width, mid.schedule.rescale_base) == (24, 320, 512, 0.7)
    assert (big.default_fs, big.height, big.width, big.schedule.rescale_base) == (
        10,
        576,
        1024,
        0.3,
    )
    assert interp.interpolation and interp.default_fs == 5
    with pytest.raises(KeyError, match="known"):
        preset("2048")


# =================================================================================== schedule


def test_betas_and_alpha_bar_match_an_independent_reference():
    for name in ("256", "512"):
        config = preset(name)
        betas = linear_betas(config.schedule)
        assert betas[0].item() == pytest.approx(0.00085) and betas[-1].item() == pytest.approx(
            0.012
        )
        ours = alphas_cumprod(config.schedule)
        torch.testing.assert_close(
            ours.float(), _released_alphas_cumprod(config), atol=1e-6, rtol=0
        )


def test_zero_terminal_snr_ends_at_zero_and_snr_falls():
    zero = alphas_cumprod(preset("512").schedule)
    plain = alphas_cumprod(preset("256").schedule)
    assert zero[-1].item() == 0.0  # pure noise at the last training step
    assert plain[-1].item() > 0.004  # SD's schedule leaves signal there
    assert zero[0].item() == pytest.approx(plain[0].item(), abs=1e-12)  # first step kept
    snr = zero[:-1] / (1 - zero[:-1])
    assert (snr[1:] < snr[:-1]).all() and (snr > 0).all()  # strictly falling until exactly 0


def test_trailing_and_uniform_timesteps_for_50_steps():
    trailing = ddim_timesteps(50, 1000, "uniform_trailing")
    assert trailing == [999 - 20 * k for k in range(50)]  # 999, 979, ..., 19
    assert ddim_timesteps(50, 1000, "uniform") == [981 - 20 * k for k in range(50)]  # 981 .. 1
    assert ddim_timesteps(1, 1000, "uniform_trailing") == [999]
    assert ddim_timesteps(3, 1000, "uniform_trailing") == [999, 666, 332]
    # Step counts where the stride is not whole (half-way rounding at 48 steps) follow the
    # released make_ddim_timesteps arithmetic (numpy.arange then numpy.round).
    for steps in (7, 25, 30, 48, 96):
        c = 1000 / steps
        released = (np.flip(np.round(np.arange(1000, 0, -c))).astype(np.int64) - 1).tolist()
        assert ddim_timesteps(steps, 1000, "uniform_trailing") == released[::-1], steps
    with pytest.raises(ValueError):
        ddim_timesteps(0)


def test_v_prediction_conversions_round_trip():
    generator = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 4, 2, 5, 5, generator=generator).double().unbind(0)[0:2]
    x0, eps = x0[None].repeat(3, 1, 1, 1, 1), eps[None].repeat(3, 1, 1, 1, 1)
    alpha = torch.tensor([0.0, 0.3, 0.999], dtype=torch.float64)  # per sample, incl. zero SNR
    a = alpha.reshape(-1, 1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = v_from_x0_eps(x0, eps, alpha)
    torch.testing.assert_close(x0_from_v(x_t, v, alpha), x0)
    torch.testing.assert_close(eps_from_v(x_t, v, alpha), eps)
    torch.testing.assert_close(x0_from_v(x_t[0], v[0], 0.0), -v[0])  # at alpha-bar 0: x0 = -v


def test_guidance_rescale():
    generator = torch.Generator().manual_seed(2)
    guided = torch.randn(2, 4, 3, 4, 4, generator=generator) * 3
    cond = torch.randn(2, 4, 3, 4, 4, generator=generator)
    assert torch.equal(rescale_guidance(guided, cond, 0.0), guided)
    full = rescale_guidance(guided, cond, 1.0)
    torch.testing.assert_close(full.flatten(1).std(1), cond.flatten(1).std(1))
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.7), 0.7 * full + 0.3 * guided)


def test_ddim_schedule_and_step():
    config = preset("512").schedule
    bar = alphas_cumprod(config)
    sched = ddim_schedule(config, 50, eta=0.0)
    assert sched.timesteps[0] == 999 and sched.alphas[0].item() == 0.0
    assert sched.alphas_prev[-1].item() == bar[0].item()  # the last step goes to alpha-bar[0]
    assert sched.alphas_prev[0].item() == bar[979].item() and (sched.sigmas == 0).all()
    # Dynamic rescale: x0 is scaled by scale(t_prev) / scale(t); flat beyond step 400.
    assert sched.rescale[0].item() == pytest.approx(1.0)
    t, t_prev = sched.timesteps[-2], sched.timesteps[-1]  # 39 -> 19, on the ramp
    ramp = lambda t: 1 + (0.7 - 1) * t / 399  # noqa: E731
    assert sched.rescale[-2].item() == pytest.approx(ramp(t_prev) / ramp(t))
    assert (ddim_schedule(preset("256").schedule, 50).rescale == 1).all()
    # With the true v and eta 0, one step lands exactly on the forward process at t_prev.
    plain = replace(config, rescale_base=None)
    sched = ddim_schedule(plain, 10, eta=0.0)
    generator = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 1, 4, 2, 3, 3, generator=generator).double().unbind(0)
    for index in (0, 4, 9):
        a, a_prev = sched.alphas[index], sched.alphas_prev[index]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        x_prev, pred = ddim_step(x_t, v_from_x0_eps(x0, eps, a), sched, index, "v")
        torch.testing.assert_close(pred, x0)
        torch.testing.assert_close(x_prev, a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps)
    noisy = ddim_schedule(plain, 10, eta=1.0)
    with pytest.raises(ValueError, match="noise"):
        ddim_step(x0, x0, noisy, 0, "v")


# ======================================================================================= UNet


def _random_unet(config, seed=0):
    torch.manual_seed(seed)
    return DynamiCrafterUNet(config).eval()


def _context(config, batch, seed=0, frames=None):
    frames = frames or config.resampler.video_length
    generator = torch.Generator().manual_seed(seed)
    n = config.unet.text_tokens + config.unet.tokens_per_frame * frames
    return torch.randn(batch, n, config.unet.context_dim, generator=generator)


def test_unet_shapes_through_every_block():
    config = tiny()
    unet = _random_unet(config.unet)
    kinds = {
        ResBlock: "R",
        SpatialTransformer: "S",
        TemporalTransformer: "T",
        nn.Conv2d: "C",
    }
    shapes = {}

    def record(name):
        return lambda module, args, out: shapes.__setitem__(name, tuple(out.shape))

    stages = {f"in{i}": b for i, b in enumerate(unet.input_blocks)}
    stages["mid"] = unet.middle_block
    stages |= {f"out{i}": b for i, b in enumerate(unet.output_blocks)}
    stages["init_attn"] = unet.init_attn
    for name, stage in stages.items():
        stage.register_forward_hook(record(name))
    layers = {
        name: "".join(kinds.get(type(m), type(m).__name__[0]) for m in stage)
        for name, stage in stages.items()
    }
    x = unet_input(torch.randn(2, 4, 4, 8, 8), torch.randn(2, 4, 4, 8, 8))
    with torch.no_grad():
        out = unet(x, torch.tensor([10, 999]), _context(config, 2), fs=3)
    assert out.shape == (2, 4, 4, 8, 8)
    # Hand-derived: b*t = 8 frames; widths 32, 64, 64; 8x8 -> 4x4 -> 2x2; attention at the
    # first two levels only (like the released deepest level), always in the middle.
    assert layers == {
        "in0": "C",
        "init_attn": "T",
        "in1": "RST",
        "in2": "D",
        "in3": "RST",
        "in4": "D",
        "in5": "R",
        "mid": "RSTR",
        "out0": "R",
        "out1": "RU",
        "out2": "RST",
        "out3": "RSTU",
        "out4": "RST",
        "out5": "RST",
    }
    assert shapes == {
        "in0": (8, 32, 8, 8),
        "init_attn": (8, 32, 8, 8),
        "in1": (8, 32, 8, 8),
        "in2": (8, 32, 4, 4),
        "in3": (8, 64, 4, 4),
        "in4": (8, 64, 2, 2),
        "in5": (8, 64, 2, 2),
        "mid": (8, 64, 2, 2),
        "out0": (8, 64, 2, 2),
        "out1": (8, 64, 4, 4),
        "out2": (8, 64, 4, 4),
        "out3": (8, 64, 8, 8),
        "out4": (8, 32, 8, 8),
        "out5": (8, 32, 8, 8),
    }


def test_context_is_text_then_per_frame_image_tokens():
    # Released: 77 text tokens + num_queries (16) * video_length (16) image tokens = 333, i.e.
    # 77 + 16 * frames for the 16 frames the resampler was built for.
    config = preset("512")
    assert config.resampler.total_queries == 16 * 16
    assert config.unet.text_tokens + config.resampler.total_queries == 77 + 16 * config.frames
    b, frames, text, per = 2, 3, 4, 2
    context = torch.arange(b * (text + per * frames), dtype=torch.float32)
    context = context.reshape(b, -1, 1).expand(-1, -1, 5)
    out = frame_contexts(context, frames, text, per)
    assert out.shape == (b * frames, text + per, 5)
    for i in range(b):
        for f in range(frames):
            row = out[i * frames + f, :, 0].tolist()
            first = i * (text + per * frames)
            expected = list(range(first, first + text))
            expected += list(range(first + text + per * f, first + text + per * (f + 1)))
            assert row == expected
    # Another frame count than the resampler's: every frame sees the whole context.
    other = frame_contexts(context, 2, text, per)
    assert torch.equal(other, context.repeat_interleave(2, dim=0))


def test_each_frame_attends_to_its_own_image_tokens():
    # With the temporal layers off, changing frame 2's image tokens changes frame 2 only.
    config = tiny(temporal_conv=False, temporal_attention=False, addition_attention=False)
    unet = _random_unet(config.unet)
    x = torch.randn(1, 8, 4, 8, 8)
    context = _context(config, 1)
    changed = context.clone()
    start = config.unet.text_tokens + 2 * config.unet.tokens_per_frame
    changed[:, start : start + config.unet.tokens_per_frame] += 1.0
    with torch.no_grad():
        a, b = unet(x, 500, context), unet(x, 500, changed)
    moved = (a - b).abs().amax(dim=(0, 1, 3, 4))
    assert moved[2] > 1e-3 and moved[[0, 1, 3]].max() == 0


def test_dual_cross_attention_matches_a_manual_computation():
    torch.manual_seed(4)
    attn = Attention(16, 2, 8, context_dim=12, text_tokens=3, image_cross_attention=True)
    learnable = Attention(
        16, 2, 8, context_dim=12, text_tokens=3, image_cross_attention=True, learnable_scale=True
    )
    learnable.load_state_dict(attn.state_dict() | {"alpha": torch.tensor(0.5)})
    x, context = torch.randn(2, 5, 16), torch.randn(2, 3 + 4, 12)

    def manual(q_in, k_in, to_k, to_v):
        q = attn.to_q(q_in).unflatten(-1, (2, 8)).transpose(1, 2)
        k = to_k(k_in).unflatten(-1, (2, 8)).transpose(1, 2)
        v = to_v(k_in).unflatten(-1, (2, 8)).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
        return (weights @ v).transpose(1, 2).flatten(2)

    with torch.no_grad():
        text = manual(x, context[:, :3], attn.to_k, attn.to_v)
        image = manual(x, context[:, 3:], attn.to_k_ip, attn.to_v_ip)
        torch.testing.assert_close(attn(x, context), attn.to_out(text + image))
        gate = math.tanh(0.5) + 1
        torch.testing.assert_close(learnable(x, context), attn.to_out(text + gate * image))
        # Without the image branch, image tokens are ignored (the text part is cut out).
        plain = Attention(16, 2, 8, context_dim=12, text_tokens=3)
        assert torch.equal(plain(x, context), plain(x, context[:, :3]))


def test_temporal_layers_mix_frames_and_spatial_layers_do_not():
    torch.manual_seed(5)
    config = tiny().unet
    frames = 4
    video = torch.randn(2, 32, frames, 4, 4)
    changed = video.clone()
    changed[:, :, 2, 1, 1] += 3.0  # one pixel of frame 2

    def project(layer, seq):  # a linear layer, or a 1x1 Conv1d used as one
        return nn.functional.linear(seq, layer.weight.reshape(layer.weight.shape[:2]), layer.bias)

    def moved(before, after):  # per frame, at the changed pixel
        return (before - after).abs()[:, :, :, 1, 1].amax(dim=(0, 1))

    with torch.no_grad():
        temporal = TemporalTransformer(32, 2, 16)
        assert (moved(temporal(video), temporal(changed)) > 1e-4).all()
        # Reference: each pixel's frames are one sequence (after a norm over the whole video).
        for use_linear in (True, False):  # linear (blocks) or 1x1 conv (init_attn) projections
            temporal = TemporalTransformer(32, 2, 16, use_linear=use_linear)
            out = temporal(video)
            normed = temporal.norm(video)
            for i, j in ((0, 0), (1, 3), (3, 2)):
                seq = normed[:, :, :, i, j].transpose(1, 2)  # (b, t, c)
                seq = project(temporal.proj_in, seq)
                seq = temporal.transformer_blocks[0](seq)
                seq = project(temporal.proj_out, seq).transpose(1, 2)
                torch.testing.assert_close(out[:, :, :, i, j], seq + video[:, :, :, i, j])
        conv = TemporalConvBlock(32)
        nn.init.normal_(conv.conv4[-1].weight, std=0.1)
        assert (moved(conv(video), conv(changed))[[1, 3]] > 1e-4).all()

        spatial = SpatialTransformer(32, 2, 16, config)
        frames_in = video.transpose(1, 2).flatten(0, 1)
        frames_changed = changed.transpose(1, 2).flatten(0, 1)
        context = torch.randn(8, config.text_tokens + config.tokens_per_frame, 32)
        delta = (spatial(frames_in, context) - spatial(frames_changed, context)).abs()
        per_frame = delta.unflatten(0, (2, frames)).amax(dim=(0, 2, 3, 4))
        assert per_frame[2] > 1e-4 and per_frame[[0, 1, 3]].max() == 0
        res = ResBlock(32, 128, 64, temporal=False)
        emb = torch.randn(8, 128)
        delta = (res(frames_in, emb, frames) - res(frames_changed, emb, frames)).abs()
        per_frame = delta.unflatten(0, (2, frames)).amax(dim=(0, 2, 3, 4))
        assert per_frame[2] > 1e-4 and per_frame[[0, 1, 3]].max() == 0

    # The whole UNet: frame 2's input reaches every frame; without temporal layers, none.
    for temporal_on in (True, False):
        flags = dict(temporal_conv=temporal_on, temporal_attention=temporal_on)
        net_config = tiny(addition_attention=temporal_on, **flags)
        unet = _random_unet(net_config.unet)
        x = torch.randn(1, 8, frames, 8, 8)
        x2 = x.clone()
        x2[:, :, 2] += 1.0
        context = _context(net_config, 1)
        with torch.no_grad():
            delta = (unet(x, 10, context) - unet(x2, 10, context)).abs().amax(dim=(0, 1, 3, 4))
        others = delta[[0, 1, 3]]
        assert (others > 1e-5).all() if temporal_on else others.max() == 0


def test_image_latent_concatenation_and_interpolation_layout():
    first, last = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    animate = image_condition(first, 4)
    assert animate.shape == (2, 4, 4, 5, 6)
    assert all(torch.equal(animate[:, :, f], first) for f in range(4))
    interp = image_condition(first, 4, last)
    assert torch.equal(interp[:, :, 0], first) and torch.equal(interp[:, :, 3], last)
    assert (interp[:, :, 1:3] == 0).all()
    loop = image_condition(first, 4, first)
    assert torch.equal(loop[:, :, 0], loop[:, :, -1])
    noisy = torch.randn(2, 4, 4, 5, 6)
    x = unet_input(noisy, interp)
    assert x.shape == (2, 8, 4, 5, 6)
    assert torch.equal(x[:, :4], noisy) and torch.equal(x[:, 4:], interp)  # noise first


def test_timestep_and_fs_embedding():
    from diffusers.models.embeddings import get_timestep_embedding

    steps = torch.tensor([0, 1, 250, 999])
    reference = get_timestep_embedding(steps, 32, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(timestep_embedding(steps, 32), reference)
    config = tiny()
    unet = _random_unet(config.unet)
    x, context = torch.randn(1, 8, 4, 8, 8), _context(config, 1)
    with torch.no_grad():
        default = unet(x, 100, context)
        assert torch.equal(default, unet(x, 100, context, fs=config.default_fs))
        assert not torch.allclose(default, unet(x, 100, context, fs=config.default_fs + 5))


def test_resampler_gives_per_frame_tokens():
    config = tiny().resampler
    resampler = Resampler(config).eval()
    with torch.no_grad():
        out = resampler(torch.randn(3, 5, config.embedding_dim))
    assert out.shape == (3, config.num_queries * config.video_length, config.output_dim)
    assert set(resampler.state_dict()) == set(released_resampler_shapes(config))


# ========================================================================== checkpoint layout


@pytest.mark.parametrize("name", ["256", "512"])
def test_unet_and_resampler_names_are_the_released_ones(name):
    # The full-size models, on the meta device: every key and shape as the released code has.
    config = preset(name)
    with torch.device("meta"):
        unet = DynamiCrafterUNet(config.unet)
        resampler = Resampler(config.resampler)
    ours = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert ours == released_unet_shapes(config.unet)
    ours = {k: tuple(v.shape) for k, v in resampler.state_dict().items()}
    assert ours == released_resampler_shapes(config.resampler)
    keys = set(released_unet_shapes(config.unet))
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight" in keys
    assert "init_attn.0.proj_in.weight" in keys and "input_blocks.1.2.proj_in.weight" in keys
    assert ("input_blocks.1.1.transformer_blocks.0.attn2.alpha" in keys) == (name == "256")


@pytest.mark.parametrize("name", ["256", "512"])
def test_a_released_layout_checkpoint_loads_exactly(tmp_path, name):
    config = tiny(name)
    state = released_checkpoint(config)
    path = _save(tmp_path, state)
    models = ckpt.load_dynamicrafter(path, config, dtype=torch.float32)
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # and conftest blocks every socket
    unet_sd = models.unet.state_dict()
    key = "input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip.weight"
    assert torch.equal(unet_sd[key], state["model.diffusion_model." + key])
    fs = "framestride_embed" if name == "256" else "fps_embedding"
    assert torch.equal(unet_sd["fps_embedding.2.bias"], state[f"model.diffusion_model.{fs}.2.bias"])
    assert torch.equal(models.image_proj.state_dict()["latents"], state["image_proj_model.latents"])
    # q/k/v split out of OpenCLIP's stacked in_proj, in that order.
    text = {k.removeprefix("text_model."): v for k, v in models.text_encoder.state_dict().items()}
    stacked = state["cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"]
    for part, proj in enumerate("qkv"):
        assert torch.equal(
            text[f"encoder.layers.1.self_attn.{proj}_proj.weight"], stacked.chunk(3)[part]
        )
    assert len([k for k in text if k.endswith("self_attn.q_proj.weight")]) == config.text.layers - 1
    vision = {
        k.removeprefix("vision_model."): v for k, v in models.image_encoder.state_dict().items()
    }
    assert torch.equal(
        vision["embeddings.patch_embedding.weight"], state["embedder.model.visual.conv1.weight"]
    )
    vae = models.vae.state_dict()
    attn_q = state["first_stage_model.encoder.mid.attn_1.q.weight"]
    assert torch.equal(vae["encoder.mid_block.attentions.0.to_q.weight"], attn_q[:, :, 0, 0])


def test_towers_reproduce_open_clip(tmp_path):
    """The converted CLIP towers compute what OpenCLIP's modules compute on the same weights:
    text at the penultimate layer then ln_final, vision's last-layer tokens before ln_post."""
    config = tiny()
    state = released_checkpoint(config, seed=7)
    models = ckpt.load_dynamicrafter(_save(tmp_path, state), config, dtype=torch.float32)
    t, v = config.text, config.vision

    class Block(nn.Module):  # open_clip's ResidualAttentionBlock
        def __init__(self, width, heads, mlp):
            super().__init__()
            self.ln_1 = nn.LayerNorm(width)
            self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
            self.ln_2 = nn.LayerNorm(width)
            self.mlp = nn.Sequential(
                OrderedDict(
                    c_fc=nn.Linear(width, mlp), gelu=nn.GELU(), c_proj=nn.Linear(mlp, width)
                )
            )

        def forward(self, x, mask=None):
            h = self.ln_1(x)
            x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
            return x + self.mlp(self.ln_2(x))

    def blocks(prefix, width, heads, mlp, layers):
        module = nn.ModuleList(Block(width, heads, mlp) for _ in range(layers))
        module.load_state_dict(
            {k[len(prefix) :]: w for k, w in state.items() if k.startswith(prefix)}
        )
        return module.eval()

    text_blocks = blocks(
        "cond_stage_model.model.transformer.resblocks.", t.width, t.heads, t.mlp_width, t.layers
    )
    vision_blocks = blocks(
        "embedder.model.visual.transformer.resblocks.", v.width, v.heads, v.mlp_width, v.layers
    )
    ids = torch.tensor([[t.vocab_size - 2, 5, 9, t.vocab_size - 1, 0]])
    pixels = torch.randn(2, 3, v.image_size, v.image_size)

    def ln(x, name):
        weight, bias = state[name + ".weight"], state[name + ".bias"]
        return nn.functional.layer_norm(x, x.shape[-1:], weight, bias)

    with torch.no_grad():
        x = state["cond_stage_model.model.token_embedding.weight"][ids]
        x = x + state["cond_stage_model.model.positional_embedding"]
        mask = torch.full((ids.shape[1],) * 2, float("-inf")).triu(1)
        for block in text_blocks[:-1]:  # FrozenOpenCLIPEmbedder, layer="penultimate"
            x = block(x, mask)
        expected_text = ln(x, "cond_stage_model.model.ln_final")
        got_text = models.text_encoder(input_ids=ids).last_hidden_state
        torch.testing.assert_close(got_text, expected_text, atol=1e-5, rtol=1e-4)

        p = "embedder.model.visual."
        x = nn.functional.conv2d(pixels, state[p + "conv1.weight"], stride=v.patch_size)
        x = x.flatten(2).transpose(1, 2)
        cls = state[p + "class_embedding"].expand(2, 1, -1)
        x = torch.cat([cls, x], dim=1) + state[p + "positional_embedding"]
        x = ln(x, p + "ln_pre")
        for block in vision_blocks:  # FrozenOpenCLIPImageEmbedderV2: no ln_post, no proj
            x = block(x)
        got = models.image_encoder(pixel_values=pixels).last_hidden_state
        assert got.shape == (2, v.tokens, v.width)
        torch.testing.assert_close(got, x, atol=1e-5, rtol=1e-4)


def test_a_wrong_checkpoint_is_refused_with_counts(tmp_path):
    config = tiny()
    state = released_checkpoint(config)
    del state["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip.weight"]
    del state["image_proj_model.latents"]
    state["model.diffusion_model.input_blocks.9.0.weight"] = torch.zeros(1)
    state["model.diffusion_model.out.2.bias"] = torch.zeros(5)
    with pytest.raises(ZvsError) as error:
        ckpt.load_dynamicrafter(_save(tmp_path, state), config)
    message = str(error.value)
    assert "2 tensors missing, 1 unexpected, 1 of the wrong shape" in message
    assert "UNet: 1 missing, 1 unexpected, 1 wrong" in message
    assert "image projection: 1 missing, 0 unexpected, 0 wrong" in message


def test_a_checkpoint_of_another_variant_is_named(tmp_path):
    # The 512 layout under the 256 preset: same schedule check skipped (no buffer saved), the
    # learnable image scales and the frame-stride name are missing, and the hint says why.
    state = released_checkpoint(tiny("512"))
    del state["alphas_cumprod"]
    with pytest.raises(ZvsError, match="tensors missing") as error:
        ckpt.load_dynamicrafter(_save(tmp_path, state), tiny("256"))
    assert "looks like a 512 / 1024 / interpolation model" in str(error.value)
    # With the schedule buffer saved, the schedule tells them apart first.
    state = released_checkpoint(tiny("512"))
    with pytest.raises(ZvsError, match="another noise schedule"):
        ckpt.load_dynamicrafter(_save(tmp_path, state, "b.safetensors"), tiny("256"))


def test_pickled_checkpoint_is_refused_then_converted_once(tmp_path):
    config = tiny()
    source = tmp_path / "model.ckpt"
    torch.save({"state_dict": released_checkpoint(config)}, source)
    cache = tmp_path / "cache"
    with pytest.raises(ZvsError, match="pickled"):
        ckpt.load_dynamicrafter(source, config, cache_dir=cache)
    with pytest.raises(ZvsError, match="pickled"):
        ckpt.convert_to_safetensors(source, cache)
    models = ckpt.load_dynamicrafter(source, config, allow_pickle=True, cache_dir=cache)
    converted = sorted(cache.iterdir())
    assert len(converted) == 1 and converted[0].suffix == ".safetensors"  # no partial files
    assert models.source == converted[0]
    stamp = converted[0].stat().st_mtime_ns
    assert ckpt.convert_to_safetensors(source, cache, allow_pickle=True) == converted[0]
    assert converted[0].stat().st_mtime_ns == stamp  # reused, not rewritten
    # Only plain tensors are unpickled, even when pickles are allowed.
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": _Payload()}, evil)
    with pytest.raises(ZvsError, match="more than plain tensors"):
        ckpt.convert_to_safetensors(evil, cache, allow_pickle=True)
