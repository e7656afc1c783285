"""Prompts read as AUTOMATIC1111 reads them: attention weights, BREAK and prompts longer than
CLIP's 75 tokens; a plain prompt reads exactly as before."""

from __future__ import annotations

import pytest
import torch

from zvstudio.diffusion.prompts import (
    BREAK,
    CHUNK,
    DOWN,
    SYNTAX_VERSION,
    UP,
    encode_weighted,
    parse_weights,
    uses_syntax,
)


def test_brackets_weigh_the_words_they_hold():
    assert parse_weights("a (cat:1.5) on a [mat], ((very)) nice") == [
        ("a ", 1.0),
        ("cat", 1.5),
        (" on a ", 1.0),
        ("mat", DOWN),
        (", ", 1.0),
        ("very", UP * UP),
        (" nice", 1.0),
    ]
    assert parse_weights("((a:2) b)") == [("a", 2 * UP), (" b", UP)]  # factors multiply
    assert parse_weights("plain words") == [("plain words", 1.0)]
    assert parse_weights("") == [("", 1.0)]


def test_escapes_unclosed_brackets_and_break():
    assert parse_weights(r"a \(literal\) \[x\]") == [("a (literal) [x]", 1.0)]
    assert parse_weights("(open") == [("open", UP)]  # closed at the end, as A1111 does
    assert parse_weights("[open") == [("open", DOWN)]
    assert parse_weights("close) here") == [("close) here", 1.0)]  # nothing to close
    assert parse_weights("one BREAK two") == [("one", 1.0), (BREAK, 0.0), ("two", 1.0)]
    assert parse_weights("a (x:-0.5)") == [("a ", 1.0), ("x", -0.5)]


def test_only_prompts_that_read_otherwise_are_marked():
    assert not uses_syntax("a watercolour painting of a fox, soft light")
    assert uses_syntax("a (fox:1.2)") and uses_syntax("a fox BREAK a hill")
    assert uses_syntax("word " * 20)  # may pass 75 tokens
    from zvstudio.diffusion.sampler import KeySettings, diffusion_key_identity

    plain = diffusion_key_identity("m", torch.float32, KeySettings(prompt="a fox"))
    weighted = diffusion_key_identity("m", torch.float32, KeySettings(prompt="a (fox:1.2)"))
    assert SYNTAX_VERSION not in plain and SYNTAX_VERSION in weighted


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    from tiny_models import write_tiny_config_dir, write_tiny_diffusers

    from zvstudio.diffusion.loading import load_sd15_components

    root = tmp_path_factory.mktemp("tiny")
    model = write_tiny_diffusers(root / "model")
    return load_sd15_components(model, config_dir=write_tiny_config_dir(root / "config"))


def plain_encoding(components, prompts):
    tokenizer = components.tokenizer
    tokens = tokenizer(
        list(prompts), padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    return components.text_encoder(tokens.input_ids)[0]


@torch.no_grad()
def test_a_plain_prompt_reads_as_before(text_model):
    from zvstudio.diffusion.sampler import encode_prompts

    prompts = ["", "a red cat on a mat"]
    assert torch.equal(encode_prompts(text_model, prompts), plain_encoding(text_model, prompts))
    # Through the chunked path too (a long negative prompt sends the batch there).
    weighted = encode_weighted(text_model.tokenizer, text_model.text_encoder, prompts, "cpu")
    assert torch.equal(weighted, plain_encoding(text_model, prompts))


@torch.no_grad()
def test_a_weight_scales_its_tokens_and_the_chunk_keeps_its_mean(text_model):
    tokenizer, encoder = text_model.tokenizer, text_model.text_encoder
    (plain,) = plain_encoding(text_model, ["a red cat"])
    (weighted,) = encode_weighted(tokenizer, encoder, ["a (red:1.5) cat"], "cpu")
    red = tokenizer("a", add_special_tokens=False).input_ids.__len__() + 1  # after BOS
    factors = torch.ones(77, 1)
    factors[red] = 1.5
    expected = plain * factors * (plain.mean() / (plain * factors).mean())
    assert torch.allclose(weighted, expected, atol=1e-6)
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), abs=1e-6)


def one_token(tokenizer, word: str) -> bool:
    return len(tokenizer(word, add_special_tokens=False).input_ids) == 1


@torch.no_grad()
def test_a_long_prompt_is_read_whole_in_chunks_of_75(text_model):
    from zvstudio.diffusion.sampler import encode_prompts

    tokenizer = text_model.tokenizer
    single = [w for w in ("a", "cat", "mat", "red", "on", "the", "dog") if one_token(tokenizer, w)]
    words = (single * 100)[:100]  # 100 words, a token each
    ids = tokenizer(" ".join(words), add_special_tokens=False, verbose=False).input_ids
    assert len(ids) == 100
    negative, positive = encode_prompts(text_model, ["", " ".join(words)])
    assert positive.shape[0] == negative.shape[0] == 2 * 77  # two chunks each
    first, second = " ".join(words[:CHUNK]), " ".join(words[CHUNK:])
    expected = plain_encoding(text_model, [first, second, ""])
    assert torch.allclose(positive[:77], expected[0], atol=1e-6)
    assert torch.allclose(positive[77:], expected[1], atol=1e-6)
    assert torch.allclose(negative[:77], expected[2], atol=1e-6)  # padded with empty chunks
    assert torch.allclose(negative[77:], expected[2], atol=1e-6)
    one, two = " ".join(single[:2]), single[2]
    broken = encode_prompts(text_model, [f"{one} BREAK {two}"])[0]
    split = plain_encoding(text_model, [one, two])
    assert torch.allclose(broken, torch.cat([split[0], split[1]]), atol=1e-6)


def shallower(encoder, layers: int):
    """The same CLIP text encoder with only its first `layers` layers."""
    from transformers import CLIPTextModel

    config = encoder.config.__class__(**{**encoder.config.to_dict(), "num_hidden_layers": layers})
    model = CLIPTextModel(config).eval()
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in encoder.state_dict().items() if k in own})
    return model


@torch.no_grad()
def test_clip_skip_reads_the_layer_before_the_last_as_a1111_does(text_model):
    """Clip skip 2 is the encoder without its last layer, its final norm kept: checked against
    such a model built apart, on both the plain and the weighted path."""
    from zvstudio.diffusion.prompts import encode_ids
    from zvstudio.diffusion.sampler import encode_prompts

    encoder = text_model.text_encoder
    layers = encoder.config.num_hidden_layers
    prompts = ["", "a red cat on a mat"]
    ids = text_model.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt")
    ids = ids.input_ids
    assert torch.equal(encode_ids(encoder, ids, 1), encoder(ids)[0])
    expected = shallower(encoder, layers - 1)(ids)[0]
    skipped = encode_prompts(text_model, prompts, clip_skip=2)
    assert torch.allclose(skipped, expected, atol=1e-6)
    assert not torch.allclose(skipped, encode_prompts(text_model, prompts), atol=1e-3)
    weighted = encode_weighted(text_model.tokenizer, encoder, prompts, "cpu", clip_skip=2)
    assert torch.allclose(weighted, expected, atol=1e-6)  # no weights: the same numbers
    from zvstudio.errors import ZvsError

    with pytest.raises(ZvsError, match=f"more than the text encoder's {layers} layers"):
        encode_ids(encoder, ids, layers + 1)


def test_clip_skip_is_checked_and_named_in_the_keys_identity():
    from zvstudio.diffusion.sampler import KeySettings, diffusion_key_identity
    from zvstudio.errors import ZvsError

    for wrong in (0, 13):
        with pytest.raises(ZvsError, match="clip skip must be between 1"):
            KeySettings(clip_skip=wrong)
    default = diffusion_key_identity("m", torch.float32, KeySettings(prompt="a fox"))
    assert "clip" not in default  # keys rendered before clip skip existed keep their identity
    skip = diffusion_key_identity("m", torch.float32, KeySettings(prompt="a fox", clip_skip=2))
    assert skip == default + ":clip skip 2"
