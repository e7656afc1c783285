"""Text2Video-Zero's background smoothing: foreground masks at latent size, starts pulled
towards frame 0's carried background, the second pass, and where the masks come from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_seg_annotator import write_tiny_segformer
from test_t2v_zero import SETTINGS, components, symmetric_shift  # noqa: F401 (a fixture)
from tiny_models import build_tiny_controlnet

from zvstudio.diffusion import seg
from zvstudio.errors import ZvsError
from zvstudio.generate import t2v_zero
from zvstudio.generate.t2v_zero import (
    FOREGROUND_MARGIN,
    TextToVideoSettings,
    TextToVideoZero,
    latent_masks,
    motion_indices,
    smooth_starts,
    translate_latents,
)

SMOOTHED = TextToVideoSettings(**{**vars(SETTINGS), "smooth_background": 0.6})


def everywhere(value: float):
    """A foreground source that calls every pixel foreground (1) or background (0)."""
    return lambda rgb: np.full(rgb.shape[:2], value, np.float32)


# -- masks and starts ---------------------------------------------------------------------------
def test_a_latent_pixel_is_foreground_where_any_of_it_is_and_grows_by_the_margin():
    mask = np.zeros((64, 64), np.float32)
    mask[20, 37] = 1.0  # one image pixel, in latent pixel (2, 4) of an 8 x 8 latent
    mask[60, 2] = 0.4  # not foreground (a soft edge below one half)
    got = latent_masks([mask, np.zeros_like(mask)], (8, 8))
    assert got.shape == (2, 1, 8, 8) and got.dtype == torch.float32
    expected = np.zeros((8, 8), np.float32)
    m = FOREGROUND_MARGIN
    expected[max(0, 2 - m) : 2 + m + 1, max(0, 4 - m) : 4 + m + 1] = 1
    assert np.array_equal(got[0, 0].numpy(), expected)
    assert not got[1].any()


def test_smoothing_moves_only_the_shared_background_towards_frame_0():
    torch.manual_seed(0)
    starts = torch.randn(3, 4, 8, 8)
    first = starts[:1].clone()  # frame 0 starts from its own x_t1
    foreground = torch.zeros(3, 1, 8, 8)
    foreground[0, :, 2:4, 2:4] = 1  # frame 0's subject...
    foreground[1, :, 5:7, 0:2] = 1  # ...and where it is in frames 1 and 2
    foreground[2, :, 6:8, 6:8] = 1
    shifts = [(0.0, 0.0), (1.0, 0.0), (2.0, 1.0)]
    smoothed = smooth_starts(starts, first, foreground, foreground[:1], shifts, 0.6)
    torch.testing.assert_close(smoothed[0], starts[0])  # frame 0 pulled towards itself
    for k in (1, 2):
        own = foreground[k, 0].bool()
        carried_subject = translate_latents(foreground[:1], [shifts[k]])[0, 0].bool()
        kept = own | carried_subject
        assert torch.equal(smoothed[k][:, kept], starts[k][:, kept])
        sx, sy = int(shifts[k][0]), int(shifts[k][1])
        carried = torch.from_numpy(symmetric_shift(first.numpy(), sx, sy))[0]
        background = ~kept
        assert kept.any() and background.any()
        expected = 0.4 * starts[k] + 0.6 * carried
        torch.testing.assert_close(smoothed[k][:, background], expected[:, background])
    full = smooth_starts(starts, first, foreground, foreground[:1], shifts, 1.0)
    carried = torch.from_numpy(symmetric_shift(first.numpy(), 1, 0))[0]
    subject = translate_latents(foreground[:1], [shifts[1]])[0, 0].bool()
    background = ~(foreground[1, 0].bool() | subject)
    assert torch.equal(full[1][:, background], carried[:, background])  # all the way
    assert torch.equal(smooth_starts(starts, first, foreground, foreground[:1], shifts, 0), starts)


# -- the two passes -------------------------------------------------------------------------------
def _joint_starts(components, settings, foreground, monkeypatch):  # noqa: F811
    """(the clip's latents, the starts of each joint run, frame 0's x_t1)."""
    starts = []
    original = t2v_zero._Denoise.steps

    def spy(self, latents, indices, condition):
        starts.append(latents.clone())
        return original(self, latents, indices, condition)

    monkeypatch.setattr(t2v_zero._Denoise, "steps", spy)
    latents = TextToVideoZero(components, foreground=foreground).latents(settings)
    # Frame 0's warm-up runs x_T -> x_t1, then x_t1 -> x_t0; then the joint runs.
    return latents, starts[2:], starts[1]


def test_a_foreground_everywhere_leaves_the_clip_as_without_smoothing(components, monkeypatch):  # noqa: F811
    plain = TextToVideoZero(components).latents(SETTINGS)
    latents, joint, _ = _joint_starts(components, SMOOTHED, everywhere(1.0), monkeypatch)
    assert len(joint) == 2  # the second pass ran...
    assert torch.equal(joint[0], joint[1])  # ...from the same starts
    torch.testing.assert_close(latents, plain, rtol=0, atol=1e-5)


def test_the_second_pass_starts_from_frame_0s_carried_background(components, monkeypatch):  # noqa: F811
    settings = TextToVideoSettings(**{**vars(SETTINGS), "smooth_background": 1.0})
    plain = TextToVideoZero(components).latents(SETTINGS)
    latents, joint, x_t1 = _joint_starts(components, settings, everywhere(0.0), monkeypatch)
    first_pass, second_pass = joint
    assert torch.equal(second_pass[0], first_pass[0]) and torch.equal(second_pass[0], x_t1[0])
    for k in range(1, settings.frames):
        # 16 x 16 latents; δ = (64, 32) px at 512 is k·(2, 1) latent px.
        carried = symmetric_shift(x_t1.numpy(), 2 * k, k)[0]
        assert np.array_equal(second_pass[k].numpy(), carried), k
        assert not torch.equal(first_pass[k], second_pass[k])
    # Frame 0 attends to itself only: the smoothing of the others leaves it as it was.
    torch.testing.assert_close(latents[0], plain[0], rtol=0, atol=1e-5)
    assert not torch.allclose(latents[1:], plain[1:], atol=1e-3)


def test_smoothing_reports_both_passes_and_the_foreground(components):  # noqa: F811
    events = []
    TextToVideoZero(components, foreground=everywhere(0.0)).generate(
        SMOOTHED, progress=events.append
    )
    scheduler = components.make_scheduler()
    scheduler.set_timesteps(SETTINGS.steps)
    i1, i0 = motion_indices(scheduler.timesteps, SETTINGS, 1000)
    total = i0 + 2 * (SETTINGS.steps - i1)
    steps = [e.done for e in events if e.stage == "generate"]
    assert steps == list(range(1, total + 1))
    found = [(e.done, e.total) for e in events if e.stage == "foreground"]
    assert found == [(n, SETTINGS.frames) for n in range(1, SETTINGS.frames + 1)]


def test_smoothing_needs_a_mask_source_and_text_mode(components):  # noqa: F811
    with pytest.raises(ZvsError, match="needs a foreground mask source"):
        TextToVideoZero(components).latents(SMOOTHED)
    controlnet = build_tiny_controlnet(components.unet)
    with pytest.raises(ZvsError, match="camera motion"):
        TextToVideoZero(components, [controlnet], everywhere(0.0)).latents(
            SMOOTHED, [np.zeros((32, 32, 3), np.uint8)] * SETTINGS.frames
        )
    with pytest.raises(ZvsError, match="0 to 1"):
        TextToVideoZero(components, foreground=everywhere(0.0)).latents(
            TextToVideoSettings(**{**vars(SETTINGS), "smooth_background": 1.5})
        )


# -- where the foreground comes from --------------------------------------------------------------
def test_a_segmentation_model_gives_objects_as_foreground_and_scenery_as_background(tmp_path):
    folder = write_tiny_segformer(tmp_path / "annotators" / "segformer-ade")
    source = seg.find_foreground_source([tmp_path])
    assert isinstance(source, seg.SegForeground) and source.annotator.folder == folder
    frame = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    mask = source(frame)
    labels = source.annotator.labels(frame)
    assert mask.shape == (40, 48) and set(np.unique(mask)) <= {0.0, 1.0}
    names = np.array(seg.ADE20K_CLASSES)[labels]
    assert np.array_equal(mask == 1, ~np.isin(names, list(seg.SCENE_CLASSES)))
    # By name: people and animals are foreground; walls, sky and grass are not.
    source.annotator.labels = lambda rgb: np.array([[0, 12], [2, 126], [9, 20]])
    assert source(frame).tolist() == [[0, 1], [0, 1], [0, 1]]
    assert seg.find_foreground_source([tmp_path / "nothing"]) is None


def test_a_generation_job_without_a_mask_source_says_so_before_loading(tmp_path, monkeypatch):
    from zvstudio.engine.preview import DiffusionSpec
    from zvstudio.generate.jobs import TextToVideoRequest, generate_text_to_video

    monkeypatch.setattr(seg, "find_foreground_source", lambda folders=None: None)
    from zvstudio.diffusion.sampler import KeySettings

    missing_model = DiffusionSpec(model=tmp_path / "not-loaded.safetensors", settings=KeySettings())
    request = TextToVideoRequest(missing_model, SMOOTHED, tmp_path / "o.mp4")
    with pytest.raises(ZvsError, match="no ADE20K segmentation model") as error:
        generate_text_to_video(request)
    assert "annotators/" in error.value.hint
    with_video = TextToVideoRequest(missing_model, SMOOTHED, tmp_path / "o.mp4", video=tmp_path)
    with pytest.raises(ZvsError, match="camera motion"):
        generate_text_to_video(with_video)
