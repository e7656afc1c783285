"""A previewed key carries its settings as AUTOMATIC1111's PNG "parameters" text."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from zvstudio.diffusion.identify import short_hash
from zvstudio.diffusion.infotext import INFOTEXT_KEY, key_infotext
from zvstudio.diffusion.lora import LoraSpec
from zvstudio.diffusion.sampler import KeySettings
from zvstudio.engine.preview import DiffusionSpec
from zvstudio.media.writer import write_png


def test_the_infotext_reads_as_a1111_writes_it(tmp_path):
    model = tmp_path / "dreamshaper_8.safetensors"
    model.write_bytes(b"model")
    lora = tmp_path / "ink.safetensors"
    lora.write_bytes(b"lora")
    vae = tmp_path / "vae-ft-mse.safetensors"
    vae.write_bytes(b"vae")
    control = tmp_path / "control_v11p_sd15_canny.safetensors"
    spec = DiffusionSpec(model, None, (LoraSpec(lora, 0.6),), (control,), vae=vae)
    settings = KeySettings(
        prompt="an ink drawing, (cat:1.2)",
        negative_prompt="blurry",
        steps=20,
        guidance_scale=7.5,
        strength=0.75,
        seed=42,
        clip_skip=2,
    )
    text = key_infotext(
        spec, settings, (512, 384), {"Source clip": "walk, take 2.mp4", "Frame": 30}
    )
    prompt, negative, fields = text.split("\n")
    assert prompt == "an ink drawing, (cat:1.2) <lora:ink:0.6>"
    assert negative == "Negative prompt: blurry"
    assert fields == (
        f"Steps: 20, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 512x384, "
        f"Model hash: {short_hash(model)}, Model: dreamshaper_8, "
        f"VAE hash: {short_hash(vae)}, VAE: vae-ft-mse.safetensors, Denoising strength: 0.75, "
        'Clip skip: 2, ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny, '
        f'Weight: 0.7", Lora hashes: "ink: {short_hash(lora)}", '
        'Source clip: "walk, take 2.mp4", Frame: 30, Version: zvstudio '
        + fields.split("zvstudio ")[1]
    )
    # A plain model folder, no extras: only what was used is written.
    folder = tmp_path / "sd15"
    folder.mkdir()
    plain = key_infotext(DiffusionSpec(folder, None), KeySettings(prompt="a fox"), (64, 64))
    assert plain.split("\n")[0] == "a fox"
    assert "Model: sd15," in plain and "hash" not in plain and "Negative" not in plain
    assert "Clip skip" not in plain and "ControlNet" not in plain


def test_a_png_keeps_its_text(tmp_path):
    image = np.zeros((4, 6, 3), np.uint8)
    image[1, 2] = (255, 10, 0)
    path = tmp_path / "key.png"
    write_png(path, image, {INFOTEXT_KEY: "a café at night\nSteps: 4"})
    with Image.open(path) as png:
        assert png.text[INFOTEXT_KEY] == "a café at night\nSteps: 4"
        assert np.array_equal(np.asarray(png.convert("RGB")), image)
    write_png(path, image)  # without text: as before
    with Image.open(path) as png:
        assert INFOTEXT_KEY not in png.text


def test_preview_pngs_carry_their_seed(tmp_path):
    from helpers import make_clip
    from tiny_models import write_tiny_config_dir, write_tiny_diffusers

    from zvstudio.cli import main

    model = write_tiny_diffusers(tmp_path / "model")
    config = write_tiny_config_dir(tmp_path / "config")
    clip, _, _ = make_clip(tmp_path / "c.mp4", count=3, width=64, height=48)
    out = tmp_path / "key.png"
    args = ["preview", str(clip), "--frame", "1", "--model", str(model), "--config", str(config)]
    args += ["--prompt", "a red cat", "--steps", "2", "--seed", "5", "--seeds", "2"]
    assert main([*args, "--device", "cpu", "-q", "-o", str(out)]) == 0
    for seed in (5, 6):
        with Image.open(Path(f"{tmp_path / 'key'}_seed{seed}.png")) as png:
            text = png.text[INFOTEXT_KEY]
        assert text.startswith("a red cat\nSteps: 2, Sampler: DDIM")
        assert f"Seed: {seed}," in text and "Size: 64x48" in text and "Frame: 1" in text


def test_a_rendered_frames_parameters_are_its_keys(tmp_path):
    from zvstudio.engine.render import frame_infotext
    from zvstudio.engine.request import KeyRendererSpec, RenderRequest
    from zvstudio.keyrender import KeyParams

    model = tmp_path / "dreamshaper_8.safetensors"
    model.write_bytes(b"model")
    settings = KeySettings(prompt="a fox", seed=3, strength=0.6)
    request = RenderRequest(
        tmp_path / "walk.mp4",
        tmp_path / "out.mp4",
        KeyRendererSpec(kind="diffusion", diffusion=DiffusionSpec(model, settings)),
        key_params=((10, KeyParams(prompt="a wolf", seed=9)),),
    )
    keys = [0, 10, 20]
    # A key with overrides: its own prompt and seed, at the size its key rendered (the short
    # side down to 512).
    key = frame_infotext(request, 10, (1280, 720), keys)
    assert key.split("\n")[0] == "a wolf"
    assert "Seed: 9," in key and "Size: 910x512," in key and "Denoising strength: 0.6" in key
    assert "Source clip: walk.mp4, Frame: 10," in key and "Propagated" not in key
    # A propagated frame: the global settings and the keys it blends.
    between = frame_infotext(request, 13, (640, 360), keys)
    assert between.split("\n")[0] == "a fox"
    assert "Seed: 3," in between and "Size: 640x360," in between
    assert "Frame: 13, Propagated from: keys 10 and 20," in between
    after = frame_infotext(request, 25, (640, 360), keys)
    assert "Propagated from: keys 20," in after
    # Stylized keys have no such parameters.
    assert frame_infotext(replace(request, renderer=KeyRendererSpec()), 10, (64, 64), keys) is None
