"""HDR (PQ, HLG) and BT.2020 clips are read as the SDR BT.709 pictures a viewer expects.

The expected values come from the standards' forward formulas (ST 2084's inverse EOTF, BT.2100's
HLG OETF and OOTF, BT.2087's matrices), written here independently of `zvstudio.media.hdr`,
which implements the inverse direction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import make_clip, make_colour_clip

from zvstudio.cli import main
from zvstudio.media import VideoReader, hdr, probe

PQ, HLG, BT2020_10BIT = 16, 18, 14  # H.273 transfer codes
BT2020, BT709 = 9, 1  # H.273 primaries codes
BT709_TO_BT2020 = np.array(  # BT.2087, linear light
    [[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]]
)
BT2020_TO_BT709_PUBLISHED = np.array(
    [[1.6605, -0.5876, -0.0728], [-0.1246, 1.1329, -0.0083], [-0.0182, -0.1006, 1.1187]]
)
REFERENCE_WHITE = 203.0
MID_GREY = 0.18  # of reference white
A_COLOUR = np.array([0.5, 0.2, 0.05])  # linear BT.709, of reference white: inside the gamut


def pq_signal(nits):
    """ST 2084's inverse EOTF."""
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    y = (np.asarray(nits, dtype=np.float64) / 10000.0) ** m1
    return ((c1 + c2 * y) / (1 + c3 * y)) ** m2


def hlg_signal_of_grey(nits):
    """BT.2100's HLG OETF of the scene grey that the 1000 cd/m2 display shows at `nits`."""
    scene = (nits / 1000.0) ** (1 / 1.2)  # a grey's luminance is its value: OOTF = 1000 E^1.2
    if scene <= 1 / 12:
        return math.sqrt(3 * scene)
    a = 0.17883277
    return a * math.log(12 * scene - (1 - 4 * a)) + 0.5 - a * math.log(4 * a)


def sdr_value(linear):
    """The 8-bit BT.1886 (gamma 2.4) signal of linear SDR light."""
    return 255.0 * np.asarray(linear, dtype=np.float64) ** (1 / 2.4)


def patches(*colours) -> np.ndarray:
    """A row of 32 x 32 patches of these non-linear RGB signals."""
    return np.concatenate([np.broadcast_to(c, (32, 32, 3)) for c in colours], axis=1)


def patch_means(frame: np.ndarray) -> np.ndarray:
    count = frame.shape[1] // 32
    return np.array([frame[8:24, 32 * i + 8 : 32 * i + 24].mean((0, 1)) for i in range(count)])


# -- the curves and matrices ---------------------------------------------------------------------
def test_test_formulas_give_the_published_pq_landmarks():
    assert pq_signal(100) == pytest.approx(0.5081, abs=2e-4)
    assert pq_signal(1000) == pytest.approx(0.7518, abs=2e-4)
    assert pq_signal(10000) == pytest.approx(1.0)


@pytest.mark.parametrize("nits", [0.05, 1.0, 100.0, 203.0, 1000.0, 4000.0, 10000.0])
def test_pq_decodes_to_the_light_it_encodes(nits):
    assert hdr.pq_to_nits(pq_signal(nits)) == pytest.approx(nits, rel=1e-6)


def test_hlg_reference_white_is_203_nits_and_full_signal_the_display_peak():
    grey = np.full((1, 1, 3), 0.75, np.float32)
    assert hdr.hlg_ootf(hdr.hlg_to_scene(grey).astype(np.float32))[0, 0] == pytest.approx(
        [203.0] * 3, rel=5e-3
    )  # BT.2408: 75 % HLG is HDR reference white
    peak = np.ones((1, 1, 3), np.float32)
    assert hdr.hlg_ootf(hdr.hlg_to_scene(peak).astype(np.float32))[0, 0] == pytest.approx(
        [1000.0] * 3, rel=1e-4
    )
    # The square-root and logarithmic parts meet at signal 0.5, scene light 1/12.
    assert hdr.hlg_to_scene(np.array([0.5, 0.5 + 1e-9])) == pytest.approx([1 / 12] * 2, rel=1e-6)


@pytest.mark.parametrize("nits", [0.5, 20.0, 203.0, 600.0])
def test_hlg_greys_decode_to_the_light_they_encode(nits):
    signal = np.full((1, 1, 3), hlg_signal_of_grey(nits), np.float32)
    scene = hdr.hlg_to_scene(signal).astype(np.float32)
    assert hdr.hlg_ootf(scene)[0, 0, 0] == pytest.approx(nits, rel=2e-4)


def test_gamut_matrix_is_bt2087s_derived_from_the_primaries():
    assert np.allclose(hdr.BT2020_TO_BT709, BT2020_TO_BT709_PUBLISHED, atol=2e-4)
    assert np.allclose(hdr.BT2020_TO_BT709.sum(axis=1), 1.0, atol=1e-5)  # white stays white
    assert np.allclose(hdr.BT2020_TO_BT709 @ BT709_TO_BT2020, np.eye(3), atol=1e-3)


def test_shoulder_keeps_what_is_below_the_knee_and_compresses_highlights_below_white():
    below = np.linspace(0, hdr.KNEE, 50, dtype=np.float32)
    assert np.allclose(hdr.shoulder(below), below)
    above = np.linspace(hdr.KNEE, 50, 2000, dtype=np.float32)
    curve = hdr.shoulder(above)
    assert np.all(np.diff(curve) > 0) and np.all(curve < 1.0)
    step = np.float32(1e-3)  # slope 1 on both sides of the knee: no visible crease
    knee = np.float32(hdr.KNEE)
    assert (hdr.shoulder(knee + step) - knee) / step == pytest.approx(1.0, abs=1e-2)
    highlights = hdr.shoulder(np.array([400, 800], np.float32) / REFERENCE_WHITE)
    assert sdr_value(highlights[1]) - sdr_value(highlights[0]) > 2  # still two greys apart


def test_roll_off_keeps_the_hue_of_a_bright_colour():
    light = np.array([[[3.0, 1.5, 0.75]]], np.float32)
    rolled = hdr.roll_off_highlights(light)[0, 0]
    assert rolled[0] == pytest.approx(hdr.shoulder(np.float32(3.0)))
    assert rolled / rolled[0] == pytest.approx([1.0, 0.5, 0.25], rel=1e-5)


# -- clips ---------------------------------------------------------------------------------------
def read_first_frame(path) -> np.ndarray:
    return VideoReader(path).frame(0)


def test_a_pq_clip_reads_as_sdr_bt709(tmp_path):
    colour_nits = REFERENCE_WHITE * (BT709_TO_BT2020 @ A_COLOUR)
    signal = patches(
        pq_signal(0.0),
        pq_signal(MID_GREY * REFERENCE_WHITE),
        pq_signal(REFERENCE_WHITE),
        pq_signal(colour_nits),
        pq_signal(400.0),
        pq_signal(800.0),
    )
    path = make_colour_clip(tmp_path / "hdr10.mkv", signal, PQ, BT2020)
    assert probe(path).colour == "HDR (PQ)"
    black, grey, white, colour, bright, brighter = patch_means(read_first_frame(path))
    assert black.max() <= 1
    assert grey == pytest.approx([sdr_value(MID_GREY)] * 3, abs=2)  # as an SDR camera's grey
    assert white.min() >= 236 and white.max() <= 248  # near white, room left for highlights
    assert colour == pytest.approx(sdr_value(A_COLOUR), abs=3)  # the same colour, in BT.709
    assert white.mean() < bright.mean() < brighter.mean() < 255


def test_an_hlg_clip_reads_as_sdr_and_matches_pq(tmp_path):
    signal = patches(
        *(
            hlg_signal_of_grey(nits)
            for nits in (0.0, MID_GREY * REFERENCE_WHITE, REFERENCE_WHITE, 1000.0)
        )
    )
    path = make_colour_clip(tmp_path / "phone.mov", signal, HLG, BT2020)
    assert probe(path).colour == "HDR (HLG)"
    black, grey, white, peak = patch_means(read_first_frame(path))
    assert black.max() <= 1
    assert grey == pytest.approx([sdr_value(MID_GREY)] * 3, abs=2)
    expected_white = sdr_value(hdr.shoulder(np.float32(1.0)))  # as PQ's reference white
    assert white == pytest.approx([expected_white] * 3, abs=2)
    assert white.mean() < peak.mean() and peak.min() >= 250


def test_an_sdr_bt2020_clip_gets_bt709_colours_and_keeps_its_greys(tmp_path):
    bt2020_light = BT709_TO_BT2020 @ A_COLOUR
    signal = patches(bt2020_light ** (1 / 2.4), np.full(3, 0.5))
    path = make_colour_clip(tmp_path / "wide.mov", signal, BT2020_10BIT, BT2020)
    assert probe(path).colour == "BT.2020"
    colour, grey = patch_means(read_first_frame(path))
    assert colour == pytest.approx(sdr_value(A_COLOUR), abs=3)
    assert grey == pytest.approx([127.5] * 3, abs=1.5)


def test_scaled_reads_convert_too(tmp_path):
    signal = patches(*(hlg_signal_of_grey(n) for n in (MID_GREY * REFERENCE_WHITE,) * 2))
    path = make_colour_clip(tmp_path / "phone.mov", signal, HLG, BT2020)
    small = VideoReader(path, output_size=(32, 16)).frame(0)
    assert small.shape == (16, 32, 3)
    assert small.mean() == pytest.approx(sdr_value(MID_GREY), abs=2)


def test_sdr_clips_are_not_converted(tmp_path):
    path, _, _ = make_clip(tmp_path / "sdr.mp4", count=2)
    assert probe(path).colour == ""


def test_probe_says_how_an_hdr_clip_is_read(tmp_path, capsys):
    path = make_colour_clip(tmp_path / "phone.mov", patches(np.full(3, 0.5)), HLG, BT2020)
    assert main(["probe", str(path)]) == 0
    out = capsys.readouterr().out
    assert "HDR (HLG) clip, converted to SDR BT.709 (highlights rolled off)" in out
    assert main(["probe", str(path), "--json"]) == 0
    assert '"colour": "HDR (HLG)"' in capsys.readouterr().out


def test_a_render_of_an_hdr_clip_says_so_and_exports_sdr(tmp_path, capsys):
    grey = hlg_signal_of_grey(MID_GREY * REFERENCE_WHITE)
    path = make_colour_clip(tmp_path / "phone.mov", patches(grey, grey), HLG, BT2020, count=6)
    out = tmp_path / "out.mp4"
    assert main(["render", str(path), "--style", "posterize", "-o", str(out)]) == 0
    assert "HDR (HLG) clip, converted to SDR BT.709" in capsys.readouterr().err
    assert probe(out).colour == "" and probe(out).frame_count == 6  # tagged BT.709
    assert VideoReader(out).frame(3).mean() == pytest.approx(sdr_value(MID_GREY), abs=4)


def test_converting_in_bands_of_rows_gives_the_whole_frames_result():
    from zvstudio.media.hdr import _band_to_sdr, to_sdr

    rng = np.random.default_rng(3)
    signal = (rng.random((300, 64, 3)) * 65535).astype(np.uint16)  # 128 + 128 + 44 rows
    for transfer, primaries in ((18, 9), (16, 9), (1, 9)):
        whole = _band_to_sdr(signal, transfer, primaries)
        assert np.array_equal(to_sdr(signal, transfer, primaries), whole)
