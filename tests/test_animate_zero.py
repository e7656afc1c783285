"""AnimateZero on tiny random models: the still pins frame 0, every frame attends to the
still's spatial features, the motion module's window attention is causal with the specified
positions, and motion modules load from the layouts users have."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from tiny_models import (
    build_tiny_motion_adapter,
    write_tiny_config_dir,
    write_tiny_diffusers,
    write_tiny_motion_single_file,
    write_tiny_single_file,
)

from zvstudio.diffusion.attention import select_self_attention_layers
from zvstudio.diffusion.encoding import decode, encode_mean
from zvstudio.diffusion.loading import load_sd15_components
from zvstudio.diffusion.sampler import seeded_noise
from zvstudio.errors import RenderCancelled, ZvsError
from zvstudio.generate.animate_zero import AnimateSettings, animate, load_motion_adapter
from zvstudio.generate.motion import (
    WindowAttnProcessor,
    install_window_attention,
    motion_modules,
    window_layout,
)
from zvstudio.progress import CancelToken

SETTINGS = AnimateSettings(prompt="a red cat", frames=3, steps=2, seed=5, width=16, height=12)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return write_tiny_diffusers(root / "model"), write_tiny_config_dir(root / "config")


@pytest.fixture(scope="module")
def components(folders):
    return load_sd15_components(folders[0], config_dir=folders[1])


@pytest.fixture(scope="module")
def adapter():
    return build_tiny_motion_adapter()


def recorder(adapter):
    """An on_step callback and the video latents it records, by step; it also checks that
    every motion module has window attention while the video is sampled."""
    seen: dict[int, torch.Tensor] = {}

    def on_step(index, latents):
        seen[index] = latents.clone()
        for module in motion_modules(adapter).values():
            assert isinstance(module.transformer_blocks[0].attn1.processor, WindowAttnProcessor)

    return on_step, seen


def state(components):
    """What animate() must leave as it found it."""
    return dict(components.unet.attn_processors)


# ------------------------------------------------------------------- window attention


def test_window_layout_pads_with_frame_0_and_ends_on_the_query_frame():
    assert window_layout(4, 0) == ((0, 0, 0, 0), (0, 1, 2, 3), 3)
    assert window_layout(4, 1) == ((0, 0, 0, 1), (0, 1, 2, 3), 3)
    assert window_layout(4, 3) == ((0, 1, 2, 3), (0, 1, 2, 3), 3)  # last frame: full attention
    assert window_layout(4, 3, window_length=2) == ((0, 0, 2, 3), (0, 1, 2, 3), 3)
    assert window_layout(4, 2, window_length=1) == ((0, 0, 0, 2), (0, 1, 2, 3), 3)


def _temporal_attention(adapter):
    block = adapter.down_blocks[0].motion_modules[0].transformer_blocks[0]
    return block.attn1, block.pos_embed.pe


@pytest.mark.parametrize("window_length", [None, 2])
def test_window_attention_is_plain_attention_on_the_padded_positioned_sequence(
    adapter, window_length
):
    attn, pe = _temporal_attention(adapter)
    frames = 6
    x = torch.randn(5, frames, attn.to_q.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = WindowAttnProcessor(pe, window_length)(attn, x)
        for i in range(frames):
            layout = window_layout(frames, i, window_length)
            # Frame i's query is the last slot's: ordinary attention on the padded sequence
            # with positions 0..F-1, read at the last token, is what frame i must get.
            padded = x[:, list(layout.frames)] + pe[:, list(layout.positions)]
            reference = AttnProcessor2_0()(attn, padded)[:, -1]
            torch.testing.assert_close(out[:, i], reference, atol=1e-5, rtol=1e-5)
        if window_length is None:  # the last frame sees all frames at the standard positions
            full = AttnProcessor2_0()(attn, x + pe[:, :frames])[:, -1]
            torch.testing.assert_close(out[:, -1], full, atol=1e-5, rtol=1e-5)
        # Frame 1 at its own (standard) position would be a different result.
        plain = AttnProcessor2_0()(attn, x[:, :2] + pe[:, :2])[:, -1]
        assert not torch.allclose(out[:, 1], plain, atol=1e-3)


def test_window_attention_is_causal(adapter):
    attn, pe = _temporal_attention(adapter)
    x = torch.randn(4, 5, attn.to_q.in_features, generator=torch.Generator().manual_seed(2))
    processor = WindowAttnProcessor(pe)
    with torch.no_grad():
        out = processor(attn, x)
        for later in range(1, 5):
            changed = x.clone()
            changed[:, later] += 1.0
            again = processor(attn, changed)
            torch.testing.assert_close(again[:, :later], out[:, :later], atol=0, rtol=0)
            assert not torch.allclose(again[:, later:], out[:, later:])


def test_window_placement_installs_and_restores(adapter):
    modules = motion_modules(adapter)
    before = {
        n: (m.transformer_blocks[0].pos_embed, m.transformer_blocks[0].attn1.processor)
        for n, m in modules.items()
    }
    installed = install_window_attention(adapter, "mid,up_blocks.1", window_length=3)
    assert installed.names == [
        "mid_block.motion_modules.0",
        *[n for n in modules if n.startswith("up_blocks.1.")],
    ]
    for name, module in modules.items():
        block = module.transformer_blocks[0]
        windowed = isinstance(block.attn1.processor, WindowAttnProcessor)
        assert windowed == (name in installed.names)
        assert isinstance(block.attn2.processor, WindowAttnProcessor) == windowed
        assert isinstance(block.pos_embed, torch.nn.Identity) == windowed
    installed.restore()
    after = {
        n: (m.transformer_blocks[0].pos_embed, m.transformer_blocks[0].attn1.processor)
        for n, m in modules.items()
    }
    assert after == before
    with pytest.raises(ValueError, match="no motion module"):
        install_window_attention(adapter, "sideways_blocks.0")


# ------------------------------------------------------------------------- the sampler


def plain_still_path(components, settings, size):
    """The still as plain SD1.5 DDIM with guidance would make it (no AnimateZero code)."""
    tokens = components.tokenizer(
        [settings.negative_prompt, settings.prompt],
        padding="max_length",
        max_length=components.tokenizer.model_max_length,
        return_tensors="pt",
    )
    context = components.text_encoder(tokens.input_ids)[0]
    scheduler = components.make_scheduler()
    scheduler.set_timesteps(settings.steps)
    latents = seeded_noise(torch.empty(1, 4, *size), settings.seed)
    path = [latents]
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = components.unet(torch.cat([latents, latents]), t, encoder_hidden_states=context)
            negative, positive = out.sample.chunk(2)
            noise = negative + settings.guidance_scale * (positive - negative)
            latents = scheduler.step(noise, t, latents).prev_sample
            path.append(latents)
    return path


def to_rgb(latent, vae):
    image = decode(vae, latent)[0]
    return ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def test_frame_0_is_the_still_at_every_step(components, adapter):
    before = state(components)
    on_step, seen = recorder(adapter)
    events = []
    frames = animate(components, adapter, SETTINGS, progress=events.append, on_step=on_step)
    assert state(components) == before
    assert len(frames) == 3 and frames[0].shape == (12, 16, 3) and frames[0].dtype == np.uint8
    still = plain_still_path(components, SETTINGS, (6, 8))  # tiny VAE: 2x; 12 -> 16 padded
    assert sorted(seen) == [0, 1, 2]
    for step, latents in seen.items():
        assert torch.equal(latents[:, :, 0], still[step]), step
    assert np.array_equal(frames[0], to_rgb(still[-1], components.vae)[:12])
    assert not np.array_equal(frames[1], frames[0])  # the other frames are not copies
    assert [(e.stage, e.done, e.total) for e in events] == [
        ("still", 1, 2),
        ("still", 2, 2),
        ("animate", 1, 2),
        ("animate", 2, 2),
        ("decode", 1, 3),
        ("decode", 2, 3),
        ("decode", 3, 3),
    ]
    assert events[-1].image is not None
    again = animate(components, adapter, SETTINGS)
    assert all(np.array_equal(a, b) for a, b in zip(frames, again, strict=True))


def test_every_frame_attends_to_the_still_features(components, adapter):
    """The inputs of every spatial attn1's key/value projections, in the video, are the
    still's features at the same step and layer, for each guidance branch and frame."""
    names = select_self_attention_layers(list(components.unet.attn_processors), "all")
    calls = []
    hooks = [
        components.unet.get_submodule(n.removesuffix(".processor")).to_k.register_forward_hook(
            lambda module, args, out: calls.append(args[0].detach().clone())
        )
        for n in names
    ]
    try:
        animate(components, adapter, SETTINGS)
    finally:
        for hook in hooks:
            hook.remove()
    frames = SETTINGS.frames
    still = [c for c in calls if c.shape[0] == 2]
    video = [c for c in calls if c.shape[0] == 2 * frames]
    assert len(still) == len(video) == len(names) * SETTINGS.steps
    for own, shared in zip(still, video, strict=True):
        assert torch.equal(
            shared.view(2, frames, *own.shape[1:]), own[:, None].expand(2, frames, *own.shape[1:])
        )


def test_a_given_image_is_inverted_and_pinned_as_frame_0(components, adapter):
    rng = np.random.default_rng(3)
    image = (rng.random((10, 14, 3)) * 255).astype(np.uint8)  # padded to 12 x 16
    on_step, seen = recorder(adapter)
    events = []
    frames = animate(components, adapter, SETTINGS, image, events.append, on_step=on_step)
    assert [f.shape for f in frames] == [(10, 14, 3)] * 3
    padded = np.pad(image, ((0, 2), (0, 2), (0, 0)), mode="reflect")
    pixels = torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 127.5 - 1
    z0 = encode_mean(components.vae, pixels)
    assert torch.equal(seen[SETTINGS.steps][:, :, 0], z0)
    assert np.array_equal(frames[0], to_rgb(z0, components.vae)[:10, :14])
    assert [e.stage for e in events][:4] == ["invert", "invert", "still", "still"]
    # Frame 0 follows the DDIM inversion of z0: each step's latent is the one below it moved
    # up one DDIM step with the noise the UNet predicts there (prompt only, no guidance).
    path = [seen[k][:, :, 0] for k in range(SETTINGS.steps)] + [z0]
    assert_ddim_inversion(components, SETTINGS, path)


def assert_ddim_inversion(components, settings, path):
    tokens = components.tokenizer(
        [settings.prompt],
        padding="max_length",
        max_length=components.tokenizer.model_max_length,
        return_tensors="pt",
    )
    context = components.text_encoder(tokens.input_ids)[0]
    scheduler = components.make_scheduler()
    scheduler.set_timesteps(settings.steps)
    timesteps = scheduler.timesteps
    for k, t in enumerate(timesteps):
        alpha = scheduler.alphas_cumprod[int(t)]
        below = (
            scheduler.alphas_cumprod[int(timesteps[k + 1])]
            if k + 1 < len(timesteps)
            else scheduler.final_alpha_cumprod
        )
        with torch.no_grad():
            noise = components.unet(path[k + 1], t, encoder_hidden_states=context).sample
        x0 = (path[k + 1] - (1 - below).sqrt() * noise) / below.sqrt()
        torch.testing.assert_close(path[k], alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise)


def test_cancel_stops_the_run_and_leaves_the_models_usable(components, adapter):
    before = state(components)
    token = CancelToken()

    def progress(event):
        if event.stage == "animate":
            token.cancel()

    with pytest.raises(RenderCancelled):
        animate(components, adapter, SETTINGS, progress=progress, cancel=token)
    assert state(components) == before
    for module in motion_modules(adapter).values():
        assert not isinstance(module.transformer_blocks[0].pos_embed, torch.nn.Identity)


def test_settings_the_motion_module_cannot_do_are_refused(components, adapter):
    with pytest.raises(ZvsError, match="at most 24 frames"):
        animate(components, adapter, AnimateSettings(frames=25))
    with pytest.raises(ZvsError, match="Window placement"):
        animate(components, adapter, AnimateSettings(window="sideways"))


def test_a_motion_module_for_another_unet_is_refused(components):
    before = state(components)
    wide = build_tiny_motion_adapter(block_out_channels=[64, 128])
    with pytest.raises(ZvsError, match="block widths") as error:
        animate(components, wide, SETTINGS)
    assert "[64, 128]" in str(error.value) and "[32, 64]" in str(error.value)
    assert state(components) == before


# --------------------------------------------------------------------------- loading


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_motion_modules_load_from_a_folder_and_an_original_file(adapter, tmp_path):
    adapter.save_pretrained(tmp_path / "folder")
    assert same_weights(load_motion_adapter(tmp_path / "folder"), adapter)
    single = write_tiny_motion_single_file(tmp_path / "mm_tiny.safetensors", adapter)
    loaded = load_motion_adapter(single)
    assert same_weights(loaded, adapter)
    assert loaded.config.motion_max_seq_length == 24  # read from the file's pos_encoder.pe


def test_pickled_motion_modules_are_refused_unless_allowed(adapter, tmp_path):
    single = write_tiny_motion_single_file(tmp_path / "mm.safetensors", adapter)
    from safetensors.torch import load_file

    pickled = tmp_path / "mm.ckpt"
    torch.save(load_file(single), pickled)
    with pytest.raises(ZvsError, match="pickled"):
        load_motion_adapter(pickled)
    assert same_weights(load_motion_adapter(pickled, allow_pickle=True), adapter)


def test_files_that_are_not_motion_modules_are_refused(folders, tmp_path):
    with pytest.raises(ZvsError, match="not found"):
        load_motion_adapter(tmp_path / "absent.safetensors")
    checkpoint = write_tiny_single_file(tmp_path / "model.safetensors")
    with pytest.raises(ZvsError, match="not an AnimateDiff motion module"):
        load_motion_adapter(checkpoint)
    with pytest.raises(ZvsError, match="full model folder"):
        load_motion_adapter(folders[0])


def test_a_bare_cuda_device_is_the_models_indexed_one(monkeypatch):
    # A plan's "cuda" and a module's "cuda:0" are one device (torch says they differ), so
    # AnimateZero must not take the model for offloaded on every GPU run.
    from zvstudio.generate.animate_zero import same_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert same_device("cuda", torch.device("cuda:1"))
    assert not same_device("cuda", torch.device("cuda:0"))  # not the current GPU
    assert same_device("mps", torch.device("mps:0"))
    assert same_device("cpu", torch.device("cpu"))
    assert not same_device("cuda:0", torch.device("cpu"))
