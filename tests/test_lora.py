"""LoRAs change the model's output, scaled by their weight; wrong files are refused early."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import write_tiny_config_dir, write_tiny_diffusers

from zvstudio.diffusion.loading import load_sd15_components
from zvstudio.diffusion.lora import LoraSpec, apply_loras, lora_pipeline
from zvstudio.errors import ZvsError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_diffusers(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Path:
    return write_tiny_config_dir(tmp_path_factory.mktemp("tiny") / "config")


@pytest.fixture
def load(model_dir, config_dir):
    return lambda: load_sd15_components(model_dir, config_dir=config_dir)


@pytest.fixture(scope="module")
def lora_file(model_dir, config_dir, tmp_path_factory) -> Path:
    """A random (non-zero) LoRA for the tiny UNet, saved in diffusers' LoRA layout."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    components = load_sd15_components(model_dir, config_dir=config_dir)
    torch.manual_seed(1)
    config = LoraConfig(
        r=4,
        lora_alpha=4,
        init_lora_weights=False,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
    )
    components.unet.add_adapter(config)
    for name, parameter in components.unet.named_parameters():
        if "lora_B" in name:  # peft starts B at zero; make the LoRA actually do something
            parameter.data.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("lora")
    pipeline = lora_pipeline(components)
    pipeline.save_lora_weights(
        folder, unet_lora_layers=get_peft_model_state_dict(components.unet), safe_serialization=True
    )
    return folder / "pytorch_lora_weights.safetensors"


def unet_output(components) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((1, 4, 8, 8), generator=generator)
    context = torch.randn((1, 7, 32), generator=generator)
    with torch.no_grad():
        return components.unet(latents, 500, encoder_hidden_states=context).sample


def test_lora_changes_the_output_and_its_weight_scales_it(load, lora_file):
    plain = unet_output(load())
    changes = {}
    for weight in (0.0, 0.5, 1.0):
        components = load()
        assert apply_loras(components, [LoraSpec(lora_file, weight)]) == ["lora_0"]
        changes[weight] = (unet_output(components) - plain).abs().mean().item()
    assert changes[0.0] < 1e-6
    assert 0 < changes[0.5] < changes[1.0]


def test_several_loras_at_once(load, lora_file):
    components = load()
    names = apply_loras(components, [LoraSpec(lora_file, 0.5), LoraSpec(lora_file, 0.5)])
    assert names == ["lora_0", "lora_1"]
    assert sorted(components.unet.peft_config) == names


def test_wrong_files_are_refused_before_loading(load, model_dir, tmp_path):
    components = load()
    with pytest.raises(ZvsError, match="not found"):
        apply_loras(components, [LoraSpec(tmp_path / "missing.safetensors")])
    unet_file = model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(ZvsError):
        apply_loras(components, [LoraSpec(unet_file)])  # a UNet, not a LoRA
    assert not getattr(components.unet, "peft_config", None)


def test_lora_spec_parsing():
    assert LoraSpec.parse("style.safetensors:0.8") == LoraSpec(Path("style.safetensors"), 0.8)
    assert LoraSpec.parse("style.safetensors") == LoraSpec(Path("style.safetensors"), 1.0)
    assert LoraSpec.parse("C:/loras/a.safetensors") == LoraSpec(Path("C:/loras/a.safetensors"))
