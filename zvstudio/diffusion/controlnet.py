"""SD1.x ControlNets: loaded fully offline, and picked from the model library by annotator type.

Accepted layouts:

* a diffusers folder (`config.json` + weights), loaded with `from_pretrained(local_files_only=True)`
  and its own config (it came with the weights);
* a single file in the ORIGINAL layout (`control_model.*` keys, as lllyasviel's
  `control_v11p_sd15_canny`, or the same names without the prefix). As in `loading.py`, names are
  mapped with diffusers' own converter run on names only, the architecture comes from our config
  folder (`resources/sd15/controlnet`), and tensors are loaded into an empty model, so a missing,
  unexpected or misshapen tensor is an error rather than a silently random weight;
* a single file already in diffusers layout (`controlnet_cond_embedding.*`).

Pickled files are refused unless allowed, and then only plain tensors are unpickled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from zvstudio.diffusion.annotators import (
    BUILTIN_ANNOTATORS,
    UNAVAILABLE_ANNOTATORS,
    available_annotators,
    has_annotator,
    weights_hint,
)
from zvstudio.diffusion.identify import BASE_LABELS, KIND_LABELS, ModelInfo, classify
from zvstudio.diffusion.loading import (
    force_offline,
    from_pretrained_checked,
    load_renamed,
    mismatches,
    open_checkpoint,
    rename_map,
    weights_kwargs,
)
from zvstudio.diffusion.tokenizer import sd15_config_dir
from zvstudio.errors import ZvsError

if TYPE_CHECKING:  # diffusers takes seconds to import
    from diffusers import ControlNetModel

CONTROL_PREFIX = "control_model."
DEFAULT_SCALE = 0.7  # KeySettings.controlnet_scale's default
# Annotator types we compute the control image for (built in; plugins add more, see
# zvstudio.diffusion.annotators, which also lists those that need weights we cannot download).
ANNOTATORS = BUILTIN_ANNOTATORS
_BASES = ("sd1", "unknown")  # an unknown base is let through: the loader decides

__all__ = [
    "ControlNetChoice",
    "controlnet_annotator",
    "empty_controlnet",
    "load_controlnet_model",
    "match_controlnet_checkpoint",
    "resolve_controlnet",
]


# ------------------------------------------------------------------------------------ loading


def load_controlnet_model(
    path: Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    config_dir: Path | None = None,
    allow_pickle: bool = False,
) -> ControlNetModel:
    """A ControlNet from a diffusers folder or a single file, in eval mode on `device`.

    `config_dir` (a diffusers-layout config folder with `controlnet/config.json`, default our
    SD1.5 configs) is the architecture single files are loaded into; tests pass a tiny one.
    Raises ZvsError for a missing or wrong file, or a pickled file that was not allowed.
    """
    force_offline()
    path = Path(path)
    if path.is_dir():
        model = _load_folder(path, dtype, allow_pickle)
    elif path.is_file():
        model = _load_single_file(path, dtype, allow_pickle, config_dir)
    else:
        raise ZvsError(f"ControlNet not found: {path}")
    # The weights already have `dtype`: diffusers' `.to(dtype=...)` logs a spurious warning.
    return model.to(device).eval()


def _load_folder(path: Path, dtype: torch.dtype, allow_pickle: bool) -> ControlNetModel:
    from diffusers import ControlNetModel

    from zvstudio.diffusion.identify import identify_folder

    try:
        info = identify_folder(path)
    except ZvsError as exc:
        raise ZvsError(
            f"{path} is not a ControlNet folder: it has no diffusers config.json.",
            hint="pick the folder that holds config.json, or a single .safetensors file",
        ) from exc
    if info.kind != "controlnet" or info.details.get("class") != "ControlNetModel":
        what = info.details.get("class") or info.details.get("pipeline") or info.kind
        raise ZvsError(
            f"{path} is not an SD1.x ControlNet folder: it holds {what}.",
            hint=_hint(info.kind, info.base, info.details),
        )
    if info.base not in _BASES:
        raise ZvsError(
            f"{path} is a ControlNet for {BASE_LABELS[info.base]}, not SD1.x.",
            hint=_hint(info.kind, info.base, info.details),
        )
    kwargs = weights_kwargs(path, allow_pickle)
    return from_pretrained_checked(
        ControlNetModel, path, f"The ControlNet {path}", torch_dtype=dtype, **kwargs
    )


def empty_controlnet(config_dir: Path | None = None) -> ControlNetModel:
    """A ControlNetModel from `config_dir/controlnet/config.json`, parameters on the meta device.

    Fill it with `load_state_dict(..., assign=True)`.
    """
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    config_dir = Path(config_dir) if config_dir is not None else sd15_config_dir()
    if not (config_dir / "controlnet" / "config.json").is_file():
        raise ZvsError(f"{config_dir} has no controlnet/config.json to build a ControlNet from.")
    config = ControlNetModel.load_config(config_dir, subfolder="controlnet")
    with init_empty_weights():
        return ControlNetModel.from_config(config)


def match_controlnet_checkpoint(
    model: ControlNetModel, shapes: Mapping[str, Sequence[int]], name: str = "the file"
) -> dict[str, str]:
    """{parameter name: file key} for a single-file ControlNet described by its key shapes.

    Raises ZvsError, with the count of missing, unexpected and misshapen tensors and a guess of
    what the file is, unless the file fits `model` exactly.
    """
    keys = list(shapes)
    if any(k.startswith("controlnet_") for k in keys):  # already in diffusers layout
        scope, rename = keys, {k: k for k in keys}
    else:
        from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

        # ControlNet 1.0 files bundle the whole SD model beside control_model.*: only that part
        # is the ControlNet. Prefixless files are the control model alone.
        prefixed = [k for k in keys if k.startswith(CONTROL_PREFIX)]
        scope = prefixed or keys
        # The converter strips the prefix itself, but reads prefixless names only when
        # time_embed.0.weight is among them: give every name the prefix so both work alike.
        named = {CONTROL_PREFIX + k.removeprefix(CONTROL_PREFIX): k for k in scope}
        converted = rename_map(convert_controlnet_checkpoint, list(named), model.config)
        rename = {param: named[key] for param, key in converted.items()}
    params = model.state_dict()
    missing, unexpected, misshapen = mismatches(params, rename, shapes, scope)
    if missing or unexpected or misshapen:
        kind, base, details = classify(shapes, None, name)
        raise ZvsError(
            f"{name} does not fit the SD1.x ControlNet architecture: {missing} tensors missing, "
            f"{unexpected} unexpected, {misshapen} of the wrong shape.",
            hint=_hint(kind, base, details),
        )
    return {p: rename[p] for p in params}


def _load_single_file(
    path: Path, dtype: torch.dtype, allow_pickle: bool, config_dir: Path | None
) -> ControlNetModel:
    tensors = open_checkpoint(path, allow_pickle)
    model = empty_controlnet(config_dir)
    rename = match_controlnet_checkpoint(model, {k: tensors.shape(k) for k in tensors}, path.name)
    load_renamed(model, tensors, rename, dtype)
    return model


def _hint(kind: str, base: str, details: Mapping) -> str:
    """What a file that is not an SD1.x ControlNet looks like, and what to pick instead."""
    pick = "pick an SD1.5 ControlNet such as control_v11p_sd15_canny"
    if kind == "controlnet" and base not in _BASES:
        return f"this looks like a ControlNet for {BASE_LABELS[base]} (not SD1.x); {pick}"
    if kind == "controlnet":
        variant = f" ({details['variant']})" if details.get("variant") else ""
        return f"this ControlNet{variant} has another architecture than SD1.5's; {pick}"
    if kind == "unknown":
        return f"this is not a ControlNet ({details.get('note') or 'unknown layout'}); {pick}"
    return f"this looks like a {KIND_LABELS[kind]}, not a ControlNet; {pick}"


# ----------------------------------------------------------------------- choosing a ControlNet


class ControlNetChoice(NamedTuple):
    """What `--controlnet` named: a ControlNet file or folder, its scale, and a note for the
    user (which library model was picked, or a doubt about the file), empty when none."""

    path: Path
    scale: float
    note: str = ""


def resolve_controlnet(
    spec: str, models: Sequence[ModelInfo] | None = None, default_scale: float = DEFAULT_SCALE
) -> ControlNetChoice:
    """`PATH`, `PATH:SCALE`, `ANNOTATOR` or `ANNOTATOR:SCALE` as a ControlNet path and scale.

    ANNOTATOR is `canny` or one a plugin registered (see `controlnet_annotator`). A bare
    annotator type is looked up among the library's SD1.x (or unknown-base) ControlNets whose
    name contains it (`models`, else a scan of `default_model_folders()`); when several match,
    the shortest name wins (safetensors before pickles, ties by name then path) and the note
    says which. A bare type always means the library: write `./canny` for a folder so named.
    """
    target, scale = _split_scale(spec, default_scale)
    word = target.strip().lower()
    if has_annotator(word):
        path, note = _library_controlnet(word, models)
        return ControlNetChoice(path, scale, note)
    if word in UNAVAILABLE_ANNOTATORS:
        raise _unavailable(word)
    path = Path(target).expanduser()
    if not path.exists():
        raise ZvsError(
            f"ControlNet not found: {target}",
            hint="give a ControlNet file or diffusers folder, or 'canny' to use the canny "
            "ControlNet from your model folders",
        )
    named = annotator_named_by(path)
    if named is not None and not has_annotator(named):
        raise _unavailable(named, f"'{path.name}' is a {named} ControlNet, and the ")
    return ControlNetChoice(path, scale, "" if named else _not_named_note(path))


def controlnet_annotator(spec: str) -> str:
    """The annotator whose control image the ControlNet `spec` (as `resolve_controlnet` takes
    it) is fed: the annotator it names, else the one its file or folder name names
    (`annotator_named_by`), else canny."""
    target, _ = _split_scale(spec, DEFAULT_SCALE)
    word = target.strip().lower()
    if has_annotator(word):
        return word
    named = annotator_named_by(Path(target).expanduser())
    return named if named is not None and has_annotator(named) else "canny"


def annotator_named_by(path: Path) -> str | None:
    """The annotator a ControlNet's file or folder name says it was trained on, as
    lllyasviel's and most others' names do (control_v11f1p_sd15_depth: depth), or None. The
    name's last word that names an annotator (available or not) wins."""
    words = re.split(r"[^a-z0-9]+", path.name.lower())
    for word in reversed(words):
        word = NAME_ALIASES.get(word, word)
        if has_annotator(word) or word in UNAVAILABLE_ANNOTATORS:
            return word
    return None


# Words of ControlNets' names that mean an annotator by another name (lllyasviel's
# control_v11p_sd15_normalbae follows normal maps).
NAME_ALIASES = {"normalbae": "normal"}


def _unavailable(name: str, prefix: str = "the ") -> ZvsError:
    hint = f"use {_annotator_list()}, e.g. --controlnet canny:0.7 (canny: edges from OpenCV)"
    where = weights_hint(name)
    if where:
        hint = f"{where}; or {hint}"
    return ZvsError(
        f"{prefix}{name} annotator is not available: it needs annotator weights, and "
        "zvstudio works offline and downloads nothing",
        hint=hint,
    )


def _annotator_list() -> str:
    return " or ".join(available_annotators())


def _not_named_note(path: Path) -> str:
    return (
        f"'{path.name}' does not say which annotator it was trained on, so it is fed canny "
        "edges: if it was trained on another, put that annotator's name in its file name "
        "(e.g. control_sd15_depth.safetensors)"
    )


def _split_scale(spec: str, default_scale: float) -> tuple[str, float]:
    head, sep, tail = spec.rpartition(":")
    try:
        scale = float(tail) if sep and head else None
    except ValueError:
        scale = None
    if scale is None:
        word = head.strip().lower()
        if sep and (word in UNAVAILABLE_ANNOTATORS or has_annotator(word)):
            raise ZvsError(f"--controlnet {spec!r}: {tail!r} is not a scale", hint="e.g. canny:0.7")
        return spec, default_scale  # a path (maybe with a drive letter's colon)
    if not math.isfinite(scale) or scale < 0:
        raise ZvsError(f"--controlnet {spec!r}: the scale must be a number >= 0, e.g. 0.7")
    return head, scale


def _library_controlnet(word: str, models: Sequence[ModelInfo] | None) -> tuple[Path, str]:
    from zvstudio.diffusion.library import default_model_folders, home_models_folder, scan

    folders = None
    if models is None:
        folders = default_model_folders()
        models = scan(folders)
    named = [
        m
        for m in models
        if m.kind == "controlnet" and word in m.name.lower() and "error" not in m.details
    ]
    found = sorted(
        (m for m in named if m.base in _BASES),
        key=lambda m: (m.pickled, len(m.name), m.name.lower(), str(m.path)),
    )
    if not found:
        if folders is None:
            where = "among the models given"
        elif folders:
            where = "in " + ", ".join(str(f) for f in folders)
        else:
            where = "(no model folder exists yet)"
        skipped = "".join(
            f"; '{m.name}' is for {BASE_LABELS[m.base]}" for m in named if m.base not in _BASES
        )
        raise ZvsError(
            f"no SD1.x {word} ControlNet {where}{skipped}",
            hint=f"put an SD1.5 {word} ControlNet (e.g. control_v11p_sd15_{word}.safetensors or "
            f"its diffusers folder) in {home_models_folder()} or a folder listed in "
            "ZVSTUDIO_MODELS, or give its path",
        )
    chosen = found[0]
    note = ""
    if len(found) > 1:
        others = ", ".join(f"'{m.name}'" for m in found[1:])
        note = (
            f"{len(found)} {word} ControlNets found; using '{chosen.name}' ({chosen.path}), "
            f"the shortest name, not {others}: give a path to use another"
        )
    return chosen.path, note
