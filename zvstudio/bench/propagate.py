"""`zvstudio bench propagate`: speed and fidelity of key propagation.

Keys every 10 frames are stylised by a deterministic OpenCV filter (cv2.stylization, the
referee's 'stylization' style); every other frame is propagated and scored against that filter
applied to the frame itself (PSNR, SSIM), plus the warp error (flicker) of the output. The
time per non-key frame counts everything: optical flow (nothing cached), both directions and
the blend; a second run over the same frames times what a re-render costs, with the flows
read from the clip's flow cache. With `--device cuda` the per-pixel work and the patch search
run on the GPU and the optical flow on every CPU core.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from zvstudio.bench import machine, peak_rss_mb, shared_clips
from zvstudio.errors import ZvsError
from zvstudio.flow import DISFlow, FlowCache
from zvstudio.keyrender import KeyContext
from zvstudio.media import VideoReader
from zvstudio.metrics import psnr, sequence_warp_error, ssim
from zvstudio.propagate.clip import propagate_clip
from zvstudio.propagate.segment import PropagationSettings
from zvstudio.propagate.synthesis_settings import SynthesisSettings
from zvstudio.stylize import create_stylizer

KEY_INTERVAL = 10


# The "stylization" style with OpenCV's own filter is exactly the referee's
# cv2.stylization(sigma_s=60, sigma_r=0.45).
_REFEREE_STYLE = create_stylizer("stylization", sigma_s=60, sigma_r=0.45, filter="normconv")


def stylise(frame_rgb: np.ndarray) -> np.ndarray:
    return _REFEREE_STYLE.render(frame_rgb, KeyContext(0))


class _Frames:
    """Frames in memory with the reader interface propagation uses."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.images = frames

    def __len__(self) -> int:
        return len(self.images)

    def frames(self, start: int, stop: int):
        return ((n, self.images[n]) for n in range(start, stop))


def load_frames(path: Path, count: int, short_side: int | None, start: int = 0) -> list[np.ndarray]:
    """Up to `count` frames from `start` (fewer at the clip's end; none past it)."""
    with VideoReader(path) as reader:
        width, height = reader.size
        size = None
        if short_side:
            scale = short_side / min(width, height)
            size = (round(width * scale / 2) * 2, round(height * scale / 2) * 2)
        start = min(start, len(reader))
        stop = min(start + count, len(reader))
        return [image for _, image in reader.frames(start, stop, size=size)]


def run_propagation(
    frames: list[np.ndarray], settings: PropagationSettings, preset: str
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], float, float]:
    """Keys every KEY_INTERVAL frames; returns (keys, outputs, seconds per non-key frame with
    the flows estimated, and with them read from the flow cache)."""
    keys = {n: stylise(frames[n]) for n in range(0, len(frames), KEY_INTERVAL)}
    inner = max(1, len(frames) - len(keys))
    with tempfile.TemporaryDirectory() as scratch:
        flows = FlowCache(DISFlow(preset), "bench", root=Path(scratch))
        seconds = []
        for _ in range(2):  # estimating the flows, then reading them
            started = time.perf_counter()
            outputs = dict(propagate_clip(_Frames(frames), keys, flows, settings))
            seconds.append((time.perf_counter() - started) / inner)
    return keys, outputs, *seconds


def bench_clip(
    path: Path,
    frames_count: int,
    short_side: int | None,
    settings: PropagationSettings,
    preset: str,
) -> dict:
    frames = load_frames(path, frames_count, short_side)
    keys, outputs, per_frame, cached = run_propagation(frames, settings, preset)
    inner = [n for n in range(len(frames)) if n not in keys]
    truth = {n: stylise(frames[n]) for n in inner}
    ordered = [outputs[n] for n in range(len(frames))]
    return {
        "clip": path.name,
        "size": list(frames[0].shape[1::-1]),
        "frames": len(frames),
        "keys": sorted(keys),
        "seconds_per_frame": round(per_frame, 4),
        "seconds_per_frame_flows_cached": round(cached, 4),
        "psnr": round(float(np.mean([psnr(outputs[n], truth[n]) for n in inner])), 3),
        "ssim": round(float(np.mean([ssim(outputs[n], truth[n]) for n in inner])), 4),
        "warp_error_x1e3": round(1e3 * sequence_warp_error(ordered, frames), 4),
    }


def bench_1080p_speed(settings: PropagationSettings, preset: str) -> dict:
    """Seconds per non-key frame at 1920x1080 (speed only) on the synthetic 1080p clip."""
    from zvstudio.bench.decode import make_1080p_clip

    with tempfile.TemporaryDirectory() as scratch:
        clip = make_1080p_clip(Path(scratch) / "1080p.mp4", seconds=0.84)
        frames = load_frames(clip, KEY_INTERVAL + 1, None)
    _, _, per_frame, cached = run_propagation(frames, settings, preset)
    return {
        "size": [1920, 1080],
        "frames": len(frames),
        "seconds_per_frame": round(per_frame, 3),
        "seconds_per_frame_flows_cached": round(cached, 3),
    }


def run_propagate_benchmark(
    videos: list[Path],
    size: int = 512,
    frames: int = 31,
    device: str = "cpu",
    preset: str = "fine",
    include_1080p: bool = True,
    synthesis: str = "flow",
    poisson: bool = False,
) -> dict:
    settings = PropagationSettings(
        synthesis=synthesis,
        poisson=poisson,
        patch=SynthesisSettings(device=device),
        device=device,
    )
    clips = list(videos) or shared_clips()
    if not clips:
        raise ZvsError("no clips to measure", hint="give video files or provide ../shared/clips")
    results = [bench_clip(Path(c), frames, size, settings, preset) for c in clips]
    report = {
        "benchmark": "propagate",
        "machine": machine(),
        "device": device,
        "synthesis": synthesis,
        "poisson": poisson,
        "short_side": size,
        "key_interval": KEY_INTERVAL,
        "flow": f"dis/{preset}",
        "style": "cv2.stylization(sigma_s=60, sigma_r=0.45)",
        "clips": results,
        "mean": {
            key: round(float(np.mean([r[key] for r in results])), 4)
            for key in (
                "seconds_per_frame",
                "seconds_per_frame_flows_cached",
                "psnr",
                "ssim",
                "warp_error_x1e3",
            )
        },
    }
    if include_1080p:
        report["speed_1080p"] = bench_1080p_speed(settings, preset)
    report["peak_memory_mb"] = round(peak_rss_mb(), 1)
    return report
