"""HDR and wide-gamut video to the SDR BT.709 pictures that the models and the encoders use.

Phones record HDR by default (HLG; HDR10 is PQ), in BT.2020 colours. Read as if it were SDR
BT.709, such footage looks flat, grey and desaturated, and so would every key rendered from it.
Frames are therefore converted the way a colourist's HDR-to-SDR transform does:

1. the signal is decoded to display light (PQ: ST 2084; HLG: BT.2100's inverse OETF and its
   OOTF for a 1000 cd/m2 display), in units of HDR reference white (203 cd/m2, BT.2408), so
   that mid grey comes out as an SDR camera's and reference white near SDR white;
2. BT.2020 colours are converted to BT.709 in linear light (colours outside BT.709 are clipped);
3. highlights above `KNEE` of SDR white roll off smoothly towards it (on the brightest
   channel, so hues are kept), everything below stays as it was;
4. the result is encoded for a BT.1886 display (gamma 2.4), as SDR video is.

Hand-written: FFmpeg's tone mapping needs zimg or libplacebo, which PyAV's wheels lack, and no
maintained Python package converts frames at video rates. With lookup tables and OpenCV, in
bands of rows on every core, a 1080p HLG frame takes about 27 ms on two cores (see `to_sdr`).
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

# Codes of H.273 (the values FFmpeg and PyAV report for a frame's colour tags).
PRIMARIES_BT2020 = 9
TRANSFER_PQ = 16
TRANSFER_HLG = 18

REFERENCE_WHITE_NITS = 203.0  # BT.2408's HDR reference white: diffuse white, graphics
HLG_DISPLAY_PEAK_NITS = 1000.0  # the nominal HLG display (system gamma 1.2)
KNEE = 0.75  # of SDR white: below it HDR pictures are kept as they are, above it compressed
SDR_GAMMA = 2.4  # BT.1886

# ST 2084 (PQ) constants.
_PQ_M1 = 2610 / 16384
_PQ_M2 = 2523 / 4096 * 128
_PQ_C1 = 3424 / 4096
_PQ_C2 = 2413 / 4096 * 32
_PQ_C3 = 2392 / 4096 * 32

# BT.2100 HLG constants and the BT.2020 luminance weights its OOTF uses.
_HLG_A = 0.17883277
_HLG_B = 1 - 4 * _HLG_A
_HLG_C = 0.5 - _HLG_A * math.log(4 * _HLG_A)
_BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], np.float32)

# CIE xy chromaticities of the primaries (red, green, blue) and of the D65 white point.
_BT709_XY = ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060))
_BT2020_XY = ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046))
_D65_XY = (0.3127, 0.3290)

_BAND_ROWS = 128  # rows converted at a time: ~3 MB of float32 light per band at 1080p
_TABLE_TOP = 65535  # 16-bit tables: signals arrive as rgb48, and light is encoded through one
_ENCODING_TABLE = np.round(
    255.0 * (np.arange(_TABLE_TOP + 1) / _TABLE_TOP) ** (2.0 / SDR_GAMMA)
).astype(np.uint8)  # sqrt(light) -> BT.1886 8-bit signal


def needs_conversion(transfer: int, primaries: int) -> bool:
    """Whether frames with these colour tags must be converted to look right as SDR BT.709."""
    return transfer in (TRANSFER_PQ, TRANSFER_HLG) or primaries == PRIMARIES_BT2020


def describe(transfer: int, primaries: int) -> str:
    """A short name of the colour encoding: "HDR (HLG)", "HDR (PQ)", "BT.2020" or ""."""
    if transfer == TRANSFER_HLG:
        return "HDR (HLG)"
    if transfer == TRANSFER_PQ:
        return "HDR (PQ)"
    return "BT.2020" if primaries == PRIMARIES_BT2020 else ""


def sdr_note(colour: str) -> str:
    """What happens to a clip of this colour encoding (a `describe` result), for the user."""
    if colour.startswith("HDR"):
        return f"{colour} clip, converted to SDR BT.709 (highlights rolled off)"
    return f"{colour} clip, converted to BT.709 colours"


def to_sdr(signal: np.ndarray, transfer: int, primaries: int) -> np.ndarray:
    """Convert non-linear RGB `signal` (uint16 H x W x 3, full scale 65535) to SDR BT.709 uint8.

    Bands of rows go to every core, and each band's float intermediates stay in the CPU's
    caches (measured on a 1080p HLG frame, 2 cores: 77 ms whole, 46 ms in bands on one
    thread, 24 ms on two)."""
    result = np.empty(signal.shape, np.uint8)

    def convert(top: int) -> None:
        rows = slice(top, top + _BAND_ROWS)
        result[rows] = _band_to_sdr(signal[rows], transfer, primaries)

    tops = range(0, signal.shape[0], _BAND_ROWS)
    if len(tops) == 1:
        convert(0)
    else:
        list(_band_pool().map(convert, tops))  # list(): wait, and raise what a band raised
    return result


@functools.cache
def _band_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="zvs-hdr")


def _band_to_sdr(signal: np.ndarray, transfer: int, primaries: int) -> np.ndarray:
    light = _decoding_table(transfer)[signal]
    if transfer == TRANSFER_HLG:
        light = hlg_ootf(light) / np.float32(REFERENCE_WHITE_NITS)
    if primaries == PRIMARIES_BT2020:
        light = cv2.transform(light, BT2020_TO_BT709)
    if transfer in (TRANSFER_PQ, TRANSFER_HLG):
        light = roll_off_highlights(light)
    # Looked up by the square root of the light, which keeps the shadows' gradations in 16 bits.
    index = cv2.sqrt(np.clip(light, 0.0, 1.0)) * np.float32(_TABLE_TOP)
    return _ENCODING_TABLE[(index + np.float32(0.5)).astype(np.uint16)]


@functools.cache
def _decoding_table(transfer: int) -> np.ndarray:
    """Every 16-bit signal value's linear light: in units of HDR reference white for PQ,
    scene light for HLG (its OOTF mixes channels, so it is applied after), else BT.1886."""
    signal = np.arange(_TABLE_TOP + 1, dtype=np.float64) / _TABLE_TOP
    if transfer == TRANSFER_PQ:
        light = pq_to_nits(signal) / REFERENCE_WHITE_NITS
    elif transfer == TRANSFER_HLG:
        light = hlg_to_scene(signal)
    else:  # SDR in wide-gamut colours: only the primaries change
        light = signal**SDR_GAMMA
    return light.astype(np.float32)


def pq_to_nits(signal: np.ndarray) -> np.ndarray:
    """ST 2084's EOTF: PQ signal (0..1) to display light in cd/m2 (0..10000)."""
    power = np.power(signal, 1.0 / _PQ_M2)
    ratio = np.maximum(power - _PQ_C1, 0.0) / (_PQ_C2 - _PQ_C3 * power)
    return np.power(ratio, 1.0 / _PQ_M1) * 10000.0


def hlg_to_scene(signal: np.ndarray) -> np.ndarray:
    """BT.2100's HLG inverse OETF: signal (0..1) to normalised scene light (0..1)."""
    high = (np.exp((np.maximum(signal, 0.5) - _HLG_C) / _HLG_A) + _HLG_B) / 12.0
    return np.where(signal <= 0.5, signal * signal / 3.0, high)


def hlg_ootf(scene: np.ndarray) -> np.ndarray:
    """BT.2100's HLG OOTF: scene light (float32 H x W x 3) to display light in cd/m2 on the
    nominal 1000 cd/m2 display (system gamma 1.2, applied to the BT.2020 luminance)."""
    luminance = cv2.transform(scene, _BT2020_LUMA[None])
    gain = cv2.pow(np.maximum(luminance, np.float32(1e-6)), 0.2)  # Y^(1.2 - 1)
    return scene * (gain * np.float32(HLG_DISPLAY_PEAK_NITS))[..., None]


def roll_off_highlights(light: np.ndarray) -> np.ndarray:
    """Scale each pixel so that its brightest channel follows `shoulder` (hues are kept)."""
    brightest = cv2.max(cv2.max(light[..., 0], light[..., 1]), light[..., 2])
    brightest = np.maximum(brightest, np.float32(1e-6))
    return light * (shoulder(brightest) / brightest)[..., None]


def shoulder(value: np.ndarray) -> np.ndarray:
    """The identity up to `KNEE`, then a rational approach to 1 with slope 1 at the knee:
    smooth and increasing, gentle enough that highlights up to a few times reference white keep
    their gradations (400 and 800 cd/m2 stay apart), and never reaching 1, so nothing clips."""
    room = np.float32(1.0 - KNEE)
    excess = np.maximum(value - np.float32(KNEE), np.float32(0.0))
    # Above the knee, KNEE + room * excess / (excess + room); below it, value itself.
    return value - excess + room * excess / (excess + room)


def rgb_to_xyz(primaries_xy, white_xy) -> np.ndarray:
    """The matrix from linear RGB with these primaries and white point to CIE XYZ."""
    columns = np.array([[x / y, 1.0, (1 - x - y) / y] for x, y in primaries_xy]).T
    wx, wy = white_xy
    white = np.array([wx / wy, 1.0, (1 - wx - wy) / wy])
    return columns * np.linalg.solve(columns, white)


BT2020_TO_BT709 = (
    np.linalg.inv(rgb_to_xyz(_BT709_XY, _D65_XY)) @ rgb_to_xyz(_BT2020_XY, _D65_XY)
).astype(np.float32)
