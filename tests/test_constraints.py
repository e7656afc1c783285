"""Cross-frame attention, latent constraints, schedule checks and fidelity-oriented encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zvstudio.diffusion.attention import (
    CrossFrameAttnProcessor,
    ReferenceStore,
    install_cross_frame_attention,
)
from zvstudio.diffusion.constraints import (
    ConstraintSchedule,
    adain,
    check_schedule,
    downsample_flow,
    downsample_mask,
    flat_region,
    in_range,
    match_colours_lab,
    pixel_aware_fusion,
    pixel_aware_fusion_soft,
    q_sample,
    shape_aware_fusion,
    warp_latent,
)
from zvstudio.diffusion.encoding import (
    decode,
    encode_mean,
    fidelity_encode,
    fidelity_encode_details,
)

# ------------------------------------------------------------------ tiny models


@pytest.fixture(scope="module")
def unet():
    """A tiny SD-shaped UNet with self-attention in both up blocks (so "loose" differs)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    model = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        sample_size=8,
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    with torch.no_grad():  # randomise biases/norms too, so nothing is trivially zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(3, 4, 8, 8, generator=g)  # three different "frames"
    text = torch.randn(2, 7, 32, generator=g)  # [uncond, cond]
    return latents, text


def run(unet, x, text, t=500):
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=text).sample


def store_key(unet, store, latents, text) -> None:
    """Run `latents` as a key at step 0, recording its attention features, and keep them."""
    store.set_mode("store")
    store.begin_step(0)
    run(unet, latents, text)
    store.promote()


@pytest.fixture
def cross_frame(unet):
    store = ReferenceStore()
    installed = install_cross_frame_attention(unet, store, "decoder")
    yield store, installed
    installed.restore()


# ------------------------------------------------------- cross-frame attention


def test_duplicated_keys_values_give_plain_attention():
    # softmax over [k; k] gives each copy half the weight of k alone, and the two halves of
    # [v; v] add back up: attention over [v; v] equals attention over v.
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=g) for _ in range(3))
    plain = F.scaled_dot_product_attention(q, k, v)
    doubled = F.scaled_dot_product_attention(q, torch.cat([k, k], 2), torch.cat([v, v], 2))
    torch.testing.assert_close(doubled, plain, atol=1e-6, rtol=1e-5)


def test_off_mode_equals_diffusers_processor(unet, inputs):
    latents, text = inputs
    x = latents[:2]
    reference = run(unet, x, text)
    installed = install_cross_frame_attention(unet, ReferenceStore(), "all")
    try:
        ours = run(unet, x, text)
    finally:
        installed.restore()
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(p, CrossFrameAttnProcessor) for p in unet.attn_processors.values())


def test_layer_selection_and_cross_attention_untouched(unet):
    before = dict(unet.attn_processors)
    store = ReferenceStore()
    counts = {}
    for layers in ("decoder", "decoder_loose", "all"):
        installed = install_cross_frame_attention(unet, store, layers)
        now = unet.attn_processors
        assert all(n.endswith("attn1.processor") for n in installed)
        # Cross-attention (attn2) and unselected layers keep their original processors.
        for name, proc in now.items():
            assert (proc is installed[name]) if name in installed else (proc is before[name])
        counts[layers] = set(installed)
        installed.restore()
    assert counts["decoder"] == {n for n in before if n.startswith("up_blocks.") and "attn1" in n}
    assert counts["decoder_loose"] < counts["decoder"]
    assert all(n.startswith("up_blocks.1.") for n in counts["decoder_loose"])
    assert len(counts["all"]) == 7 and counts["decoder"] < counts["all"]
    assert dict(unet.attn_processors) == before


def test_use_with_own_features_equals_self_attention(unet, inputs):
    latents, text = inputs
    x = latents[:1].repeat(2, 1, 1, 1)
    plain = run(unet, x, text)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 5e-3)):
        store = ReferenceStore(dtype=dtype)
        installed = install_cross_frame_attention(unet, store, "decoder")
        try:
            store.set_mode("store")
            store.begin_step(0)
            torch.testing.assert_close(run(unet, x, text), plain, atol=1e-5, rtol=1e-5)
            store.promote()  # the frame is its own anchor and previous key
            store.set_mode("use")
            store.begin_step(0)
            torch.testing.assert_close(run(unet, x, text), plain, atol=tol, rtol=tol)
        finally:
            installed.restore()


def test_store_is_fp16_and_only_installed_layers(unet, inputs):
    latents, text = inputs
    store = ReferenceStore()
    installed = install_cross_frame_attention(unet, store, "decoder_loose")
    try:
        store.set_mode("store")
        for step in range(3):
            store.begin_step(step)
            run(unet, latents[:1].repeat(2, 1, 1, 1), text)
        recorded = store.tensors()
        layers = {n.removesuffix(".processor") for n in installed}
        assert store.layers() == layers
        assert len(recorded) == len(layers) * 3 * 2  # layers x steps x CFG branches
        assert all(t.dtype == torch.float16 for t in recorded.values())
        assert store.nbytes() == sum(t.numel() * 2 for t in recorded.values())
        store.promote()
        assert store.has("anchor") and store.has("previous")
        assert store.nbytes() == sum(t.numel() * 2 for t in recorded.values())  # shared
        store.clear()
        assert store.nbytes() == 0 and not store.has("anchor")
    finally:
        installed.restore()


def test_different_references_change_output(unet, inputs, cross_frame):
    latents, text = inputs
    store, _ = cross_frame
    anchor, current = latents[:1].repeat(2, 1, 1, 1), latents[1:2].repeat(2, 1, 1, 1)
    store_key(unet, store, anchor, text)
    store.set_mode("off")
    plain = run(unet, current, text)
    store.set_mode("use")
    store.begin_step(0)
    used = run(unet, current, text)
    assert (used - plain).abs().max() > 1e-3
    store.begin_step(1)  # no references at this step: a clear error, never a silent skip
    with pytest.raises(KeyError, match="step 1"):
        run(unet, current, text)


def test_cfg_branches_use_their_own_references(unet, inputs, cross_frame):
    latents, text = inputs
    store, _ = cross_frame
    a, b = latents[:1], latents[1:2]
    pair = torch.cat([a, b])  # branch 0 sees frame a, branch 1 frame b
    store.set_mode("off")
    plain = run(unet, pair, text)
    store_key(unet, store, pair, text)
    store.set_mode("use")
    store.begin_step(0)
    # Each branch attends to its own features only, so this equals plain self-attention; a
    # mix-up of branches would make branch 0 attend to frame b's features and differ.
    torch.testing.assert_close(run(unet, pair, text), plain, atol=5e-3, rtol=5e-3)
    # With the branches' references swapped, both outputs move away from plain.
    swapped = torch.cat([b, a])
    store.clear()
    store_key(unet, store, swapped, text)
    store.set_mode("use")
    store.begin_step(0)
    out = run(unet, pair, text)
    assert all((out[i] - plain[i]).abs().max() > 1e-3 for i in range(2))


def test_use_records_and_promotes_previous(unet, inputs, cross_frame):
    latents, text = inputs
    store, _ = cross_frame
    frames = [latents[i : i + 1].repeat(2, 1, 1, 1) for i in range(3)]
    store_key(unet, store, frames[0], text)
    anchor = store.tensors("anchor")
    store.set_mode("use", record=True)
    store.begin_step(0)
    run(unet, frames[1], text)
    store.promote()
    assert store.tensors("anchor").keys() == anchor.keys()
    assert all(store.tensors("anchor")[k] is anchor[k] for k in anchor)  # anchor kept
    assert any(not torch.equal(store.tensors("previous")[k], anchor[k]) for k in anchor)


# ------------------------------------------------------------ warps and fusion


def test_warp_zero_flow_is_identity():
    x = torch.randn(2, 4, 6, 9)
    torch.testing.assert_close(warp_latent(x, torch.zeros(2, 2, 6, 9)), x, atol=1e-6, rtol=0)


def test_warp_integer_flow_shifts_and_replicates_borders():
    x = torch.randn(1, 3, 5, 7)
    flow = torch.zeros(1, 2, 5, 7)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # out(y, x) = in(y - 1, x + 2)
    out = warp_latent(x, flow)
    torch.testing.assert_close(out[:, :, 1:, :5], x[:, :, :4, 2:], atol=1e-6, rtol=0)
    # Beyond the right border: the last column; above the top: the first row. Never zeros.
    torch.testing.assert_close(
        out[:, :, 1:, 5:], x[:, :, :4, 6:].expand(-1, -1, -1, 2), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(out[:, :, 0, :5], x[:, :, 0, 2:], atol=1e-6, rtol=0)


def test_downsample_flow_and_mask():
    flow = np.zeros((16, 32, 2), np.float32)
    flow[..., 0], flow[..., 1] = 8.0, 4.0
    small = downsample_flow(flow, (4, 4))
    assert small.shape == (1, 2, 4, 4)
    assert torch.allclose(small[:, 0], torch.full((1, 4, 4), 1.0))  # 8 px * 4/32
    assert torch.allclose(small[:, 1], torch.full((1, 4, 4), 1.0))  # 4 px * 4/16
    mask = np.ones((16, 16), bool)
    mask[0, 0] = False  # one invalid pixel in the top-left 4x4 cell
    soft = downsample_mask(mask, (4, 4))
    assert soft.shape == (1, 1, 4, 4)
    assert soft[0, 0, 0, 0] == pytest.approx(15 / 16) and soft[0, 0, 1:, :].eq(1).all()
    strict = downsample_mask(mask, (4, 4), threshold=1.0)
    assert strict[0, 0, 0, 0] == 0 and strict.sum() == 15
    batch = downsample_mask(torch.from_numpy(np.stack([mask, ~mask])), (4, 4))  # (B, H, W)
    assert batch.shape == (2, 1, 4, 4) and batch[1, 0, 0, 0] == pytest.approx(1 / 16)


def test_shape_aware_fusion_replaces_exactly_the_masked_region():
    g = torch.Generator().manual_seed(3)
    x0, anchor = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    flow = torch.randn(2, 2, 8, 8, generator=g) * 2
    valid = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    out = shape_aware_fusion(x0, anchor, flow, valid)
    warped = warp_latent(anchor, flow)
    inside, outside = valid.expand_as(x0).bool(), ~valid.expand_as(x0).bool()
    assert torch.equal(out[inside], warped[inside])
    assert torch.equal(out[outside], x0[outside])
    # Pixel-size flow and mask are downsampled to the latent automatically.
    big_flow = torch.zeros(2, 2, 64, 64)
    assert torch.equal(shape_aware_fusion(x0, anchor, big_flow, torch.ones(2, 1, 64, 64)), anchor)


def test_pixel_aware_fusion():
    g = torch.Generator().manual_seed(4)
    x, target, noise = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
    valid = torch.zeros(1, 1, 8, 8)
    valid[..., 2:6, 2:6] = 1
    noised = q_sample(target, noise, 0.5)
    torch.testing.assert_close(noised, 0.5**0.5 * target + 0.5**0.5 * noise)
    out = pixel_aware_fusion(x, noised, valid)
    inside = valid.expand_as(x).bool()
    assert torch.equal(out[inside], noised[inside]) and torch.equal(out[~inside], x[~inside])
    half = pixel_aware_fusion(x, noised, valid, weight=0.5)
    torch.testing.assert_close(half[inside], 0.5 * (x + noised)[inside])

    # The soft variant: outside the mask nothing changes; with the noise rescale equal to the
    # linear one (detail 0, or only boundary cells) it is the linear blend.
    direction = torch.randn(1, 4, 8, 8, generator=g)
    soft = pixel_aware_fusion_soft(x, direction, noised, valid)
    torch.testing.assert_close(soft[~inside], x[~inside])
    lin = pixel_aware_fusion_soft(x, direction, noised, valid, detail=0.0)
    torch.testing.assert_close(lin, pixel_aware_fusion(x, noised, valid, weight=0.5))
    # Interior: r = max(0.5, sqrt(0.75) * 0.9) scales the noise direction.
    flat = flat_region(valid).expand_as(x).bool() & inside
    r = max(0.5, 0.75**0.5 * 0.9)
    expected = 0.5 * noised + 0.5 * (x - direction) + r * direction
    torch.testing.assert_close(soft[flat], expected[flat])
    assert flat.sum() == 4 * 4  # the 2x2 interior of the 4x4 square, 4 channels


def test_adain_matches_reference_statistics():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 16, 16, generator=g) * 3 + 1
    ref = torch.randn(2, 4, 16, 16, generator=g) * 0.5 - 2
    out = adain(x, ref)
    dims = (-2, -1)
    torch.testing.assert_close(out.mean(dims), ref.mean(dims), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        out.std(dims, correction=0), ref.std(dims, correction=0), atol=1e-4, rtol=0
    )
    flat = adain(torch.ones(1, 4, 8, 8), ref[:1])  # zero std: the reference mean, no NaN
    assert torch.isfinite(flat).all()
    torch.testing.assert_close(flat.mean(dims), ref[:1].mean(dims), atol=1e-4, rtol=0)


# -------------------------------------------------------------------- schedule


def test_schedule_active_sets():
    s = ConstraintSchedule()
    assert s.active(999) == {"cross_frame", "shape_fusion"}
    assert s.active(901) == {"cross_frame", "shape_fusion"}
    assert s.active(900) == {"cross_frame"}
    assert s.active(700) == {"cross_frame", "pixel_fusion"}
    assert s.active(400) == {"cross_frame"}
    assert s.active(150) == {"cross_frame", "adain"}
    assert s.active(0) == {"cross_frame", "adain"}
    assert ConstraintSchedule(adain=None).active(150) == {"cross_frame"}
    assert in_range(1.0, 0.9, 1.0) and not in_range(0.9, 0.9, 1.0)
    assert in_range(0.0, 0.0, 0.2) and not in_range(0.2, 0.0, 0.2)


def test_check_schedule_warns_when_a_constraint_never_runs():
    s = ConstraintSchedule()
    warnings = check_schedule(s, 0.75)
    assert len(warnings) == 1 and "Shape-aware fusion will not run" in warnings[0]
    assert "0.75" in warnings[0]
    assert check_schedule(s, 1.0) == []
    low = check_schedule(s, 0.4)
    assert any("Pixel-aware" in w for w in low) and any("Shape-aware" in w for w in low)
    # Strength 0.92 reaches the range in principle, but no step of these lands in it.
    assert any("no sampling step" in w for w in check_schedule(s, 0.92, timesteps=[881, 831]))
    assert check_schedule(s, 0.92, timesteps=[911, 861, 811, 761, 111]) == []


# -------------------------------------------------------------------- encoding


class _Dist:
    def __init__(self, mean):
        self.mean = mean


class _Out:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class LinearVAE(torch.nn.Module):
    """E = an orthogonal 1x1 conv, D = its inverse times a gain (0.9: D(E(I)) = 0.9 I)."""

    def __init__(self, gain: float | torch.Tensor = 0.9):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))
        self.register_buffer("q", q)
        self.gain = gain
        self.config = _Out(scaling_factor=0.5)

    def encode(self, x):
        return _Out(latent_dist=_Dist(torch.einsum("ij,bjhw->bihw", self.q, x)))

    def decode(self, z):
        return _Out(sample=self.gain * torch.einsum("ji,bjhw->bihw", self.q, z))


def _image(seed=6, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=g) * 1.6 - 0.8


def test_fidelity_encoding_is_exact_for_a_linear_vae():
    vae, image = LinearVAE(), _image()
    x_r = encode_mean(vae, image)
    torch.testing.assert_close(x_r, 0.5 * torch.einsum("ij,bjhw->bihw", vae.q, image))
    torch.testing.assert_close(decode(vae, x_r), 0.9 * image)
    details = fidelity_encode_details(vae, image)
    assert details.mask.eq(1).all()  # D(E'(I)) = 0.99 I: compensation helps everywhere
    torch.testing.assert_close(details.latent, 1.1 * x_r)  # x_r + (x_r - 0.9 x_r)
    torch.testing.assert_close(decode(vae, details.latent), 0.99 * image)

    def drift(encode):
        current = image
        for _ in range(10):
            current = decode(vae, encode(vae, current))
        return (current - image).abs().mean().item()

    plain, star = drift(encode_mean), drift(fidelity_encode)
    scale = image.abs().mean().item()
    assert plain == pytest.approx((1 - 0.9**10) * scale, rel=1e-4)
    assert star == pytest.approx((1 - 0.99**10) * scale, rel=1e-4)
    assert star < 0.15 * plain


def test_fidelity_mask_falls_back_where_compensation_hurts():
    # Gain 2 in the right half: there D(E'(I)) = (2*2 - 2^2) I = 0, an error of |I| > 0.25.
    gain = torch.full((1, 1, 16, 16), 0.9)
    gain[..., 12:] = 2.0
    vae, image = LinearVAE(gain), _image()
    image = image.sign() * image.abs().clamp_min(0.3)  # every pixel clearly above threshold
    details = fidelity_encode_details(vae, image, dilate=1)
    expected_bad = torch.zeros(1, 1, 16, 16)
    expected_bad[..., 11:] = 1  # columns 12.. are bad, dilated by one cell
    torch.testing.assert_close(details.mask, 1 - expected_bad)
    bad = expected_bad.expand(1, 3, 16, 16).bool()
    assert torch.equal(details.latent[bad], details.plain[bad])
    assert torch.equal(details.latent[~bad], (details.plain + details.compensation)[~bad])
    no_dilate = fidelity_encode_details(vae, image, dilate=0)
    assert no_dilate.mask[..., 11].eq(1).all() and no_dilate.mask[..., 12].eq(0).all()


def test_fidelity_encode_on_a_real_tiny_autoencoder():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    ).eval()
    image = _image(size=32).repeat(2, 1, 1, 1)
    details = fidelity_encode_details(vae, image)
    assert details.latent.shape == (2, 4, 16, 16) and details.latent.dtype == torch.float32
    assert details.mask.shape == (2, 1, 16, 16)
    assert set(details.mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.isfinite(details.latent).all()
    # Deterministic: the posterior mean, never a sample.
    torch.testing.assert_close(fidelity_encode(vae, image), details.latent)
    torch.testing.assert_close(
        encode_mean(vae, image), vae.encode(image).latent_dist.mean * vae.config.scaling_factor
    )
    assert decode(vae, details.latent).shape == image.shape


# ------------------------------------------------------------------- colour


def test_match_colours_lab_matches_reference_histograms():
    import cv2

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:64, 0:64]
    base = np.stack([xx * 3, yy * 3, (xx + yy) * 1.5], -1) + rng.normal(0, 8, (64, 64, 3))
    image = np.clip(base + 20, 0, 255).astype(np.uint8)
    # The reference: the same kind of content, darker and tinted warm.
    reference = np.clip(base * [0.9, 0.7, 0.5] + [60, 30, 10], 0, 255).astype(np.uint8)
    out = match_colours_lab(image, reference)
    assert out.shape == image.shape and out.dtype == np.uint8
    lab_out = cv2.cvtColor(out, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(float)
    lab_ref = cv2.cvtColor(reference, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(float)
    lab_in = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(float)
    assert np.abs(lab_out.mean(0) - lab_ref.mean(0)).max() <= 1.0
    assert np.abs(lab_in.mean(0) - lab_ref.mean(0)).max() > 5  # it really had to move
    kept = cv2.cvtColor(match_colours_lab(image, reference, keep_lightness=True), cv2.COLOR_RGB2LAB)
    assert abs(kept[..., 0].mean() - lab_in[:, 0].mean()) <= 1.0


def test_an_anchor_that_is_also_the_previous_key_is_attended_once(unet, inputs, cross_frame):
    # Two copies of the same keys and values give the weights of one: one copy is used (half
    # the attention), with the same result as attending to both copies.
    latents, text = inputs
    store, _ = cross_frame
    anchor, current = latents[:1].repeat(2, 1, 1, 1), latents[1:2].repeat(2, 1, 1, 1)
    store_key(unet, store, anchor, text)
    layer = next(iter(store.layers("anchor")))
    recorded = store.tensors("anchor")[(layer, 0, 0)]
    store.set_mode("use")
    store.begin_step(0)
    like = recorded[None].expand(2, -1, -1)
    assert store.kv_features(layer, like).shape[1] == recorded.shape[0]
    once = run(unet, current, text)
    store._roles["previous"] = dict(store._roles["anchor"])  # equal, but not the same
    assert store.kv_features(layer, like).shape[1] == 2 * recorded.shape[0]
    torch.testing.assert_close(run(unet, current, text), once, atol=1e-5, rtol=1e-5)
