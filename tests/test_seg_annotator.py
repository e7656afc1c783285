"""The seg annotator: ADE20K classes painted in their palette colours, from a transformers
segmentation model on disk (a tiny random SegFormer written by the test), never downloaded,
never from a pickle, never a model with other labels."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from zvstudio.diffusion.seg import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    SegAnnotator,
    find_seg_model,
    is_seg_model,
)
from zvstudio.errors import ZvsError


def write_tiny_segformer(folder, labels=ADE20K_CLASSES):
    """A two-block SegFormer with one output per label, named like a real ADE20K model's."""
    import torch
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 1],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        architectures=["SegformerForSemanticSegmentation"],
    )
    torch.manual_seed(0)
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def write_tiny_upernet(folder):
    """A UperNet on a tiny ConvNeXt, the architecture of diffusers' ControlNet docs' model
    (openmmlab/upernet-convnext-small, whose processor is a SegformerImageProcessor too)."""
    import torch
    from transformers import (
        ConvNextConfig,
        SegformerImageProcessor,
        UperNetConfig,
        UperNetForSemanticSegmentation,
    )

    backbone = ConvNextConfig(
        hidden_sizes=[8, 8, 8, 8],
        depths=[1, 1, 1, 1],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = UperNetConfig(
        backbone_config=backbone,
        hidden_size=8,
        use_auxiliary_head=False,
        id2label=dict(enumerate(ADE20K_CLASSES)),
        label2id={name: i for i, name in enumerate(ADE20K_CLASSES)},
        architectures=["UperNetForSemanticSegmentation"],
    )
    torch.manual_seed(0)
    UperNetForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_ade(tmp_path_factory):
    return write_tiny_segformer(tmp_path_factory.mktemp("models") / "segformer-ade")


def copy_model(source, folder):
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, folder)
    return folder


def write_config(folder, **config):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


CITYSCAPES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip


def frame() -> np.ndarray:
    """A non-square frame (40 x 56) with some texture for the model to see."""
    y, x = np.mgrid[0:40, 0:56]
    return np.stack([x * 4, y * 6, (x + y) * 3], axis=2).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# The palette


def test_the_palette_is_ade20ks():
    assert ADE20K_PALETTE.shape == (150, 3) and ADE20K_PALETTE.dtype == np.uint8
    assert len(ADE20K_CLASSES) == 150
    # Spot values, in the models' label order (0 is wall, not a background).
    expected = {
        0: ("wall", (120, 120, 120)),
        1: ("building", (180, 120, 120)),
        2: ("sky", (6, 230, 230)),
        3: ("floor", (80, 50, 50)),
        4: ("tree", (4, 200, 3)),
        12: ("person", (150, 5, 61)),
        20: ("car", (0, 102, 200)),
        147: ("glass", (25, 194, 194)),
        148: ("clock", (102, 255, 0)),
        149: ("flag", (92, 0, 255)),
    }
    for label, (name, color) in expected.items():
        assert ADE20K_CLASSES[label] == name
        assert tuple(ADE20K_PALETTE[label]) == color
    # Every colour is distinct but one: road and skyscraper share a grey in the original.
    distinct = {tuple(c) for c in ADE20K_PALETTE.tolist()}
    assert len(distinct) == 149
    assert ADE20K_CLASSES[6] == "road" and ADE20K_CLASSES[48] == "skyscraper"
    assert tuple(ADE20K_PALETTE[6]) == tuple(ADE20K_PALETTE[48]) == (140, 140, 140)
    assert len(set(ADE20K_CLASSES)) == 150
    assert not ADE20K_PALETTE.flags.writeable


# ---------------------------------------------------------------------------------------------
# Colouring


def test_the_winning_class_paints_the_whole_frame(tiny_ade, one_torch_thread):
    import torch

    annotator = SegAnnotator(tiny_ade)
    annotator(frame())  # loads the model
    classifier = annotator._model.decode_head.classifier
    for label in (12, 149, 0):
        with torch.no_grad():
            classifier.weight.zero_()
            classifier.bias.zero_()
            classifier.bias[label] = 1.0
        image = annotator(frame())
        assert image.shape == (40, 56, 3) and image.dtype == np.uint8
        assert (image == ADE20K_PALETTE[label]).all(), label


def split_logits(axis: int, first: int, second: int, cut: int):
    """8 x 8 logits (a SegFormer's quarter-size output) whose class is `first` before index
    `cut` along `axis` (0 rows, 1 columns) and `second` from it on."""
    import torch

    logits = torch.zeros(1, 150, 8, 8)
    before = [slice(None)] * 2
    after = [slice(None)] * 2
    before[axis], after[axis] = slice(0, cut), slice(cut, None)
    logits[(0, first, *before)] = 5.0
    logits[(0, second, *after)] = 5.0
    return logits


def test_class_borders_land_at_the_frames_own_size(tiny_ade, one_torch_thread):
    """The square logits are stretched to the non-square frame, each axis on its own: a border
    3/8 of the way across lands at column 21 of 56, one 2/8 of the way down at row 10 of 40."""
    annotator = SegAnnotator(tiny_ade)
    seen = []

    def model(pixel_values):
        seen.append(tuple(pixel_values.shape))
        return SimpleNamespace(logits=logits)

    annotator._load()
    annotator._model = model

    logits = split_logits(axis=1, first=2, second=12, cut=3)  # sky | person
    image = annotator(frame())
    assert image.shape == (40, 56, 3)
    assert (image[:, :21] == ADE20K_PALETTE[2]).all()
    assert (image[:, 21:] == ADE20K_PALETTE[12]).all()

    logits = split_logits(axis=0, first=2, second=0, cut=2)  # sky over wall
    image = annotator(frame())
    assert (image[:10] == ADE20K_PALETTE[2]).all()
    assert (image[10:] == ADE20K_PALETTE[0]).all()

    # A confident class holds more of a soft border than a weak one, as the stretched logits
    # weigh them (sky's 5 against person's 1: column 23, not 21).
    logits = split_logits(axis=1, first=2, second=12, cut=3)
    logits[0, 12] /= 5
    image = annotator(frame())
    assert (image[:, :23] == ADE20K_PALETTE[2]).all()
    assert (image[:, 23:] == ADE20K_PALETTE[12]).all()
    # The model saw the processor's square input, not the frame.
    assert seen == [(1, 3, 32, 32)] * 3


def test_the_annotator_end_to_end(tiny_ade, one_torch_thread):
    annotator = SegAnnotator(tiny_ade)
    assert annotator._model is None  # loaded on first use
    rgba = np.dstack([frame(), np.full((40, 56), 255, np.uint8)])
    image = annotator(rgba)
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8
    palette = {tuple(c) for c in ADE20K_PALETTE.tolist()}
    assert {tuple(c) for c in image.reshape(-1, 3).tolist()} <= palette
    assert np.array_equal(annotator(frame()), image)  # the same frame, the same map
    size = (tiny_ade / "model.safetensors").stat().st_size
    assert annotator.identity == f"segformer-ade:{size}"


def test_an_upernet_end_to_end(tmp_path, one_torch_thread):
    """UperNet's logits come at the processor's full size (SegFormer's at a quarter): both are
    brought to the frame's."""
    folder = write_tiny_upernet(tmp_path / "upernet-convnext-tiny")
    assert is_seg_model(folder)
    annotator = SegAnnotator(folder)
    image = annotator(frame())
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8
    palette = {tuple(c) for c in ADE20K_PALETTE.tolist()}
    assert {tuple(c) for c in image.reshape(-1, 3).tolist()} <= palette
    pixels = annotator._processor(images=frame(), return_tensors="pt")["pixel_values"]
    assert annotator._model(pixel_values=pixels).logits.shape == (1, 150, 64, 64)


# ---------------------------------------------------------------------------------------------
# Finding the model


def test_an_ade20k_model_in_the_model_folders(tiny_ade, tmp_path):
    models = tmp_path / "models"
    # Sorted first, but with Cityscapes' 19 labels: its colours would mean nothing.
    cityscapes = write_tiny_segformer(models / "annotators" / "a-cityscapes", CITYSCAPES)
    assert not is_seg_model(cityscapes)
    assert find_seg_model([models]) is None
    ade = copy_model(tiny_ade, models / "annotators" / "upernet-ade")
    assert is_seg_model(ade)
    assert find_seg_model([models]) == ade
    assert find_seg_model([tmp_path / "nothing"]) is None


def test_an_ade20k_model_directly_in_a_model_folder(tiny_ade, tmp_path):
    models = tmp_path / "models"
    ade = copy_model(tiny_ade, models / "segformer-b0-ade")
    assert find_seg_model([models]) == ade


def test_an_ade20k_model_in_the_hf_cache(tiny_ade, tmp_path, monkeypatch):
    monkeypatch.delenv("ZVSTUDIO_MODELS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/zvstudio/models of the user's
    repo = tmp_path / "hf-cache" / "models--openmmlab--upernet-tiny"
    snapshot = copy_model(tiny_ade, repo / "snapshots" / "abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    assert os.environ["HF_HUB_CACHE"] == str(tmp_path / "hf-cache")  # conftest's
    assert find_seg_model() == snapshot
    assert SegAnnotator(snapshot).identity.startswith("abc:")


def test_the_environment_variable(tiny_ade, tmp_path, monkeypatch):
    models = tmp_path / "models"
    copy_model(tiny_ade, models / "annotators" / "upernet-ade")
    chosen = copy_model(tiny_ade, tmp_path / "elsewhere" / "my-seg")
    monkeypatch.setenv("ZVSTUDIO_SEG_MODEL", str(chosen))
    assert find_seg_model([models]) == chosen

    cityscapes = write_config(
        tmp_path / "cityscapes",
        architectures=["SegformerForSemanticSegmentation"],
        id2label=dict(enumerate(CITYSCAPES)),
    )
    monkeypatch.setenv("ZVSTUDIO_SEG_MODEL", str(cityscapes))
    with pytest.raises(ZvsError, match="not trained on ADE20K") as err:
        find_seg_model([models])
    assert "ADE20K" in err.value.hint

    depth = write_config(tmp_path / "dpt", architectures=["DPTForDepthEstimation"])
    monkeypatch.setenv("ZVSTUDIO_SEG_MODEL", str(depth))
    with pytest.raises(ZvsError, match="not a semantic-segmentation model folder"):
        find_seg_model([models])
    monkeypatch.setenv("ZVSTUDIO_SEG_MODEL", str(tmp_path / "missing"))
    with pytest.raises(ZvsError, match="not a semantic-segmentation model folder"):
        find_seg_model([models])


def test_what_is_and_is_not_a_seg_model(tmp_path):
    ade_names = {str(i): name for i, name in enumerate(ADE20K_CLASSES)}
    seg = ["UperNetForSemanticSegmentation"]
    cases = {
        # ADE20K models of other architectures, named or with placeholder labels.
        "upernet": (dict(architectures=seg, id2label=ade_names), True),
        "dpt-ade": (dict(architectures=["DPTForSemanticSegmentation"], num_labels=150), True),
        "beit": (
            dict(
                architectures=["BeitForSemanticSegmentation"],
                id2label={str(i): f"LABEL_{i}" for i in range(150)},
            ),
            True,
        ),
        # A depth model, even with 150 of something; a classifier; Pascal VOC's 21 classes.
        "depth": (dict(architectures=["DPTForDepthEstimation"], num_labels=150), False),
        "vit": (dict(architectures=["ViTForImageClassification"], id2label=ade_names), False),
        "voc": (
            dict(architectures=seg, id2label={str(i): f"c{i}" for i in range(21)}),
            False,
        ),
        "cityscapes-unnamed": (
            dict(architectures=seg, id2label={str(i): f"LABEL_{i}" for i in range(19)}),
            False,
        ),
        "cityscapes-count": (dict(architectures=seg, num_labels=19), False),
        # 150 classes of something else: their label 0 is not ADE20K's wall.
        "other-150": (
            dict(architectures=seg, id2label={str(i): f"thing{i}" for i in range(150)}),
            False,
        ),
        "no-labels": (dict(architectures=seg), False),
    }
    for name, (config, expected) in cases.items():
        assert is_seg_model(write_config(tmp_path / name, **config)) is expected, name
    assert not is_seg_model(tmp_path / "absent")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert not is_seg_model(tmp_path / "broken")


def test_pickled_weights_are_refused(tiny_ade, tmp_path):
    folder = copy_model(tiny_ade, tmp_path / "segformer")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    assert is_seg_model(folder)  # found, but never read from the pickle
    with pytest.raises(ZvsError, match="no safetensors weights") as err:
        SegAnnotator(folder)(frame())
    assert "pickle" in err.value.hint


def test_a_model_in_the_model_folder_makes_seg_available(tiny_ade, tmp_path, monkeypatch):
    from zvstudio.diffusion import annotators

    models = tmp_path / "models"
    monkeypatch.setenv("ZVSTUDIO_MODELS", str(models))
    assert "ZVSTUDIO_SEG_MODEL" in annotators.weights_hint("seg")
    annotators.refresh_local_annotators()
    assert not annotators.has_annotator("seg")
    ade = copy_model(tiny_ade, models / "annotators" / "upernet-ade")
    annotators.refresh_local_annotators()
    assert "seg" in annotators.available_annotators()
    assert annotators.annotator_identity("seg").startswith("seg@:upernet-ade:")
    assert annotators.local_annotator_files([models])["seg"] == str(ade)
    image = annotators.annotate("seg", np.zeros((20, 30, 3), np.uint8))
    assert image.shape == (20, 30, 3)


def test_a_model_in_a_folder_added_in_the_editor_makes_seg_available(
    tiny_ade, tmp_path, monkeypatch
):
    """The editor's settings (its models folder, folders added in the Model manager) are where
    annotators are looked for too, once applied, not only where models are listed."""
    monkeypatch.setenv("ZVSTUDIO_CACHE_LIMIT_GB", "20")  # apply_settings sets it: restored after
    from zvstudio.appsettings import AppSettings, apply_settings
    from zvstudio.diffusion import annotators
    from zvstudio.diffusion.library import default_model_folders

    added = tmp_path / "webui"
    ade = copy_model(tiny_ade, added / "annotators" / "upernet-ade")
    annotators.refresh_local_annotators()
    assert not annotators.has_annotator("seg") and find_seg_model() is None
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    apply_settings(AppSettings(models_dir=str(chosen), model_folders=[str(added)]))
    assert default_model_folders()[:2] == [chosen, added]
    assert find_seg_model() == ade
    assert annotators.has_annotator("seg")  # looked for again after the folders changed
    # Explicit folders (the Model manager's while it edits them) are taken as they are.
    assert added not in default_model_folders(None, [])
    apply_settings(AppSettings())
    assert not annotators.has_annotator("seg")
