"""Text2Video-Zero on tiny random models: motion, schedule, cross-frame attention, chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import (
    build_tiny_controlnet,
    strong_controlnet,
    write_tiny_config_dir,
    write_tiny_diffusers,
    write_tiny_pix2pix,
)

from zvstudio.diffusion.loading import load_sd15_components
from zvstudio.errors import RenderCancelled, ZvsError
from zvstudio.generate import t2v_zero
from zvstudio.generate.t2v_zero import (
    FirstFrameAttnProcessor,
    FrameLayout,
    TextToVideoSettings,
    TextToVideoZero,
    chunks,
    first_frame_attention,
    fit_frame,
    motion_indices,
    motion_shift,
    renoise,
    translate_latents,
)
from zvstudio.progress import CancelToken

SETTINGS = TextToVideoSettings(
    prompt="a red cat", frames=5, steps=6, width=32, height=32, seed=4, motion_field=(64, 32)
)


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model = write_tiny_diffusers(root / "model")
    return load_sd15_components(model, config_dir=write_tiny_config_dir(root / "config"))


def symmetric_shift(array: np.ndarray, sx: int, sy: int) -> np.ndarray:
    """out(x, y) = in(x + sx, y + sy), reflecting (edge included) past the borders."""
    pad = max(abs(sx), abs(sy))
    padded = np.pad(array, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="symmetric")
    height, width = array.shape[-2:]
    return padded[..., pad + sy : pad + sy + height, pad + sx : pad + sx + width]


# -- motion -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [(2, 1), (-3, 0), (0, -2), (5, 4)])
def test_translation_moves_a_latent_by_exactly_the_shift(shift):
    latents = torch.randn(1, 4, 8, 10)
    moved = translate_latents(latents, [shift])
    assert torch.equal(moved, torch.from_numpy(symmetric_shift(latents.numpy(), *shift)))


def test_translation_rounds_fractional_shifts_to_the_nearest_pixel():
    latents = torch.randn(2, 4, 8, 8)
    moved = translate_latents(latents, [(1.25, 0.0), (2.75, -1.2)])
    expected = [
        symmetric_shift(latents[i : i + 1].numpy(), *s) for i, s in enumerate([(1, 0), (3, -1)])
    ]
    assert torch.equal(moved, torch.from_numpy(np.concatenate(expected)))


def test_motion_field_is_a_fraction_of_the_frame():
    # 12 px per frame at 512 px: 1.5 latent px per frame with SD1.5's 64-px latents.
    assert motion_shift(1, (12, 12), (64, 64)) == (1.5, 1.5)
    assert motion_shift(4, (16, 8), (64, 64)) == (8.0, 4.0)
    # The same fraction on a half-size frame, and x and y scale with width and height.
    assert motion_shift(4, (16, 8), (32, 32)) == (4.0, 2.0)
    assert motion_shift(2, (32, 32), (16, 48)) == (6.0, 2.0)
    assert motion_shift(0, (12, 12), (64, 64)) == (0.0, 0.0)


def test_each_frame_starts_from_frame_0_moved_by_its_absolute_id(components, monkeypatch):
    """Frame k enters the joint denoising as frame 0's x_t0 translated by k·δ (re-noising is
    disabled here to see the warp); frame 0 enters with its own x_t1."""
    monkeypatch.setattr(t2v_zero, "renoise", lambda x, noise, a0, a1: x)
    calls = []  # (step indices, input latents, output latents) of every denoising run
    original = t2v_zero._Denoise.steps

    def spy(self, latents, indices, condition):
        result = original(self, latents.clone(), indices, condition)
        calls.append((indices, latents.clone(), result.clone()))
        return result

    monkeypatch.setattr(t2v_zero._Denoise, "steps", spy)
    TextToVideoZero(components).latents(SETTINGS)
    scheduler = components.make_scheduler()
    scheduler.set_timesteps(SETTINGS.steps)
    i1, i0 = motion_indices(scheduler.timesteps, SETTINGS, 1000)
    (to_t1, _, x_t1), (to_t0, _, x_t0), (joint, start, _) = calls
    assert (to_t1, to_t0, joint) == (range(i1), range(i1, i0), range(i1, SETTINGS.steps))
    assert torch.equal(start[0], x_t1[0])
    for k in range(1, SETTINGS.frames):
        # 16 x 16 latents; δ = (64, 32) px at 512 is k·(2, 1) latent px.
        assert motion_shift(k, SETTINGS.motion_field, x_t0.shape[-2:]) == (2.0 * k, 1.0 * k)
        expected = symmetric_shift(x_t0.numpy(), 2 * k, k)
        assert np.array_equal(start[k : k + 1].numpy(), expected), k


def test_renoising_gives_the_marginal_of_t1():
    """x_t0 ~ q(x_t0 | x0) re-noised to t1 has q(x_t1 | x0)'s mean and variance."""
    a0, a1 = torch.tensor(0.30), torch.tensor(0.10)
    x0 = torch.full((200_000,), 0.8)
    generator = torch.Generator().manual_seed(0)
    x_t0 = a0.sqrt() * x0 + (1 - a0).sqrt() * torch.randn(x0.shape, generator=generator)
    x_t1 = renoise(x_t0, torch.randn(x0.shape, generator=generator), a0, a1)
    assert float(x_t1.mean()) == pytest.approx(float(a1.sqrt() * 0.8), abs=0.01)
    assert float(x_t1.var()) == pytest.approx(float(1 - a1), abs=0.01)


# -- the schedule -----------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [20, 25, 50, 100])
def test_t0_and_t1_stay_at_the_same_schedule_fractions_for_any_step_count(steps, components):
    scheduler = components.make_scheduler()
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    i1, i0 = motion_indices(timesteps, TextToVideoSettings(steps=steps), 1000)
    spacing = 1000 // steps
    assert abs(int(timesteps[i1]) - 940) <= spacing / 2 + 1
    assert abs(int(timesteps[i0]) - 880) <= spacing / 2 + 1
    assert 0 <= i1 < i0 < steps


def test_coarse_schedules_keep_t0_a_step_after_t1(components):
    scheduler = components.make_scheduler()
    scheduler.set_timesteps(10)  # 901, 801, ...: both fractions are nearest 901
    assert motion_indices(scheduler.timesteps, TextToVideoSettings(steps=10), 1000) == (0, 1)


def test_fifty_steps_give_the_papers_t1_47_and_t0_44(components):
    scheduler = components.make_scheduler()
    scheduler.set_timesteps(50)
    i1, i0 = motion_indices(scheduler.timesteps, TextToVideoSettings(), 1000)
    # The paper counts from the end: step 47 of 50 is index 50 - 1 - 47 = 2, 44 is index 5.
    assert (i1, i0) == (2, 5)


# -- cross-frame attention --------------------------------------------------------------------
def _unet_eps(unet, latents, embeddings):
    return unet(torch.cat([latents, latents]), 500, encoder_hidden_states=embeddings).sample


def test_frames_depend_on_frame_0_and_on_nothing_else(components):
    unet = components.unet
    torch.manual_seed(0)
    latents = torch.randn(4, 4, 16, 16)
    embeddings = torch.randn(8, 77, 32)
    with torch.no_grad(), first_frame_attention([unet], FrameLayout(groups=2)):
        base = _unet_eps(unet, latents, embeddings)
        changed = latents.clone()
        changed[2] += torch.randn(4, 16, 16)
        other = _unet_eps(unet, changed, embeddings)
        moved_first = latents.clone()
        moved_first[0] += torch.randn(4, 16, 16)
        first = _unet_eps(unet, moved_first, embeddings)
    for group in (0, 4):  # the negative and the positive guidance branch
        for k in (0, 1, 3):
            torch.testing.assert_close(other[group + k], base[group + k], rtol=0, atol=1e-5)
        assert not torch.allclose(other[group + 2], base[group + 2], atol=1e-3)
        for k in range(4):
            assert not torch.allclose(first[group + k], base[group + k], atol=1e-3)


def test_identical_frames_give_plain_self_attention_and_processors_are_restored(components):
    unet = components.unet
    before = dict(unet.attn_processors)
    torch.manual_seed(1)
    frame = torch.randn(1, 4, 16, 16)
    latents = frame.repeat(3, 1, 1, 1)
    embeddings = torch.randn(1, 77, 32).repeat(6, 1, 1)  # every frame sees the same prompt
    with torch.no_grad():
        plain = _unet_eps(unet, latents, embeddings)
        with first_frame_attention([unet], FrameLayout(groups=2)):
            installed = unet.attn_processors
            crossed = _unet_eps(unet, latents, embeddings)
    self_attention = [n for n in installed if n.endswith("attn1.processor")]
    assert self_attention and all(
        isinstance(installed[n], FirstFrameAttnProcessor) for n in self_attention
    )
    assert not any(
        isinstance(p, FirstFrameAttnProcessor) for n, p in installed.items() if "attn2" in n
    )
    torch.testing.assert_close(crossed, plain, rtol=0, atol=1e-5)
    assert {n: type(p) for n, p in unet.attn_processors.items()} == {
        n: type(p) for n, p in before.items()
    }


# -- chunking ---------------------------------------------------------------------------------
def test_chunks_hold_frame_0_and_absolute_ids():
    assert chunks(7, 3) == [[0, 1, 2], [0, 3, 4], [0, 5, 6]]
    assert chunks(6, 4) == [[0, 1, 2, 3], [0, 4, 5]]
    assert chunks(1, 8) == [[0]]
    assert chunks(3, 8) == [[0, 1, 2]]


def test_chunked_generation_equals_unchunked(components):
    generator = TextToVideoZero(components)
    whole = generator.latents(SETTINGS)  # chunk_size 8: one chunk of 5 frames
    for size in (2, 3):
        chunked = generator.latents(TextToVideoSettings(**{**vars(SETTINGS), "chunk_size": size}))
        torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-4)


# -- the whole clip ---------------------------------------------------------------------------
def test_generates_a_deterministic_moving_clip_with_progress(components):
    events = []
    frames = TextToVideoZero(components).generate(SETTINGS, progress=events.append)
    assert len(frames) == 5
    assert all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in frames)
    scheduler = components.make_scheduler()
    scheduler.set_timesteps(SETTINGS.steps)
    i1, i0 = motion_indices(scheduler.timesteps, SETTINGS, 1000)
    total = i0 + (SETTINGS.steps - i1)  # frame 0's warm-up, then one joint chunk
    steps = [e for e in events if e.stage == "generate"]
    assert [e.done for e in steps] == list(range(1, total + 1))
    assert {e.total for e in steps} == {total}
    decoded = [e for e in events if e.stage == "decode"]  # then each frame, with its preview
    assert [(e.done, e.total) for e in decoded] == [(n, 5) for n in range(1, 6)]
    assert all(np.array_equal(e.image, f) for e, f in zip(decoded, frames, strict=True))
    assert events[-5:] == decoded
    assert not np.array_equal(frames[0], frames[-1])  # the motion field moved the scene
    again = TextToVideoZero(components).generate(SETTINGS)
    assert all(np.array_equal(a, b) for a, b in zip(frames, again, strict=True))
    other_seed = TextToVideoZero(components).generate(
        TextToVideoSettings(**{**vars(SETTINGS), "seed": 5})
    )
    assert not np.array_equal(other_seed[0], frames[0])


def test_cancel_stops_generation(components):
    token = CancelToken()

    def cancel_after_two(event):
        if event.done == 2:
            token.cancel()

    with pytest.raises(RenderCancelled):
        TextToVideoZero(components).generate(SETTINGS, progress=cancel_after_two, cancel=token)
    # The model's attention processors are back: a plain call works as before.
    assert not any(
        isinstance(p, FirstFrameAttnProcessor) for p in components.unet.attn_processors.values()
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"frames": 0}, "at least one frame"),
        ({"steps": 2}, "at least 3 steps"),
        ({"width": 30}, "multiples of 8"),
        ({"t0": 0.95}, "t0 < t1"),
        ({"chunk_size": 1}, "chunks"),
        ({"clip_skip": 0}, "clip skip must be between 1"),
        ({"prompt": "a [cat|dog]"}, "reads one prompt throughout"),
    ],
)
def test_bad_settings_are_refused_before_any_work(components, changes, message):
    with pytest.raises(ZvsError, match=message):
        TextToVideoZero(components).latents(TextToVideoSettings(**{**vars(SETTINGS), **changes}))


# -- ControlNet video -------------------------------------------------------------------------
def _control_clip(count: int) -> list[np.ndarray]:
    frames = []
    for n in range(count):
        frame = np.full((48, 64, 3), 30, np.uint8)
        frame[10:30, 5 + 6 * n : 25 + 6 * n] = 230  # a square moving right
        frames.append(frame)
    return frames


def test_controlnet_video_follows_each_frames_edges(components):
    controlnet = strong_controlnet(components.unet)
    generator = TextToVideoZero(components, [controlnet])
    settings = TextToVideoSettings(**{**vars(SETTINGS), "frames": 3, "controlnet_scale": 1.0})
    still = generator.latents(settings, [_control_clip(1)[0]] * 3)
    # The same start latent and the same edges: every frame is frame 0 (up to float rounding
    # of a different batch position).
    for k in (1, 2):
        torch.testing.assert_close(still[k], still[0], rtol=0, atol=1e-3)
    moving = generator.latents(settings, _control_clip(3))
    torch.testing.assert_close(moving[0], still[0], rtol=0, atol=1e-3)  # frame 0 is the same
    assert (moving[2] - still[2]).abs().max() > 0.05  # its own edges moved frame 2
    assert not any(
        isinstance(p, FirstFrameAttnProcessor) for p in controlnet.attn_processors.values()
    )


def test_controlnet_needs_enough_input_frames(components):
    generator = TextToVideoZero(components, [build_tiny_controlnet(components.unet)])
    with pytest.raises(ZvsError, match="needs 5 input frames, the clip gives 2"):
        generator.latents(SETTINGS, _control_clip(2))
    with pytest.raises(ZvsError, match="only through a ControlNet"):
        TextToVideoZero(components).latents(SETTINGS, _control_clip(5))


def test_input_frames_are_fitted_without_stretching():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, 50:150] = 255  # the centre half of a 2:1 frame
    fitted = fit_frame(frame, (64, 64))
    assert fitted.shape == (64, 64, 3)
    assert fitted[:, 2:-2].min() == 255  # cropped to the centre: all white, not squeezed


# -- Video Instruct-Pix2Pix -------------------------------------------------------------------
@pytest.fixture(scope="module")
def pix2pix(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip2p")
    return write_tiny_pix2pix(root / "model"), write_tiny_config_dir(root / "config")


def test_an_instruct_pix2pix_model_is_refused_where_it_cannot_work(pix2pix):
    from zvstudio.diffusion.identify import unet_input_channels

    model, config = pix2pix
    assert unet_input_channels(model) == 8
    with pytest.raises(ZvsError, match="InstructPix2Pix") as err:
        load_sd15_components(model, config_dir=config)  # the key renderer's default: 4 inputs
    assert "--video" in err.value.hint


def test_video_instruct_pix2pix_edits_each_frame_of_the_clip(pix2pix, monkeypatch):
    model, config = pix2pix
    components = load_sd15_components(model, config_dir=config, unet_inputs=(8,))
    generator = TextToVideoZero(components)
    assert generator.instruct and generator.layout.groups == 3
    settings = TextToVideoSettings(**{**vars(SETTINGS), "frames": 3, "image_guidance_scale": 2.0})
    calls = []
    forward = components.unet.forward
    monkeypatch.setattr(
        components.unet,
        "forward",
        lambda sample, t, **kw: (
            calls.append((sample.clone(), kw["encoder_hidden_states"])) or forward(sample, t, **kw)
        ),
    )
    clip = _control_clip(3)
    edited = generator.latents(settings, clip)
    sample, context = calls[0]
    # Three guidance branches of 3 frames: noise + the frames' image latents, none in the last.
    assert sample.shape == (9, 8, 16, 16)
    noise, images = sample[:, :4], sample[:, 4:]
    assert torch.equal(noise[:3], noise[3:6]) and torch.equal(noise[3:6], noise[6:])
    assert torch.equal(images[:3], images[3:6]) and not images[6:].any()
    assert not torch.equal(images[0], images[2])  # each frame brings its own image
    assert torch.equal(context[0], context[2]) and not torch.equal(context[0], context[3])
    assert torch.equal(context[3], context[6])  # the last two branches: no instruction
    # Identical input frames: identical edits; frame 0 ignores what later frames show.
    still = generator.latents(settings, [clip[0]] * 3)
    torch.testing.assert_close(still[2], still[0], rtol=0, atol=1e-3)
    torch.testing.assert_close(edited[0], still[0], rtol=0, atol=1e-3)
    assert (edited[2] - still[2]).abs().max() > 1e-2
    looser = generator.latents(
        TextToVideoSettings(**{**vars(settings), "image_guidance_scale": 1.0}), clip
    )
    assert (looser - edited).abs().max() > 1e-3
    with pytest.raises(ZvsError, match="needs 3 input frames"):
        generator.latents(settings, clip[:1])


def test_only_frame_0_is_projected_to_keys_and_values(components):
    """Every frame's keys and values are frame 0's: the projections run on frame 0 alone."""
    unet = components.unet
    name, layer = next((n, m) for n, m in unet.named_modules() if n.endswith("attn1"))
    rows = []
    hook = layer.to_k.register_forward_hook(lambda module, args, out: rows.append(args[0].shape))
    try:
        with torch.no_grad(), first_frame_attention([unet], FrameLayout(groups=2)):
            _unet_eps(unet, torch.randn(4, 4, 16, 16), torch.randn(8, 77, 32))
    finally:
        hook.remove()
    assert rows and rows[0][0] == 2, (name, rows)  # one frame 0 per guidance branch, not 8
