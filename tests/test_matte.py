"""Mattes: read as brightness or alpha, inverted and feathered, and a render or propagation
shown only where the matte says, over the original footage, without rendering again."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import make_clip

from zvstudio.cli import main
from zvstudio.errors import MediaError
from zvstudio.media import VideoReader
from zvstudio.media.matte import MatteReader, MatteSpec, composite

W, H = 192, 112


def write_matte(folder: Path, count: int, image: np.ndarray) -> Path:
    """`count` copies of `image` (grey, RGB or RGBA, as OpenCV writes it) as a PNG sequence."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        cv2.imwrite(str(folder / f"matte_{number:04d}.png"), image)
    return folder


def left_half(value: int = 255, channels: int = 1) -> np.ndarray:
    image = np.zeros((H, W, channels) if channels > 1 else (H, W), np.uint8)
    image[:, : W // 2] = value
    return image


def read_png(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_a_matte_is_its_brightness_or_its_alpha(tmp_path):
    grey = write_matte(tmp_path / "grey", 3, np.full((H, W), 128, np.uint8))
    with MatteReader(MatteSpec(grey), (W, H), 3) as matte:
        assert np.allclose(matte.weights(1), 128 / 255, atol=1e-3)

    # Black pixels, opaque on the left: the alpha decides, not the (black) colour.
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[:, : W // 2, 3] = 255
    alpha = write_matte(tmp_path / "alpha", 3, rgba)
    with MatteReader(MatteSpec(alpha), (W // 2, H // 2), 3) as matte:
        weights = matte.weights(2)
        assert weights.shape == (H // 2, W // 2)
        assert weights[:, :40].min() == 1.0 and weights[:, 56:].max() == 0.0
        assert [n for n, _ in matte.frames(0, 3)] == [0, 1, 2]


def test_a_matte_video_is_read_at_full_range(tmp_path):
    # A white and black matte encoded as H.264 (limited-range YUV) still reads as 1 and 0.
    from zvstudio.media.synth import write_clip

    frames = [np.repeat(left_half()[..., None], 3, axis=2)] * 4
    write_clip(tmp_path / "matte.mp4", iter(frames), fps=25)
    with MatteReader(MatteSpec(tmp_path / "matte.mp4"), (W, H), 4) as matte:
        assert not matte.has_alpha
        weights = matte.weights(3)
    assert weights[:, :80].min() > 0.97 and weights[:, 112:].max() < 0.03


def test_a_webm_matte_with_alpha_gives_its_alpha(tmp_path):
    # VP9 keeps its alpha beside the picture, where FFmpeg's own decoder does not look: the
    # matte (grey everywhere, opaque on the left) must read as its alpha, not as grey.
    import av

    from zvstudio.media import probe

    path = tmp_path / "roto.webm"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuva420p"
        rgba = np.full((H, W, 4), 128, np.uint8)
        rgba[..., 3] = 0
        rgba[:, : W // 2, 3] = 255
        for _ in range(6):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgba, format="rgba")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert probe(path).pixel_format == "yuva420p"
    with MatteReader(MatteSpec(path), (W, H), 6) as matte:
        assert matte.has_alpha
        later, earlier = matte.weights(4), matte.weights(1)  # random access, backwards too
        listed = [n for n, _ in matte.frames(0, 6)]
    for weights in (later, earlier):
        assert weights[:, : W // 2 - 4].min() > 0.98 and weights[:, W // 2 + 4 :].max() < 0.02
    assert listed == list(range(6))
    with VideoReader(path) as reader:  # the picture is the same as without the alpha
        assert np.abs(reader.frame(3).astype(int) - 128).max() <= 2


def test_invert_and_feather_shape_the_matte(tmp_path):
    folder = write_matte(tmp_path / "m", 2, left_half())
    with MatteReader(MatteSpec(folder, invert=True), (W, H), 2) as matte:
        inverted = matte.weights(0)
    assert inverted[:, :90].max() == 0.0 and inverted[:, 100:].min() == 1.0
    with MatteReader(MatteSpec(folder, feather=6), (W, H), 2) as matte:
        soft = matte.weights(0)
    edge = soft[H // 2, W // 2 - 12 : W // 2 + 12]
    assert np.all(np.diff(edge) <= 1e-6) and 0.3 < soft[H // 2, W // 2] < 0.7
    assert soft[:, :60].min() > 0.99 and soft[:, 130:].max() < 0.01


def test_a_matte_of_another_length_or_feather_is_refused(tmp_path):
    folder = write_matte(tmp_path / "m", 3, left_half())
    with pytest.raises(MediaError, match="has 3 frames and the clip 5") as caught:
        MatteReader(MatteSpec(folder), (W, H), 5)
    assert "one image per frame" in caught.value.hint
    with pytest.raises(MediaError, match="feather"):
        MatteSpec(folder, feather=-1)
    with pytest.raises(MediaError, match=r"^the matte: file not found"):
        MatteReader(MatteSpec(tmp_path / "gone.mp4"), (W, H), 5)


def test_composite_mixes_by_the_weights():
    rendered = np.full((2, 2, 3), 200, np.uint8)
    original = np.full((2, 2, 3), 100, np.uint8)
    weights = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    mixed = composite(rendered, original, weights)
    assert mixed[..., 0].tolist() == [[100, 125], [150, 200]]


def test_a_render_shows_through_the_matte_and_keeps_its_cache(tmp_path, capsys):
    clip, _, _ = make_clip(tmp_path / "walk.mp4", count=12)
    matte = write_matte(tmp_path / "matte", 12, left_half())
    render = ["render", str(clip), "--style", "posterize", "--every", "6", "-q"]
    assert main([*render, "-o", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    assert main([*render, "--matte", str(matte), "-o", str(tmp_path / "matted")]) == 0
    assert "0 of 2 keys needed rendering" in capsys.readouterr().err  # composited, not re-rendered
    with VideoReader(clip) as original:
        for number in (0, 4, 11):
            name = f"frame_{number:06d}.png"
            matted, plain = (
                read_png(tmp_path / "matted" / name),
                read_png(tmp_path / "plain" / name),
            )
            assert np.array_equal(matted[:, : W // 2], plain[:, : W // 2])
            assert np.array_equal(matted[:, W // 2 :], original.frame(number)[:, W // 2 :])
            assert not np.array_equal(plain[:, W // 2 :], original.frame(number)[:, W // 2 :])

    short = write_matte(tmp_path / "short", 5, left_half())
    assert main([*render, "--matte", str(short), "-o", str(tmp_path / "bad")]) == 1
    assert "has 5 frames and the clip 12" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_painted_keys_show_through_an_inverted_matte(tmp_path):
    clip, _, _ = make_clip(tmp_path / "walk.mp4", count=8)
    matte = write_matte(tmp_path / "matte", 8, left_half())
    key = tmp_path / "key.png"
    cv2.imwrite(str(key), np.full((H, W, 3), (0, 0, 255), np.uint8))  # painted red
    out = tmp_path / "out"
    args = ["propagate", str(clip), "--key", f"0={key}", "--matte", str(matte), "-q"]
    assert main([*args, "--matte-invert", "-o", str(out)]) == 0
    frame = read_png(out / "frame_000005.png")
    with VideoReader(clip) as original:
        assert np.array_equal(frame[:, : W // 2], original.frame(5)[:, : W // 2])
    assert np.abs(frame[:, W // 2 + 8 :].astype(int) - [255, 0, 0]).max() <= 2


def test_a_project_keeps_its_matte_beside_it(tmp_path):
    from dataclasses import replace

    from zvstudio.engine.request import request_from_project
    from zvstudio.project import ClipRef, Project, load_project, save_project

    clip, _, _ = make_clip(tmp_path / "walk.mp4", count=4)
    write_matte(tmp_path / "matte", 4, left_half())
    pattern = str(tmp_path / "matte" / "matte_%04d.png")
    project = Project(clip=ClipRef.from_file(clip))
    project.settings = replace(
        project.settings, matte=pattern, matte_invert=True, matte_feather=2.5
    )
    save_project(project, tmp_path / "walk.zvs")
    assert '"matte": "matte/matte_%04d.png"' in (tmp_path / "walk.zvs").read_text()
    loaded = load_project(tmp_path / "walk.zvs")
    request = request_from_project(loaded, tmp_path / "out.mp4")
    assert request.matte == MatteSpec(Path(pattern), invert=True, feather=2.5)
    assert request_from_project(Project(clip=project.clip), tmp_path / "o.mp4").matte is None


def test_the_matte_as_an_alpha_channel(tmp_path, capsys):
    """For a compositor: the render whole, with the matte as its alpha (PNG frames, ProRes
    4444), instead of the render over the original."""
    import av

    clip, _, _ = make_clip(tmp_path / "walk.mp4", count=6)
    matte = write_matte(tmp_path / "matte", 6, left_half())
    render = ["render", str(clip), "--style", "posterize", "--every", "3", "-q"]
    assert main([*render, "-o", str(tmp_path / "plain")]) == 0
    assert main([*render, "--matte", str(matte), "--alpha", "-o", str(tmp_path / "rgba")]) == 0
    saved = cv2.imread(str(tmp_path / "rgba" / "frame_000004.png"), cv2.IMREAD_UNCHANGED)
    assert saved.shape == (H, W, 4)
    assert saved[:, : W // 2, 3].min() == 255 and saved[:, W // 2 :, 3].max() == 0
    plain = cv2.imread(str(tmp_path / "plain" / "frame_000004.png"))
    assert np.array_equal(saved[..., :3], plain)  # the whole render, the original nowhere

    mov = tmp_path / "comp.mov"
    args = [*render, "--matte", str(matte), "--alpha", "--format", "prores", "-o", str(mov)]
    assert main(args) == 0
    with av.open(str(mov)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.profile == "4444"
        frame = next(container.decode(stream)).to_ndarray(format="rgba")
    assert frame[:, : W // 2 - 4, 3].min() == 255 and frame[:, W // 2 + 4 :, 3].max() == 0
    # A ProRes 4444 file is a matte by its alpha (its colour is the render's, not black/white).
    with MatteReader(MatteSpec(mov), (W, H), 6) as reader:
        assert reader.has_alpha
        weights = dict(reader.frames(0, 6))[5]
    assert weights[:, : W // 2 - 4].min() > 0.99 and weights[:, W // 2 + 4 :].max() < 0.01

    capsys.readouterr()
    assert main([*render, "--alpha", "--format", "png", "-o", str(tmp_path / "none")]) == 1
    assert "an alpha channel needs a matte" in capsys.readouterr().err
    assert main([*render, "--matte", str(matte), "--alpha", "-o", str(tmp_path / "a.mp4")]) == 1
    assert "h264 has no alpha channel" in capsys.readouterr().err


def test_a_projects_alpha_is_kept_where_the_output_can_hold_it(tmp_path):
    from zvstudio.engine.request import export_settings
    from zvstudio.project.model import OutputSettings

    wanted = OutputSettings(format="prores", alpha=True)
    assert export_settings(tmp_path / "a.mov", wanted, has_matte=True).alpha
    assert not export_settings(tmp_path / "a.mp4", wanted, has_matte=True).alpha  # H.264 there
    assert not export_settings(tmp_path / "a.mov", wanted, has_matte=False).alpha
    frames = export_settings(tmp_path / "frames", OutputSettings(format="exr", alpha=True), True)
    assert (frames.format, frames.alpha) == ("exr", True)
