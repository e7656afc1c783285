"""The Export, Models and Settings dialogs, driven through their widgets (offscreen)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PySide6.QtWidgets import QDialogButtonBox, QFileDialog, QMessageBox
from safetensors.torch import save_file

from zvstudio.appsettings import AppSettings
from zvstudio.engine.device import GpuFacts, StaticProbe
from zvstudio.engine.jobs import ANALYSIS, JobState
from zvstudio.errors import ZvsError
from zvstudio.gui import models_dialog
from zvstudio.gui.bridge import EngineBridge
from zvstudio.gui.export_dialog import ExportDialog
from zvstudio.gui.models_dialog import DEFAULT_ROLE, ModelManagerDialog
from zvstudio.gui.settings_dialog import SettingsDialog, available_devices
from zvstudio.media.writer import FORMATS, ExportSettings, check_output
from zvstudio.paths import cache_root
from zvstudio.project.model import OutputSettings

# ------------------------------------------------------------------------------- export


def ok_enabled(dialog) -> bool:
    return dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).isEnabled()


def select_format(dialog, fmt: str) -> None:
    dialog.format_combo.setCurrentIndex(dialog.format_combo.findData(fmt))


@pytest.fixture
def export_dialog(qtbot, tmp_path):
    dialog = ExportDialog(
        None, 100, 25.0, OutputSettings(crf=20), str(tmp_path / "film.mp4"), in_out=(10, 59)
    )
    qtbot.addWidget(dialog)
    dialog.show()
    yield dialog
    dialog.close()


def test_export_starts_from_the_project_and_in_out(export_dialog, tmp_path):
    choice = export_dialog.choice()
    assert choice.path == tmp_path / "film.mp4"
    assert choice.output == OutputSettings(format="h264", crf=20, audio=True)
    assert (choice.first, choice.last) == (10, 59)
    assert export_dialog.in_out_radio.isChecked()
    assert not export_dialog.first_spin.isEnabled()
    assert export_dialog.range_info.text() == "50 frames, 2.00 s"
    assert ok_enabled(export_dialog)


def test_export_quality_slider_and_spin_follow_each_other(export_dialog):
    export_dialog.crf_slider.setValue(30)
    assert export_dialog.crf_spin.value() == 30
    export_dialog.crf_spin.setValue(12)
    assert export_dialog.crf_slider.value() == 12
    assert export_dialog.choice().output.crf == 12


def test_export_format_sets_extension_quality_and_audio(export_dialog, tmp_path):
    select_format(export_dialog, "prores")
    assert export_dialog.path_edit.text() == str(tmp_path / "film.mov")
    assert not export_dialog.crf_spin.isEnabled()
    assert not export_dialog.crf_slider.isEnabled()
    assert export_dialog.audio_check.isEnabled()

    select_format(export_dialog, "png")
    assert export_dialog.path_edit.text() == str(tmp_path / "film")
    assert export_dialog.audio_check.isEnabled()  # frames get the sound as audio.wav
    assert "audio.wav" in export_dialog.audio_check.toolTip()
    choice = export_dialog.choice()
    assert (choice.output.format, choice.output.audio) == ("png", True)
    select_format(export_dialog, "exr")  # from one kind of frames to another: the same folder
    assert export_dialog.path_edit.text() == str(tmp_path / "film")
    assert export_dialog.format_combo.currentText() == "OpenEXR frames (linear light)"

    select_format(export_dialog, "h265")
    assert export_dialog.path_edit.text() == str(tmp_path / "film.mp4")
    assert export_dialog.crf_spin.isEnabled()
    assert export_dialog.choice().output == OutputSettings(format="h265", crf=20, audio=True)


def test_export_offers_the_matte_as_alpha_where_it_can(qtbot, export_dialog, tmp_path):
    assert not export_dialog.alpha_check.isEnabled()  # no matte in this project
    assert "matte in the inspector" in export_dialog.alpha_check.toolTip()
    dialog = ExportDialog(
        None, 30, 25.0, OutputSettings(alpha=True), str(tmp_path / "a.mp4"), has_matte=True
    )
    qtbot.addWidget(dialog)
    assert not dialog.alpha_check.isEnabled() and "no alpha channel" in dialog.alpha_check.toolTip()
    assert not dialog.choice().output.alpha
    select_format(dialog, "prores")
    assert dialog.alpha_check.isEnabled() and dialog.alpha_check.isChecked()
    assert dialog.choice().output == OutputSettings(format="prores", alpha=True)
    select_format(dialog, "dpx")
    assert not dialog.choice().output.alpha
    dialog.close()


def test_export_keeps_a_container_the_user_chose(export_dialog, tmp_path):
    export_dialog.path_edit.setText(str(tmp_path / "film.mkv"))
    select_format(export_dialog, "h265")
    assert export_dialog.path_edit.text() == str(tmp_path / "film.mkv")
    select_format(export_dialog, "prores")  # .mkv takes ProRes too
    assert export_dialog.path_edit.text() == str(tmp_path / "film.mkv")


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_paths_are_accepted_by_the_writer(export_dialog, fmt):
    select_format(export_dialog, fmt)
    choice = export_dialog.choice()
    check_output(choice.path, ExportSettings(format=fmt))  # raises if the writer disagrees


def test_export_range_choices(export_dialog):
    export_dialog.whole_radio.setChecked(True)
    assert (export_dialog.choice().first, export_dialog.choice().last) == (0, 99)
    assert export_dialog.range_info.text() == "100 frames, 4.00 s"
    export_dialog.custom_radio.setChecked(True)
    assert export_dialog.first_spin.isEnabled()
    export_dialog.first_spin.setValue(5)
    export_dialog.last_spin.setValue(7)
    assert (export_dialog.choice().first, export_dialog.choice().last) == (5, 7)


def test_export_refuses_first_after_last(export_dialog):
    export_dialog.custom_radio.setChecked(True)
    export_dialog.first_spin.setValue(40)
    export_dialog.last_spin.setValue(39)
    assert not ok_enabled(export_dialog)
    assert export_dialog.reason_label.isVisible()
    assert "first frame is after the last" in export_dialog.reason_label.text()
    with pytest.raises(ZvsError, match="after the last"):
        export_dialog.choice()
    export_dialog.last_spin.setValue(40)
    assert ok_enabled(export_dialog)
    assert not export_dialog.reason_label.isVisible()


def test_export_refuses_an_empty_path_or_a_wrong_extension(export_dialog, tmp_path):
    export_dialog.path_edit.setText("  ")
    assert not ok_enabled(export_dialog)
    assert "Choose where to save" in export_dialog.reason_label.text()
    export_dialog.path_edit.setText(str(tmp_path / "film.avi"))
    assert not ok_enabled(export_dialog)
    assert ".mp4" in export_dialog.reason_label.text()
    select_format(export_dialog, "dpx")
    export_dialog.path_edit.setText(str(tmp_path / "frames.dpx"))
    assert export_dialog.reason_label.text() == (
        "DPX frames (10-bit) are saved into a folder: remove the file extension."
    )
    assert not ok_enabled(export_dialog)


def test_export_without_in_out_offers_whole_clip(qtbot, tmp_path):
    dialog = ExportDialog(None, 30, 0.0, OutputSettings(format="prores"), str(tmp_path / "a"), None)
    qtbot.addWidget(dialog)
    assert not dialog.in_out_radio.isEnabled()
    assert dialog.whole_radio.isChecked()
    choice = dialog.choice()
    assert (choice.path, choice.first, choice.last) == (tmp_path / "a.mov", 0, 29)
    assert dialog.range_info.text() == "30 frames"  # no frame rate, no duration
    dialog.close()


def test_export_browse_asks_for_a_file_or_a_folder(export_dialog, tmp_path, monkeypatch):
    monkeypatch.setattr(
        QFileDialog, "getSaveFileName", lambda *a, **k: (str(tmp_path / "picked"), "")
    )
    monkeypatch.setattr(
        QFileDialog, "getExistingDirectory", lambda *a, **k: str(tmp_path / "frames")
    )
    export_dialog.browse_button.click()
    assert export_dialog.path_edit.text() == str(tmp_path / "picked.mp4")
    select_format(export_dialog, "png")
    export_dialog.browse_button.click()
    assert export_dialog.choice().path == tmp_path / "frames"


# ------------------------------------------------------------------------------- models

D = "model.diffusion_model."
SD1_CHECKPOINT = {
    D + "input_blocks.0.0.weight": (320, 4, 3, 3),
    D + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    D + "time_embed.0.weight": (2,),
    "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (4, 768),
}
K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
SD1_LORA = {
    K + ".lora_down.weight": (8, 768),
    K + ".lora_up.weight": (320, 8),
    K + ".alpha": (),
}
KX = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
SDXL_LORA = {
    KX + ".lora_down.weight": (16, 2048),
    KX + ".lora_up.weight": (640, 16),
    KX + ".alpha": (),
    "lora_te1_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": (16, 768),
}


def write_st(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}, str(path))
    return path


@pytest.fixture
def model_folder(tmp_path) -> Path:
    folder = tmp_path / "my models"
    write_st(folder / "dreamy.safetensors", SD1_CHECKPOINT)
    write_st(folder / "loras" / "ink.safetensors", SD1_LORA)
    write_st(folder / "loras" / "xl_style.safetensors", SDXL_LORA)
    (folder / "broken.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    return folder


@pytest.fixture
def bridge(qtbot):
    bridge = EngineBridge()
    yield bridge
    bridge.shutdown()


@pytest.fixture
def models_setup(qtbot, bridge, tmp_path, monkeypatch):
    monkeypatch.delenv("ZVSTUDIO_MODELS", raising=False)
    settings = AppSettings(models_dir=str(tmp_path / "zvs-models"))  # missing: nothing there
    dialog = ModelManagerDialog(settings, bridge)
    qtbot.addWidget(dialog)
    yield dialog
    dialog.close()


def table_rows(dialog) -> dict[str, list[str]]:
    table = dialog.table
    return {
        table.item(r, 0).text(): [table.item(r, c).text() for c in range(table.columnCount())]
        for r in range(table.rowCount())
    }


def test_models_scan_a_folder_in_a_job(qtbot, models_setup, model_folder):
    dialog = models_setup
    dialog.add_folder(model_folder)  # scans again at once
    qtbot.waitUntil(lambda: dialog.table.rowCount() == 4, timeout=10_000)
    rows = table_rows(dialog)
    assert rows["dreamy"][1:3] == ["checkpoint", "SD1.x"]
    assert rows["ink"][1:3] == ["LoRA", "SD1.x"]
    assert rows["xl_style"][1:3] == ["LoRA", "SDXL"]
    assert rows["broken"][1:3] == ["unrecognised file", "?"]
    assert dialog.status_label.text().startswith("4 model(s) found; 1 could not be read")
    names = [m.name for m in dialog.models()]
    assert sorted(names) == ["broken", "dreamy", "ink", "xl_style"]

    row = names.index("broken")
    tooltip = dialog.table.item(row, 0).toolTip()
    assert str(model_folder / "broken.safetensors") in tooltip
    assert "Cannot be used" in tooltip

    # Hashes follow in a second job: A1111's sha256[:10].
    qtbot.waitUntil(lambda: table_rows(dialog)["dreamy"][4] != "…", timeout=10_000)
    expected = hashlib.sha256((model_folder / "dreamy.safetensors").read_bytes()).hexdigest()
    assert table_rows(dialog)["dreamy"][4] == expected[:10]
    assert table_rows(dialog)["ink"][4] != "…"
    qtbot.waitUntil(lambda: "hashes" not in dialog.status_label.text(), timeout=10_000)
    assert dialog.status_label.text() == "4 model(s) found; 1 could not be read (see tooltips)"


def test_models_show_scanning_while_the_job_waits(qtbot, models_setup, bridge, model_folder):
    dialog = models_setup
    release = threading.Event()
    blocker = bridge.submit(lambda ctx: release.wait(10), "busy")
    dialog.add_folder(model_folder)
    assert dialog.scanning()
    assert dialog.status_label.text().startswith("Scanning")
    assert dialog.table.rowCount() == 0
    release.set()
    bridge.queue.wait(blocker, timeout=10)
    qtbot.waitUntil(lambda: not dialog.scanning(), timeout=10_000)
    assert dialog.table.rowCount() == 4


def test_models_closing_cancels_the_scan(qtbot, models_setup, bridge, model_folder):
    dialog = models_setup
    release = threading.Event()
    # Scans run in the analysis lane: keep it busy so that the scan waits in the queue.
    bridge.submit(lambda ctx: release.wait(10), "busy", ANALYSIS)
    dialog.add_folder(model_folder)
    scan_id = dialog._scan_id
    dialog.reject()
    assert bridge.queue.job(scan_id).state is JobState.CANCELLED
    release.set()


def test_models_scan_errors_are_shown(qtbot, models_setup, monkeypatch):
    def failing_scan(folders, progress=None):
        raise ZvsError("the models disk went away", hint="plug it in again")

    monkeypatch.setattr(models_dialog, "scan", failing_scan)
    models_setup.refresh()
    qtbot.waitUntil(lambda: not models_setup.scanning(), timeout=10_000)
    text = models_setup.status_label.text()
    assert "The scan failed: the models disk went away" in text
    assert "plug it in again" in text
    assert "c0392b" in models_setup.status_label.styleSheet()


def test_models_folders_defaults_read_only_extras_editable(qtbot, models_setup, tmp_path):
    dialog = models_setup
    folders = dialog.folder_list
    defaults = [
        folders.item(i) for i in range(folders.count()) if folders.item(i).data(DEFAULT_ROLE)
    ]
    assert str(tmp_path / "zvs-models") in defaults[0].text()
    assert "missing" in defaults[0].text()
    assert any(str(tmp_path / "hf-cache") in item.text() for item in defaults)  # conftest's

    dialog.add_folder(tmp_path / "extra")
    dialog.add_folder(tmp_path / "extra")  # once only
    assert dialog.extra_folders() == [str(tmp_path / "extra")]
    folders.setCurrentItem(defaults[0])
    assert not dialog.remove_button.isEnabled()
    dialog.remove_selected()  # refused for a default folder
    assert folders.count() == len(defaults) + 1

    dialog.pickle_check.setChecked(True)
    edited = dialog.settings()
    assert edited.model_folders == [str(tmp_path / "extra")]
    assert edited.allow_pickle is True
    assert edited.models_dir == str(tmp_path / "zvs-models")

    folders.setCurrentRow(folders.count() - 1)
    assert dialog.remove_button.isEnabled()
    dialog.remove_button.click()
    assert dialog.settings().model_folders == []


def test_models_dialog_scans_when_shown(qtbot, bridge, model_folder, monkeypatch):
    monkeypatch.delenv("ZVSTUDIO_MODELS", raising=False)
    settings = AppSettings(models_dir=str(model_folder))
    dialog = ModelManagerDialog(settings, bridge)
    qtbot.addWidget(dialog)
    assert not dialog.scanning()
    dialog.show()
    qtbot.waitUntil(lambda: dialog.table.rowCount() == 4, timeout=10_000)
    dialog.close()


# ----------------------------------------------------------------------------- settings


def test_available_devices_lists_what_the_probe_sees():
    gpu = GpuFacts("Test GPU", 24.0, 20.0)
    assert available_devices(StaticProbe()) == ["auto", "cpu"]
    assert available_devices(StaticProbe(gpus=(gpu, gpu), mps=True)) == [
        "auto",
        "cpu",
        "cuda:0",
        "cuda:1",
        "mps",
    ]


def pick(combo, value: str) -> None:
    index = combo.findData(value)
    assert index >= 0, value
    combo.setCurrentIndex(index)


@pytest.fixture
def settings_dialog(qtbot):
    dialog = SettingsDialog(
        AppSettings(recent_projects=["/p/a.zvs"]),
        devices=available_devices(StaticProbe(gpus=(GpuFacts("A", 8, 8), GpuFacts("B", 8, 8)))),
    )
    qtbot.addWidget(dialog)
    dialog.show()
    yield dialog
    dialog.close()


def test_settings_edits_are_returned(settings_dialog, tmp_path):
    dialog = settings_dialog
    assert dialog.settings() == AppSettings(recent_projects=["/p/a.zvs"])  # untouched
    assert not dialog.memory_spin.isEnabled()
    pick(dialog.device_combo, "cuda:1")
    pick(dialog.precision_combo, "bf16")
    dialog.memory_check.setChecked(True)
    assert dialog.memory_spin.isEnabled()
    dialog.memory_spin.setValue(6.5)
    pick(dialog.offload_combo, "sequential")
    dialog.cache_edit.setText(str(tmp_path / "cache"))
    dialog.cache_limit_spin.setValue(42)
    dialog.autosave_spin.setValue(0)
    assert dialog.autosave_spin.text() == "Off"
    assert dialog.settings() == AppSettings(
        device="cuda:1",
        precision="bf16",
        memory_limit_gb=6.5,
        offload="sequential",
        cache_dir=str(tmp_path / "cache"),
        cache_limit_gb=42,
        autosave_minutes=0,
        recent_projects=["/p/a.zvs"],
    )
    dialog.memory_check.setChecked(False)
    assert dialog.settings().memory_limit_gb is None


def test_settings_offer_every_engine_choice(settings_dialog):
    from zvstudio.engine.device import OFFLOAD_MODES

    combo = settings_dialog.offload_combo
    assert [combo.itemData(i) for i in range(combo.count())] == ["auto", *OFFLOAD_MODES]
    combo = settings_dialog.precision_combo
    assert [combo.itemData(i) for i in range(combo.count())] == ["auto", "fp32", "fp16", "bf16"]
    combo = settings_dialog.device_combo
    assert [combo.itemData(i) for i in range(combo.count())] == ["auto", "cpu", "cuda:0", "cuda:1"]


def test_settings_keep_a_device_this_machine_lacks(qtbot):
    dialog = SettingsDialog(AppSettings(device="cuda:3"), devices=["auto", "cpu"])
    qtbot.addWidget(dialog)
    assert dialog.device_combo.currentText() == "cuda:3 (not found)"
    assert dialog.settings().device == "cuda:3"
    dialog.close()


def make_cache_entry(root: Path, kind: str, name: str, size: int) -> Path:
    """A sparse file: its size counts, its blocks are never written."""
    path = root / kind / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.truncate(size)
    return path


def test_settings_show_and_clear_the_cache(settings_dialog, monkeypatch):
    dialog = settings_dialog
    keys = make_cache_entry(cache_root(), "keys", "k1.png", 3 << 30)
    flows = make_cache_entry(cache_root(), "flows", "a/b/c.npz", 1 << 29)
    dialog.refresh_usage()
    assert dialog.usage_label.text() == "3.50 GB (flows 0.50 GB, keys 3.00 GB)"
    assert dialog.clear_button.isEnabled()

    answers = []

    def answer(reply):
        def question(*args, **kwargs):
            answers.append(args[2])
            return reply

        return question

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.No))
    dialog.clear_button.click()
    assert keys.exists() and flows.exists()
    assert str(cache_root()) in answers[0]

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Yes))
    dialog.clear_button.click()
    assert not keys.exists() and not flows.exists()
    assert dialog.usage_label.text() == "0.00 GB"
    assert not dialog.clear_button.isEnabled()


def test_settings_clear_cache_uses_the_edited_folder(settings_dialog, tmp_path):
    other = tmp_path / "other-cache"
    kept = make_cache_entry(cache_root(), "keys", "mine.png", 100)
    gone = make_cache_entry(other, "keys", "old.png", 1 << 30)
    settings_dialog.cache_edit.setText(str(other))
    assert settings_dialog.usage_label.text().startswith("1.00 GB")
    assert settings_dialog.clear_cache() == 1 << 30
    assert kept.exists() and not gone.exists()


def test_settings_refuse_a_file_as_cache_folder(settings_dialog, tmp_path):
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    settings_dialog.cache_edit.setText(str(a_file))
    assert not ok_enabled(settings_dialog)
    assert "is a file" in settings_dialog.reason_label.text()
    settings_dialog.cache_edit.setText("")
    assert ok_enabled(settings_dialog)
    assert settings_dialog.settings().cache_dir is None


def test_settings_browse_for_the_cache(settings_dialog, tmp_path, monkeypatch):
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(tmp_path))
    browse = [
        b
        for b in settings_dialog.findChildren(type(settings_dialog.clear_button))
        if b.text() == "Browse…"
    ]
    browse[0].click()
    assert settings_dialog.settings().cache_dir == str(tmp_path)


def test_settings_probe_this_machine_without_starting_cuda(qtbot):
    dialog = SettingsDialog(AppSettings())
    qtbot.addWidget(dialog)
    combo = dialog.device_combo
    devices = [combo.itemData(i) for i in range(combo.count())]
    assert devices[:2] == ["auto", "cpu"]
    assert len(devices) == 2 + torch.cuda.device_count() + torch.backends.mps.is_available()
    assert not torch.cuda.is_initialized()  # counting GPUs must not create a CUDA context
    dialog.close()


# ------------------------------------------------------------------------------- shortcuts


def test_the_shortcuts_list_holds_every_keyed_command_and_filters(qtbot):
    from PySide6.QtGui import QKeySequence

    from zvstudio.gui.mainwindow import MainWindow
    from zvstudio.gui.shortcuts_dialog import ShortcutsDialog, menu_shortcuts

    window = MainWindow(AppSettings())
    qtbot.addWidget(window)
    listed = menu_shortcuts(window.menuBar())
    assert ("Timeline", "Scrub sound", "Shift+S") in listed
    assert ("File", "Save as", "Ctrl+Shift+S") in listed
    assert ("Help", "Keyboard shortcuts", "F1") in listed
    # Every command with keys that the window has is in a menu, so it is listed.
    native = QKeySequence.SequenceFormat.NativeText
    keyed = {a.shortcut().toString(native) for a in window.actions() if not a.shortcut().isEmpty()}
    assert keyed == {keys for _, _, keys in listed}
    dialog = ShortcutsDialog(window.menuBar(), window)
    qtbot.addWidget(dialog)
    assert len(dialog.visible_rows()) == len(listed)
    qtbot.keyClicks(dialog.filter_edit, "loop")
    assert dialog.visible_rows() == [("Loop playback", "Ctrl+L")]
    dialog.filter_edit.setText("shift+s")  # keys are found too
    assert set(dialog.visible_rows()) == {("Scrub sound", "Shift+S"), ("Save as", "Ctrl+Shift+S")}
    window.shutdown()


def test_export_shows_the_size_frames_are_rendered_at(qtbot, tmp_path):
    path = str(tmp_path / "a.mp4")
    dialog = ExportDialog(None, 30, 25.0, OutputSettings(), path, None, size=(960, 540))
    qtbot.addWidget(dialog)
    assert dialog.size_label.text() == "960 × 540"
    dialog.close()


def test_the_seeds_dialog_returns_the_seed_picked(qtbot):
    from zvstudio.gui.seeds_dialog import SeedsDialog

    variations = [(seed, np.full((40, 64, 3), seed * 20, np.uint8)) for seed in (3, 4, 5)]
    dialog = SeedsDialog(12, variations, "key 12's seed")
    qtbot.addWidget(dialog)
    assert sorted(dialog.buttons) == [3, 4, 5] and dialog.windowTitle() == "Seeds for frame 12"
    dialog.buttons[4].click()
    assert dialog.chosen == 4 and dialog.result() == dialog.DialogCode.Accepted
    other = SeedsDialog(12, variations, "key 12's seed")
    qtbot.addWidget(other)
    other.reject()
    assert other.chosen is None
