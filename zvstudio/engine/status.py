"""What of a render is already done: each key's state and each propagated segment's.

The editor colours its timeline from this and shows rendered frames straight from the cache,
so it must be cheap: it hashes no model (model hashes are remembered on disk), loads nothing,
and reads the key cache folder once. It computes the same identities as `render`, so "rendered"
here means that rendering now would take that key or segment from the cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from zvstudio.engine.keycache import KeyCache
from zvstudio.engine.render import (
    create_key_renderer,
    flow_estimator,
    key_identities,
    key_slot,
    plan_keys,
    resolve_range,
    segment_context,
    with_paintings,
)
from zvstudio.engine.request import RenderRequest
from zvstudio.engine.shots import cached_cuts, cached_motion
from zvstudio.media import MediaInfo, clip_hash, probe
from zvstudio.propagate.cache import SegmentCache
from zvstudio.propagate.clip import segment_spans
from zvstudio.stylize import PaintedKeyRenderer

# Key states: rendered (cached with the current settings), stale (cached only with older
# settings: a change made it out of date), pending (never rendered).
KEY_STATES = ("pending", "stale", "rendered")


@dataclass(frozen=True)
class SegmentStatus:
    """Frames first..last, propagated from `keys`; `cached` when they are in the cache."""

    first: int
    last: int
    keys: tuple[int, ...]
    cached: bool
    folder: Path


@dataclass(frozen=True)
class RenderStatus:
    first: int = 0
    last: int = -1
    keys: Mapping[int, str] = field(default_factory=dict)  # frame -> one of KEY_STATES
    segments: tuple[SegmentStatus, ...] = ()
    key_files: Mapping[int, Path] = field(default_factory=dict)  # rendered keys' images

    @property
    def complete(self) -> bool:
        """Every frame is in the cache: rendering now only encodes."""
        return bool(self.segments) and all(s.cached for s in self.segments)

    def segment_of(self, number: int) -> SegmentStatus | None:
        return next((s for s in self.segments if s.first <= number <= s.last), None)

    def rendered_frame_path(self, number: int) -> Path | None:
        """The cached image of output frame `number`, if it is cached."""
        segment = self.segment_of(number)
        if segment is not None and segment.cached:
            path = segment.folder / f"{number}.png"
            if path.is_file():
                return path
        return self.key_files.get(number)

    def rendered_frame(self, number: int) -> np.ndarray | None:
        """Output frame `number` as RGB uint8 from the cache, or None when not rendered."""
        path = self.rendered_frame_path(number)
        image = cv2.imread(str(path)) if path is not None else None
        return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def render_status(request: RenderRequest, info: MediaInfo | None = None) -> RenderStatus:
    """The state of `request`'s keys and segments in the cache (`info`: the source's probe,
    if the caller has it). Raises `ZvsError` for a request that `render` would refuse."""
    info = info or probe(request.source)
    first, last = resolve_range(request, info.frame_count)
    clip_id = clip_hash(request.source)
    # The status is read often and must stay cheap: it knows the cuts found before (by a
    # render, or the editor when the clip opened), and finds none itself.
    cuts = cached_cuts(clip_id, first, last, info.frame_count) or []
    keys = plan_keys(
        request,
        info.frame_count,
        first,
        last,
        lambda: cuts,
        lambda window: cached_motion(clip_id, first, last, window),
    )
    if not keys:
        return RenderStatus(first, last)
    size = request.frame_size(info)
    source = _identity_source(request, info.frame_count)
    identities = key_identities(source, keys, dict(request.key_params), clip_id, size, cuts)
    key_states, key_files = _key_states(keys, identities, clip_id, size)
    segments = SegmentCache(segment_context(request, flow_estimator(request), clip_id, size))
    spans = []
    for start, stop, involved in segment_spans(keys, first, last):
        folder = segments.folder(start, stop, tuple(identities[k] for k in involved))
        spans.append(SegmentStatus(start, stop, involved, folder.is_dir(), folder))
    return RenderStatus(first, last, key_states, tuple(spans), key_files)


def _identity_source(request: RenderRequest, frame_count: int):
    """Something with `key_identity` and `uses_references` for the request's key renderer,
    loading no model."""
    spec = request.renderer
    if spec.kind == "diffusion" and spec.diffusion is not None:
        from zvstudio.engine.preview import DiffusionIdentities

        paintings = PaintedKeyRenderer(dict(spec.painted))
        identities = DiffusionIdentities(spec.diffusion)
        return with_paintings(identities, paintings, request.matte, frame_count)
    return create_key_renderer(spec, matte=request.matte, frame_count=frame_count)


def _key_states(
    keys: list[int], identities: Mapping[int, str], clip_id: str, size: tuple[int, int]
) -> tuple[dict[int, str], dict[int, Path]]:
    cache = KeyCache()
    stored = cache.names()
    stored_slots = {name.rsplit("-", 1)[0] for name in stored}
    states, files = {}, {}
    for number in keys:
        slot = key_slot(clip_id, size, number)
        if f"{slot}-{identities[number]}" in stored:
            states[number] = "rendered"
            files[number] = cache.path(f"{slot}-{identities[number]}")
        else:
            states[number] = "stale" if slot in stored_slots else "pending"
    return states, files
