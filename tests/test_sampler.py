"""The key-frame sampler on tiny random models: runs on the CPU, deterministic, constrained."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from tiny_models import write_tiny_config_dir, write_tiny_diffusers

from zvstudio.diffusion.constraints import ConstraintSchedule
from zvstudio.diffusion.loading import load_sd15_components
from zvstudio.diffusion.sampler import (
    DiffusionKeyRenderer,
    KeyFrameSampler,
    KeySettings,
    canny_condition,
    diffusion_key_identity,
    latent_preview,
    resized,
)
from zvstudio.errors import RenderCancelled, ZvsError
from zvstudio.keyrender import KeyContext, RenderedKey, working_size
from zvstudio.progress import CancelToken


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return write_tiny_diffusers(root / "model"), write_tiny_config_dir(root / "config")


@pytest.fixture
def components(folders):
    model, config = folders
    return load_sd15_components(model, config_dir=config)


def frames(count: int = 3, height: int = 40, width: int = 56) -> list[np.ndarray]:
    """A textured square moving right: consecutive 'video frames'."""
    rng = np.random.default_rng(0)
    background = (rng.random((height, width, 3)) * 80 + 60).astype(np.uint8)
    result = []
    for n in range(count):
        frame = background.copy()
        frame[10:30, 8 + 4 * n : 28 + 4 * n] = (220, 40, 40)
        result.append(frame)
    return result


SETTINGS = KeySettings(prompt="a red cat", steps=4, strength=0.75, seed=3)


def test_renders_keys_of_any_size_deterministically(components, folders):
    sampler = KeyFrameSampler(components, SETTINGS)
    events = []
    first = sampler.render(frames()[0], is_anchor=True, progress=events.append)
    assert first.shape == (40, 56, 3) and first.dtype == np.uint8  # 40x56 is not a multiple
    assert [e.done for e in events] == [1, 2, 3]  # strength 0.75 of 4 steps: 3 steps run
    sampler.close()
    again = KeyFrameSampler(load_sd15_components(folders[0], config_dir=folders[1]), SETTINGS)
    assert np.array_equal(again.render(frames()[0], is_anchor=True), first)


def test_the_working_size_caps_the_short_side_and_never_enlarges():
    assert working_size(1080, 1920, 512) == (512, 910)
    assert working_size(1920, 1080, 512) == (910, 512)  # portrait
    assert working_size(2160, 3840, 768) == (768, 1365)
    assert working_size(480, 640, 512) == (480, 640)  # smaller: as it is
    assert working_size(1080, 1920, 0) == (1080, 1920)  # 0: the frame's size


def test_keys_are_rendered_at_the_key_size_and_scaled_back(components, folders):
    """A key of a frame larger than `key_size` is the key of the frame scaled down, scaled
    back up; the reference keys are scaled down with it."""
    big = [resized(frame, (80, 112)) for frame in frames()]
    small_size = (40, 56)
    capped = KeyFrameSampler(components, replace(SETTINGS, key_size=40))
    capped.set_anchor_frame(big[0])
    anchor = capped.render(big[0], is_anchor=True)
    later = capped.render(big[1], is_anchor=False, references=[(big[0], anchor)])
    assert anchor.shape == later.shape == (80, 112, 3)
    capped.close()

    model, config = folders
    plain = KeyFrameSampler(load_sd15_components(model, config_dir=config), SETTINGS)
    small = [resized(frame, small_size) for frame in big]
    plain.set_anchor_frame(small[0])
    small_anchor = plain.render(small[0], is_anchor=True)
    small_later = plain.render(
        small[1], is_anchor=False, references=[(small[0], resized(anchor, small_size))]
    )
    assert np.array_equal(anchor, resized(small_anchor, (80, 112)))
    assert np.array_equal(later, resized(small_later, (80, 112)))
    # Rendered at another size, the same key is another key: cached apart.
    identities = {
        diffusion_key_identity("m", torch.float32, replace(SETTINGS, key_size=size))
        for size in (0, 40, 512)
    }
    assert len(identities) == 3


def test_a_negative_key_size_is_refused():
    with pytest.raises(ZvsError, match="key size"):
        KeySettings(key_size=-1)


def test_later_keys_are_constrained_by_the_anchor(components):
    video = frames()
    sampler = KeyFrameSampler(components, SETTINGS)
    sampler.set_anchor_frame(video[0])
    sampler.render(video[0], is_anchor=True)
    constrained = sampler.render(video[1], is_anchor=False)
    alone = sampler.render(video[1], is_anchor=True)
    # Random tiny weights make the effect small, but the references must change the result
    # (each constraint's exact effect is tested in test_constraints.py).
    assert not np.array_equal(constrained, alone)


def test_cross_frame_attention_off_leaves_the_unet_alone(components):
    before = dict(components.unet.attn_processors)
    sampler = KeyFrameSampler(components, KeySettings(steps=2, cross_frame_layers="off"))
    assert dict(components.unet.attn_processors) == before
    sampler.render(frames()[0], is_anchor=True)
    with_attention = KeyFrameSampler(components, SETTINGS)
    assert dict(components.unet.attn_processors) != before
    with_attention.close()
    assert {k: type(v) for k, v in components.unet.attn_processors.items()} == {
        k: type(v) for k, v in before.items()
    }


def test_adain_pulls_statistics_towards_the_anchor(components):
    video = frames()
    only_adain = KeySettings(
        prompt="x",
        steps=4,
        strength=1.0,
        cross_frame_layers="off",
        schedule=ConstraintSchedule(
            cross_frame=None, shape_fusion=None, pixel_fusion=None, adain=(0.0, 1.0)
        ),
    )
    sampler = KeyFrameSampler(components, only_adain)
    sampler.render(video[0], is_anchor=True)
    captured = {}
    original = sampler._constrain

    def spy(x0, index, t, run):
        result = original(x0, index, t, run)
        captured[index] = result
        return result

    sampler._constrain = spy
    sampler.render(video[2], is_anchor=False)
    for index, x0 in captured.items():
        reference = sampler._anchor_x0[index]
        assert torch.allclose(x0.mean(dim=(2, 3)), reference.mean(dim=(2, 3)), atol=1e-4)


def test_controlnet_conditions_the_result(components):
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    controlnet = ControlNetModel.from_unet(components.unet, conditioning_channels=3)
    for name, parameter in controlnet.named_parameters():
        if "zero_conv" in name or "controlnet_down_blocks" in name or "mid_block" in name:
            parameter.data.normal_(0, 0.3)  # trained ControlNets are not zero any more
    sampler = KeyFrameSampler(components, SETTINGS)
    plain = sampler.render(frames()[0], is_anchor=True)
    sampler.close()
    controlled = KeyFrameSampler(components, SETTINGS, [controlnet])
    result = controlled.render(frames()[0], is_anchor=True)
    assert np.abs(result.astype(int) - plain).mean() > 0.5
    edges = canny_condition(frames()[0], (100, 200))
    assert edges.shape == (40, 56, 3) and set(np.unique(edges)) <= {0.0, 1.0}


def test_cancel_and_previews(components):
    sampler = KeyFrameSampler(components, SETTINGS)
    previews = []
    sampler.render(frames()[0], is_anchor=True, preview=previews.append)
    assert len(previews) == 3 and previews[0].dtype == np.uint8 and previews[0].shape[2] == 3
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(RenderCancelled):
        sampler.render(frames()[1], is_anchor=False, cancel=cancel)
    assert latent_preview(torch.zeros(1, 4, 5, 7)).shape == (5, 7, 3)


def test_key_renderer_interface(components):
    renderer = DiffusionKeyRenderer(KeyFrameSampler(components, SETTINGS), "tiny")
    video = frames()
    anchor = renderer.render(video[0], KeyContext(0))
    key = RenderedKey(0, video[0], anchor)
    second = renderer.render(video[1], KeyContext(5, anchor=key, previous=key))
    assert second.shape == video[1].shape
    assert "tiny" in renderer.settings_key() and renderer.needs_weights


@pytest.mark.parametrize("mode", ["two_pass", "single_pass"])
def test_pixel_aware_fusion_pulls_towards_the_warped_references(components, mode):
    video = frames()
    target = np.zeros_like(video[1])
    target[...] = (30, 200, 60)
    # Fusion at every step with weight 1: the final latent must become the composite's E*
    # latent (the tiny VAE is random, so this is checked in latent space).
    only_pixels = KeySettings(
        prompt="x",
        steps=6,
        strength=1.0,
        cross_frame_layers="off",
        schedule=ConstraintSchedule(
            cross_frame=None, shape_fusion=None, pixel_fusion=(0.0, 1.0), adain=None
        ),
        pixel_fusion_mode=mode,
    )
    sampler = KeyFrameSampler(components, only_pixels)
    sampler.render(video[0], is_anchor=True)
    seen, composites = [], []
    fuse, composite = sampler._fuse_pixels, sampler._composite

    def spy(latents, guide, index, run, epsilon):
        fused = fuse(latents, guide, index, run, epsilon)
        seen.append(
            (
                (latents - guide.latent).abs().mean().item(),
                (fused - guide.latent).abs().mean().item(),
                guide.valid.mean().item(),
            )
        )
        return fused

    def spy_composite(run, rough, references):
        composites.append(rough.clone())
        return composite(run, rough, references)

    sampler._fuse_pixels, sampler._composite = spy, spy_composite
    decodes, to_image = [], sampler._to_image
    sampler._to_image = lambda latents: decodes.append(1) or to_image(latents)
    events = []
    # The reference is this very frame (flow ~0, valid everywhere) rendered as solid green.
    sampler.render(
        video[1], is_anchor=False, references=[(video[1], target)], progress=events.append
    )
    assert len(seen) == 6 and all(coverage == 1.0 for _, _, coverage in seen)
    assert all(after < before for before, after, _ in seen)
    assert seen[-1][1] < 0.05  # only the last step's tiny noise level remains
    # One composite either way; a single pass runs each step once.
    assert len(composites) == 1
    # The warped key covers the whole frame: the rough render is never decoded, only the key.
    assert len(decodes) == 1
    assert len(events) == (6 if mode == "single_pass" else 12)


def test_single_pass_composites_over_the_first_fused_steps_prediction(components):
    video = frames()
    settings = KeySettings(prompt="x", steps=6, strength=1.0, pixel_fusion_mode="single_pass")
    sampler = KeyFrameSampler(components, settings)
    sampler.set_anchor_frame(video[0])
    anchor = sampler.render(video[0], is_anchor=True)
    predictions, roughs = {}, []
    constrain, composite = sampler._constrain, sampler._composite

    def spy_constrain(x0, index, t, run):
        predictions[index] = constrain(x0, index, t, run)
        return predictions[index]

    def spy_composite(run, rough, references):
        roughs.append(rough)
        return composite(run, rough, references)

    sampler._constrain, sampler._composite = spy_constrain, spy_composite
    decodes, to_image = [], sampler._to_image
    sampler._to_image = lambda latents: decodes.append(latents) or to_image(latents)
    sampler.render(video[1], is_anchor=False, references=[(video[0], anchor)])
    # 6 steps from t = 835: the range 0.5-0.8 T_max starts at the second step.
    assert len(roughs) == 1 and roughs[0] is predictions[1]
    # The moving square uncovers background that no warped key explains: the rough render
    # fills it, then the key itself is decoded.
    assert len(decodes) == 2 and decodes[0] is predictions[1]


def test_soft_pixel_fusion_keeps_some_of_the_frames_noise(components):
    video = frames()
    results = {}
    for detail in (0.0, 0.9):
        settings = KeySettings(
            prompt="x", steps=6, strength=1.0, pixel_fusion_weight=0.5, pixel_fusion_detail=detail
        )
        sampler = KeyFrameSampler(components, settings)
        sampler.set_anchor_frame(video[0])
        anchor = sampler.render(video[0], is_anchor=True)
        results[detail] = sampler.render(video[1], is_anchor=False, references=[(video[0], anchor)])
        sampler.close()
    assert not np.array_equal(results[0.0], results[0.9])


def test_shape_aware_fusion_runs_in_the_sampler(components):
    # Strength 1 and 20 steps: the first two steps (t > 0.9 T_max) fuse. The key is the
    # anchor's frame with another prompt: the flow is ~0 and valid everywhere, so the fused
    # x̂0 is the anchor's.
    video = frames()
    settings = KeySettings(
        prompt="a red cat",
        steps=20,
        strength=1.0,
        cross_frame_layers="off",
        schedule=ConstraintSchedule(
            cross_frame=None, shape_fusion=(0.9, 1.0), pixel_fusion=None, adain=None
        ),
    )
    sampler = KeyFrameSampler(components, settings)
    sampler.set_anchor_frame(video[0])
    sampler.render(video[0], is_anchor=True)
    outputs, constrain = {}, sampler._constrain

    def spy(x0, index, t, run):
        outputs[index] = (x0.clone(), constrain(x0, index, t, run))
        return outputs[index][1]

    sampler._constrain = spy
    sampler.render(video[0], is_anchor=False, prompt="a dog photo")
    for index, (before, after) in outputs.items():
        anchor = sampler._anchor_x0[index]
        if index < 2:
            assert not torch.allclose(before, anchor, atol=1e-3)
            torch.testing.assert_close(after, anchor, atol=2e-3, rtol=0)
        else:
            assert torch.equal(after, before)


@pytest.mark.parametrize("mode, detail", [("single_pass", 0.0), ("two_pass", 0.9)])
def test_half_precision_keeps_its_dtype_through_every_constraint(folders, mode, detail):
    # bfloat16 on the CPU stands in for the GPU's half precision: every constraint acts
    # (strength 1: shape fusion too), and the UNet and ControlNet must always get latents of
    # the model's dtype (float32 noise once turned fused latents to float32 and crashed).
    model, config = folders
    components = load_sd15_components(model, dtype=torch.bfloat16, config_dir=config)
    settings = KeySettings(
        prompt="a red cat",
        steps=10,
        strength=1.0,
        pixel_fusion_mode=mode,
        pixel_fusion_detail=detail,
        colour_correction=True,
    )
    sampler = KeyFrameSampler(components, settings)
    dtypes, predict = set(), sampler._predict_noise

    def spy(latents, *args):
        dtypes.add(latents.dtype)
        return predict(latents, *args)

    sampler._predict_noise = spy
    video = frames()
    sampler.set_anchor_frame(video[0])
    anchor = sampler.render(video[0], is_anchor=True)
    key = sampler.render(video[1], is_anchor=False, references=[(video[0], anchor)])
    assert key.shape == (40, 56, 3) and key.dtype == np.uint8
    assert dtypes == {torch.bfloat16}


def test_pixel_fusion_draws_its_noise_and_mask_once_per_key(components, monkeypatch):
    # Per fused step, only GPU work: the seeded noise is drawn and the validity mask brought
    # to latent size once per key (each per-step copy to the GPU would stall it).
    from zvstudio.diffusion import sampler as sampler_module

    draws, seeded_noise = [], sampler_module.seeded_noise
    monkeypatch.setattr(
        sampler_module,
        "seeded_noise",
        lambda like, seed: draws.append(like.shape) or seeded_noise(like, seed),
    )
    sampler = KeyFrameSampler(components, replace(SETTINGS, steps=10))
    fused, fuse = [], sampler._fuse_pixels

    def spy(latents, guide, index, run, epsilon):
        fused.append(guide.valid.shape)
        return fuse(latents, guide, index, run, epsilon)

    sampler._fuse_pixels = spy
    video = frames()
    anchor = sampler.render(video[0], is_anchor=True)
    draws.clear()
    sampler.render(video[1], is_anchor=False, references=[(video[0], anchor)])
    assert len(fused) >= 3  # several fused steps...
    assert len(draws) == 2  # ...one draw for the SDEdit start, one for all of them
    assert set(fused) == {(1, 1, 20, 28)}  # the mask at latent size (tiny VAE: /2)


def test_unknown_pixel_fusion_mode_is_refused():
    with pytest.raises(ZvsError, match="pixel fusion mode"):
        KeySettings(pixel_fusion_mode="three_pass")


def test_second_pass_resumes_exactly(components, folders):
    video = frames()
    settings = KeySettings(prompt="x", steps=6, strength=1.0, seed=5, pixel_fusion_mode="two_pass")
    results = {}
    for resume in (True, False):
        fresh = load_sd15_components(folders[0], config_dir=folders[1])
        sampler = KeyFrameSampler(fresh, replace(settings, resume_second_pass=resume))
        sampler.set_anchor_frame(video[0])
        anchor = sampler.render(video[0], is_anchor=True)
        events = []
        results[resume] = sampler.render(
            video[1], is_anchor=False, progress=events.append, references=[(video[0], anchor)]
        )
        results[f"steps {resume}"] = len(events)
    assert np.array_equal(results[True], results[False])
    # Resuming skips the steps before the fusion range (t > 0.8 T_max: 1 of 6 here).
    assert results["steps True"] < results["steps False"] == 12


def test_colour_correction_matches_later_inputs_to_the_anchors_render(components):
    video = frames()
    results = {}
    for correct in (False, True):
        sampler = KeyFrameSampler(
            components, KeySettings(prompt="x", steps=4, colour_correction=correct)
        )
        starts = []
        sdedit_start = sampler._sdedit_start

        def spy(frame, scheduler, t, starts=starts, sdedit_start=sdedit_start):
            starts.append(frame.copy())
            return sdedit_start(frame, scheduler, t)

        sampler._sdedit_start = spy
        sampler.set_anchor_frame(video[0])
        anchor = sampler.render(video[0], is_anchor=True)
        results[correct] = sampler.render(
            video[1], is_anchor=False, references=[(video[0], anchor)]
        )
        sampler.close()
        assert np.array_equal(starts[0][:40, :56], video[0])  # the anchor starts from its frame
        later = starts[1][:40, :56]
        if not correct:
            assert np.array_equal(later, video[1])
            continue
        # The later key starts from its frame with the anchor render's colours (Lab means).
        lab = [
            cv2.cvtColor(image, cv2.COLOR_RGB2LAB).reshape(-1, 3).mean(0)
            for image in (later, video[1], anchor)
        ]
        assert np.abs(lab[0] - lab[2]).max() < np.abs(lab[1] - lab[2]).max() / 2
    assert not np.array_equal(results[False], results[True])


def test_a_closed_sampler_renders_again(components):
    # close() stops the flow thread; the next key that needs flows starts a new one.
    video = frames()
    settings = KeySettings(prompt="x", steps=4, strength=1.0, cross_frame_layers="off")
    sampler = KeyFrameSampler(components, settings)
    sampler.set_anchor_frame(video[0])
    anchor = sampler.render(video[0], is_anchor=True)
    first = sampler.render(video[1], is_anchor=False, references=[(video[0], anchor)])
    sampler.close()
    second = sampler.render(video[1], is_anchor=False, references=[(video[0], anchor)])
    sampler.close()
    assert np.array_equal(first, second)


def test_running_out_of_gpu_memory_says_what_to_lower(components, monkeypatch):
    from zvstudio.generate.jobs import out_of_memory_as_error

    renderer = DiffusionKeyRenderer(KeyFrameSampler(components, SETTINGS), "m")

    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(renderer.sampler, "render", exhausted)
    with pytest.raises(ZvsError, match="ran out of memory") as error:
        renderer.render(frames()[0], KeyContext(0))
    assert error.value.code == "out_of_memory" and "--key-size" in error.value.hint
    with pytest.raises(ZvsError) as error, out_of_memory_as_error():
        exhausted()
    assert "--frames" in error.value.hint and "key size" not in error.value.hint
