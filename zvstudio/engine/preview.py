"""`zvstudio preview`: render one key frame with a diffusion model, to try settings quickly."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zvstudio.errors import ZvsError
from zvstudio.media.writer import write_png
from zvstudio.progress import (
    CancelToken,
    LogCallback,
    ProgressCallback,
    ignore_log,
    ignore_progress,
)

if TYPE_CHECKING:  # torch and diffusers take seconds to import
    import torch

    from zvstudio.diffusion.sampler import KeyFrameSampler

logger = logging.getLogger(__name__)


def choose_device(requested: str = "auto") -> tuple[str, torch.dtype]:
    """(device, dtype) of the device plan, for callers that need only those (no offload)."""
    from zvstudio.engine.device import plan_device

    plan = plan_device(requested, offload="none")  # no memory floor: the caller only asks
    return plan.device, plan.torch_dtype


def load_controlnet(path: Path, device: str, dtype, allow_pickle: bool = False):
    """A ControlNet from a diffusers folder or a single file (local files only)."""
    from zvstudio.diffusion.controlnet import load_controlnet_model

    return load_controlnet_model(path, device, dtype, allow_pickle=allow_pickle)


@dataclass(frozen=True)
class ControlNetChoice:
    """A ControlNet picked by annotator type or path: its file, scale and annotator."""

    path: Path
    scale: float
    annotator: str
    note: str | None = None


def choose_controlnet(spec: str, default_scale: float | None = None) -> ControlNetChoice:
    """The ControlNet for `spec` ("canny:0.7", "softedge", "path/to/cn.safetensors:0.5"); one
    place for the CLI and projects, so both feed the same annotator to the same model.
    `default_scale` applies when the spec gives none (else the key renderer's default)."""
    from zvstudio.diffusion.controlnet import (
        DEFAULT_SCALE,
        controlnet_annotator,
        resolve_controlnet,
    )

    scale = DEFAULT_SCALE if default_scale is None else default_scale
    choice = resolve_controlnet(spec, default_scale=scale)
    return ControlNetChoice(choice.path, choice.scale, controlnet_annotator(spec), choice.note)


def control_fields(choices: Sequence[ControlNetChoice], default_scale: float) -> dict[str, Any]:
    """The settings fields (`annotator`, `controlnet_scale`, `more_controls`) of ControlNets
    chosen in this order (`zvstudio.diffusion.control`); `default_scale` when there are none."""
    first = choices[0] if choices else None
    return {
        "annotator": first.annotator if first else "canny",
        "controlnet_scale": first.scale if first else default_scale,
        "more_controls": tuple((choice.annotator, choice.scale) for choice in choices[1:]),
    }


@dataclass(frozen=True)
class DiffusionSpec:
    """The diffusion key renderer's model files and settings (one request's worth)."""

    model: Path
    settings: object  # zvstudio.diffusion.sampler.KeySettings
    loras: tuple = ()  # zvstudio.diffusion.lora.LoraSpec
    # ControlNet files or folders, paired in order with the settings' annotators and strengths
    # (`zvstudio.diffusion.control.control_units`)
    controlnets: tuple[Path, ...] = ()
    device: str = "auto"
    allow_pickle: bool = False
    config_dir: Path | None = None
    precision: str = "auto"  # "float16", "bfloat16" or "float32"; see engine.device
    memory_limit_gb: float | None = None  # the most GPU memory the render may count on
    offload: str = "auto"  # "none", "model" or "sequential"
    unet_inputs: tuple[int, ...] = (4,)  # UNet input channels the caller can use (8: pix2pix)
    vae: Path | None = None  # a VAE file or folder used instead of the model's own
    # The IP-Adapter and CLIP vision encoder of the settings' reference image (None: found in
    # the model library when the reference is set; `with_reference_models`).
    ip_adapter: Path | None = None
    image_encoder: Path | None = None
    # Reference images single keys have of their own (`KeyParams.reference_image`), embedded
    # with the settings' one when the models load.
    key_references: tuple[str, ...] = ()


def reference_images(spec: DiffusionSpec) -> list[str]:
    """Every reference image `spec`'s keys use (the settings' first), each once."""
    images = [getattr(spec.settings, "reference_image", ""), *spec.key_references]
    return list(dict.fromkeys(image for image in images if image))


def with_reference_models(spec: DiffusionSpec) -> DiffusionSpec:
    """`spec` with its IP-Adapter and image encoder found, when its keys use a reference image
    (`reference_images`) and it names none (`ip_adapter.resolve_reference_models`)."""
    if not reference_images(spec):
        return spec
    if spec.ip_adapter is not None and spec.image_encoder is not None:
        return spec
    from zvstudio.diffusion.ip_adapter import resolve_reference_models

    adapter, encoder = resolve_reference_models(spec.ip_adapter, spec.image_encoder)
    return replace(spec, ip_adapter=adapter, image_encoder=encoder)


def build_sampler(spec: DiffusionSpec, log: LogCallback = ignore_log) -> KeyFrameSampler:
    """Plan the device, load the model, its LoRAs and ControlNets, and make a key sampler."""
    from zvstudio.diffusion.sampler import KeyFrameSampler

    components, controlnets = load_diffusion_models(spec, log)
    return KeyFrameSampler(components, spec.settings, controlnets)


def device_plan(spec: DiffusionSpec):
    """Where and in what precision `spec`'s models run (`zvstudio.engine.device`)."""
    from zvstudio.engine.device import plan_device

    controlnets = len(spec.controlnets)
    return plan_device(
        spec.device, spec.precision, spec.memory_limit_gb, spec.offload, controlnets=controlnets
    )


def load_diffusion_models(spec: DiffusionSpec, log: LogCallback = ignore_log) -> tuple:
    """(components, [ControlNet, ...]) for `spec`: the device planned, LoRAs applied, offload
    hooks installed. Shared by the key renderer and the generators."""
    from zvstudio.engine.device import apply_offload

    plan = device_plan(spec)
    logger.info("diffusion device: %s", plan.reason)
    log(f"diffusion device: {plan.reason}")
    # Offloaded weights are kept in system RAM and moved to the GPU by the offload hooks.
    components, controlnets = _load_models(
        spec, plan.device if plan.offload == "none" else "cpu", plan.torch_dtype, log
    )
    apply_offload(components, plan, controlnets)
    return components, controlnets


def _load_models(spec: DiffusionSpec, device: str, dtype: torch.dtype, log: LogCallback) -> tuple:
    """(components with the LoRAs and embeddings applied, [ControlNet, ...]), on `device`."""
    from zvstudio.diffusion.embeddings import apply_embeddings, loadable_embeddings
    from zvstudio.diffusion.loading import load_sd15_components
    from zvstudio.diffusion.lora import apply_loras

    components = load_sd15_components(
        spec.model,
        dtype=dtype,
        device=device,
        allow_pickle=spec.allow_pickle,
        config_dir=spec.config_dir,
        unet_inputs=spec.unet_inputs,
        vae=spec.vae,
    )
    apply_loras(components, list(spec.loras))  # before any offload hooks, which then cover them
    apply_embeddings(components, loadable_embeddings(spec.allow_pickle), spec.allow_pickle, log)
    if reference_images(spec):
        _apply_reference(components, with_reference_models(spec), log)
    controlnets = [
        load_controlnet(path, device, dtype, spec.allow_pickle) for path in spec.controlnets
    ]
    return components, controlnets


def _apply_reference(components, spec: DiffusionSpec, log: LogCallback) -> None:
    """Install the IP-Adapter in the UNet and embed the reference images into `components`."""
    from zvstudio.diffusion.ip_adapter import (
        ReferenceEmbeds,
        adapter_layout,
        check_encoder_fits,
        install_ip_adapter,
        load_image_encoder,
        read_ip_adapter,
        reference_embeddings,
        set_reference_scale,
    )
    from zvstudio.media.image import read_image

    paths = reference_images(spec)
    images = [read_image(Path(path)) for path in paths]  # first: the cheapest to get wrong
    adapter = read_ip_adapter(spec.ip_adapter, spec.allow_pickle)
    install_ip_adapter(components.unet, adapter, spec.ip_adapter.name)
    names = ", ".join(Path(path).name for path in paths)
    log(f"reference image{'s' * (len(paths) > 1)} {names} through {spec.ip_adapter.name}")
    encoder = load_image_encoder(spec.image_encoder, spec.allow_pickle)
    layout = adapter_layout(adapter)
    check_encoder_fits(encoder, layout, adapter, spec.image_encoder.name, spec.ip_adapter.name)
    unet = components.unet
    embeds = {
        path: reference_embeddings(encoder, image, layout, unet.device, unet.dtype)
        for path, image in zip(paths, images, strict=True)
    }
    # Used once: its memory goes back before sampling, whose working memory is larger than
    # the encoder's weights, so the memory plan needs no room for it.
    del encoder
    components.reference = ReferenceEmbeds(embeds)
    set_reference_scale(unet, spec.settings.reference_scale)


def create_diffusion_renderer(spec: DiffusionSpec, log: LogCallback = ignore_log):
    """The diffusion `KeyRenderer` for the engine; its cache key names the model files."""
    from zvstudio.diffusion.sampler import DiffusionKeyRenderer

    sampler = build_sampler(spec, log)  # first: it checks the files and says what is wrong
    return DiffusionKeyRenderer(
        sampler, diffusion_model_key(spec), spec.allow_pickle, reference_models_key(spec)
    )


def diffusion_model_key(spec: DiffusionSpec) -> str:
    """The content identity of a spec's model files (checkpoint, LoRAs with weights,
    ControlNets, and the VAE when it is not the model's own)."""
    first, *more = spec.controlnets or ("",)
    files = [
        model_content_id(spec.model),
        *(f"{model_content_id(lora.path)}:{lora.weight}" for lora in spec.loras),
        model_content_id(first) if first else "",
    ]
    # Appended, so keys rendered with one ControlNet and the model's own VAE stay valid.
    files += [f"controlnet={model_content_id(path)}" for path in more]
    if spec.vae is not None:
        files.append(f"vae={model_content_id(spec.vae)}")
    return "|".join(files)


def reference_models_key(spec: DiffusionSpec) -> str:
    """The content identity of the IP-Adapter and image encoder, when `spec`'s keys use a
    reference: part of the identity of the keys that do only, so a key given a reference of
    its own leaves the others' renders valid (the adapter changes nothing at strength 0)."""
    if not reference_images(spec):
        return ""
    spec = with_reference_models(spec)
    adapter, encoder = model_content_id(spec.ip_adapter), model_content_id(spec.image_encoder)
    return f"ip_adapter={adapter}|image_encoder={encoder}"


class DiffusionIdentities:
    """The cache identities a diffusion renderer of `spec` would give its keys, without loading
    any model (for showing which keys are rendered or stale)."""

    uses_references = True

    def __init__(self, spec: DiffusionSpec) -> None:
        plan = device_plan(spec)
        self.spec, self.dtype, self.model_key = spec, plan.torch_dtype, diffusion_model_key(spec)
        self.reference_models = reference_models_key(spec)

    def key_identity(self, frame_index: int, params=None) -> str:
        from zvstudio.diffusion.sampler import diffusion_key_identity

        spec = self.spec
        return diffusion_key_identity(
            self.model_key,
            self.dtype,
            spec.settings,
            params,
            spec.allow_pickle,
            self.reference_models,
        )


def model_content_id(path: Path) -> str:
    """A model file's or diffusers folder's content hash: cached keys must change when a model
    file is replaced under the same name. Hashes are remembered on disk by path, size and
    time, so a multi-GB checkpoint is read once."""
    from zvstudio.diffusion.identify import sha256_file
    from zvstudio.hashing import text_hash

    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    files = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
    return text_hash(*(f"{f.relative_to(path)}={sha256_file(f)}" for f in files))


@dataclass(frozen=True)
class PreviewRequest:
    """Render frame `frame` of `video` as a key with `diffusion` and write it to `output`;
    with `seeds` above 1, once for each of that many seeds from the settings' seed on, to
    `output` named for each (key_seed7.png, key_seed8.png, ...)."""

    video: Path
    frame: int
    output: Path
    diffusion: DiffusionSpec
    seeds: int = 1

    def outputs(self) -> list[tuple[int, Path]]:
        """(seed, file) for each image the preview writes."""
        first = self.diffusion.settings.seed
        if self.seeds == 1:
            return [(first, self.output)]
        stem = self.output.with_suffix("")
        return [(seed, Path(f"{stem}_seed{seed}.png")) for seed in range(first, first + self.seeds)]


def render_preview(
    request: PreviewRequest,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
) -> list[str]:
    """Render the key and write it as a PNG; returns warnings for the user (for example a
    constraint that the chosen strength never lets run)."""
    import torch

    from zvstudio.diffusion.constraints import check_schedule
    from zvstudio.diffusion.infotext import INFOTEXT_KEY, key_infotext
    from zvstudio.diffusion.sampler import out_of_memory_error
    from zvstudio.keyrender import working_size
    from zvstudio.media import VideoReader

    if request.output.suffix.lower() != ".png":
        raise ZvsError(f"the preview is written as PNG: use a .png output, not {request.output}")
    if not request.output.absolute().parent.is_dir():
        raise ZvsError(f"cannot write {request.output}: its folder does not exist")
    with VideoReader(request.video) as reader:
        if not 0 <= request.frame < len(reader):
            raise ZvsError(
                f"frame {request.frame} is outside the clip's frames 0..{len(reader) - 1}"
            )
        frame = reader.frame(request.frame)
    if request.seeds < 1:
        raise ZvsError(f"--seeds needs at least 1, got {request.seeds}")
    settings = request.diffusion.settings
    warnings = check_schedule(settings.schedule, settings.strength)
    try:
        sampler = build_sampler(request.diffusion)
        size = working_size(*frame.shape[:2], settings.key_size)[::-1]
        clip = {"Source clip": Path(request.video).name, "Frame": request.frame}
        for seed, output in request.outputs():  # one model load for every seed
            sampler.settings = replace(settings, seed=seed)
            image = sampler.render(frame, is_anchor=True, progress=progress, cancel=cancel)
            text = key_infotext(request.diffusion, sampler.settings, size, clip)
            write_png(output, image, {INFOTEXT_KEY: text})
    except torch.cuda.OutOfMemoryError as exc:
        raise out_of_memory_error() from exc
    return warnings
