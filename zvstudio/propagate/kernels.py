"""Fused GPU kernels for guided PatchMatch.

`patch_distance_fused` computes what `patchmatch.patch_distance_reference` does, in one
Triton kernel. The eager reference gathers every guide channel once per patch offset (25 offsets x C
channels of indexing kernels, each writing a temporary), which is reported to be 7-50x slower
on a GPU than one pass that keeps the running sum in registers (`time_patch_distance`
measures it). It is hand-written because no library fuses "gather at clamped coordinates +
squared difference" over a patch's offsets: unfold/conv-style formulations materialise a
C x 25 x N tensor, and EbSynth's CUDA code is not packaged as a library.

Triton is optional (it ships for Linux only): this module imports it lazily, so importing the
module never fails; `fused_available` tells callers whether the kernel can run. Setting
TRITON_INTERPRET=1 before the first call runs the kernel in Triton's CPU interpreter (tests).
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

BLOCK = 256  # pixels per program


@functools.cache
def _triton() -> Any | None:
    """The `triton` module, or None where it is not installed or does not load."""
    try:
        import triton
        import triton.language  # the kernel uses triton.language as tl
    except Exception:  # ImportError, or a broken install raising anything else
        return None
    return triton


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def fused_available(device: torch.device | str) -> bool:
    """Whether `patch_distance_fused` can run on tensors on `device`."""
    # The device first: a CPU run never pays for importing Triton.
    if torch.device(device).type != "cuda" and not _interpreting():
        return False
    return _triton() is not None


@functools.cache
def _kernel() -> Any:
    """Build (once) the Triton kernel; the decorator reads TRITON_INTERPRET at this point."""
    triton = _triton()
    if triton is None:
        raise RuntimeError("patch_distance_fused needs Triton, which is not installed")
    tl = triton.language

    @triton.jit
    def patch_distance_kernel(
        target_ptr,  # (C, H, W) float32, contiguous
        source_ptr,  # (C, Hs, Ws) float32, contiguous
        target_yx_ptr,  # (2, N) int32 or int64, contiguous
        source_yx_ptr,  # (2, N) int32 or int64, contiguous
        out_ptr,  # (N,) float32
        n,
        channels,
        height,
        width,
        source_h,
        source_w,
        target_plane,  # H * W: the step from one channel to the next
        source_plane,  # Hs * Ws
        PATCH: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        index = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = index < n
        ty = tl.load(target_yx_ptr + index, mask=mask, other=0)
        tx = tl.load(target_yx_ptr + n + index, mask=mask, other=0)
        sy = tl.load(source_yx_ptr + index, mask=mask, other=0)
        sx = tl.load(source_yx_ptr + n + index, mask=mask, other=0)
        radius: tl.constexpr = PATCH // 2
        total = tl.zeros([BLOCK], dtype=tl.float32)
        for dy in tl.static_range(-radius, radius + 1):
            # Clamp (border replication) each image's coordinates separately, as the
            # reference does; clamped values are small, so 32-bit from here on.
            row_t = tl.minimum(tl.maximum(ty + dy, 0), height - 1).to(tl.int32)
            row_s = tl.minimum(tl.maximum(sy + dy, 0), source_h - 1).to(tl.int32)
            for dx in tl.static_range(-radius, radius + 1):
                col_t = tl.minimum(tl.maximum(tx + dx, 0), width - 1).to(tl.int32)
                col_s = tl.minimum(tl.maximum(sx + dx, 0), source_w - 1).to(tl.int32)
                target_at = target_ptr + (row_t * width + col_t)
                source_at = source_ptr + (row_s * source_w + col_s)
                # Sum the channels of one offset first, then add: the reference's order.
                partial = tl.zeros([BLOCK], dtype=tl.float32)
                for _ in range(channels):
                    a = tl.load(target_at, mask=mask, other=0.0)
                    b = tl.load(source_at, mask=mask, other=0.0)
                    difference = a - b
                    partial += difference * difference
                    target_at += target_plane
                    source_at += source_plane
                total += partial
        tl.store(out_ptr + index, total, mask=mask)

    return patch_distance_kernel


def _check(
    target: torch.Tensor,
    source: torch.Tensor,
    target_yx: torch.Tensor,
    source_yx: torch.Tensor,
    patch_size: int,
) -> None:
    if target.dim() != 3 or source.dim() != 3:
        raise ValueError(
            f"guides must be (C, H, W): got {tuple(target.shape)}, {tuple(source.shape)}"
        )
    if target.shape[0] != source.shape[0]:
        raise ValueError(f"channel counts differ: {target.shape[0]} and {source.shape[0]}")
    if target_yx.dim() != 2 or target_yx.shape[0] != 2 or target_yx.shape != source_yx.shape:
        raise ValueError(
            f"coordinates must both be (2, N): got {tuple(target_yx.shape)}, "
            f"{tuple(source_yx.shape)}"
        )
    for coordinates in (target_yx, source_yx):
        if coordinates.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"coordinates must be int32 or int64, not {coordinates.dtype}")
    if patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be odd and positive, not {patch_size}")
    devices = {t.device for t in (target, source, target_yx, source_yx)}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")


def patch_distance_fused(
    target: torch.Tensor,
    source: torch.Tensor,
    target_yx: torch.Tensor,
    source_yx: torch.Tensor,
    patch_size: int,
) -> torch.Tensor:
    """`patchmatch.patch_distance` as one Triton kernel: same arguments, same (N,) result.

    Guides are read as float32 (the sums are float32); the result has `target`'s dtype, as
    the reference's does. Raises RuntimeError where `fused_available` is False.
    """
    _check(target, source, target_yx, source_yx, patch_size)
    if not fused_available(target.device):
        raise RuntimeError(
            f"the fused patch distance cannot run on {target.device}: it needs Triton and a "
            "CUDA device (or TRITON_INTERPRET=1)"
        )
    channels, height, width = target.shape
    _, source_h, source_w = source.shape
    count = target_yx.shape[1]
    out = torch.empty(count, dtype=torch.float32, device=target.device)
    if count == 0:
        return out.to(target.dtype)
    if channels == 0:
        return out.zero_().to(target.dtype)
    kernel = _kernel()
    grid = (-(-count // BLOCK),)
    # Triton launches on the current CUDA device, not the tensors' (say cuda:1).
    on_device = torch.cuda.device(target.device) if target.is_cuda else contextlib.nullcontext()
    with on_device:
        kernel[grid](
            target.to(torch.float32).contiguous(),
            source.to(torch.float32).contiguous(),
            target_yx.contiguous(),
            source_yx.contiguous(),
            out,
            count,
            channels,
            height,
            width,
            source_h,
            source_w,
            height * width,
            source_h * source_w,
            PATCH=patch_size,
            BLOCK=BLOCK,
        )
    return out.to(target.dtype)


def time_patch_distance(
    size: int = 512, channels: int = 12, device: str = "cuda", patch_size: int = 5, runs: int = 7
) -> dict[str, float]:
    """Seconds per call (median of `runs`) of the reference and the fused patch distance.

    One random candidate per pixel of a `size` x `size` guide pair, the work of one
    PatchMatch candidate pass over a frame.
    """
    from zvstudio.propagate.patchmatch import patch_distance_reference

    torch_device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(channels, size, size, generator=generator).to(torch_device)
    source = torch.rand(channels, size, size, generator=generator).to(torch_device)
    count = size * size
    target_yx = torch.randint(0, size, (2, count), generator=generator).to(torch_device)
    source_yx = torch.randint(0, size, (2, count), generator=generator).to(torch_device)
    arguments = (target, source, target_yx, source_yx, patch_size)

    def synchronize() -> None:
        if torch_device.type == "cuda":
            torch.cuda.synchronize(torch_device)

    def median_seconds(function: Callable[..., torch.Tensor]) -> float:
        function(*arguments)  # warm-up (and the kernel's compilation)
        synchronize()
        seconds = []
        for _ in range(runs):
            start = time.perf_counter()
            function(*arguments)
            synchronize()
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds)

    result = {"reference_s": median_seconds(patch_distance_reference)}
    if fused_available(torch_device):
        result["fused_s"] = median_seconds(patch_distance_fused)
        result["speedup"] = result["reference_s"] / result["fused_s"]
        expected = patch_distance_reference(*arguments)
        difference = (patch_distance_fused(*arguments) - expected).abs().max()
        result["max_relative_difference"] = float(difference / expected.abs().max())
    return result
