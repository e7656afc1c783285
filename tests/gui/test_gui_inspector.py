"""The inspector (pytest-qt, offscreen): each user change is one undoable edit, refreshes from
the document push nothing, diffusion's widgets follow the renderer, per-key overrides."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from helpers import make_clip
from PySide6.QtCore import Qt

from zvstudio.diffusion.identify import FACE_ID_LAYOUT, ModelInfo
from zvstudio.engine.request import request_from_project
from zvstudio.gui.document import Document
from zvstudio.gui.inspector import Inspector
from zvstudio.project import ClipRef, KeyFrame, Project, RenderSettings
from zvstudio.project.edits import SetKey, SetSettings
from zvstudio.project.model import SEED_MAX


def make_inspector(qtbot, document: Document, models=None) -> Inspector:
    inspector = Inspector(document, models)
    qtbot.addWidget(inspector)
    inspector.show()
    qtbot.waitExposed(inspector)
    return inspector


@pytest.fixture
def document() -> Document:
    return Document()


@pytest.fixture
def diffusion(document) -> Document:
    """A document whose project renders with diffusion, with a key at frame 5."""
    document.push(SetSettings(replace(document.project.settings, renderer="diffusion")))
    document.push(SetKey(KeyFrame(5)))
    document.undo_stack.clear()
    return document


def item_texts(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def key_placeholder_shown(inspector: Inspector) -> bool:
    # On the Key tab, which need not be the current one.
    return inspector.key_placeholder.isVisibleTo(inspector.key_panel)


def choose(combo, data) -> None:
    index = combo.findData(data)
    assert index >= 0, data
    combo.setCurrentIndex(index)


def test_typing_a_prompt_is_one_undoable_step(qtbot, diffusion):
    inspector = make_inspector(qtbot, diffusion)
    qtbot.keyClicks(inspector.prompt_edit, "a fox")
    assert diffusion.project.settings.prompt == "a fox"
    assert diffusion.undo_stack.count() == 1  # five keystrokes, one step

    diffusion.undo_stack.undo()
    assert diffusion.project.settings.prompt == ""
    assert inspector.prompt_edit.toPlainText() == ""
    diffusion.undo_stack.redo()
    assert inspector.prompt_edit.toPlainText() == "a fox"
    assert diffusion.undo_stack.count() == 1


def test_building_and_refreshing_push_nothing(qtbot, document):
    settings = RenderSettings(
        renderer="diffusion", cross_frame_layers="all", controlnet=None, prompt="ink", seed=9
    )
    document.load_recovered(Project(settings=settings), None)
    inspector = make_inspector(qtbot, document)
    assert document.undo_stack.count() == 0
    assert document.project.settings == settings  # filling the combos changed nothing
    assert inspector.render_panel.cross_frame_combo.currentData() == "all"
    assert inspector.prompt_edit.toPlainText() == "ink"

    document.load_recovered(Project(settings=RenderSettings(prompt="loaded")), None)
    assert inspector.prompt_edit.toPlainText() == "loaded"
    assert inspector.renderer_combo.currentData() == "stylize"
    assert document.undo_stack.count() == 0


def test_undo_and_redo_refresh_the_widgets_without_pushing(qtbot, diffusion):
    inspector = make_inspector(qtbot, diffusion)
    panel = inspector.render_panel
    panel.steps_spin.setValue(30)
    qtbot.keyClicks(inspector.negative_prompt_edit, "blur")
    inspector.seed_spin.setValue(42)
    assert diffusion.undo_stack.count() == 3
    expected = [(20, "", 0), (30, "", 0), (30, "blur", 0), (30, "blur", 42)]

    def shown():
        return (
            panel.steps_spin.value(),
            inspector.negative_prompt_edit.toPlainText(),
            int(inspector.seed_spin.value()),
        )

    for index in (2, 1, 0, 1, 2, 3):
        diffusion.undo_stack.setIndex(index)
        assert shown() == expected[index]
        assert diffusion.undo_stack.count() == 3


def test_switching_the_renderer_shows_and_hides_diffusion_widgets(qtbot, document):
    inspector = make_inspector(qtbot, document)
    assert not inspector.diffusion_box.isVisible()
    assert inspector.style_combo.isVisible()

    choose(inspector.renderer_combo, "diffusion")
    assert document.project.settings.renderer == "diffusion"
    assert inspector.diffusion_box.isVisible()
    assert inspector.prompt_edit.isVisible()
    assert not inspector.style_combo.isVisible()

    choose(inspector.renderer_combo, "painted")
    assert not inspector.diffusion_box.isVisible()
    assert inspector.render_panel.painted_note.isVisible()
    assert document.undo_stack.count() == 2  # a renderer switch never merges

    document.undo_stack.undo()
    document.undo_stack.undo()
    assert inspector.renderer_combo.currentData() == "stylize"
    assert not inspector.diffusion_box.isVisible()


def test_style_combo_sets_the_style_and_describes_it(qtbot, document):
    inspector = make_inspector(qtbot, document)
    combo = inspector.style_combo
    other = next(
        combo.itemData(i) for i in range(combo.count()) if combo.itemData(i) != "stylization"
    )
    choose(combo, other)
    assert document.project.settings.style == other
    assert combo.toolTip()  # the style's one-line description


def test_style_parameters_are_edited_per_parameter_and_reset(qtbot, document):
    document.push(SetSettings(RenderSettings(style="cartoon")))
    document.undo_stack.clear()
    inspector = make_inspector(qtbot, document)
    editor = inspector.render_panel.style_params_editor
    assert editor.is_visible()
    assert list(editor.editors) == ["colors", "line_size", "line_threshold", "outlines"]
    colors = editor.editors["colors"]
    assert (colors.minimum(), colors.maximum(), colors.value()) == (2, 32, 8)
    assert colors.toolTip() == "Number of flat colours"
    assert not editor.reset_button.isEnabled()

    colors.setValue(5)
    colors.setValue(6)  # the same parameter again: one undo step
    editor.editors["outlines"].click()
    assert document.project.settings.style_params == {"colors": 6, "outlines": False}
    assert document.undo_stack.count() == 2
    # An odd-only parameter steps by two.
    line_size = editor.editors["line_size"]
    line_size.stepUp()
    assert document.project.settings.style_params["line_size"] == 11
    assert editor.reset_button.isEnabled()
    qtbot.mouseClick(editor.reset_button, Qt.LeftButton)
    assert document.project.settings.style_params == {}
    assert colors.value() == 8 and editor.editors["outlines"].isChecked()
    document.undo_stack.undo()  # the reset
    assert colors.value() == 6 and not editor.editors["outlines"].isChecked()
    # The render uses them; another style starts from its own defaults, in one step.
    request = request_from_project(
        replace(document.project, clip=ClipRef("/clip.mp4")), Path("/out.mp4")
    )
    assert dict(request.renderer.params) == {"colors": 6, "line_size": 11, "outlines": False}
    choose(inspector.style_combo, "posterize")
    assert document.project.settings.style_params == {}
    assert list(editor.editors) == ["levels", "smooth"]
    document.undo_stack.undo()
    assert document.project.settings.style == "cartoon"
    assert editor.editors["line_size"].value() == 11


def test_style_parameters_of_a_file_are_shown_and_hidden_for_diffusion(qtbot, document):
    settings = RenderSettings(style="stylization", style_params={"filter": "normconv"})
    document.push(SetSettings(settings))
    inspector = make_inspector(qtbot, document)
    editor = inspector.render_panel.style_params_editor
    assert editor.editors["filter"].currentData() == "normconv"
    assert editor.editors["sigma_r"].value() == pytest.approx(0.45)
    # Steps of about a hundredth of each range.
    assert editor.editors["sigma_r"].singleStep() == pytest.approx(0.01)
    assert editor.editors["sigma_s"].singleStep() == 1
    document.push(SetSettings(RenderSettings(style="pencil")))
    shade = editor.editors["shade_factor"]
    assert (shade.singleStep(), shade.decimals(), shade.value()) == (0.001, 3, 0.02)
    assert document.undo_stack.count() == 2  # showing them pushed nothing
    choose(inspector.renderer_combo, "diffusion")
    assert not editor.is_visible()


def test_a_key_override_sets_and_clears_the_keys_prompt(qtbot, diffusion):
    diffusion.push(SetSettings(replace(diffusion.project.settings, prompt="a city")))
    inspector = make_inspector(qtbot, diffusion)
    assert key_placeholder_shown(inspector)
    inspector.set_current_key(5)
    assert not key_placeholder_shown(inspector)
    assert not inspector.key_prompt_edit.isEnabled()
    assert inspector.key_prompt_edit.placeholderText() == "a city"  # the global value, greyed

    inspector.key_prompt_override.setChecked(True)
    assert diffusion.project.key_at(5).prompt == "a city"  # starts from the global prompt
    assert inspector.key_prompt_edit.isEnabled()
    inspector.key_prompt_edit.selectAll()
    qtbot.keyClicks(inspector.key_prompt_edit, "a storm")
    assert diffusion.project.key_at(5).prompt == "a storm"
    assert diffusion.project.settings.prompt == "a city"

    inspector.key_prompt_override.setChecked(False)
    assert diffusion.project.key_at(5).prompt is None
    assert inspector.key_prompt_edit.toPlainText() == ""

    count = diffusion.undo_stack.count()
    diffusion.undo_stack.undo()  # back to the typed override
    assert inspector.key_prompt_override.isChecked()
    assert inspector.key_prompt_edit.toPlainText() == "a storm"
    assert diffusion.undo_stack.count() == count


def test_key_seed_and_strength_overrides(qtbot, diffusion):
    inspector = make_inspector(qtbot, diffusion)
    inspector.set_current_key(5)
    seed = inspector.key_panel.overrides["seed"]
    seed.check.setChecked(True)
    seed.editor.setValue(SEED_MAX)  # beyond a 32-bit signed spin box
    strength = inspector.key_panel.overrides["strength"]
    strength.check.setChecked(True)
    strength.editor.setValue(0.4)
    assert diffusion.project.key_at(5) == KeyFrame(5, seed=SEED_MAX, strength=0.4)


def test_a_key_takes_a_reference_image_of_its_own(qtbot, diffusion, tmp_path):
    look = tmp_path / "look.png"
    diffusion.push(SetSettings(replace(diffusion.project.settings, reference_image=str(look))))
    inspector = make_inspector(qtbot, diffusion)
    panel, render = inspector.key_panel, inspector.render_panel
    inspector.set_current_key(5)
    assert panel.reference_label.full_text() == "look.png"  # the project's, greyed
    assert not panel.reference_label.isEnabled() and not panel.clear_reference_button.isEnabled()
    shot = tmp_path / "shot2.png"
    inspector.dialogs.open_file = lambda title, name_filter: str(shot)
    qtbot.mouseClick(panel.reference_button, Qt.LeftButton)
    assert diffusion.project.key_at(5).reference_image == str(shot)
    assert diffusion.undo_stack.undoText() == "give key 5 a reference image"
    assert panel.reference_label.full_text() == "shot2.png" and panel.reference_label.isEnabled()
    assert panel.clear_reference_button.isEnabled()
    # Without the project's, the key's own keeps the strength and adapter rows in use.
    render.clear_reference_button.click()
    assert diffusion.project.settings.reference_image is None
    assert render.reference_strength_spin.isEnabled() and render.ip_adapter_combo.isEnabled()
    qtbot.mouseClick(panel.clear_reference_button, Qt.LeftButton)
    assert diffusion.project.key_at(5) == KeyFrame(5)
    assert panel.reference_label.full_text() == "None"
    assert not render.reference_strength_spin.isEnabled()
    diffusion.undo_stack.undo()
    assert panel.reference_label.full_text() == "shot2.png"


def test_a_key_takes_a_reference_strength_of_its_own(qtbot, diffusion, tmp_path):
    inspector = make_inspector(qtbot, diffusion)
    inspector.set_current_key(5)
    strength = inspector.key_panel.overrides["reference_strength"]
    assert not strength.check.isEnabled()  # no reference image: a strength would do nothing
    look = tmp_path / "look.png"
    settings = replace(diffusion.project.settings, reference_image=str(look))
    diffusion.push(SetSettings(replace(settings, reference_strength=0.6)))
    assert strength.check.isEnabled() and not strength.check.isChecked()
    assert strength.editor.value() == 0.6 and not strength.editor.isEnabled()  # the project's
    strength.check.setChecked(True)
    strength.editor.setValue(1.2)
    assert diffusion.project.key_at(5) == KeyFrame(5, reference_strength=1.2)
    strength.check.setChecked(False)
    assert diffusion.project.key_at(5) == KeyFrame(5)
    assert strength.editor.value() == 0.6


def test_no_key_selected_says_so(qtbot, diffusion):
    inspector = make_inspector(qtbot, diffusion)
    inspector.set_current_key(6)  # not a key
    assert key_placeholder_shown(inspector)
    assert "Select a key frame" in inspector.key_placeholder.text()
    inspector.set_current_key(5)
    diffusion.toggle_key(5)  # the key goes away under the inspector
    assert key_placeholder_shown(inspector)
    diffusion.undo_stack.undo()
    assert not key_placeholder_shown(inspector)


def test_painted_image_is_stored_and_cleared(qtbot, diffusion, tmp_path):
    inspector = make_inspector(qtbot, diffusion)
    painting = tmp_path / "key5.png"
    inspector.dialogs.open_file = lambda title, name_filter: str(painting)
    inspector.set_current_key(5)
    qtbot.mouseClick(inspector.key_panel.paint_button, Qt.LeftButton)
    assert diffusion.project.key_at(5).painted_image == str(painting)
    assert "key5.png" in inspector.key_panel.painted_label.text()
    qtbot.mouseClick(inspector.key_panel.clear_paint_button, Qt.LeftButton)
    assert diffusion.project.key_at(5).painted_image is None
    assert not inspector.key_panel.clear_paint_button.isEnabled()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path, _, _ = make_clip(tmp_path_factory.mktemp("clip") / "c.mp4", count=24, width=64, height=48)
    return path


def test_fill_keys_every_k(qtbot, document, clip):
    document.import_clip(clip, key_interval=10)
    inspector = make_inspector(qtbot, document)
    document.push(SetKey(KeyFrame(7, prompt="keep me")))
    inspector.key_interval_spin.setValue(6)
    assert document.project.settings.key_interval == 6
    qtbot.mouseClick(inspector.fill_keys_button, Qt.LeftButton)
    assert [k.frame for k in document.project.keyframes] == [0, 6, 7, 12, 18]
    document.undo_stack.undo()
    assert [k.frame for k in document.project.keyframes] == [0, 7, 10, 20]


def test_fill_keys_starts_again_at_each_shot(qtbot, document, clip):
    document.import_clip(clip, key_interval=10)
    document.push(SetKey(KeyFrame(7, prompt="keep me")))  # an edit: the import keys stay
    document.set_shot_cuts([13])
    assert [k.frame for k in document.project.keyframes] == [0, 7, 10, 20]
    inspector = make_inspector(qtbot, document)
    qtbot.mouseClick(inspector.fill_keys_button, Qt.LeftButton)
    assert [k.frame for k in document.project.keyframes] == [0, 7, 10, 13, 23]


def test_a_fresh_imports_keys_follow_the_shots_once_found(document, clip):
    document.import_clip(clip, key_interval=10)
    document.set_shot_cuts([13])
    assert [k.frame for k in document.project.keyframes] == [0, 10, 13, 23]
    assert document.undo_stack.count() == 0  # part of the import, nothing to undo
    document.set_shot_cuts([])  # no cut: the keys stay as they are
    assert [k.frame for k in document.project.keyframes] == [0, 10, 13, 23]


def test_constraint_settings_change_the_project(qtbot, diffusion):
    inspector = make_inspector(qtbot, diffusion)
    panel = inspector.render_panel
    adain = panel.constraint_rows["adain"]
    adain.check.click()
    assert diffusion.project.settings.adain is False
    assert not adain.start.isEnabled()

    assert "Shape-aware fusion will not run" in panel.schedule_warning.text()
    panel.constraint_rows["shape_fusion"].start.setValue(0.7)  # below the 0.75 strength
    assert diffusion.project.settings.shape_fusion_start == pytest.approx(0.7)
    assert panel.schedule_warning.text() == ""

    choose(panel.cross_frame_combo, "off")
    assert diffusion.project.settings.cross_frame_layers == "off"
    choose(panel.pixel_fusion_mode_combo, "two_pass")
    panel.pixel_fusion_detail_spin.setValue(0.9)
    assert diffusion.project.settings.pixel_fusion_mode == "two_pass"
    assert diffusion.project.settings.pixel_fusion_detail == pytest.approx(0.9)
    panel.colour_correction_check.click()
    assert diffusion.project.settings.colour_correction is True
    for _ in range(6):
        diffusion.undo_stack.undo()
    assert diffusion.project.settings == RenderSettings(renderer="diffusion")
    assert adain.check.isChecked() and adain.start.isEnabled()


def test_the_key_size_is_set_and_says_where_keys_are_rendered(qtbot, document, tmp_path):
    hd, _, _ = make_clip(tmp_path / "hd.mp4", count=2, width=1280, height=720)
    document.import_clip(hd)
    document.push(SetSettings(replace(document.project.settings, renderer="diffusion")))
    panel = make_inspector(qtbot, document).render_panel
    assert panel.key_size_spin.value() == 512
    assert panel.key_size_note.text() == "Keys at 910 × 512, scaled to 1280 × 720"
    panel.key_size_spin.setValue(0)
    assert document.project.settings.key_size == 0
    assert panel.key_size_spin.text() == "Clip size"
    assert panel.key_size_note.text() == "Keys at the frames' 1280 × 720"
    panel.key_size_spin.setValue(768)
    assert panel.key_size_note.text() == "Keys at the frames' 1280 × 720"  # never enlarged
    document.undo_stack.undo()
    document.undo_stack.undo()
    assert document.project.settings.key_size == 512 and panel.key_size_spin.value() == 512


def test_the_render_size_offers_the_sizes_below_the_clips(qtbot, document, tmp_path):
    panel = make_inspector(qtbot, document).render_panel
    assert item_texts(panel.render_size_combo)[:2] == ["Clip size", "2160 px short side"]
    hd, _, _ = make_clip(tmp_path / "hd.mp4", count=2, width=1280, height=720)
    document.import_clip(hd)
    document.push(SetSettings(replace(document.project.settings, renderer="diffusion")))
    combo = panel.render_size_combo
    assert item_texts(combo) == ["Clip size (1280 × 720)", "960 × 540", "640 × 360"]
    assert combo.currentData() == 0
    choose(combo, 360)
    assert document.project.settings.short_side == 360
    assert panel.key_size_note.text() == "Keys at the frames' 640 × 360"
    choose(combo, 540)
    assert panel.key_size_note.text() == "Keys at 910 × 512, scaled to 960 × 540"
    document.undo_stack.undo()
    assert document.project.settings.short_side == 360 and combo.currentData() == 360
    document.push(SetSettings(replace(document.project.settings, short_side=600)))  # a file's
    assert combo.currentText() == "600 px short side"


def test_propagation_settings_change_the_project(qtbot, document):
    inspector = make_inspector(qtbot, document)
    panel = inspector.render_panel
    # Shown for every renderer: painted and stylized keys are propagated too.
    assert panel.synthesis_combo.isVisible() and panel.poisson_check.isVisible()
    choose(panel.synthesis_combo, "patch")
    choose(panel.flow_preset_combo, "medium")
    choose(panel.blend_combo, "histogram")
    panel.poisson_check.click()
    changed = RenderSettings(synthesis="patch", flow_preset="medium", blend="histogram")
    assert document.project.settings == replace(changed, poisson=True)
    assert document.undo_stack.count() == 4
    document.undo_stack.undo()
    assert document.project.settings == changed and not panel.poisson_check.isChecked()
    for _ in range(3):
        document.undo_stack.undo()
    assert document.project.settings == RenderSettings()
    assert panel.synthesis_combo.currentData() == "flow"
    assert panel.flow_preset_combo.currentData() == "fine"
    assert panel.blend_combo.currentData() == "soft"
    # A project opened with other values shows them.
    document.push(SetSettings(RenderSettings(flow_preset="ultrafast", poisson=True)))
    assert panel.flow_preset_combo.currentData() == "ultrafast" and panel.poisson_check.isChecked()


def test_a_range_cannot_be_made_empty(qtbot, diffusion):
    inspector = make_inspector(qtbot, diffusion)
    row = inspector.render_panel.constraint_rows["pixel_fusion"]
    row.start.setValue(0.95)  # above its end (0.8): the spin box stops below the end
    assert (
        diffusion.project.settings.pixel_fusion_start < diffusion.project.settings.pixel_fusion_end
    )
    assert not inspector.message_label.isVisible()


def test_random_seed_and_large_seeds(qtbot, diffusion, monkeypatch):
    inspector = make_inspector(qtbot, diffusion)
    monkeypatch.setattr("zvstudio.gui.inspector.random.randint", lambda low, high: 3_000_000_000)
    qtbot.mouseClick(inspector.render_panel.random_seed_button, Qt.LeftButton)
    assert diffusion.project.settings.seed == 3_000_000_000
    assert int(inspector.seed_spin.value()) == 3_000_000_000


def test_controlnet_choices(qtbot, diffusion):
    from zvstudio.diffusion import controlnet

    inspector = make_inspector(qtbot, diffusion)
    combo = inspector.render_panel.controlnet_combo
    items = combo.model()
    for name in controlnet.UNAVAILABLE_ANNOTATORS:
        index = combo.findData(name)
        assert not items.item(index).isEnabled()
        assert "annotator weights" in combo.itemData(index, Qt.ToolTipRole)
    lineart_tip = combo.itemData(combo.findData("lineart"), Qt.ToolTipRole)
    assert "sk_model.pth" in lineart_tip and "annotators/" in lineart_tip
    assert items.item(combo.findData("canny")).isEnabled()
    choose(combo, None)
    assert diffusion.project.settings.controlnet is None
    assert not inspector.render_panel.controlnet_scale_spin.isEnabled()


def model(path: Path, kind: str, base: str = "sd1") -> ModelInfo:
    return ModelInfo(path, path.stem, kind, base, "safetensors", 1)


def test_models_and_loras_from_the_library_and_browse(qtbot, diffusion, tmp_path):
    library = [
        model(tmp_path / "dreamy.safetensors", "checkpoint"),
        model(tmp_path / "xl.safetensors", "checkpoint", "sdxl"),
        model(tmp_path / "ink.safetensors", "lora"),
    ]
    inspector = make_inspector(qtbot, diffusion, lambda: library)
    combo = inspector.model_combo
    choose(combo, str(tmp_path / "dreamy.safetensors"))
    assert diffusion.project.settings.model == str(tmp_path / "dreamy.safetensors")
    assert not combo.model().item(combo.findData(str(tmp_path / "xl.safetensors"))).isEnabled()

    browsed = tmp_path / "elsewhere" / "mine.safetensors"
    inspector.dialogs.open_file = lambda title, name_filter: str(browsed)
    inspector.render_panel.model_browse_button.menu().actions()[0].trigger()
    assert diffusion.project.settings.model == str(browsed)
    assert combo.currentText() == "mine.safetensors"

    loras = inspector.render_panel.lora_list
    names = [a.text() for a in loras.add_button.menu().actions()]
    assert names[0] == "ink" and names[-1] == "Browse…"
    loras.add_button.menu().actions()[0].trigger()
    loras.rows[0].weight.setValue(0.6)
    loras.rows[0].weight.setValue(0.5)  # one step with the 0.6
    assert [(lo.path, lo.weight) for lo in diffusion.project.settings.loras] == [
        (str(tmp_path / "ink.safetensors"), 0.5)
    ]
    count = diffusion.undo_stack.count()
    qtbot.mouseClick(loras.rows[0].remove_button, Qt.LeftButton)
    assert diffusion.project.settings.loras == [] and loras.rows == []
    diffusion.undo_stack.undo()
    diffusion.undo_stack.undo()
    assert [lo.weight for lo in diffusion.project.settings.loras] == [1.0]
    assert diffusion.undo_stack.count() == count + 1


def test_more_controlnets_are_added_weighted_and_removed(qtbot, diffusion, tmp_path):
    from zvstudio.project import ControlNetRef

    inspector = make_inspector(qtbot, diffusion)
    controls = inspector.render_panel.more_controlnets_list
    actions = {a.text(): a for a in controls.add_button.menu().actions() if a.text()}
    assert actions["canny"].isEnabled()
    assert all(not a.isEnabled() for text, a in actions.items() if "needs annotator" in text)
    actions["canny"].trigger()
    assert diffusion.undo_stack.undoText() == "add ControlNet canny"
    controls.rows[0].weight.setValue(0.5)
    controls.rows[0].weight.setValue(0.4)  # one step with the 0.5
    browsed = tmp_path / "control_v11f1p_sd15_depth.safetensors"
    inspector.dialogs.open_file = lambda title, name_filter: str(browsed)
    actions["ControlNet file…"].trigger()
    settings = diffusion.project.settings
    assert settings.more_controlnets == [ControlNetRef("canny", 0.4), ControlNetRef(str(browsed))]
    assert [row.name.toolTip() for row in controls.rows] == ["canny", str(browsed)]
    assert settings.controlnet == "canny"  # the first ControlNet is its own row
    qtbot.mouseClick(controls.rows[0].remove_button, Qt.LeftButton)
    assert diffusion.project.settings.more_controlnets == [ControlNetRef(str(browsed))]
    assert len(controls.rows) == 1
    diffusion.undo_stack.undo()
    assert [row.weight.value() for row in controls.rows] == [0.4, 0.7]
    diffusion.undo_stack.undo()  # the file
    diffusion.undo_stack.undo()  # the weight
    assert diffusion.project.settings.more_controlnets == [ControlNetRef("canny", 0.7)]


def test_controlnet_steps_are_a_range_of_the_steps(qtbot, diffusion):
    inspector = make_inspector(qtbot, diffusion)
    panel = inspector.render_panel
    start, end = panel.controlnet_start_spin, panel.controlnet_end_spin
    assert start.isEnabled() and (start.value(), end.value()) == (0.0, 1.0)
    end.setValue(0.6)
    assert diffusion.project.settings.controlnet_end == 0.6
    assert start.maximum() == pytest.approx(0.59)  # never an empty range
    diffusion.push(SetSettings(replace(diffusion.project.settings, controlnet=None)))
    assert not start.isEnabled() and not end.isEnabled()  # no ControlNet to guide


def test_a_vae_from_the_library_or_browsed_and_back_to_the_checkpoints(qtbot, diffusion, tmp_path):
    library = [
        model(tmp_path / "dreamy.safetensors", "checkpoint"),
        model(tmp_path / "vae-ft-mse.safetensors", "vae"),
        model(tmp_path / "sdxl_vae.safetensors", "vae", "sdxl"),
    ]
    inspector = make_inspector(qtbot, diffusion, lambda: library)
    panel = inspector.render_panel
    combo = panel.vae_combo
    assert item_texts(combo) == ["The checkpoint's own", "vae-ft-mse", "sdxl_vae"]
    assert not combo.model().item(2).isEnabled()  # an SDXL VAE washes SD1.x colours out
    choose(combo, str(tmp_path / "vae-ft-mse.safetensors"))
    assert diffusion.project.settings.vae == str(tmp_path / "vae-ft-mse.safetensors")
    assert diffusion.undo_stack.undoText() == "change VAE"

    folder = tmp_path / "models" / "other-model"
    inspector.dialogs.open_folder = lambda title: str(folder)
    panel.vae_browse_button.menu().actions()[1].trigger()
    assert diffusion.project.settings.vae == str(folder)
    assert combo.currentText() == "other-model" and combo.toolTip() == str(folder)
    choose(combo, None)
    assert diffusion.project.settings.vae is None
    diffusion.undo_stack.undo()
    assert combo.currentData() == str(folder)


def test_a_reference_image_with_its_strength_and_ip_adapter(qtbot, diffusion, tmp_path):
    library = [
        model(tmp_path / "ip-adapter_sd15.safetensors", "ip_adapter"),
        model(tmp_path / "ip-adapter_sdxl.safetensors", "ip_adapter", "sdxl"),
        replace(
            model(tmp_path / "faceid.safetensors", "ip_adapter"),
            details={"layout": FACE_ID_LAYOUT},
        ),
    ]
    inspector = make_inspector(qtbot, diffusion, lambda: library)
    panel = inspector.render_panel
    assert panel.reference_label.full_text() == "None"
    assert not panel.reference_strength_spin.isEnabled()
    assert not panel.clear_reference_button.isEnabled()
    image = tmp_path / "look.png"
    inspector.dialogs.open_file = lambda title, name_filter: str(image)
    panel.reference_button.click()
    settings = diffusion.project.settings
    assert settings.reference_image == str(image)
    assert diffusion.undo_stack.undoText() == "choose a reference image"
    assert panel.reference_label.full_text() == "look.png"
    assert panel.reference_strength_spin.isEnabled()
    assert not panel.reference_note.isVisible()  # an adapter is in the library
    combo = panel.ip_adapter_combo
    assert item_texts(combo)[1:] == ["ip-adapter_sd15", "ip-adapter_sdxl", "faceid"]
    assert [combo.model().item(i).isEnabled() for i in (1, 2, 3)] == [True, False, False]
    choose(combo, str(tmp_path / "ip-adapter_sd15.safetensors"))
    panel.reference_strength_spin.setValue(0.9)
    settings = diffusion.project.settings
    assert settings.ip_adapter == str(tmp_path / "ip-adapter_sd15.safetensors")
    assert settings.reference_strength == 0.9
    panel.clear_reference_button.click()
    assert diffusion.project.settings.reference_image is None
    diffusion.undo_stack.undo()
    assert diffusion.project.settings.reference_image == str(image)
    # Without an IP-Adapter anywhere, the panel says what to get.
    choose(combo, None)
    bare = make_inspector(qtbot, diffusion, lambda: [])
    assert bare.render_panel.reference_note.isVisible()
    assert "ip-adapter_sd15.safetensors" in bare.render_panel.reference_note.text()


def test_clip_skip_is_a_setting_of_the_sampling(qtbot, diffusion):
    inspector = make_inspector(qtbot, diffusion)
    spin = inspector.render_panel.clip_skip_spin
    assert spin.value() == 1 and (spin.minimum(), spin.maximum()) == (1, 12)
    spin.setValue(2)
    assert diffusion.project.settings.clip_skip == 2
    diffusion.undo_stack.undo()
    assert diffusion.project.settings.clip_skip == 1 and spin.value() == 1


def test_a_checkpoint_without_a_vae_asks_for_one(qtbot, diffusion, tmp_path):
    from safetensors.torch import load_file, save_file
    from tiny_models import write_tiny_single_file

    whole = write_tiny_single_file(tmp_path / "whole.safetensors")
    state = {k: v for k, v in load_file(whole).items() if "first_stage_model." not in k}
    pruned = tmp_path / "pruned.safetensors"
    save_file(state, str(pruned))
    inspector = make_inspector(qtbot, diffusion)
    note = inspector.render_panel.vae_note
    inspector.render_panel.set_model(str(whole))
    assert not note.isVisible()
    inspector.render_panel.set_model(str(pruned))
    assert note.isVisible() and "no VAE of its own" in note.text()
    diffusion.push(SetSettings(replace(diffusion.project.settings, vae=str(tmp_path / "v"))))
    assert not note.isVisible()
