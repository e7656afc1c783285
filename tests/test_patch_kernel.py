"""The fused Triton patch distance against the PyTorch reference.

Without a GPU the kernel runs in Triton's CPU interpreter, which must be switched on
(TRITON_INTERPRET=1) before triton is imported, so that comparison runs in a child process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zvstudio.propagate import kernels
from zvstudio.propagate.kernels import fused_available, patch_distance_fused
from zvstudio.propagate.patchmatch import patch_distance_reference as patch_distance

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
RTOL, ATOL = 1e-5, 1e-4

# Random guides of different sizes, random coordinates (some beyond the borders) plus every
# corner and edge midpoint of both images, so the clamping of target and source is exercised.
INTERPRETER_CHECK = r"""
import json, torch
from zvstudio.propagate.kernels import fused_available, patch_distance_fused
from zvstudio.propagate.patchmatch import patch_distance_reference as patch_distance

def coordinates(generator, count, height, width):
    ys = torch.randint(-2, height + 2, (count,), generator=generator)
    xs = torch.randint(-2, width + 2, (count,), generator=generator)
    edges_y = torch.tensor([0, 0, height - 1, height - 1, 0, height - 1, height // 2, height // 2])
    edges_x = torch.tensor([0, width - 1, 0, width - 1, width // 2, width // 2, 0, width - 1])
    return torch.stack([torch.cat([ys, edges_y]), torch.cat([xs, edges_x])])

def compare(channels, patch_size, dtype, count, seed, strided=False):
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(channels, 24, 20, generator=generator)
    source = torch.rand(channels, 18, 22, generator=generator)
    target_yx = coordinates(generator, count, 24, 20)
    source_yx = coordinates(generator, count, 18, 22)
    source_yx = source_yx[:, torch.randperm(count + 8, generator=generator)]
    expected = patch_distance(target, source, target_yx, source_yx, patch_size)
    if strided:  # the same values, laid out non-contiguously
        target = target.permute(1, 2, 0).contiguous().permute(2, 0, 1)
        source = source.transpose(1, 2).contiguous().transpose(1, 2)
        target_yx = target_yx.t().contiguous().t()
    got = patch_distance_fused(target, source, target_yx.to(dtype), source_yx.to(dtype), patch_size)
    return {
        "case": [channels, patch_size, str(dtype), strided],
        "dtype": str(got.dtype),
        "got": got.tolist(),
        "expected": expected.tolist(),
    }

results = [
    compare(9, 3, torch.int64, 292, seed=1),
    compare(9, 5, torch.int32, 292, seed=2, strided=True),
    compare(1, 7, torch.int64, 100, seed=3),
]
# Known values: a patch against itself, and constant guides one apart in every channel.
guide = torch.rand(4, 10, 12)
yx = torch.tensor([[0, 5, 9, 3], [0, 6, 11, 0]])
self_distance = patch_distance_fused(guide, guide, yx, yx, 5).abs().max().item()
ones = patch_distance_fused(torch.ones(4, 10, 12), torch.zeros(4, 7, 5), yx, yx.clamp(0, 4), 5)
empty = patch_distance_fused(guide, guide, yx[:, :0], yx[:, :0], 3)
print(json.dumps({
    "available": fused_available(torch.device("cpu")),
    "results": results,
    "self_distance": self_distance,
    "ones": ones.tolist(),
    "empty_shape": list(empty.shape),
}))
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_fused_matches_reference_in_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, "-c", INTERPRETER_CHECK],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["available"] is True
    assert [len(r["got"]) for r in report["results"]] == [300, 300, 108]
    for result in report["results"]:
        assert result["dtype"] == "torch.float32", result["case"]
        got, expected = torch.tensor(result["got"]), torch.tensor(result["expected"])
        assert expected.std() > 0.5, result["case"]  # the distances really vary
        torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL, msg=str(result["case"]))
    assert report["self_distance"] == 0.0
    assert report["ones"] == [100.0] * 4  # 4 channels x 25 offsets x 1^2
    assert report["empty_shape"] == [0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
    reason="the interpreter is too slow for a full frame",
)
@pytest.mark.parametrize("patch_size", [3, 5, 7])
def test_fused_matches_reference_on_cuda(patch_size):
    assert fused_available(torch.device("cuda"))
    generator = torch.Generator().manual_seed(patch_size)
    size, channels, count = 512, 12, 512 * 512
    target = torch.rand(channels, size, size, generator=generator).cuda()
    source = torch.rand(channels, size - 40, size + 24, generator=generator).cuda()
    target_yx = torch.stack(
        [
            torch.randint(0, size, (count,), generator=generator),
            torch.randint(0, size, (count,), generator=generator),
        ]
    ).cuda()
    source_yx = torch.stack(
        [
            torch.randint(-3, size - 37, (count,), generator=generator),
            torch.randint(-3, size + 27, (count,), generator=generator),
        ]
    ).cuda()
    expected = patch_distance(target, source, target_yx, source_yx, patch_size)
    got = patch_distance_fused(target, source, target_yx, source_yx, patch_size)
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
    got32 = patch_distance_fused(
        target, source, target_yx.int(), source_yx.int().t().contiguous().t(), patch_size
    )
    torch.testing.assert_close(got32, expected, rtol=RTOL, atol=ATOL)


def test_not_available_on_the_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert fused_available(torch.device("cpu")) is False
    assert fused_available("cpu") is False
    assert fused_available("cuda") is HAS_TRITON
    guide = torch.rand(2, 6, 6)
    yx = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="cannot run"):
        patch_distance_fused(guide, guide, yx, yx, 3)


def test_without_triton_nothing_is_available(monkeypatch):
    """macOS and Windows have no triton: the module still works and reports so."""
    kernels._triton.cache_clear()
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` fail
    monkeypatch.setitem(sys.modules, "triton.language", None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    try:
        assert kernels._triton() is None
        assert fused_available("cuda") is False
        assert fused_available("cpu") is False
    finally:
        kernels._triton.cache_clear()


def test_bad_arguments_are_refused():
    guide = torch.rand(3, 6, 6)
    yx = torch.zeros(2, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="channel"):
        patch_distance_fused(guide, torch.rand(2, 6, 6), yx, yx, 3)
    with pytest.raises(ValueError, match="odd"):
        patch_distance_fused(guide, guide, yx, yx, 4)
    with pytest.raises(ValueError, match="int32 or int64"):
        patch_distance_fused(guide, guide, yx.float(), yx, 3)
    with pytest.raises(ValueError, match=r"\(2, N\)"):
        patch_distance_fused(guide, guide, yx, yx[:, :3], 3)
