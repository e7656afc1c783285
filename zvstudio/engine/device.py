"""Device and memory policy: where the diffusion models run, in which precision, and how much
of them sits on the GPU at once.

`plan_device` turns the user's choices (device, precision, offload, each "auto" by default, and
an optional GPU memory limit) and the machine's facts into a `DevicePlan`, whose `reason` is one
sentence for the log. `apply_offload` then puts the loaded models where the plan says.

* Device "auto": a CUDA GPU, else Apple's MPS, else the CPU.
* Precision "auto": float16 on a GPU (half the memory, tensor cores), float32 on the CPU (its
  half-precision matrix products are slow or missing). bfloat16 only when asked for.
* Offload "auto", from the GPU memory the render may use (free memory, capped by the limit):
  "none" keeps every model on the GPU (fastest); "model" keeps one stage (text encoder, VAE, or
  UNet with its ControlNet) on the GPU and the others in system RAM, moving a stage a few times
  per key; "sequential" streams each layer's weights to the GPU for its call (slow, but needs
  little beyond the activations). Below `MIN_GPU_GB` nothing fits and the plan is refused.

The facts come from a probe (`TorchProbe` by default); `StaticProbe` states them by hand, so
the policy is tested on simulated 8, 24 and 80 GB GPUs on machines without one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

# accelerate imports torch: this module is meant to be imported when models are about to load.
from accelerate.hooks import ModelHook, add_hook_to_module

from zvstudio.errors import ZvsError

if TYPE_CHECKING:
    import torch

    from zvstudio.diffusion.loading import Components

GiB = 1024**3
# SD1.5 weights in half precision: parameter counts x 2 bytes (UNet 860 M, VAE 84 M, CLIP
# ViT-L/14 text encoder 123 M: about 2.1 GB together; a ControlNet 361 M). float32 doubles them.
UNET_GB = 1.72
VAE_GB = 0.17
TEXT_ENCODER_GB = 0.25
CONTROLNET_GB = 0.72
# Working memory at 512x512 in half precision: the UNet on the classifier-free-guidance batch of
# 2, the VAE decoding the full image, and the cross-frame attention features kept for the anchor
# and the previous key (2-3 GB at their peak). float32 doubles it.
ACTIVATIONS_GB = 2.5
# Left unplanned: CUDA allocator fragmentation and cuBLAS/cuDNN workspaces.
HEADROOM_GB = 0.5
# Sequential offload still needs the activations on the GPU; below this not even a smaller
# frame renders, so the plan is refused rather than left to run out of memory mid-render.
MIN_GPU_GB = 2.0

DEVICES_HINT = "use auto, cpu, cuda, cuda:N (N = the GPU's number) or mps"
PRECISIONS = ("float16", "bfloat16", "float32")
_PRECISION_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32"}
OFFLOAD_MODES = ("none", "model", "sequential")
_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclass(frozen=True)
class DevicePlan:
    """Where and how the diffusion models run, and why (`reason`, one sentence for the log)."""

    device: str  # "cuda", "cuda:N", "mps" or "cpu"
    dtype: str  # "float16", "bfloat16" or "float32"
    offload: str  # "none", "model" or "sequential"
    reason: str

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)

    @property
    def torch_device(self) -> torch.device:
        """The device with its index: a bare "cuda" is the current GPU, "cuda:0" say. Modules
        report their device with an index, and torch.device("cuda") != "cuda:0"."""
        import torch

        device = torch.device(self.device)
        if device.index is None and device.type == "cuda" and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if device.index is None and device.type == "mps":
            return torch.device("mps", 0)
        return device


# --------------------------------------------------------------------------------- the facts


@dataclass(frozen=True)
class GpuFacts:
    """One CUDA GPU as the probe sees it now."""

    name: str
    total_gb: float
    free_gb: float
    bf16: bool = True  # native bfloat16 (compute capability 8.0 and newer)


class DeviceProbe(Protocol):
    """What the policy needs to know about the machine."""

    def cuda_count(self) -> int: ...

    def gpu(self, index: int) -> GpuFacts: ...

    def mps_available(self) -> bool: ...

    def ram_gb(self) -> float | None: ...


@dataclass(frozen=True)
class StaticProbe:
    """Facts stated by hand: for tests, and for planning for another machine."""

    gpus: tuple[GpuFacts, ...] = ()
    mps: bool = False
    ram: float | None = None

    def cuda_count(self) -> int:
        return len(self.gpus)

    def gpu(self, index: int) -> GpuFacts:
        return self.gpus[index]

    def mps_available(self) -> bool:
        return self.mps

    def ram_gb(self) -> float | None:
        return self.ram


class TorchProbe:
    """The facts from torch and the operating system. Only the chosen GPU is queried: asking a
    GPU for its free memory creates a CUDA context on it (a few hundred MB)."""

    def cuda_count(self) -> int:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def gpu(self, index: int) -> GpuFacts:
        import torch

        free, total = torch.cuda.mem_get_info(index)
        with torch.cuda.device(index):
            try:  # emulated bfloat16 (pre-Ampere) is much slower: count only native support
                bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
            except TypeError:  # torch < 2.4 has no such argument and reports native support
                bf16 = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_properties(index).name
        return GpuFacts(name, total / GiB, free / GiB, bf16)

    def mps_available(self) -> bool:
        import torch

        return torch.backends.mps.is_available()

    def ram_gb(self) -> float | None:
        return system_ram_gb()


def system_ram_gb(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    """RAM the process can use: Linux's MemAvailable, else the physical total, else None."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GiB
    except (OSError, ValueError, IndexError):
        pass
    try:  # macOS and other Unix systems; Windows has no sysconf
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    except (AttributeError, ValueError, OSError):
        return None


# -------------------------------------------------------------------------------- the policy


def plan_device(
    requested: str = "auto",
    precision: str = "auto",
    memory_limit_gb: float | None = None,
    offload: str = "auto",
    probe: DeviceProbe | None = None,
    controlnets: int = 1,
) -> DevicePlan:
    """The device plan for rendering with SD1.5 and that many ControlNets.

    `memory_limit_gb` caps the GPU memory the plan counts on (for a GPU shared with other
    work). Raises ZvsError for a device that is absent or unknown, a precision the device
    cannot run, or a GPU too small for any plan.
    """
    probe = probe if probe is not None else TorchProbe()
    offload = _check_choice("offload", offload, ("auto", *OFFLOAD_MODES))
    if memory_limit_gb is not None and not memory_limit_gb > 0:
        raise ZvsError(f"the memory limit must be a positive number of GB, not {memory_limit_gb}")
    device = resolve_device(requested, probe)
    if device.startswith("cuda"):
        gpu = probe.gpu(_cuda_index(device))
        dtype = resolve_precision(precision, device, gpu.bf16)
        return _plan_cuda(device, dtype, gpu, memory_limit_gb, offload, controlnets)
    dtype = resolve_precision(precision, device, bf16=device == "cpu")
    return _plan_host(device, dtype, offload, probe.ram_gb(), controlnets, requested)


def resolve_device(requested: str, probe: DeviceProbe) -> str:
    """The device to use: "auto" made concrete, an explicit one checked against the machine."""
    name = requested.strip().lower()
    if name == "auto":
        return "cuda" if probe.cuda_count() else ("mps" if probe.mps_available() else "cpu")
    if name == "cpu":
        return name
    if name == "mps":
        if not probe.mps_available():
            raise ZvsError("Apple's MPS GPU is not available here", hint="use --device cpu")
        return name
    index = _cuda_index(name) if name.startswith("cuda") else None
    if index is None:
        raise ZvsError(f"unknown device {requested!r}", hint=DEVICES_HINT)
    return _check_cuda(name, index, probe.cuda_count())


def _cuda_index(device: str) -> int | None:
    """0 for "cuda" (torch's current device is the first unless the program changes it), N
    for "cuda:N", None for anything else."""
    if device == "cuda":
        return 0
    _, _, number = device.partition(":")
    return int(number) if device.startswith("cuda:") and number.isdigit() else None


def _check_cuda(device: str, index: int, count: int) -> str:
    if count == 0:
        raise ZvsError("no CUDA GPU is available", hint="use --device cpu")
    if index >= count:
        gpus = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise ZvsError(
            f"there is no GPU {device}: this machine has {count} CUDA GPU(s), {gpus}",
            hint=f"use --device cuda (the first GPU) or one of {gpus}",
        )
    return "cuda" if device == "cuda" else f"cuda:{index}"  # "cuda:01" is "cuda:1"


def resolve_precision(precision: str, device: str, bf16: bool) -> str:
    """The dtype name: "auto" made concrete, an explicit one checked against the device."""
    name = _PRECISION_ALIASES.get(precision.strip().lower(), precision.strip().lower())
    kind = device.partition(":")[0]
    if name == "auto":
        return "float32" if kind == "cpu" else "float16"
    name = _check_choice("precision", name, PRECISIONS)
    if name == "float16" and kind == "cpu":
        raise ZvsError(
            "float16 is not supported on the CPU: half-precision matrix products there are "
            "very slow or missing",
            hint="use float32 (the CPU's default) or bfloat16, or render on a GPU",
        )
    if name == "bfloat16" and not bf16:
        what = "Apple's MPS backend" if kind == "mps" else f"this GPU ({device})"
        raise ZvsError(f"{what} has no native bfloat16 support", hint="use float16 instead")
    return name


def _check_choice(what: str, value: str, allowed: Sequence[str]) -> str:
    name = value.strip().lower()
    if name not in allowed:
        raise ZvsError(f"unknown {what} {value!r}", hint=f"use one of: {', '.join(allowed)}")
    return name


@dataclass(frozen=True)
class MemoryNeeds:
    """GPU memory (GB) each offload mode needs, for one precision and set of models."""

    everything: float  # offload "none"
    one_stage: float  # offload "model": the largest stage, the UNet with its ControlNets
    streamed: float  # offload "sequential": activations and one layer at a time


def memory_needs(dtype: str, controlnets: int = 1) -> MemoryNeeds:
    """Estimated GPU memory per offload mode at 512x512 (see the constants above)."""
    scale = _BYTES[dtype] / 2
    denoiser = (UNET_GB + CONTROLNET_GB * controlnets) * scale
    weights = denoiser + (VAE_GB + TEXT_ENCODER_GB) * scale
    working = ACTIVATIONS_GB * scale + HEADROOM_GB
    return MemoryNeeds(weights + working, denoiser + working, working)


def _plan_cuda(
    device: str,
    dtype: str,
    gpu: GpuFacts,
    limit: float | None,
    offload: str,
    controlnets: int,
) -> DevicePlan:
    needs = memory_needs(dtype, controlnets)
    usable = gpu.free_gb if limit is None else min(gpu.free_gb, limit)
    memory = f"{gpu.name}, {gpu.free_gb:.1f} of {gpu.total_gb:.1f} GB free"
    if limit is not None and limit < gpu.free_gb:
        memory += f", limited to {limit:.1f} GB"
    where = f"{device} ({memory}) in {dtype}"
    if offload != "auto":
        return DevicePlan(device, dtype, offload, _requested_reason(where, offload, needs, usable))
    if usable < MIN_GPU_GB:
        raise ZvsError(
            f"{device} has {usable:.1f} GB of memory to use ({memory}); rendering needs at "
            f"least {MIN_GPU_GB:.1f} GB even with the weights streamed layer by layer",
            hint="use --device cpu, a smaller resolution, a higher memory limit, or close "
            "other programs that use the GPU",
            code="out_of_memory",
        )
    mode = _auto_offload(usable, needs)
    return DevicePlan(device, dtype, mode, _auto_reason(where, mode, needs))


def _auto_offload(usable: float, needs: MemoryNeeds) -> str:
    if usable >= needs.everything:
        return "none"
    return "model" if usable >= needs.one_stage else "sequential"


def _auto_reason(where: str, mode: str, needs: MemoryNeeds) -> str:
    everything = f"all models at once need about {needs.everything:.1f} GB"
    if mode == "none":
        return f"{where}: all models stay on the GPU ({everything})."
    if mode == "model":
        return (
            f"{where} with model offload: {everything}, so one stage at a time goes to the GPU "
            f"(the largest, the UNet, needs about {needs.one_stage:.1f} GB) and the others wait "
            "in system RAM."
        )
    return (
        f"{where} with sequential offload (slow): even the UNet stage alone needs about "
        f"{needs.one_stage:.1f} GB, so the weights are streamed to the GPU layer by layer."
    )


def _requested_reason(where: str, offload: str, needs: MemoryNeeds, usable: float) -> str:
    need = {"none": needs.everything, "model": needs.one_stage, "sequential": needs.streamed}
    fits = "fits" if usable >= need[offload] else "may not fit: it may run out of memory"
    return (
        f"{where} with offload {offload!r} as requested, which needs about "
        f"{need[offload]:.1f} GB and {fits} in the {usable:.1f} GB available."
    )


def _plan_host(
    device: str,
    dtype: str,
    offload: str,
    ram: float | None,
    controlnets: int,
    requested: str,
) -> DevicePlan:
    """CPU and MPS: offload is off by default; it only makes sense between RAM and a GPU."""
    if device == "cpu" and offload not in ("auto", "none"):
        raise ZvsError(
            f"offload {offload!r} moves models between system RAM and a GPU, so it does not "
            "apply to the CPU",
            hint="use --offload auto or none with --device cpu",
        )
    mode = "none" if offload == "auto" else offload
    if device == "mps":
        why = "Apple GPU, memory shared with the system"
        return DevicePlan(device, dtype, mode, f"mps ({why}) in {dtype} with offload {mode!r}.")
    why = "as requested" if requested.strip().lower() == "cpu" else "no GPU was found"
    need = memory_needs(dtype, controlnets).everything
    memory = f"about {need:.1f} GB of RAM needed"
    if ram is not None:
        spare = "" if ram >= need else ", so expect swapping"
        memory += f", {ram:.1f} GB available{spare}"
    return DevicePlan(device, dtype, "none", f"cpu in {dtype} ({why}; slow): {memory}.")


# ---------------------------------------------------------------------------------- offload


def apply_offload(
    components: Components, plan: DevicePlan, controlnets: Sequence[Any] = ()
) -> None:
    """Put the loaded models (and the ControlNets, if any) where `plan` says, in place.

    With offload the weights live in system RAM (load them there), so `components.device` is
    set to the device the models compute on, where the sampler creates its tensors.
    """
    device = plan.torch_device
    stages = [[components.text_encoder], [components.vae], [components.unet]]
    stages[2].extend(controlnets)  # called on every step, alternately with the UNet
    if plan.offload == "none":
        for module in (m for stage in stages for m in stage):
            module.to(device)
    elif plan.offload == "model":
        _offload_by_stage(stages, device)
    elif plan.offload == "sequential":
        from accelerate import cpu_offload

        for module in (m for stage in stages for m in stage):
            cpu_offload(module, execution_device=device)
    else:
        raise ValueError(f"unknown offload mode {plan.offload!r}")
    components.execution_device = device


def _offload_by_stage(stages: list[list[Any]], device: torch.device) -> None:
    """Hook each model so that calling it (or the VAE's encode/decode, which diffusers routes
    through the same hook) first sends the other stages to system RAM.

    diffusers' `enable_model_cpu_offload` chains accelerate's `cpu_offload_with_hook`, where
    each model evicts one predecessor; that fits a pipeline run once in order, but the sampler
    returns to the VAE between passes and to the text encoder at each key, so a chain would
    leave the VAE and text encoder on the GPU beside the UNet. One group evicts every other
    stage instead, so the peak is the largest stage.
    """
    group = _OneStageOnDevice(stages, device)
    for index, stage in enumerate(stages):
        for module in stage:
            add_hook_to_module(module, _StageHook(group, index), append=True)


class _OneStageOnDevice:
    """Keeps one stage's models on the execution device and the others in system RAM."""

    def __init__(self, stages: list[list[Any]], device: torch.device) -> None:
        self.stages = stages
        self.device = device
        self.active: int | None = None

    def activate(self, stage: int) -> None:
        if stage == self.active:
            return
        if self.active is not None:  # evict first, so the peak is one stage, not two
            for module in self.stages[self.active]:
                module.to("cpu")
        for module in self.stages[stage]:
            module.to(self.device)
        self.active = stage


class _StageHook(ModelHook):
    """accelerate hook: bring this model's stage to the device before each call."""

    def __init__(self, group: _OneStageOnDevice, stage: int) -> None:
        self.group = group
        self.stage = stage

    def init_hook(self, module: Any) -> Any:
        return module.to("cpu")

    def pre_forward(self, module: Any, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        from accelerate.utils import send_to_device

        self.group.activate(self.stage)
        device = self.group.device
        return send_to_device(args, device), send_to_device(kwargs, device)
