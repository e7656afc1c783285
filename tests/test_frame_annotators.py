"""The built-in tile and ip2p annotators (the frame itself, no weights) and their ControlNets."""

import numpy as np
import pytest

from zvstudio.diffusion import annotators
from zvstudio.diffusion.controlnet import controlnet_annotator, resolve_controlnet
from zvstudio.diffusion.identify import ModelInfo
from zvstudio.errors import ZvsError


def frame(height: int = 48, width: int = 64) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", ["tile", "ip2p"])
def test_the_control_image_is_the_frame_itself(name):
    rgb = frame()
    image = annotators.annotate(name, rgb)
    np.testing.assert_array_equal(image, rgb)
    image[...] = 0  # a copy: the caller's frame is not the control image's buffer
    assert rgb.any()
    condition = annotators.control_condition(rgb, name)
    np.testing.assert_allclose(condition, rgb / np.float32(255))


def test_an_alpha_channel_is_dropped():
    rgba = np.dstack([frame(), np.full((48, 64), 7, np.uint8)])
    np.testing.assert_array_equal(annotators.frame_itself(rgba), rgba[..., :3])


@pytest.mark.parametrize("name", ["tile", "ip2p"])
def test_built_in_and_picks_its_controlnet(tmp_path, name):
    assert name in annotators.available_annotators()
    assert name in annotators.BUILTIN_ANNOTATORS
    assert name not in annotators.UNAVAILABLE_ANNOTATORS
    assert controlnet_annotator(f"{name}:0.5") == name
    stems = ("control_v11p_sd15_canny", "control_v11f1e_sd15_tile", "control_v11e_sd15_ip2p")
    paths = [tmp_path / f"{stem}.safetensors" for stem in stems]
    models = [ModelInfo(p, p.stem, "controlnet", "sd1", "safetensors", 1) for p in paths]
    choice = resolve_controlnet(f"{name}:0.5", models)
    assert name in choice.path.name and choice.scale == pytest.approx(0.5)


def test_without_its_controlnet_the_message_names_the_file_to_get(tmp_path):
    canny = tmp_path / "control_v11p_sd15_canny.safetensors"
    models = [ModelInfo(canny, canny.stem, "controlnet", "sd1", "safetensors", 1)]
    with pytest.raises(ZvsError) as error:
        resolve_controlnet("tile", models)
    assert "no SD1.x tile ControlNet" in str(error.value)
    assert "control_v11p_sd15_tile" in error.value.hint
