"""The render path: request in, streamed frames out, progress reported, cancel honoured."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from helpers import frame_number, make_clip

from zvstudio.engine.render import render
from zvstudio.engine.request import KeyRendererSpec, RenderRequest, request_from_project
from zvstudio.errors import RenderCancelled, ZvsError
from zvstudio.keyrender import KeyContext
from zvstudio.media import ExportSettings, VideoReader
from zvstudio.progress import CancelToken
from zvstudio.project import ClipRef, FrameRange, KeyFrame, Project, RenderSettings
from zvstudio.propagate.segment import PropagationSettings
from zvstudio.stylize import create_stylizer


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path, _, _ = make_clip(tmp_path_factory.mktemp("src") / "c.mp4", count=16, audio=True)
    return path


def test_every_frame_is_rendered_by_the_key_renderer(clip, tmp_path):
    events = []
    # A PNG sequence is lossless, so the output must equal the renderer's result exactly.
    request = RenderRequest(
        clip,
        tmp_path / "frames",
        KeyRendererSpec(style="posterize", params=(("smooth", False),)),
        ExportSettings("png"),
    )
    result = render(request, progress=events.append)
    assert result.frames == 16
    renderer = create_stylizer("posterize", smooth=False)
    with VideoReader(clip) as source:
        for number in (0, 7, 15):
            expected = renderer.render(source.frame(number), KeyContext(number))
            saved = cv2.imread(str(result.output / f"frame_{number:06d}.png"))
            assert np.array_equal(cv2.cvtColor(saved, cv2.COLOR_BGR2RGB), expected)
            assert frame_number(expected) == number
    render_events = [e for e in events if e.stage == "render"]
    assert [e.done for e in render_events] == list(range(17))
    assert all(e.total == 16 for e in render_events)
    assert (result.output / "audio.wav").exists()


def test_cancel_stops_and_writes_nothing(clip, tmp_path):
    cancel = CancelToken()
    target = tmp_path / "o.mp4"
    target.write_bytes(b"earlier")

    def cancel_after_three(event):
        if event.done == 3:
            cancel.cancel()

    request = RenderRequest(clip, target, KeyRendererSpec(style="posterize"))
    with pytest.raises(RenderCancelled):
        render(request, progress=cancel_after_three, cancel=cancel)
    assert target.read_bytes() == b"earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4"]


def test_painted_keys_render_through_the_same_path(clip, tmp_path):
    painted = tmp_path / "key.png"
    cv2.imwrite(str(painted), np.full((112, 192, 3), (0, 0, 255), np.uint8))  # red in BGR
    request = RenderRequest(
        clip,
        tmp_path / "o.mp4",
        KeyRendererSpec(kind="painted", painted=((2, str(painted)),)),
        first=2,
        last=2,
    )
    render(request)
    with VideoReader(tmp_path / "o.mp4") as output:
        red = output.frame(0)[..., 0].mean()
    assert red > 240


def test_invalid_requests_fail_before_any_work(clip, tmp_path):
    with pytest.raises(ZvsError, match="outside the clip"):
        render(RenderRequest(clip, tmp_path / "o.mp4", first=10, last=40))
    with pytest.raises(ZvsError, match="unknown key renderer"):
        render(RenderRequest(clip, tmp_path / "o.mp4", KeyRendererSpec(kind="magic")))
    assert list(tmp_path.iterdir()) == []


def test_request_from_project(clip, tmp_path):
    project = Project(
        clip=ClipRef.from_file(clip),
        frame_range=FrameRange(2, 9),
        keyframes=[KeyFrame(4, painted_image=str(tmp_path / "k.png"))],
        settings=RenderSettings(style="pencil"),
    )
    request = request_from_project(project, tmp_path / "o.mov")
    assert (request.first, request.last) == (2, 9)
    # The painted key stays painted inside the stylized render.
    painted = ((4, str(tmp_path / "k.png")),)
    assert request.renderer == KeyRendererSpec(kind="stylize", style="pencil", painted=painted)
    assert request.export.format == "h264"
    # The project's propagation settings, and the defaults where it has none.
    assert request.propagation == PropagationSettings()
    assert request.flow_preset == "fine"
    propagation = RenderSettings(synthesis="patch", flow_preset="fast", blend="histogram")
    request = request_from_project(
        replace(project, settings=replace(propagation, poisson=True)), tmp_path / "o.mov"
    )
    assert request.propagation == PropagationSettings(
        synthesis="patch", blend="histogram", poisson=True
    )
    assert request.flow_preset == "fast"
    painted = request_from_project(
        Project(
            clip=project.clip,
            keyframes=project.keyframes,
            settings=RenderSettings(renderer="painted"),
        ),
        tmp_path / "frames",
    )
    assert painted.renderer.painted == ((4, str(tmp_path / "k.png")),)
    assert painted.export.format == "png"
    with pytest.raises(ZvsError, match="no clip"):
        request_from_project(Project(), tmp_path / "o.mp4")


def test_request_from_a_diffusion_project_carries_per_key_overrides(clip, tmp_path):
    from zvstudio.keyrender import KeyParams
    from zvstudio.project import LoraRef

    settings = RenderSettings(
        renderer="diffusion",
        model=str(tmp_path / "model.safetensors"),
        prompt="oil painting",
        seed=7,
        strength=0.6,
        loras=[LoraRef(str(tmp_path / "ink.safetensors"), 0.8)],
        controlnet=None,
    )
    project = Project(
        clip=ClipRef.from_file(clip),
        keyframes=[KeyFrame(0), KeyFrame(5, prompt="a storm", seed=3), KeyFrame(9)],
        settings=settings,
    )
    request = request_from_project(project, tmp_path / "o.mp4")
    assert request.key_frames == (0, 5, 9)
    assert request.key_params == ((5, KeyParams(prompt="a storm", seed=3)),)
    spec = request.renderer.diffusion
    assert request.renderer.kind == "diffusion" and spec.model.name == "model.safetensors"
    assert (spec.settings.prompt, spec.settings.seed, spec.settings.strength) == (
        "oil painting",
        7,
        0.6,
    )
    assert [(lora.path.name, lora.weight) for lora in spec.loras] == [("ink.safetensors", 0.8)]
    without_model = Project(clip=project.clip, settings=RenderSettings(renderer="diffusion"))
    with pytest.raises(ZvsError, match="names no model"):
        request_from_project(without_model, tmp_path / "o.mp4")


def test_keys_every_k_are_rendered_and_the_rest_propagated(clip, tmp_path):
    events = []
    request = RenderRequest(
        clip,
        tmp_path / "frames",
        KeyRendererSpec(style="oil"),
        ExportSettings("png"),
        key_interval=5,
        flow_preset="medium",
    )
    result = render(request, progress=events.append)
    assert result.frames == 16 and result.keys == 4  # keys 0, 5, 10, 15
    assert [e.done for e in events if e.stage == "keys"] == [1, 2, 3, 4]
    assert [e.done for e in events if e.stage == "propagate"] == list(range(1, 17))
    renderer = create_stylizer("oil")
    with VideoReader(clip) as source:
        for number in (0, 5, 10, 15):
            saved = cv2.cvtColor(
                cv2.imread(str(tmp_path / "frames" / f"frame_{number:06d}.png")), cv2.COLOR_BGR2RGB
            )
            expected = renderer.render(source.frame(number), KeyContext(number))
            assert np.array_equal(saved, expected)  # keys are the renderer's own output


def test_explicit_keys_and_bad_key_plans(clip, tmp_path):
    request = RenderRequest(
        clip,
        tmp_path / "o.mp4",
        KeyRendererSpec(style="posterize"),
        key_frames=(3, 12),
        flow_preset="medium",
    )
    assert render(request).keys == 2
    with pytest.raises(ZvsError, match=r"outside the clip's frames 0\.\.\d+"):
        render(RenderRequest(clip, tmp_path / "x.mp4", key_frames=(3, 40)))
    with pytest.raises(ZvsError, match="at least 1"):
        render(RenderRequest(clip, tmp_path / "x.mp4", key_interval=0))
    assert not (tmp_path / "x.mp4").exists()


def png_frame(folder, number: int) -> np.ndarray:
    return cv2.imread(str(folder / f"frame_{number:06d}.png"))


def test_a_range_between_keys_renders_as_the_whole_clip_does(clip, tmp_path):
    # The editor's in and out points: frames 3..8 lie between keys 0, 6 and 12, which are
    # outside the range or on it; they come out as in the whole render, from its cache.
    project = Project(
        ClipRef(str(clip)),
        keyframes=[KeyFrame(0), KeyFrame(6), KeyFrame(12), KeyFrame(15)],
        settings=RenderSettings(renderer="stylize", style="pencil", flow_preset="medium"),
    )
    whole = render(request_from_project(project, tmp_path / "whole"))
    project.frame_range = FrameRange(3, 8)
    logs = []
    ranged = render(request_from_project(project, tmp_path / "range"), log=logs.append)
    assert ranged.frames == 6 and sorted(p.name for p in (tmp_path / "range").glob("*.png")) == [
        f"frame_{n:06d}.png" for n in range(3, 9)
    ]
    for number in range(3, 9):
        ranged_frame = png_frame(tmp_path / "range", number)
        assert np.array_equal(ranged_frame, png_frame(whole.output, number))
    # Keys 0, 6 and 12 (not 15); both segments come from the cache, so no key is rendered.
    assert (ranged.keys, ranged.rendered_keys) == (3, 0)
    assert ranged.reused_segments == ranged.segments == 2
    assert any("keys [0, 12] too" in line for line in logs)


def test_keys_around_a_range(clip):
    from zvstudio.engine.render import keys_around
    from zvstudio.propagate.clip import segment_spans

    assert keys_around([15, 0, 6, 12], 3, 8) == [0, 6, 12]
    assert keys_around([0, 6, 12], 7, 11) == [6, 12]
    assert keys_around([4], 6, 9) == [4]  # from the key before alone
    assert keys_around([10], 2, 5) == [10]
    assert segment_spans([0, 6, 12], 3, 8) == [(0, 5, (0, 6)), (6, 11, (6, 12))]
    assert segment_spans([4], 6, 9) == [(4, 9, (4,))]
    assert segment_spans([10], 2, 5) == [(2, 9, (10,))]
    assert segment_spans([3, 9], 0, 15) == [(0, 2, (3,)), (3, 8, (3, 9)), (9, 15, (9,))]


def test_rendered_keys_keep_only_a_few_in_memory(clip):
    from zvstudio.engine.render import RenderedKeys

    seen = []

    class Recorder(type(create_stylizer("posterize"))):
        uses_references = True  # like diffusion: keys must be rendered in order

        def render(self, frame, context, progress=None, cancel=None):
            seen.append(
                (
                    context.frame_index,
                    context.anchor and context.anchor.frame_index,
                    context.previous and context.previous.frame_index,
                )
            )
            return frame

    with VideoReader(clip) as reader:
        keys = RenderedKeys(
            reader, Recorder.from_params(), list(range(0, 16, 2)), lambda e: None, CancelToken()
        )
        assert keys[6] is not None and keys[14] is not None
        assert len(keys._recent) <= RenderedKeys._KEEP
    # Rendered in order, each with the anchor and the previous key as references.
    assert seen[:3] == [(0, None, None), (2, 0, 0), (4, 0, 2)]
    assert [number for number, _, _ in seen] == list(range(0, 16, 2))
    # Independent keys (plain stylizers) are rendered only when asked for.
    with VideoReader(clip) as reader:
        independent = RenderedKeys(
            reader,
            create_stylizer("posterize"),
            list(range(0, 16, 2)),
            lambda e: None,
            CancelToken(),
        )
        independent[10]
        assert independent.rendered == 1


def test_segments_are_cached_so_a_changed_key_recomputes_only_its_neighbours(clip, tmp_path):
    from zvstudio.propagate.cache import SegmentCache

    paintings = {}
    with VideoReader(clip) as reader:
        for number in (0, 5, 10, 15):
            path = tmp_path / f"key{number}.png"
            cv2.imwrite(str(path), 255 - reader.frame(number))
            paintings[number] = str(path)
    counts = []
    original_load = SegmentCache.load

    def counting_load(self, start, stop, ids):
        result = original_load(self, start, stop, ids)
        counts.append((start, result is not None))
        return result

    def run(name):
        request = RenderRequest(
            clip,
            tmp_path / name,
            KeyRendererSpec(kind="painted", painted=tuple(paintings.items())),
            flow_preset="medium",
        )
        counts.clear()
        render(request)
        return dict(counts)

    import pytest as _pytest

    with _pytest.MonkeyPatch.context() as patch:
        patch.setattr(SegmentCache, "load", counting_load)
        assert run("a.mp4") == {0: False, 5: False, 10: False, 15: False}
        assert run("b.mp4") == {0: True, 5: True, 10: True, 15: True}  # all reused
        with VideoReader(clip) as reader:  # repaint key 10
            cv2.imwrite(paintings[10], reader.frame(10))
        assert run("c.mp4") == {0: True, 5: False, 10: False, 15: True}


def test_the_render_size_caps_the_short_side_with_even_sides(clip):
    from zvstudio.media import probe

    def size(width, height, short_side):
        info = replace(probe(clip), width=width, height=height, rotation=0)
        return RenderRequest(clip, clip, short_side=short_side).frame_size(info)

    assert size(3840, 2160, 720) == (1280, 720)
    assert size(1080, 1920, 540) == (540, 960)  # portrait: the short side is the width
    assert size(1000, 562, 301) == (536, 300)  # 535.6 x 301, then even, never above
    assert size(1920, 1080, 0) == (1920, 1080)  # 0: the clip's size
    assert size(1280, 720, 1080) == (1280, 720)  # never enlarged
    with pytest.raises(ZvsError, match="at least 16"):
        RenderRequest(clip, clip, short_side=8)


def test_a_render_at_a_smaller_size_is_that_size_throughout_and_cached_apart(clip, tmp_path):
    """The keys, the propagated frames and the file are at the render size, with the
    source's frame count and sound; the clip's own size is another render in the cache."""
    from zvstudio.engine.status import render_status
    from zvstudio.media import probe

    logged = []
    small = RenderRequest(
        clip,
        tmp_path / "small.mp4",
        KeyRendererSpec(style="oil"),
        key_interval=5,
        flow_preset="medium",
        short_side=56,
    )
    result = render(small, log=logged.append)
    info = probe(tmp_path / "small.mp4")
    assert (info.width, info.height, info.frame_count) == (96, 56, 16)
    assert info.has_audio and result.frames == 16
    assert "rendering at 96x56 (the clip is 192x112)" in logged
    assert render_status(small).complete
    full = replace(small, output=tmp_path / "full.mp4", short_side=0)
    assert not render_status(full).complete  # nothing of the full size rendered yet
    with VideoReader(clip, output_size=(96, 56)) as reader:
        key = create_stylizer("oil").render(reader.frame(5), KeyContext(5))
    frames = tmp_path / "frames"
    render(replace(small, output=frames, export=ExportSettings("png")))
    saved = cv2.cvtColor(cv2.imread(str(frames / "frame_000005.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(saved, key)  # the key is the renderer's output at the render size
