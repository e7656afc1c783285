"""Synthetic clips whose frames say which frame they are.

Each frame carries its number as a row of black/white blocks (robust to lossy compression), so a
test can check that the reader returned exactly the frame it asked for.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from zvstudio.media.synth import Tone, write_clip

BITS = 10
BLOCK = 16


def numbered_frame(number: int, width: int = 192, height: int = 112) -> np.ndarray:
    """A textured frame with `number` encoded in its top row of blocks."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = (x * 3 + number * 5) % 256
    image[..., 1] = (y * 4 + number * 3) % 256
    image[..., 2] = ((x + y) * 2) % 256
    for bit in range(BITS):
        image[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 255 if (number >> bit) & 1 else 0
    return image


def frame_number(image: np.ndarray) -> int:
    """Read back the number drawn by `numbered_frame` (image upright, any scale)."""
    scale = image.shape[1] / 192
    number = 0
    for bit in range(BITS):
        x0, x1 = int((bit * BLOCK + 4) * scale), int(((bit + 1) * BLOCK - 4) * scale)
        block = image[int(4 * scale) : int((BLOCK - 4) * scale), x0:x1]
        if block.mean() > 128:
            number |= 1 << bit
    return number


def make_clip(
    path: Path,
    count: int = 48,
    fps: int = 25,
    *,
    vfr: bool = False,
    rotation: int = 0,
    audio: bool = False,
    bframes: int = 3,
    gop: int = 12,
    width: int = 192,
    height: int = 112,
) -> tuple[Path, np.ndarray, Fraction]:
    """Write a numbered H.264 clip; returns (path, presentation times in seconds, time base)."""
    time_base = Fraction(1, 90000)
    if vfr:
        rng = np.random.default_rng(1)
        gaps = rng.choice([1500, 3000, 3600, 6000], size=count - 1)  # 60, 30, 25, 15 fps
        pts = np.concatenate([[0], np.cumsum(gaps)]).astype(np.int64)
    else:
        pts = np.round(np.arange(count) * 90000 / fps).astype(np.int64)
    frames = (numbered_frame(n, width, height) for n in range(count))
    if rotation:
        # Store the pixels turned the other way so that applying the rotation makes them upright.
        frames = (np.ascontiguousarray(np.rot90(f, k=-rotation // 90)) for f in frames)
    write_clip(
        path,
        frames,
        fps=fps,
        pts=pts,
        time_base=time_base,
        rotation=rotation,
        tone=Tone() if audio else None,
        options={
            "bf": str(bframes),
            "g": str(gop),
            "preset": "ultrafast" if not bframes else "veryfast",
            "crf": "12",
        },
    )
    return path, pts / 90000.0, time_base


def red_square_frame() -> np.ndarray:
    """A dark 40 x 56 frame with a red square, for keys rendered by tiny models."""
    image = np.full((40, 56, 3), 40, np.uint8)
    image[10:30, 12:36] = (220, 60, 40)
    return image


def textured_frame(height: int = 40, width: int = 56) -> np.ndarray:
    """A noisy grey frame with a red square: something for annotators to find edges in."""
    rng = np.random.default_rng(1)
    image = (rng.random((height, width, 3)) * 60 + 90).astype(np.uint8)
    image[10:30, 20:40] = (220, 40, 40)
    return image


def save_state_dict(path: Path, state: dict) -> Path:
    """Write `state` as a .safetensors file or, for any other suffix, a torch .pth (as the
    user's annotator checkpoints come), creating the folder."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    return path


def assert_annotator_found(
    kind: str, models: Path, weights: Path, monkeypatch, listed_as: str | None = None
) -> None:
    """`weights` in the model folder `models` makes annotator `kind` available, identified
    by the file's name and listed as its file (under `listed_as`, for an annotator of
    several names)."""
    from zvstudio.diffusion import annotators

    monkeypatch.setenv("ZVSTUDIO_MODELS", str(models))
    assert not annotators.has_annotator(kind)
    annotators.refresh_local_annotators()
    assert kind in annotators.available_annotators()
    assert annotators.annotator_identity(kind).startswith(f"{kind}@:{weights.name}:")
    assert annotators.local_annotator_files([models])[listed_as or kind] == str(weights)


def make_colour_clip(
    path: Path, signal: np.ndarray, transfer: int, primaries: int, count: int = 2
) -> Path:
    """Write a lossless 10-bit HEVC clip whose every frame is `signal` (non-linear R'G'B', float
    H x W x 3 in 0..1, even sides), tagged with these H.273 transfer and primaries codes (and
    the BT.2020 matrix), as phones tag their HDR recordings."""
    import av

    height, width = signal.shape[:2]
    rgb48 = np.round(np.clip(signal, 0, 1) * 65535).astype(np.uint16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(
            "libx265", rate=25, options={"x265-params": "lossless=1:bframes=0:log-level=error"}
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p10le"
        context = stream.codec_context
        context.colorspace, context.color_range = 9, 1  # BT.2020 matrix, limited range
        context.color_primaries, context.color_trc = primaries, transfer
        for number in range(count):
            frame = av.VideoFrame.from_ndarray(rgb48, format="rgb48le").reformat(
                format="yuv420p10le", dst_colorspace="bt2020", dst_color_range="MPEG"
            )
            frame.pts = number
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
