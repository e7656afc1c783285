"""Several ControlNets at once: their guidance adds up, each with its own annotator and
strength, from the command line, projects and the sampler, on tiny random models."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from helpers import make_clip, red_square_frame
from PIL import Image
from tiny_models import strong_controlnet, write_tiny_config_dir, write_tiny_diffusers

from zvstudio.cli import main
from zvstudio.diffusion.annotators import control_condition
from zvstudio.diffusion.control import ControlStack, control_active
from zvstudio.diffusion.loading import load_sd15_components
from zvstudio.diffusion.sampler import (
    KeyFrameSampler,
    KeySettings,
    diffusion_key_identity,
    encode_prompts,
    guided_noise,
)
from zvstudio.engine.device import memory_needs
from zvstudio.engine.preview import DiffusionSpec, diffusion_model_key
from zvstudio.engine.request import request_from_project
from zvstudio.errors import ProjectError, ZvsError
from zvstudio.project import (
    ClipRef,
    ControlNetRef,
    Project,
    RenderSettings,
    load_project,
    save_project,
)
from zvstudio.project.presets import describe

SETTINGS = KeySettings(prompt="a red cat", steps=4, strength=0.75, seed=3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    model = write_tiny_diffusers(root / "model")
    config = write_tiny_config_dir(root / "config")
    components = load_sd15_components(model, config_dir=config)
    nets = {}
    for name, seed in (("edges_canny", 2), ("other_canny", 5)):
        nets[name] = strong_controlnet(components.unet, seed).eval()
        nets[name].save_pretrained(root / name)
    clip, _, _ = make_clip(root / "c.mp4", count=4, width=64, height=48)
    return root, model, config, clip, nets


@pytest.fixture
def components(setup):
    _, model, config, _, _ = setup
    return load_sd15_components(model, config_dir=config)


def render(components, settings, nets) -> np.ndarray:
    sampler = KeyFrameSampler(components, settings, nets)
    try:
        return sampler.render(red_square_frame(), is_anchor=True)
    finally:
        sampler.close()


def test_the_stack_adds_each_controlnets_residuals_at_its_strength(components, setup):
    """ε with two ControlNets equals the UNet given the sum of each one's residuals, computed
    here straight from diffusers."""
    edges, other = setup[4]["edges_canny"], setup[4]["other_canny"]
    settings = replace(SETTINGS, controlnet_scale=0.6, more_controls=(("scribble", 0.3),))
    stack = ControlStack([edges, other], settings)
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 5, 7)
    embeddings = encode_prompts(components, ["", "a red cat"])
    conditions = [torch.rand(2, 3, 40, 56), torch.rand(2, 3, 40, 56)]
    t = torch.tensor(700)
    epsilon = guided_noise(
        components.unet, latents, t, embeddings, 7.5, stack.model, conditions, stack.scales
    )
    batch = torch.cat([latents, latents])
    residuals = [
        net(batch, t, embeddings, image, conditioning_scale=scale, return_dict=False)
        for net, image, scale in zip((edges, other), conditions, (0.6, 0.3), strict=True)
    ]
    down = [a + b for a, b in zip(residuals[0][0], residuals[1][0], strict=True)]
    mid = residuals[0][1] + residuals[1][1]
    output = components.unet(
        batch,
        t,
        encoder_hidden_states=embeddings,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    ).sample
    negative, positive = output.chunk(2)
    torch.testing.assert_close(epsilon, negative + 7.5 * (positive - negative))
    assert stack.annotators == ["canny", "scribble"] and stack.scales == [0.6, 0.3]


def test_one_controlnet_split_in_two_renders_the_same_key(components, setup):
    edges, other = setup[4]["edges_canny"], setup[4]["other_canny"]
    plain = render(components, SETTINGS, [])
    whole = render(components, replace(SETTINGS, controlnet_scale=0.7), [edges])
    split = replace(SETTINGS, controlnet_scale=0.3, more_controls=(("canny", 0.4),))
    halves = render(components, split, [edges, edges])
    assert np.abs(whole.astype(int) - plain).mean() > 1  # the ControlNet matters
    assert np.abs(halves.astype(int) - whole).max() <= 2  # float rounding only
    # A second, different ControlNet changes the key; at strength 0 it changes nothing.
    both = render(components, replace(split, more_controls=(("canny", 0.7),)), [edges, other])
    assert np.abs(both.astype(int) - whole).mean() > 1
    silent = render(components, replace(split, more_controls=(("canny", 0.0),)), [edges, other])
    first_only = render(components, replace(split, more_controls=()), [edges])
    assert np.abs(silent.astype(int) - first_only).max() <= 2


def test_each_controlnet_sees_its_own_annotators_image(setup):
    edges, other = setup[4]["edges_canny"], setup[4]["other_canny"]
    settings = replace(SETTINGS, annotator="scribble", more_controls=(("canny", 0.5),))
    stack = ControlStack([edges, other], settings)
    images = stack.frame_conditions(red_square_frame(), 8, (100, 200), "cpu")
    for image, name in zip(images, ("scribble", "canny"), strict=True):
        expected = torch.from_numpy(control_condition(red_square_frame(), name, (100, 200)))
        torch.testing.assert_close(image[0], expected.permute(2, 0, 1))
    assert not torch.equal(images[0], images[1])


def test_counts_and_strengths_are_checked(components, setup):
    edges = setup[4]["edges_canny"]
    with pytest.raises(ZvsError, match="2 ControlNets were loaded for 1"):
        KeyFrameSampler(components, SETTINGS, [edges, edges])
    with pytest.raises(ZvsError, match="0 ControlNets were loaded for 2"):
        KeyFrameSampler(components, replace(SETTINGS, more_controls=(("canny", 0.5),)), [])
    with pytest.raises(ZvsError, match="strength must be a number >= 0"):
        KeySettings(more_controls=(("canny", -1.0),))
    with pytest.raises(ZvsError, match="needs \\(annotator, strength\\)"):
        KeySettings(more_controls=(("", 0.5),))


def test_more_controlnets_are_named_in_the_identity_and_nothing_else_changes(setup):
    root = setup[0]
    # Keys cached before there could be more ControlNets keep their identity.
    assert "more_controls" not in repr(SETTINGS)
    plain = diffusion_key_identity("m", "fp32", SETTINGS)
    assert "more controls" not in plain
    more = replace(SETTINGS, more_controls=(("canny", 0.4),))
    stronger = replace(SETTINGS, more_controls=(("canny", 0.5),))
    identities = {diffusion_key_identity("m", "fp32", s) for s in (SETTINGS, more, stronger)}
    assert len(identities) == 3
    model = root / "model"
    one = DiffusionSpec(model, SETTINGS, controlnets=(root / "edges_canny",))
    two = replace(one, controlnets=(root / "edges_canny", root / "other_canny"))
    swapped = replace(one, controlnets=(root / "other_canny", root / "edges_canny"))
    assert "controlnet=" not in diffusion_model_key(one)
    assert len({diffusion_model_key(spec) for spec in (one, two, swapped)}) == 3


def test_memory_plan_counts_each_controlnet():
    one, two = memory_needs("float16", 1), memory_needs("float16", 2)
    assert two.everything - one.everything == pytest.approx(
        one.everything - memory_needs("float16", 0).everything
    )
    assert two.one_stage > one.one_stage


def test_preview_takes_several_controlnets(setup, capsys):
    root, model, config, clip, _ = setup
    base = ["preview", str(clip), "--frame", "1", "--model", str(model), "--config", str(config)]
    base += ["--steps", "3", "--device", "cpu", "-q"]
    edges, other = str(root / "edges_canny"), str(root / "other_canny")

    def preview(name: str, *controlnets: str) -> np.ndarray:
        options = [part for spec in controlnets for part in ("--controlnet", spec)]
        assert main([*base, *options, "-o", str(root / name)]) == 0, capsys.readouterr().err
        return cv2.imread(str(root / name)).astype(int)

    whole = preview("whole.png", f"{edges}:0.7")
    halves = preview("halves.png", f"{edges}:0.3", f"{edges}:0.4")
    both = preview("both.png", f"{edges}:0.7", f"{other}:0.7")
    assert np.abs(halves - whole).max() <= 2
    assert np.abs(both - whole).mean() > 1
    with Image.open(root / "both.png") as png:
        text = png.text["parameters"]
    assert '"Module: canny, Model: edges_canny, Weight: 0.7"' in text
    assert '"Module: canny, Model: other_canny, Weight: 0.7"' in text
    assert text.index("ControlNet 0") < text.index("ControlNet 1")
    missing = ["--controlnet", edges, "--controlnet", str(root / "none")]
    assert main([*base, *missing, "-o", str(root / "x.png")]) == 1
    assert "ControlNet not found" in capsys.readouterr().err


def edges_settings(root, **changes) -> RenderSettings:
    """A diffusion project's settings with the edges ControlNet first."""
    controlnet = str(root / "edges_canny")
    model = str(root / "model")
    return RenderSettings(renderer="diffusion", model=model, controlnet=controlnet, **changes)


def test_a_project_keeps_more_controlnets(setup, tmp_path):
    root, _, _, clip, _ = setup
    more = [ControlNetRef(str(root / "other_canny"), 0.25)]
    settings = edges_settings(root, controlnet_scale=0.5, more_controlnets=more)
    project = Project(clip=ClipRef.from_file(clip), settings=settings)
    save_project(project, tmp_path / "p.zvs")
    loaded = load_project(tmp_path / "p.zvs")
    assert loaded.settings.more_controlnets == settings.more_controlnets
    spec = request_from_project(loaded, tmp_path / "o.mp4").renderer.diffusion
    assert spec.controlnets == (root / "edges_canny", root / "other_canny")
    assert spec.settings.controlnet_scale == 0.5
    assert spec.settings.more_controls == (("canny", 0.25),)
    # Without a first ControlNet, the others still guide the keys.
    alone = replace(settings, controlnet=None)
    spec = request_from_project(replace(project, settings=alone), tmp_path / "o.mp4")
    assert spec.renderer.diffusion.controlnets == (root / "other_canny",)
    assert spec.renderer.diffusion.settings.controlnet_scale == 0.25
    assert "ControlNet edges_canny 0.5 + other_canny 0.25" in describe(settings)
    broken = (tmp_path / "p.zvs").read_text().replace('"scale": 0.25', '"scale": 3')
    (tmp_path / "bad.zvs").write_text(broken)
    with pytest.raises(ProjectError, match="more_controlnets"):
        load_project(tmp_path / "bad.zvs")


def test_render_replaces_a_projects_controlnets(setup, tmp_path):
    from zvstudio import cli

    root, model, _, clip, _ = setup
    settings = RenderSettings(
        renderer="diffusion", model=str(model), controlnet=str(root / "other_canny")
    )
    save_project(Project(clip=ClipRef.from_file(clip), settings=settings), tmp_path / "p.zvs")
    edges, other = root / "edges_canny", root / "other_canny"
    controlnets = ["--controlnet", f"{edges}:0.4", "--controlnet", f"{other}:0.2"]
    args = cli._build_parser().parse_args(
        ["render", str(tmp_path / "p.zvs"), "-o", str(tmp_path / "o.mp4"), *controlnets]
    )
    spec = cli._render_request(args, tmp_path).renderer.diffusion
    assert spec.controlnets == (edges, other) and spec.model == model
    assert (spec.settings.controlnet_scale, spec.settings.more_controls) == (0.4, (("canny", 0.2),))
    stylized = replace(settings, renderer="stylize")
    save_project(Project(clip=ClipRef.from_file(clip), settings=stylized), tmp_path / "p.zvs")
    with pytest.raises(ZvsError, match="--controlnet is for diffusion keys"):
        cli._render_request(args, tmp_path)


def test_text_to_video_takes_several_controlnets(components, setup):
    from zvstudio.generate.t2v_zero import TextToVideoSettings, TextToVideoZero

    edges = setup[4]["edges_canny"]
    settings = TextToVideoSettings(prompt="a cat", frames=2, steps=3, width=32, height=32)
    clip = [red_square_frame(), red_square_frame()]
    split = replace(settings, controlnet_scale=0.3, more_controls=(("canny", 0.4),))
    halves = TextToVideoZero(components, [edges, edges]).latents(split, clip)
    whole = TextToVideoZero(components, [edges]).latents(
        replace(settings, controlnet_scale=0.7), clip
    )
    plain_edges = TextToVideoZero(components, [edges]).latents(settings, clip)
    torch.testing.assert_close(halves, whole, rtol=0, atol=1e-3)
    assert (plain_edges - whole).abs().max() > 1e-2  # the strengths matter


# -- where the ControlNets guide (A1111's Starting and Ending Control Step) --------------------
def test_control_steps_are_fractions_of_the_steps_run():
    assert [control_active((0.0, 0.6), i, 15) for i in range(15)] == [True] * 9 + [False] * 6
    assert [control_active((0.5, 1.0), i, 4) for i in range(4)] == [False, False, True, True]
    assert all(control_active((0.0, 1.0), i, 7) for i in range(7))
    for bad in ((0.5, 0.5), (0.6, 0.2), (-0.1, 1.0), (0.0, 1.5)):
        with pytest.raises(ZvsError, match="ControlNet steps must run from a start"):
            KeySettings(control_steps=bad)


def test_the_controlnets_run_only_at_their_steps(components, setup):
    edges = setup[4]["edges_canny"]
    calls = []
    hook = edges.register_forward_hook(lambda *_: calls.append(1))
    try:
        early = replace(SETTINGS, control_steps=(0.0, 0.5))  # 3 steps run: the first 2
        render(components, early, [edges])
        assert len(calls) == 2
        # A range that no step reaches: the ControlNet is never called, and the key is the
        # key without one.
        calls.clear()
        never = replace(SETTINGS, control_steps=(0.9, 1.0))
        unguided = render(components, never, [edges])
        assert calls == []
    finally:
        hook.remove()
    np.testing.assert_array_equal(unguided, render(components, SETTINGS, []))
    assert "control steps" not in diffusion_key_identity("m", "fp32", SETTINGS)
    identities = {diffusion_key_identity("m", "fp32", s) for s in (SETTINGS, early, never)}
    assert len(identities) == 3


def test_control_steps_from_projects_the_cli_and_the_png(setup, tmp_path, capsys):
    from zvstudio import cli

    root, model, config, clip, _ = setup
    settings = edges_settings(root, controlnet_end=0.6)
    save_project(Project(clip=ClipRef.from_file(clip), settings=settings), tmp_path / "p.zvs")
    request = request_from_project(load_project(tmp_path / "p.zvs"), tmp_path / "o.mp4")
    assert request.renderer.diffusion.settings.control_steps == (0.0, 0.6)
    assert "ControlNet edges_canny 0.7 (steps 0 to 0.6)" in describe(settings)
    with pytest.raises(ProjectError, match="controlnet_end: must be after controlnet_start"):
        replace(settings, controlnet_start=0.6)
    render_args = ["render", str(tmp_path / "p.zvs"), "-o", str(tmp_path / "o.mp4")]
    args = cli._build_parser().parse_args([*render_args, "--controlnet-steps", "0.2,0.9"])
    spec = cli._render_request(args, tmp_path).renderer.diffusion
    assert spec.settings.control_steps == (0.2, 0.9)
    base = ["preview", str(clip), "--model", str(model), "--config", str(config), "--steps", "2"]
    base += ["--device", "cpu", "-q", "--controlnet", str(root / "edges_canny")]
    out = root / "early.png"
    assert main([*base, "--controlnet-steps", "0,0.5", "-o", str(out)]) == 0
    with Image.open(out) as png:
        assert "Guidance Start: 0, Guidance End: 0.5" in png.text["parameters"]
    assert main([*base, "--controlnet-steps", "half", "-o", str(out)]) == 1
    assert "e.g. --controlnet-steps 0,0.6" in capsys.readouterr().err
