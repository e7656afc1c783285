"""The key-frame sampler: SD1.x img2img (SDEdit) with ControlNet and the cross-frame
constraints that keep every key consistent with the anchor and the previous key.

A readable top-to-bottom DDIM loop, as diffusers writes its pipelines, on our own model layer:

1. SDEdit start on the truncated schedule (never steps on pure noise thrown away):
   x_T = sqrt(ᾱ_T) E(I) + sqrt(1 - ᾱ_T) z with T = strength * T_max and the same seeded z for
   every key.
2. Each step runs the UNet on the [negative, positive] batch (classifier-free guidance in one
   call), with ControlNet residuals from the frame's edges.
3. Constraints (METHOD 1.1) at their schedule fractions: cross-frame attention (installed
   processors attend to the anchor's and previous key's features), shape-aware fusion of the
   predicted x̂0 with the anchor's x̂0 warped by optical flow, AdaIN of x̂0 to the anchor's
   statistics. The DDIM update then uses the adjusted x̂0.

4. Pixel-aware fusion: the anchor's and the previous key's renders, warped to this frame by
   optical flow, are composited over a rough render where the flow is valid (anchor first),
   encoded with the fidelity-oriented encoder E*, and inside the fusion range x_{t-1} is
   pulled towards that composite (noised to t-1). Two ways to get the rough render
   (`pixel_fusion_mode`):
   - "single_pass" (the default): the predicted x̂0 at the first step of the range, decoded.
     It only fills the parts of the composite that no warped key covers, where the fusion
     never acts, so one pass suffices.
   - "two_pass" (the paper): a whole first pass; the second pass is identical to the first
     until the range starts, so it resumes from the first pass's latent there instead of
     re-running those steps (`resume_second_pass`; exactly equal). At the default strength
     0.75 the range starts at the first step, so resuming saves nothing: a key costs two.

Optical flows between input frames are computed once per key, in a background thread that
overlaps the first sampling steps (OpenCV releases the GIL; on a GPU the UNet runs meanwhile).

Keys are rendered at most `key_size` pixels on their short side (512 by default, the size
SD1.x was trained at) and scaled back to the frame's size, where propagation carries them at
full resolution. A 1080p key at its own size has 4.5 times the pixels of one at 512, takes
longer still (attention grows with the square of the pixels) and repeats its subjects across
the frame. The frame and the reference keys are scaled down together, so every key of a clip
is rendered at the same size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np
import torch

from zvstudio.diffusion.annotators import annotator_identity, control_condition
from zvstudio.diffusion.attention import ReferenceStore, install_cross_frame_attention
from zvstudio.diffusion.constraints import (
    ConstraintSchedule,
    adain,
    downsample_mask,
    match_colours_lab,
    pixel_aware_fusion,
    pixel_aware_fusion_soft,
    q_sample,
    shape_aware_fusion,
)
from zvstudio.diffusion.control import (
    ALL_STEPS,
    ControlStack,
    MoreControls,
    check_control_steps,
    check_more_controls,
    control_active,
)
from zvstudio.diffusion.embeddings import embeddings_identity, expand_prompt
from zvstudio.diffusion.encoding import decode, encode_mean, fidelity_encode, rgb_frames
from zvstudio.diffusion.ip_adapter import (
    DEFAULT_REFERENCE_SCALE,
    check_reference_scale,
    reference_identity,
    set_reference_scale,
)
from zvstudio.diffusion.loading import Components
from zvstudio.diffusion.prompt_editing import EDITING_VERSION, prompts_per_step, uses_editing
from zvstudio.diffusion.prompts import (
    SYNTAX_VERSION,
    check_clip_skip,
    encode_ids,
    encode_weighted,
    uses_syntax,
)
from zvstudio.errors import ZvsError
from zvstudio.flow import DISFlow, consistency_mask, warp
from zvstudio.keyrender import (
    DEFAULT_KEY_SIZE,
    KeyContext,
    KeyParams,
    KeyRenderer,
    working_size,
)
from zvstudio.progress import CancelToken, Progress, ProgressCallback, ignore_progress

PIXEL_FUSION_MODES = ("single_pass", "two_pass")  # see the module's docstring

# Approximate RGB of SD1.x latents (a linear map), for step previews without the VAE.
_LATENT_RGB = torch.tensor(
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
)

PreviewCallback = Callable[[np.ndarray], None]


@dataclass(frozen=True)
class KeySettings:
    """Everything that determines a key frame's rendering besides the models and the frame."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    guidance_scale: float = 7.5
    strength: float = 0.75
    seed: int = 0
    controlnet_scale: float = 0.7
    canny_thresholds: tuple[int, int] = (100, 200)
    annotator: str = "canny"  # what makes the ControlNet's control image (plugins add more)
    cross_frame_layers: str = "decoder"  # "decoder", "decoder_loose", "all" or "off"
    schedule: ConstraintSchedule = field(default_factory=ConstraintSchedule)
    pixel_fusion_weight: float = 1.0  # how hard the fusion follows the warped keys
    # 0: the linear blend of the paper; above: the authors' soft form, which keeps about that
    # fraction of the frame's own noise inside the fused region (0.9 in their code).
    pixel_fusion_detail: float = 0.0
    pixel_fusion_mode: str = "single_pass"  # or "two_pass" (see the module's docstring)
    resume_second_pass: bool = True  # resume pass two from pass one's latent (exact, faster)
    # Match each later key's input colours (Lab histograms) to the anchor's render before
    # SDEdit, for prompts whose colours differ from the footage (METHOD 1.1).
    colour_correction: bool = False
    # Render at most this many pixels on the short side (scaled back after); 0: the frame's.
    key_size: int = DEFAULT_KEY_SIZE
    # A1111's "Clip skip": 1 reads CLIP's last layer, 2 the one before (`encode_ids`). Left out
    # of repr, and so of the identity of keys that keep the default (see its identity).
    clip_skip: int = field(default=1, repr=False)
    # (annotator, strength) of each ControlNet after the first (`zvstudio.diffusion.control`);
    # out of repr for the same reason as `clip_skip`.
    more_controls: MoreControls = field(default=(), repr=False)
    # Where the ControlNets guide, as fractions of the steps run (`control_active`); out of
    # repr for the same reason as `clip_skip`.
    control_steps: tuple[float, float] = field(default=ALL_STEPS, repr=False)
    # A reference image every key takes its look from through an IP-Adapter, and how strongly
    # (`zvstudio.diffusion.ip_adapter`); out of repr, its identity names the image's content.
    reference_image: str = field(default="", repr=False)
    reference_scale: float = field(default=DEFAULT_REFERENCE_SCALE, repr=False)

    def __post_init__(self) -> None:
        if self.key_size < 0:
            raise ZvsError(f"the key size must be 0 (the frame's) or more, got {self.key_size}")
        check_clip_skip(self.clip_skip)
        check_more_controls(self.more_controls)
        check_control_steps(self.control_steps)
        check_reference_scale(self.reference_scale)
        if self.pixel_fusion_mode not in PIXEL_FUSION_MODES:
            raise ZvsError(
                f"unknown pixel fusion mode {self.pixel_fusion_mode!r}",
                hint=f"choose {' or '.join(PIXEL_FUSION_MODES)}",
            )


# What to change when the GPU runs out of memory, by what ran out.
KEYS_MEMORY_HINT = (
    "lower the key size (Key size in the inspector, --key-size), turn on offload (Settings, "
    "--offload model), close other GPU programs, or use --device cpu"
)
CLIP_MEMORY_HINT = (
    "make fewer or smaller frames (--frames, --width, --height), turn on offload (Settings, "
    "--offload model), close other GPU programs, or use --device cpu"
)


def out_of_memory_error(hint: str = KEYS_MEMORY_HINT) -> ZvsError:
    """What to tell the user when the GPU runs out of memory (the app keeps running)."""
    return ZvsError("the GPU ran out of memory", hint=hint, code="out_of_memory")


def seeded_noise(like: torch.Tensor, seed: int) -> torch.Tensor:
    """The same noise for every key of a render (METHOD 1.1): drawn on the CPU from `seed`."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(like.shape, generator=generator).to(like)


def encode_prompts(
    components: Components, prompts: Sequence[str], clip_skip: int = 1
) -> torch.Tensor:
    """CLIP text embeddings of `prompts` (one row each), in the UNet's dtype; a word that
    names a loaded textual inversion stands for its vectors, and weights, BREAK and long
    prompts read as AUTOMATIC1111 reads them (`zvstudio.diffusion.prompts`), as does
    `clip_skip` (`encode_ids`)."""
    tokenizer, encoder = components.tokenizer, components.text_encoder
    expanded = [expand_prompt(prompt, components.embeddings) for prompt in prompts]
    if any(uses_syntax(prompt) for prompt in expanded):  # weights, BREAK or a long prompt
        weighted = encode_weighted(tokenizer, encoder, expanded, components.device, clip_skip)
        return weighted.to(components.unet.dtype)
    tokens = tokenizer(
        expanded,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    hidden = encode_ids(encoder, tokens.input_ids.to(components.device), clip_skip)
    return hidden.to(components.unet.dtype)


def encode_prompts_per_step(
    components: Components, prompts: Sequence[str], steps: int, clip_skip: int = 1
) -> list[torch.Tensor]:
    """`encode_prompts` for each of `steps` sampling steps, the prompts as A1111's prompt
    editing changes them (`zvstudio.diffusion.prompt_editing`); each distinct set of prompts
    is encoded once, so a prompt without editing is encoded once for all steps."""
    per_step = list(zip(*(prompts_per_step(prompt, steps) for prompt in prompts), strict=True))
    encoded: dict[tuple[str, ...], torch.Tensor] = {}
    for step_prompts in per_step:
        if step_prompts not in encoded:
            encoded[step_prompts] = encode_prompts(components, step_prompts, clip_skip)
    return [encoded[step_prompts] for step_prompts in per_step]


def guided_noise(
    unet: Any,
    latents: torch.Tensor,
    t: Any,
    embeddings: torch.Tensor,
    guidance_scale: float,
    controlnet: Any = None,
    condition: torch.Tensor | Sequence[torch.Tensor] | None = None,
    controlnet_scale: float | Sequence[float] = 1.0,
    image_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Classifier-free guided ε (float32) from one call on the batch [latents, latents]
    (negative, then positive); `embeddings`, the ControlNet `condition` and an IP-Adapter's
    `image_embeds` are laid out for that batch. `controlnet` is one ControlNet or a
    `ControlStack`'s model, which takes a condition and a scale for each of its ControlNets."""
    batch = torch.cat([latents, latents])
    extra: dict[str, Any] = {}
    if condition is not None:
        down, mid = controlnet(
            batch,
            t,
            encoder_hidden_states=embeddings,
            controlnet_cond=condition,
            conditioning_scale=controlnet_scale,
            return_dict=False,
        )
        extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    if image_embeds is not None:
        extra["added_cond_kwargs"] = {"image_embeds": [image_embeds]}
    output = unet(batch, t, encoder_hidden_states=embeddings, **extra).sample
    negative, positive = output.float().chunk(2)
    return negative + guidance_scale * (positive - negative)


def next_alpha(scheduler, timesteps: torch.Tensor, index: int) -> torch.Tensor:
    """ᾱ of the step after `index` in `timesteps` (the schedule's final ᾱ after the last)."""
    if index + 1 < len(timesteps):
        return scheduler.alphas_cumprod[int(timesteps[index + 1])]
    return scheduler.final_alpha_cumprod


def ddim_update(x0: torch.Tensor, epsilon: torch.Tensor, alpha_prev: torch.Tensor) -> torch.Tensor:
    """x_{t-1} = sqrt(ᾱ_prev) x̂0 + sqrt(1 - ᾱ_prev) ε (DDIM, eta 0), for an adjusted x̂0."""
    # Only the dtype: a 0-dim CPU ᾱ (the schedule's final one) works beside GPU tensors
    # without a copy to the GPU, which would wait for its queued work.
    alpha_prev = alpha_prev.to(dtype=x0.dtype)
    return alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * epsilon


class FramePairs:
    """Flows from one key's frame to its reference frames (and whether each is valid), each
    computed once, in a background thread: OpenCV releases the GIL, so they overlap the
    first UNet calls instead of adding to them."""

    def __init__(self, flow: DISFlow, executor: ThreadPoolExecutor, frame: np.ndarray) -> None:
        self._flow, self._executor, self._frame = flow, executor, frame
        self._pending: dict[bytes, Future] = {}

    def request(self, source: np.ndarray) -> Future:
        key = hashlib.blake2b(source.tobytes(), digest_size=16).digest()
        if key not in self._pending:
            self._pending[key] = self._executor.submit(self._compute, source)
        return self._pending[key]

    def get(self, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flow from the frame to `source`, boolean mask where it is valid)."""
        return self.request(source).result()

    def _compute(self, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        to_source, back = self._flow.compute_pair(self._frame, source)
        return to_source, consistency_mask(to_source, back)


@dataclass
class _PixelGuide:
    """Pixel-aware fusion for one key: where it acts, what it composites, and (once built)
    the composite's E* latent and the mask where a warped reference covers the frame."""

    steps: set[int]
    references: list[tuple[np.ndarray, np.ndarray]]  # (source, render), padded, by priority
    latent: torch.Tensor | None = None
    valid: torch.Tensor | None = None


@dataclass
class _Run:
    """What one key's sampling passes share."""

    frame: np.ndarray
    scheduler: object
    timesteps: torch.Tensor
    embeddings: list[torch.Tensor]  # one per step (prompt editing may change them)
    condition: list[torch.Tensor] | None  # one image per ControlNet
    is_anchor: bool
    pairs: FramePairs
    anchor_frame: np.ndarray | None = None  # for shape-aware fusion
    seed: int = 0
    # The timesteps on the models' device: a CPU `t` passed to the UNet is copied to the GPU
    # on every call, which stalls the CPU until the GPU's queued work is done.
    model_timesteps: torch.Tensor | None = None
    _noise: torch.Tensor | None = None

    def noise_like(self, latents: torch.Tensor) -> torch.Tensor:
        """The key's seeded noise, drawn once (on the CPU, in float32, so that every precision
        and device gets the same), in the latents' dtype: float32 noise would turn fused
        fp16/bf16 latents to float32."""
        if self._noise is None or self._noise.shape != latents.shape:
            self._noise = seeded_noise(latents.float(), self.seed)
        return self._noise.to(latents)


def canny_condition(frame: np.ndarray, thresholds: tuple[int, int]) -> np.ndarray:
    """The ControlNet canny conditioning image: edges as white on black, RGB float [0, 1]."""
    return control_condition(frame, "canny", thresholds)


def latent_preview(x0: torch.Tensor) -> np.ndarray:
    """A cheap RGB preview of predicted latents (no VAE): uint8, at latent size."""
    rgb = torch.einsum("chw,cr->hwr", x0[0].float().cpu(), _LATENT_RGB)
    return ((rgb + 1) * 127.5).clamp(0, 255).byte().numpy()


def resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` at (height, width): area-averaged when smaller, Lanczos when larger."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    shrink = height < image.shape[0]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4
    return cv2.resize(image, (width, height), interpolation=interpolation)


def pad_to_multiple(frame: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad to a multiple of `multiple` (never distort the aspect ratio by resizing)."""
    height, width = frame.shape[:2]
    pad_h, pad_w = -height % multiple, -width % multiple
    padded = cv2.copyMakeBorder(frame, 0, pad_h, 0, pad_w, cv2.BORDER_REFLECT_101)
    return padded, (height, width)


class KeyFrameSampler:
    """Renders key frames in order; the first becomes the anchor of the ones that follow."""

    def __init__(
        self, components: Components, settings: KeySettings, controlnets: Sequence[Any] = ()
    ) -> None:
        self.components = components
        self.settings = settings
        self.controls = ControlStack(controlnets, settings)
        self.store = ReferenceStore()
        self._installed = None
        if settings.cross_frame_layers != "off":
            self._installed = install_cross_frame_attention(
                components.unet, self.store, settings.cross_frame_layers
            )
        self._anchor_x0: dict[int, torch.Tensor] = {}
        self._anchor_frame: np.ndarray | None = None
        self._anchor_render: np.ndarray | None = None  # for colour correction
        self._flow = DISFlow("medium")
        self._flow_thread: ThreadPoolExecutor | None = None  # made on first use
        unet = components.unet
        self.device, self.dtype = components.device, unet.dtype
        vae_blocks = len(components.vae.config.block_out_channels)
        self.vae_scale = 2 ** (vae_blocks - 1)  # 8 for SD1.x
        self.multiple = self.vae_scale * 2 ** (len(unet.config.block_out_channels) - 1)
        self._image_embeds: torch.Tensor | None = None  # this key's reference, when one is

    def close(self) -> None:
        """Put the UNet's original attention processors back."""
        if self._flow_thread is not None:
            self._flow_thread.shutdown(wait=False, cancel_futures=True)
            self._flow_thread = None
        if self._installed is not None:
            self._installed.restore()
            self._installed = None

    # -- one key ---------------------------------------------------------------------------
    @torch.no_grad()
    def render(
        self,
        frame: np.ndarray,
        is_anchor: bool,
        prompt: str | None = None,
        progress: ProgressCallback = ignore_progress,
        cancel: CancelToken | None = None,
        preview: PreviewCallback | None = None,
        references: Sequence[tuple[np.ndarray, np.ndarray]] = (),
        shape_fusion: bool = True,
    ) -> np.ndarray:
        """Render `frame` (RGB uint8). `is_anchor` starts a new sequence of keys.

        `references` are (source frame, rendered key) pairs for pixel-aware fusion, in
        priority order (the anchor first, then the previous key). `shape_fusion=False` skips
        shape-aware fusion with the anchor (in another shot: no flow leads to it).
        """
        settings = self.settings
        self._check_reference()
        full_size = frame.shape[:2]
        size = working_size(*full_size, settings.key_size)
        frame = resized(frame, size)
        references = [(resized(source, size), resized(key, size)) for source, key in references]
        padded, (height, width) = pad_to_multiple(frame, self.multiple)
        scheduler = self.components.make_scheduler()
        scheduler.set_timesteps(settings.steps)
        start = settings.steps - round(settings.steps * settings.strength)
        timesteps = scheduler.timesteps[start:]
        if len(timesteps) == 0:
            raise ZvsError(f"strength {settings.strength} leaves no sampling steps")
        run = _Run(
            padded,
            scheduler,
            timesteps,
            self._encode_prompts(prompt if prompt is not None else settings.prompt, len(timesteps)),
            self._control_images(padded),
            is_anchor,
            FramePairs(self._flow, self._flow_executor(), padded),
            seed=settings.seed,
            model_timesteps=timesteps.to(self.device),
        )
        guide = self._pixel_guide(run, references)
        self._request_flows(run, guide, shape_fusion)
        self._begin_key(is_anchor)
        start = self._sdedit_input(padded, is_anchor, references)
        latents = self._sdedit_start(start, scheduler, timesteps[0])
        callbacks = (progress, cancel, preview)
        if guide is None or settings.pixel_fusion_mode == "single_pass":
            final, _ = self._denoise(run, latents, 0, guide, *callbacks)
        else:
            final = self._two_passes(run, latents, guide, *callbacks)
        if self._installed is not None:
            self.store.promote()
        image = self._to_image(final)[:height, :width]
        if is_anchor:
            self._anchor_render = image
        return resized(image, full_size)

    def _check_reference(self) -> None:
        """Take the embeddings of the reference image the settings name (embedded at loading)
        and set its strength on the IP-Adapter's processors; a key without one, when others
        have one, gets strength 0: the adapter then changes nothing."""
        wanted, loaded = self.settings.reference_image, self.components.reference
        if loaded is None:
            if wanted:
                raise ZvsError(
                    f"the models were loaded without an IP-Adapter, so reference image "
                    f"{wanted!r} cannot be used: load them again with it"
                )
            return
        self._image_embeds = loaded.embeds_for(wanted).to(self.device)
        scale = self.settings.reference_scale if wanted else 0.0
        set_reference_scale(self.components.unet, scale)

    def _flow_executor(self) -> ThreadPoolExecutor:
        if self._flow_thread is None:
            self._flow_thread = ThreadPoolExecutor(1, thread_name_prefix="zvstudio-key-flow")
        return self._flow_thread

    def _sdedit_input(self, frame: np.ndarray, is_anchor: bool, references) -> np.ndarray:
        """The frame SDEdit starts from: with colour correction, a later key's colours are
        matched to the anchor's render (the first reference's, else the one this sampler
        made); its edges and flows still come from the frame itself."""
        anchor_render = references[0][1] if references else self._anchor_render
        if is_anchor or not self.settings.colour_correction or anchor_render is None:
            return frame
        return match_colours_lab(frame, anchor_render)

    def _two_passes(self, run, latents, guide, progress, cancel, preview) -> torch.Tensor:
        """Pass one without pixel fusion gives the rough render; pass two fuses."""
        first_fused = min(guide.steps)
        rough, kept = self._denoise(
            run, latents, 0, None, progress, cancel, preview, keep_at=first_fused
        )
        guide.latent, guide.valid = self._composite(run, rough, guide.references)
        if self.settings.resume_second_pass:
            latents, resume_at = kept, first_fused
        else:
            resume_at = 0
        final, _ = self._denoise(run, latents, resume_at, guide, progress, cancel, preview)
        return final

    def _denoise(self, run, latents, first_index, guide, progress, cancel, preview, keep_at=None):
        """DDIM from step `first_index` to the end; returns (final latent, the latent before
        step `keep_at`). With a `guide`, pixel fusion acts at its steps; a guide without a
        composite yet (single pass) builds it from x̂0 at its first step."""
        kept = latents if keep_at == first_index else None
        total = len(run.timesteps)
        for index in range(first_index, total):
            if cancel is not None:
                cancel.raise_if_cancelled()
            t = run.timesteps[index]
            self.store.begin_step(index)
            model_t = run.model_timesteps[index]
            embeddings = run.embeddings[index]
            guided = control_active(self.settings.control_steps, index, total)
            condition = run.condition if guided else None
            epsilon = self._predict_noise(latents, model_t, embeddings, condition)
            alpha = run.scheduler.alphas_cumprod[int(t)].to(latents)
            x0 = (latents - (1 - alpha).sqrt() * epsilon) / alpha.sqrt()
            x0 = self._constrain(x0, index, int(t), run)
            latents = self._ddim_step(run.scheduler, t, x0, epsilon, index, run.timesteps)
            if guide is not None and index in guide.steps:
                if guide.latent is None:
                    guide.latent, guide.valid = self._composite(run, x0, guide.references)
                latents = self._fuse_pixels(latents, guide, index, run, epsilon)
            if index + 1 == keep_at:
                kept = latents.clone()
            progress(Progress("key", index + 1, total))
            if preview is not None:
                preview(latent_preview(x0))
        return latents, kept

    def _pixel_guide(self, run, references) -> _PixelGuide | None:
        """The key's pixel fusion (None for the anchor, without references or steps)."""
        if run.is_anchor or not references:
            return None
        t_max = run.scheduler.config.num_train_timesteps
        steps = {
            i
            for i, t in enumerate(run.timesteps)
            if "pixel_fusion" in self.settings.schedule.active(int(t), t_max)
        }
        if not steps:
            return None
        padded = [
            (pad_to_multiple(source, self.multiple)[0], pad_to_multiple(render, self.multiple)[0])
            for source, render in references
        ]
        return _PixelGuide(steps, padded)

    def _request_flows(self, run, guide, shape_fusion: bool = True) -> None:
        """Start the flows this key will need: to the anchor frame when shape-aware fusion
        acts (setting `run.anchor_frame`), to each reference frame when pixel-aware fusion
        does."""
        if run.is_anchor:
            return
        t_max = run.scheduler.config.num_train_timesteps
        shape = shape_fusion and any(
            "shape_fusion" in self.settings.schedule.active(int(t), t_max) for t in run.timesteps
        )
        if shape and self._anchor_frame is not None:
            run.anchor_frame = self._anchor_frame
            run.pairs.request(run.anchor_frame)
        for source, _ in guide.references if guide is not None else ():
            run.pairs.request(source)

    def _composite(self, run, rough_latent, references):
        """The warped reference renders over the rough render where their flow is valid
        (earlier references win), encoded with E*; and the union of valid regions."""
        composite = np.zeros((*run.frame.shape[:2], 3), np.float32)
        covered = np.zeros(run.frame.shape[:2], bool)
        for source, rendered in reversed(references):  # the first reference ends on top
            to_reference, valid = run.pairs.get(source)
            composite[valid] = warp(rendered, to_reference)[valid]
            covered |= valid
        if not covered.all():  # decoding the rough render costs as much as a few UNet steps
            composite[~covered] = self._to_image(rough_latent)[~covered]
        image = torch.from_numpy(composite).permute(2, 0, 1)[None] / 127.5 - 1
        latent = fidelity_encode(self.components.vae, image.to(self.device))
        # At latent size on the device once, not on the CPU at every fused step.
        valid = downsample_mask(covered, tuple(latent.shape[-2:])).to(latent.device)
        return latent, valid

    def _fuse_pixels(self, latents, guide, index, run, epsilon) -> torch.Tensor:
        """Pull x_{t-1} towards the composite noised to the same level, inside the mask."""
        settings = self.settings
        alpha_prev = next_alpha(run.scheduler, run.timesteps, index)
        noised = q_sample(guide.latent.to(latents), run.noise_like(latents), alpha_prev)
        if settings.pixel_fusion_detail == 0:  # the soft form's limit, computed exactly
            return pixel_aware_fusion(latents, noised, guide.valid, settings.pixel_fusion_weight)
        direction = (1 - alpha_prev.to(latents)).sqrt() * epsilon.to(latents)
        return pixel_aware_fusion_soft(
            latents,
            direction,
            noised,
            guide.valid,
            settings.pixel_fusion_weight,
            settings.pixel_fusion_detail,
        )

    def _to_image(self, latents: torch.Tensor) -> np.ndarray:
        return rgb_frames(decode(self.components.vae, latents))[0]

    def _begin_key(self, is_anchor: bool) -> None:
        if is_anchor:
            self.store.clear()
            self._anchor_x0 = {}
            self.store.set_mode("store")
        else:
            if self._installed is not None and not self.store.has("anchor"):
                raise ZvsError("render the anchor key before the keys that refer to it")
            self.store.set_mode("use", record=True)

    def _encode_prompts(self, prompt: str, steps: int) -> list[torch.Tensor]:
        prompts = [self.settings.negative_prompt, prompt]
        return encode_prompts_per_step(self.components, prompts, steps, self.settings.clip_skip)

    def _control_images(self, frame: np.ndarray) -> list[torch.Tensor] | None:
        """Each ControlNet's image of `frame`, for the [negative, positive] batch."""
        if not self.controls:
            return None
        images = self.controls.frame_conditions(
            frame, self.vae_scale, self.settings.canny_thresholds, self.device
        )
        return [image.repeat(2, 1, 1, 1) for image in images]

    def _sdedit_start(self, frame: np.ndarray, scheduler, t) -> torch.Tensor:
        image = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 127.5 - 1
        clean = encode_mean(self.components.vae, image.to(self.device))
        noise = seeded_noise(clean, self.settings.seed)
        return scheduler.add_noise(clean, noise, t.reshape(1)).to(self.dtype)

    def _predict_noise(self, latents, t, embeddings, condition) -> torch.Tensor:
        settings = self.settings
        return guided_noise(
            self.components.unet,
            latents,
            t,
            embeddings,
            settings.guidance_scale,
            self.controls.model,
            condition,
            self.controls.scales,
            self._image_embeds,
        )

    def _constrain(self, x0, index, t, run) -> torch.Tensor:
        active = self.settings.schedule.active(t, run.scheduler.config.num_train_timesteps)
        if run.is_anchor:
            self._anchor_x0[index] = x0.detach().clone()
            return x0
        reference = self._anchor_x0.get(index)
        if reference is None:
            return x0
        if "shape_fusion" in active and run.anchor_frame is not None:
            to_anchor, valid = run.pairs.get(run.anchor_frame)
            x0 = shape_aware_fusion(x0, reference, to_anchor, valid)  # H x W arrays
        if "adain" in active:
            x0 = adain(x0, reference)
        return x0

    def _ddim_step(self, scheduler, t, x0, epsilon, index, timesteps) -> torch.Tensor:
        alpha_prev = next_alpha(scheduler, timesteps, index)
        return ddim_update(x0, epsilon, alpha_prev).to(self.dtype)

    def set_anchor_frame(self, frame: np.ndarray) -> None:
        size = working_size(*frame.shape[:2], self.settings.key_size)
        self._anchor_frame, _ = pad_to_multiple(resized(frame, size), self.multiple)


# Each per-key override (`KeyParams`) and the setting it replaces.
OVERRIDDEN_SETTINGS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "seed": "seed",
    "strength": "strength",
    "reference_image": "reference_image",
    "reference_strength": "reference_scale",
}


def settings_with_overrides(settings: KeySettings, params: KeyParams | None) -> KeySettings:
    """The global settings with one key's overrides (prompt, negative, seed, strength,
    reference image and its strength)."""
    overrides = {
        setting: value
        for name, setting in OVERRIDDEN_SETTINGS.items()
        if params is not None and (value := getattr(params, name)) is not None
    }
    return replace(settings, **overrides)


def diffusion_key_identity(
    model_key: str,
    dtype: object,
    settings: KeySettings,
    params: KeyParams | None = None,
    allow_pickle: bool = False,
    reference_models: str = "",
) -> str:
    """A diffusion key's cache identity (besides frame and references). The precision is part
    of it: a float16 key is not a float32 key; so are the embeddings its prompts use, and the
    IP-Adapter and encoder (`reference_models`) of a key with a reference image."""
    effective = settings_with_overrides(settings, params)
    identity = f"diffusion:v1:{model_key}:{dtype}:{effective!r}"
    if settings.annotator != "canny":  # a plugin annotator's images depend on its version
        identity += f":{annotator_identity(settings.annotator)}"
    prompts = (effective.prompt, effective.negative_prompt)
    if any(uses_syntax(prompt) for prompt in prompts):  # read otherwise than before
        identity += f":{SYNTAX_VERSION}"
    if any(uses_editing(prompt) for prompt in prompts):
        identity += f":{EDITING_VERSION}"
    if settings.clip_skip != 1:
        identity += f":clip skip {settings.clip_skip}"
    if settings.more_controls:
        versions = [annotator_identity(a) for a, _ in settings.more_controls if a != "canny"]
        identity += f":more controls {list(settings.more_controls)} {versions}"
    if settings.control_steps != ALL_STEPS:
        identity += f":control steps {settings.control_steps}"
    if effective.reference_image:
        reference = reference_identity(effective.reference_image, effective.reference_scale)
        identity += f":{reference} {reference_models}"
    embeddings = embeddings_identity(prompts, allow_pickle)
    return f"{identity}:embeddings {embeddings}" if embeddings else identity


class DiffusionKeyRenderer(KeyRenderer):
    """The `KeyRenderer` face of the sampler, used by the engine like any stylizer."""

    name = "diffusion"
    needs_weights = True
    uses_references = True

    def __init__(
        self,
        sampler: KeyFrameSampler,
        model_key: str,
        allow_pickle: bool = False,
        reference_models: str = "",
    ) -> None:
        self.sampler = sampler
        self.model_key = model_key
        self.allow_pickle = allow_pickle  # which embeddings loaded: see `diffusion.embeddings`
        self.reference_models = reference_models  # see `diffusion_key_identity`

    def settings_key(self) -> str:
        return self.key_identity(-1)

    def key_identity(self, frame_index: int, params: KeyParams | None = None) -> str:
        sampler = self.sampler
        return diffusion_key_identity(
            self.model_key,
            sampler.dtype,
            sampler.settings,
            params,
            self.allow_pickle,
            self.reference_models,
        )

    def _settings_for(self, params: KeyParams | None) -> KeySettings:
        return settings_with_overrides(self.sampler.settings, params)

    def render(self, frame, context: KeyContext, progress=ignore_progress, cancel=None):
        global_settings = self.sampler.settings
        self.sampler.settings = self._settings_for(context.params)
        try:
            return self._render(frame, context, progress, cancel)
        finally:
            self.sampler.settings = global_settings

    def _render(self, frame, context: KeyContext, progress, cancel):
        is_anchor = context.anchor is None
        if is_anchor:
            self.sampler.set_anchor_frame(frame)
        # The flow-based constraints (pixel- and shape-aware fusion) take references from the
        # key's own shot only: across a cut no flow leads back, and the few pixels that pass
        # the consistency check by chance (flat regions) would paste another shot in.
        # Cross-frame attention and AdaIN still follow every reference: they carry the style.
        keys = [context.anchor]
        if context.previous is not context.anchor:
            keys.append(context.previous)
        references = [
            (key.source, key.result) for key in keys if key is not None and context.in_shot(key)
        ]
        anchor_in_shot = context.anchor is not None and context.in_shot(context.anchor)
        try:
            return self.sampler.render(
                frame,
                is_anchor,
                None,
                progress,
                cancel,
                references=references,
                shape_fusion=is_anchor or anchor_in_shot,
            )
        except torch.cuda.OutOfMemoryError as exc:
            raise out_of_memory_error() from exc
