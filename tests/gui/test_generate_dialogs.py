"""File > New from text... and File > Animate image... (pytest-qt, offscreen): the dialogs'
validation, the requests they build, remembered values, and the jobs end to end on tiny random
models: the clip opens as a project, cancel from the queue stops it, errors are shown."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from helpers import make_clip
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox
from tiny_models import (
    build_tiny_motion_adapter,
    write_tiny_config_dir,
    write_tiny_diffusers,
    write_tiny_pix2pix,
)
from windows import shown_window

from zvstudio.appsettings import AppSettings, load_settings
from zvstudio.diffusion.identify import ModelInfo
from zvstudio.errors import ZvsError
from zvstudio.generate.jobs import input_clip_size
from zvstudio.gui.generate_dialogs import (
    AnimateChoice,
    AnimateDialog,
    FileDialogs,
    ModelPolicy,
    TextToVideoChoice,
    TextToVideoDialog,
)
from zvstudio.media import probe

CPU = AppSettings(device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    build_tiny_motion_adapter().save_pretrained(root / "motion")
    return {
        "model": write_tiny_diffusers(root / "model"),
        "config": write_tiny_config_dir(root / "config"),
        "motion": root / "motion",
    }


@pytest.fixture(scope="module")
def library(tiny):
    """The model library as the editor's scan would have it (and an SDXL model to refuse)."""
    return [
        ModelInfo(tiny["model"], "tiny-sd15", "checkpoint", "sd1", "diffusers", 1),
        ModelInfo(tiny["model"].with_name("xl"), "big-xl", "checkpoint", "sdxl", "diffusers", 1),
        ModelInfo(tiny["motion"], "tiny-motion", "motion_adapter", "sd1", "diffusers", 1),
    ]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path, _, _ = make_clip(
        tmp_path_factory.mktemp("clip") / "in.mp4", count=6, width=64, height=48, audio=True
    )
    return path


class Answers(FileDialogs):
    """File dialogs that answer `answer` at once."""

    answer: str | None = None

    def open_file(self, title: str, name_filter: str) -> str | None:
        return self.answer

    def open_folder(self, title: str) -> str | None:
        return self.answer

    def save_file(self, title: str, start: str, name_filter: str) -> str | None:
        return self.answer


def make(qtbot, cls, folder: Path, library, remembered=None):
    dialog = cls(None, library, remembered, folder, Answers(None))
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def pick(picker, path: Path) -> None:
    picker.combo.setCurrentIndex(picker.combo.findData(str(path)))


def browse(qtbot, dialog, button, answer) -> None:
    dialog.dialogs.answer = str(answer) if answer else None
    qtbot.mouseClick(button, Qt.LeftButton)


def reason(dialog) -> str:
    assert dialog.ok_enabled() == (dialog.invalid_reason() is None)
    return dialog.reason_label.text() if dialog.reason_label.isVisible() else ""


# ------------------------------------------------------------------------ New from text


def test_new_from_text_needs_a_model_and_a_prompt(qtbot, tmp_path, library, tiny):
    dialog = make(qtbot, TextToVideoDialog, tmp_path, library)
    assert "Choose a Stable Diffusion 1.x model" in reason(dialog)
    assert not dialog.ok_enabled()
    with pytest.raises(ZvsError, match="model"):
        dialog.choice()
    combo = dialog.model_picker.combo
    sdxl = combo.findData(str(tiny["model"].with_name("xl")))
    assert not combo.model().item(sdxl).isEnabled()  # listed, but SD1.x only
    assert combo.findData(str(tiny["motion"])) < 0  # other kinds are not offered

    pick(dialog.model_picker, tiny["model"])
    assert reason(dialog) == "Write a prompt: it is what the clip shows."
    qtbot.keyClicks(dialog.prompt_edit, "a red cat")
    assert reason(dialog) == "" and dialog.ok_enabled()

    dialog.width_spin.setValue(36)
    assert "multiples of 8" in reason(dialog)
    dialog.width_spin.setValue(32)
    browse(qtbot, dialog, dialog.model_picker.folder_button, tmp_path / "gone")
    assert "does not exist" in reason(dialog)


def test_controlnet_mode_needs_a_video_and_the_video_a_controlnet(
    qtbot, tmp_path, library, tiny, clip
):
    controlnet = tmp_path / "control_canny"
    controlnet.mkdir()
    dialog = make(qtbot, TextToVideoDialog, tmp_path, library)
    pick(dialog.model_picker, tiny["model"])
    dialog.prompt_edit.setPlainText("edges")
    assert dialog.ok_enabled() and not dialog.controlnet_scale_spin.isEnabled()

    browse(qtbot, dialog, dialog.controlnet_picker.folder_button, controlnet)
    assert dialog.controlnet_picker.path() == controlnet
    assert "A ControlNet follows an input video" in reason(dialog)
    dialog.controlnet_picker.clear()
    browse(qtbot, dialog, dialog.video_field.button, clip)
    assert "guides the clip through a ControlNet" in reason(dialog)
    browse(qtbot, dialog, dialog.controlnet_picker.file_button, controlnet)
    assert reason(dialog) == ""
    # The size follows the video; its timing replaces the frame rate and the camera motion.
    size = input_clip_size(clip)
    assert (dialog.width_spin.value(), dialog.height_spin.value()) == size == (512, 384)
    assert not dialog.fps_spin.isEnabled() and not dialog.motion_row.isEnabled()
    assert "6 frames" in dialog.video_note.text()
    assert dialog.frames_spin.value() == 6  # was 8: no more than the video has
    dialog.frames_spin.setValue(7)
    assert reason(dialog) == "in.mp4 has 6 frames; the clip needs 7."
    dialog.frames_spin.setValue(6)
    dialog.video_field.set_path(tmp_path / "missing.mp4")
    assert "does not exist" in reason(dialog)


def test_an_instruct_pix2pix_checkpoint_edits_a_video_without_a_controlnet(
    qtbot, tmp_path, library, clip
):
    pix2pix = write_tiny_pix2pix(tmp_path / "ip2p")
    dialog = make(qtbot, TextToVideoDialog, tmp_path, library)
    browse(qtbot, dialog, dialog.model_picker.folder_button, pix2pix)
    dialog.prompt_edit.setPlainText("make it winter")
    assert "InstructPix2Pix checkpoint: it edits an input video" in reason(dialog)
    browse(qtbot, dialog, dialog.video_field.button, clip)
    assert reason(dialog) == "" and dialog.ok_enabled()
    controlnet = tmp_path / "control_canny"
    controlnet.mkdir()
    browse(qtbot, dialog, dialog.controlnet_picker.folder_button, controlnet)
    assert "edits the video itself" in reason(dialog)


def test_new_from_text_builds_the_request(qtbot, tmp_path, library, tiny, clip):
    dialog = make(qtbot, TextToVideoDialog, tmp_path, library)
    pick(dialog.model_picker, tiny["model"])
    dialog.prompt_edit.setPlainText("  a red cat  ")
    dialog.negative_edit.setPlainText("blur")
    assert (dialog.frames_spin.value(), dialog.steps_spin.value()) == (8, 50)  # the defaults
    assert (dialog.motion_x_spin.value(), dialog.fps_spin.value()) == (12, 8)
    dialog.frames_spin.setValue(3)
    dialog.steps_spin.setValue(4)
    dialog.guidance_spin.setValue(6.5)
    dialog.seed_spin.setValue(4_000_000_000)  # past a 32-bit signed spin box
    dialog.width_spin.setValue(64)
    dialog.height_spin.setValue(40)
    dialog.motion_x_spin.setValue(4)
    dialog.motion_y_spin.setValue(-2.5)
    dialog.fps_spin.setValue(23.976)
    policy = ModelPolicy.from_settings(CPU, tiny["config"])
    request = dialog.choice().request(policy)
    s = request.settings
    assert (s.prompt, s.negative_prompt, s.frames, s.steps) == ("a red cat", "blur", 3, 4)
    assert (s.guidance_scale, s.seed, s.width, s.height) == (6.5, 4_000_000_000, 64, 40)
    assert s.motion_field == (4.0, -2.5)
    assert request.fps == Fraction(2997, 125)
    assert request.output == tmp_path / "text_to_video.mp4"
    assert request.video is None and request.models.controlnets == ()
    spec = request.models
    assert (spec.model, spec.device, spec.precision, spec.config_dir) == (
        tiny["model"],
        "cpu",
        "fp32",
        tiny["config"],
    )

    controlnet = tmp_path / "control_canny"
    controlnet.mkdir()
    dialog.controlnet_picker.set_path(controlnet)
    dialog.controlnet_scale_spin.setValue(0.6)
    dialog.video_field.set_path(clip)
    request = dialog.choice().request(policy)
    assert (request.models.controlnets, request.video) == ((controlnet,), clip)
    assert (request.settings.controlnet_scale, request.settings.annotator) == (0.6, "canny")
    assert (request.settings.width, request.settings.height) == (512, 384)
    assert request.settings.more_controls == ()

    # A second ControlNet guides beside the first, fed its own annotator's map.
    scribble = tmp_path / "control_sd15_scribble"
    scribble.mkdir()
    dialog.second_controlnet_picker.set_path(tmp_path / "gone")
    assert "The ControlNet" in reason(dialog) and "gone does not exist" in reason(dialog)
    dialog.second_controlnet_picker.set_path(scribble)
    dialog.second_controlnet_scale_spin.setValue(0.4)
    assert reason(dialog) == "" and dialog.second_controlnet_scale_spin.isEnabled()
    request = dialog.choice().request(policy)
    assert request.models.controlnets == (controlnet, scribble)
    assert request.settings.more_controls == (("scribble", 0.4),)
    # Without a first ControlNet the second is not used (and cannot be changed).
    dialog.controlnet_picker.clear()
    assert not dialog.second_controlnet_picker.isEnabled()
    assert dialog._second_controlnet() is None


def test_new_from_text_takes_a_reference_image(qtbot, tmp_path, library, tiny):
    dialog = make(qtbot, TextToVideoDialog, tmp_path, library)
    pick(dialog.model_picker, tiny["model"])
    dialog.prompt_edit.setPlainText("a red cat")
    assert not dialog.reference_scale_spin.isEnabled()
    policy = ModelPolicy.from_settings(CPU, tiny["config"])
    assert dialog.choice().request(policy).models.settings.reference_image == ""
    browse(qtbot, dialog, dialog.reference_field.button, tmp_path / "gone.png")
    assert "The reference image" in reason(dialog) and "does not exist" in reason(dialog)
    image = tmp_path / "look.png"
    image.write_bytes(b"png")
    browse(qtbot, dialog, dialog.reference_field.button, image)
    assert reason(dialog) == "" and dialog.reference_scale_spin.isEnabled()
    dialog.reference_scale_spin.setValue(0.85)
    keys = dialog.choice().request(policy).models.settings
    assert (keys.reference_image, keys.reference_scale) == (str(image), 0.85)
    remembered = dialog.remembered()
    again = make(qtbot, TextToVideoDialog, tmp_path, library, remembered)
    assert again.reference_field.path() == image
    assert again.reference_scale_spin.value() == 0.85


@pytest.mark.parametrize("model_found", [True, False])
def test_background_smoothing_is_offered_with_a_segmentation_model_in_text_mode(
    qtbot, tmp_path, library, tiny, clip, monkeypatch, model_found
):
    from zvstudio.gui import generate_dialogs

    monkeypatch.setattr(generate_dialogs, "_has_seg_model", lambda: model_found)
    dialog = make(qtbot, TextToVideoDialog, tmp_path, library)
    pick(dialog.model_picker, tiny["model"])
    dialog.prompt_edit.setPlainText("a red cat")
    assert dialog.smoothing_spin.value() == 0  # off unless asked for: it doubles the time
    assert dialog.smoothing_spin.isEnabled() == model_found
    assert ("No ADE20K segmentation model" in dialog.smoothing_spin.toolTip()) != model_found
    dialog.smoothing_spin.setValue(0.6)
    policy = ModelPolicy.from_settings(CPU, tiny["config"])
    expected = 0.6 if model_found else 0.0
    assert dialog.choice().request(policy).settings.smooth_background == expected
    controlnet = tmp_path / "control_canny"
    controlnet.mkdir()
    dialog.controlnet_picker.set_path(controlnet)
    dialog.video_field.set_path(clip)  # an input video brings its own background
    assert not dialog.smoothing_spin.isEnabled()
    assert dialog.choice().smooth_background == 0


def test_the_output_never_replaces_a_file_silently(qtbot, tmp_path, library, tiny):
    (tmp_path / "text_to_video.mp4").write_bytes(b"taken")
    dialog = make(qtbot, TextToVideoDialog, tmp_path, library)
    assert dialog.output_field.path() == tmp_path / "text_to_video_2.mp4"  # a new name
    pick(dialog.model_picker, tiny["model"])
    dialog.prompt_edit.setPlainText("cat")
    dialog.output_field.set_path(tmp_path / "text_to_video.mp4")
    assert "text_to_video.mp4 already exists" in reason(dialog)
    # Chosen with Browse…, the platform's save dialog has asked about replacing it.
    browse(qtbot, dialog, dialog.output_field.button, tmp_path / "text_to_video.mp4")
    assert reason(dialog) == ""
    dialog.output_field.set_path(tmp_path / "clip.gif")
    assert ".mp4, .mov or .mkv" in reason(dialog)
    dialog.output_field.set_path(tmp_path / "no" / "clip.mp4")
    assert "does not exist" in reason(dialog)
    dialog.output_field.set_path("")
    assert reason(dialog) == "Choose where to save the clip."


# ------------------------------------------------------------------------ Animate image


def test_animate_dialog_validates_and_builds_the_request(qtbot, tmp_path, library, tiny):
    image = tmp_path / "still.png"
    image.write_bytes(b"png")
    dialog = make(qtbot, AnimateDialog, tmp_path, library)
    pick(dialog.model_picker, tiny["model"])
    assert "Choose a motion module" in reason(dialog)
    pick(dialog.motion_picker, tiny["motion"])
    assert "Write a prompt to generate the still" in reason(dialog)
    browse(qtbot, dialog, dialog.image_field.button, image)
    assert reason(dialog) == ""  # an image needs no prompt
    assert not dialog.size_row.isEnabled()  # the image keeps its own size
    assert (dialog.frames_spin.value(), dialog.steps_spin.value()) == (16, 25)

    dialog.window_combo.setCurrentIndex(dialog.window_combo.findData("mid"))
    dialog.window_length_spin.setValue(4)
    dialog.fps_spin.setValue(12)
    request = dialog.choice().request(ModelPolicy.from_settings(CPU, tiny["config"]))
    assert (request.image, request.motion_adapter, request.fps) == (
        image,
        tiny["motion"],
        Fraction(12),
    )
    assert (request.settings.window, request.settings.window_length) == ("mid", 4)
    assert request.settings.frames == 16 and request.export.audio is False
    assert request.output == tmp_path / "animation.mp4"

    dialog.image_field.set_path("")
    dialog.prompt_edit.setPlainText("a red cat")
    dialog.window_combo.setCurrentIndex(dialog.window_combo.findData("none"))
    dialog.window_length_spin.setValue(0)  # shown as "all earlier frames"
    assert not dialog.window_length_spin.isEnabled()
    choice = dialog.choice()
    assert (choice.image, choice.window, choice.window_length) == (None, "none", None)
    image.unlink()
    dialog.image_field.set_path(image)
    assert "does not exist" in reason(dialog)


def test_dialogs_take_back_remembered_values(qtbot, tmp_path, library, tiny, clip):
    controlnet = tmp_path / "control_canny"
    controlnet.mkdir()
    first = make(qtbot, TextToVideoDialog, tmp_path, library)
    pick(first.model_picker, tiny["model"])
    first.prompt_edit.setPlainText("a red cat")
    first.controlnet_picker.set_path(controlnet)
    first.second_controlnet_picker.set_path(controlnet)
    first.second_controlnet_scale_spin.setValue(0.3)
    first.video_field.set_path(clip)
    first.frames_spin.setValue(4)
    first.width_spin.setValue(128)  # chosen after the video's size
    settings = AppSettings(text_to_video=first.remembered(), animate_image={"window": "up"})
    settings.validate()
    values = settings.to_json()["text_to_video"]
    again = make(qtbot, TextToVideoDialog, tmp_path, library, {**values, "bogus": 1, "steps": "x"})
    assert again.choice() == first.choice()
    animate = make(qtbot, AnimateDialog, tmp_path, library, settings.animate_image)
    assert animate.window_combo.currentData() == "up"


# ------------------------------------------------------------------ the jobs in the editor


@pytest.fixture
def window(qtbot, library, tiny):
    win = shown_window(qtbot, CPU)
    win.models = list(library)
    win.diffusion_config_dir = tiny["config"]
    yield win
    win.shutdown()


def ended(window, job) -> bool:
    return window.bridge.queue.job(job).state.ended


def test_new_from_text_runs_from_the_menu_and_opens_the_clip(
    qtbot, window, tiny, tmp_path, monkeypatch
):
    output = tmp_path / "cat.mp4"

    def fill_and_accept(dialog):
        pick(dialog.model_picker, tiny["model"])
        dialog.prompt_edit.setPlainText("a red cat")
        for spin, value in ((dialog.frames_spin, 3), (dialog.steps_spin, 4)):
            spin.setValue(value)
        dialog.width_spin.setValue(32)
        dialog.height_spin.setValue(24)
        dialog.fps_spin.setValue(12)
        dialog.output_field.set_path(output)
        return QMessageBox.Ok if dialog.ok_enabled() else 0

    monkeypatch.setattr(TextToVideoDialog, "exec", fill_and_accept)
    assert window.new_from_text_action.text() == "New from &text…"
    window.new_from_text_action.trigger()
    [job] = window.generate_jobs
    qtbot.waitUntil(lambda: window.document.project.clip is not None, timeout=60_000)
    assert window.errors == []
    assert Path(window.document.project.clip.path) == output
    assert window.document.frame_count == 3
    info = probe(output)
    assert (info.width, info.height, info.fps) == (32, 24, Fraction(12))
    panel = window.queue_panel
    assert panel.state_text(job) == "Finished"
    assert panel.progress_bar(job).maximum() > 1  # the steps were reported
    assert "diffusion device: cpu" in panel.log_text(job)
    assert window.generate_jobs == {}
    # The values are remembered, on disk too; the next output is a new file.
    assert load_settings().text_to_video["prompt"] == "a red cat"
    again = make(qtbot, TextToVideoDialog, tmp_path, [], window.settings.text_to_video)
    assert again.frames_spin.value() == 3 and again.model_picker.path() == tiny["model"]
    assert window.generation_folder({}) == tmp_path  # beside the open clip
    assert again.output_field.path() == tmp_path / "text_to_video.mp4"


def test_animate_a_generated_still_opens_the_clip(qtbot, window, tiny, tmp_path):
    output = tmp_path / "anim.mp4"
    choice = AnimateChoice(
        tiny["model"], tiny["motion"], output, "a red cat", frames=3, steps=3, width=32, height=32
    )
    job = window.start_generation(choice)
    qtbot.waitUntil(lambda: window.document.project.clip is not None, timeout=60_000)
    assert window.errors == [] and window.queue_panel.state_text(job) == "Finished"
    assert Path(window.document.project.clip.path) == output
    assert window.document.frame_count == 3
    assert window.queue_panel.row_count() >= 1


def test_cancel_from_the_queue_stops_the_job_and_opens_nothing(qtbot, window, tiny, tmp_path):
    output = tmp_path / "long.mp4"
    choice = TextToVideoChoice(
        tiny["model"], "a red cat", output, frames=4, steps=500, width=32, height=32
    )
    job = window.start_generation(choice)
    panel = window.queue_panel

    def generating() -> bool:
        assert not ended(window, job), window.errors
        return panel.stage_text(job).startswith("generate")

    qtbot.waitUntil(generating, timeout=60_000)
    qtbot.mouseClick(panel.cancel_button(job), Qt.LeftButton)
    qtbot.waitUntil(lambda: ended(window, job), timeout=10_000)
    qtbot.wait(50)  # the ending event reaches the window
    assert panel.state_text(job) == "Cancelled"
    assert window.document.project.clip is None and window.errors == []
    assert not output.exists() and window.generate_jobs == {}


def test_a_wrong_motion_module_is_shown_as_an_error(qtbot, window, tiny, tmp_path):
    choice = AnimateChoice(tiny["model"], tiny["model"], tmp_path / "o.mp4", "cat", frames=2)
    job = window.start_generation(choice)
    qtbot.waitUntil(lambda: bool(window.errors), timeout=60_000)
    [error] = window.errors
    assert error.startswith("Animate image failed: ") and "not a motion module" in error
    assert window.queue_panel.state_text(job) == "Failed"
    assert window.document.project.clip is None
    assert not (tmp_path / "o.mp4").exists()


def test_generation_module_imports_no_torch():
    # The dialogs open instantly: torch loads on the job thread, when a job builds its request.
    import subprocess
    import sys

    code = (
        "import sys, zvstudio.gui.generate_dialogs, zvstudio.gui.mainwindow\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_both_dialogs_take_a_vae_and_a_clip_skip(qtbot, tmp_path, library, tiny):
    """The checkpoint's own VAE unless one is chosen, as in the inspector; both go into the
    request and are remembered (a VAE that is gone is dropped)."""
    vae = tiny["model"] / "vae"  # a diffusers VAE folder
    text = make(qtbot, TextToVideoDialog, tmp_path, library)
    pick(text.model_picker, tiny["model"])
    text.prompt_edit.setPlainText("a red cat")
    policy = ModelPolicy.from_settings(CPU, tiny["config"])
    request = text.choice().request(policy)
    assert request.models.vae is None and request.settings.clip_skip == 1
    assert text.vae_picker.combo.currentText() == "The checkpoint's own"
    browse(qtbot, text, text.vae_picker.folder_button, vae)
    text.clip_skip_spin.setValue(2)
    request = text.choice().request(policy)
    assert (request.models.vae, request.settings.clip_skip) == (vae, 2)
    again = make(qtbot, TextToVideoDialog, tmp_path, library, text.remembered())
    assert (again.vae_picker.path(), again.clip_skip_spin.value()) == (vae, 2)
    gone = make(qtbot, TextToVideoDialog, tmp_path, library, {"vae": str(tmp_path / "no")})
    assert gone.vae_picker.path() is None
    text.vae_picker.set_path(tmp_path / "missing.safetensors")
    assert "The VAE" in reason(text) and "does not exist" in reason(text)

    animate = make(qtbot, AnimateDialog, tmp_path, library)
    pick(animate.model_picker, tiny["model"])
    pick(animate.motion_picker, tiny["motion"])
    animate.prompt_edit.setPlainText("a red cat")
    animate.vae_picker.set_path(vae)
    animate.clip_skip_spin.setValue(2)
    request = animate.choice().request(policy)
    assert (request.models.vae, request.settings.clip_skip) == (vae, 2)
