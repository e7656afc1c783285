"""Text2Video-Zero (METHOD section 2): a temporally consistent clip from one SD1.5 model.

Written on our own model layer (diffusers' TextToVideoZeroPipeline is deprecated):

1. Every spatial self-attention layer (UNet, and ControlNet when there is one) becomes
   cross-frame attention to frame 0: each frame keeps its own query, keys and values come from
   frame 0's features (`FirstFrameAttnProcessor`). Frame 0 therefore attends to itself only and
   its trajectory is independent of every other frame.
2. Motion dynamics (text mode): frame 0 is denoised from x_T down to t1, then on to t0. Every
   other frame k starts from frame 0's x_t0 translated globally by k·δ (`translate_latents`),
   re-noised in one DDPM step from t0 back to t1 (`renoise`). t0 and t1 are fractions of the
   training schedule (0.88 and 0.94: the paper's 44 and 47 of 50 steps), so any step count works.
3. All frames are denoised jointly from t1 with classifier-free guidance in one batch.
4. Long clips are made in chunks that each include frame 0, with absolute frame ids for the
   motion and the noise, so a chunked clip equals an unchunked one.
5. Background smoothing (optional, text mode, when a foreground mask source is given): the clip
   is made once, each frame's foreground is found in it, and the joint denoising runs again
   from t1 with each frame's background pulled towards frame 0's x_t1 carried by the motion
   (where neither that frame's foreground nor frame 0's carried foreground lies), as the
   paper's authors do: the background then holds still in the moving camera instead of
   shimmering. Frame 0 is unchanged by it.

ControlNet mode (an input clip's edges / pose / depth): every frame starts from the same x_T,
there is no latent motion (the control images carry it), and the ControlNet's self-attention is
cross-frame too.

Video Instruct-Pix2Pix (an InstructPix2Pix model, 8 UNet input channels): each frame of an input
clip is edited by the prompt as an instruction; the frame's image latent is concatenated to the
noise, every frame starts from the same x_T, and guidance has three branches (instruction and
image, image only, neither) laid out as three groups of frames, frame 0 first in each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from zvstudio.diffusion.annotators import control_condition
from zvstudio.diffusion.attention import CrossFrameAttnProcessor, select_self_attention_layers
from zvstudio.diffusion.control import (
    ControlStack,
    MoreControls,
    check_more_controls,
    frames_of,
)
from zvstudio.diffusion.encoding import decode, rgb_frames
from zvstudio.diffusion.loading import Components
from zvstudio.diffusion.prompt_editing import refuse_editing
from zvstudio.diffusion.prompts import check_clip_skip
from zvstudio.diffusion.sampler import ddim_update, encode_prompts, guided_noise, next_alpha
from zvstudio.errors import ZvsError
from zvstudio.progress import CancelToken, Progress, ProgressCallback, ignore_progress

# The paper's motion field is 12 px per frame at 512 px: a fraction of the frame, kept as such
# at other sizes.
MOTION_REFERENCE_SIZE = 512
# Foreground masks grow by this many latent pixels (the authors' 5x5 dilation), so that an
# object's edge is never pulled towards frame 0's background.
FOREGROUND_MARGIN = 2

#: A foreground mask source: an RGB uint8 frame -> HxW mask, > 0.5 where the foreground is.
ForegroundMasks = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TextToVideoSettings:
    """Everything that determines a Text2Video-Zero clip besides the models."""

    prompt: str = ""
    negative_prompt: str = ""
    frames: int = 8
    steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 0
    width: int = 512
    height: int = 512
    # Global translation per frame (x, y), in pixels of a 512 px frame; the camera pans by it.
    motion_field: tuple[float, float] = (12.0, 12.0)
    # Where frame 0's latent is copied (t0) and re-noised back to (t1), as fractions of the
    # training schedule (t / num_train_timesteps); t1 > t0.
    t0: float = 0.88
    t1: float = 0.94
    chunk_size: int = 8  # frames denoised together, frame 0 included in each chunk
    controlnet_scale: float = 1.0
    annotator: str = "canny"  # what turns the input clip's frames into control images
    # (annotator, strength) of each ControlNet after the first (`zvstudio.diffusion.control`)
    more_controls: MoreControls = ()
    image_guidance_scale: float = 1.5  # InstructPix2Pix: how closely frames keep the input
    # Background smoothing: how far each frame's background moves towards frame 0's carried
    # by the motion (the paper's 0.6); 0 is off. Needs a foreground mask source.
    smooth_background: float = 0.0
    clip_skip: int = 1  # A1111's "Clip skip" (`zvstudio.diffusion.prompts.encode_ids`)

    def check(self) -> None:
        """Raise `ZvsError` for settings that cannot make a clip."""
        check_clip_skip(self.clip_skip)
        check_more_controls(self.more_controls)
        refuse_editing((self.prompt, self.negative_prompt), "Text2Video-Zero")
        if self.frames < 1:
            raise ZvsError(f"a clip needs at least one frame, not {self.frames}")
        if self.steps < 3:
            raise ZvsError(f"Text2Video-Zero needs at least 3 steps, not {self.steps}")
        if self.chunk_size < 2:
            raise ZvsError(f"chunks hold frame 0 and at least one more: not {self.chunk_size}")
        if self.width % 8 or self.height % 8 or min(self.width, self.height) < 8:
            raise ZvsError(f"{self.width}x{self.height}: width and height must be multiples of 8")
        if not 0 < self.t0 < self.t1 < 1:
            raise ZvsError(f"need 0 < t0 < t1 < 1, got t0={self.t0}, t1={self.t1}")
        if not 0 <= self.smooth_background <= 1:
            raise ZvsError(f"background smoothing is 0 to 1, not {self.smooth_background}")


# -- cross-frame attention to frame 0 ---------------------------------------------------------
class FrameLayout:
    """How a UNet batch is laid out: `groups` guidance branches of equally many frames each,
    frame 0 first in every group. Shared by the installed processors."""

    def __init__(self, groups: int = 2) -> None:
        self.groups = groups


class FirstFrameAttnProcessor(CrossFrameAttnProcessor):
    """Self-attention whose keys and values are frame 0's (Text2Video-Zero): every frame of a
    guidance branch attends to that branch's frame 0, computed exactly as AttnProcessor2_0."""

    def __init__(self, name: str, layout: FrameLayout) -> None:
        self.name = name
        self.layout = layout

    def _kv_source(self, features: torch.Tensor, attention_mask) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("cross-frame attention does not support self-attention masks")
        return features  # `_project_kv` takes frame 0's rows

    def _project_kv(self, attn, source: torch.Tensor, is_self: bool):
        """Self-attention: project only each branch's frame 0 and share its keys and values
        with the branch's other frames (a frames-fold saving on these projections)."""
        if not is_self:
            return super()._project_kv(attn, source, is_self)
        batch, tokens, channels = source.shape
        groups = self.layout.groups
        if batch % groups:
            raise ValueError(f"a batch of {batch} does not split into {groups} guidance branches")
        per_group = batch // groups
        first = source.view(groups, per_group, tokens, channels)[:, 0]

        def spread(projected: torch.Tensor) -> torch.Tensor:
            shape = (groups, per_group, *projected.shape[1:])
            return projected[:, None].expand(shape).reshape(batch, tokens, -1)

        return spread(attn.to_k(first)), spread(attn.to_v(first))


@contextmanager
def first_frame_attention(models: Sequence, layout: FrameLayout) -> Iterator[None]:
    """Cross-frame attention to frame 0 in every spatial self-attention layer of `models`
    (a UNet, a ControlNet), restored to their own processors afterwards."""
    originals = [dict(model.attn_processors) for model in models]
    try:
        for model, processors in zip(models, originals, strict=True):
            chosen = select_self_attention_layers(list(processors), "all")
            installed = {
                n: FirstFrameAttnProcessor(n.removesuffix(".processor"), layout) for n in chosen
            }
            model.set_attn_processor({**processors, **installed})
        yield
    finally:
        for model, processors in zip(models, originals, strict=True):
            model.set_attn_processor(dict(processors))


# -- the schedule and the motion --------------------------------------------------------------
def schedule_index(timesteps: torch.Tensor, fraction: float, train_steps: int) -> int:
    """The index of the step whose timestep is nearest `fraction` of the training schedule."""
    target = fraction * train_steps
    return int(torch.argmin((timesteps.double() - target).abs()))


def motion_indices(timesteps: torch.Tensor, settings: TextToVideoSettings, train_steps: int):
    """(index of t1, index of t0) in `timesteps`: frame 0 runs steps [0, i1) to reach x_t1 and
    [i1, i0) to reach x_t0. t0 always lies at least one step after t1."""
    i1 = schedule_index(timesteps, settings.t1, train_steps)
    i0 = max(schedule_index(timesteps, settings.t0, train_steps), i1 + 1)
    if i0 >= len(timesteps):
        raise ZvsError(f"{len(timesteps)} steps are too few for t0={settings.t0}")
    return i1, i0


def motion_shift(
    frame_id: int, motion_field: tuple[float, float], latent_size: tuple[int, int]
) -> tuple[float, float]:
    """Frame `frame_id`'s translation (x, y) in latent pixels: frame_id · δ, with δ given in
    pixels of a 512 px frame and scaled to the latent's width and height."""
    height, width = latent_size
    dx, dy = motion_field
    return (
        frame_id * dx * width / MOTION_REFERENCE_SIZE,
        frame_id * dy * height / MOTION_REFERENCE_SIZE,
    )


def translate_latents(latents: torch.Tensor, shifts: Sequence[tuple[float, float]]) -> torch.Tensor:
    """Translate each latent (F, C, h, w) globally: out_k(x, y) = in_k(x + sx_k, y + sy_k),
    nearest sampling, reflection padding (the paper's warp; no blur from interpolation)."""
    frames, _, height, width = latents.shape
    shift = torch.tensor(shifts, dtype=torch.float64).view(frames, 1, 1, 2)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )
    source = torch.stack([xs, ys], dim=-1)[None] + shift  # pixel coordinates
    # grid_sample's normalised coordinates (align_corners=False: pixel centres at (2i+1)/n - 1).
    size = torch.tensor([width, height], dtype=torch.float64)
    grid = (2 * source + 1) / size - 1
    moved = F.grid_sample(
        latents.float(),
        grid.float().to(latents.device),
        mode="nearest",
        padding_mode="reflection",
        align_corners=False,
    )
    return moved.to(latents.dtype)


def renoise(x_t0: torch.Tensor, noise: torch.Tensor, alpha_t0, alpha_t1) -> torch.Tensor:
    """One DDPM forward step from t0 to t1 > t0:
    x_t1 = sqrt(ᾱ_t1/ᾱ_t0) x_t0 + sqrt(1 - ᾱ_t1/ᾱ_t0) ε."""
    ratio = (alpha_t1 / alpha_t0).to(x_t0)
    return ratio.sqrt() * x_t0 + (1 - ratio).sqrt() * noise


def frame_noise(shape: Sequence[int], seed: int, frame_id: int) -> torch.Tensor:
    """Noise for one frame, drawn on the CPU from (seed, absolute frame id): the same in every
    chunking of a clip."""
    generator = torch.Generator("cpu").manual_seed(seed * 1_000_003 + frame_id)
    return torch.randn(tuple(shape), generator=generator)


def chunks(frames: int, chunk_size: int) -> list[list[int]]:
    """Absolute frame ids of each chunk: frame 0 first in every chunk, the others in order."""
    rest = list(range(1, frames))
    step = chunk_size - 1
    return [[0, *rest[i : i + step]] for i in range(0, len(rest), step)] or [[0]]


def latent_masks(masks: Sequence[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """Foreground masks (HxW, > 0.5 inside) at latent `size` (h, w) as a binary (F, 1, h, w)
    tensor: a latent pixel is foreground where any of its area is, grown by
    `FOREGROUND_MARGIN`."""
    height, width = size
    kernel = np.ones((2 * FOREGROUND_MARGIN + 1,) * 2, np.uint8)
    small = []
    for mask in masks:
        inside = (np.asarray(mask, np.float32) > 0.5).astype(np.float32)
        cover = cv2.resize(inside, (width, height), interpolation=cv2.INTER_AREA)
        small.append(cv2.dilate((cover > 0).astype(np.uint8), kernel))
    return torch.from_numpy(np.stack(small)[:, None].astype(np.float32))


def smooth_starts(
    starts: torch.Tensor,
    first: torch.Tensor,
    foreground: torch.Tensor,
    first_foreground: torch.Tensor,
    shifts: Sequence[tuple[float, float]],
    strength: float,
) -> torch.Tensor:
    """Background smoothing of the joint denoising's starting latents `starts` (F, C, h, w):
    where frame k's background (1 - `foreground`[k], binary) meets frame 0's background carried
    by k's motion `shifts`[k], move its latent `strength` of the way to frame 0's start `first`
    (1, C, h, w) carried likewise. Frame 0's own start (shift 0, and `first` itself) is pulled
    towards itself: unchanged up to rounding."""
    count = starts.shape[0]
    carried = translate_latents((first * (1 - first_foreground)).expand(count, -1, -1, -1), shifts)
    carried_foreground = translate_latents(first_foreground.expand(count, -1, -1, -1), shifts)
    pull = strength * (1 - foreground) * (1 - carried_foreground)
    return (starts.float() * (1 - pull) + carried.float() * pull).to(starts.dtype)


# -- the generator ----------------------------------------------------------------------------
class TextToVideoZero:
    """Makes clips with one loaded model (and optionally ControlNets)."""

    def __init__(
        self,
        components: Components,
        controlnets: Sequence = (),
        foreground: ForegroundMasks | None = None,
    ) -> None:
        self.components = components
        self.controlnets = list(controlnets)  # paired with the settings' annotators at each run
        self.foreground = foreground  # what background smoothing finds the foreground with
        self.device = components.device
        self.dtype = components.unet.dtype
        # InstructPix2Pix UNets take the input frame's latent beside the noise.
        self.instruct = components.unet.config.in_channels == 8
        # The reference image's embedding (an IP-Adapter in the UNet; a generated clip has one
        # reference), for the guidance batch.
        reference = components.reference
        self.image_embeds = None
        if reference is not None:
            self.image_embeds = next(iter(reference.by_image.values())).to(self.device)
        if reference is not None and self.instruct:
            raise ZvsError(
                "a reference image does not work with InstructPix2Pix editing: its guidance "
                "has no place for it",
                hint="edit without --reference, or make a clip from a prompt with one",
            )
        self.layout = FrameLayout(groups=3 if self.instruct else 2)
        self.vae_scale = 2 ** (len(components.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def generate(
        self,
        settings: TextToVideoSettings,
        control_frames: Sequence[np.ndarray] | None = None,
        progress: ProgressCallback = ignore_progress,
        cancel: CancelToken | None = None,
    ) -> list[np.ndarray]:
        """The clip's frames (RGB uint8, settings.height x settings.width).

        With ControlNets, `control_frames` (RGB, one per output frame, any size) are turned
        into control images by their annotators (`control_units(settings)`). Progress:
        "generate" steps (with background smoothing, "foreground" frames between its two
        passes), then "decode" frames, each with the decoded frame as its preview."""
        frames = []
        latents = self.latents(settings, control_frames, progress, cancel)
        for latent in latents:
            if cancel is not None:
                cancel.raise_if_cancelled()
            frames.append(self._to_image(latent))
            progress(Progress("decode", len(frames), len(latents), image=frames[-1]))
        return frames

    @torch.no_grad()
    def latents(self, settings, control_frames=None, progress=ignore_progress, cancel=None):
        """The clip's final latents (frames, C, h, w), before decoding."""
        settings.check()
        smoothing = settings.smooth_background > 0
        if smoothing:
            self._check_smoothing(control_frames)
        controls = ControlStack(self.controlnets, settings)
        if self.instruct:
            conditions = self._image_latents(settings, control_frames)
        else:
            conditions = self._conditions(settings, controls, control_frames)
        scheduler = self.components.make_scheduler()
        scheduler.set_timesteps(settings.steps)
        groups = chunks(settings.frames, settings.chunk_size)
        with first_frame_attention([self.components.unet, *controls.nets], self.layout):
            passes = 2 if smoothing else 1
            run, starts, first_joint = self._starts(
                settings, scheduler, controls, passes * len(groups), progress, cancel
            )
            joint = range(first_joint, len(scheduler.timesteps))
            latents = self._joint(run, starts, groups, joint, conditions, settings.frames)
            if smoothing:
                masks = self._foreground_of(latents, progress, cancel)
                starts = _SmoothedStarts(starts, masks, settings.smooth_background)
                latents = self._joint(run, starts, groups, joint, conditions, settings.frames)
        return latents

    @staticmethod
    def _joint(run, starts, groups, joint: range, conditions, frames: int) -> torch.Tensor:
        """Every frame denoised from its start over the `joint` steps, chunk by chunk."""
        result: dict[int, torch.Tensor] = {}
        for ids in groups:
            condition = frames_of(conditions, ids)
            latents = run.steps(starts.for_frames(ids), joint, condition)
            result.update(zip(ids, latents, strict=True))
        return torch.stack([result[i] for i in range(frames)])

    def _check_smoothing(self, control_frames) -> None:
        if self.instruct or self.controlnets or control_frames is not None:
            raise smoothing_needs_text_mode()
        if self.foreground is None:
            raise no_foreground_source()

    def _foreground_of(self, latents: torch.Tensor, progress, cancel) -> torch.Tensor:
        """Each frame's foreground mask (F, 1, h, w) at latent size, found in its image."""
        masks = []
        for number, latent in enumerate(latents, 1):
            if cancel is not None:
                cancel.raise_if_cancelled()
            image = self._to_image(latent)
            masks.append(self.foreground(image))
            progress(Progress("foreground", number, len(latents)))
        return latent_masks(masks, tuple(latents.shape[-2:])).to(latents.device)

    def _starts(self, settings, scheduler, controls, chunk_count: int, progress, cancel):
        """(the denoiser with `controls`, where each frame starts, the first joint step). In
        text mode, frame 0 is denoised alone to t1 and t0 first for the motion; otherwise (an
        input clip guides the frames, through ControlNets or an InstructPix2Pix model) every
        frame starts from the same x_T at step 0."""
        timesteps = scheduler.timesteps
        prompts = [settings.negative_prompt, settings.prompt]
        if self.instruct:  # (instruction, image), (image only), (neither)
            prompts = [settings.prompt, settings.negative_prompt, settings.negative_prompt]
        embeddings = encode_prompts(self.components, prompts, settings.clip_skip)
        latent_shape = (
            self.components.vae.config.latent_channels,
            settings.height // self.vae_scale,
            settings.width // self.vae_scale,
        )
        start = frame_noise(latent_shape, settings.seed, -1)[None].to(self.device, self.dtype)
        guided = self.instruct or bool(controls)
        if guided:
            total = chunk_count * len(timesteps)
        else:
            i1, i0 = motion_indices(timesteps, settings, scheduler.config.num_train_timesteps)
            total = i0 + chunk_count * (len(timesteps) - i1)
        counter = _Counter(progress, total)
        run = _Denoise(self, settings, scheduler, timesteps, embeddings, controls, counter, cancel)
        if guided:
            return run, _SharedStart(start), 0
        x_t1 = run.steps(start, range(i1), None)
        x_t0 = run.steps(x_t1, range(i1, i0), None)
        return run, _MotionStarts(settings, scheduler, timesteps, (i1, i0), x_t1, x_t0), i1

    def _image_latents(self, settings, frames) -> torch.Tensor:
        """InstructPix2Pix: the input frames' latents (the VAE's mode, unscaled, as the model
        was trained), one frame at a time to bound memory."""
        if self.controlnets:
            raise ZvsError("an InstructPix2Pix model edits the clip itself: drop the ControlNet")
        _require_frames(settings, frames, "an InstructPix2Pix model")
        vae = self.components.vae
        latents = []
        for frame in frames[: settings.frames]:
            fitted = fit_frame(frame, (settings.width, settings.height))
            pixels = torch.from_numpy(fitted).permute(2, 0, 1)[None].float() / 127.5 - 1
            encoded = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.mode()
            latents.append(encoded.to(self.dtype))
        return torch.cat(latents)

    def _conditions(self, settings, controls: ControlStack, control_frames):
        """Each ControlNet's images (frames, 3, H, W) in [0, 1], or None in text mode."""
        if not controls:
            if control_frames is not None:
                raise ZvsError("an input clip guides the video only through a ControlNet")
            return None
        _require_frames(settings, control_frames, "the ControlNet")
        conditions = []
        units = zip(controls.nets, controls.annotators, strict=True)
        for index, (net, annotator) in enumerate(units):
            size = controls.condition_size(index, settings.width, settings.height, self.vae_scale)
            images = [
                control_condition(fit_frame(frame, size), annotator)
                for frame in control_frames[: settings.frames]
            ]
            stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
            conditions.append(stacked.to(self.device, net.dtype))
        return conditions

    def _to_image(self, latent: torch.Tensor) -> np.ndarray:
        return rgb_frames(decode(self.components.vae, latent[None]))[0]


def smoothing_needs_text_mode() -> ZvsError:
    return ZvsError(
        "background smoothing works on text-to-video's camera motion: a clip made from an "
        "input video follows that video's background instead",
        hint="turn background smoothing off, or make the clip from the prompt alone",
    )


def no_foreground_source() -> ZvsError:
    return ZvsError(
        "background smoothing needs a foreground mask source: no ADE20K segmentation model "
        "was found",
        hint="put one (a transformers UperNet or SegFormer folder with model.safetensors) in "
        "your models folder's annotators/, or set $ZVSTUDIO_SEG_MODEL",
    )


def _require_frames(settings, frames, who: str) -> None:
    if frames is None or len(frames) < settings.frames:
        have = 0 if frames is None else len(frames)
        raise ZvsError(f"{who} needs {settings.frames} input frames, the clip gives {have}")


def fit_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`frame` scaled to cover `size` (width, height) keeping its aspect ratio, centre-cropped:
    never stretched."""
    width, height = size
    scale = max(width / frame.shape[1], height / frame.shape[0])
    scaled_w = max(width, round(frame.shape[1] * scale))
    scaled_h = max(height, round(frame.shape[0] * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    scaled = cv2.resize(frame, (scaled_w, scaled_h), interpolation=interpolation)
    top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
    return np.ascontiguousarray(scaled[top : top + height, left : left + width])


class _Counter:
    """Counts denoising steps (UNet calls on a batch) for progress reports."""

    def __init__(self, progress: ProgressCallback, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def step(self) -> None:
        self.done += 1
        self.progress(Progress("generate", self.done, self.total))


class _MotionStarts:
    """Text mode: frame 0 starts the joint denoising from its own x_t1; frame k from frame 0's
    x_t0 translated by k·δ and re-noised to t1 with its own noise."""

    def __init__(self, settings, scheduler, timesteps, indices, x_t1, x_t0) -> None:
        self.settings = settings
        i1, i0 = indices
        self.alpha_t1 = scheduler.alphas_cumprod[int(timesteps[i1])]
        self.alpha_t0 = scheduler.alphas_cumprod[int(timesteps[i0])]
        self.x_t1, self.x_t0 = x_t1, x_t0

    def for_frames(self, ids: list[int]) -> torch.Tensor:
        return torch.cat([self._start(frame_id) for frame_id in ids])

    def _start(self, frame_id: int) -> torch.Tensor:
        if frame_id == 0:
            return self.x_t1
        shift = motion_shift(frame_id, self.settings.motion_field, self.x_t0.shape[-2:])
        moved = translate_latents(self.x_t0, [shift])
        noise = frame_noise(moved.shape[1:], self.settings.seed, frame_id)[None].to(moved)
        return renoise(moved.float(), noise.float(), self.alpha_t0, self.alpha_t1).to(moved.dtype)


class _SmoothedStarts:
    """Background smoothing: the motion starts of the first pass, smoothed (`smooth_starts`)
    with each frame's foreground mask from it."""

    def __init__(self, motion: _MotionStarts, masks: torch.Tensor, strength: float) -> None:
        self.motion, self.masks, self.strength = motion, masks, strength

    def for_frames(self, ids: list[int]) -> torch.Tensor:
        latent_size = self.motion.x_t1.shape[-2:]
        field = self.motion.settings.motion_field
        shifts = [motion_shift(frame_id, field, latent_size) for frame_id in ids]
        masks = self.masks.to(self.motion.x_t1)
        starts = self.motion.for_frames(ids)
        smoothed = smooth_starts(
            starts, self.motion.x_t1, masks[ids], masks[:1], shifts, self.strength
        )
        # Frame 0 is pulled towards itself: keep it bit for bit, not within rounding.
        smoothed[[i for i, frame_id in enumerate(ids) if frame_id == 0]] = starts[0]
        return smoothed


class _SharedStart:
    """ControlNet mode: every frame starts from the same x_T."""

    def __init__(self, start: torch.Tensor) -> None:
        self.start = start

    def for_frames(self, ids: list[int]) -> torch.Tensor:
        return self.start.expand(len(ids), *self.start.shape[1:]).clone()


class _Denoise:
    """Joint DDIM steps over a batch of frames (frame 0 first), guidance batched."""

    def __init__(
        self, owner, settings, scheduler, timesteps, embeddings, controls, counter, cancel
    ):
        self.owner = owner
        self.settings = settings
        self.scheduler = scheduler
        self.timesteps = timesteps
        # For the models, on their device: diffusers copies a CPU t to the GPU on every call,
        # which stalls the CPU until the GPU's queued work is done.
        self.model_timesteps = timesteps.to(owner.components.device)
        self.embeddings = embeddings  # (2, tokens, C): negative, positive
        self.controls = controls  # a ControlStack
        self.counter = counter
        self.cancel = cancel

    def steps(self, latents: torch.Tensor, indices: range, condition) -> torch.Tensor:
        for index in indices:
            if self.cancel is not None:
                self.cancel.raise_if_cancelled()
            t = self.timesteps[index]
            epsilon = self._epsilon(latents, self.model_timesteps[index], condition)
            alpha = self.scheduler.alphas_cumprod[int(t)]  # 0-dim on the CPU: no copy
            x0 = (latents.float() - (1 - alpha).sqrt() * epsilon) / alpha.sqrt()
            alpha_prev = next_alpha(self.scheduler, self.timesteps, index)
            latents = ddim_update(x0, epsilon, alpha_prev).to(self.owner.dtype)
            self.counter.step()
        return latents

    def _epsilon(self, latents: torch.Tensor, t, condition) -> torch.Tensor:
        if self.owner.instruct:
            return self._instruct_epsilon(latents, t, condition)
        # The batch is [negative frames..., positive frames...].
        frames = latents.shape[0]
        embeddings = self.embeddings.repeat_interleave(frames, dim=0)
        image_embeds = self.owner.image_embeds
        if image_embeds is not None:
            image_embeds = image_embeds.repeat_interleave(frames, dim=0)
        return guided_noise(
            self.owner.components.unet,
            latents,
            t,
            embeddings,
            self.settings.guidance_scale,
            self.controls.model,
            None if condition is None else [torch.cat([image, image]) for image in condition],
            self.controls.scales,
            image_embeds,
        )

    def _instruct_epsilon(self, latents, t, image_latents) -> torch.Tensor:
        """InstructPix2Pix guidance: ε_∅ + s_T (ε_TI - ε_I) + s_I (ε_I - ε_∅)."""
        frames = latents.shape[0]
        batch = torch.cat([latents, latents, latents])
        images = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
        embeddings = self.embeddings.repeat_interleave(frames, dim=0)
        unet = self.owner.components.unet
        output = unet(torch.cat([batch, images], dim=1), t, encoder_hidden_states=embeddings)
        both, image, neither = output.sample.float().chunk(3)
        return (
            neither
            + self.settings.guidance_scale * (both - image)
            + self.settings.image_guidance_scale * (image - neither)
        )
