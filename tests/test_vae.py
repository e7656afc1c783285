"""A separate VAE in place of the checkpoint's own (`zvstudio.diffusion.vae`): every layout
users have, the checkpoint's VAE left unread, and clear refusals for what does not fit."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import (
    build_tiny_models,
    to_original_layout,
    write_tiny_config_dir,
    write_tiny_diffusers,
    write_tiny_single_file,
)

from zvstudio.diffusion.loading import load_sd15_components
from zvstudio.diffusion.vae import load_vae
from zvstudio.engine.preview import DiffusionSpec, diffusion_model_key
from zvstudio.errors import ZvsError

OTHER_SEED = 7  # the separate VAE's weights differ from the checkpoint's (seed 0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    unet, vae, text = build_tiny_models()
    other_vae = build_tiny_models(OTHER_SEED)[1]
    original = to_original_layout(unet.state_dict(), other_vae.state_dict(), text.state_dict())
    vae_keys = {k: v for k, v in original.items() if k.startswith("first_stage_model.")}
    return {
        "config": write_tiny_config_dir(root / "config"),
        "file": write_tiny_single_file(root / "model.safetensors"),
        "folder": write_tiny_diffusers(root / "diffusers"),
        "other_folder": write_tiny_diffusers(root / "other", seed=OTHER_SEED),
        "vae": vae,
        "other_vae": other_vae,
        "original_keys": vae_keys,  # the other VAE, original layout, with the prefix
        "root": root,
    }


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


def write(path, state):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_original_layout_files_load_with_or_without_the_prefix(tiny, tmp_path):
    keys = tiny["original_keys"]
    prefixed = write(tmp_path / "prefixed-vae.safetensors", keys)
    # A1111's VAE files: no prefix, and often the training loss's tensors beside the model.
    bare = {k.removeprefix("first_stage_model."): v for k, v in keys.items()}
    bare["loss.logvar"] = torch.zeros(())
    bare_file = write(tmp_path / "vae-ft-mse.safetensors", bare)
    for path in (prefixed, bare_file):
        loaded = load_vae(path, config_dir=tiny["config"])
        assert same_weights(tiny["other_vae"], loaded) and not loaded.training


def test_diffusers_layouts_load(tiny, tmp_path):
    state = tiny["other_vae"].state_dict()
    diffusers_file = write(tmp_path / "diffusion_vae.safetensors", state)
    assert same_weights(tiny["other_vae"], load_vae(diffusers_file, config_dir=tiny["config"]))
    # A VAE folder, and a whole model folder (whose vae/ is taken).
    vae_folder = tiny["other_folder"] / "vae"
    for path in (vae_folder, tiny["other_folder"]):
        assert same_weights(tiny["other_vae"], load_vae(path, config_dir=tiny["config"]))
    half = load_vae(vae_folder, torch.float16, config_dir=tiny["config"])
    assert next(half.parameters()).dtype == torch.float16


@pytest.mark.parametrize("model", ["file", "folder"])
def test_the_vae_replaces_the_models_own(tiny, model):
    vae_file = write(tiny["root"] / f"for-{model}-vae.safetensors", tiny["original_keys"])
    parts = load_sd15_components(tiny[model], config_dir=tiny["config"], vae=vae_file)
    assert same_weights(tiny["other_vae"], parts.vae)
    assert not same_weights(tiny["vae"], parts.vae)
    own = load_sd15_components(tiny[model], config_dir=tiny["config"])
    assert same_weights(tiny["vae"], own.vae)
    assert same_weights(own.unet, parts.unet)  # only the VAE changed
    with torch.no_grad():  # and it works: the image comes back at its size
        image = parts.vae.decode(torch.zeros(1, 4, 4, 4)).sample
    assert image.shape == (1, 3, 8, 8) and torch.isfinite(image).all()


def test_a_checkpoint_without_a_vae_loads_with_one(tiny, tmp_path):
    state = {k: v for k, v in load_file(tiny["file"]).items() if "first_stage_model." not in k}
    pruned = write(tmp_path / "pruned.safetensors", state)
    with pytest.raises(ZvsError, match="tensors missing") as err:
        load_sd15_components(pruned, config_dir=tiny["config"])
    assert "--vae" in err.value.hint
    vae_file = write(tmp_path / "vae.safetensors", tiny["original_keys"])
    parts = load_sd15_components(pruned, config_dir=tiny["config"], vae=vae_file)
    assert same_weights(tiny["other_vae"], parts.vae)
    # A diffusers folder without vae/ likewise.
    folder = shutil.copytree(tiny["folder"], tmp_path / "no-vae")
    shutil.rmtree(folder / "vae")
    with pytest.raises(ZvsError, match="no vae folder"):
        load_sd15_components(folder, config_dir=tiny["config"])
    parts = load_sd15_components(folder, config_dir=tiny["config"], vae=vae_file)
    assert same_weights(tiny["other_vae"], parts.vae)


def test_what_is_not_an_sd1_vae_is_refused_before_the_model_loads(tiny, tmp_path):
    keys = tiny["original_keys"]
    cases = {
        # SDXL's VAE has the same shapes; its name (or config) tells it apart.
        write(tmp_path / "sdxl_vae.safetensors", keys): "VAE for SDXL",
        tiny["file"]: "is a checkpoint, not a VAE",
    }
    for path, message in cases.items():
        with pytest.raises(ZvsError, match=message) as err:
            load_sd15_components(tiny["file"], config_dir=tiny["config"], vae=path)
        assert "vae-ft-mse" in err.value.hint
    with pytest.raises(ZvsError, match="VAE not found"):
        load_vae(tmp_path / "missing.safetensors", config_dir=tiny["config"])


def test_a_vae_folder_scaled_for_sdxl_is_refused(tiny, tmp_path):
    folder = shutil.copytree(tiny["other_folder"] / "vae", tmp_path / "xl")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "scaling_factor": 0.13025}))
    with pytest.raises(ZvsError, match=r"0\.13025"):
        load_vae(folder, config_dir=tiny["config"])


def test_a_vae_of_another_shape_is_counted(tiny, tmp_path):
    damaged = dict(tiny["original_keys"])
    del damaged["first_stage_model.decoder.conv_out.bias"]
    damaged["first_stage_model.encoder.conv_in.weight"] = torch.zeros(32, 4, 3, 3)
    path = write(tmp_path / "odd-vae.safetensors", damaged)
    with pytest.raises(ZvsError, match="1 tensors missing, 0 unexpected, 1 of the wrong shape"):
        load_vae(path, config_dir=tiny["config"])


def test_pickled_vae_needs_permission(tiny, tmp_path):
    bare = {k.removeprefix("first_stage_model."): v for k, v in tiny["original_keys"].items()}
    ckpt = tmp_path / "vae-ft-ema.ckpt"
    torch.save({"state_dict": bare}, ckpt)
    with pytest.raises(ZvsError, match="pickled"):
        load_vae(ckpt, config_dir=tiny["config"])
    assert same_weights(
        tiny["other_vae"], load_vae(ckpt, allow_pickle=True, config_dir=tiny["config"])
    )


def test_the_vae_is_part_of_the_keys_identity(tiny, tmp_path):
    vae_file = write(tmp_path / "vae.safetensors", tiny["original_keys"])
    plain = DiffusionSpec(tiny["file"], None)
    with_vae = DiffusionSpec(tiny["file"], None, vae=vae_file)
    # Appended: keys rendered with the model's own VAE keep their identity.
    assert diffusion_model_key(with_vae).startswith(diffusion_model_key(plain) + "|")
    copy = tmp_path / "same-vae.safetensors"
    shutil.copyfile(vae_file, copy)
    brighter = {k: v + 1 for k, v in tiny["original_keys"].items()}
    other = write(tmp_path / "other-vae.safetensors", brighter)
    key = lambda vae: diffusion_model_key(DiffusionSpec(tiny["file"], None, vae=vae))  # noqa: E731
    assert key(copy) == key(vae_file) != key(other)  # the content counts, not the name


def test_preview_with_another_vae_and_its_mistakes(tiny, tmp_path, capsys):
    """The CLI end to end: --vae changes the key; a wrong file is a one-line error."""
    import numpy as np
    from helpers import make_clip
    from PIL import Image

    from zvstudio.cli import main

    clip, _, _ = make_clip(tmp_path / "c.mp4", count=3, width=64, height=48)
    vae_file = write(tmp_path / "vae.safetensors", tiny["original_keys"])
    base = ["preview", str(clip), "--model", str(tiny["folder"]), "--config", str(tiny["config"])]
    base += ["--prompt", "a red cat", "--steps", "2", "--device", "cpu", "-q"]
    assert main([*base, "-o", str(tmp_path / "own.png")]) == 0
    assert main([*base, "--vae", str(vae_file), "-o", str(tmp_path / "other.png")]) == 0
    own, other = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("own", "other"))
    assert own.shape == other.shape and np.abs(own.astype(int) - other).mean() > 1
    capsys.readouterr()
    assert main([*base, "--vae", str(tiny["file"]), "-o", str(tmp_path / "x.png")]) == 1
    assert "not a VAE" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_a_project_keeps_its_vae_and_clip_skip_and_the_cli_changes_them(tiny, tmp_path):
    from dataclasses import replace

    from helpers import make_clip

    from zvstudio import cli
    from zvstudio.engine.request import request_from_project
    from zvstudio.project import ClipRef, Project, load_project, save_project

    clip, _, _ = make_clip(tmp_path / "walk.mp4", count=3)
    (tmp_path / "vaes").mkdir()
    vae_file = write(tmp_path / "vaes" / "vae.safetensors", tiny["original_keys"])
    project = Project(clip=ClipRef.from_file(clip))
    project.settings = replace(
        project.settings,
        renderer="diffusion",
        model=str(tiny["file"]),
        vae=str(vae_file),
        controlnet=None,
    )
    save_project(project, tmp_path / "walk.zvs")
    assert '"vae": "vaes/vae.safetensors"' in (tmp_path / "walk.zvs").read_text()
    assert '"clip_skip": 1' in (tmp_path / "walk.zvs").read_text()
    request = request_from_project(load_project(tmp_path / "walk.zvs"), tmp_path / "o.mp4")
    assert request.renderer.diffusion.vae == vae_file

    def request_for(*options):
        args = cli._build_parser().parse_args(
            ["render", str(tmp_path / "walk.zvs"), "-o", str(tmp_path / "o.mp4"), *options]
        )
        return cli._render_request(args, tmp_path)

    assert request_for().renderer.diffusion.vae == vae_file
    other = tmp_path / "other.safetensors"
    assert request_for("--vae", str(other)).renderer.diffusion.vae == other
    # --clip-skip likewise changes the project's model's settings, and nothing else.
    skipped = request_for("--clip-skip", "2").renderer.diffusion
    assert skipped.settings.clip_skip == 2 and skipped.vae == vae_file
    assert request_for().renderer.diffusion.settings.clip_skip == 1
    stylized = replace(project.settings, renderer="stylize", vae=None)
    save_project(replace(project, settings=stylized), tmp_path / "walk.zvs")
    with pytest.raises(ZvsError, match="--vae is for diffusion keys"):
        request_for("--vae", str(other))
    with pytest.raises(ZvsError, match="--clip-skip is for diffusion keys"):
        request_for("--clip-skip", "2")


def test_a_model_without_a_vae_is_told_from_its_header(tiny, tmp_path):
    from zvstudio.diffusion.identify import lacks_vae

    state = {k: v for k, v in load_file(tiny["file"]).items() if "first_stage_model." not in k}
    pruned = write(tmp_path / "pruned.safetensors", state)
    folder = shutil.copytree(tiny["folder"], tmp_path / "no-vae")
    shutil.rmtree(folder / "vae")
    assert lacks_vae(pruned) and lacks_vae(folder)
    for whole in (tiny["file"], tiny["folder"], tmp_path / "missing.safetensors"):
        assert not lacks_vae(whole)
