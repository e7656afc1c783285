"""`zvstudio preview` end to end on tiny random models."""

from __future__ import annotations

import cv2
import pytest
import torch
from helpers import make_clip
from tiny_models import write_tiny_config_dir, write_tiny_diffusers

from zvstudio.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("preview")
    model = write_tiny_diffusers(root / "model")
    config = write_tiny_config_dir(root / "config")
    clip, _, _ = make_clip(root / "c.mp4", count=6, width=64, height=48)
    from diffusers import ControlNetModel

    from zvstudio.diffusion.loading import load_sd15_components

    torch.manual_seed(0)
    unet = load_sd15_components(model, config_dir=config).unet
    ControlNetModel.from_unet(unet, conditioning_channels=3).save_pretrained(root / "canny")
    return root, model, config, clip


def test_preview_writes_the_key_png(setup, capsys):
    root, model, config, clip = setup
    out = root / "key.png"
    args = [
        "preview",
        str(clip),
        "--frame",
        "3",
        "--model",
        str(model),
        "--config",
        str(config),
        "--prompt",
        "a red cat",
        "--steps",
        "4",
        "--device",
        "cpu",
        "-q",
        "-o",
        str(out),
    ]
    assert main(args) == 0
    image = cv2.imread(str(out))
    assert image.shape == (48, 64, 3)
    assert "Shape-aware fusion will not run" in capsys.readouterr().err  # strength 0.75
    assert (
        main([*args[:-2], "--controlnet", f"{root / 'canny'}:0.5", "-o", str(root / "key2.png")])
        == 0
    )
    assert cv2.imread(str(root / "key2.png")).shape == (48, 64, 3)
    # Rendered at 24 pixels on the short side and scaled to the frame's size: another key.
    assert main([*args[:-2], "--key-size", "24", "-o", str(root / "key3.png")]) == 0
    smaller = cv2.imread(str(root / "key3.png"))
    assert smaller.shape == (48, 64, 3) and not (smaller == image).all()
    # A key size of at least the short side renders at the frame's size, as the default 512
    # did for key.png.
    assert main([*args[:-2], "--key-size", "48", "-o", str(root / "key4.png")]) == 0
    assert (cv2.imread(str(root / "key4.png")) == image).all()
    # The prompt read from CLIP's layer before the last: another key.
    assert main([*args[:-2], "--clip-skip", "2", "-o", str(root / "key5.png")]) == 0
    assert not (cv2.imread(str(root / "key5.png")) == image).all()
    capsys.readouterr()
    assert main([*args[:-2], "--clip-skip", "3", "-o", str(root / "key6.png")]) == 1
    assert "more than the text encoder's 2 layers" in capsys.readouterr().err
    assert not (root / "key6.png").exists()


def test_preview_bad_input(setup, capsys):
    root, model, config, clip = setup
    base = [
        "preview",
        str(clip),
        "--model",
        str(model),
        "--config",
        str(config),
        "--steps",
        "2",
        "--device",
        "cpu",
        "-q",
    ]
    assert main([*base, "--frame", "60", "-o", str(root / "x.png")]) == 1
    assert "outside the clip" in capsys.readouterr().err
    assert main([*base, "-o", str(root / "x.jpg")]) == 1
    assert "PNG" in capsys.readouterr().err
    assert main([*base, "--strength", "1.5", "-o", str(root / "x.png")]) == 1
    assert "strength" in capsys.readouterr().err
    assert main([*base, "--key-size", "-1", "-o", str(root / "x.png")]) == 1
    assert "--key-size must be 0" in capsys.readouterr().err
    assert (
        main(
            [
                "preview",
                str(clip),
                "--model",
                str(model),
                "--steps",
                "2",
                "--device",
                "cpu",
                "-q",
                "-o",
                str(root / "x.png"),
            ]
        )
        == 1
    )  # a tiny model is not SD1.x-shaped
    assert "not an SD1.x model" in capsys.readouterr().err
    assert main([*base, "--lora", str(root / "none.safetensors"), "-o", str(root / "x.png")]) == 1
    assert "not found" in capsys.readouterr().err
    assert not (root / "x.png").exists()


def test_render_a_clip_with_diffusion_keys(setup, capsys):
    from zvstudio.media import probe

    root, model, config, clip = setup
    out = root / "diffused.mp4"
    assert (
        main(
            [
                "render",
                str(clip),
                "--model",
                str(model),
                "--config",
                str(config),
                "--prompt",
                "a red cat",
                "--steps",
                "3",
                "--device",
                "cpu",
                "--every",
                "3",
                "-q",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert "(6 frames" in capsys.readouterr().out
    info = probe(out)
    assert info.frame_count == 6 and (info.width, info.height) == (64, 48)
    assert (
        main(
            [
                "render",
                str(clip),
                "--model",
                str(model),
                "--style",
                "oil",
                "-o",
                str(root / "x.mp4"),
            ]
        )
        == 1
    )
    assert "either --style" in capsys.readouterr().err


def test_preview_tries_several_seeds_with_one_model_load(setup, capsys):
    root, model, config, clip = setup
    args = ["preview", str(clip), "--frame", "2", "--model", str(model), "--config", str(config)]
    args += ["--prompt", "a red cat", "--steps", "3", "--device", "cpu", "-q", "--seed", "7"]
    assert main([*args, "--seeds", "3", "-o", str(root / "try.png")]) == 0
    printed = capsys.readouterr().out
    names = [f"try_seed{seed}.png" for seed in (7, 8, 9)]
    assert all(f"wrote {root / name}" in printed for name in names)
    images = [cv2.imread(str(root / name)) for name in names]
    assert all(image.shape == (48, 64, 3) for image in images)
    assert not (images[0] == images[1]).all() and not (images[1] == images[2]).all()
    assert main([*args, "-o", str(root / "seven.png")]) == 0  # the same key, seed 7 alone
    assert (cv2.imread(str(root / "seven.png")) == images[0]).all()
    assert main([*args, "--seeds", "0", "-o", str(root / "none.png")]) == 1
    assert "--seeds needs at least 1" in capsys.readouterr().err
