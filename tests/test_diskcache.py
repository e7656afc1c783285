"""One size limit over every kind of cache entry, least recently used evicted first."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from zvstudio import diskcache
from zvstudio.engine.keycache import KeyCache


def make_entry(path, size, age):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_eviction_takes_the_oldest_entries_of_any_kind(tmp_path):
    flow = make_entry(tmp_path / "flows/clip/settings/0_1.npy", 1000, age=300)
    key = make_entry(tmp_path / "keys/abc.png", 1000, age=100)
    segment = tmp_path / "segments/ctx/0-9-id"
    make_entry(segment / "0.png", 600, age=200)
    make_entry(segment / "1.png", 400, age=200)
    os.utime(segment, (time.time() - 200, time.time() - 200))
    partial = make_entry(tmp_path / "keys/.def.123.tmp", 5000, age=1000)
    assert diskcache.usage(tmp_path) == {
        "flows": 1000,
        "keys": 1000,
        "segments": 1000,
        "proxies": 0,
        "cuts": 0,
        "motion": 0,
        "levels": 0,
    }
    assert diskcache.evict(tmp_path, limit=1500) == 2000  # the flow, then the segment
    assert not flow.exists() and not segment.exists() and key.exists()
    assert partial.exists()  # being written by someone: never counted or deleted
    assert diskcache.clear(tmp_path) == 1000 and not key.exists()


def test_key_cache_round_trip(tmp_path):
    cache = KeyCache(tmp_path)
    image = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    assert cache.load("k1", (20, 12)) is None
    cache.store("k1", image)
    assert np.array_equal(cache.load("k1", (20, 12)), image)  # lossless
    assert cache.load("k1", (40, 24)) is None  # another size: not this key
    assert (cache.hits, cache.misses) == (1, 2)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_an_entry_is_written_whole_or_not_at_all(tmp_path):
    path = tmp_path / "cuts" / "abc.json"
    assert diskcache.write_entry(path, lambda stream: stream.write(b"[1, 2]"))
    assert path.read_bytes() == b"[1, 2]"

    def full_disk(stream):
        stream.write(b"[3")
        raise OSError(28, "No space left on device")

    assert not diskcache.write_entry(path, full_disk)  # the caching fails, the caller does not
    assert path.read_bytes() == b"[1, 2]"  # the old entry is untouched
    assert [p.name for p in path.parent.iterdir()] == ["abc.json"]  # no temporary file left
    with pytest.raises(ValueError):  # a bug is not a full disk: it surfaces
        diskcache.write_entry(path, lambda stream: int("x"))
    assert [p.name for p in path.parent.iterdir()] == ["abc.json"]
    read_only = tmp_path / "file-not-folder"
    read_only.write_text("")
    assert not diskcache.write_entry(read_only / "entry.json", lambda stream: None)


def test_arrays_load_whole_and_bad_entries_raise(tmp_path):
    import numpy as np

    flow = np.arange(12, dtype=np.float16).reshape(2, 3, 2)
    np.save(tmp_path / "flow.npy", flow)
    np.testing.assert_array_equal(diskcache.load_arrays(tmp_path / "flow.npy")[""], flow)
    np.savez(tmp_path / "costs.npz", forward=flow, backward=flow + 1)
    loaded = diskcache.load_arrays(tmp_path / "costs.npz", ("forward", "backward"))
    np.testing.assert_array_equal(loaded["backward"], flow + 1)
    with pytest.raises(KeyError):
        diskcache.load_arrays(tmp_path / "costs.npz", ("missing",))
    (tmp_path / "damaged.npy").write_bytes(b"\\x93NUMPY garbage")
    with pytest.raises((OSError, ValueError)):
        diskcache.load_arrays(tmp_path / "damaged.npy")
    with pytest.raises(OSError):
        diskcache.load_arrays(tmp_path / "absent.npy")
