"""Tests for the weightless key renderers in zvstudio.stylize."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from zvstudio.errors import RenderCancelled, ZvsError
from zvstudio.keyrender import KeyContext
from zvstudio.progress import CancelToken, Progress
from zvstudio.stylize import (
    CartoonRenderer,
    CartoonSettings,
    PaintedKeyRenderer,
    PencilRenderer,
    PosterizeRenderer,
    StylizerRenderer,
    available_styles,
    create_stylizer,
    describe_style,
    register_style,
    registry,
)

HOUSE = (90, 140, 250, 260)  # x0, y0, x1, y1 of the filled rectangle in `scene`
VARIANTS = [(name, {}) for name in available_styles()] + [
    ("stylization", {"filter": "normconv"}),
    ("pencil", {"color": True}),
    ("cartoon", {"outlines": False}),
    ("oil", {"levels": 8}),
    ("posterize", {"smooth": False}),
]


def scene(width: int = 640, height: int = 360) -> np.ndarray:
    """Gradients, flat shapes and a noise texture: an RGB uint8 test frame."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([60 + 120 * x / width, 110 + 80 * y / height, 200 - 60 * y / height], -1)
    ground = y > height * 0.62
    image[ground, 0] = (70 + 40 * np.sin(x / 17.0))[ground]
    image[ground, 1] = (120 + 30 * np.cos(y / 9.0))[ground]
    image[ground, 2] = 50
    image += rng.normal(0, 6, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    x0, y0, x1, y1 = HOUSE
    cv2.rectangle(image, (x0, y0), (x1, y1), (180, 60, 50), -1)
    cv2.circle(image, (470, 90), 45, (250, 210, 60), -1, cv2.LINE_AA)
    cv2.ellipse(image, (400, 280), (90, 35), 15, 0, 360, (40, 90, 200), -1, cv2.LINE_AA)
    return image


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return scene()


def render(renderer, image: np.ndarray, index: int = 0) -> np.ndarray:
    return renderer.render(image, KeyContext(frame_index=index))


# --- every style ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), VARIANTS)
def test_style_output_is_a_changed_deterministic_frame(name, params, frame):
    before = frame.copy()
    first = render(create_stylizer(name, **params), frame)
    second = render(create_stylizer(name, **params), frame)

    assert first.shape == frame.shape and first.dtype == np.uint8
    assert np.array_equal(frame, before), "the input frame must not be modified"
    assert np.abs(first.astype(int) - frame).mean() > 5, "the style barely changed the frame"
    assert np.array_equal(first, second), "equal inputs must give byte-identical output"
    if name != "pencil":  # colours keep their place: no RGB/BGR mix-up
        x0, y0, x1, y1 = HOUSE
        red, _, blue = first[y0 + 15 : y1 - 15, x0 + 15 : x1 - 15].reshape(-1, 3).mean(axis=0)
        assert red > blue + 50


@pytest.mark.parametrize("name", available_styles())
def test_style_handles_tiny_and_odd_sized_frames(name):
    for height, width in [(1, 1), (5, 7), (33, 17)]:
        image = scene(640, 360)[:height, :width]  # a non-contiguous view, too
        assert render(create_stylizer(name), image).shape == (height, width, 3)


def test_styles_leave_opencv_thread_count_alone(frame):
    threads = cv2.getNumThreads()
    for name in available_styles():
        render(create_stylizer(name), frame)
    assert cv2.getNumThreads() == threads


def test_render_reports_one_key_of_progress(frame):
    reports: list[Progress] = []
    CartoonRenderer().render(frame, KeyContext(3), progress=reports.append)
    assert reports == [Progress(stage="key", done=1, total=1)]


def test_cancelled_token_stops_before_work(frame):
    token = CancelToken()
    token.cancel()
    reports: list[Progress] = []
    with pytest.raises(RenderCancelled):
        CartoonRenderer().render(frame, KeyContext(0), reports.append, cancel=token)
    assert reports == []


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)],
)
def test_render_rejects_non_rgb_uint8_frames(bad):
    with pytest.raises(ValueError):
        render(CartoonRenderer(), bad)


# --- particular styles --------------------------------------------------------------------


def distinct_colours(image: np.ndarray) -> int:
    return len(np.unique(image.reshape(-1, 3), axis=0))


def test_cartoon_quantises_to_the_palette_size(frame):
    assert distinct_colours(frame) > 10_000
    flat = render(CartoonRenderer(CartoonSettings(colors=6, outlines=False)), frame)
    assert 3 <= distinct_colours(flat) <= 6
    inked = render(CartoonRenderer(CartoonSettings(colors=6)), frame)
    assert distinct_colours(inked) <= 6 + 1  # plus the outline ink


def test_cartoon_draws_dark_outlines_on_shape_boundaries(frame):
    out = render(CartoonRenderer(), frame)
    dark = out.max(axis=2) < 40
    x0, y0, x1, y1 = HOUSE
    # The house's left and top edges (a band of +-3 px), and its inside away from the edges.
    # The house's left edge against the sky (the ground below is as bright as the house), its
    # top edge, each as a band of +-3 px, and its inside away from the edges.
    left = dark[y0 + 10 : 215, x0 - 3 : x0 + 4].any(axis=1)
    top = dark[y0 - 3 : y0 + 4, x0 + 10 : x1 - 10].any(axis=0)
    assert left.mean() > 0.9 and top.mean() > 0.9, "the boundary should be outlined"
    assert dark[y0 + 15 : y1 - 15, x0 + 15 : x1 - 15].mean() < 0.01
    assert not dark.all()


def test_pencil_grey_mode_is_greyscale_and_colour_mode_is_not(frame):
    grey = render(PencilRenderer.from_params(color=False), frame).astype(int)
    colour = render(PencilRenderer.from_params(color=True), frame).astype(int)
    assert np.abs(grey - grey[..., :1]).max() == 0
    assert np.abs(colour - colour.mean(axis=2, keepdims=True)).mean() > 3


@pytest.mark.parametrize("levels", [2, 3, 5, 16])
def test_posterize_gives_the_requested_levels(levels):
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    ramp = np.ascontiguousarray(np.repeat(ramp, 4, axis=0))
    out = render(PosterizeRenderer.from_params(levels=levels, smooth=False), ramp)
    expected = np.rint(np.arange(levels) * 255 / (levels - 1))
    for channel in range(3):
        assert np.array_equal(np.unique(out[..., channel]), expected)
    assert np.abs(out.astype(int) - ramp).max() <= 255 / (levels - 1)


def test_posterize_with_smoothing_stays_on_the_levels(frame):
    out = render(PosterizeRenderer.from_params(levels=4), frame)
    assert set(np.unique(out)) <= {0, 85, 170, 255}


# --- settings keys and the registry -------------------------------------------------------


def test_settings_key_identifies_style_version_and_settings():
    keys = {create_stylizer(name).settings_key() for name in available_styles()}
    assert len(keys) == len(available_styles())

    key = create_stylizer("cartoon", colors=8).settings_key()
    assert key.startswith("stylize:cartoon:v1:")
    assert key == create_stylizer("cartoon").settings_key()  # 8 is the default
    assert key == create_stylizer("cartoon", colors="8", outlines="yes").settings_key()
    assert key != create_stylizer("cartoon", colors=7).settings_key()
    sigma = create_stylizer("oil", sigma_s=60).settings_key()
    assert sigma == create_stylizer("oil", sigma_s=60.0).settings_key()
    assert sigma != create_stylizer("oil", sigma_s=61).settings_key()


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        CartoonRenderer().settings.colors = 3


def test_registry_lists_and_describes_the_builtin_styles():
    assert {"stylization", "pencil", "cartoon", "oil", "posterize"} <= set(available_styles())
    for name in available_styles():
        description = describe_style(name)
        assert description and "\n" not in description
        assert isinstance(create_stylizer(name), StylizerRenderer)


def test_registry_rejects_unknown_styles_and_parameters():
    with pytest.raises(ZvsError, match="unknown style 'watercolor'") as info:
        create_stylizer("watercolor")
    assert all(name in str(info.value) for name in available_styles())
    with pytest.raises(ZvsError, match="colours") as info:
        create_stylizer("cartoon", colours=8)
    assert "colors" in str(info.value)  # the hint names the valid parameters
    with pytest.raises(ZvsError):
        describe_style("nope")


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("cartoon", {"colors": 1}),
        ("cartoon", {"colors": 2.5}),
        ("cartoon", {"line_size": 8}),
        ("pencil", {"color": "maybe"}),
        ("stylization", {"filter": "fancy"}),
        ("oil", {"sigma_r": float("nan")}),
    ],
)
def test_registry_rejects_bad_parameter_values(name, params):
    with pytest.raises(ZvsError, match=next(iter(params))):
        create_stylizer(name, **params)


def test_plugins_can_register_styles(monkeypatch, frame):
    monkeypatch.setattr(registry, "_styles", dict(registry._styles))

    def invert(strength: int = 1) -> PosterizeRenderer:
        return PosterizeRenderer.from_params(levels=2 + strength)

    register_style("my-style", invert, "A plugin style.")
    assert "my-style" in available_styles()
    assert describe_style("my-style") == "A plugin style."
    assert create_stylizer("my-style", strength=2).settings.levels == 4
    with pytest.raises(ZvsError, match="strenght"):
        create_stylizer("my-style", strenght=2)
    with pytest.raises(ValueError, match="already registered"):
        register_style("my-style", invert, "again")
    with pytest.raises(ValueError):
        register_style("Bad Name", invert, "x")


# --- painted keys -------------------------------------------------------------------------


def write_png(path: Path, image: np.ndarray) -> Path:
    """Write an RGB(A) or grey image, in OpenCV's BGR(A) channel order."""
    if image.ndim == 3:
        code = cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        image = cv2.cvtColor(image, code)
    assert cv2.imwrite(str(path), image)
    return path


def painting(width: int = 640, height: int = 360) -> np.ndarray:
    return cv2.cvtColor(scene(width, height), cv2.COLOR_RGB2HSV)  # any different picture


def test_painted_key_loads_the_png_for_its_frame(tmp_path, frame):
    paint = painting()
    renderer = PaintedKeyRenderer({12: write_png(tmp_path / "k12.png", paint)})
    reports: list[Progress] = []
    out = renderer.render(frame, KeyContext(12), reports.append)
    assert np.array_equal(out, paint)
    assert reports == [Progress(stage="key", done=1, total=1)]
    assert renderer.key_frames == [12]
    with pytest.raises(ZvsError, match="frame 3 has no painted key"):
        render(renderer, frame, index=3)


def test_painted_key_composites_rgba_over_the_frame(tmp_path, frame):
    paint = np.zeros((360, 640, 4), np.uint8)
    paint[..., :3] = (250, 20, 30)
    paint[:, 320:, 3] = 255  # right half opaque, left half transparent
    paint[:100, :100, 3] = 128
    path = write_png(tmp_path / "rgba.png", paint)
    out = render(PaintedKeyRenderer({0: path}), frame).astype(int)
    assert np.array_equal(out[:, 320:], paint[:, 320:, :3])
    assert np.array_equal(out[100:, :320], frame[100:, :320])
    half = (paint[:100, :100, :3].astype(int) * 128 + frame[:100, :100].astype(int) * 127) / 255
    assert np.abs(out[:100, :100] - half).max() <= 1


def test_painted_key_reads_16_bit_and_grey_images(tmp_path, frame):
    paint = painting()
    deep = cv2.cvtColor(paint, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    assert cv2.imwrite(str(tmp_path / "deep.png"), deep)
    grey = paint[..., 0]
    renderer = PaintedKeyRenderer(
        {0: tmp_path / "deep.png", 1: write_png(tmp_path / "g.png", grey)}
    )
    assert np.array_equal(render(renderer, frame, 0), paint)
    assert np.array_equal(render(renderer, frame, 1), np.repeat(grey[..., None], 3, axis=2))


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (320, 180), (643, 360)])
def test_painted_key_is_resized_when_the_aspect_ratio_matches(tmp_path, frame, width, height):
    paint = cv2.resize(painting(), (width, height), interpolation=cv2.INTER_AREA)
    out = render(PaintedKeyRenderer({0: write_png(tmp_path / "p.png", paint)}), frame)
    assert out.shape == frame.shape
    expected = cv2.resize(paint, (640, 360), interpolation=cv2.INTER_LINEAR).astype(int)
    assert np.abs(out.astype(int) - expected).mean() < 8


def test_painted_key_with_another_aspect_ratio_is_a_clear_error(tmp_path, frame):
    path = write_png(tmp_path / "square.png", painting(400, 400))
    with pytest.raises(ZvsError) as info:
        render(PaintedKeyRenderer({0: path}), frame)
    message = str(info.value)
    assert "square.png" in message and "400x400" in message and "640x360" in message


def test_painted_key_missing_or_broken_file_is_a_clear_error(tmp_path, frame):
    with pytest.raises(ZvsError, match=r"gone\.png"):
        render(PaintedKeyRenderer({0: tmp_path / "gone.png"}), frame)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ZvsError, match=r"notes\.png"):
        render(PaintedKeyRenderer({0: tmp_path / "notes.png"}), frame)


def test_painted_settings_key_follows_the_file_contents(tmp_path):
    path = write_png(tmp_path / "k.png", painting())
    renderer = PaintedKeyRenderer({0: path})
    key = renderer.settings_key()
    assert key.startswith("painted:v1:")
    assert key == PaintedKeyRenderer({0: str(path)}).settings_key()

    repainted = painting()
    repainted[0, 0] ^= 1
    write_png(path, repainted)
    assert renderer.settings_key() != key
    path.unlink()
    assert renderer.settings_key() not in (key, "")


def test_painted_key_honours_cancel(tmp_path, frame):
    token = CancelToken()
    token.cancel()
    renderer = PaintedKeyRenderer({0: write_png(tmp_path / "k.png", painting())})
    with pytest.raises(RenderCancelled):
        renderer.render(frame, KeyContext(0), cancel=token)
