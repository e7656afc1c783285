"""Render presets: a project's look saved under a name and applied to another shot, from the
editor's module and from the command line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import make_clip

from zvstudio.cli import main
from zvstudio.errors import ProjectError
from zvstudio.project import ClipRef, LoraRef, OutputSettings, Project, RenderSettings, save_project
from zvstudio.project.presets import (
    check_name,
    delete_preset,
    describe,
    list_presets,
    load_preset,
    presets_folder,
    save_preset,
)

LOOK = RenderSettings(
    renderer="diffusion",
    model="/models/dreamshaper_8.safetensors",
    loras=[LoraRef("/models/Lora/ink.safetensors", 0.6)],
    prompt="ink drawing, high contrast",
    seed=7,
    strength=0.6,
    key_interval=6,
    pixel_fusion_mode="two_pass",
    poisson=True,
    output=OutputSettings(format="prores"),
    matte="/shots/a/roto/m_%04d.png",
    matte_invert=True,
    matte_crop=True,
)


def test_a_preset_keeps_the_look_and_leaves_the_clips_matte():
    save_preset("Ink noir", LOOK)
    preset = load_preset("Ink noir")
    assert preset.name == "Ink noir" and preset.path == presets_folder() / "Ink noir.json"
    # Everything but the matte, which belongs to shot a.
    assert preset.settings == replace(
        LOOK, matte=None, matte_invert=False, matte_feather=0.0, matte_crop=False
    )
    other_shot = RenderSettings(matte="/shots/b/roto.mov", matte_feather=3.0)
    applied = preset.applied_to(other_shot)
    assert (applied.matte, applied.matte_feather, applied.matte_crop) == (
        "/shots/b/roto.mov",
        3.0,
        False,
    )
    assert (applied.model, applied.loras, applied.seed) == (LOOK.model, LOOK.loras, 7)
    assert applied.output.format == "prores" and applied.poisson
    stored = json.loads(preset.path.read_text())
    assert stored["format"] == "zvstudio-preset" and "matte" not in stored["settings"]
    assert stored["settings"]["loras"] == [{"path": "/models/Lora/ink.safetensors", "weight": 0.6}]


def test_presets_are_listed_replaced_and_deleted():
    assert list_presets() == []
    save_preset("pencil", RenderSettings(style="pencil"))
    save_preset("Ink noir", LOOK)
    assert [p.name for p in list_presets()] == ["Ink noir", "pencil"]
    save_preset("pencil", RenderSettings(style="pencil", key_interval=4))  # replaced
    assert load_preset("pencil").settings.key_interval == 4
    assert (presets_folder() / "pencil.json.bak").is_file()  # the one it replaced
    delete_preset("pencil")
    assert [p.name for p in list_presets()] == ["Ink noir"]
    with pytest.raises(ProjectError, match=r"no preset 'pencil' \(presets: Ink noir\)"):
        load_preset("pencil")


def test_a_broken_preset_file_is_reported_not_loaded():
    presets_folder().mkdir(parents=True)
    (presets_folder() / "typo.json").write_text(
        json.dumps({"format": "zvstudio-preset", "settings": {"strenght": 0.5}})
    )
    (presets_folder() / "clip.json").write_text(
        json.dumps({"format": "zvstudio-preset", "settings": {"matte": "roto.mov"}})
    )
    (presets_folder() / "junk.json").write_text("{not json")
    save_preset("fine", RenderSettings())
    problems: list[str] = []
    assert [p.name for p in list_presets(problems)] == ["fine"]
    assert len(problems) == 3
    with pytest.raises(ProjectError, match=r"settings\.strenght: unknown field"):
        load_preset("typo")
    with pytest.raises(ProjectError, match=r"settings\.matte: belongs to a clip"):
        load_preset("clip")


@pytest.mark.parametrize("name", ["", "  ", "a/b", "..", ".hidden", "x" * 65, "tab\there", "a:b"])
def test_names_that_cannot_name_a_file_everywhere_are_refused(name):
    with pytest.raises(ProjectError, match="the preset name"):
        check_name(name)
    with pytest.raises(ProjectError):
        save_preset(name, RenderSettings())


def test_describe_says_what_a_preset_does():
    assert describe(LOOK) == (
        "diffusion: dreamshaper_8.safetensors + ink:0.6, ControlNet canny 0.7, strength 0.6; "
        'a key every 6 frames; "ink drawing, high contrast"'
    )
    with_vae = replace(LOOK, vae="/models/VAE/vae-ft-mse-840000-ema-pruned.safetensors")
    assert describe(with_vae).startswith(
        "diffusion: dreamshaper_8.safetensors with VAE vae-ft-mse-840000-ema-pruned + ink:0.6,"
    )
    styled = RenderSettings(style="posterize", style_params={"levels": 3}, key_interval=12)
    assert describe(styled) == "style posterize (levels 3); a key every 12 frames"


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path))


def test_the_command_line_saves_lists_and_renders_with_a_preset(tmp_path, capsys):
    clip, _, _ = make_clip(tmp_path / "walk.mp4", count=8)
    look = RenderSettings(style="posterize", style_params={"levels": 2}, key_interval=4)
    project = Project(clip=ClipRef.from_file(clip), settings=look)
    save_project(project, tmp_path / "walk.zvs")
    assert main(["presets", "save", "Two tones", "--from", str(tmp_path / "walk.zvs")]) == 0
    assert "saved the preset 'Two tones'" in capsys.readouterr().out
    assert main(["presets"]) == 0
    assert "Two tones: style posterize (levels 2); a key every 4 frames" in capsys.readouterr().out
    assert main(["presets", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [entry["name"] for entry in listed["presets"]] == ["Two tones"]

    # A plain clip rendered with the preset equals the project it was saved from.
    assert main(["render", str(tmp_path / "walk.zvs"), "-q", "-o", str(tmp_path / "a")]) == 0
    args = ["render", str(clip), "--preset", "Two tones", "-q"]
    assert main([*args, "-o", str(tmp_path / "b")]) == 0
    assert "2 keys" in capsys.readouterr().out  # keys 0 and 4, as the preset says
    for number in (0, 3, 7):
        name = f"frame_{number:06d}.png"
        assert np.array_equal(read_png(tmp_path / "a" / name), read_png(tmp_path / "b" / name))
    # Options still change it.
    assert main([*args, "--every", "8", "-o", str(tmp_path / "c")]) == 0
    assert "1 keys" in capsys.readouterr().out

    assert main(["render", str(clip), "--preset", "Nope", "-o", str(tmp_path / "d")]) == 1
    assert "no preset 'Nope' (presets: Two tones)" in capsys.readouterr().err
    assert main(["presets", "delete", "Two tones"]) == 0
    assert main(["presets"]) == 0
    assert "none yet" in capsys.readouterr().out


def test_a_preset_on_a_project_keeps_its_matte(tmp_path, capsys):
    clip, _, _ = make_clip(tmp_path / "walk.mp4", count=6)
    save_preset("Poster", RenderSettings(style="posterize", key_interval=3))
    folder = tmp_path / "matte"
    folder.mkdir()
    for number in range(6):
        cv2.imwrite(str(folder / f"m_{number:04d}.png"), np.zeros((112, 192), np.uint8))
    settings = RenderSettings(style="pencil", matte=str(folder / "m_%04d.png"))
    save_project(Project(clip=ClipRef.from_file(clip), settings=settings), tmp_path / "w.zvs")
    out = tmp_path / "out"
    args = ["render", str(tmp_path / "w.zvs"), "--preset", "Poster", "-q"]
    assert main([*args, "-o", str(out)]) == 0
    assert "2 keys" in capsys.readouterr().out
    # The project's matte is black: the original everywhere, whatever the preset's style.
    from zvstudio.media import VideoReader

    with VideoReader(clip) as original:
        frame = cv2.cvtColor(original.frame(4), cv2.COLOR_RGB2BGR)
    assert np.array_equal(read_png(out / "frame_000004.png"), frame)
