"""Textual inversion embeddings: found in the model folders, identified from their headers,
added to the text encoder, used by the prompts that name them, and part of a key's identity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from zvstudio.diffusion.embeddings import (
    apply_embeddings,
    available_embeddings,
    embeddings_identity,
    expand_prompt,
    loadable_embeddings,
    names_in,
)
from zvstudio.diffusion.identify import classify
from zvstudio.diffusion.library import expand_root, scan

WIDTH = 32  # the tiny text encoder's


@pytest.mark.parametrize(
    ("shapes", "base", "vectors"),
    [
        ({"emb_params": [4, 768]}, "sd1", 4),  # A1111 / kohya safetensors
        ({"string_to_param.*": [2, 1024]}, "sd2", 2),
        ({"clip_l": [8, 768], "clip_g": [8, 1280]}, "sdxl", 8),
        ({"<cat-toy>": [768]}, "sd1", 1),  # diffusers' own: {token: vectors}
        ({"<cat-toy>": [3, 768]}, "sd1", 3),
    ],
)
def test_embeddings_are_told_from_their_tensors(shapes, base, vectors):
    kind, found_base, details = classify(shapes)
    assert (kind, found_base, details["vectors"]) == ("embedding", base, vectors)


def test_an_a1111_install_lends_its_embeddings_folder(tmp_path):
    install = tmp_path / "webui"
    (install / "models" / "Stable-diffusion").mkdir(parents=True)
    (install / "embeddings").mkdir()
    (install / "webui.py").write_text("")
    write_embedding(install / "embeddings", "EasyNeg", torch.zeros(2, 768))
    assert install / "embeddings" in expand_root(install)
    (info,) = [m for m in scan(expand_root(install)) if m.kind == "embedding"]
    assert (info.name, info.base, info.details["vectors"]) == ("EasyNeg", "sd1", 2)


def write_embedding(folder: Path, name: str, vectors: torch.Tensor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file({"emb_params": vectors}, str(path))
    return path


def test_prompt_words_name_embeddings_in_any_case():
    names = ["EasyNeg", "bad-hands"]
    assert names_in(["a cat, easyneg"], names) == ["EasyNeg"]
    assert names_in(["BAD-HANDS, blurry", "x"], names) == ["bad-hands"]
    assert names_in(["easynegative", "bad-handsome", "not_easyneg"], names) == []
    expanded = expand_prompt("EASYNEG, a cat (easyneg:1.2)", {"EasyNeg": 3, "bad-hands": 1})
    assert expanded == "EasyNeg EasyNeg_1 EasyNeg_2, a cat (EasyNeg EasyNeg_1 EasyNeg_2:1.2)"


@pytest.fixture
def tiny_components(tmp_path):
    from tiny_models import write_tiny_config_dir, write_tiny_diffusers

    from zvstudio.diffusion.loading import load_sd15_components

    model = write_tiny_diffusers(tmp_path / "model")
    return load_sd15_components(model, config_dir=write_tiny_config_dir(tmp_path / "config"))


def test_a_named_embedding_is_what_the_text_encoder_reads(tiny_components, tmp_path):
    from zvstudio.diffusion.sampler import encode_prompts

    components = tiny_components
    vectors = torch.randn(3, WIDTH, generator=torch.Generator().manual_seed(1))
    write_embedding(tmp_path / "embeddings", "EasyNeg", vectors)
    write_embedding(tmp_path / "embeddings", "WideOne", torch.zeros(2, 768))  # SD1.5's width
    plain_before, named_before = encode_prompts(components, ["a cat", "a cat, easyneg"])
    notes: list[str] = []
    found = available_embeddings([tmp_path / "embeddings"])
    assert apply_embeddings(components, found, False, notes.append) == {"EasyNeg": 3}
    assert "WideOne.safetensors not used: its vectors are 768 wide, the model's 32" in notes[0]
    plain, named = encode_prompts(components, ["a cat", "a cat, easyneg"])
    assert torch.equal(plain, plain_before)  # a prompt without it reads as before
    assert not torch.allclose(named, named_before)
    ids = components.tokenizer(expand_prompt("easyneg", components.embeddings)).input_ids[1:-1]
    table = components.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[ids], vectors)  # its three vectors, in order


def test_pickled_embeddings_load_only_when_allowed(tiny_components, tmp_path):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    vectors = torch.randn(2, WIDTH)
    torch.save({"string_to_param": {"*": vectors}, "name": "inked"}, folder / "inked.pt")
    assert loadable_embeddings(False, [folder]) == {}
    allowed = loadable_embeddings(True, [folder])
    assert apply_embeddings(tiny_components, allowed, True) == {"inked": 2}
    ids = tiny_components.tokenizer(expand_prompt("inked", {"inked": 2})).input_ids[1:-1]
    table = tiny_components.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[ids], vectors)


def test_a_keys_identity_names_the_embeddings_its_prompts_use(tmp_path, monkeypatch):
    from zvstudio.diffusion.sampler import KeySettings, diffusion_key_identity
    from zvstudio.keyrender import KeyParams

    folder = tmp_path / "models"
    monkeypatch.setenv("ZVSTUDIO_MODELS", str(folder))
    path = write_embedding(folder, "EasyNeg", torch.ones(2, WIDTH))
    settings = KeySettings(prompt="a cat", negative_prompt="easyneg, blurry")
    identity = diffusion_key_identity("m", torch.float32, settings)
    assert "embeddings EasyNeg=" in identity
    plain = diffusion_key_identity("m", torch.float32, KeySettings(prompt="a cat"))
    assert "embeddings" not in plain
    overridden = diffusion_key_identity("m", torch.float32, settings, KeyParams(negative_prompt=""))
    assert "embeddings" not in overridden  # this key's own negative prompt does not use it
    assert embeddings_identity(["easyneg"], False).startswith("EasyNeg=")

    path.unlink()  # replaced by other vectors: the keys that use it are other keys
    write_embedding(folder, "EasyNeg", torch.zeros(2, WIDTH))
    scan([folder])  # what the Model manager's Refresh does
    assert diffusion_key_identity("m", torch.float32, settings) != identity
    assert diffusion_key_identity("m", torch.float32, KeySettings(prompt="a cat")) == plain


def test_a_render_uses_the_embedding_its_prompt_names(tmp_path, monkeypatch):
    from helpers import make_clip
    from tiny_models import write_tiny_config_dir, write_tiny_diffusers

    from zvstudio.diffusion.sampler import KeySettings
    from zvstudio.engine.preview import DiffusionSpec
    from zvstudio.engine.render import render
    from zvstudio.engine.request import KeyRendererSpec, RenderRequest
    from zvstudio.engine.status import render_status
    from zvstudio.media import ExportSettings

    models = tmp_path / "models"
    (models / "embeddings").mkdir(parents=True)
    monkeypatch.setenv("ZVSTUDIO_MODELS", str(models))
    clip, _, _ = make_clip(tmp_path / "c.mp4", count=4, width=64, height=48)
    spec = DiffusionSpec(
        write_tiny_diffusers(tmp_path / "model"),
        KeySettings(prompt="a cat, InkStyle", steps=2),
        device="cpu",
        config_dir=write_tiny_config_dir(tmp_path / "config"),
    )

    def request(output: str) -> RenderRequest:
        kind = KeyRendererSpec(kind="diffusion", diffusion=spec)
        png = ExportSettings(format="png")
        return RenderRequest(clip, tmp_path / output, kind, png, key_interval=3)

    assert render(request("word")).rendered_keys == 2  # "inkstyle" is only a word yet
    write_embedding(models / "embeddings", "inkstyle", torch.randn(2, WIDTH) * 3)
    scan([models])  # the Model manager's Refresh
    logged: list[str] = []
    inked = render(request("inked"), log=logged.append)
    assert any("embeddings: inkstyle" in line for line in logged)
    assert inked.rendered_keys == 2  # other keys: not taken from the cache
    word, vectors = (read(tmp_path / name / "frame_000000.png") for name in ("word", "inked"))
    assert not np.array_equal(word, vectors)
    assert render_status(request("again")).complete


def read(path: Path) -> np.ndarray:
    import cv2

    return cv2.imread(str(path))
