"""DynamiCrafter sampling, tokenizer, preprocessing, job and benchmark on tiny random models.

The models are the tiny configs of part 1 at 32x24 (a 16x12 latent), built with random
weights on the CPU; the job test writes a synthetic checkpoint in the released key names
(`test_dynamicrafter_model.released_checkpoint`). The network is blocked by conftest.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from zvstudio.bench.dynamicrafter import random_models, run_dynamicrafter_benchmark
from zvstudio.diffusion.tokenizer import find_bpe_file
from zvstudio.errors import RenderCancelled, ZvsError
from zvstudio.generate.dynamicrafter.config import tiny
from zvstudio.generate.dynamicrafter.job import (
    DynamiCrafterRequest,
    animate_dynamicrafter,
    guess_preset,
    resolve_preset,
)
from zvstudio.generate.dynamicrafter.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    clip_image_input,
    frame_pixels,
)
from zvstudio.generate.dynamicrafter.sampler import (
    DynamiCrafterSampler,
    DynamiCrafterSettings,
    frame_image_tokens,
)
from zvstudio.generate.dynamicrafter.schedule import ddim_schedule, ddim_step
from zvstudio.generate.dynamicrafter.tokenizer import (
    OpenCLIPTokenizer,
    load_open_clip_tokenizer,
    tokenizer_for,
)
from zvstudio.generate.dynamicrafter.unet3d import unet_input
from zvstudio.generate.t2v_zero import fit_frame
from zvstudio.progress import CancelToken

FRAMES = 4  # the tiny resampler's video length


# Tiny tensors: one thread beats two fighting over a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small(name: str = "512"):
    """The tiny config of a preset at 32x24 (its VAE shrinks by 2: a 16x12 latent)."""
    return replace(tiny(name), width=32, height=24)


_MODELS: dict[str, object] = {}


def sampler_for(name: str = "512") -> DynamiCrafterSampler:
    config = small(name)
    if name not in _MODELS:
        _MODELS[name] = random_models(config, torch.device("cpu"), torch.float32, seed=1)
    return DynamiCrafterSampler(_MODELS[name], config)


def picture(width: int = 50, height: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8), (width, height))
    return np.ascontiguousarray(image)


def settings(**changes) -> DynamiCrafterSettings:
    base = DynamiCrafterSettings(prompt="a photo of a cat", frames=FRAMES, steps=3, seed=7)
    return replace(base, **changes)


class Recorder:
    """Records every UNet call's input, timestep, context and fs (a forward pre-hook)."""

    def __init__(self, unet: nn.Module) -> None:
        self.calls: list[dict] = []
        self.handle = unet.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        sample, timesteps, context = args
        self.calls.append(
            {"sample": sample.clone(), "t": timesteps, "context": context, "fs": kwargs["fs"]}
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def posterior_latents(sampler, images, seed):
    """The image latents by hand: the VAE posterior's mean + std * noise, noise drawn in
    order from the seed's generator, times the SD scale factor."""
    generator = torch.Generator().manual_seed(seed)
    size = (sampler.config.width, sampler.config.height)
    latents = []
    with torch.no_grad():
        for image in images:
            dist = sampler.models.vae.encode(frame_pixels(image, size)).latent_dist
            noise = torch.randn(dist.mean.shape, generator=generator)
            latents.append((dist.mean + dist.std * noise) * 0.18215)
    return latents


# =================================================================================== tokenizer


def _openai_simple_tokenizer():
    """OpenAI CLIP's own tokenizer, loaded from the installed package's file (its package
    __init__ needs torchvision); the BPE OpenCLIP uses is the same."""
    path = find_bpe_file().with_name("simple_tokenizer.py")
    if not path.is_file():
        pytest.skip("no CLIP simple_tokenizer.py beside the vocabulary")
    spec = importlib.util.spec_from_file_location("clip_simple_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def test_tokenizer_matches_open_clip_tokenize():
    tokenizer = load_open_clip_tokenizer()
    ids = tokenizer("a photo of a cat")
    assert ids.shape == (1, 77) and ids.dtype == torch.long
    # Known CLIP ids: SOT, a, photo, of, a, cat, EOT, then OpenCLIP's zero padding.
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (ids[0, 7:] == 0).all()
    reference = _openai_simple_tokenizer()
    texts = [
        "  A   Photo &amp; of a CAT!!  ",
        "Über-schön café, 2024's 3.5 dogs; don't <stop>",
        "astronaut riding a horse\non the moon",
        "",
    ]
    for text in texts:
        expected = [49406, *reference.encode(text), 49407]
        row = tokenizer(text)[0].tolist()
        assert row[: len(expected)] == expected, text
        assert set(row[len(expected) :]) <= {0}
    # Too long: cut to 77 with EOT last (open_clip.tokenize).
    long = " ".join(["cat"] * 100)
    row = tokenizer([long, "dog"])[0].tolist()
    assert row[0] == 49406 and row[-1] == 49407 and row[1:76] == [2368] * 75


def test_tokenizer_for_tiny_text_towers_stays_in_their_vocabulary():
    config = small()
    tokenizer = tokenizer_for(config)
    assert tokenizer.context_length == config.text.context_length == 5
    ids = tokenizer(["a photo of a cat", ""])
    size = config.text.vocab_size
    assert ids.shape == (2, 5) and int(ids.max()) < size
    assert ids[0, 0] == size - 2 and ids[0, -1] == size - 1  # cut: EOT stays last
    assert ids[1].tolist() == [size - 2, size - 1, 0, 0, 0]
    merges = ["c a", "ca t</w>"]
    assert OpenCLIPTokenizer(merges).encode("cat") == [512 + 1]  # bytes, then the merges


# ============================================================================== preprocessing


def test_clip_preprocessing_squeezes_antialiased_and_normalises():
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
        _resize_with_antialiasing,
    )

    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 320, 512, generator=generator) * 2 - 1
    out = clip_image_input(pixels)
    assert out.shape == (2, 3, 224, 224)
    # Independent reference: diffusers' copy of kornia's anti-aliased resize (as released).
    mean = torch.tensor(CLIP_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).reshape(1, 3, 1, 1)
    expected = ((_resize_with_antialiasing(pixels, (224, 224)) + 1) / 2 - mean) / std
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # The guidance branch's zero frame is mid grey: (0.5 - mean) / std everywhere.
    grey = clip_image_input(torch.zeros(1, 3, 256, 256))
    torch.testing.assert_close(grey, ((0.5 - mean) / std).expand(1, 3, 224, 224))
    # Black left third, white right: squeezed (not cropped) keeps the edge at a third.
    edge = torch.ones(1, 3, 320, 512)
    edge[..., : 512 // 3] = -1
    row = clip_image_input(edge)[0, 0, 112]
    dark, light = (0 - CLIP_MEAN[0]) / CLIP_STD[0], (1 - CLIP_MEAN[0]) / CLIP_STD[0]
    assert torch.allclose(row[:70], torch.tensor(dark), atol=1e-4)
    assert torch.allclose(row[80:], torch.tensor(light), atol=1e-4)


def test_frames_are_fitted_without_stretching():
    image = picture(90, 30)
    pixels = frame_pixels(image, (32, 24))
    assert pixels.shape == (1, 3, 24, 32) and pixels.dtype == torch.float32
    assert pixels.min() >= -1 and pixels.max() <= 1
    fitted = fit_frame(image, (32, 24)).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(pixels[0].permute(1, 2, 0).numpy(), fitted, atol=1e-6)


# ================================================================================== sampling


def test_a_seed_gives_the_same_clip_and_another_seed_another():
    sampler = sampler_for("512")
    image = picture()
    first = sampler.animate(image, settings())
    assert len(first) == FRAMES
    assert all(f.shape == (24, 32, 3) and f.dtype == np.uint8 for f in first)
    again = sampler.animate(image, settings())
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other = sampler.animate(image, settings(seed=8))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_the_image_latent_is_concatenated_to_every_frame():
    sampler = sampler_for("512")
    image = picture()
    with Recorder(sampler.models.unet) as recorder:
        sampler.animate(image, settings())
    (latent,) = posterior_latents(sampler, [image], seed=7)
    assert len(recorder.calls) == 3  # one batched call (guided + unguided) per step
    for call in recorder.calls:
        sample = call["sample"]
        assert sample.shape == (2, 8, FRAMES, 12, 16)  # both guidance branches
        for branch in range(2):
            for frame in range(FRAMES):
                torch.testing.assert_close(sample[branch, 4:, frame], latent[0])
        assert torch.equal(sample[0, :4], sample[1, :4])  # the same noisy latent
        assert call["fs"].tolist() == [24, 24]  # the 512 model's default frame rate
    assert [int(c["t"][0]) for c in recorder.calls] == [999, 666, 332]  # trailing steps


@pytest.mark.parametrize("mode", ["interpolate", "loop"])
def test_interpolation_and_loops_condition_the_first_and_last_frames(mode):
    sampler = sampler_for("512_interp")
    first, last = picture(seed=1), picture(seed=2)
    chosen = settings(mode=mode, frames=5)
    with Recorder(sampler.models.unet) as recorder:
        frames = sampler.animate(first, chosen, last if mode == "interpolate" else None)
    images = [first, last] if mode == "interpolate" else [first]
    latents = posterior_latents(sampler, images, seed=7)
    end = latents[-1] if mode == "interpolate" else latents[0]
    for call in recorder.calls:
        condition = call["sample"][:, 4:]
        for branch in range(2):
            torch.testing.assert_close(condition[branch, :, 0], latents[0][0])
            torch.testing.assert_close(condition[branch, :, -1], end[0])
            assert (condition[branch, :, 1:-1] == 0).all()
        assert call["fs"].tolist() == [5, 5]  # the interpolation model's default
    # A loop drops its last frame (the first again); an interpolation keeps both ends.
    assert len(frames) == (4 if mode == "loop" else 5)


class FakeUNet(nn.Module):
    """A stand-in denoiser whose output depends non-linearly on the input and the context,
    so the guided and rescaled combination can be recomputed by hand."""

    def forward(self, sample, timesteps, context, fs=None):
        # The mean magnitude, not the sum: layer-normed text features sum to about zero, and a
        # sum of the rest saturates tanh for some random initialisations (both left the
        # conditional and unconditional outputs equal, so guidance had nothing to rescale).
        weight = 1 + context.float().abs().mean(dim=(1, 2)).reshape(-1, 1, 1, 1, 1)
        return torch.tanh(sample[:, :4]) * weight * 3 + 0.25 * sample[:, 4:]


@pytest.mark.parametrize("rescale", [None, 0.0])
def test_guidance_and_guidance_rescale_match_a_hand_computation(rescale):
    base = sampler_for("512")
    sampler = DynamiCrafterSampler(replace(base.models, unet=FakeUNet()), base.config)
    chosen = settings(steps=1, eta=0.0, guidance_scale=5.0, guidance_rescale=rescale)
    image = picture()
    with torch.no_grad():
        cond = sampler.conditioning(image, chosen)
        got = sampler.sample(cond, chosen)
        # The contexts: prompt + image tokens; empty prompt + image tokens of a zero frame.
        size = (32, 24)
        text = sampler.encode_text([chosen.prompt])
        tokens = sampler.image_tokens(frame_pixels(image, size), FRAMES)
        torch.testing.assert_close(cond.context, torch.cat([text, tokens], dim=1))
        empty = sampler.encode_text([""])
        zero_tokens = sampler.image_tokens(torch.zeros(1, 3, 24, 32), FRAMES)
        torch.testing.assert_close(cond.uncond_context, torch.cat([empty, zero_tokens], dim=1))
        # One step by hand from the seed's first draw.
        x = torch.randn(1, 4, FRAMES, 12, 16, generator=torch.Generator().manual_seed(7))
        fake = FakeUNet()
        a = fake(unet_input(x, cond.condition), 999, cond.context)
        b = fake(unet_input(x, cond.condition), 999, cond.uncond_context)
        guided = b + 5.0 * (a - b)
        factor = 0.7 if rescale is None else 0.0  # the 512 preset's 0.7 by default
        ratio = a.flatten().std() / guided.flatten().std()
        expected_out = factor * guided * ratio + (1 - factor) * guided
        schedule = ddim_schedule(sampler.config.schedule, 1, 0.0)
        expected, _ = ddim_step(x, expected_out, schedule, 0, "v")
    torch.testing.assert_close(got, expected)
    unrescaled, _ = ddim_step(x, guided, schedule, 0, "v")
    assert torch.allclose(got, unrescaled) == (factor == 0.0)


def test_guidance_scale_one_runs_the_conditional_branch_only():
    sampler = sampler_for("256")
    with Recorder(sampler.models.unet) as recorder:
        sampler.animate(picture(), settings(guidance_scale=1.0, fs=5, steps=2))
    assert [c["sample"].shape[0] for c in recorder.calls] == [1, 1]
    assert recorder.calls[0]["fs"].tolist() == [5]
    assert [int(c["t"][0]) for c in recorder.calls] == [501, 1]  # SD's uniform steps


def test_progress_reports_steps_then_decoded_frames():
    sampler = sampler_for("512")
    events = []
    sampler.animate(picture(), settings(decode_chunk=3), progress=events.append)
    stages = [(e.stage, e.done, e.total) for e in events]
    assert stages == [
        ("animate", 0, 3),
        ("animate", 1, 3),
        ("animate", 2, 3),
        ("animate", 3, 3),
        ("decode", 3, 4),
        ("decode", 4, 4),
    ]
    assert events[-1].image.shape == (24, 32, 3)


@pytest.mark.parametrize("stage", ["animate", "decode"])
def test_cancel_stops_the_run(stage):
    sampler = sampler_for("512")
    cancel = CancelToken()
    calls = []

    def progress(event):
        calls.append(event.stage)
        if event.stage == stage and event.done == 1 + (stage == "decode"):
            cancel.cancel()

    with Recorder(sampler.models.unet) as recorder, pytest.raises(RenderCancelled):
        sampler.animate(picture(), settings(decode_chunk=2), progress=progress, cancel=cancel)
    assert len(recorder.calls) == (1 if stage == "animate" else 3)
    assert calls.count("decode") == (0 if stage == "animate" else 1)


def test_settings_and_modes_the_model_cannot_do_are_refused():
    sampler = sampler_for("512")
    interp = sampler_for("512_interp")
    image = picture()
    with pytest.raises(ZvsError, match="interpolation model"):
        sampler.animate(image, settings(mode="loop"))
    with pytest.raises(ZvsError, match="interpolations and loops"):
        interp.animate(image, settings())
    with pytest.raises(ZvsError, match="last image"):
        interp.animate(image, settings(mode="interpolate"))
    with pytest.raises(ZvsError, match="only used to interpolate"):
        sampler.animate(image, settings(), last_image=image)
    for bad in (dict(frames=1), dict(steps=0), dict(eta=-1), dict(guidance_rescale=2.0)):
        with pytest.raises(ZvsError):
            settings(**bad).check()
    with pytest.raises(ZvsError, match="unknown"):
        settings(mode="zoom").check()


def test_other_frame_counts_take_the_nearest_frames_image_tokens():
    tokens = torch.arange(4 * 2, dtype=torch.float32).reshape(1, 8, 1)  # 4 frames x 2 tokens
    assert frame_image_tokens(tokens, 4, 2) is tokens
    assert frame_image_tokens(tokens, 2, 2).flatten().tolist() == [0, 1, 6, 7]
    seven = frame_image_tokens(tokens, 7, 2).flatten().tolist()
    assert seven == [0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7]  # f * 3 / 6, halves up
    sampler = sampler_for("512")
    with Recorder(sampler.models.unet) as recorder:
        frames = sampler.animate(picture(), settings(frames=6, steps=1))
    assert len(frames) == 6
    text, per_frame = sampler.config.unet.text_tokens, sampler.config.unet.tokens_per_frame
    assert recorder.calls[0]["context"].shape[1] == text + 6 * per_frame


# ======================================================================================= job


def test_the_job_writes_a_clip_from_a_released_layout_checkpoint(tmp_path):
    from test_dynamicrafter_model import write_released_checkpoint

    from zvstudio.media import probe

    config = small("512")
    checkpoint = write_released_checkpoint(tmp_path / "dynamicrafter_512_v1", config)
    image_path = tmp_path / "still.png"
    cv2.imwrite(str(image_path), picture(64, 48)[:, :, ::-1])
    output = tmp_path / "clip.mp4"
    events, lines = [], []
    request = DynamiCrafterRequest(
        checkpoint, None, settings(steps=2), image_path, output, device="cpu", config=config
    )
    result = animate_dynamicrafter(request, events.append, log=lines.append)
    assert result.output == output and result.frames == FRAMES and result.seconds > 0
    info = probe(output)
    assert (info.width, info.height, info.frame_count, info.fps) == (32, 24, FRAMES, 8)
    assert {e.stage for e in events} == {"animate", "decode"}
    assert "DynamiCrafter 512" in lines[0] and "cpu" in lines[0]


def test_the_job_refuses_bad_checkpoints_before_loading(tmp_path):
    image_path = tmp_path / "still.png"
    cv2.imwrite(str(image_path), picture())
    output = tmp_path / "clip.mp4"

    def request(checkpoint, preset="512", chosen=None):
        chosen = chosen or settings()
        return DynamiCrafterRequest(checkpoint, preset, chosen, image_path, output, device="cpu")

    with pytest.raises(ZvsError, match="not found"):
        animate_dynamicrafter(request(tmp_path / "missing.safetensors"))
    pickled = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}}, pickled)
    with pytest.raises(ZvsError, match="pickled"):
        animate_dynamicrafter(request(pickled))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ZvsError, match="not a readable"):
        animate_dynamicrafter(request(broken))
    with pytest.raises(ZvsError, match="cannot tell which") as error:
        animate_dynamicrafter(request(broken, preset=None))
    assert "512_interp" in error.value.hint
    with pytest.raises(ZvsError, match="no DynamiCrafter preset"):
        animate_dynamicrafter(request(broken, preset="2048"))
    with pytest.raises(ZvsError, match="last image"):
        animate_dynamicrafter(request(broken, "512_interp", settings(mode="interpolate")))
    assert not output.exists()


def test_presets_are_guessed_from_released_names():
    assert guess_preset(Path("ckpts/dynamicrafter_1024_v1/model.ckpt")) == "1024"
    assert guess_preset(Path("dynamicrafter_512_interp_v1/model.ckpt")) == "512_interp"
    assert guess_preset(Path("x/dynamicrafter_256.safetensors")) == "256"
    assert guess_preset(Path("DynamiCrafter-512.safetensors")) == "512"
    assert guess_preset(Path("checkpoints/model.ckpt")) is None
    assert guess_preset(Path("dc_5120/model.ckpt")) is None
    assert resolve_preset(Path("model.ckpt"), "1024") == "1024"


# ================================================================================= benchmark


def test_the_benchmark_reports_time_and_memory_on_the_tiny_model():
    report = run_dynamicrafter_benchmark(frames=2, steps=1, device="cpu", tiny=True)
    assert report["benchmark"] == "dynamicrafter"
    assert report["settings"]["preset"] == "tiny-512" and report["settings"]["dtype"] == "float32"
    assert report["frames_made"] == 2 and report["seconds"] > 0
    assert report["seconds_per_frame"] == pytest.approx(report["seconds"] / 2, rel=1e-2)
    assert report["peak_gpu_mb"] is None and report["target_met"] is None
    assert report["target_seconds"] == 10.0 and report["reference"]["seconds"] == 20.0
    assert set(report["parameters_millions"]) == {
        "unet",
        "image_proj",
        "text_encoder",
        "image_encoder",
        "vae",
    }
    assert {"machine", "model_build_seconds", "peak_ram_mb", "seconds_per_step"} <= set(report)
