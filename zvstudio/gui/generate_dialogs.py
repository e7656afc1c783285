"""File > New from text... (Text2Video-Zero) and File > Animate image... (AnimateZero).

A dialog only gathers a choice: `TextToVideoChoice` or `AnimateChoice`, plain values. Their
`request()` builds the engine's one request object, and `run()` does the whole job; the main
window calls `run()` on the job thread, because the generators import torch (seconds the GUI
thread must not spend) and a ControlNet file is looked at there too. The OK button stays
disabled, with the reason shown, while the choice is obviously unusable; the engine checks
everything again before it loads a model. `remembered()` is what the app settings keep for the
next time (`restore` takes it back, ignoring what it does not know).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from zvstudio.appsettings import AppSettings
from zvstudio.diffusion.identify import ModelInfo, unet_input_channels
from zvstudio.engine.jobs import JobContext
from zvstudio.errors import ZvsError
from zvstudio.gui.inspector import IMAGE_FILTER, MODEL_FILTER, RENDER_BASES, Dialogs
from zvstudio.media import ExportSettings
from zvstudio.progress import LogCallback, ignore_log
from zvstudio.project.model import SEED_MAX

if TYPE_CHECKING:
    from zvstudio.engine.preview import DiffusionSpec
    from zvstudio.generate.jobs import AnimateRequest, GenerateResult, TextToVideoRequest

VIDEO_FILTER = "Videos (*.mp4 *.mov *.mkv *.webm *.avi *.m4v);;All files (*)"
OUTPUT_SUFFIXES = (".mp4", ".mov", ".mkv")  # written as H.264, then opened in the editor
OUTPUT_FILTER = "Videos (*.mp4 *.mov *.mkv)"
MOTION_FILTER = "AnimateDiff motion modules (*.safetensors *.ckpt *.pt *.pth *.bin);;All files (*)"
WINDOW_LABELS = {
    "all": "All motion modules",
    "down": "Down blocks",
    "mid": "Middle block",
    "up": "Up blocks",
    "none": "None (plain AnimateDiff attention)",
}


# ------------------------------------------------------------------------- the choices


@dataclass(frozen=True)
class ModelPolicy:
    """Where and how the models run: the app settings' device choices, copied on the GUI
    thread for the job thread. `config_dir` is the models' reference configs (tests: tiny)."""

    device: str = "auto"
    precision: str = "auto"
    memory_limit_gb: float | None = None
    offload: str = "auto"
    allow_pickle: bool = False
    config_dir: Path | None = None

    @classmethod
    def from_settings(cls, settings: AppSettings, config_dir: Path | None = None) -> ModelPolicy:
        return cls(
            settings.device,
            settings.precision,
            settings.memory_limit_gb,
            settings.offload,
            settings.allow_pickle,
            config_dir,
        )

    def spec(self, model: Path, controlnet: Path | None = None) -> DiffusionSpec:
        """The generators' DiffusionSpec (their key-renderer settings are unused)."""
        from zvstudio.diffusion.sampler import KeySettings
        from zvstudio.engine.preview import DiffusionSpec

        return DiffusionSpec(
            model,
            KeySettings(),
            controlnet=controlnet,
            device=self.device,
            allow_pickle=self.allow_pickle,
            config_dir=self.config_dir,
            precision=self.precision,
            memory_limit_gb=self.memory_limit_gb,
            offload=self.offload,
        )


@dataclass(frozen=True)
class TextToVideoChoice:
    """A Text2Video-Zero clip as the dialog describes it. With `controlnet` and `video`, the
    clip follows the video's edges (and keeps its timing); otherwise the camera pans by
    `motion_field` pixels (of a 512 px frame) per frame and the clip plays at `fps`."""

    model: Path
    prompt: str
    output: Path
    negative_prompt: str = ""
    frames: int = 8
    steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 0
    width: int = 512
    height: int = 512
    motion_field: tuple[float, float] = (12.0, 12.0)
    fps: Fraction = Fraction(8)
    controlnet: Path | None = None
    controlnet_scale: float = 1.0
    video: Path | None = None

    title = "New from text"

    def request(self, policy: ModelPolicy, log: LogCallback = ignore_log) -> TextToVideoRequest:
        """The engine's request (imports torch: call it on the job thread)."""
        from zvstudio.engine.preview import choose_controlnet
        from zvstudio.generate.jobs import TextToVideoRequest
        from zvstudio.generate.t2v_zero import TextToVideoSettings

        controlnet = None
        if self.controlnet is not None:
            spec = f"{self.controlnet}:{self.controlnet_scale}"
            controlnet = choose_controlnet(spec, default_scale=self.controlnet_scale)
            if controlnet.note:
                log(f"note: {controlnet.note}")
        settings = TextToVideoSettings(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            frames=self.frames,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            width=self.width,
            height=self.height,
            motion_field=self.motion_field,
            controlnet_scale=controlnet.scale if controlnet else 1.0,
            annotator=controlnet.annotator if controlnet else "canny",
        )
        return TextToVideoRequest(
            policy.spec(self.model, controlnet.path if controlnet else None),
            settings,
            self.output,
            video=self.video,
            fps=self.fps,
            export=ExportSettings(),
        )

    def run(self, policy: ModelPolicy, context: JobContext) -> GenerateResult:
        from zvstudio.generate.jobs import generate_text_to_video

        request = self.request(policy, context.log)
        return generate_text_to_video(request, context.progress, context.cancel, context.log)


@dataclass(frozen=True)
class AnimateChoice:
    """An AnimateZero clip as the dialog describes it: `image` animated, or a still made from
    the prompt (`width` x `height`) when it is None."""

    model: Path
    motion_adapter: Path
    output: Path
    prompt: str = ""
    negative_prompt: str = ""
    frames: int = 16
    steps: int = 25
    guidance_scale: float = 7.5
    seed: int = 0
    window: str = "all"
    window_length: int | None = None
    width: int = 512
    height: int = 512
    fps: Fraction = Fraction(8)
    image: Path | None = None

    title = "Animate image"

    def request(self, policy: ModelPolicy, log: LogCallback = ignore_log) -> AnimateRequest:
        """The engine's request (imports torch: call it on the job thread)."""
        from zvstudio.generate.animate_zero import AnimateSettings
        from zvstudio.generate.jobs import AnimateRequest

        settings = AnimateSettings(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            frames=self.frames,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            window=self.window,
            window_length=self.window_length,
            width=self.width,
            height=self.height,
        )
        return AnimateRequest(
            policy.spec(self.model),
            self.motion_adapter,
            settings,
            self.output,
            image=self.image,
            fps=self.fps,
            export=ExportSettings(audio=False),
        )

    def run(self, policy: ModelPolicy, context: JobContext) -> GenerateResult:
        from zvstudio.generate.jobs import animate_image

        request = self.request(policy, context.log)
        return animate_image(request, context.progress, context.cancel, context.log)


def unused_path(folder: Path, stem: str, suffix: str = ".mp4") -> Path:
    """`folder/stem.mp4`, or `stem_2.mp4`, `stem_3.mp4`... : the first name not taken."""
    candidate = folder / f"{stem}{suffix}"
    number = 2
    while candidate.exists():
        candidate = folder / f"{stem}_{number}{suffix}"
        number += 1
    return candidate


def fps_fraction(value: float) -> Fraction:
    """A spin box's frame rate as an exact fraction (23.976 -> 2997/125)."""
    return Fraction(round(value * 1000), 1000)


# ------------------------------------------------------------------------------- widgets


class FileDialogs(Dialogs):
    """The file dialogs the generation dialogs open; tests replace these methods."""

    def open_file(self, title: str, name_filter: str) -> str | None:
        path, _ = QFileDialog.getOpenFileName(self.parent, title, "", name_filter)
        return path or None

    def save_file(self, title: str, start: str, name_filter: str) -> str | None:
        """A path to write; the platform's dialog asks before an existing file is chosen."""
        path, _ = QFileDialog.getSaveFileName(self.parent, title, start, name_filter)
        return path or None


class ModelPicker(QWidget):
    """A model of one `kind` from the scanned library, or a file or folder the user browses
    to. Models of another base than SD1.x are listed but cannot be chosen."""

    changed = Signal()

    def __init__(
        self,
        models: Sequence[ModelInfo],
        kind: str,
        empty_text: str,
        browse_file: Callable[[], str | None],
        browse_folder: Callable[[], str | None],
    ) -> None:
        super().__init__()
        self.combo = QComboBox()
        self.combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.combo.setMinimumContentsLength(24)
        self.combo.addItem(empty_text, None)
        for info in (m for m in models if m.kind == kind):
            self._add(info.name, str(info.path))
            if info.base not in RENDER_BASES:
                self._disable(self.combo.count() - 1, f"{info.base}: zvstudio generates with SD1.x")
        self.file_button = QPushButton("File…")
        self.folder_button = QPushButton("Folder…")
        self.file_button.setToolTip("Choose a single-file model")
        self.folder_button.setToolTip("Choose a diffusers model folder")
        self.file_button.clicked.connect(lambda: self.set_path(browse_file()))
        self.folder_button.clicked.connect(lambda: self.set_path(browse_folder()))
        self.combo.currentIndexChanged.connect(self._on_index_changed)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo, 1)
        layout.addWidget(self.file_button)
        layout.addWidget(self.folder_button)

    def _add(self, name: str, path: str) -> None:
        self.combo.addItem(name, path)
        self.combo.setItemData(self.combo.count() - 1, path, Qt.ItemDataRole.ToolTipRole)

    def _disable(self, index: int, tip: str) -> None:
        model = self.combo.model()
        if isinstance(model, QStandardItemModel):
            model.item(index).setEnabled(False)
        self.combo.setItemData(index, tip, Qt.ItemDataRole.ToolTipRole)

    def _on_index_changed(self) -> None:
        self.combo.setToolTip(self.combo.currentData() or "")
        self.changed.emit()

    def path(self) -> Path | None:
        data = self.combo.currentData()
        return Path(data) if data else None

    def set_path(self, path: str | Path | None) -> None:
        """Select `path` (added to the list when the library does not have it); None and ""
        (a cancelled file dialog) change nothing."""
        if not path:
            return
        path = str(Path(path).expanduser())
        if self.combo.findData(path) < 0:
            self._add(Path(path).name, path)
        self.combo.setCurrentIndex(self.combo.findData(path))

    def clear(self) -> None:
        self.combo.setCurrentIndex(0)


class FileField(QWidget):
    """A path typed in or chosen with Browse…; `browse` returns the chosen path or None."""

    changed = Signal()

    def __init__(self, browse: Callable[[str], str | None], placeholder: str = "") -> None:
        super().__init__()
        self._browse = browse
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.setClearButtonEnabled(True)
        self.edit.setMinimumWidth(320)
        self.button = QPushButton("Browse…")
        self.button.clicked.connect(self.browse)
        self.edit.textChanged.connect(self.changed)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.button)

    def browse(self) -> None:
        chosen = self._browse(self.text())
        if chosen and chosen == self.edit.text():
            self.changed.emit()  # the same path, but now chosen in the dialog: check it again
        elif chosen:
            self.edit.setText(chosen)

    def text(self) -> str:
        return self.edit.text().strip()

    def path(self) -> Path | None:
        return Path(self.text()).expanduser() if self.text() else None

    def set_path(self, path: str | Path | None) -> None:
        self.edit.setText(str(path) if path else "")


def _spin(low: float, high: float, step: float, decimals: int = 2, suffix: str = ""):
    spin = QDoubleSpinBox()
    spin.setMinimumWidth(100)
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setDecimals(decimals)
    spin.setSuffix(suffix)
    return spin


def _int_spin(low: int, high: int, step: int = 1, suffix: str = "") -> QSpinBox:
    spin = QSpinBox()
    spin.setMinimumWidth(100)
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setSuffix(suffix)
    return spin


def _text_edit(lines: int, placeholder: str) -> QPlainTextEdit:
    edit = QPlainTextEdit()
    edit.setTabChangesFocus(True)
    edit.setPlaceholderText(placeholder)
    edit.setFixedHeight(edit.fontMetrics().lineSpacing() * lines + 12)
    return edit


def _row(*widgets: QWidget, stretch: bool = True) -> QWidget:
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    if stretch:
        layout.addStretch(1)
    return box


def _add_row(form: QFormLayout, text: str, widget: QWidget, tip: str) -> None:
    label = QLabel(text)
    label.setToolTip(tip)
    widget.setToolTip(tip)
    form.addRow(label, widget)


def _group(title: str) -> tuple[QGroupBox, QFormLayout]:
    group = QGroupBox(title)
    form = QFormLayout(group)
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    return group, form


# ---------------------------------------------------------------------------- the dialogs


class _GenerateDialog(QDialog):
    """What both dialogs share: prompts, model, seed, frame rate, the output file, the reason
    label and the buttons. Subclasses add their groups and reasons."""

    OK_TEXT = "Generate"
    OUTPUT_STEM = "clip"
    INT_FIELDS: tuple[str, ...] = ()
    FLOAT_FIELDS: tuple[str, ...] = ()

    def __init__(
        self,
        parent: QWidget | None,
        models: Sequence[ModelInfo],
        remembered: Mapping[str, Any] | None,
        folder: Path,
        dialogs: FileDialogs | None = None,
    ) -> None:
        super().__init__(parent)
        self.dialogs = dialogs or FileDialogs(self)
        self.models = list(models)
        self._replace_ok: Path | None = None  # an existing output the user chose to replace
        self.reason_label = QLabel()
        self.reason_label.setStyleSheet("color: #c0392b;")
        self.reason_label.setWordWrap(True)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText(self.OK_TEXT)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self._build()
        self.output_field.set_path(unused_path(folder, self.OUTPUT_STEM))
        self.restore(remembered or {})
        self._connect_validation()
        self._validate()

    # -- shared widgets --------------------------------------------------------------------
    def _build(self) -> None:
        raise NotImplementedError

    def _prompt_group(self, prompt_tip: str) -> QGroupBox:
        group, form = _group("Prompt")
        self.prompt_edit = _text_edit(3, "What the clip should show")
        self.negative_edit = _text_edit(2, "What it should not show (optional)")
        _add_row(form, "Prompt", self.prompt_edit, prompt_tip)
        _add_row(form, "Negative prompt", self.negative_edit, "What the clip should not show")
        return group

    def _model_picker(self) -> ModelPicker:
        self.model_picker = ModelPicker(
            self.models,
            "checkpoint",
            "(choose a checkpoint)",
            lambda: self.dialogs.open_file("Choose an SD1.x checkpoint", MODEL_FILTER),
            lambda: self.dialogs.open_folder("Choose a diffusers model folder"),
        )
        return self.model_picker

    def _sampling_rows(
        self, form: QFormLayout, frames: int, max_frames: int, steps: int, min_steps: int
    ) -> None:
        self.frames_spin = _int_spin(1, max_frames)
        self.frames_spin.setValue(frames)
        _add_row(form, "Frames", _row(self.frames_spin), "How many frames the clip has")
        self.steps_spin = _int_spin(min_steps, 500)
        self.steps_spin.setValue(steps)
        _add_row(form, "Steps", _row(self.steps_spin), "Denoising steps (more: slower, finer)")
        self.guidance_spin = _spin(1.0, 30.0, 0.5)
        self.guidance_spin.setValue(7.5)
        _add_row(
            form,
            "Guidance",
            _row(self.guidance_spin),
            "How closely the frames follow the prompt (CFG)",
        )
        # A double spin box: seeds go to 2**32 - 1, past QSpinBox's 32-bit signed range.
        self.seed_spin = _spin(0, SEED_MAX, 1, decimals=0)
        self.seed_spin.setButtonSymbols(QAbstractSpinBox.ButtonSymbols.NoButtons)
        self.seed_spin.setMinimumWidth(110)
        self.random_seed_button = QPushButton("Random")
        self.random_seed_button.clicked.connect(
            lambda: self.seed_spin.setValue(random.randint(0, SEED_MAX))
        )
        _add_row(
            form,
            "Seed",
            _row(self.seed_spin, self.random_seed_button),
            "The same seed and settings make the same clip",
        )

    def _size_row(self, form: QFormLayout, tip: str) -> None:
        self.width_spin = _int_spin(8, 2048, 8, " px")
        self.height_spin = _int_spin(8, 2048, 8, " px")
        self.width_spin.setValue(512)
        self.height_spin.setValue(512)
        self.size_label = QLabel("Size")
        self.size_label.setToolTip(tip)
        self.size_row = _row(self.width_spin, QLabel("×"), self.height_spin)
        self.size_row.setToolTip(tip)
        form.addRow(self.size_label, self.size_row)

    def _fps_row(self, form: QFormLayout, tip: str) -> None:
        self.fps_spin = _spin(1, 240, 1, decimals=3, suffix=" fps")
        self.fps_spin.setValue(8)
        _add_row(form, "Frame rate", _row(self.fps_spin), tip)

    def _output_group(self) -> QGroupBox:
        group, form = _group("Output")
        self.output_field = FileField(self._browse_output, "The video file to write")
        _add_row(
            form,
            "Save to",
            self.output_field,
            "The clip is written here (H.264), then opened as a new project",
        )
        return group

    def _lay_out(self, *groups: QGroupBox) -> None:
        layout = QVBoxLayout(self)
        for group in groups:
            layout.addWidget(group)
        layout.addWidget(self.reason_label)
        layout.addWidget(self.buttons)

    def _browse_output(self, current: str) -> str | None:
        chosen = self.dialogs.save_file("Save the clip as", current, OUTPUT_FILTER)
        if not chosen:
            return None
        if not Path(chosen).suffix:
            chosen += ".mp4"  # some platforms' dialogs add none
        self._replace_ok = Path(chosen).expanduser()  # the save dialog asked before replacing
        return chosen

    def _connect_validation(self) -> None:
        for kind, signal in (
            (ModelPicker, "changed"),
            (FileField, "changed"),
            (QPlainTextEdit, "textChanged"),
            (QSpinBox, "valueChanged"),
            (QDoubleSpinBox, "valueChanged"),
            (QComboBox, "currentIndexChanged"),
        ):
            for widget in self.findChildren(kind):
                getattr(widget, signal).connect(self._validate)

    # -- validation ------------------------------------------------------------------------
    def invalid_reason(self) -> str | None:
        """Why the dialog cannot start a job as it stands, or None."""
        raise NotImplementedError

    def _model_reason(self) -> str | None:
        model = self.model_picker.path()
        if model is None:
            return "Choose a Stable Diffusion 1.x model (from the list, or a file or folder)."
        if not model.exists():
            return f"The model {model} does not exist."
        return None

    def _size_reason(self) -> str | None:
        if self.width_spin.value() % 8 or self.height_spin.value() % 8:
            return "Width and height must be multiples of 8."
        return None

    def _output_reason(self, inputs: Sequence[Path | None] = ()) -> str | None:
        output = self.output_field.path()
        if output is None:
            return "Choose where to save the clip."
        if output.suffix.lower() not in OUTPUT_SUFFIXES:
            return "Save the clip as an .mp4, .mov or .mkv file."
        if not output.absolute().parent.is_dir():
            return f"The folder {output.absolute().parent} does not exist."
        if output.is_dir():
            return f"{output} is a folder: choose a file name."
        if any(p is not None and p.absolute() == output.absolute() for p in inputs):
            return "The clip would replace its own input: choose another file name."
        if output.exists() and output != self._replace_ok:
            return (
                f"{output.name} already exists: choose another name, or choose it with "
                "Browse… to replace it."
            )
        return None

    def _validate(self) -> None:
        self._update_enabled()
        reason = self.invalid_reason()
        self.reason_label.setText(reason or "")
        self.reason_label.setVisible(reason is not None)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(reason is None)

    def _update_enabled(self) -> None:
        """Enable the fields that matter for the choice as it stands."""

    def ok_enabled(self) -> bool:
        return self.buttons.button(QDialogButtonBox.StandardButton.Ok).isEnabled()

    # -- remembering -----------------------------------------------------------------------
    def remembered(self) -> dict[str, Any]:
        """The values to offer next time (JSON scalars; no output file: a new one each time)."""
        output = self.output_field.path()
        values: dict[str, Any] = {
            "prompt": self.prompt_edit.toPlainText(),
            "negative_prompt": self.negative_edit.toPlainText(),
            "model": _text(self.model_picker.path()),
            "folder": str(output.absolute().parent) if output else None,
        }
        values.update({name: getattr(self, f"{name}_spin").value() for name in self.INT_FIELDS})
        values.update({name: getattr(self, f"{name}_spin").value() for name in self.FLOAT_FIELDS})
        return values

    def restore(self, values: Mapping[str, Any]) -> None:
        """Show remembered values; names or types this version does not know are skipped."""
        if isinstance(values.get("prompt"), str):
            self.prompt_edit.setPlainText(values["prompt"])
        if isinstance(values.get("negative_prompt"), str):
            self.negative_edit.setPlainText(values["negative_prompt"])
        if isinstance(values.get("model"), str):
            self.model_picker.set_path(values["model"])
        for name in self.INT_FIELDS + self.FLOAT_FIELDS:
            value = values.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                spin = getattr(self, f"{name}_spin")
                spin.setValue(int(value) if isinstance(spin, QSpinBox) else float(value))

    def _common(self) -> dict[str, Any]:
        """The choice's fields both dialogs have."""
        return {
            "model": self.model_picker.path(),
            "output": self.output_field.path(),
            "prompt": self.prompt_edit.toPlainText().strip(),
            "negative_prompt": self.negative_edit.toPlainText().strip(),
            "frames": self.frames_spin.value(),
            "steps": self.steps_spin.value(),
            "guidance_scale": self.guidance_spin.value(),
            "seed": int(self.seed_spin.value()),
            "width": self.width_spin.value(),
            "height": self.height_spin.value(),
            "fps": fps_fraction(self.fps_spin.value()),
        }

    def _check(self) -> None:
        reason = self.invalid_reason()
        if reason is not None:
            raise ZvsError(reason)


def _text(path: Path | None) -> str | None:
    return str(path) if path is not None else None


class TextToVideoDialog(_GenerateDialog):
    """File > New from text...: a Text2Video-Zero clip from a prompt, or from an input video's
    edges through a ControlNet. Read the answer with `choice()` after `exec()`."""

    OUTPUT_STEM = "text_to_video"
    INT_FIELDS = ("frames", "steps", "width", "height")
    FLOAT_FIELDS = (
        "guidance",
        "seed",
        "motion_x",
        "motion_y",
        "fps",
        "controlnet_scale",
    )

    def __init__(
        self,
        parent: QWidget | None,
        models: Sequence[ModelInfo],
        remembered: Mapping[str, Any] | None,
        folder: Path,
        dialogs: FileDialogs | None = None,
    ) -> None:
        self._video_info: tuple[Path, int, tuple[int, int]] | str | None = None
        super().__init__(parent, models, remembered, folder, dialogs)
        self.setWindowTitle("New from text (Text2Video-Zero)")

    def _build(self) -> None:
        model_group, form = _group("Model")
        _add_row(
            form,
            "Checkpoint",
            self._model_picker(),
            "A Stable Diffusion 1.x checkpoint: a .safetensors file or a diffusers folder",
        )
        self.controlnet_picker = ModelPicker(
            self.models,
            "controlnet",
            "None (text only)",
            lambda: self.dialogs.open_file("Choose a ControlNet", MODEL_FILTER),
            lambda: self.dialogs.open_folder("Choose a diffusers ControlNet folder"),
        )
        _add_row(
            form,
            "ControlNet",
            self.controlnet_picker,
            "With an input video: the clip follows the video's edges (use a canny ControlNet)",
        )
        self.controlnet_scale_spin = _spin(0, 2, 0.05)
        self.controlnet_scale_spin.setValue(1.0)
        _add_row(
            form,
            "ControlNet strength",
            _row(self.controlnet_scale_spin),
            "How strongly the clip holds the video's edges (0 = not at all)",
        )
        self.video_field = FileField(
            lambda _: self.dialogs.open_file("Choose the input video", VIDEO_FILTER),
            "Optional: a video whose edges the clip follows",
        )
        _add_row(
            form,
            "Input video",
            self.video_field,
            "The clip follows this video's first frames through the ControlNet and keeps its "
            "timing and audio",
        )
        self.video_note = QLabel()
        self.video_note.setWordWrap(True)
        form.addRow("", self.video_note)

        clip_group, clip = _group("Clip")
        self._sampling_rows(clip, frames=8, max_frames=256, steps=50, min_steps=3)
        self._size_row(clip, "Width and height, multiples of 8 (SD1.5 is trained at 512)")
        self.motion_x_spin = _spin(-128, 128, 1, decimals=1, suffix=" px")
        self.motion_y_spin = _spin(-128, 128, 1, decimals=1, suffix=" px")
        self.motion_x_spin.setValue(12)
        self.motion_y_spin.setValue(12)
        self.motion_row = _row(
            QLabel("x"), self.motion_x_spin, QLabel("y"), self.motion_y_spin, QLabel("per frame")
        )
        _add_row(
            clip,
            "Camera motion",
            self.motion_row,
            "How far the camera pans per frame, in pixels of a 512 px frame (0, 0: none)",
        )
        self._fps_row(clip, "The clip's frame rate (a clip from a video keeps the video's)")
        self._lay_out(
            self._prompt_group("What the clip shows"), model_group, clip_group, self._output_group()
        )
        self.video_field.changed.connect(self._video_changed)

    def _video_changed(self) -> None:
        """Probe a newly chosen video: the size follows its aspect ratio, and the clip has at
        most as many frames."""
        from zvstudio.generate.jobs import input_clip_size
        from zvstudio.media import probe

        video = self.video_field.path()
        self._video_info, note = None, ""
        if video is not None and not video.is_file():
            self._video_info = f"The video {video} does not exist."
        elif video is not None:
            try:
                count = probe(video).frame_count
                size = input_clip_size(video)
            except ZvsError as exc:
                self._video_info = f"Cannot read {video.name}: {exc.message}"
            else:
                self._video_info = (video, count, size)
                self.width_spin.setValue(size[0])
                self.height_spin.setValue(size[1])
                self.frames_spin.setValue(min(self.frames_spin.value(), count))
                note = (
                    f"{video.name}: {count} frames. The clip follows its first frames with "
                    "their timing and audio; the size keeps its aspect ratio."
                )
        self.video_note.setText(note)
        self._validate()

    def _update_enabled(self) -> None:
        controlled = self.video_field.path() is not None
        self.controlnet_scale_spin.setEnabled(self.controlnet_picker.path() is not None)
        self.motion_row.setEnabled(not controlled)
        self.fps_spin.setEnabled(not controlled)
        self.video_note.setVisible(bool(self.video_note.text()))

    def invalid_reason(self) -> str | None:
        reason = self._model_reason()
        if reason:
            return reason
        if not self.prompt_edit.toPlainText().strip():
            return "Write a prompt: it is what the clip shows."
        controlnet, video = self.controlnet_picker.path(), self.video_field.path()
        if controlnet is not None and not controlnet.exists():
            return f"The ControlNet {controlnet} does not exist."
        reason = self._mode_reason(controlnet, video)
        if reason:
            return reason
        if isinstance(self._video_info, str):
            return self._video_info
        if isinstance(self._video_info, tuple) and self._video_info[1] < self.frames_spin.value():
            path, count, _ = self._video_info
            return f"{path.name} has {count} frames; the clip needs {self.frames_spin.value()}."
        return self._size_reason() or self._output_reason([video])

    def _mode_reason(self, controlnet: Path | None, video: Path | None) -> str | None:
        """Why the checkpoint, ControlNet and video make no mode: a ControlNet follows a
        video; an InstructPix2Pix checkpoint edits one, without a ControlNet."""
        model = self.model_picker.path()
        instruct = model is not None and unet_input_channels(model) == 8
        if instruct and video is None:
            return "This is an InstructPix2Pix checkpoint: it edits an input video; choose one."
        if instruct and controlnet is not None:
            return "An InstructPix2Pix checkpoint edits the video itself: set ControlNet to None."
        if controlnet is not None and video is None:
            return "A ControlNet follows an input video: choose one, or set ControlNet to None."
        if video is not None and controlnet is None and not instruct:
            return (
                "An input video guides the clip through a ControlNet (choose one, e.g. canny), "
                "or is edited by an InstructPix2Pix checkpoint."
            )
        return None

    def remembered(self) -> dict[str, Any]:
        values = super().remembered()
        values.update(
            controlnet=_text(self.controlnet_picker.path()),
            video=_text(self.video_field.path()),
        )
        return values

    def restore(self, values: Mapping[str, Any]) -> None:
        if isinstance(values.get("controlnet"), str):
            self.controlnet_picker.set_path(values["controlnet"])
        video = values.get("video")
        if isinstance(video, str) and Path(video).is_file():  # an optional input that is gone
            self.video_field.set_path(video)  # is dropped, not reported (probed on change)
        super().restore(values)  # after the video: a remembered size wins over the video's

    def choice(self) -> TextToVideoChoice:
        """The clip asked for; raises ZvsError while the dialog shows a reason."""
        self._check()
        return TextToVideoChoice(
            **self._common(),
            motion_field=(self.motion_x_spin.value(), self.motion_y_spin.value()),
            controlnet=self.controlnet_picker.path(),
            controlnet_scale=self.controlnet_scale_spin.value(),
            video=self.video_field.path(),
        )


class AnimateDialog(_GenerateDialog):
    """File > Animate image...: AnimateZero animates an image (or a still it generates from the
    prompt) with an AnimateDiff motion module. Read the answer with `choice()` after `exec()`."""

    OK_TEXT = "Animate"
    OUTPUT_STEM = "animation"
    INT_FIELDS = ("frames", "steps", "width", "height", "window_length")
    FLOAT_FIELDS = ("guidance", "seed", "fps")

    def __init__(
        self,
        parent: QWidget | None,
        models: Sequence[ModelInfo],
        remembered: Mapping[str, Any] | None,
        folder: Path,
        dialogs: FileDialogs | None = None,
    ) -> None:
        super().__init__(parent, models, remembered, folder, dialogs)
        self.setWindowTitle("Animate image (AnimateZero)")

    def _build(self) -> None:
        source_group, form = _group("Image")
        self.image_field = FileField(
            lambda _: self.dialogs.open_file("Choose the image to animate", IMAGE_FILTER),
            "Empty: generate the still from the prompt",
        )
        _add_row(
            form,
            "Image",
            self.image_field,
            "The still that becomes frame 0 (it keeps its own size); empty: generate one",
        )
        self._size_row(form, "The size of a generated still (multiples of 8)")

        model_group, models = _group("Models")
        _add_row(
            models,
            "Checkpoint",
            self._model_picker(),
            "A Stable Diffusion 1.x checkpoint: a .safetensors file or a diffusers folder",
        )
        self.motion_picker = ModelPicker(
            self.models,
            "motion_adapter",
            "(choose a motion module)",
            lambda: self.dialogs.open_file("Choose an AnimateDiff motion module", MOTION_FILTER),
            lambda: self.dialogs.open_folder("Choose a diffusers motion module folder"),
        )
        _add_row(
            models,
            "Motion module",
            self.motion_picker,
            "An AnimateDiff motion module for SD1.5 (mm_sd_v15_v2.safetensors or a folder)",
        )

        clip_group, clip = _group("Animation")
        self._sampling_rows(clip, frames=16, max_frames=64, steps=25, min_steps=1)
        self._fps_row(clip, "The clip's frame rate")
        self.window_combo = QComboBox()
        for value, label in WINDOW_LABELS.items():
            self.window_combo.addItem(label, value)
        _add_row(
            clip,
            "Window attention",
            self.window_combo,
            "Which motion modules attend to a window of earlier frames (AnimateZero)",
        )
        self.window_length_spin = _int_spin(0, 64, 1, " frames")
        self.window_length_spin.setSpecialValueText("all earlier frames")
        self.window_length_spin.setMinimumWidth(150)
        _add_row(
            clip,
            "Window length",
            _row(self.window_length_spin),
            "How many frames (each frame and those before it) a frame attends to",
        )
        self._lay_out(
            source_group,
            self._prompt_group("What the clip shows"),
            model_group,
            clip_group,
            self._output_group(),
        )

    def _update_enabled(self) -> None:
        generated = self.image_field.path() is None
        self.size_label.setEnabled(generated)
        self.size_row.setEnabled(generated)
        self.window_length_spin.setEnabled(self.window_combo.currentData() != "none")
        self.prompt_edit.setPlaceholderText(
            "What the clip shows (and the still, when no image is given)"
            if generated
            else "What the clip shows (optional)"
        )

    def invalid_reason(self) -> str | None:
        reason = self._model_reason()
        if reason:
            return reason
        motion = self.motion_picker.path()
        if motion is None:
            return "Choose a motion module (an AnimateDiff .safetensors file or folder)."
        if not motion.exists():
            return f"The motion module {motion} does not exist."
        image = self.image_field.path()
        if image is not None and not image.is_file():
            return f"The image {image} does not exist."
        if image is None and not self.prompt_edit.toPlainText().strip():
            return "Write a prompt to generate the still, or choose an image to animate."
        if image is None and self._size_reason():
            return self._size_reason()
        return self._output_reason([image])

    def remembered(self) -> dict[str, Any]:
        values = super().remembered()
        values.update(
            motion_adapter=_text(self.motion_picker.path()),
            image=_text(self.image_field.path()),
            window=self.window_combo.currentData(),
        )
        return values

    def restore(self, values: Mapping[str, Any]) -> None:
        super().restore(values)
        if isinstance(values.get("motion_adapter"), str):
            self.motion_picker.set_path(values["motion_adapter"])
        image = values.get("image")
        if isinstance(image, str) and Path(image).is_file():
            self.image_field.set_path(image)
        index = self.window_combo.findData(values.get("window"))
        if index >= 0:
            self.window_combo.setCurrentIndex(index)

    def choice(self) -> AnimateChoice:
        """The animation asked for; raises ZvsError while the dialog shows a reason."""
        self._check()
        length = self.window_length_spin.value()
        return AnimateChoice(
            **self._common(),
            motion_adapter=self.motion_picker.path(),
            window=self.window_combo.currentData(),
            window_length=length or None,
            image=self.image_field.path(),
        )
