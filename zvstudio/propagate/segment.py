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

import numpy as np

from zvstudio.flow.ops import feather, identity_grid
from zvstudio.progress import CancelToken
from zvstudio.propagate.pixels import NUMPY, Pixels
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
    # Follow the clip's brightness changes (fades, dips to black, exposure drift): a carried key
    # is scaled by the frame's brightness relative to the key's frame (`brightness_gain`).
    follow_brightness: bool = True
    # Screened-Poisson fusion after the blend (METHOD 1.4): the blend's colours with the
    # gradients of the direction that dominates each pixel, which restores the detail that
    # averaging two slightly misaligned results softens.
    poisson: bool = False
    patch: SynthesisSettings = field(default_factory=SynthesisSettings)
    # Where the per-pixel work runs ("auto": a CUDA GPU when torch sees one; see `pixels`).
    # Not part of the repr, which keys cached segments: the devices differ only by rounding.
    device: str = field(default="auto", repr=False)


@dataclass
class Propagated:
    """One direction's result for one frame (arrays of the `Pixels` backend that made it)."""

    image: np.ndarray  # RGB uint8
    error: np.ndarray  # float32 guide error per pixel (windowed)
    valid: np.ndarray  # bool: the flow chain was consistent here
    flow: np.ndarray  # the chosen flow from this frame to the key


def guide_error(
    frame: np.ndarray,
    key_frame: np.ndarray,
    flow: np.ndarray,
    window: int,
    gain: float = 1.0,
    pixels: Pixels = NUMPY,
):
    """Squared colour error between `frame` and `key_frame` sampled along `flow` (times
    `gain`), summed over the three channels and averaged over a `window` x `window` box."""
    return _error_of(frame, pixels.warp(key_frame, flow), window, gain, pixels)


def _error_of(frame, sampled, window: int, gain: float, pixels: Pixels):
    """`guide_error` with the key's frame already `sampled` along the flow."""
    difference = pixels.as_float(frame) - pixels.as_float(sampled) * float(gain)
    return pixels.box_blur(pixels.channel_sum(difference * difference), window)


def carry_key(
    frames: Mapping[int, np.ndarray],
    key_index: int,
    key_image: np.ndarray,
    targets: Sequence[int],
    flow: FlowFunction,
    settings: PropagationSettings,
    cancel: CancelToken | None = None,
    follows_brightness: float = 1.0,
    pixels: Pixels = NUMPY,
) -> Iterator[tuple[int, Propagated]]:
    """Carry `key_image` (the rendering of frame `key_index`) to each frame of `targets`,
    which must run away from the key one frame at a time.

    Where the clip's brightness changes (`brightness_gain`), the carried image changes with it
    by the fraction `follows_brightness` (1: the style keeps the input's brightness, as most
    renders do; 0: it does not, as a pencil sketch's paper stays white; see
    `style_follows_brightness`). The guide error compares the frame with the key's frame
    changed the same way: how well the key's rendering fits, as it will be shown.

    The results are arrays of `pixels`, the backend that does the per-pixel work; `frames`,
    `key_image` and the flows are numpy arrays, uploaded as they are used."""
    key_frame, key_on_device = pixels.upload(frames[key_index]), pixels.upload(key_image)
    composed = valid = key_side = None
    previous, previous_image = key_index, key_on_device

    def flow_to(i: int, j: int):
        return pixels.upload(flow(i, j))

    for target in targets:
        if cancel is not None:
            cancel.raise_if_cancelled()
        if abs(target - previous) != 1:
            raise ValueError("targets must move away from the key one frame at a time")
        step = flow_to(target, previous)
        step_valid = pixels.consistency_mask(step, flow_to(previous, target))
        if composed is None:
            composed, valid = step, step_valid
        else:
            composed = step + pixels.warp(composed, step)
            valid = step_valid & pixels.warp(valid, step, interpolation="nearest")
        frame = pixels.upload(frames[target])
        sampled = pixels.warp(key_frame, composed)  # both measures below compare with it
        gain = 1.0
        if settings.follow_brightness:
            gain = _gain_of(frame, sampled, valid, GAIN_TOLERANCE, pixels)
            gain = 1.0 + follows_brightness * (gain - 1.0)
        error = _error_of(frame, sampled, settings.error_window, gain, pixels)
        if settings.reanchor and abs(target - key_index) > 1:
            direct = flow_to(target, key_index)
            composed, error = _reanchor(
                frame, key_frame, composed, error, direct, settings, gain, pixels
            )
        image = pixels.warp(key_on_device, composed)
        if settings.synthesis == "patch":
            from zvstudio.propagate.synthesis import key_guides  # torch, only when used

            key_side = key_side or key_guides(frames[key_index], key_image)
            temporal = pixels.warp(previous_image, step)
            image, error = _synthesized(
                frame, key_side, key_image, composed, image, error, temporal, settings, pixels
            )
        yield target, Propagated(_brightened(image, gain, pixels), error, valid, composed)
        # The key's own brightness goes on: the patch synthesis' temporal guide compares it
        # with the key's rendering.
        previous, previous_image = target, image


def _reanchor(frame, key_frame, composed, error, direct, settings, gain=1.0, pixels=NUMPY):
    """Per pixel, switch to the direct flow where it explains the frame clearly better."""
    direct_error = guide_error(frame, key_frame, direct, settings.error_window, gain, pixels)
    better = direct_error < settings.reanchor_margin * error
    chosen = pixels.where(better[..., None], direct, composed)
    return chosen, pixels.where(better, direct_error, error)


def _synthesized(frame, key_side, key_image, composed, image, error, temporal, settings, pixels):
    """Rebuild the pixels the flow does not explain by guided patch synthesis from the key.

    Elsewhere the flow's single bilinear warp stays: it is sharper than voted patches. The
    seam is feathered so the two do not meet at a hard edge. The synthesis takes numpy
    arrays (it moves them to its own device, `settings.patch.device`).
    """
    from zvstudio.propagate.synthesis import frame_guides, synthesize

    frame, composed, image, error, temporal = map(
        pixels.download, (frame, composed, image, error, temporal)
    )
    active = error > settings.synthesis_threshold
    if not active.any():
        return pixels.upload(image), pixels.upload(error)
    height, width = error.shape
    coords = identity_grid(height, width) + composed
    target_side = frame_guides(frame, coords, temporal)
    result = synthesize(key_image, key_side, target_side, coords, active, settings.patch)
    weight = feather(active, settings.patch.patch_size)[..., None]
    mixed = weight * result.image + (1 - weight) * image
    image = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
    return pixels.upload(image), pixels.upload(np.where(active, result.error, error))


def soft_weights(
    a: Propagated,
    b: Propagated,
    weight_a: float,
    settings: PropagationSettings,
    pixels: Pixels = NUMPY,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel weights of the two directions: temporal distance times trust in each.

    Near a key its own result dominates; where one direction's flow is occluded or its patch
    error is high, the other takes over smoothly (a hard switch would flicker).
    """

    def weights(result: Propagated, temporal: float) -> np.ndarray:
        trust = pixels.exp(-result.error / settings.blend_sigma)
        coverage = settings.occluded_weight + (1 - settings.occluded_weight) * result.valid
        return pixels.box_blur(temporal * trust * coverage + 1e-6, 7)

    return weights(a, weight_a), weights(b, 1.0 - weight_a)


def blend_soft(
    a: Propagated,
    b: Propagated,
    weight_a: float,
    settings: PropagationSettings,
    pixels: Pixels = NUMPY,
) -> np.ndarray:
    """Average the two directions with their `soft_weights`."""
    weight_maps = soft_weights(a, b, weight_a, settings, pixels)
    return weighted_mix(a.image, b.image, *weight_maps, pixels)


def weighted_mix(
    image_a: np.ndarray,
    image_b: np.ndarray,
    weight_map_a: np.ndarray,
    weight_map_b: np.ndarray,
    pixels: Pixels = NUMPY,
) -> np.ndarray:
    """Per-pixel weighted average of two RGB uint8 images (weights need not sum to 1)."""
    weight_map_a, weight_map_b = weight_map_a[..., None], weight_map_b[..., None]
    mixed = (weight_map_a * image_a + weight_map_b * image_b) / (weight_map_a + weight_map_b)
    return pixels.to_uint8(mixed)


# Below this mean level (0-255) a key's frame is too dark to say how the brightness changed.
DARK_FRAME_LEVEL = 4.0
# Two key frames whose brightness differs by this fraction show how their style responds to it.
TELLING_CHANGE = 0.2
# Steady clips measure brightness gains within 2 % of 1 (the shared clips, up to 9 frames from
# the key): changes up to this are noise.
GAIN_TOLERANCE = 0.03


def brightness_gain(
    frame: np.ndarray,
    key_frame: np.ndarray,
    flow: np.ndarray,
    valid: np.ndarray,
    tolerance: float = GAIN_TOLERANCE,
    pixels: Pixels = NUMPY,
) -> float:
    """How much brighter `frame` is than `key_frame` sampled along `flow`: the ratio of their
    mean levels over the `valid` pixels, with the first `tolerance` of any change ignored.

    A fade makes every frame a scaled copy of its neighbour, which no flow can explain: without
    the gain both directions' errors explode and the blend switches between a black key and a
    bright one. Steady clips measure within a percent or two of 1, which the tolerance leaves
    alone: their results are exactly what they were without it. Larger changes are shrunk by
    the tolerance, not cut off, so a slow drift past it does not jump. A black key frame gives
    1: it says nothing, and its large error hands the frame to the other key.
    """
    return _gain_of(frame, pixels.warp(key_frame, flow), valid, tolerance, pixels)


def _gain_of(frame, sampled, valid, tolerance: float, pixels: Pixels) -> float:
    """`brightness_gain` with the key's frame already `sampled` along the flow."""
    mask = valid if pixels.mean(valid) > 0.01 else None
    key_level = pixels.mean(sampled, mask)
    if key_level < DARK_FRAME_LEVEL:
        return 1.0
    change = pixels.mean(frame, mask) / key_level - 1.0
    return 1.0 + np.sign(change) * max(abs(change) - tolerance, 0.0)


def style_follows_brightness(
    frame_a: np.ndarray, key_a: np.ndarray, frame_b: np.ndarray, key_b: np.ndarray
) -> float:
    """How much two keys' renderings follow their frames' brightness, from 0 to 1: the
    relative change of the renderings' mean level over that of the frames', when the frames
    differ enough to tell (a fade across the segment); else 1, what most styles do."""
    frame_levels = float(frame_a.mean()), float(frame_b.mean())
    if max(frame_levels) < DARK_FRAME_LEVEL:
        return 1.0
    frame_change = (frame_levels[1] - frame_levels[0]) / max(frame_levels)
    if abs(frame_change) < TELLING_CHANGE:
        return 1.0
    key_levels = float(key_a.mean()), float(key_b.mean())
    key_change = (key_levels[1] - key_levels[0]) / max(max(key_levels), DARK_FRAME_LEVEL)
    return float(np.clip(key_change / frame_change, 0.0, 1.0))


def _brightened(image: np.ndarray, gain: float, pixels: Pixels = NUMPY) -> np.ndarray:
    if gain == 1.0:
        return image
    return pixels.to_uint8(pixels.as_float(image) * float(gain))
