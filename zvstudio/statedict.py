"""Reading a model's weights from a state dict file: safetensors, or a .pth/.pt read as
tensors only (`torch.load(weights_only=True)` never unpickles arbitrary objects, which could run
code from a file the user downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zvstudio.errors import ZvsError


def read_state_dict(path: Path, what: str, hint: str) -> dict[str, Any]:
    """The tensors in `path` by name; a ZvsError naming `what` (e.g. "RAFT weights") with
    `hint` when the file cannot be read or holds something else than a state dict."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ZvsError(f"cannot read {what} {path}: {exc}", hint=hint) from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ZvsError(f"{path} is not a state dict of {what}", hint=hint)
    return state
