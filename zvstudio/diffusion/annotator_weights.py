"""Finding an annotator's weights file (HED, lineart, OpenPose) among the user's files.

lllyasviel's annotator checkpoints have fixed file names. They are looked for in each model
folder (directly, in `annotators/`, in folders inside those, and in Hugging Face cache snapshots
such as lllyasviel/Annotators'), and where AUTOMATIC1111's ControlNet extension and ComfyUI's
controlnet_aux nodes keep them, from the install whose `models/` folder is a model folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

COMFYUI_ANNOTATORS = "custom_nodes/comfyui_controlnet_aux/ckpts/lllyasviel/Annotators"


def a1111_annotators(kind: str) -> str:
    """Where the A1111 ControlNet extension downloads annotator `kind`'s weights."""
    return f"extensions/sd-webui-controlnet/annotator/downloads/{kind}"


def find_weights_file(
    file_names: Sequence[str],
    install_locations: Sequence[str],
    folders: Iterable[Path] | None = None,
) -> Path | None:
    """The first of `file_names` found (earlier names first within a folder) in the model
    folders (default: `default_model_folders()`), or None."""
    if folders is None:
        from zvstudio.diffusion.library import default_model_folders

        folders = default_model_folders()
    from zvstudio.diffusion.depth import candidate_folders

    for root in folders:
        for folder in (root, *candidate_folders(root), *install_folders(root, install_locations)):
            found = next((folder / n for n in file_names if (folder / n).is_file()), None)
            if found is not None:
                return found
    return None


def install_folders(root: Path, locations: Sequence[str]) -> list[Path]:
    """`locations` inside the A1111 / ComfyUI install whose `models/...` folder is `root`."""
    install = next((p.parent for p in (root, root.parent) if p.name.lower() == "models"), None)
    return [install / location for location in locations] if install else []


def load_checkpoint(model, path: Path, kind: str, expected: str):
    """`model` with the state dict of `path` loaded, in eval mode; a ZvsError saying that the
    file is not a `kind` checkpoint (e.g. "HED annotator") and naming the `expected` file when
    it cannot be read or its tensors do not match the network's."""
    from zvstudio.errors import ZvsError
    from zvstudio.statedict import read_state_dict

    hint = f"use {expected}"
    what = f"{kind} checkpoint"
    state = read_state_dict(path, f"the {what}", f"it must be a plain state dict ({expected})")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise ZvsError(f"{path} is not a {what}: {exc}", hint=hint) from exc
    if missing or unexpected:
        raise ZvsError(
            f"{path} is not a {what}",
            hint=f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}; {hint}",
        )
    return model.eval()


class CheckpointAnnotator:
    """An annotator whose network (`build()`, randomly initialised) is loaded on first use from
    one of lllyasviel's checkpoint files; `kind` and `expected` word the errors of a wrong one.
    Its identity (for cache keys) is the file's name and size."""

    kind = ""  # e.g. "HED annotator"
    expected = ""  # e.g. "lllyasviel's ControlNetHED.pth"

    def __init__(self, weights: Path) -> None:
        self.weights = Path(weights)
        self._model = None

    @property
    def identity(self) -> str:
        return f"{self.weights.name}:{self.weights.stat().st_size}"

    def build(self):
        raise NotImplementedError

    def _load(self):
        if self._model is None:
            self._model = load_checkpoint(self.build(), self.weights, self.kind, self.expected)
        return self._model
