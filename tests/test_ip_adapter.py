"""A reference image through an IP-Adapter: loading offline (adapter files, CLIP vision
encoders as folders or single files), the image's attention in the UNet, the guidance batch's
embeddings, keys rendered with it, cache identities, the model library and the command line,
on tiny random models."""

from __future__ import annotations

import copy
import shutil
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from helpers import make_clip, red_square_frame, save_state_dict
from PIL import Image
from tiny_models import (
    TINY_VISION,
    build_tiny_image_encoder,
    tiny_ip_adapter,
    write_tiny_config_dir,
    write_tiny_diffusers,
    write_tiny_image_encoder,
)

from zvstudio.cli import main
from zvstudio.diffusion.identify import FACE_ID_LAYOUT, classify, identify
from zvstudio.diffusion.ip_adapter import (
    PARTS,
    adapter_layout,
    install_ip_adapter,
    load_image_encoder,
    read_ip_adapter,
    reference_embeddings,
    resolve_reference_models,
    set_reference_scale,
)
from zvstudio.diffusion.library import scan
from zvstudio.diffusion.loading import load_sd15_components
from zvstudio.diffusion.sampler import KeySettings, diffusion_key_identity
from zvstudio.engine.preview import (
    DiffusionSpec,
    build_sampler,
    create_diffusion_renderer,
    diffusion_model_key,
    reference_models_key,
)
from zvstudio.errors import ZvsError
from zvstudio.keyrender import KeyContext, KeyParams

SETTINGS = KeySettings(prompt="a red cat", steps=4, strength=0.75, seed=3)


def picture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.repeat(np.repeat(rng.integers(0, 256, (6, 8, 3), np.uint8), 8, 0), 8, 1)
    return cv2.GaussianBlur(image, (5, 5), 0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model, h94's layout (models/ip-adapter_sd15.safetensors, the plus adapter and
    models/image_encoder/), two reference images and a clip."""
    root = tmp_path_factory.mktemp("ipadapter")
    model = write_tiny_diffusers(root / "model")
    config = write_tiny_config_dir(root / "config")
    unet = load_sd15_components(model, config_dir=config).unet
    adapters = root / "library" / "models"
    adapters.mkdir(parents=True)
    save_state_dict(adapters / "ip-adapter_sd15.safetensors", tiny_ip_adapter(unet, "base"))
    plus = tiny_ip_adapter(unet, "plus", seed=1)
    save_state_dict(adapters / "ip-adapter-plus_sd15.safetensors", plus)
    write_tiny_image_encoder(adapters / "image_encoder")
    for name, seed in (("a.png", 1), ("b.png", 2)):
        cv2.imwrite(str(root / name), cv2.cvtColor(picture(seed), cv2.COLOR_RGB2BGR))
    clip, _, _ = make_clip(root / "c.mp4", count=3, width=64, height=48)
    return root, model, config, adapters, clip


@pytest.fixture
def components(setup):
    _, model, config, _, _ = setup
    return load_sd15_components(model, config_dir=config)


def spec_for(setup, settings: KeySettings, adapter: str = "ip-adapter_sd15") -> DiffusionSpec:
    _, model, config, adapters, _ = setup
    return DiffusionSpec(
        model,
        settings,
        device="cpu",
        config_dir=config,
        ip_adapter=adapters / f"{adapter}.safetensors",
        image_encoder=adapters / "image_encoder",
    )


def render_key(setup, settings: KeySettings, adapter: str = "ip-adapter_sd15") -> np.ndarray:
    sampler = build_sampler(spec_for(setup, settings, adapter))
    try:
        return sampler.render(red_square_frame(), is_anchor=True).astype(int)
    finally:
        sampler.close()


# -- the adapter in the UNet -------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["base", "plus"])
def test_the_image_attends_in_every_cross_attention_layer_at_its_scale(setup, components, layout):
    from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0

    adapters = setup[3]
    name = "ip-adapter_sd15" if layout == "base" else "ip-adapter-plus_sd15"
    adapter = read_ip_adapter(adapters / f"{name}.safetensors")
    assert adapter_layout(adapter) == layout
    plain_unet = copy.deepcopy(components.unet)
    unet = components.unet
    install_ip_adapter(unet, adapter, name)
    for processor_name, processor in unet.attn_processors.items():
        wanted = IPAdapterAttnProcessor2_0 if "attn2" in processor_name else AttnProcessor2_0
        assert type(processor) is wanted, processor_name
    encoder = load_image_encoder(adapters / "image_encoder")
    embeds = {
        seed: reference_embeddings(encoder, picture(seed), layout, "cpu", torch.float32)
        for seed in (1, 2)
    }
    torch.manual_seed(0)
    latents, text = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)

    def noise(image_embeds: torch.Tensor) -> torch.Tensor:
        kwargs = {"added_cond_kwargs": {"image_embeds": [image_embeds]}}
        return unet(latents, 500, encoder_hidden_states=text, **kwargs).sample

    plain = plain_unet(latents, 500, encoder_hidden_states=text).sample
    assert set_reference_scale(unet, 0.0) == 4  # the tiny UNet's cross-attention layers
    torch.testing.assert_close(noise(embeds[1]), plain, rtol=0, atol=1e-6)
    set_reference_scale(unet, 1.0)
    first, second = noise(embeds[1]), noise(embeds[2])
    assert (first - plain).abs().mean() > 1e-3
    assert (first - second).abs().mean() > 1e-4  # the image, not only the adapter, matters
    set_reference_scale(unet, 0.5)
    half = noise(embeds[1])
    assert 0 < (half - plain).abs().mean() < (first - plain).abs().mean()


def test_the_guidance_batchs_negative_is_what_the_adapters_were_trained_with(setup):
    """Base adapters: zeros, and the positive is CLIP's projected image embedding; the others:
    the penultimate layer's tokens of an all-zero pixel tensor."""
    encoder = build_tiny_image_encoder()
    image = picture(1)
    base = reference_embeddings(encoder, image, "base", "cpu", torch.float32)
    pixels = _clip_pixels(image)
    assert base.shape == (2, 1, 24)
    assert torch.equal(base[0], torch.zeros(1, 24))
    torch.testing.assert_close(base[1], encoder(pixels).image_embeds)
    plus = reference_embeddings(encoder, image, "plus", "cpu", torch.float32)
    assert plus.shape == (2, 1, 17, 128)  # 16 patches + the class token, 128 wide
    hidden = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(plus[0], hidden, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plus[0], plus[1])


def _clip_pixels(image: np.ndarray) -> torch.Tensor:
    """CLIP's preprocessing written out: shortest side to 32 (bicubic), centre crop,
    normalised with CLIP's mean and std."""
    height, width = image.shape[:2]
    scale = 32 / min(height, width)
    size = (int(width * scale), int(height * scale))  # as transformers truncates
    resized = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC), np.float32) / 255
    top, left = (size[1] - 32) // 2, (size[0] - 32) // 2
    crop = resized[top : top + 32, left : left + 32]
    mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
    return torch.from_numpy((crop - mean) / std).permute(2, 0, 1)[None]


# -- keys ------------------------------------------------------------------------------------
def test_keys_take_the_look_of_the_reference_image(setup):
    root = setup[0]
    plain = render_key(setup, SETTINGS)
    with_a = replace(SETTINGS, reference_image=str(root / "a.png"), reference_scale=1.0)
    key_a = render_key(setup, with_a)
    key_b = render_key(setup, replace(with_a, reference_image=str(root / "b.png")))
    silent = render_key(setup, replace(with_a, reference_scale=0.0))
    assert np.abs(key_a - plain).mean() > 1
    assert np.abs(key_a - key_b).mean() > 0.5
    assert np.abs(silent - plain).max() <= 1  # strength 0: the key without a reference
    plus = render_key(setup, with_a, "ip-adapter-plus_sd15")
    assert np.abs(plus - plain).mean() > 1


def test_later_keys_keep_the_reference_with_cross_frame_attention(setup):
    root = setup[0]
    settings = replace(SETTINGS, reference_image=str(root / "a.png"), reference_scale=1.0)
    sampler = build_sampler(spec_for(setup, settings))
    try:
        anchor = sampler.render(red_square_frame(), is_anchor=True)
        later = sampler.render(np.roll(red_square_frame(), 3, axis=1), is_anchor=False)
        assert later.shape == anchor.shape
        sampler.settings = replace(settings, reference_image=str(root / "b.png"))
        with pytest.raises(ZvsError, match=r"not '.*b\.png': load them again"):
            sampler.render(red_square_frame(), is_anchor=True)
    finally:
        sampler.close()
    without = build_sampler(spec_for(setup, SETTINGS))
    without.settings = settings
    with pytest.raises(ZvsError, match="loaded without an IP-Adapter"):
        without.render(red_square_frame(), is_anchor=True)


def test_a_key_takes_a_reference_image_of_its_own(setup):
    root = setup[0]
    plain = render_key(setup, SETTINGS)
    global_a = replace(SETTINGS, reference_image=str(root / "a.png"), reference_scale=1.0)
    key_a = render_key(setup, global_a)
    # Loaded for a render whose key 5 has b.png: every key's embeddings are made at once.
    spec = replace(spec_for(setup, global_a), key_references=(str(root / "b.png"),))
    renderer = create_diffusion_renderer(spec)
    try:
        frame = red_square_frame()
        own = KeyParams(reference_image=str(root / "b.png"))
        assert np.array_equal(renderer.render(frame, KeyContext(0)), key_a)
        key_b = renderer.render(frame, KeyContext(5, params=own)).astype(int)
        assert np.abs(key_b - key_a).mean() > 0.5
        assert np.array_equal(renderer.render(frame, KeyContext(0)), key_a)  # a again after
        identities = {renderer.key_identity(n, p) for n, p in ((0, None), (5, own))}
        assert len(identities) == 2
    finally:
        renderer.sampler.close()
    # Only key 5 has one: the adapter is loaded, yet the other keys render as without it
    # (strength 0 skips it), so their identity and cached renders stay those of a plain render.
    strong = replace(SETTINGS, reference_scale=1.0)  # the strength is the render's
    spec = replace(spec_for(setup, strong), key_references=(str(root / "b.png"),))
    renderer = create_diffusion_renderer(spec)
    try:
        assert np.array_equal(renderer.render(frame, KeyContext(0)), plain)
        assert np.array_equal(renderer.render(frame, KeyContext(5, params=own)), key_b)
        plain_identity = create_diffusion_renderer(spec_for(setup, SETTINGS)).key_identity(0)
        assert renderer.key_identity(0) == plain_identity
        assert "ip_adapter=" in renderer.key_identity(5, own)
    finally:
        renderer.sampler.close()


def test_a_key_takes_a_reference_strength_of_its_own(setup):
    root = setup[0]
    plain = render_key(setup, SETTINGS)
    global_a = replace(SETTINGS, reference_image=str(root / "a.png"), reference_scale=1.0)
    renderer = create_diffusion_renderer(spec_for(setup, global_a))
    try:
        frame = red_square_frame()
        key_a = renderer.render(frame, KeyContext(0)).astype(int)
        off = KeyParams(reference_strength=0.0)  # this key does without the look
        assert np.array_equal(renderer.render(frame, KeyContext(3, params=off)), plain)
        half = KeyParams(reference_strength=0.5)
        key_half = renderer.render(frame, KeyContext(6, params=half)).astype(int)
        assert np.abs(key_half - key_a).mean() > 0.2 and np.abs(key_half - plain).mean() > 0.2
        identities = {renderer.key_identity(n, p) for n, p in ((0, None), (3, off), (6, half))}
        assert len(identities) == 3  # each strength is a render of its own in the cache
    finally:
        renderer.sampler.close()


def test_the_identity_names_the_images_content_and_strength(setup, tmp_path):
    root = setup[0]
    assert "reference" not in repr(replace(SETTINGS, reference_image="x.png"))
    plain = diffusion_key_identity("m", "fp32", SETTINGS)
    assert "reference" not in plain
    with_a = replace(SETTINGS, reference_image=str(root / "a.png"))
    moved = shutil.copyfile(root / "a.png", tmp_path / "moved.png")
    identities = [
        diffusion_key_identity("m", "fp32", settings)
        for settings in (
            with_a,
            replace(with_a, reference_image=str(moved)),
            replace(with_a, reference_image=str(root / "b.png")),
            replace(with_a, reference_scale=0.9),
        )
    ]
    assert identities[0] == identities[1]  # the same picture elsewhere: the same keys
    assert len({plain, *identities}) == 4
    # The adapter and encoder are part of the identity of the keys that use a reference only.
    assert diffusion_model_key(spec_for(setup, with_a)) == diffusion_model_key(
        spec_for(setup, SETTINGS)
    )
    files = reference_models_key(spec_for(setup, with_a))
    assert "ip_adapter=" in files and "image_encoder=" in files
    assert reference_models_key(spec_for(setup, SETTINGS)) == ""
    assert reference_models_key(spec_for(setup, with_a, "ip-adapter-plus_sd15")) != files
    assert diffusion_key_identity("m", "fp32", with_a, None, False, files).endswith(files)


# -- files -----------------------------------------------------------------------------------
def test_the_library_lists_adapters_and_encoders_and_pairs_them(setup, tmp_path):
    root, _, _, adapters, _ = setup
    models = scan([root / "library"])
    kinds = {m.name: (m.kind, m.base, m.details.get("layout")) for m in models}
    # The tiny UNet's context (32 wide) is no real base's; SD1.5's 768 is.
    assert kinds["ip-adapter_sd15"] == ("ip_adapter", "unknown", "base")
    assert kinds["ip-adapter-plus_sd15"] == ("ip_adapter", "unknown", "plus")
    sd15 = {"image_proj.proj.weight": (3072, 1024), "ip_adapter.1.to_k_ip.weight": (320, 768)}
    assert classify(sd15)[:2] == ("ip_adapter", "sd1")
    assert classify(sd15)[2]["image_width"] == 1024
    assert kinds["image_encoder"][0] == "image_encoder"
    # The plain adapter before the plus one and before a Face ID one, whatever their names;
    # its encoder is the folder beside it.
    face_id = replace(models[0], name="a", kind="ip_adapter", details={"layout": FACE_ID_LAYOUT})
    assert resolve_reference_models(None, None, [face_id, *models]) == (
        adapters / "ip-adapter_sd15.safetensors",
        adapters / "image_encoder",
    )
    # ComfyUI's layout: adapters in models/ipadapter, encoders as files in models/clip_vision,
    # paired by the width the adapter takes.
    comfy = tmp_path / "ComfyUI" / "models"
    (comfy / "ipadapter").mkdir(parents=True)
    (comfy / "clip_vision").mkdir()
    shutil.copy(adapters / "ip-adapter-plus_sd15.safetensors", comfy / "ipadapter")
    state = build_tiny_image_encoder().state_dict()
    save_state_dict(comfy / "clip_vision" / "tiny-vit.safetensors", state)
    narrow = {"hidden_size": 64, "num_attention_heads": 1, "projection_dim": 8}
    save_state_dict(comfy / "clip_vision" / "another.safetensors", encoder_state(**narrow))
    comfy_models = scan([comfy])
    found = resolve_reference_models(None, None, comfy_models)
    assert found[1] == comfy / "clip_vision" / "tiny-vit.safetensors"
    # The plus adapter takes the 128-wide tokens; the base one the 24-wide embedding.
    base = comfy / "ipadapter" / "base.safetensors"
    shutil.copy(adapters / "ip-adapter_sd15.safetensors", base)
    with pytest.raises(ZvsError, match="needs a CLIP vision encoder \\(24 wide\\)"):
        resolve_reference_models(base, None, [m for m in comfy_models if m.name != "tiny-vit"])
    with pytest.raises(ZvsError, match=r"needs an SD1\.5 IP-Adapter"):
        resolve_reference_models(None, None, [])


def encoder_state(**changes) -> dict:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(**{**TINY_VISION, **changes})
    return CLIPVisionModelWithProjection(config).state_dict()


def test_an_encoder_file_loads_as_its_folder_does(setup, tmp_path):
    adapters = setup[3]
    folder = load_image_encoder(adapters / "image_encoder")
    path = save_state_dict(tmp_path / "clip_vision.safetensors", folder.state_dict())
    single = load_image_encoder(path)
    assert identify(path).kind == "image_encoder"
    image = picture(4)
    for layout in ("base", "plus"):
        torch.testing.assert_close(
            reference_embeddings(single, image, layout, "cpu", torch.float32),
            reference_embeddings(folder, image, layout, "cpu", torch.float32),
        )
    # An encoder of another width is refused before it runs, naming both files.
    narrow = save_state_dict(tmp_path / "narrow.safetensors", encoder_state(projection_dim=8))
    settings = replace(SETTINGS, reference_image=str(setup[0] / "a.png"))
    spec = replace(spec_for(setup, settings), image_encoder=narrow)
    with pytest.raises(ZvsError, match=r"'narrow\.safetensors' gives 8-wide .* takes 24-wide"):
        build_sampler(spec)
    with pytest.raises(ZvsError, match="not a CLIP vision encoder"):
        load_image_encoder(save_state_dict(tmp_path / "x.safetensors", {"a": torch.zeros(2)}))


def test_adapters_of_another_kind_or_base_are_refused_before_any_change(setup, components):
    root = setup[0]
    flat = tiny_ip_adapter(components.unet)
    xl = {k: (torch.zeros(v.shape[0], 2048) if "_ip." in k else v) for k, v in flat.items()}
    path = save_state_dict(root / "ip-adapter_sdxl.safetensors", xl)
    assert identify(path).base == "sdxl"
    before = dict(components.unet.attn_processors)
    with pytest.raises(ZvsError, match="is for SDXL models \\(context width 2048\\) and the model"):
        install_ip_adapter(components.unet, read_ip_adapter(path), path.name)
    face = {k: v for k, v in flat.items() if k.startswith("ip_adapter.")}
    face |= {"image_proj.norm.weight": torch.ones(32), "image_proj.proj.0.weight": torch.ones(4)}
    face_path = save_state_dict(root / "ip-adapter-faceid_sd15.safetensors", face)
    with pytest.raises(ZvsError, match="Face ID adapter"):
        install_ip_adapter(components.unet, read_ip_adapter(face_path), "faceid")
    assert dict(components.unet.attn_processors) == before
    with pytest.raises(ZvsError, match="is not an IP-Adapter"):
        read_ip_adapter(save_state_dict(root / "other.safetensors", {"x": torch.zeros(1)}))
    # The released .bin files are pickles of {"image_proj": {...}, "ip_adapter": {...}}.
    nested = {part: {} for part in PARTS}
    for key, value in flat.items():
        part, _, rest = key.partition(".")
        nested[part][rest] = value
    torch.save(nested, root / "ip-adapter_sd15.bin")
    with pytest.raises(ZvsError, match="pickled"):
        read_ip_adapter(root / "ip-adapter_sd15.bin")
    unpickled = read_ip_adapter(root / "ip-adapter_sd15.bin", allow_pickle=True)
    assert torch.equal(unpickled["image_proj"]["proj.weight"], flat["image_proj.proj.weight"])


# -- the command line ------------------------------------------------------------------------
def test_preview_with_a_reference_image(setup, capsys, monkeypatch):
    root, model, config, _, clip = setup
    monkeypatch.setenv("ZVSTUDIO_MODELS", str(root / "library"))
    base = ["preview", str(clip), "--model", str(model), "--config", str(config)]
    base += ["--steps", "3", "--device", "cpu", "-q", "--seed", "1"]
    out = root / "ref.png"
    reference = ["--reference", str(root / "a.png"), "--reference-strength", "0.8"]
    assert main([*base, *reference, "-o", str(out)]) == 0, capsys.readouterr().err
    with Image.open(out) as png:
        text = png.text["parameters"]
    assert "Reference image: a.png, Reference strength: 0.8, IP-Adapter: ip-adapter_sd15" in text
    assert main([*base, "-o", str(root / "plain.png")]) == 0
    difference = cv2.imread(str(out)).astype(int) - cv2.imread(str(root / "plain.png"))
    assert np.abs(difference).mean() > 1
    assert main([*base, "--reference-strength", "0.5", "-o", str(out)]) == 1
    assert "--reference-strength is for a reference image" in capsys.readouterr().err
    assert main([*base, "--reference", str(root / "none.png"), "-o", str(out)]) == 1
    assert "reference image not found" in capsys.readouterr().err


# -- projects --------------------------------------------------------------------------------
def test_a_project_keeps_its_reference_image(setup, tmp_path, monkeypatch):
    from zvstudio import cli
    from zvstudio.engine.request import request_from_project
    from zvstudio.project import ClipRef, Project, RenderSettings, load_project, save_project
    from zvstudio.project.model import KeyFrame
    from zvstudio.project.presets import describe

    root, model, _, adapters, clip = setup
    shutil.copy(root / "a.png", tmp_path / "look.png")
    settings = RenderSettings(
        renderer="diffusion",
        model=str(model),
        controlnet=None,
        reference_image=str(tmp_path / "look.png"),
        reference_strength=0.8,
        ip_adapter=str(adapters / "ip-adapter-plus_sd15.safetensors"),
    )
    shutil.copy(root / "b.png", tmp_path / "shot2.png")
    keys = [
        KeyFrame(0, reference_strength=0.3),
        KeyFrame(2, reference_image=str(tmp_path / "shot2.png")),
    ]
    project = Project(clip=ClipRef.from_file(clip), settings=settings, keyframes=keys)
    save_project(project, tmp_path / "p.zvs")
    text = (tmp_path / "p.zvs").read_text()
    assert '"reference_image": "look.png"' in text  # beside it
    assert '"reference_image": "shot2.png"' in text  # key 2's own
    loaded = load_project(tmp_path / "p.zvs")
    assert loaded.settings == settings and loaded.keyframes == keys
    request = request_from_project(loaded, tmp_path / "o.mp4")
    assert request.key_params == (
        (0, KeyParams(reference_strength=0.3)),
        (2, KeyParams(reference_image=str(tmp_path / "shot2.png"))),
    )
    spec = request.renderer.diffusion
    assert spec.key_references == (str(tmp_path / "shot2.png"),)
    assert spec.settings.reference_image == str(tmp_path / "look.png")
    assert spec.settings.reference_scale == 0.8
    assert spec.ip_adapter == adapters / "ip-adapter-plus_sd15.safetensors"
    assert spec.image_encoder == adapters / "image_encoder"
    assert "reference look.png 0.8" in describe(settings)
    # `render P.zvs --reference` replaces it for one render; --reference-strength alone
    # changes the project's strength.
    monkeypatch.setenv("ZVSTUDIO_MODELS", str(root / "library"))
    render = ["render", str(tmp_path / "p.zvs"), "-o", str(tmp_path / "o.mp4")]
    args = cli._build_parser().parse_args([*render, "--reference", str(root / "b.png")])
    spec = cli._render_request(args, tmp_path).renderer.diffusion
    assert spec.settings.reference_image == str(root / "b.png")
    assert spec.ip_adapter == adapters / "ip-adapter-plus_sd15.safetensors"  # the project's
    base = adapters / "ip-adapter_sd15.safetensors"
    args = cli._build_parser().parse_args([*render, "--ip-adapter", str(base)])
    spec = cli._render_request(args, tmp_path).renderer.diffusion
    assert (spec.ip_adapter, spec.image_encoder) == (base, adapters / "image_encoder")
    args = cli._build_parser().parse_args([*render, "--reference-strength", "0.3"])
    spec = cli._render_request(args, tmp_path).renderer.diffusion
    assert (spec.settings.reference_image, spec.settings.reference_scale) == (
        str(tmp_path / "look.png"),
        0.3,
    )


# -- text-to-video -----------------------------------------------------------------------------
def test_text_to_video_takes_the_reference_in_every_frame(setup, tmp_path, capsys):
    from zvstudio.engine.preview import load_diffusion_models
    from zvstudio.generate.t2v_zero import TextToVideoSettings, TextToVideoZero

    root, model, config, adapters, _ = setup
    settings = TextToVideoSettings(prompt="a cat", frames=3, steps=3, width=32, height=32)

    def latents(reference: str = "", scale: float = 1.0) -> torch.Tensor:
        keys = KeySettings(reference_image=reference, reference_scale=scale)
        components, _ = load_diffusion_models(spec_for(setup, keys))
        return TextToVideoZero(components).latents(settings)

    plain = latents()
    silent = latents(str(root / "a.png"), 0.0)
    guided = latents(str(root / "a.png"))
    torch.testing.assert_close(silent, plain, rtol=0, atol=1e-5)
    for frame_index in range(3):  # every frame, not only frame 0, sees the image
        assert (guided[frame_index] - plain[frame_index]).abs().mean() > 1e-3
    out = tmp_path / "ref.mp4"
    command = ["generate", "--model", str(model), "--config", str(config), "--device", "cpu"]
    command += ["-q", "--prompt", "a cat", "--frames", "2", "--steps", "3", "--width", "32"]
    command += ["--reference", str(root / "a.png"), "--ip-adapter"]
    command += [str(adapters / "ip-adapter_sd15.safetensors"), "-o", str(out)]
    assert main(command) == 0, capsys.readouterr().err
    assert out.is_file()


def test_giving_one_key_a_reference_renders_that_key_again_only(setup, tmp_path, monkeypatch):
    from zvstudio.engine.render import render
    from zvstudio.engine.request import request_from_project
    from zvstudio.project import ClipRef, Project, RenderSettings
    from zvstudio.project.model import KeyFrame

    root, model, config, adapters, clip = setup
    monkeypatch.setenv("ZVSTUDIO_CACHE_DIR", str(tmp_path / "cache"))
    settings = RenderSettings(
        renderer="diffusion",
        model=str(model),
        controlnet=None,
        steps=3,
        ip_adapter=str(adapters / "ip-adapter_sd15.safetensors"),
    )

    def render_with(keys: list[KeyFrame]):
        project = Project(clip=ClipRef.from_file(clip), settings=settings, keyframes=keys)
        request = request_from_project(project, tmp_path / "out.mp4")
        diffusion = replace(request.renderer.diffusion, device="cpu", config_dir=config)
        request = replace(request, renderer=replace(request.renderer, diffusion=diffusion))
        return render(request)

    first = render_with([KeyFrame(0), KeyFrame(2)])
    assert first.rendered_keys == 2
    again = render_with([KeyFrame(0), KeyFrame(2, reference_image=str(root / "a.png"))])
    assert (again.reused_keys, again.rendered_keys) == (1, 1)  # key 0 stays as it was
