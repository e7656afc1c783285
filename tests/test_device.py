"""The device and memory policy on simulated machines, and offload on the CPU.

No GPU is needed: the policy reads its facts from a `StaticProbe`; offload to a GPU is checked
by recording where each model is moved, and the real hooks run on the CPU as the execution
device, where they must not change a single pixel.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_models import write_tiny_config_dir, write_tiny_diffusers

from zvstudio.diffusion.loading import load_sd15_components
from zvstudio.diffusion.sampler import KeyFrameSampler, KeySettings
from zvstudio.engine.device import (
    HEADROOM_GB,
    MIN_GPU_GB,
    DevicePlan,
    GpuFacts,
    StaticProbe,
    apply_offload,
    memory_needs,
    plan_device,
    system_ram_gb,
)
from zvstudio.engine.preview import DiffusionSpec, build_sampler, choose_device
from zvstudio.errors import ZvsError


def gpu(total: float, free: float | None = None, name: str = "GPU", bf16: bool = True):
    return GpuFacts(name, total, total - 0.4 if free is None else free, bf16)


def machine(*gpus: GpuFacts, mps: bool = False, ram: float | None = 32.0) -> StaticProbe:
    return StaticProbe(tuple(gpus), mps, ram)


H100 = machine(gpu(80.0, name="H100"))
RTX_3090 = machine(gpu(24.0, name="RTX 3090"))
RTX_3070 = machine(gpu(8.0, name="RTX 3070"))
RTX_2060 = machine(gpu(6.0, 5.6, name="RTX 2060", bf16=False))
GTX_1650 = machine(gpu(4.0, 3.6, name="GTX 1650", bf16=False))
NO_GPU = machine()
MAC = machine(mps=True)


# ---------------------------------------------------------------------------- device choice


def test_auto_prefers_cuda_then_mps_then_cpu():
    assert plan_device(probe=H100).device == "cuda"
    assert plan_device(probe=machine(gpu(24.0), mps=True)).device == "cuda"
    assert plan_device(probe=MAC).device == "mps"
    assert plan_device(probe=NO_GPU).device == "cpu"


def test_missing_or_unknown_devices_are_clear_errors():
    with pytest.raises(ZvsError, match="no CUDA GPU") as error:
        plan_device("cuda", probe=NO_GPU)
    assert "--device cpu" in error.value.hint
    with pytest.raises(ZvsError, match="no GPU cuda:3: this machine has 1 CUDA GPU") as error:
        plan_device("cuda:3", probe=RTX_3090)
    assert "cuda:0" in error.value.hint
    with pytest.raises(ZvsError, match="MPS"):
        plan_device("mps", probe=RTX_3090)
    for wrong in ("tpu", "cuda:x", "cuda1", "gpu"):
        with pytest.raises(ZvsError, match="unknown device") as error:
            plan_device(wrong, probe=RTX_3090)
        assert "cuda:N" in error.value.hint


def test_a_numbered_gpu_is_planned_from_its_own_memory():
    probe = machine(gpu(4.0, 3.6, name="small"), gpu(24.0, name="big"))
    plan = plan_device("cuda:1", probe=probe)
    assert (plan.device, plan.offload) == ("cuda:1", "none")
    assert "big" in plan.reason and "small" not in plan.reason
    assert plan_device("CUDA", probe=probe).offload == "sequential"  # "cuda" is the first GPU


# -------------------------------------------------------------------------------- precision


def test_precision_defaults_to_half_on_gpus_and_float32_on_the_cpu():
    assert plan_device(probe=H100).dtype == "float16"
    assert plan_device(probe=MAC).dtype == "float16"
    cpu = plan_device(probe=NO_GPU)
    assert cpu.dtype == "float32" and cpu.torch_dtype is torch.float32
    assert plan_device(probe=H100).torch_dtype is torch.float16


def test_explicit_precision_is_honoured_where_the_device_supports_it():
    assert plan_device(precision="float32", probe=H100).dtype == "float32"
    assert plan_device(precision="bfloat16", probe=H100).torch_dtype is torch.bfloat16
    assert plan_device(precision="bf16", probe=NO_GPU).dtype == "bfloat16"
    assert plan_device(precision="fp32", probe=RTX_3070).dtype == "float32"


def test_unsupported_precisions_are_refused():
    with pytest.raises(ZvsError, match="float16 is not supported on the CPU") as error:
        plan_device("cpu", "float16", probe=H100)
    assert "float32" in error.value.hint
    with pytest.raises(ZvsError, match=r"this GPU \(cuda\) has no native bfloat16") as error:
        plan_device(precision="bfloat16", probe=RTX_2060)
    assert error.value.hint == "use float16 instead"
    with pytest.raises(ZvsError, match="bfloat16"):
        plan_device(precision="bfloat16", probe=MAC)
    with pytest.raises(ZvsError, match="unknown precision"):
        plan_device(precision="int8", probe=H100)


# ------------------------------------------------------------------------------ offload auto


@pytest.mark.parametrize(
    ("probe", "offload"),
    [
        (H100, "none"),
        (RTX_3090, "none"),
        (RTX_3070, "none"),
        (RTX_2060, "model"),
        (GTX_1650, "sequential"),
    ],
)
def test_offload_follows_the_free_memory(probe, offload):
    plan = plan_device(probe=probe)
    assert (plan.device, plan.dtype, plan.offload) == ("cuda", "float16", offload)
    facts = probe.gpu(0)
    assert f"{facts.free_gb:.1f} of {facts.total_gb:.1f} GB free" in plan.reason
    assert facts.name in plan.reason


def test_offload_thresholds_are_the_memory_estimates():
    needs = memory_needs("float16", controlnets=1)
    assert needs.streamed < needs.one_stage < needs.everything
    assert needs.everything == pytest.approx(5.86, abs=0.05)  # 2.9 GB weights, 3 GB working
    cases = [
        (needs.everything, "none"),
        (needs.everything - 0.01, "model"),
        (needs.one_stage, "model"),
        (needs.one_stage - 0.01, "sequential"),
        (MIN_GPU_GB, "sequential"),
    ]
    for free, offload in cases:
        assert plan_device(probe=machine(gpu(24.0, free))).offload == offload, free
    # Without a ControlNet less is needed; float32 doubles the weights and activations.
    no_controlnet = memory_needs("float16", controlnets=0).everything
    assert plan_device(probe=machine(gpu(6, no_controlnet)), controlnets=0).offload == "none"
    assert memory_needs("float32").everything == pytest.approx(2 * needs.everything - HEADROOM_GB)
    assert plan_device(precision="float32", probe=RTX_3070).offload == "sequential"


def test_reasons_name_the_figures_behind_the_choice():
    none = plan_device(probe=RTX_3070).reason
    assert "all models stay on the GPU" in none and "5.9 GB" in none
    model = plan_device(probe=RTX_2060).reason
    assert "model offload" in model and "5.9 GB" in model and "5.4 GB" in model
    sequential = plan_device(probe=GTX_1650).reason
    assert "sequential offload" in sequential and "3.6 of 4.0 GB free" in sequential


def test_the_memory_limit_caps_what_the_plan_counts_on():
    plan = plan_device(memory_limit_gb=4.0, probe=RTX_3090)
    assert plan.offload == "sequential"
    assert "limited to 4.0 GB" in plan.reason
    # A limit above the free memory changes nothing and is not mentioned.
    assert "limited" not in plan_device(memory_limit_gb=100, probe=RTX_3090).reason
    with pytest.raises(ZvsError, match="memory limit"):
        plan_device(memory_limit_gb=0, probe=RTX_3090)


def test_too_little_gpu_memory_is_refused_with_a_way_out():
    with pytest.raises(ZvsError, match=r"1\.5 GB of memory") as error:
        plan_device(probe=machine(gpu(2.0, 1.5)))
    assert "--device cpu" in error.value.hint and "smaller resolution" in error.value.hint
    assert error.value.code == "out_of_memory"
    with pytest.raises(ZvsError, match=r"has 1\.0 GB"):
        plan_device(memory_limit_gb=1.0, probe=RTX_3090)


def test_explicit_offload_is_honoured_and_says_whether_it_fits():
    plan = plan_device(offload="sequential", probe=H100)
    assert plan.offload == "sequential" and "as requested" in plan.reason
    plan = plan_device(offload="none", probe=GTX_1650)
    assert plan.offload == "none" and "may not fit" in plan.reason
    # An explicit choice skips the floor: the user may know their frames are small.
    assert plan_device(offload="sequential", probe=machine(gpu(2.0, 1.5))).offload == "sequential"
    with pytest.raises(ZvsError, match="unknown offload"):
        plan_device(offload="disk", probe=H100)


def test_cpu_and_mps_never_offload_by_default():
    cpu = plan_device(probe=NO_GPU)
    assert cpu.offload == "none"
    assert "no GPU was found" in cpu.reason and "32.0 GB available" in cpu.reason
    assert "as requested" in plan_device("cpu", probe=H100).reason
    assert "expect swapping" in plan_device(probe=machine(ram=4.0)).reason
    assert plan_device(probe=MAC).offload == "none"
    assert plan_device(offload="model", probe=MAC).offload == "model"
    with pytest.raises(ZvsError, match="does not apply to the CPU"):
        plan_device("cpu", offload="model", probe=H100)


def test_the_default_probe_reads_this_machine():
    plan = plan_device("cpu")
    assert (plan.device, plan.dtype, plan.offload) == ("cpu", "float32", "none")
    auto = plan_device()  # whatever this machine has
    assert auto.device.split(":")[0] in ("cuda", "mps", "cpu") and auto.reason


def test_system_ram(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemAvailable:    8388608 kB\n")
    assert system_ram_gb(meminfo) == pytest.approx(8.0)
    total = system_ram_gb(tmp_path / "absent")  # falls back to the physical total, or None
    assert total is None or total > 0


def test_choose_device_keeps_its_old_answers(monkeypatch):
    monkeypatch.setattr("zvstudio.engine.device.TorchProbe", lambda: H100)
    assert choose_device() == ("cuda", torch.float16)
    assert choose_device("cpu") == ("cpu", torch.float32)
    monkeypatch.setattr("zvstudio.engine.device.TorchProbe", lambda: GTX_1650)
    assert choose_device("cuda") == ("cuda", torch.float16)  # no memory floor here


# --------------------------------------------------------------------------- apply_offload


class Recorder(torch.nn.Module):
    """A model that records where it is sent instead of going there (there is no GPU)."""

    def __init__(self, name: str, moves: list) -> None:
        super().__init__()
        self.name, self.moves = name, moves
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def to(self, device):
        self.moves.append((self.name, str(device)))
        return self

    def forward(self):
        return self.name


def recorded_components(moves: list) -> tuple[SimpleNamespace, Recorder]:
    parts = {name: Recorder(name, moves) for name in ("text_encoder", "vae", "unet")}
    return SimpleNamespace(**parts, execution_device=None), Recorder("controlnet", moves)


def gpu_plan(offload: str) -> DevicePlan:
    return DevicePlan("cuda", "float16", offload, "test")


def test_no_offload_moves_every_model_to_the_device():
    moves = []
    components, controlnet = recorded_components(moves)
    apply_offload(components, gpu_plan("none"), [controlnet])
    assert sorted(moves) == sorted(
        (name, "cuda") for name in ("text_encoder", "vae", "unet", "controlnet")
    )
    assert components.execution_device == torch.device("cuda")


def test_model_offload_keeps_one_stage_on_the_gpu():
    moves = []
    components, controlnet = recorded_components(moves)
    apply_offload(components, gpu_plan("model"), [controlnet])
    assert {device for _, device in moves} == {"cpu"}  # everything starts in system RAM
    assert components.execution_device == torch.device("cuda")

    def call(module) -> list:
        moves.clear()
        module()
        return moves[:]

    te, vae, unet = components.text_encoder, components.vae, components.unet
    assert call(te) == [("text_encoder", "cuda")]
    assert call(vae) == [("text_encoder", "cpu"), ("vae", "cuda")]
    # The ControlNet and the UNet alternate on every step: they travel together, once.
    assert call(controlnet) == [("vae", "cpu"), ("unet", "cuda"), ("controlnet", "cuda")]
    assert call(unet) == [] and call(controlnet) == [] and call(unet) == []
    assert call(vae) == [("unet", "cpu"), ("controlnet", "cpu"), ("vae", "cuda")]
    assert call(te) == [("vae", "cpu"), ("text_encoder", "cuda")]


def test_sequential_offload_streams_every_model_with_accelerate(monkeypatch):
    calls = []
    monkeypatch.setattr(
        "accelerate.cpu_offload", lambda m, execution_device: calls.append((m, execution_device))
    )
    components, controlnet = recorded_components([])
    apply_offload(components, gpu_plan("sequential"), [controlnet])
    assert [(m.name, str(d)) for m, d in calls] == [
        ("text_encoder", "cuda"),
        ("vae", "cuda"),
        ("unet", "cuda"),
        ("controlnet", "cuda"),
    ]
    assert components.execution_device == torch.device("cuda")


# ---------------------------------------------------------------- real models on the CPU


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    model = write_tiny_diffusers(root / "model")
    config = write_tiny_config_dir(root / "config")
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    unet = load_sd15_components(model, config_dir=config).unet
    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3)
    for name, parameter in controlnet.named_parameters():
        if "zero_conv" in name or "controlnet_down_blocks" in name or "mid_block" in name:
            parameter.data.normal_(0, 0.3)  # not zero, so the ControlNet changes the result
    controlnet.save_pretrained(root / "canny")
    return model, config, root / "canny"


SETTINGS = KeySettings(prompt="a red cat", steps=4, strength=0.75, seed=3)


def frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = (rng.random((40, 56, 3)) * 80 + 60).astype(np.uint8)
    image[10:30, 8:28] = (220, 40, 40)
    return image


def test_build_sampler_renders_on_the_cpu_as_before(tiny, caplog):
    model, config, _ = tiny
    before = KeyFrameSampler(load_sd15_components(model, config_dir=config), SETTINGS)
    expected = before.render(frame(), is_anchor=True)
    with caplog.at_level(logging.INFO, logger="zvstudio.engine.preview"):
        sampler = build_sampler(DiffusionSpec(model, SETTINGS, device="cpu", config_dir=config))
    assert "cpu in float32 (as requested" in caplog.text
    assert sampler.components.device == torch.device("cpu")
    assert np.array_equal(sampler.render(frame(), is_anchor=True), expected)


def render_with(tiny, plan: DevicePlan) -> np.ndarray:
    """An anchor and a constrained key, rendered with the models placed by `plan`."""
    from zvstudio.engine.preview import load_controlnet

    model, config, canny = tiny
    components = load_sd15_components(model, config_dir=config)
    controlnet = load_controlnet(canny, "cpu", torch.float32)
    apply_offload(components, plan, [controlnet])
    sampler = KeyFrameSampler(components, SETTINGS, [controlnet])
    first = sampler.render(frame(), is_anchor=True)
    second = sampler.render(frame()[:, ::-1].copy(), is_anchor=False)
    if plan.offload == "model":
        assert components.vae._hf_hook.group.active == 1  # the last call: the VAE's decode
    return np.concatenate([first, second])


@pytest.fixture(scope="module")
def reference(tiny) -> np.ndarray:
    return render_with(tiny, DevicePlan("cpu", "float32", "none", "reference"))


@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_offload_hooks_leave_the_render_unchanged(tiny, reference, offload):
    """The hooks run for real with the CPU as the execution device: the same pixels, and the
    VAE's encode/decode (not its forward) bring its stage in."""
    plan = DevicePlan("cpu", "float32", offload, "test")
    assert np.array_equal(render_with(tiny, plan), reference)


def test_a_plans_torch_device_carries_the_gpus_index(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    plan = DevicePlan("cuda", "float16", "none", "")
    assert plan.torch_device == torch.device("cuda:0")  # what a module on it reports
    assert DevicePlan("cuda:1", "float16", "none", "").torch_device == torch.device("cuda:1")
    assert DevicePlan("mps", "float16", "none", "").torch_device == torch.device("mps:0")
    assert DevicePlan("cpu", "float32", "none", "").torch_device == torch.device("cpu")
