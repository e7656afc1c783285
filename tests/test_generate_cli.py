"""`zvstudio generate` and `zvstudio animate` end to end on tiny random models (CPU)."""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest
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
from zvstudio.media import VideoReader, probe


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model = write_tiny_diffusers(root / "model")
    config = write_tiny_config_dir(root / "config")
    controlnet = build_tiny_controlnet(build_tiny_models()[0])
    controlnet.save_pretrained(root / "controlnet")
    build_tiny_motion_adapter().save_pretrained(root / "motion")
    return {
        "model": [
            "--model",
            str(model),
            "--config",
            str(config),
            "--device",
            "cpu",
            "-q",
        ],
        "controlnet": root / "controlnet",
        "motion": root / "motion",
        "sd_folder": model,
        "pix2pix": write_tiny_pix2pix(root / "pix2pix"),
    }


TEXT = ["--prompt", "a red cat", "--frames", "3", "--steps", "4", "--width", "32"]


def test_generate_writes_a_clip_from_a_prompt(models, tmp_path, capsys):
    out = tmp_path / "cat.mp4"
    args = ["generate", *models["model"], *TEXT, "--height", "24", "--fps", "12", "-o", str(out)]
    assert main(args) == 0
    assert f"wrote {out} (3 frames" in capsys.readouterr().out
    info = probe(out)
    assert (info.width, info.height, info.frame_count, info.fps) == (32, 24, 3, Fraction(12))
    with VideoReader(out) as reader:
        first, last = reader.frame(0), reader.frame(2)
    assert not np.array_equal(first, last)  # the camera moved


def test_generate_follows_an_input_clip_through_a_controlnet(models, tmp_path):
    clip, _, _ = make_clip(tmp_path / "in.mp4", count=6, fps=25, audio=True, width=64, height=48)
    out = tmp_path / "edges.mp4"
    args = [
        "generate",
        *models["model"],
        *TEXT,
        "--height",
        "24",
        "--video",
        str(clip),
        "--controlnet",
        f"{models['controlnet']}:1.0",
        "-o",
        str(out),
    ]
    assert main(args) == 0
    info = probe(out)
    assert (info.width, info.height, info.frame_count) == (32, 24, 3)
    assert info.fps == Fraction(25) and info.has_audio  # the input's timing and audio


def test_generate_edits_a_clip_with_an_instruct_pix2pix_model(models, tmp_path, capsys):
    clip, _, _ = make_clip(tmp_path / "in.mp4", count=4, fps=25, width=64, height=48)
    model = [*models["model"]]
    model[model.index("--model") + 1] = str(models["pix2pix"])
    out = tmp_path / "winter.mp4"
    args = ["generate", *model, *TEXT, "--height", "24", "--image-cfg", "1.2"]
    assert main([*args, "--video", str(clip), "-o", str(out)]) == 0
    info = probe(out)
    assert (info.width, info.height, info.frame_count, info.fps) == (32, 24, 3, Fraction(25))
    # Without a clip to edit, it says what the model is for before loading it.
    assert main([*args, "-o", str(tmp_path / "o.mp4")]) == 1
    assert "InstructPix2Pix model: it edits a clip" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--video", "{clip}"], "through a ControlNet"),
        (["--motion-field", "12"], "is not two numbers"),
        (["--width", "30"], "multiples of 8"),
        (["--video", "{missing}"], "video not found"),
        (["--prompt", " "], "give a --prompt"),
    ],
)
def test_generate_refuses_bad_requests_clearly(models, tmp_path, capsys, extra, message):
    clip, _, _ = make_clip(tmp_path / "in.mp4", count=4)
    extra = [e.format(clip=clip, missing=tmp_path / "nope.mp4") for e in extra]
    args = ["generate", *models["model"], *TEXT, *extra, "-o", str(tmp_path / "o.mp4")]
    assert main(args) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_generate_smooths_the_background_with_a_local_segmentation_model(
    models, tmp_path, monkeypatch
):
    from test_seg_annotator import write_tiny_segformer

    from zvstudio.diffusion import seg

    monkeypatch.setenv("ZVSTUDIO_SEG_MODEL", str(write_tiny_segformer(tmp_path / "seg")))
    masked = []
    find_foreground = seg.SegForeground.__call__
    monkeypatch.setattr(
        seg.SegForeground,
        "__call__",
        lambda self, rgb: masked.append(rgb.shape) or find_foreground(self, rgb),
    )
    out = tmp_path / "smooth.mp4"
    args = ["generate", *models["model"], *TEXT, "--height", "32", "--smooth-background"]
    assert main([*args, "-o", str(out)]) == 0
    assert masked == [(32, 32, 3)] * 3  # each frame's foreground, found in the first pass
    assert probe(out).frame_count == 3

    from zvstudio.generate import jobs

    asked = []
    monkeypatch.setattr(jobs, "generate_text_to_video", lambda request, *a: asked.append(request))
    main(["generate", *models["model"], *TEXT, "-o", str(out)])
    main(["generate", *models["model"], *TEXT, "--smooth-background", "0.3", "-o", str(out)])
    assert [r.settings.smooth_background for r in asked] == [0.0, 0.3]


def test_generate_without_a_segmentation_model_cannot_smooth(models, tmp_path, monkeypatch, capsys):
    from zvstudio.diffusion import seg

    monkeypatch.setattr(seg, "find_foreground_source", lambda folders=None: None)
    args = [
        "generate",
        *models["model"],
        *TEXT,
        "--smooth-background",
        "-o",
        str(tmp_path / "o.mp4"),
    ]
    assert main(args) == 1
    assert "no ADE20K segmentation model was found" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_generate_checks_the_output_before_loading_models(tmp_path, capsys):
    # No model exists at all: the output's folder is checked (and reported) first.
    args = ["generate", "--model", str(tmp_path / "none"), "--prompt", "a cat"]
    args += ["-o", str(tmp_path / "no/o.mp4")]
    assert main(args) == 1
    assert "does not exist" in capsys.readouterr().err  # the folder, not the model


def test_animate_a_generated_still(models, tmp_path):
    out = tmp_path / "anim.mp4"
    args = [
        "animate",
        *models["model"],
        "--motion-adapter",
        str(models["motion"]),
        *TEXT,
        "--height",
        "32",
        "-o",
        str(out),
    ]
    assert main(args) == 0
    info = probe(out)
    assert (info.width, info.height, info.frame_count, info.fps) == (32, 32, 3, Fraction(8))


def test_animate_a_users_image_keeps_its_size_and_first_frame(models, tmp_path):
    image = np.zeros((24, 40, 3), np.uint8)
    image[:, :20] = (200, 60, 30)
    cv2.imwrite(str(tmp_path / "still.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    out = tmp_path / "frames"
    args = [
        "animate",
        str(tmp_path / "still.png"),
        *models["model"],
        "--motion-adapter",
        str(models["motion"]),
        "--frames",
        "3",
        "--steps",
        "3",
        "-o",
        str(out),
    ]
    assert main(args) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3
    first = cv2.imread(str(pngs[0]))
    assert first.shape == (24, 40, 3)


def test_animate_scales_a_large_image_down_and_says_so(models, tmp_path, monkeypatch, capsys):
    from zvstudio.generate import jobs

    monkeypatch.setattr(jobs, "STILL_SHORT_SIDE", 16)  # a phone photo against 512, in small
    image = np.zeros((24, 40, 3), np.uint8)
    image[:, :20] = (200, 60, 30)
    cv2.imwrite(str(tmp_path / "still.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    out = tmp_path / "frames"
    args = ["animate", str(tmp_path / "still.png"), *models["model"]]
    args += ["--motion-adapter", str(models["motion"]), "--frames", "2", "--steps", "2"]
    assert main([*args, "-o", str(out)]) == 0
    first = cv2.imread(str(sorted(out.glob("*.png"))[0]))
    assert first.shape == (16, 27, 3)
    assert "the image is 40x24: animated at 27x16" in capsys.readouterr().err


@pytest.mark.parametrize(
    "case, message",
    [
        ("sd_folder_as_adapter", "not a motion module"),
        ("no_image_no_prompt", "give an image to animate"),
        ("missing_image", "image not found"),
        ("not_an_image", "cannot read"),
    ],
)
def test_animate_refuses_bad_requests_clearly(models, tmp_path, capsys, case, message):
    (tmp_path / "junk.png").write_text("not an image")
    adapter = models["sd_folder"] if case == "sd_folder_as_adapter" else models["motion"]
    image = {
        "missing_image": [str(tmp_path / "nope.png")],
        "not_an_image": [str(tmp_path / "junk.png")],
    }.get(case, [])
    prompt = [] if case == "no_image_no_prompt" else ["--prompt", "a cat"]
    args = ["animate", *image, *models["model"], "--motion-adapter", str(adapter), *prompt]
    assert main([*args, "--frames", "2", "--steps", "2", "-o", str(tmp_path / "o.mp4")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


# -- DynamiCrafter ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dynamicrafter(tmp_path_factory):
    """A tiny DynamiCrafter checkpoint in the released key names, under a released folder name
    (the preset is guessed from it), and the tiny config to use for that preset."""

    from test_dynamicrafter_model import write_tiny_512_release

    return write_tiny_512_release(tmp_path_factory.mktemp("dc") / "dynamicrafter_512_v1")


def test_animate_with_dynamicrafter(dynamicrafter, tmp_path, monkeypatch):
    checkpoint, config = dynamicrafter
    # The released 512 model is 320x512 and 1.4 B parameters: the tiny one stands in for it.
    monkeypatch.setattr("zvstudio.generate.dynamicrafter.config.preset", lambda name: config)
    image = np.full((48, 64, 3), 90, np.uint8)
    cv2.imwrite(str(tmp_path / "still.png"), image)
    out = tmp_path / "dc.mp4"
    args = ["animate", str(tmp_path / "still.png"), "--engine", "dynamicrafter"]
    args += ["--model", str(checkpoint), "--device", "cpu", "-q", "--frames", "4"]
    assert main([*args, "--steps", "2", "--prompt", "waves", "--fps", "10", "-o", str(out)]) == 0
    info = probe(out)
    assert (info.width, info.height, info.frame_count, info.fps) == (32, 24, 4, Fraction(10))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--engine", "dynamicrafter", "--motion-adapter", "x"], "not an option of the dynamic"),
        (["--mode", "loop"], "--mode is not an option of the animatezero engine"),
        (
            ["--engine", "dynamicrafter", "--preset", "512", "--mode", "interpolate"],
            "interpolation model",
        ),
        (
            ["--engine", "dynamicrafter", "--preset", "512_interp", "--mode", "interpolate"],
            "last image",
        ),
        (["--engine", "dynamicrafter"], "cannot tell which DynamiCrafter model"),
    ],
)
def test_animate_engines_refuse_each_others_options(tmp_path, capsys, extra, message):
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), np.zeros((8, 8, 3), np.uint8))
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"")
    args = ["animate", str(still), "--model", str(model), *extra, "-o", str(tmp_path / "o.mp4")]
    assert main(args) == 1
    assert message in capsys.readouterr().err


def test_input_frames_are_decoded_just_large_enough():
    from zvstudio.generate.jobs import _cover_size

    assert _cover_size((1920, 1080), (512, 288)) == (512, 288)
    assert _cover_size((1920, 1080), (512, 512)) == (910, 512)  # covers, keeps 16:9
    assert _cover_size((320, 240), (512, 512)) is None  # never upscaled while decoding
