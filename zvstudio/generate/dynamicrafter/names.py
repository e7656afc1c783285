"""What a DynamiCrafter checkpoint's name tells: which release (preset) it is.

Imports no torch, so the editor's Animate image... dialog can say at once whether a chosen
file's preset is known (the job, `job.resolve_preset`, uses the same guess).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["guess_preset"]


def guess_preset(path: Path) -> str | None:
    """The preset a checkpoint's file name, else its folder's, names ("dynamicrafter_1024_v1",
    "dynamicrafter_512_interp_v1/model.ckpt", ...); None when neither does."""
    path = Path(path)
    for name in (path.stem, path.parent.name):
        text = name.lower()
        if "interp" in text:
            return "512_interp"  # the only interpolation model
        found = re.search(r"(?<!\d)(256|512|1024)(?!\d)", text)
        if found:
            return found[1]
    return None
