"""Keys rendered closer: each key's matte area cut out, rendered at the frame's size and put
back, with its references cut to their own areas."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import make_clip

from zvstudio.cli import main
from zvstudio.engine.matte_keys import SMALLEST, Area, MatteAreaRenderer, matte_area
from zvstudio.engine.render import render, render_key_preview
from zvstudio.engine.request import KeyRendererSpec, RenderRequest
from zvstudio.keyrender import KeyContext, KeyRenderer, RenderedKey
from zvstudio.media import ExportSettings, VideoReader
from zvstudio.media.matte import MatteSpec
from zvstudio.stylize import create_stylizer

W, H = 192, 112


def square_matte(x: int, y: int, side: int, size=(W, H)) -> np.ndarray:
    weights = np.zeros(size[::-1], np.float32)
    weights[y : y + side, x : x + side] = 1.0
    return weights


def write_square_mattes(folder: Path, corners: list[tuple[int, int]], side: int) -> Path:
    """One matte frame per corner: a white square of `side` at (x, y) on black."""
    folder.mkdir(parents=True)
    for number, (x, y) in enumerate(corners):
        image = (square_matte(x, y, side) * 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"matte_{number:04d}.png"), image)
    return folder


def test_the_area_holds_the_matte_with_a_margin_in_the_frames_shape():
    area = matte_area(square_matte(100, 40, 20))
    assert area is not None
    # The square with 7 px (1/16 of 112) around it, widened to the frame's 192:112.
    assert area.x <= 100 - 7 and area.y <= 40 - 7
    assert area.x + area.width >= 120 + 7 and area.y + area.height >= 60 + 7
    assert abs(area.width / area.height - W / H) < 0.02
    # Centred on the square.
    assert abs((area.x + area.width / 2) - 110) <= 1 and abs((area.y + area.height / 2) - 50) <= 1


def test_the_area_stays_inside_the_frame_and_is_never_tiny():
    corner = matte_area(square_matte(0, 0, 30))
    assert corner.x == 0 and corner.y == 0
    edge = matte_area(square_matte(W - 30, H - 30, 30))
    assert edge.x + edge.width == W and edge.y + edge.height == H
    dot = matte_area(square_matte(90, 50, 2))
    assert (dot.width, dot.height) == (round(W * SMALLEST), round(H * SMALLEST))
    assert dot.x <= 90 and dot.x + dot.width >= 92


def test_an_empty_or_nearly_whole_matte_renders_the_whole_frame():
    assert matte_area(np.zeros((H, W), np.float32)) is None
    assert matte_area(np.full((H, W), 0.01, np.float32)) is None  # invisible at 8 bits
    assert matte_area(square_matte(5, 5, 100)) is None  # 100 + margins: 95% of the height


def test_cut_and_paste_scale_the_area():
    frame = np.random.default_rng(0).integers(0, 255, (H, W, 3), np.uint8)
    area = Area(40, 20, 96, 56)
    cut = area.cut(frame)
    assert cut.shape == frame.shape
    expected = cv2.resize(frame[20:76, 40:136], (W, H), interpolation=cv2.INTER_LANCZOS4)
    assert np.array_equal(cut, expected)
    pasted = area.paste(frame, np.zeros_like(frame))
    assert pasted[20:76, 40:136].max() == 0
    outside = np.ones((H, W), bool)
    outside[20:76, 40:136] = False
    assert np.array_equal(pasted[outside], frame[outside])


class Recording(KeyRenderer):
    """Inverts what it is given and remembers each call's frame and references."""

    name = "recording"
    uses_references = True

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, KeyContext]] = []

    def settings_key(self) -> str:
        return "recording"

    def render(self, frame, context, progress=None, cancel=None):
        self.calls.append((frame, context))
        return 255 - frame


def test_each_key_and_its_references_are_cut_to_their_own_areas(tmp_path):
    corners = [(10, 10), (60, 30), (150, 70)]
    matte = write_square_mattes(tmp_path / "matte", corners, 24)
    base = Recording()
    renderer = MatteAreaRenderer(base, MatteSpec(matte, crop=True), len(corners))
    frames = [np.random.default_rng(n).integers(0, 255, (H, W, 3), np.uint8) for n in range(3)]
    areas = [matte_area(square_matte(x, y, 24)) for x, y in corners]

    anchor = RenderedKey(0, frames[0], renderer.render(frames[0], KeyContext(0)))
    seen, context = base.calls[0]
    assert context.anchor is None and np.array_equal(seen, areas[0].cut(frames[0]))
    # Outside its area the key is the frame; inside, the render scaled back.
    assert np.array_equal(anchor.result, areas[0].paste(frames[0], 255 - seen))

    second = RenderedKey(1, frames[1], renderer.render(frames[1], KeyContext(1, anchor, anchor)))
    _, context = base.calls[1]
    assert context.previous is context.anchor  # one reference, still one
    assert np.array_equal(context.anchor.source, areas[0].cut(frames[0]))
    assert np.array_equal(context.anchor.result, areas[0].cut(anchor.result))

    renderer.render(frames[2], KeyContext(2, anchor, second))
    seen, context = base.calls[2]
    assert np.array_equal(seen, areas[2].cut(frames[2]))
    assert np.array_equal(context.previous.source, areas[1].cut(frames[1]))
    assert np.array_equal(context.previous.result, areas[1].cut(second.result))
    assert context.anchor.frame_index == 0


def test_the_key_identity_names_the_matte(tmp_path):
    corners = [(10, 10)] * 3
    one = write_square_mattes(tmp_path / "one", corners, 24)
    other = write_square_mattes(tmp_path / "other", corners, 30)
    base = Recording()
    identity = MatteAreaRenderer(base, MatteSpec(one, crop=True), 3).key_identity(0)
    assert identity.startswith("recording|")
    assert identity == MatteAreaRenderer(base, MatteSpec(one, crop=True), 3).key_identity(0)
    assert identity != MatteAreaRenderer(base, MatteSpec(other, crop=True), 3).key_identity(0)
    inverted = MatteSpec(one, invert=True, crop=True)
    assert identity != MatteAreaRenderer(base, inverted, 3).key_identity(0)


@pytest.fixture
def subject_clip(tmp_path):
    """A clip of 12 frames with a matte square following a subject to the right."""
    clip, _, _ = make_clip(tmp_path / "walk.mp4", count=12)
    corners = [(20 + 8 * n, 30) for n in range(12)]
    return clip, write_square_mattes(tmp_path / "matte", corners, 32), corners


def read_png(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_a_render_with_cropped_keys_styles_the_subject_closer(subject_clip, tmp_path, capsys):
    clip, matte, corners = subject_clip
    render_args = ["render", str(clip), "--style", "pencil", "--every", "6", "-q"]
    matted = [*render_args, "--matte", str(matte)]
    assert main([*matted, "-o", str(tmp_path / "whole")]) == 0
    capsys.readouterr()
    assert main([*matted, "--matte-crop", "-o", str(tmp_path / "closer")]) == 0
    assert "resumed" not in capsys.readouterr().err  # new keys: none came from the cache
    assert main([*matted, "--matte-crop", "-o", str(tmp_path / "again")]) == 0
    assert "0 of 2 keys needed rendering" in capsys.readouterr().err  # from the cache

    x, y = corners[6]
    whole, closer = (read_png(tmp_path / name / "frame_000006.png") for name in ("whole", "closer"))
    with VideoReader(clip) as original:
        frame = original.frame(6)
    # Outside the matte both are the original; inside, the key was drawn at another scale.
    assert np.array_equal(whole[:, :x], frame[:, :x])
    assert np.array_equal(closer[:, :x], frame[:, :x])
    inside = np.s_[y : y + 32, x : x + 32]
    assert np.abs(closer[inside].astype(int) - whole[inside]).mean() > 5
    area = matte_area(square_matte(x, y, 32))
    expected = area.paste(frame, create_stylizer("pencil").render(area.cut(frame), KeyContext(6)))
    assert np.abs(closer[inside].astype(int) - expected[inside]).max() <= 1


def test_the_key_preview_is_cropped_like_the_render(subject_clip, tmp_path):
    clip, matte, corners = subject_clip
    request = RenderRequest(
        clip,
        tmp_path / "out",
        KeyRendererSpec(style="pencil"),
        ExportSettings(format="png"),
        matte=MatteSpec(matte, crop=True),
    )
    preview = render_key_preview(request, 3)
    with VideoReader(clip) as original:
        frame = original.frame(3)
    area = matte_area(square_matte(*corners[3], 32))
    expected = area.paste(frame, create_stylizer("pencil").render(area.cut(frame), KeyContext(3)))
    assert np.array_equal(preview, expected)


def test_a_project_keeps_cropping_its_keys(tmp_path):
    from zvstudio.engine.request import request_from_project
    from zvstudio.project import ClipRef, Project, load_project, save_project

    clip, _, _ = make_clip(tmp_path / "walk.mp4", count=4)
    write_square_mattes(tmp_path / "matte", [(10, 10)] * 4, 20)
    project = Project(clip=ClipRef.from_file(clip))
    project.settings = replace(project.settings, matte=str(tmp_path / "matte"), matte_crop=True)
    save_project(project, tmp_path / "walk.zvs")
    request = request_from_project(load_project(tmp_path / "walk.zvs"), tmp_path / "out.mp4")
    assert request.matte.crop


def test_diffusion_keys_rendered_closer_and_their_status(tmp_path, monkeypatch):
    """The tiny diffusion model renders cropped keys with cropped references, and the
    editor's status (which loads no model) finds them in the cache."""
    from tiny_models import write_tiny_config_dir, write_tiny_diffusers

    from zvstudio.diffusion.sampler import KeySettings
    from zvstudio.engine import preview
    from zvstudio.engine.preview import DiffusionSpec
    from zvstudio.engine.status import render_status

    clip, _, _ = make_clip(tmp_path / "c.mp4", count=7, width=128, height=96)
    corners = [(10 + 6 * n, 20) for n in range(7)]
    folder = tmp_path / "matte"
    folder.mkdir()
    for number, (x, y) in enumerate(corners):
        image = (square_matte(x, y, 24, (128, 96)) * 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"matte_{number:04d}.png"), image)
    spec = DiffusionSpec(
        write_tiny_diffusers(tmp_path / "model"),
        KeySettings(prompt="a red cat", steps=2),
        device="cpu",
        config_dir=write_tiny_config_dir(tmp_path / "config"),
    )
    request = RenderRequest(
        clip,
        tmp_path / "out",
        KeyRendererSpec(kind="diffusion", diffusion=spec),
        ExportSettings(format="png"),
        key_interval=3,
        flow_preset="medium",
        matte=MatteSpec(folder, crop=True),
    )
    result = render(request)
    assert (result.keys, result.rendered_keys) == (3, 3)
    with VideoReader(clip) as original:
        frame, out = original.frame(6), read_png(tmp_path / "out" / "frame_000006.png")
    x, y = corners[6]
    assert np.array_equal(out[:, : x - 10], frame[:, : x - 10])  # the original around it
    assert not np.array_equal(out[y : y + 24, x : x + 24], frame[y : y + 24, x : x + 24])

    def no_loading(*args, **kwargs):
        raise AssertionError("the status must not load the model")

    monkeypatch.setattr(preview, "build_sampler", no_loading)
    assert render_status(request).complete
    uncropped = replace(request, matte=MatteSpec(folder))
    assert set(render_status(uncropped).keys.values()) == {"stale"}
