"""A1111's prompt editing: `[from:to:when]` and `[a|b]` change the prompt during sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import write_tiny_config_dir, write_tiny_diffusers

from zvstudio.diffusion import sampler as sampler_module
from zvstudio.diffusion.loading import load_sd15_components
from zvstudio.diffusion.prompt_editing import (
    EDITING_VERSION,
    prompts_per_step,
    refuse_editing,
    uses_editing,
)
from zvstudio.diffusion.sampler import (
    KeyFrameSampler,
    KeySettings,
    diffusion_key_identity,
    encode_prompts,
    encode_prompts_per_step,
)
from zvstudio.errors import ZvsError


@pytest.mark.parametrize(
    "prompt, steps, expected",
    [
        ("a [cat:dog:0.5] on a mat", 4, ["a cat on a mat"] * 2 + ["a dog on a mat"] * 2),
        ("a [cat:dog:0.5]", 3, ["a cat", "a dog", "a dog"]),  # 1.5: after step 1
        ("a [cat:dog:2] x", 4, ["a cat x", "a cat x", "a dog x", "a dog x"]),  # a step number
        ("a [dog:2]", 3, ["a ", "a ", "a dog"]),  # added after step 2
        ("a [dog::2]", 3, ["a dog", "a dog", "a "]),  # removed after it
        ("[cat|dog|fox]", 4, ["cat", "dog", "fox", "cat"]),  # alternation
        ("[(cat:1.2):dog:0.5]", 2, ["(cat:1.2)", "dog"]),  # weights inside are kept
        ("[very [cat:dog:1] nice]", 2, ["[very cat nice]", "[very dog nice]"]),  # nested
        ("[a [b|c]:d:0.5]", 4, ["a b", "a c", "d", "d"]),
        (r"a \[x:y:1\] [plain] (w:1.1)", 2, [r"a \[x:y:1\] [plain] (w:1.1)"] * 2),
        ("[a:b:c] [unclosed:x:1", 2, ["[a:b:c] [unclosed:x:1"] * 2),  # not edits: as written
        ("a [cat:dog:9]", 3, ["a cat"] * 3),  # never reached
    ],
)
def test_each_step_reads_its_prompt(prompt, steps, expected):
    assert prompts_per_step(prompt, steps) == expected


def test_only_prompts_that_change_are_editing():
    assert uses_editing("[a:b:0.5]") and uses_editing("x [a|b]") and uses_editing("[[a|b] c]")
    for plain in ("a cat", "[plain] (w:1.2)", r"\[a:b:0.5\]", "[a:b:c]", "[a"):
        assert not uses_editing(plain)
    refuse_editing(("a cat", "[blurry]"), "Text2Video-Zero")
    with pytest.raises(ZvsError, match="Text2Video-Zero reads one prompt throughout"):
        refuse_editing(("a cat", "[blurry|ugly]"), "Text2Video-Zero")


def test_editing_is_named_in_the_keys_identity():
    plain = diffusion_key_identity("m", torch.float32, KeySettings(prompt="a [cat] on a mat"))
    edited = diffusion_key_identity("m", torch.float32, KeySettings(prompt="a [cat:dog:0.5]"))
    assert EDITING_VERSION not in plain and EDITING_VERSION in edited


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model = write_tiny_diffusers(root / "model")
    return load_sd15_components(model, config_dir=write_tiny_config_dir(root / "config"))


@torch.no_grad()
def test_each_distinct_prompt_is_encoded_once(components, monkeypatch):
    calls = []

    def counted(components, prompts, clip_skip=1):
        calls.append(tuple(prompts))
        return encode_prompts(components, prompts, clip_skip)

    monkeypatch.setattr(sampler_module, "encode_prompts", counted)
    plain = encode_prompts_per_step(components, ["", "a cat"], 5)
    assert len(calls) == 1 and all(step is plain[0] for step in plain)
    assert torch.equal(plain[0], encode_prompts(components, ["", "a cat"]))
    calls.clear()
    edited = encode_prompts_per_step(components, ["[blurry:3]", "a [cat|dog]"], 4)
    # Steps 1-3 read "", step 4 "blurry"; the alternation reads cat, dog, cat, dog.
    assert calls == [("", "a cat"), ("", "a dog"), ("blurry", "a dog")]
    assert edited[0] is edited[2] and edited[1] is not edited[3]
    assert torch.equal(edited[0], plain[0])


def test_a_key_follows_its_prompts_edits(components):
    frame = np.full((32, 40, 3), 120, np.uint8)
    frame[8:24, 10:30] = (200, 60, 40)

    def key(prompt: str) -> np.ndarray:
        settings = KeySettings(prompt=prompt, steps=4, strength=0.75, seed=3)
        sampler = KeyFrameSampler(components, settings)
        try:
            return sampler.render(frame, is_anchor=True)
        finally:
            sampler.close()

    cat, dog = key("a red cat"), key("a red dog")
    assert np.array_equal(key("a red [cat:dog:9]"), cat)  # the switch is never reached
    edited = key("a red [cat:dog:0.5]")  # 3 steps run: cat for the first, dog for two
    assert not np.array_equal(edited, cat) and not np.array_equal(edited, dog)
    assert np.array_equal(key("a red [cat:dog:0]"), dog)  # dog from the first step
