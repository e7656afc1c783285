"""SD1.x loading: our architecture configs, the offline CLIP tokenizer, both model layouts."""

from __future__ import annotations

import argparse
import gzip
import json
import socket

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import (
    TINY_MERGES,
    build_tiny_models,
    to_original_layout,
    write_tiny_config_dir,
    write_tiny_diffusers,
    write_tiny_single_file,
    write_tiny_tokenizer,
)

from zvstudio.diffusion import tokenizer as tok
from zvstudio.diffusion.loading import (
    empty_sd15_models,
    load_sd15_components,
    match_original_checkpoint,
    sd15_config_dir,
)
from zvstudio.errors import ZvsError


def test_network_guard_works():
    with pytest.raises(AssertionError, match="network"):
        socket.create_connection(("127.0.0.1", 9))
    with pytest.raises(AssertionError, match="network"), socket.socket() as s:
        s.connect(("127.0.0.1", 9))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny models written once: a config folder, a single file, a diffusers folder."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        "config": write_tiny_config_dir(root / "config"),
        "file": write_tiny_single_file(root / "tiny.safetensors"),
        "folder": write_tiny_diffusers(root / "diffusers"),
        "models": build_tiny_models(),
    }


def assert_same_weights(expected, loaded, dtype=torch.float32):
    for a, b in zip(expected, loaded, strict=True):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sb[k].dtype == dtype and torch.equal(sa[k].to(dtype), sb[k]), k


# ------------------------------------------------------------------------------ SD1.5 configs


def test_sd15_configs_have_the_published_parameter_counts():
    unet, vae, text = empty_sd15_models()  # meta device: nothing allocated
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(unet) == 859_520_964
    assert count(vae) == 83_653_863
    assert count(text) == 123_060_480
    assert unet.config.cross_attention_dim == 768 and unet.config.sample_size == 64
    assert vae.config.scaling_factor == 0.18215
    assert text.config.hidden_act == "quick_gelu" and text.config.vocab_size == 49408


def test_sd15_scheduler_and_index():
    from diffusers import DDIMScheduler

    root = sd15_config_dir()
    scheduler = DDIMScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=True)
    c = scheduler.config
    assert (c.beta_start, c.beta_end, c.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert (c.num_train_timesteps, c.steps_offset) == (1000, 1)
    assert not c.set_alpha_to_one and not c.clip_sample
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None]
    tokenizer_config = json.loads((root / "tokenizer" / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 77


def test_sd15_original_key_names_match_diffusers_conversion():
    """Our original-layout writer and diffusers' converter agree at full SD1.5 size."""
    models = empty_sd15_models()
    unet, vae, text = (m.state_dict() for m in models)
    original = to_original_layout(unet, vae, text, dict(models[0].config), dict(models[1].config))
    shapes = {k: tuple(v.shape) for k, v in original.items()}
    renames = match_original_checkpoint(models, shapes)
    assert [len(r) for r in renames] == [686, 248, 196]  # every tensor, none left over
    assert sum(map(len, renames)) == len(original)
    # Names every SD1.x checkpoint has.
    assert renames[0]["up_blocks.0.upsamplers.0.conv.weight"] == (
        "model.diffusion_model.output_blocks.2.1.conv.weight"
    )
    assert renames[0]["up_blocks.1.upsamplers.0.conv.weight"] == (
        "model.diffusion_model.output_blocks.5.2.conv.weight"
    )
    assert renames[0]["down_blocks.0.downsamplers.0.conv.weight"] == (
        "model.diffusion_model.input_blocks.3.0.op.weight"
    )
    assert renames[1]["decoder.up_blocks.0.upsamplers.0.conv.weight"] == (
        "first_stage_model.decoder.up.3.upsample.conv.weight"
    )
    assert shapes["first_stage_model.encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)


# --------------------------------------------------------------------------------- tokenizer


def test_vocab_is_built_like_clip_simple_tokenizer(tmp_path):
    merges = ["c a", "ca t</w>", "h e", "he l", "l o</w>", "hel lo</w>", "x y"]
    bpe = tmp_path / "bpe.txt.gz"
    with gzip.open(bpe, "wt", encoding="utf-8") as f:
        f.write("\n".join(["bpe_simple_vocab_16e6.txt#version: 0.2", *merges]) + "\n")
    assert tok.read_bpe_merges(bpe) == merges
    assert tok.read_bpe_merges(bpe, limit=6) == merges[:6]  # CLIP keeps the first 48894

    vocab = tok.clip_vocab(merges[:6])
    chars = list(tok.bytes_to_unicode().values())
    assert len(chars) == 256 and chars[:3] == ["!", '"', "#"] and chars[-1] == "Ń"
    assert [vocab[c] for c in chars] == list(range(256))
    assert [vocab[c + "</w>"] for c in chars] == list(range(256, 512))
    merged = ("ca", "cat</w>", "he", "hel", "lo</w>", "hello</w>")
    assert [vocab[t] for t in merged] == list(range(512, 518))
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (518, 519)
    assert len(vocab) == 520

    folder = tok.write_clip_tokenizer(merges[:6], tmp_path / "tok")
    assert (folder / "merges.txt").read_text().splitlines() == ["#version: 0.2", *merges[:6]]
    tokenizer = load_tokenizer_folder(folder)
    assert tokenizer("Cat hello").input_ids == [518, 513, 517, 519]
    assert tokenizer("a").input_ids == [518, vocab["a</w>"], 519]


def load_tokenizer_folder(folder):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def test_tokenizer_sources_in_order(tmp_path, monkeypatch):
    # 1. The model's own tokenizer folder.
    model = tmp_path / "model"
    write_tiny_tokenizer(model / "tokenizer")
    out = tok.clip_vocab_files(tmp_path / "a", model_dir=model)
    assert json.loads((out / "vocab.json").read_text()) == tok.clip_vocab(TINY_MERGES)
    assert (out / "tokenizer_config.json").is_file()

    # 2. The Hugging Face cache, read from disk (snapshot files are symlinks to blobs there).
    snapshot = tok.hf_hub_cache() / "models--openai--clip-vit-large-patch14" / "snapshots" / "abc"
    tok.write_clip_tokenizer(["q u"], snapshot)
    out = tok.clip_vocab_files(tmp_path / "b")
    assert "qu" in json.loads((out / "vocab.json").read_text())
    assert tok.load_clip_tokenizer().convert_tokens_to_ids("qu") == 512  # via our cache folder

    # 3. Nothing at all: a clear error.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(tok, "BPE_DISTRIBUTIONS", ())
    with pytest.raises(ZvsError, match="vocabulary"):
        tok.clip_vocab_files(tmp_path / "c")


@pytest.mark.skipif(tok.find_bpe_file() is None, reason="no package ships the CLIP vocabulary")
def test_real_clip_vocabulary_gives_known_ids():
    tokenizer = tok.load_clip_tokenizer()
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    long = tokenizer("cat " * 100, truncation=True, padding="max_length").input_ids
    assert len(long) == 77 and long[-1] == 49407


# ------------------------------------------------------------------------------------ models


def test_single_file_round_trips_through_the_original_layout(tiny):
    parts = load_sd15_components(tiny["file"], config_dir=tiny["config"])
    assert_same_weights(tiny["models"], (parts.unet, parts.vae, parts.text_encoder))
    assert not parts.unet.training
    assert parts.text_encoder.embeddings.position_ids.device.type == "cpu"  # a real buffer
    scheduler = parts.make_scheduler()
    assert type(scheduler).__name__ == "DDIMScheduler" and scheduler.config.steps_offset == 1
    with torch.no_grad():  # the parts work together
        ids = parts.tokenizer("a red dog", return_tensors="pt").input_ids
        assert ids[0, 0] == tiny["models"][2].config.bos_token_id
        context = parts.text_encoder(ids).last_hidden_state
        noise = parts.unet(torch.zeros(1, 4, 8, 8), 10, encoder_hidden_states=context).sample
    assert noise.shape == (1, 4, 8, 8) and torch.isfinite(noise).all()


def test_single_file_in_half_precision(tiny):
    parts = load_sd15_components(tiny["file"], dtype=torch.float16, config_dir=tiny["config"])
    assert_same_weights(tiny["models"], (parts.unet, parts.vae, parts.text_encoder), torch.float16)


def test_diffusers_folder_loads(tiny):
    parts = load_sd15_components(tiny["folder"], config_dir=tiny["config"])
    assert_same_weights(tiny["models"], (parts.unet, parts.vae, parts.text_encoder))
    assert parts.tokenizer.convert_tokens_to_ids("cat</w>") == 513
    assert parts.scheduler_config["beta_schedule"] == "scaled_linear"


def test_diffusers_folder_of_another_architecture_is_refused(tiny):
    with pytest.raises(ZvsError, match=r"not an SD1\.x model"):
        load_sd15_components(tiny["folder"])  # checked against the real SD1.5 configs


def test_pickled_checkpoint_refused_unless_allowed(tiny, tmp_path):
    state = load_file(tiny["file"])
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "global_step": 470000}, ckpt)
    with pytest.raises(ZvsError, match="pickled"):
        load_sd15_components(ckpt, config_dir=tiny["config"])
    parts = load_sd15_components(ckpt, allow_pickle=True, config_dir=tiny["config"])
    assert_same_weights(tiny["models"], (parts.unet, parts.vae, parts.text_encoder))

    # Python objects inside (old Lightning files): weights_only refuses, and so do we.
    torch.save({"state_dict": state, "hparams": argparse.Namespace(lr=1)}, ckpt)
    with pytest.raises(ZvsError, match="more than plain tensors"):
        load_sd15_components(ckpt, allow_pickle=True, config_dir=tiny["config"])


def rewrite(tiny, tmp_path, edit):
    state = load_file(tiny["file"])
    state = edit(state) or state
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path))
    return path


def test_sdxl_shaped_checkpoint_gives_a_clear_error(tiny, tmp_path):
    def to_sdxl(state):
        state = {
            k.replace("cond_stage_model.transformer.", "conditioner.embedders.0.transformer."): v
            for k, v in state.items()
        }
        state["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(4, 4)
        return state

    with pytest.raises(ZvsError, match=r"not an SD1\.x checkpoint") as err:
        load_sd15_components(rewrite(tiny, tmp_path, to_sdxl), config_dir=tiny["config"])
    text_params = len(tiny["models"][2].state_dict())
    assert f"{text_params} tensors missing, 1 unexpected" in err.value.message
    assert "SDXL" in err.value.hint


def test_lora_file_gives_a_clear_error(tmp_path, tiny):
    path = tmp_path / "lora.safetensors"
    save_file(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
        },
        str(path),
    )
    with pytest.raises(ZvsError, match=r"not an SD1\.x checkpoint") as err:
        load_sd15_components(path, config_dir=tiny["config"])
    assert "LoRA" in err.value.hint


def test_wrong_shapes_and_stray_keys_are_counted(tiny, tmp_path):
    def damaged(state):
        state["model.diffusion_model.out.2.weight"] = torch.zeros(9, 32, 3, 3)
        state["model.diffusion_model.input_blocks.9.9.weight"] = torch.zeros(1)
        del state["first_stage_model.decoder.conv_out.bias"]

    with pytest.raises(ZvsError, match="1 tensors missing, 1 unexpected, 1 of the wrong shape"):
        load_sd15_components(rewrite(tiny, tmp_path, damaged), config_dir=tiny["config"])


@pytest.mark.parametrize(
    "channels, what, hint",
    [(9, "an inpainting model", "text-to-image"), (8, "an InstructPix2Pix model", "--video")],
)
def test_models_with_other_unet_inputs_say_what_they_are(tiny, tmp_path, channels, what, hint):
    def widen(state):
        state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, channels, 3, 3)

    with pytest.raises(ZvsError, match=what) as err:
        load_sd15_components(rewrite(tiny, tmp_path, widen), config_dir=tiny["config"])
    assert hint in err.value.hint


def test_checkpoint_without_its_vae_says_so(tiny, tmp_path):
    def drop_vae(state):
        return {k: v for k, v in state.items() if not k.startswith("first_stage_model.")}

    with pytest.raises(ZvsError, match="tensors missing") as err:
        load_sd15_components(rewrite(tiny, tmp_path, drop_vae), config_dir=tiny["config"])
    assert "has no VAE" in err.value.hint and "--vae" in err.value.hint


def test_unreadable_and_unknown_files(tmp_path, tiny):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ZvsError, match="not a readable"):
        load_sd15_components(bad, config_dir=tiny["config"])
    other = tmp_path / "model.onnx"
    other.write_bytes(b"x")
    with pytest.raises(ZvsError, match="unsupported"):
        load_sd15_components(other)
    with pytest.raises(ZvsError, match="not found"):
        load_sd15_components(tmp_path / "missing.safetensors")
