"""File > Animate image... with the DynamiCrafter engine (pytest-qt, offscreen): offered only
with a checkpoint, its fields and reasons, the request it builds, remembered values, and a clip
made from the menu on a tiny random checkpoint, opened as a project."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from PySide6.QtWidgets import QMessageBox
from test_generate_dialogs import Answers, browse, pick, reason

from zvstudio.appsettings import AppSettings, load_settings
from zvstudio.diffusion.identify import ModelInfo
from zvstudio.errors import ZvsError
from zvstudio.gui.generate_dialogs import (
    NO_DYNAMICRAFTER,
    AnimateDialog,
    DynamiCrafterChoice,
    ModelPolicy,
)
from zvstudio.gui.mainwindow import MainWindow
from zvstudio.media import probe


def video_model(path: Path, base: str = "dynamicrafter") -> ModelInfo:
    return ModelInfo(path, path.parent.name, "video_model", base, "safetensors", 1)


@pytest.fixture
def files(tmp_path):
    """Checkpoints (empty files: the dialog reads names only) and two images."""
    paths = {
        "512": tmp_path / "dynamicrafter_512_v1" / "model.safetensors",
        "interp": tmp_path / "dynamicrafter_512_interp_v1" / "model.safetensors",
        "nameless": tmp_path / "checkpoints" / "model.safetensors",
        "pickled": tmp_path / "dynamicrafter_1024_v1" / "model.ckpt",
        "image": tmp_path / "first.png",
        "last": tmp_path / "last.png",
    }
    for path in paths.values():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
    return paths


def make(qtbot, folder: Path, library, remembered=None, allow_pickle=False) -> AnimateDialog:
    dialog = AnimateDialog(
        None, library, remembered, folder, Answers(None), allow_pickle=allow_pickle
    )
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def engine_item(dialog):
    return dialog.engine_combo.model().item(dialog.engine_combo.findData("dynamicrafter"))


def select(combo, value) -> None:
    index = combo.findData(value)
    assert index >= 0, value
    combo.setCurrentIndex(index)


def test_dynamicrafter_is_offered_only_with_a_checkpoint(qtbot, tmp_path, files):
    # An unknown video model is listed, but is no DynamiCrafter checkpoint.
    dialog = make(qtbot, tmp_path, [video_model(files["nameless"], "unknown")])
    assert not engine_item(dialog).isEnabled()
    assert engine_item(dialog).toolTip() == NO_DYNAMICRAFTER
    assert "dynamicrafter_512_v1/model.ckpt" in NO_DYNAMICRAFTER
    assert dialog.engine() == "animatezero" and dialog.dc_browse_button.isVisible()
    # Browsing to one offers it, and switches to it.
    browse(qtbot, dialog, dialog.dc_browse_button, files["512"])
    assert engine_item(dialog).isEnabled() and not dialog.dc_browse_button.isVisible()
    assert dialog.engine() == "dynamicrafter" and dialog.dc_picker.path() == files["512"]

    # In the library: offered, and chosen already, but AnimateZero stays the default.
    dialog = make(qtbot, tmp_path, [video_model(files["512"])])
    assert engine_item(dialog).isEnabled() and not dialog.dc_browse_button.isVisible()
    assert dialog.engine() == "animatezero"
    assert dialog.dc_picker.path() == files["512"]


def test_each_engine_shows_its_own_fields(qtbot, tmp_path, files):
    dialog = make(qtbot, tmp_path, [video_model(files["interp"])])
    assert dialog.windowTitle() == "Animate image (AnimateZero)"
    assert dialog.model_group.isVisible() and dialog.clip_group.isVisible()
    assert dialog.size_row.isVisible() and dialog.window_combo.isVisible()
    assert not dialog.dc_group.isVisible() and not dialog.last_image_field.isVisible()

    select(dialog.engine_combo, "dynamicrafter")
    assert dialog.windowTitle() == "Animate image (DynamiCrafter)"
    assert dialog.dc_group.isVisible() and dialog.last_image_field.isVisible()
    assert not dialog.model_group.isVisible() and not dialog.clip_group.isVisible()
    assert not dialog.size_row.isVisible() and not dialog.motion_picker.isVisible()
    assert not dialog.last_image_field.isEnabled()  # interpolate only
    select(dialog.dc_mode_combo, "interpolate")
    assert dialog.last_image_field.isEnabled()
    # The defaults of the released scripts, the preset's own motion number and rescale.
    spins = (dialog.dc_frames_spin, dialog.dc_steps_spin, dialog.dc_guidance_spin)
    assert [s.value() for s in spins] == [16, 50, 7.5]
    assert (dialog.dc_seed_spin.value(), dialog.dc_fps_spin.value()) == (123, 8)
    assert dialog.dc_preset_note.text() == "from the name: 512_interp"
    assert dialog.dc_fs_label.text() == "Motion (fps)"
    assert dialog.dc_fs_spin.text().startswith("Default (5")
    assert dialog.dc_guidance_rescale_spin.text() == "Default (0.7)"
    assert "lower moves more" in dialog.dc_fs_spin.toolTip()
    assert "higher moves more" in dialog.dc_fs_spin.toolTip()
    select(dialog.dc_preset_combo, "256")
    assert dialog.dc_fs_label.text() == "Motion (frame stride)"
    assert dialog.dc_guidance_rescale_spin.text() == "Default (0)"


def test_dynamicrafter_reasons(qtbot, tmp_path, files):
    dialog = make(qtbot, tmp_path, [video_model(files["nameless"]), video_model(files["512"])])
    select(dialog.engine_combo, "dynamicrafter")
    assert dialog.dc_picker.path() == files["nameless"]
    assert "Cannot tell which DynamiCrafter model model.safetensors is" in reason(dialog)
    assert dialog.dc_preset_note.text() == "the file name does not tell: choose one"
    select(dialog.dc_preset_combo, "512")
    assert "Choose the image to animate" in reason(dialog)  # no generated still here
    with pytest.raises(ZvsError, match="image"):
        dialog.choice()
    dialog.prompt_edit.setPlainText("waves")
    assert "Choose the image to animate" in reason(dialog)
    browse(qtbot, dialog, dialog.image_field.button, files["image"])
    assert reason(dialog) == ""

    select(dialog.dc_mode_combo, "interpolate")
    assert "needs the interpolation model (preset 512_interp" in reason(dialog)
    select(dialog.dc_mode_combo, "loop")
    assert "needs the interpolation model" in reason(dialog)
    select(dialog.dc_preset_combo, "auto")
    pick(dialog.dc_picker, files["512"])
    assert "needs the interpolation model" in reason(dialog)  # 512 from the name
    browse(qtbot, dialog, dialog.dc_picker.file_button, files["interp"])
    assert reason(dialog) == ""  # a loop on the interpolation model
    select(dialog.dc_mode_combo, "animate")
    assert "makes interpolations and loops" in reason(dialog)
    select(dialog.dc_mode_combo, "interpolate")
    assert reason(dialog) == "Choose the last image: the interpolation ends on it."
    dialog.last_image_field.set_path(tmp_path / "gone.png")
    assert "The last image" in reason(dialog) and "does not exist" in reason(dialog)
    dialog.last_image_field.set_path(files["last"])
    assert reason(dialog) == ""

    # A pickled checkpoint needs the setting (the dialog is given it).
    browse(qtbot, dialog, dialog.dc_picker.file_button, files["pickled"])
    assert "model.ckpt is a pickled checkpoint" in reason(dialog)
    assert "allow pickled checkpoints in Settings" in reason(dialog)
    allowed = make(qtbot, tmp_path, [video_model(files["pickled"])], allow_pickle=True)
    select(allowed.engine_combo, "dynamicrafter")
    allowed.image_field.set_path(files["image"])
    assert reason(allowed) == ""
    browse(qtbot, dialog, dialog.dc_picker.file_button, tmp_path / "missing.safetensors")
    assert "checkpoint" in reason(dialog) and "does not exist" in reason(dialog)


def test_dynamicrafter_builds_the_request(qtbot, tmp_path, files):
    dialog = make(qtbot, tmp_path, [video_model(files["512"])])
    select(dialog.engine_combo, "dynamicrafter")
    dialog.image_field.set_path(files["image"])
    dialog.last_image_field.set_path(files["last"])  # ignored unless interpolating
    dialog.prompt_edit.setPlainText("  waves roll in  ")
    dialog.negative_edit.setPlainText("blur")
    settings = AppSettings(device="cpu", precision="fp32", allow_pickle=True)
    choice = dialog.choice()
    assert isinstance(choice, DynamiCrafterChoice)
    request = choice.request(ModelPolicy.from_settings(settings))
    assert (request.checkpoint, request.preset, request.image) == (
        files["512"],
        None,
        files["image"],
    )
    assert request.last_image is None and request.output == tmp_path / "animation.mp4"
    assert (request.device, request.precision, request.allow_pickle) == ("cpu", "fp32", True)
    assert request.fps_out == Fraction(8) and request.export.audio is False
    s = request.settings
    assert (s.prompt, s.negative_prompt, s.mode) == ("waves roll in", "blur", "animate")
    assert (s.frames, s.steps, s.guidance_scale, s.seed) == (16, 50, 7.5, 123)
    assert s.fs is None and s.guidance_rescale is None  # Default: the model's own

    browse(qtbot, dialog, dialog.dc_picker.file_button, files["nameless"])
    select(dialog.dc_preset_combo, "512_interp")
    select(dialog.dc_mode_combo, "interpolate")
    dialog.dc_frames_spin.setValue(4)
    dialog.dc_steps_spin.setValue(3)
    dialog.dc_guidance_spin.setValue(5)
    dialog.dc_guidance_rescale_spin.setValue(0)  # a value, not the default
    dialog.dc_seed_spin.setValue(4_000_000_000)
    dialog.dc_fs_spin.setValue(12)
    dialog.dc_fps_spin.setValue(23.976)
    request = dialog.choice().request(ModelPolicy.from_settings(AppSettings()))
    assert (request.checkpoint, request.preset) == (files["nameless"], "512_interp")
    assert request.last_image == files["last"] and request.fps_out == Fraction(2997, 125)
    assert (request.device, request.precision, request.allow_pickle) == ("auto", "auto", False)
    s = request.settings
    assert (s.mode, s.frames, s.steps, s.guidance_scale) == ("interpolate", 4, 3, 5.0)
    assert (s.guidance_rescale, s.seed, s.fs) == (0.0, 4_000_000_000, 12)
    s.check()


def test_dynamicrafter_values_are_remembered(qtbot, tmp_path, files):
    first = make(qtbot, tmp_path, [])
    browse(qtbot, first, first.dc_browse_button, files["nameless"])
    select(first.dc_preset_combo, "512_interp")
    select(first.dc_mode_combo, "interpolate")
    first.image_field.set_path(files["image"])
    first.last_image_field.set_path(files["last"])
    first.prompt_edit.setPlainText("a flower opens")
    first.dc_frames_spin.setValue(8)
    first.dc_guidance_rescale_spin.setValue(0.5)
    first.dc_fs_spin.setValue(7)
    first.dc_seed_spin.setValue(9)
    first.dc_fps_spin.setValue(10)
    settings = AppSettings(animate_image=first.remembered())
    settings.validate()
    values = settings.to_json()["animate_image"]
    assert values["engine"] == "dynamicrafter" and values["dc_mode"] == "interpolate"
    # Names and values this version does not know are skipped.
    again = make(qtbot, tmp_path, [], {**values, "bogus": 1, "dc_steps": "x"})
    assert again.engine() == "dynamicrafter"  # the remembered file offers the engine
    assert again.choice() == first.choice()
    assert again.dc_steps_spin.value() == 50

    # The checkpoint is gone: AnimateZero, and no DynamiCrafter to offer.
    files["nameless"].unlink()
    gone = make(qtbot, tmp_path, [], values)
    assert gone.engine() == "animatezero" and not engine_item(gone).isEnabled()
    assert gone.dc_frames_spin.value() == 8  # the values are kept for when it is back


# ------------------------------------------------------------------ the job in the editor


@pytest.fixture(scope="module")
def tiny_dynamicrafter(tmp_path_factory):
    """A tiny checkpoint in the released key names under a released folder name (the preset,
    512, is guessed from it), and the tiny 32x24 config that stands in for that preset."""
    from test_dynamicrafter_model import write_tiny_512_release

    return write_tiny_512_release(tmp_path_factory.mktemp("dc") / "dynamicrafter_512_v1")


def test_dynamicrafter_runs_from_the_menu_and_opens_the_clip(
    qtbot, tmp_path, tiny_dynamicrafter, monkeypatch
):
    checkpoint, config = tiny_dynamicrafter
    # The released 512 model is 320x512 and 1.4 B parameters: the tiny one stands in for it.
    monkeypatch.setattr("zvstudio.generate.dynamicrafter.config.preset", lambda name: config)
    image = tmp_path / "still.png"
    cv2.imwrite(str(image), np.full((48, 64, 3), 90, np.uint8))
    output = tmp_path / "waves.mp4"

    def fill_and_accept(dialog):
        assert engine_item(dialog).isEnabled()
        select(dialog.engine_combo, "dynamicrafter")
        dialog.image_field.set_path(image)
        dialog.prompt_edit.setPlainText("waves")
        dialog.dc_frames_spin.setValue(4)
        dialog.dc_steps_spin.setValue(2)
        dialog.dc_fps_spin.setValue(10)
        dialog.output_field.set_path(output)
        return QMessageBox.Ok if dialog.ok_enabled() else 0

    monkeypatch.setattr(AnimateDialog, "exec", fill_and_accept)
    window = MainWindow(AppSettings(device="cpu", precision="fp32"))
    window.models = [video_model(checkpoint)]
    window.errors = []
    window.show_error = lambda title, error: window.errors.append(f"{title}: {error}")
    window.ask = lambda *args: QMessageBox.Discard
    qtbot.addWidget(window)
    window.show()
    try:
        window.animate_image_action.trigger()
        [job] = window.generate_jobs
        qtbot.waitUntil(
            lambda: window.document.project.clip is not None or bool(window.errors), timeout=60_000
        )
        assert window.errors == []
        assert Path(window.document.project.clip.path) == output
        assert window.document.frame_count == 4
        info = probe(output)
        assert (info.width, info.height, info.fps) == (32, 24, Fraction(10))
        assert window.queue_panel.state_text(job) == "Finished"
        assert "DynamiCrafter 512: animate" in window.queue_panel.log_text(job)
        remembered = load_settings().animate_image
        assert (remembered["engine"], remembered["dc_checkpoint"]) == (
            "dynamicrafter",
            str(checkpoint),
        )
    finally:
        window.shutdown()


def test_opening_the_dialog_imports_no_torch():
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from PySide6.QtWidgets import QApplication\n"
        "from zvstudio.gui.generate_dialogs import AnimateDialog\n"
        "app = QApplication([])\n"
        "d = AnimateDialog(None, [], {'engine': 'dynamicrafter'}, Path('.'))\n"
        "d.dc_picker.set_path('dynamicrafter_512_interp_v1/model.ckpt')\n"
        "d.engine_combo.setCurrentIndex(1)\n"
        "d.invalid_reason()\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
