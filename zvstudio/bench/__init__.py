"""Benchmarks run by `zvstudio bench ...`; each returns a JSON-ready report."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v", ".webm", ".avi")


def shared_clips_dir() -> Path | None:
    """The folder of real test clips (`../shared/clips` beside the checkout), if present."""
    candidates = []
    if os.environ.get("ZVSTUDIO_CLIPS"):
        candidates.append(Path(os.environ["ZVSTUDIO_CLIPS"]))
    candidates.append(Path.cwd().parent / "shared" / "clips")
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "clips")
    return next((path for path in candidates if path.is_dir()), None)


def shared_clips() -> list[Path]:
    folder = shared_clips_dir()
    if folder is None:
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)


def machine() -> dict:
    """What the figures were measured on."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def timing_summary(milliseconds: list[float]) -> dict:
    values = np.asarray(milliseconds, dtype=np.float64)
    return {
        "mean_ms": round(float(values.mean()), 2),
        "median_ms": round(float(np.median(values)), 2),
        "p95_ms": round(float(np.percentile(values, 95)), 2),
        "max_ms": round(float(values.max()), 2),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (NaN where unsupported)."""
    # Linux: VmHWM is this process's own peak. ru_maxrss is not: a child started by
    # subprocess inherits its parent's peak across fork and exec.
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # macOS reports bytes, other Unixes KiB.
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def gpu_peaks(device) -> dict:
    """Peak GPU memory allocated and reserved since the last reset, in MB (None off CUDA)."""
    if not _is_cuda(device):
        return {"peak_gpu_mb": None, "peak_gpu_reserved_mb": None}
    import torch

    return {
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / (1 << 20), 1),
        "peak_gpu_reserved_mb": round(torch.cuda.max_memory_reserved(device) / (1 << 20), 1),
    }


def reset_gpu_peak(device) -> str | None:
    """Start a new peak-memory measurement on a CUDA device; its name (None off CUDA)."""
    if not _is_cuda(device):
        return None
    import torch

    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.get_device_name(device)


def _is_cuda(device) -> bool:
    # By name, so that CPU-only benchmarks never import torch (it would count in their RAM).
    return str(device).split(":")[0] == "cuda"
