"""The DynamiCrafter presets: the released models' architecture and sampling numbers.

Numbers come from the released inference configs (`configs/inference_{256,512,1024}_v1.0.yaml`,
the interpolation model's `configs/training_512_v1.0/config_interp.yaml`) and the run scripts
(`scripts/run.sh`, `scripts/run_application.sh`) of Doubiiu/DynamiCrafter. All four share one
architecture; they differ in the schedule, the motion conditioning and the image-context scale:

* 256: epsilon prediction, the plain SD schedule with "uniform" DDIM steps, frame-stride
  conditioning (default 3, larger means more motion), a learnable image cross-attention scale.
* 512 / 1024 / 512 interpolation: v-prediction on a zero-terminal-SNR schedule with "trailing"
  DDIM steps and guidance rescale 0.7, frame-rate conditioning (smaller means more motion), a
  fixed image cross-attention scale of 1, and dynamic latent rescaling during sampling.

`tiny()` keeps the structure at a few hundred kilobytes for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

__all__ = [
    "PRESETS",
    "DynamiCrafterConfig",
    "ResamplerConfig",
    "ScheduleConfig",
    "TextTowerConfig",
    "UNetConfig",
    "VisionTowerConfig",
    "preset",
    "tiny",
]


@dataclass(frozen=True)
class UNetConfig:
    """The 3D UNet (`openaimodel3d.UNetModel` params in the released configs)."""

    in_channels: int = 8  # 4 noisy latent channels + 4 image latent channels
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # Downsampling factors with transformers; the deepest level (8) has none, the middle has.
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_head_channels: int = 64
    transformer_depth: int = 1
    context_dim: int = 1024
    use_linear: bool = True  # linear (not 1x1 conv) projections in and out of transformers
    temporal_conv: bool = True  # a temporal convolution block after every ResBlock
    temporal_attention: bool = True  # a temporal transformer after every spatial one
    temporal_length: int = 16
    # A temporal transformer right after the input convolution ("init_attn"); the released code
    # hard-codes its 8 heads of num_head_channels and its 1x1-conv projections.
    addition_attention: bool = True
    init_attn_heads: int = 8
    image_cross_attention: bool = True  # dual cross-attention: text tokens + image tokens
    image_cross_attention_scale: float = 1.0
    image_cross_attention_scale_learnable: bool = False  # scale * (tanh(alpha) + 1)
    fs_condition: bool = True  # frame-rate / frame-stride embedding added to the time embedding
    default_fs: int = 24
    text_tokens: int = 77  # where the image tokens start in the context sequence
    tokens_per_frame: int = 16  # image tokens each frame gets (the resampler's num_queries)
    norm_groups: int = 32
    dropout: float = 0.1  # training only; kept so the module graph matches


@dataclass(frozen=True)
class ResamplerConfig:
    """The query transformer from CLIP visual tokens to context tokens (`resampler.Resampler`).

    With `video_length` set, it learns num_queries queries per frame (num_queries *
    video_length in all, frame-major), so each frame gets its own image tokens.
    """

    dim: int = 1024
    depth: int = 4
    dim_head: int = 64
    heads: int = 12
    num_queries: int = 16
    embedding_dim: int = 1280  # CLIP ViT-H/14 width
    output_dim: int = 1024  # the UNet's context_dim
    ff_mult: int = 4
    video_length: int | None = 16

    @property
    def total_queries(self) -> int:
        return self.num_queries * (self.video_length or 1)


@dataclass(frozen=True)
class ScheduleConfig:
    """The training noise schedule and how the released scripts sample it."""

    timesteps: int = 1000
    linear_start: float = 0.00085  # the "linear" (scaled) beta schedule of Stable Diffusion
    linear_end: float = 0.012
    prediction: Literal["eps", "v"] = "v"
    zero_terminal_snr: bool = True
    spacing: Literal["uniform", "uniform_trailing"] = "uniform_trailing"
    guidance_rescale: float = 0.7
    # Dynamic rescale: training scaled x_0 by a factor going linearly from 1 to base_scale over
    # the first `turning_step` steps (then constant); sampling undoes it step by step. None: off.
    rescale_base: float | None = 0.7
    rescale_turning_step: int = 400


@dataclass(frozen=True)
class TextTowerConfig:
    """OpenCLIP ViT-H/14's text transformer (laion2b_s32b_b79k), read at its penultimate layer."""

    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_width: int = 4096
    vocab_size: int = 49408
    context_length: int = 77
    projection_dim: int = 1024


@dataclass(frozen=True)
class VisionTowerConfig:
    """OpenCLIP ViT-H/14's vision transformer; its last-layer tokens (before ln_post) are used."""

    width: int = 1280
    layers: int = 32
    heads: int = 16
    mlp_width: int = 5120
    patch_size: int = 14
    image_size: int = 224
    projection_dim: int = 1024

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1  # patches + the class token


@dataclass(frozen=True)
class DynamiCrafterConfig:
    """One released model: architecture, schedule and the sampling defaults of its scripts."""

    name: str
    unet: UNetConfig = field(default_factory=UNetConfig)
    resampler: ResamplerConfig = field(default_factory=ResamplerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    vision: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    height: int = 320
    width: int = 512
    frames: int = 16
    # What the motion number means: frames per second (smaller: more motion) or the stride
    # between training frames (larger: more motion). Both enter the UNet the same way.
    fs_kind: Literal["fps", "frame_stride"] = "fps"
    fs_range: tuple[int, int] = (15, 30)  # the range the authors recommend
    interpolation: bool = False  # trained for two key frames (interpolation and loops)
    steps: int = 50
    guidance_scale: float = 7.5
    eta: float = 1.0
    vae_scale_factor: float = 0.18215
    # The SD KL autoencoder (resources/sd15/vae); only tests change its size.
    vae_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    vae_layers_per_block: int = 2
    text_layer: Literal["penultimate"] = "penultimate"

    @property
    def default_fs(self) -> int:
        return self.unet.default_fs

    @property
    def vae_factor(self) -> int:
        """How much the VAE shrinks each side: 8 for the SD autoencoder (2 in tests)."""
        return 2 ** (len(self.vae_block_out_channels) - 1)

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.height // self.vae_factor, self.width // self.vae_factor


_SD_SCHEDULE = ScheduleConfig(
    prediction="eps",
    zero_terminal_snr=False,
    spacing="uniform",
    guidance_rescale=0.0,
    rescale_base=None,
)

PRESETS: dict[str, DynamiCrafterConfig] = {
    "256": DynamiCrafterConfig(
        name="256",
        unet=UNetConfig(default_fs=3, image_cross_attention_scale_learnable=True),
        schedule=_SD_SCHEDULE,
        height=256,
        width=256,
        fs_kind="frame_stride",
        fs_range=(1, 6),
    ),
    "512": DynamiCrafterConfig(name="512", unet=UNetConfig(default_fs=24)),
    "1024": DynamiCrafterConfig(
        name="1024",
        unet=UNetConfig(default_fs=10),
        schedule=ScheduleConfig(rescale_base=0.3),
        height=576,
        width=1024,
        fs_range=(5, 15),
    ),
    # The interpolation / loop model runs with the 512 inference config; its scripts use fps 5.
    "512_interp": DynamiCrafterConfig(
        name="512_interp",
        unet=UNetConfig(default_fs=5),
        fs_range=(5, 30),
        interpolation=True,
    ),
}


def preset(name: str) -> DynamiCrafterConfig:
    """A released model's config by name ("256", "512", "1024", "512_interp")."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"no DynamiCrafter preset {name!r}; known: {', '.join(PRESETS)}") from None


def tiny(name: str = "512", **unet_changes) -> DynamiCrafterConfig:
    """A structurally complete, tiny version of a preset for tests (CPU, milliseconds).

    Three UNet levels with attention at the first two only (like the released deepest level),
    32-channel groups kept (so widths are multiples of 32), 4 frames, 2 image tokens per frame.
    """
    base = preset(name)
    frames = 4
    unet = replace(
        base.unet,
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(1, 2),
        num_head_channels=16,
        context_dim=32,
        temporal_length=frames,
        init_attn_heads=2,
        text_tokens=5,
        tokens_per_frame=2,
        **unet_changes,
    )
    resampler = ResamplerConfig(
        dim=32,
        depth=2,
        dim_head=8,
        heads=2,
        num_queries=2,
        embedding_dim=48,
        output_dim=32,
        ff_mult=2,
        video_length=frames,
    )
    text = TextTowerConfig(
        width=32,
        layers=3,
        heads=2,
        mlp_width=64,
        vocab_size=64,
        context_length=5,
        projection_dim=16,
    )
    vision = VisionTowerConfig(
        width=48, layers=2, heads=2, mlp_width=96, patch_size=14, image_size=28, projection_dim=16
    )
    return replace(
        base,
        name=f"tiny-{base.name}",
        unet=unet,
        resampler=resampler,
        text=text,
        vision=vision,
        height=64,
        width=64,
        frames=frames,
        steps=5,
        vae_block_out_channels=(32, 64),
        vae_layers_per_block=1,
    )
