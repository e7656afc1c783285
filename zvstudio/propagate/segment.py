"""Propagating rendered key frames to every other frame.

For the frames between two keys a < b, key a is carried forward and key b backward, then the
two are blended. Each direction follows the optical flow, and per pixel it keeps whichever of
two flow hypotheses explains the input video better:

- the **composed** flow (consecutive flows chained from the key), which follows motion
  smoothly but accumulates drift, and
- the **direct** flow from the frame to the key, which does not drift but fails where the
  motion between them is large.

"Explains better" is the guide error of the patch: the squared colour difference between the
input frame and the key's input frame sampled along that flow, summed over a small window
(EbSynth's colour guide). The chosen flow is carried on, so a correction persists.

The key's rendering is then sampled along the chosen flow with one bilinear warp (sharper than
patch voting), and the two directions are blended with weights that fall with temporal
distance and with each direction's patch error, and vanish where the flow was occluded. On
the shared clips this beats EbSynth's fidelity at a small fraction of its time (see the issue
notes for the figures). With `synthesis="patch"`, the pixels no flow explains are rebuilt
from the key's patches by guided patch synthesis (`synthesis`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from zvstudio.flow.ops import consistency_mask, feather, identity_grid, warp
from zvstudio.progress import CancelToken
from zvstudio.propagate.synthesis_settings import SynthesisSettings

BLEND_MODES = ("soft", "histogram")
SYNTHESIS_MODES = ("flow", "patch")

# Flow F_{i->j} between frames i and j (see zvstudio.flow for the convention).
FlowFunction = Callable[[int, int], np.ndarray]


@dataclass(frozen=True)
class PropagationSettings:
    """How keys are carried to the other frames. The defaults are the measured best."""

    reanchor: bool = True  # also try the direct flow to the key, per pixel
    reanchor_margin: float = 0.7  # the direct flow must be this much better to win
    error_window: int = 7  # side of the window over which guide errors are summed
    blend: str = "soft"  # "soft": error-weighted; "histogram": EbSynth/Rerender selection
    blend_sigma: float = 400.0  # error scale of the soft blend (squared 8-bit RGB, summed)
    occluded_weight: float = 0.05  # weight kept where a direction's flow was occluded
    synthesis: str = "flow"  # "patch": guided patch synthesis where the flow fails
    synthesis_threshold: float = 300.0  # guide error above which the flow "fails"
    patch: SynthesisSettings = field(default_factory=SynthesisSettings)


@dataclass
class Propagated:
    """One direction's result for one frame."""

    image: np.ndarray  # RGB uint8
    error: np.ndarray  # float32 guide error per pixel (windowed)
    valid: np.ndarray  # bool: the flow chain was consistent here
    flow: np.ndarray  # the chosen flow from this frame to the key


def guide_error(frame: np.ndarray, key_frame: np.ndarray, flow: np.ndarray, window: int):
    """Squared colour error between `frame` and `key_frame` sampled along `flow`, summed over
    the three channels and averaged over a `window` x `window` box."""
    sampled = warp(key_frame, flow).astype(np.float32)
    difference = frame.astype(np.float32) - sampled
    return cv2.blur((difference * difference).sum(axis=2), (window, window))


def carry_key(
    frames: Mapping[int, np.ndarray],
    key_index: int,
    key_image: np.ndarray,
    targets: Sequence[int],
    flow: FlowFunction,
    settings: PropagationSettings,
    cancel: CancelToken | None = None,
) -> Iterator[tuple[int, Propagated]]:
    """Carry `key_image` (the rendering of frame `key_index`) to each frame of `targets`,
    which must run away from the key one frame at a time."""
    key_frame = frames[key_index]
    composed = valid = key_side = None
    previous, previous_image = key_index, key_image
    for target in targets:
        if cancel is not None:
            cancel.raise_if_cancelled()
        if abs(target - previous) != 1:
            raise ValueError("targets must move away from the key one frame at a time")
        step = flow(target, previous)
        step_valid = consistency_mask(step, flow(previous, target))
        if composed is None:
            composed, valid = step, step_valid
        else:
            composed = step + warp(composed, step)
            valid = step_valid & warp(valid, step, interpolation="nearest")
        error = guide_error(frames[target], key_frame, composed, settings.error_window)
        if settings.reanchor and abs(target - key_index) > 1:
            composed, error = _reanchor(
                frames[target], key_frame, composed, error, flow(target, key_index), settings
            )
        image = warp(key_image, composed)
        if settings.synthesis == "patch":
            from zvstudio.propagate.synthesis import key_guides  # torch, only when used

            key_side = key_side or key_guides(key_frame, key_image)
            temporal = warp(previous_image, step)
            image, error = _synthesized(
                frames[target], key_side, key_image, composed, image, error, temporal, settings
            )
        yield target, Propagated(image, error, valid, composed)
        previous, previous_image = target, image


def _reanchor(frame, key_frame, composed, error, direct, settings):
    """Per pixel, switch to the direct flow where it explains the frame clearly better."""
    direct_error = guide_error(frame, key_frame, direct, settings.error_window)
    better = direct_error < settings.reanchor_margin * error
    chosen = np.where(better[..., None], direct, composed)
    return chosen, np.where(better, direct_error, error)


def _synthesized(frame, key_side, key_image, composed, image, error, temporal, settings):
    """Rebuild the pixels the flow does not explain by guided patch synthesis from the key.

    Elsewhere the flow's single bilinear warp stays: it is sharper than voted patches. The
    seam is feathered so the two do not meet at a hard edge.
    """
    from zvstudio.propagate.synthesis import frame_guides, synthesize

    active = error > settings.synthesis_threshold
    if not active.any():
        return image, error
    height, width = error.shape
    coords = identity_grid(height, width) + composed
    target_side = frame_guides(frame, coords, temporal)
    result = synthesize(key_image, key_side, target_side, coords, active, settings.patch)
    weight = feather(active, settings.patch.patch_size)[..., None]
    mixed = weight * result.image + (1 - weight) * image
    image = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
    return image, np.where(active, result.error, error)


def blend_soft(
    a: Propagated, b: Propagated, weight_a: float, settings: PropagationSettings
) -> np.ndarray:
    """Average the two directions, weighted by temporal distance and by their errors.

    Near a key its own result dominates; where one direction's flow is occluded or its patch
    error is high, the other takes over smoothly (a hard switch would flicker).
    """

    def weights(result: Propagated, temporal: float) -> np.ndarray:
        trust = np.exp(-result.error / settings.blend_sigma)
        coverage = settings.occluded_weight + (1 - settings.occluded_weight) * result.valid
        return cv2.blur(temporal * trust * coverage + 1e-6, (7, 7))

    weight_map_a = weights(a, weight_a)[..., None]
    weight_map_b = weights(b, 1.0 - weight_a)[..., None]
    mixed = (weight_map_a * a.image + weight_map_b * b.image) / (weight_map_a + weight_map_b)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
