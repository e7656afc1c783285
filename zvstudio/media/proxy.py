"""Preview proxies: every frame of a clip at preview size, each decodable on its own.

Seeking in a long-GOP H.264 file means decoding from the previous keyframe, which can take
hundreds of milliseconds at 1080p. Editors solve this with intra-only proxies; ours is one file
of independently compressed JPEG frames plus an offset table, so showing any frame costs one
small JPEG decode. No container format offers that as simply (an MJPEG stream would still need
a demuxer seek per frame), hence this small file format:

    [JPEG 0][JPEG 1]...[JPEG n-1][offsets: n+1 little-endian int64][metadata JSON]
    [metadata length: uint64][frame count: uint64][MAGIC]
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from zvstudio.errors import MediaError
from zvstudio.media.sequence import clip_hash
from zvstudio.paths import cache_root
from zvstudio.progress import CancelToken, Progress, ProgressCallback, ignore_progress

MAGIC = b"ZVSPROXY1"
_TRAILER = struct.Struct("<QQ")
_JPEG_QUALITY = 88


def proxy_path(video: str | os.PathLike[str], max_side: int) -> Path:
    """Where the proxy of `video` at `max_side` lives in the cache (keyed by content)."""
    digest = clip_hash(video).split(":", 1)[1]
    return cache_root() / "proxies" / f"{digest}-{max_side}.zvproxy"


class Proxy:
    """Random access to a built proxy file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            self._read_footer()
        except (OSError, ValueError, KeyError) as exc:
            self.close()
            raise MediaError(f"damaged proxy file {self.path}: {exc}") from exc

    def _read_footer(self) -> None:
        end = os.fstat(self._fd).st_size
        tail = self._read_at(_TRAILER.size + len(MAGIC), end - _TRAILER.size - len(MAGIC))
        if not tail.endswith(MAGIC):
            raise ValueError("not a zvstudio proxy")
        meta_length, count = _TRAILER.unpack(tail[: _TRAILER.size])
        meta_start = end - len(tail) - meta_length
        self.metadata = json.loads(self._read_at(meta_length, meta_start))
        table_bytes = 8 * (count + 1)
        table = self._read_at(table_bytes, meta_start - table_bytes)
        self.offsets = np.frombuffer(table, dtype="<i8")
        self.max_side = int(self.metadata["max_side"])

    def _read_at(self, length: int, offset: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(self._fd, length, offset)
        with self._lock:  # Windows has no pread: seek and read under a lock
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.read(self._fd, length)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def frame(self, number: int) -> np.ndarray:
        """Frame `number` as an RGB uint8 array at proxy size."""
        if not 0 <= number < len(self):
            raise IndexError(f"frame {number} is outside 0..{len(self) - 1}")
        start, stop = int(self.offsets[number]), int(self.offsets[number + 1])
        blob = np.frombuffer(self._read_at(stop - start, start), dtype=np.uint8)
        image = cv2.imdecode(blob, cv2.IMREAD_COLOR)
        if image is None:
            raise MediaError(f"damaged proxy file {self.path} at frame {number}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


def build_proxy(
    reader,
    max_side: int = 640,
    destination: str | os.PathLike[str] | None = None,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
    each_frame: Callable[[np.ndarray], None] | None = None,
) -> Proxy:
    """Decode every frame of `reader` once and write its proxy (atomically); reuse a built one.

    `each_frame(image)` sees every frame at proxy size, in order, while a proxy is built (not
    when a built one is reused), so other per-frame analyses can share the decode."""
    from zvstudio.media.reader import fit_size

    target = Path(destination) if destination else proxy_path(reader.path, max_side)
    if target.exists():
        try:
            proxy = Proxy(target)
            if len(proxy) == len(reader):
                return proxy
            proxy.close()
        except MediaError:
            pass  # rebuild a damaged proxy
    target.parent.mkdir(parents=True, exist_ok=True)
    size = fit_size(*reader.size, max_side)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as stream:
            offsets = _write_frames(reader, size, stream, progress, cancel, each_frame)
            metadata = {
                "max_side": max_side,
                "width": size[0],
                "height": size[1],
                "source": str(reader.path),
            }
            _write_footer(stream, offsets, metadata)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return Proxy(target)


def _write_frames(reader, size, stream, progress, cancel, each_frame) -> list[int]:
    offsets = [0]
    total = len(reader)
    for number, image in reader.frames(size=size):
        if cancel is not None:
            cancel.raise_if_cancelled()
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:
            raise MediaError(f"cannot compress proxy frame {number}")
        if each_frame is not None:
            each_frame(image)
        stream.write(encoded.tobytes())
        offsets.append(offsets[-1] + len(encoded))
        if number % 10 == 0 or number == total - 1:  # the frame: the queue's live thumbnail
            progress(Progress("proxy", number + 1, total, image=image))
    return offsets


def _write_footer(stream, offsets: list[int], metadata: dict) -> None:
    meta = json.dumps(metadata).encode()
    stream.write(np.asarray(offsets, dtype="<i8").tobytes())
    stream.write(meta)
    stream.write(_TRAILER.pack(len(meta), len(offsets) - 1))
    stream.write(MAGIC)
