"""A project's files besides its clip: which are missing, finding them in a folder after they
moved, relinking them as one undoable edit, and the command line refusing to start without
them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from helpers import make_clip

from zvstudio.cli import main
from zvstudio.project import ClipRef, Project, RenderSettings, save_project
from zvstudio.project.edits import RelinkFiles
from zvstudio.project.files import find_moved, missing_files, project_files
from zvstudio.project.model import ControlNetRef, KeyFrame, LoraRef


def touch(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return str(path)


@pytest.fixture
def project(tmp_path) -> Project:
    """A diffusion project whose files were in tmp_path/old (the checkpoint still is)."""
    old = tmp_path / "old"
    settings = RenderSettings(
        renderer="diffusion",
        model=touch(old / "models" / "dreamshaper_8.safetensors"),
        vae=str(old / "models" / "vae-ft-mse.safetensors"),
        loras=[LoraRef(str(old / "Lora" / "ink.safetensors"), 0.8)],
        controlnet="canny",  # a name: the library finds it, nothing to relink
        more_controlnets=[ControlNetRef(str(old / "cn" / "control_sd15_depth.safetensors"))],
        reference_image=str(old / "art" / "look.png"),
        matte=str(old / "matte" / "mask_%04d.png"),
    )
    keys = [
        KeyFrame(0),
        KeyFrame(10, painted_image=str(old / "paint" / "frame_000010.png")),
        KeyFrame(20, reference_image=str(old / "art" / "shot2.png")),
    ]
    return Project(settings=settings, keyframes=keys)


def test_every_file_a_project_uses_and_which_are_missing(project, tmp_path):
    old = tmp_path / "old"
    assert [f.what for f in project_files(project)] == [
        "checkpoint",
        "VAE",
        "LoRA",
        "ControlNet",
        "reference image",
        "matte",
        "key 10's painting",
        "key 20's reference image",
    ]
    touch(old / "matte" / "mask_0001.png")  # a sequence is there when a frame of it is
    missing = missing_files(project)
    assert [f.what for f in missing] == [
        "VAE",
        "LoRA",
        "ControlNet",
        "reference image",
        "key 10's painting",
        "key 20's reference image",
    ]
    # A stylized project's keys need no model files.
    stylized = replace(project, settings=replace(project.settings, renderer="stylize"))
    assert [f.what for f in missing_files(stylized)] == ["key 10's painting"]


def test_moved_files_are_found_by_name_and_relinked_in_one_step(project, tmp_path):
    new = tmp_path / "new drive"
    for part in ("models/vae-ft-mse.safetensors", "Lora/ink.safetensors", "art/look.png"):
        touch(new / part)
    # Two files named like the painting: the one in a folder named as the old one wins.
    touch(new / "elsewhere" / "frame_000010.png")
    touch(new / "project" / "paint" / "frame_000010.png")
    touch(new / ".trash" / "control_sd15_depth.safetensors")  # hidden folders are left out
    moved = find_moved(missing_files(project), new)
    old = tmp_path / "old"
    assert moved == {
        str(old / "models" / "vae-ft-mse.safetensors"): str(new / "models/vae-ft-mse.safetensors"),
        str(old / "Lora" / "ink.safetensors"): str(new / "Lora/ink.safetensors"),
        str(old / "art" / "look.png"): str(new / "art/look.png"),
        str(old / "paint" / "frame_000010.png"): str(new / "project/paint/frame_000010.png"),
    }
    before = (project.settings, list(project.keyframes))
    edit = RelinkFiles(moved)
    edit.apply(project)
    assert edit.text == "relink 4 files"
    assert project.settings.vae == str(new / "models/vae-ft-mse.safetensors")
    assert project.settings.loras == [LoraRef(str(new / "Lora/ink.safetensors"), 0.8)]
    assert project.settings.controlnet == "canny"
    assert project.key_at(10).painted_image == str(new / "project/paint/frame_000010.png")
    assert [f.what for f in missing_files(project)] == [
        "ControlNet",
        "matte",
        "key 20's reference image",
    ]
    edit.revert(project)
    assert (project.settings, project.keyframes) == before


def test_rendering_a_project_with_missing_files_names_them_all_first(tmp_path, capsys):
    clip, _, _ = make_clip(tmp_path / "c.mp4", count=4, width=32, height=32)
    settings = RenderSettings(
        renderer="diffusion",
        model=str(tmp_path / "gone.safetensors"),
        reference_image=str(tmp_path / "look.png"),
    )
    keys = [KeyFrame(0, painted_image=str(tmp_path / "p0.png"))]
    project = Project(clip=ClipRef.from_file(clip), settings=settings, keyframes=keys)
    save_project(project, tmp_path / "p.zvs")
    render = ["render", str(tmp_path / "p.zvs"), "-o", str(tmp_path / "o.mp4")]
    assert main(render) != 0
    err = capsys.readouterr().err
    assert "refers to 3 files that are not there" in err
    for line in ("checkpoint: ", "reference image: ", "key 0's painting: "):
        assert line in err
    assert "Find missing files" in err
    # A file an option replaces is not asked for.
    image = touch(tmp_path / "other.png")
    assert main([*render, "--reference", image]) != 0
    assert "refers to 2 files" in capsys.readouterr().err
    # Another model, or a style, leaves the project's model files unused; paintings stay.
    for option in (["--model", str(tmp_path / "other.safetensors")], ["--style", "pencil"]):
        assert main([*render, *option]) != 0
        assert "refers to 1 file that is not there:\nkey 0's painting" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()
