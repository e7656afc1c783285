"""Every diffusion path in half precision. bfloat16 on the CPU stands in for the GPU's float16
(no GPU here): a tensor left in float32 beside half-precision weights fails the same way on
both, and such bugs once reached the GPU benchmarks unseen."""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch
from helpers import make_clip
from tiny_models import (
    build_tiny_controlnet,
    build_tiny_models,
    build_tiny_motion_adapter,
    write_tiny_config_dir,
    write_tiny_diffusers,
    write_tiny_pix2pix,
)

from zvstudio.cli import main
from zvstudio.media import probe

HALF = ["--precision", "bfloat16", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("half")
    torch.manual_seed(0)
    build_tiny_controlnet(build_tiny_models()[0]).save_pretrained(root / "canny")
    build_tiny_motion_adapter().save_pretrained(root / "motion")
    # Small: bfloat16 convolutions take the CPU's slow path (about 10x float32's time).
    clip, _, _ = make_clip(root / "clip.mp4", count=4, fps=25, audio=True, width=32, height=32)
    config = write_tiny_config_dir(root / "config")
    return {
        "root": root,
        "model": ["--model", str(write_tiny_diffusers(root / "model")), "--config", str(config)],
        "pix2pix": ["--model", str(write_tiny_pix2pix(root / "pix2pix")), "--config", str(config)],
        "clip": clip,
    }


TEXT = ["--prompt", "a red cat", "--frames", "3", "--steps", "4", "--width", "32", "--height"]


def test_preview_and_render_with_a_controlnet(tiny):
    root, clip = tiny["root"], str(tiny["clip"])
    key = root / "key.png"
    controlnet = ["--controlnet", f"{root / 'canny'}:0.8"]
    # The sampler's own test runs every constraint in half precision: here the paths around.
    constrained = ["--steps", "3", "--prompt", "a red cat", *controlnet]
    assert main(["preview", clip, "--frame", "3", *tiny["model"], *constrained, *HALF,
                 "-o", str(key)]) == 0  # fmt: skip
    assert cv2.imread(str(key)).shape == (32, 32, 3)
    out = root / "render.mp4"
    assert main(["render", clip, *tiny["model"], *constrained, "--every", "3", *HALF,
                 "-o", str(out)]) == 0  # fmt: skip
    assert probe(out).frame_count == 4


def test_text_to_video_controlnet_video_and_instruct_pix2pix(tiny):
    root, clip = tiny["root"], str(tiny["clip"])
    out = root / "t2v.mp4"
    assert main(["generate", *tiny["model"], *TEXT, "24", *HALF, "-o", str(out)]) == 0
    assert probe(out).frame_count == 3
    edges = ["--video", clip, "--controlnet", f"{root / 'canny'}:1.0"]
    out = root / "edges.mp4"
    assert main(["generate", *tiny["model"], *TEXT, "24", *edges, *HALF, "-o", str(out)]) == 0
    assert probe(out).frame_count == 3
    out = root / "ip2p.mp4"
    assert main(["generate", *tiny["pix2pix"], *TEXT, "24", "--video", clip, *HALF,
                 "-o", str(out)]) == 0  # fmt: skip
    assert probe(out).frame_count == 3


def test_animate_zero_from_a_prompt_and_from_an_image(tiny):
    root = tiny["root"]
    motion = ["--motion-adapter", str(root / "motion")]
    out = root / "animate.mp4"
    assert main(["animate", *tiny["model"], *motion, *TEXT, "32", *HALF, "-o", str(out)]) == 0
    assert probe(out).frame_count == 3
    image = np.zeros((24, 40, 3), np.uint8)
    image[:, :20] = (200, 60, 30)
    cv2.imwrite(str(root / "still.png"), image)
    out = root / "still.mp4"
    args = ["animate", str(root / "still.png"), *tiny["model"], *motion, "--frames", "3"]
    assert main([*args, "--steps", "3", *HALF, "-o", str(out)]) == 0
    info = probe(out)
    assert (info.width, info.height, info.frame_count) == (40, 24, 3)
    assert info.fps == Fraction(8)


def test_dynamicrafter(tmp_path, monkeypatch):
    from test_dynamicrafter_model import write_tiny_512_release

    checkpoint, config = write_tiny_512_release(tmp_path / "dynamicrafter_512_v1")
    monkeypatch.setattr("zvstudio.generate.dynamicrafter.config.preset", lambda name: config)
    cv2.imwrite(str(tmp_path / "still.png"), np.full((48, 64, 3), 90, np.uint8))
    out = tmp_path / "dc.mp4"
    args = ["animate", str(tmp_path / "still.png"), "--engine", "dynamicrafter"]
    args += ["--model", str(checkpoint), "--frames", "4", "--steps", "2", "--prompt", "waves"]
    assert main([*args, *HALF, "-o", str(out)]) == 0
    assert probe(out).frame_count == 4
