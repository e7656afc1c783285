"""DynamiCrafter sampling: a still image (and a prompt) into a short clip.

Follows the released `image_guided_synthesis` (Doubiiu/DynamiCrafter,
`scripts/evaluation/inference.py`) and its DDIM sampler, run the way `scripts/run.sh` and
`scripts/run_application.sh` run it:

1. The image is fitted to the preset's size (covered and centre-cropped, never stretched) as a
   [-1, 1] frame. Its VAE latent (a sample of the posterior, times the SD scale factor 0.18215)
   is concatenated to the noise of every frame; interpolation puts the first image's latent on
   frame 0 and the last image's on the last frame, zeros between; a loop does the same with one
   image at both ends (`unet3d.image_condition`).
2. The context is the prompt's OpenCLIP tokens (penultimate layer) followed by the image's
   per-frame tokens: CLIP ViT-H/14 tokens of the first image through the query transformer.
3. Classifier-free guidance: the unconditional branch has the empty prompt's text tokens (the
   released `uncond_type: empty_seq`; a negative prompt replaces the empty one) and the image
   tokens of an all-zero (mid-grey) frame, and keeps the image latent concatenation. The guided
   output is `uncond + scale * (cond - uncond)`, then guidance rescale (in the model's own
   output space, v for the 512 / 1024 models) against the conditional output. Both branches run
   as one batch of two.
4. DDIM (`schedule`): 50 steps, eta 1, "uniform" steps on SD's schedule for the 256 model,
   "uniform_trailing" steps on the zero-terminal-SNR schedule with v-prediction and dynamic
   x_0 rescaling for the others, with the frame rate / stride as extra conditioning.
5. The latents are decoded a few frames at a time (the released `perframe_ae` decodes one at a
   time to save memory; the 2D VAE treats frames independently, so the chunk size does not
   change the result). A loop drops its last frame, which repeats the first.

Noise (initial latent, every DDIM step's noise and the posterior sample) is drawn on the CPU
from the seed, so a seed gives the same clip on every device up to arithmetic precision.

When the clip has another frame count than the resampler's 16, each frame gets the image
tokens of the nearest of the 16 positions (frame f of T: block f * 15 / (T - 1), rounded), so
every frame still attends to one frame's worth of image tokens as in training; the released
code gives every frame all 256 tokens instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from zvstudio.diffusion.encoding import rgb_frames
from zvstudio.errors import ZvsError
from zvstudio.generate.dynamicrafter.preprocess import (
    clip_image_input,
    frame_pixels,
)
from zvstudio.generate.dynamicrafter.schedule import ddim_schedule, ddim_step, rescale_guidance
from zvstudio.generate.dynamicrafter.tokenizer import OpenCLIPTokenizer, tokenizer_for
from zvstudio.generate.dynamicrafter.unet3d import image_condition, unet_input
from zvstudio.progress import CancelToken, Progress, ProgressCallback, ignore_progress

if TYPE_CHECKING:
    from zvstudio.generate.dynamicrafter.checkpoint import DynamiCrafterModels
    from zvstudio.generate.dynamicrafter.config import DynamiCrafterConfig

__all__ = [
    "MODES",
    "Conditioning",
    "DynamiCrafterSampler",
    "DynamiCrafterSettings",
    "frame_image_tokens",
]

Mode = Literal["animate", "interpolate", "loop"]
MODES: tuple[str, ...] = ("animate", "interpolate", "loop")


@dataclass(frozen=True)
class DynamiCrafterSettings:
    """Everything that determines a DynamiCrafter clip besides the model and the images.

    Defaults are the released run scripts' (`scripts/run.sh`, `scripts/run_application.sh`):
    50 DDIM steps, eta 1, guidance 7.5, 16 frames, seed 123. `guidance_rescale` None takes the
    preset's (0.7 for 512 / 1024 / interpolation, 0 for 256); `fs` None the preset's motion
    number: frames per second for 512 (24), 1024 (10) and interpolation (5), where smaller
    means more motion; the frame stride for 256 (3), where larger means more motion.
    """

    prompt: str = ""
    negative_prompt: str = ""
    frames: int = 16
    steps: int = 50
    guidance_scale: float = 7.5
    guidance_rescale: float | None = None
    eta: float = 1.0
    seed: int = 123
    fs: int | None = None
    mode: Mode = "animate"
    decode_chunk: int = 4  # frames the VAE decodes at once

    def check(self, config: DynamiCrafterConfig | None = None) -> None:
        """Raise ZvsError for settings that cannot make a clip (with `config`: on that model)."""
        if self.mode not in MODES:
            raise ZvsError(f"unknown DynamiCrafter mode {self.mode!r}", hint=_MODES_HINT)
        if self.frames < 2:
            raise ZvsError(f"a DynamiCrafter clip needs at least 2 frames, not {self.frames}")
        if not 1 <= self.steps <= 1000:
            raise ZvsError(f"DDIM steps must be 1 to 1000, not {self.steps}")
        if self.guidance_scale < 0:
            raise ZvsError(f"the guidance scale must not be negative: {self.guidance_scale}")
        if self.guidance_rescale is not None and not 0 <= self.guidance_rescale <= 1:
            raise ZvsError(f"guidance rescale must be 0 to 1, not {self.guidance_rescale}")
        if self.eta < 0:
            raise ZvsError(f"eta must not be negative: {self.eta}")
        if self.fs is not None and self.fs < 1:
            raise ZvsError(f"the frame rate / frame stride must be at least 1, not {self.fs}")
        if self.decode_chunk < 1:
            raise ZvsError(f"decode at least one frame at a time, not {self.decode_chunk}")
        if config is None:
            return
        if self.mode != "animate" and not config.interpolation:
            raise ZvsError(
                f"{self.mode} needs the DynamiCrafter interpolation model, not the "
                f"{config.name} model",
                hint="use the dynamicrafter_512_interp checkpoint, or mode animate",
            )
        if self.mode == "animate" and config.interpolation:
            raise ZvsError(
                "the DynamiCrafter interpolation model makes interpolations and loops",
                hint="use mode interpolate (with a last image) or loop, or another checkpoint",
            )

    def rescale_for(self, config: DynamiCrafterConfig) -> float:
        """The guidance rescale factor on `config`'s model."""
        if self.guidance_rescale is None:
            return config.schedule.guidance_rescale
        return self.guidance_rescale

    def fs_for(self, config: DynamiCrafterConfig) -> int:
        """The frame rate / frame stride the model is conditioned on."""
        return config.default_fs if self.fs is None else self.fs


PRESET_MEMORY_HINT = (
    "use a smaller --preset or fewer --frames, turn on offload (Settings, --offload model), "
    "close other GPU programs, or use --device cpu"
)
_MODES_HINT = "animate (one image), interpolate (first and last image) or loop (one image)"


@dataclass
class Conditioning:
    """What the denoiser is conditioned on, for one clip."""

    context: torch.Tensor  # (1, text + image tokens, d): prompt, then per-frame image tokens
    uncond_context: torch.Tensor | None  # the same for the guidance branch; None: no guidance
    condition: torch.Tensor  # (1, 4, frames, h, w): the image latents concatenated to the noise
    fs: int  # frame rate or frame stride


def frame_image_tokens(tokens: torch.Tensor, frames: int, per_frame: int) -> torch.Tensor:
    """(b, L * per_frame, d) per-frame image tokens for L frames -> tokens for `frames` frames:
    frame f takes the block of the nearest of the L positions, f * (L - 1) / (frames - 1).
    Unchanged when L == frames or the tokens are not per-frame blocks."""
    b, n, d = tokens.shape
    length = n // per_frame
    if length == frames or n % per_frame or length < 1:
        return tokens
    if frames == 1:
        index = [0]
    else:  # nearest, halves rounded up
        index = [int(f * (length - 1) / (frames - 1) + 0.5) for f in range(frames)]
    blocks = tokens.reshape(b, length, per_frame, d)[:, index]
    return blocks.reshape(b, frames * per_frame, d)


class DynamiCrafterSampler:
    """Runs a loaded DynamiCrafter model (see `checkpoint.load_dynamicrafter`).

    `tokenizer` defaults to OpenCLIP's, with CLIP's vocabulary from the installed package.
    """

    def __init__(
        self,
        models: DynamiCrafterModels,
        config: DynamiCrafterConfig | None = None,
        tokenizer: OpenCLIPTokenizer | None = None,
    ) -> None:
        self.models = models
        self.config = config or models.config
        self.tokenizer = tokenizer or tokenizer_for(self.config)

    @property
    def device(self) -> torch.device:
        """Where the models are (all on one device)."""
        for module in self.models.modules():
            for param in module.parameters():
                return param.device
        return torch.device("cpu")

    # -------------------------------------------------------------------------- conditioning

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(b, context_length, width): the text tower's penultimate layer, after ln_final."""
        encoder = self.models.text_encoder
        ids = self.tokenizer(prompts).to(self.device)
        return encoder(input_ids=ids).last_hidden_state

    def image_tokens(self, pixels: torch.Tensor, frames: int) -> torch.Tensor:
        """(b, frames * tokens_per_frame, d) image context tokens of [-1, 1] frames."""
        encoder = self.models.image_encoder
        dtype = next(encoder.parameters()).dtype
        clip_input = clip_image_input(pixels.to(self.device), self.config.vision.image_size)
        visual = encoder(pixel_values=clip_input.to(dtype)).last_hidden_state
        tokens = self.models.image_proj(visual)
        return frame_image_tokens(tokens, frames, self.config.unet.tokens_per_frame)

    def encode_latents(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(b, 4, H/8, W/8) scaled VAE latents of [-1, 1] frames: a sample of the posterior,
        as the released model encodes, with noise from `generator`."""
        vae = self.models.vae
        dtype = next(vae.parameters()).dtype
        posterior = vae.encode(pixels.to(self.device, dtype)).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator)
        sample = posterior.mean.float() + posterior.std.float() * noise.to(self.device)
        return sample * self.config.vae_scale_factor

    def conditioning(
        self,
        image: np.ndarray,
        settings: DynamiCrafterSettings,
        last_image: np.ndarray | None = None,
    ) -> Conditioning:
        """The contexts and image latents for `image` (RGB uint8) and the settings."""
        config = self.config
        _check_images(settings, last_image)
        size = (config.width, config.height)
        first = frame_pixels(image, size)
        frames = settings.frames
        context = torch.cat(
            [self.encode_text([settings.prompt]), self.image_tokens(first, frames)], dim=1
        )
        uncond = None
        if settings.guidance_scale != 1.0:
            uncond = torch.cat(
                [
                    self.encode_text([settings.negative_prompt]),
                    self.image_tokens(torch.zeros_like(first), frames),
                ],
                dim=1,
            )
        generator = torch.Generator().manual_seed(settings.seed)
        latent = self.encode_latents(first, generator)
        if settings.mode == "animate":
            condition = image_condition(latent, frames)
        elif settings.mode == "loop":
            condition = image_condition(latent, frames, latent)
        else:
            last = self.encode_latents(frame_pixels(last_image, size), generator)
            condition = image_condition(latent, frames, last)
        return Conditioning(context, uncond, condition, settings.fs_for(config))

    # ------------------------------------------------------------------------------ sampling

    def sample(
        self,
        conditioning: Conditioning,
        settings: DynamiCrafterSettings,
        progress: ProgressCallback = ignore_progress,
        cancel: CancelToken | None = None,
    ) -> torch.Tensor:
        """DDIM from seeded noise to the clip's latents, (1, 4, frames, h, w) float32.

        The initial noise is the first draw of torch.Generator().manual_seed(seed), each
        step's noise (eta > 0) the next ones."""
        config = self.config
        schedule = ddim_schedule(config.schedule, settings.steps, settings.eta)
        generator = torch.Generator().manual_seed(settings.seed)
        height, width = config.latent_size
        shape = (1, config.unet.out_channels, settings.frames, height, width)
        device = self.device
        x = torch.randn(shape, generator=generator).to(device)
        guided = conditioning.uncond_context is not None
        if guided:
            context = torch.cat([conditioning.uncond_context, conditioning.context])
            condition = torch.cat([conditioning.condition] * 2)
        else:
            context, condition = conditioning.context, conditioning.condition
        condition = condition.to(device)
        batch = context.shape[0]
        fs = torch.full((batch,), conditioning.fs, dtype=torch.long, device=device)
        rescale = settings.rescale_for(config)
        total = len(schedule.timesteps)
        progress(Progress("animate", 0, total))
        for index, step in enumerate(schedule.timesteps):
            if cancel is not None:
                cancel.raise_if_cancelled()
            noisy = torch.cat([x] * batch)
            timesteps = torch.full((batch,), step, dtype=torch.long, device=device)
            out = self.models.unet(unet_input(noisy, condition), timesteps, context, fs=fs)
            out = out.float()
            if guided:
                uncond_out, cond_out = out.chunk(2)
                out = uncond_out + settings.guidance_scale * (cond_out - uncond_out)
                out = rescale_guidance(out, cond_out, rescale)
            noise = None
            if schedule.sigmas[index] > 0:
                noise = torch.randn(shape, generator=generator).to(device)
            x, _ = ddim_step(x, out, schedule, index, config.schedule.prediction, noise)
            progress(Progress("animate", index + 1, total))
        return x

    def decode(
        self,
        latents: torch.Tensor,
        settings: DynamiCrafterSettings,
        progress: ProgressCallback = ignore_progress,
        cancel: CancelToken | None = None,
    ) -> list[np.ndarray]:
        """(1, 4, frames, h, w) latents -> RGB uint8 frames, `decode_chunk` frames at a time."""
        vae = self.models.vae
        dtype = next(vae.parameters()).dtype
        per_frame = latents[0].transpose(0, 1) / self.config.vae_scale_factor  # (t, 4, h, w)
        total = per_frame.shape[0]
        frames: list[np.ndarray] = []
        for start in range(0, total, settings.decode_chunk):
            if cancel is not None:
                cancel.raise_if_cancelled()
            chunk = per_frame[start : start + settings.decode_chunk].to(self.device, dtype)
            frames.extend(rgb_frames(vae.decode(chunk).sample))
            progress(Progress("decode", len(frames), total, image=frames[-1]))
        return frames

    def animate(
        self,
        image: np.ndarray,
        settings: DynamiCrafterSettings,
        last_image: np.ndarray | None = None,
        progress: ProgressCallback = ignore_progress,
        cancel: CancelToken | None = None,
    ) -> list[np.ndarray]:
        """The clip's frames (RGB uint8 at the preset's size) for `image` (RGB uint8, any size).

        Progress: stage "animate" per DDIM step, then "decode" per decoded frame. Raises
        RenderCancelled when `cancel` is set, ZvsError for settings the model cannot use and
        when the GPU runs out of memory."""
        from zvstudio.diffusion.sampler import out_of_memory_error

        settings.check(self.config)
        _check_images(settings, last_image)
        if cancel is not None:
            cancel.raise_if_cancelled()
        try:
            with torch.inference_mode():
                conditioning = self.conditioning(image, settings, last_image)
                latents = self.sample(conditioning, settings, progress, cancel)
                frames = self.decode(latents, settings, progress, cancel)
        except torch.cuda.OutOfMemoryError as exc:
            raise out_of_memory_error(PRESET_MEMORY_HINT) from exc
        if settings.mode == "loop":
            frames = frames[:-1]  # the last frame is the first again
        return frames


def _check_images(settings: DynamiCrafterSettings, last_image: np.ndarray | None) -> None:
    if settings.mode == "interpolate" and last_image is None:
        raise ZvsError("interpolation needs a last image as well as the first")
    if settings.mode != "interpolate" and last_image is not None:
        raise ZvsError(
            f"a last image is only used to interpolate, not to {settings.mode}",
            hint="use mode interpolate, or leave the last image out",
        )
