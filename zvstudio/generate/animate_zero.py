"""AnimateZero: a still image animated by an AnimateDiff motion module (METHOD 3).

The authors never released code; this follows the paper's description on our model layer:

1. The still. From a prompt, SD1.5 samples it (DDIM, classifier-free guidance); a user's image
   is encoded (z_0 = E(I)) and DDIM-inverted with the prompt, then the inverted path is replayed
   once with guidance. Either way we keep its latent z_t at every step and the features each
   spatial self-attention layer projects its keys/values from, for both guidance branches.
2. The video. The same UNet with the motion module inserted (diffusers' `UNetMotionModel`,
   sharing the SD1.5 UNet's layers, so no weights are copied) samples F frames where, at every
   step, frame 0's latent is replaced by the still's z_t (so frame 0 is the still), every
   frame's spatial self-attention takes its keys/values from the still's cached features at
   that step and layer, and the chosen motion modules use causal, position-corrected window
   attention (`zvstudio.generate.motion`), so no later frame can pull frame 0 away.

Memory: the cached features are the still's attn1 inputs at every step (about 1 GB in fp16 at
512x512 and 25 steps for SD1.5), kept on the model's device.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from zvstudio.diffusion.attention import CrossFrameAttnProcessor, select_self_attention_layers
from zvstudio.diffusion.encoding import decode, encode_mean, rgb_frames
from zvstudio.diffusion.loading import (
    Components,
    force_offline,
    from_pretrained_checked,
    open_checkpoint,
    weights_kwargs,
)
from zvstudio.diffusion.prompt_editing import refuse_editing
from zvstudio.diffusion.prompts import check_clip_skip
from zvstudio.diffusion.sampler import (
    CLIP_MEMORY_HINT,
    encode_prompts,
    guided_noise,
    next_alpha,
    out_of_memory_error,
    pad_to_multiple,
    seeded_noise,
)
from zvstudio.errors import ZvsError
from zvstudio.generate.motion import (
    install_window_attention,
    motion_modules,
    select_motion_modules,
)
from zvstudio.progress import CancelToken, Progress, ProgressCallback, ignore_progress

if TYPE_CHECKING:
    from diffusers import MotionAdapter, UNetMotionModel

StepCallback = Callable[[int, torch.Tensor], None]

__all__ = ["AnimateSettings", "animate", "build_motion_unet", "load_motion_adapter"]


@dataclass(frozen=True)
class AnimateSettings:
    """Everything that determines an animation besides the models and the input image.

    `window` picks the motion modules with window attention ("all", "none", "down", "mid",
    "up", block names, or several comma-separated); `window_length` is how many frames (frame i
    and those before it) each frame attends to, None for all of 0..i. `width`/`height` size a
    generated still (rounded up internally, cropped back); a given image keeps its own size
    (reflect-padded internally) and these two are ignored (the job scales a large image down
    first: `zvstudio.generate.jobs.STILL_SHORT_SIDE`).
    """

    prompt: str = ""
    negative_prompt: str = ""
    frames: int = 16
    steps: int = 25
    guidance_scale: float = 7.5
    seed: int = 0
    window: str | tuple[str, ...] = "all"
    window_length: int | None = None
    width: int = 512
    height: int = 512
    clip_skip: int = 1  # A1111's "Clip skip" (`zvstudio.diffusion.prompts.encode_ids`)


# ------------------------------------------------------------------------------- the adapter


def load_motion_adapter(
    path: Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
) -> MotionAdapter:
    """An AnimateDiff motion module from a diffusers folder or one original-layout file
    (`mm_sd_v15_v2.safetensors`: `down_blocks.0.motion_modules.0.temporal_transformer...`).

    Pickled files are refused unless `allow_pickle`. Raises ZvsError for anything else that is
    not an SD1.x-style motion module.
    """
    force_offline()
    path = Path(path)
    if path.is_dir():
        adapter = _load_adapter_folder(path, dtype, allow_pickle)
    elif path.is_file():
        adapter = _load_adapter_file(path, dtype, allow_pickle)
    else:
        raise ZvsError(f"Motion module not found: {path}")
    if adapter.config.get("conv_in_channels"):
        raise ZvsError(f"{path.name} is a PIA motion module (image input); it is not supported.")
    return adapter.to(device).eval()


def _load_adapter_folder(path: Path, dtype: torch.dtype, allow_pickle: bool) -> MotionAdapter:
    from diffusers import MotionAdapter

    config = path / "config.json"
    kind = _class_name(config) if config.is_file() else None
    if kind != "MotionAdapter":
        what = "a full model folder" if (path / "model_index.json").is_file() else "not one"
        raise ZvsError(
            f"{path} is not a motion module folder ({what}: no MotionAdapter config.json).",
            hint="pick an AnimateDiff motion module: a diffusers folder or a .safetensors file",
        )
    kwargs = weights_kwargs(path, allow_pickle)
    return from_pretrained_checked(
        MotionAdapter, path, f"The motion module {path}", torch_dtype=dtype, **kwargs
    )


def _class_name(config: Path) -> str | None:
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def _load_adapter_file(path: Path, dtype: torch.dtype, allow_pickle: bool) -> MotionAdapter:
    from accelerate import init_empty_weights
    from diffusers import MotionAdapter
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    tensors = open_checkpoint(path, allow_pickle)  # refuses pickles unless allowed
    keys = list(tensors)
    if not any(".motion_modules." in k for k in keys) or any("controlnet_" in k for k in keys):
        raise ZvsError(
            f"{path.name} is not an AnimateDiff motion module (no motion_modules.* keys).",
            hint="motion modules are files like mm_sd_v15_v2.safetensors",
        )
    pe_length = next((tensors.shape(k)[1] for k in keys if k.endswith("pos_encoder.pe")), 32)
    # diffusers' own renaming (it drops pos_encoder.pe: the table is recomputed, the same).
    state = convert_animatediff_checkpoint_to_diffusers({k: tensors[k] for k in keys})
    try:
        config = _adapter_config(state, pe_length)
        with init_empty_weights():
            adapter = MotionAdapter(**config)
    except (KeyError, IndexError, ValueError) as exc:
        raise ZvsError(f"{path.name} is not a motion module we can read ({exc}).") from exc
    own = adapter.state_dict()
    _check_adapter_keys(path, state, own)
    full = {k: v.to(dtype) for k, v in state.items()}
    full.update({k: v.to(dtype) for k, v in own.items() if k.endswith("pos_embed.pe")})
    adapter.load_state_dict(full, strict=True, assign=True)
    return adapter


def _count(keys: Sequence[str], prefix: str, level: str) -> int:
    """How many `{prefix}{level}.N` children the keys have."""
    start = f"{prefix}{level}."
    return len({k[len(start) :].split(".")[0] for k in keys if k.startswith(start)})


def _adapter_config(state: dict[str, torch.Tensor], pe_length: int) -> dict[str, Any]:
    """The MotionAdapter config that a converted state dict describes. The head count is not
    in the weights: every published SD1.x motion module uses 8."""
    keys = list(state)
    blocks = _count(keys, "", "down_blocks")
    channels = [
        state[f"down_blocks.{i}.motion_modules.0.proj_in.weight"].shape[1] for i in range(blocks)
    ]
    layers = [_count(keys, f"down_blocks.{i}.", "motion_modules") for i in range(blocks)]
    depth = [
        _count(keys, f"down_blocks.{i}.motion_modules.0.", "transformer_blocks")
        for i in range(blocks)
    ]
    mid = _count(keys, "mid_block.", "motion_modules")
    return {
        "block_out_channels": channels,
        "motion_layers_per_block": layers,
        "motion_transformer_layers_per_block": depth,
        "motion_mid_block_layers_per_block": max(mid, 1),
        "motion_transformer_layers_per_mid_block": _count(
            keys, "mid_block.motion_modules.0.", "transformer_blocks"
        )
        or 1,
        "motion_max_seq_length": pe_length,
        "use_motion_mid_block": mid > 0,
    }


def _check_adapter_keys(path: Path, state: dict, own: dict) -> None:
    expected = {k for k in own if not k.endswith("pos_embed.pe")}
    missing = len(expected - state.keys())
    unexpected = len(state.keys() - own.keys())
    misshapen = sum(1 for k in expected & state.keys() if state[k].shape != own[k].shape)
    if missing or unexpected or misshapen:
        raise ZvsError(
            f"{path.name} is not a motion module we can read: {missing} tensors missing, "
            f"{unexpected} unexpected, {misshapen} of the wrong shape."
        )


# ---------------------------------------------------------------------------- the video UNet


def check_adapter(unet: Any, adapter: MotionAdapter) -> None:
    """Raise ZvsError unless `adapter` fits `unet` (block widths and layer counts)."""
    ours, theirs = list(unet.config.block_out_channels), list(adapter.config.block_out_channels)
    layers = adapter.config.motion_layers_per_block
    layers = [layers] * len(theirs) if isinstance(layers, int) else list(layers)
    if ours != theirs or layers != [unet.config.layers_per_block] * len(ours):
        raise ZvsError(
            f"The motion module was made for a UNet with block widths {theirs}; this model's "
            f"are {ours}.",
            hint="use an SD1.5 motion module (mm_sd_v15*) with an SD1.x model",
        )


def build_motion_unet(unet: Any, adapter: MotionAdapter) -> UNetMotionModel:
    """`UNetMotionModel.from_unet2d(unet, adapter)` without copying weights: the video UNet is
    built empty and borrows the SD1.5 UNet's layers (LoRAs and attention processors included)
    and the adapter's motion modules."""
    from accelerate import init_empty_weights
    from diffusers import UNetMotionModel

    check_adapter(unet, adapter)
    if (adapter.device, adapter.dtype) != (unet.device, unet.dtype):
        adapter.to(device=unet.device, dtype=unet.dtype)
    with init_empty_weights():
        model = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
    for name in ("conv_in", "time_proj", "time_embedding", "conv_norm_out", "conv_act", "conv_out"):
        setattr(model, name, getattr(unet, name))
    pairs = [
        *zip(model.down_blocks, unet.down_blocks, adapter.down_blocks, strict=True),
        *zip(model.up_blocks, unet.up_blocks, adapter.up_blocks, strict=True),
        (model.mid_block, unet.mid_block, adapter.mid_block),
    ]
    for target, spatial, motion in pairs:
        for part in ("resnets", "attentions", "downsamplers", "upsamplers"):
            if getattr(spatial, part, None) is not None:
                setattr(target, part, getattr(spatial, part))
        if motion is not None and hasattr(target, "motion_modules"):
            target.motion_modules = motion.motion_modules
    if any(p.is_meta for p in model.parameters()):  # a layer diffusers added that we missed
        raise RuntimeError("the video UNet has layers that were not borrowed")
    return model.eval()


# --------------------------------------------------------------------- still features (K/V)


class StillFeatures:
    """The still's spatial self-attention features (what K and V are projected from, after
    the layer's norm), by (layer, step), each (guidance batch, tokens, channels).

    Mode "store" records them while the still is made; "use" hands them to every frame of the
    video instead of the frame's own (a video batch is [negative x F, positive x F])."""

    def __init__(self) -> None:
        self.mode = "off"
        self.step: int | None = None
        self.features: dict[tuple[str, int], torch.Tensor] = {}

    def kv_source(self, layer: str, features: torch.Tensor) -> torch.Tensor:
        if self.mode == "store":
            self.features[(layer, self.step)] = features.detach().clone()
        if self.mode != "use":
            return features
        cached = self.features[(layer, self.step)]
        frames, rest = divmod(features.shape[0], cached.shape[0])
        if rest or features.shape[1:] != cached.shape[1:]:
            raise ValueError(f"{layer}: video features do not fit the still's")
        return cached.repeat_interleave(frames, dim=0)


class _StillAttnProcessor(CrossFrameAttnProcessor):
    """Our cross-frame processor with the still's features as the key/value source."""

    def _kv_source(self, features: torch.Tensor, attention_mask: torch.Tensor | None) -> Any:
        if attention_mask is not None and self.store.mode == "use":
            raise ValueError("AnimateZero does not support self-attention masks")
        return self.store.kv_source(self.name, features)


def _install_still_attention(unet: Any, store: StillFeatures) -> Callable[[], None]:
    originals = dict(unet.attn_processors)
    chosen = select_self_attention_layers(list(originals), "all")
    installed = {n: _StillAttnProcessor(n.removesuffix(".processor"), store) for n in chosen}
    unet.set_attn_processor({**originals, **installed})
    return lambda: unet.set_attn_processor(dict(originals))


# ------------------------------------------------------------------------------- the sampling


@dataclass
class _Run:
    components: Components
    settings: AnimateSettings
    embeddings: torch.Tensor  # [negative, positive]
    timesteps: torch.Tensor
    scheduler: Any
    store: StillFeatures
    progress: ProgressCallback
    cancel: CancelToken | None
    _model_t: dict[int, torch.Tensor] = field(default_factory=dict)

    def check(self) -> None:
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()

    def guided(self, model: Any, latents: torch.Tensor, t: Any, frames: int = 1) -> torch.Tensor:
        """Classifier-free guided noise, the [negative, positive] pair in one call."""
        context = self.embeddings.repeat_interleave(frames, dim=0)  # one per frame
        return guided_noise(model, latents, self.model_t(t), context, self.settings.guidance_scale)

    def model_t(self, t: torch.Tensor) -> torch.Tensor:
        """`t` on the models' device: diffusers copies a CPU t to the GPU on every call, which
        stalls the CPU until the GPU's queued work is done. All are copied at once."""
        if not self._model_t:
            on_device = self.timesteps.to(self.components.device)
            self._model_t.update(zip(self.timesteps.tolist(), on_device, strict=True))
        return self._model_t[int(t)]

    def ddim(self, noise: torch.Tensor, t: Any, latents: torch.Tensor) -> torch.Tensor:
        dtype = self.components.unet.dtype
        return self.scheduler.step(noise, t, latents.float()).prev_sample.to(dtype)


def animate(
    components: Components,
    adapter: MotionAdapter,
    settings: AnimateSettings,
    image: np.ndarray | None = None,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
    on_step: StepCallback | None = None,
) -> list[np.ndarray]:
    """Animate `image` (RGB uint8), or a still generated from `settings.prompt` when None.

    Returns `settings.frames` RGB uint8 frames; frame 0 is the still (for a given image, its
    VAE round trip). `on_step(i, latents)` sees the video latents (1, 4, F, h, w) fed to the
    UNet at step i, and with i = steps the final ones. Progress stages: "invert" (given image
    only), "still", "animate", "decode". The UNet is left as it was, even on error or cancel.
    """
    _check_settings(settings, components, adapter)
    if image is not None and (image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] < 3):
        raise ZvsError("AnimateZero animates RGB images (height x width x 3, 8 bits).")
    unet = components.unet
    vae_scale = 2 ** (len(components.vae.config.block_out_channels) - 1)  # 8 for SD1.x
    multiple = vae_scale * 2 ** (len(unet.config.block_out_channels) - 1)
    if image is not None:
        padded, (height, width) = pad_to_multiple(np.ascontiguousarray(image[..., :3]), multiple)
    else:
        padded, (height, width) = None, (settings.height, settings.width)
    size = (-(-height // multiple) * multiple, -(-width // multiple) * multiple)
    store = StillFeatures()
    restore = _install_still_attention(unet, store)
    windows = None
    try:
        motion_unet = build_motion_unet(unet, adapter)
        windows = install_window_attention(adapter, settings.window, settings.window_length)
        with torch.no_grad():
            run = _start(components, settings, store, progress, cancel)
            trace = _still(run, padded, (size[0] // vae_scale, size[1] // vae_scale))
            latents = _video(run, motion_unet, trace, on_step)
            return [f[:height, :width] for f in _decode_frames(run, latents)]
    except torch.cuda.OutOfMemoryError as exc:
        raise out_of_memory_error(CLIP_MEMORY_HINT) from exc
    finally:
        if windows is not None:
            windows.restore()
        restore()


def _check_settings(settings: AnimateSettings, components: Components, adapter: Any) -> None:
    if settings.frames < 1 or settings.steps < 1:
        raise ZvsError("AnimateZero needs at least one frame and one step.")
    check_clip_skip(settings.clip_skip)
    refuse_editing((settings.prompt, settings.negative_prompt), "AnimateZero")
    if settings.window_length is not None and settings.window_length < 1:
        raise ZvsError("The window length must be at least one frame.")
    longest = adapter.config.motion_max_seq_length
    if settings.frames > longest:
        raise ZvsError(
            f"This motion module animates at most {longest} frames, not {settings.frames}.",
            hint=f"use --frames {longest} or fewer",
        )
    if not same_device(components.device, components.unet.device):
        raise ZvsError(
            "AnimateZero cannot run with the model offloaded to system memory.",
            hint="use offload none (or a smaller resolution)",
        )
    try:
        select_motion_modules(list(motion_modules(adapter)), settings.window)
    except ValueError as exc:
        raise ZvsError(f"Window placement: {exc}") from exc


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether `a` and `b` are one device, a bare "cuda" (the current GPU) being "cuda:N"."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type == "cuda" and None in (a.index, b.index) and torch.cuda.is_available():
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (
            b.index if b.index is not None else current
        )
    return a.index is None or b.index is None or a.index == b.index


def _start(components, settings, store, progress, cancel) -> _Run:
    prompts = [settings.negative_prompt, settings.prompt]
    embeddings = encode_prompts(components, prompts, settings.clip_skip)
    scheduler = components.make_scheduler()
    scheduler.set_timesteps(settings.steps)
    timesteps = scheduler.timesteps  # on the CPU, where the scheduler indexes its tables
    return _Run(components, settings, embeddings, timesteps, scheduler, store, progress, cancel)


def _still(run: _Run, image: np.ndarray | None, size: tuple[int, int]) -> list[torch.Tensor]:
    """The still's latent path (z at each step's input, then z_0; each (1, 4, h, w)), with
    its attention features recorded at every step."""
    if image is None:
        return _generate_still(run, size)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    z0 = encode_mean(run.components.vae, pixels.to(run.components.device))
    path = _invert(run, z0.to(run.components.unet.dtype))
    run.store.mode = "store"
    for index, t in enumerate(run.timesteps):  # replay the path with guidance, recording
        run.check()
        run.store.step = index
        run.guided(run.components.unet, path[index], t)
        run.progress(Progress("still", index + 1, len(run.timesteps)))
    run.store.mode = "off"
    return path


def _generate_still(run: _Run, size: tuple[int, int]) -> list[torch.Tensor]:
    """The still sampled from noise; `size` is the latent (h, w)."""
    shape = torch.empty(1, 4, *size, device=run.components.device)
    latents = seeded_noise(shape.to(run.components.unet.dtype), run.settings.seed)
    path = [latents]
    run.store.mode = "store"
    for index, t in enumerate(run.timesteps):
        run.check()
        run.store.step = index
        latents = run.ddim(run.guided(run.components.unet, latents, t), t, latents)
        path.append(latents)
        run.progress(Progress("still", index + 1, len(run.timesteps)))
    run.store.mode = "off"
    return path


def _invert(run: _Run, z0: torch.Tensor) -> list[torch.Tensor]:
    """DDIM inversion (prompt only, no guidance): the exact reverse of our DDIM update, each
    step's noise predicted at the next lower noise level. Returns z at every step, then z_0."""
    scheduler, timesteps = run.scheduler, run.timesteps
    unet, context = run.components.unet, run.embeddings[1:]
    path, latents = [z0], z0
    for done, index in enumerate(reversed(range(len(timesteps)))):
        run.check()
        t = timesteps[index]
        alpha = float(scheduler.alphas_cumprod[int(t)])
        below = float(next_alpha(scheduler, timesteps, index))
        noise = unet(latents, run.model_t(t), encoder_hidden_states=context).sample.float()
        x0 = (latents.float() - (1 - below) ** 0.5 * noise) / below**0.5
        latents = (alpha**0.5 * x0 + (1 - alpha) ** 0.5 * noise).to(z0.dtype)
        path.insert(0, latents)
        run.progress(Progress("invert", done + 1, len(timesteps)))
    return path


def _video(run: _Run, motion_unet: Any, still: list[torch.Tensor], on_step: StepCallback | None):
    """F frames with frame 0 pinned to the still's path and the still's attention features."""
    frames, steps = run.settings.frames, len(run.timesteps)
    scheduler = run.components.make_scheduler()  # fresh state for the second pass
    scheduler.set_timesteps(run.settings.steps)
    run.scheduler = scheduler
    first = still[0]
    shape = torch.empty(1, 4, frames, *first.shape[-2:], device=first.device, dtype=first.dtype)
    latents = seeded_noise(shape, run.settings.seed + 1)  # not the still's noise, re-laid out
    run.store.mode = "use"
    for index, t in enumerate(run.timesteps):
        run.check()
        latents[:, :, 0] = still[index]
        if on_step is not None:
            on_step(index, latents)
        run.store.step = index
        latents = run.ddim(run.guided(motion_unet, latents, t, frames), t, latents)
        run.progress(Progress("animate", index + 1, steps))
    run.store.mode = "off"
    latents[:, :, 0] = still[-1]
    if on_step is not None:
        on_step(steps, latents)
    return latents


def _decode_frames(run: _Run, latents: torch.Tensor) -> list[np.ndarray]:
    """One frame at a time: the VAE at full size on 16 frames at once needs a lot of memory."""
    result = []
    frames = latents.shape[2]
    for f in range(frames):
        run.check()
        result += rgb_frames(decode(run.components.vae, latents[:, :, f]))
        run.progress(Progress("decode", f + 1, frames, image=result[-1]))
    return result
