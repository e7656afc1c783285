"""File > New from text... (Text2Video-Zero) and File > Animate image... (AnimateZero or
DynamiCrafter).

A dialog only gathers a choice: `TextToVideoChoice`, `AnimateChoice` or `DynamiCrafterChoice`,
plain values. Their
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
from zvstudio.diffusion.identify import PICKLE_SUFFIXES, ModelInfo, unet_input_channels
from zvstudio.engine.jobs import JobContext
from zvstudio.errors import ZvsError
from zvstudio.generate.dynamicrafter.config import PRESETS as DYNAMICRAFTER_PRESETS
from zvstudio.generate.dynamicrafter.names import guess_preset
from zvstudio.gui.file_filters import VIDEOS_FILTER
from zvstudio.gui.inspector import (
    CLIP_SKIP_TIP,
    IMAGE_FILTER,
    MODEL_FILTER,
    REFERENCE_TIP,
    RENDER_BASES,
    VAE_TIP,
    Dialogs,
)
from zvstudio.media import ExportSettings
from zvstudio.progress import LogCallback, ignore_log
from zvstudio.project.model import MAX_CLIP_SKIP, SEED_MAX

if TYPE_CHECKING:
    from zvstudio.engine.preview import DiffusionSpec
    from zvstudio.engine.request import RenderRequest
    from zvstudio.generate.dynamicrafter.job import DynamiCrafterRequest
    from zvstudio.generate.jobs import AnimateRequest, GenerateResult, TextToVideoRequest

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
ENGINES = {
    "animatezero": "AnimateZero (SD1.5 + motion module)",
    "dynamicrafter": "DynamiCrafter",
}
DYNAMICRAFTER_FILTER = (
    "DynamiCrafter checkpoints (*.ckpt *.safetensors *.sft *.pt *.pth *.bin);;All files (*)"
)
AUTO_PRESET = "auto"
DYNAMICRAFTER_MODES = {
    "animate": "Animate the image",
    "interpolate": "Interpolate to the last image",
    "loop": "Loop back to the image",
}
NO_DYNAMICRAFTER = (
    "No DynamiCrafter checkpoint in the model library: put one (e.g. "
    "dynamicrafter_512_v1/model.ckpt) in a model folder (Settings), or choose the file with "
    "“DynamiCrafter file…”"
)
MOTION_NUMBER_TIP = (
    "DynamiCrafter's motion number: frames per second for the 512, 1024 and interpolation "
    "models (lower moves more); the frame stride for the 256 model (higher moves more). "
    "Default: the model's own"
)


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

    def spec(
        self,
        model: Path,
        controlnets: tuple[Path, ...] = (),
        vae: Path | None = None,
        reference: tuple[Path, float] | None = None,
    ) -> DiffusionSpec:
        """The generators' DiffusionSpec; of its key-renderer settings only the reference
        image (path, strength) is used, when given."""
        from zvstudio.diffusion.sampler import KeySettings
        from zvstudio.engine.preview import DiffusionSpec

        settings = KeySettings()
        if reference is not None:
            settings = KeySettings(reference_image=str(reference[0]), reference_scale=reference[1])
        return DiffusionSpec(model, settings, controlnets=controlnets, vae=vae, **self._placement())

    def _placement(self) -> dict[str, Any]:
        """The DiffusionSpec fields these choices set."""
        return {
            "device": self.device,
            "allow_pickle": self.allow_pickle,
            "config_dir": self.config_dir,
            "precision": self.precision,
            "memory_limit_gb": self.memory_limit_gb,
            "offload": self.offload,
        }

    def applied_to(self, request: RenderRequest) -> RenderRequest:
        """`request` run as these choices say: its diffusion model on their device, precision,
        memory and offload (pickles only if allowed), and its propagation on their device."""
        from dataclasses import replace

        renderer = request.renderer
        if renderer.diffusion is not None:
            placement = self._placement()
            placement["config_dir"] = self.config_dir or renderer.diffusion.config_dir
            renderer = replace(renderer, diffusion=replace(renderer.diffusion, **placement))
        propagation = replace(request.propagation, device=self.device)
        return replace(request, renderer=renderer, propagation=propagation)


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
    smooth_background: float = 0.0
    fps: Fraction = Fraction(8)
    controlnet: Path | None = None
    controlnet_scale: float = 1.0
    # ControlNets guiding beside the first, (file or folder, strength) each: their guidance adds up
    more_controlnets: tuple[tuple[Path, float], ...] = ()
    video: Path | None = None
    vae: Path | None = None  # instead of the checkpoint's own
    clip_skip: int = 1
    reference: Path | None = None  # an image every frame takes its look from (IP-Adapter)
    reference_scale: float = 0.6

    title = "New from text"

    def request(self, policy: ModelPolicy, log: LogCallback = ignore_log) -> TextToVideoRequest:
        """The engine's request (imports torch: call it on the job thread)."""
        from zvstudio.engine.preview import choose_controlnet, control_fields
        from zvstudio.generate.jobs import TextToVideoRequest
        from zvstudio.generate.t2v_zero import TextToVideoSettings

        choices = []
        if self.controlnet is not None:
            units = [(self.controlnet, self.controlnet_scale), *self.more_controlnets]
            for path, scale in units:
                choices.append(choose_controlnet(f"{path}:{scale}", default_scale=scale))
                if choices[-1].note:
                    log(f"note: {choices[-1].note}")
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
            smooth_background=self.smooth_background,
            **control_fields(choices, 1.0),
            clip_skip=self.clip_skip,
        )
        reference = None if self.reference is None else (self.reference, self.reference_scale)
        controlnets = tuple(choice.path for choice in choices)
        return TextToVideoRequest(
            policy.spec(self.model, controlnets, self.vae, reference),
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
    vae: Path | None = None  # instead of the checkpoint's own
    clip_skip: int = 1

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
            clip_skip=self.clip_skip,
        )
        return AnimateRequest(
            policy.spec(self.model, vae=self.vae),
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


@dataclass(frozen=True)
class DynamiCrafterChoice:
    """A DynamiCrafter clip as the dialog describes it: `image` animated by the `checkpoint`'s
    video model (`preset` None: told by the file name), to `last_image` when interpolating.
    `guidance_rescale` and `fs` None take the model's own; `fps` is how the clip plays."""

    checkpoint: Path
    image: Path
    output: Path
    preset: str | None = None
    mode: str = "animate"
    last_image: Path | None = None
    prompt: str = ""
    negative_prompt: str = ""
    frames: int = 16
    steps: int = 50
    guidance_scale: float = 7.5
    guidance_rescale: float | None = None
    seed: int = 123
    fs: int | None = None
    fps: Fraction = Fraction(8)

    title = "Animate image"

    def request(self, policy: ModelPolicy, log: LogCallback = ignore_log) -> DynamiCrafterRequest:
        """The engine's request (imports torch: call it on the job thread)."""
        from zvstudio.generate.dynamicrafter.job import DynamiCrafterRequest
        from zvstudio.generate.dynamicrafter.sampler import DynamiCrafterSettings

        settings = DynamiCrafterSettings(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            frames=self.frames,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            guidance_rescale=self.guidance_rescale,
            seed=self.seed,
            fs=self.fs,
            mode=self.mode,
        )
        return DynamiCrafterRequest(
            self.checkpoint,
            self.preset,
            settings,
            self.image,
            self.output,
            last_image=self.last_image,
            device=policy.device,
            precision=policy.precision,
            allow_pickle=policy.allow_pickle,
            fps_out=self.fps,
            export=ExportSettings(audio=False),
        )

    def run(self, policy: ModelPolicy, context: JobContext) -> GenerateResult:
        from zvstudio.generate.dynamicrafter.job import animate_dynamicrafter

        request = self.request(policy, context.log)
        return animate_dynamicrafter(request, context.progress, context.cancel, context.log)


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
    to. Models of another base than `bases` (SD1.x) are listed but cannot be chosen; without
    `browse_folder` there is no Folder… button (single-file models only)."""

    changed = Signal()

    def __init__(
        self,
        models: Sequence[ModelInfo],
        kind: str,
        empty_text: str,
        browse_file: Callable[[], str | None],
        browse_folder: Callable[[], str | None] | None,
        bases: Sequence[str] = RENDER_BASES,
        refused: str = "{base}: zvstudio generates with SD1.x",
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
            if info.base not in bases:
                self._disable(self.combo.count() - 1, refused.format(base=info.base))
        self.file_button = QPushButton("File…")
        self.folder_button = QPushButton("Folder…")
        self.file_button.setToolTip("Choose a single-file model")
        self.folder_button.setToolTip("Choose a diffusers model folder")
        self.file_button.clicked.connect(lambda: self.set_path(browse_file()))
        if browse_folder is not None:
            self.folder_button.clicked.connect(lambda: self.set_path(browse_folder()))
        self.folder_button.setVisible(browse_folder is not None)
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

    def has_choices(self) -> bool:
        """Whether any model can be chosen (from the library, or browsed to)."""
        model = self.combo.model()
        return any(
            not isinstance(model, QStandardItemModel) or model.item(index).isEnabled()
            for index in range(1, self.combo.count())
        )

    def select_first(self) -> None:
        """Select the first model that can be chosen, if any."""
        for index in range(1, self.combo.count()):
            model = self.combo.model()
            if not isinstance(model, QStandardItemModel) or model.item(index).isEnabled():
                self.combo.setCurrentIndex(index)
                return

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

    def _checkpoint_rows(self, form: QFormLayout) -> None:
        """The SD1.x checkpoint, the VAE used instead of its own (if any), the clip skip."""
        self.model_picker = ModelPicker(
            self.models,
            "checkpoint",
            "(choose a checkpoint)",
            lambda: self.dialogs.open_file("Choose an SD1.x checkpoint", MODEL_FILTER),
            lambda: self.dialogs.open_folder("Choose a diffusers model folder"),
        )
        _add_row(
            form,
            "Checkpoint",
            self.model_picker,
            "A Stable Diffusion 1.x checkpoint: a .safetensors file or a diffusers folder",
        )
        self.vae_picker = ModelPicker(
            self.models,
            "vae",
            "The checkpoint's own",
            lambda: self.dialogs.open_file("Choose an SD1.x VAE", MODEL_FILTER),
            lambda: self.dialogs.open_folder("Choose a diffusers VAE (or model) folder"),
        )
        _add_row(form, "VAE", self.vae_picker, VAE_TIP)
        self.clip_skip_spin = _int_spin(1, MAX_CLIP_SKIP)
        _add_row(form, "CLIP skip", _row(self.clip_skip_spin), CLIP_SKIP_TIP)

    def _sampling_rows(
        self,
        form: QFormLayout,
        frames: int,
        max_frames: int,
        steps: int,
        min_steps: int,
        prefix: str = "",
        min_frames: int = 1,
        seed: int = 0,
    ) -> None:
        """Frames, steps, guidance and seed, as `self.{prefix}frames_spin` and so on."""
        frames_spin = _int_spin(min_frames, max_frames)
        frames_spin.setValue(frames)
        _add_row(form, "Frames", _row(frames_spin), "How many frames the clip has")
        steps_spin = _int_spin(min_steps, 500)
        steps_spin.setValue(steps)
        _add_row(form, "Steps", _row(steps_spin), "Denoising steps (more: slower, finer)")
        guidance_spin = _spin(1.0, 30.0, 0.5)
        guidance_spin.setValue(7.5)
        _add_row(
            form,
            "Guidance",
            _row(guidance_spin),
            "How closely the frames follow the prompt (CFG)",
        )
        # A double spin box: seeds go to 2**32 - 1, past QSpinBox's 32-bit signed range.
        seed_spin = _spin(0, SEED_MAX, 1, decimals=0)
        seed_spin.setButtonSymbols(QAbstractSpinBox.ButtonSymbols.NoButtons)
        seed_spin.setMinimumWidth(110)
        seed_spin.setValue(seed)
        random_seed_button = QPushButton("Random")
        random_seed_button.clicked.connect(lambda: seed_spin.setValue(random.randint(0, SEED_MAX)))
        _add_row(
            form,
            "Seed",
            _row(seed_spin, random_seed_button),
            "The same seed and settings make the same clip",
        )
        for name, widget in (
            ("frames_spin", frames_spin),
            ("steps_spin", steps_spin),
            ("guidance_spin", guidance_spin),
            ("seed_spin", seed_spin),
            ("random_seed_button", random_seed_button),
        ):
            setattr(self, prefix + name, widget)

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

    def _fps_row(
        self, form: QFormLayout, tip: str, prefix: str = "", label: str = "Frame rate"
    ) -> None:
        spin = _spin(1, 240, 1, decimals=3, suffix=" fps")
        spin.setValue(8)
        setattr(self, f"{prefix}fps_spin", spin)
        _add_row(form, label, _row(spin), tip)

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
        vae = self.vae_picker.path()
        if vae is not None and not vae.exists():
            return f"The VAE {vae} does not exist."
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
            "vae": _text(self.vae_picker.path()),
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
        vae = values.get("vae")
        if isinstance(vae, str) and Path(vae).exists():  # a VAE that is gone is dropped
            self.vae_picker.set_path(vae)
        for name in self.INT_FIELDS + self.FLOAT_FIELDS:
            value = values.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                spin = getattr(self, f"{name}_spin")
                spin.setValue(int(value) if isinstance(spin, QSpinBox) else float(value))

    def _common(self) -> dict[str, Any]:
        """The choice's fields both dialogs have."""
        return {
            "model": self.model_picker.path(),
            "vae": self.vae_picker.path(),
            "clip_skip": self.clip_skip_spin.value(),
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
    INT_FIELDS = ("frames", "steps", "width", "height", "clip_skip")
    FLOAT_FIELDS = (
        "guidance",
        "seed",
        "motion_x",
        "motion_y",
        "smoothing",
        "fps",
        "controlnet_scale",
        "second_controlnet_scale",
        "reference_scale",
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
        self.has_foreground_source = _has_seg_model()
        # UNet input channels by checkpoint: validation runs on every keystroke, the file
        # header need be read once.
        self._unet_inputs: dict[Path, int | None] = {}
        super().__init__(parent, models, remembered, folder, dialogs)
        self.setWindowTitle("New from text (Text2Video-Zero)")

    def _build(self) -> None:
        model_group, form = _group("Model")
        self._checkpoint_rows(form)
        self.controlnet_picker = self._controlnet_picker("None (text only)", "a ControlNet")
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
        self.second_controlnet_picker = self._controlnet_picker("None", "a second ControlNet")
        _add_row(
            form,
            "Second ControlNet",
            self.second_controlnet_picker,
            "Another map of the input video guiding beside the first, at its own strength "
            "(e.g. depth beside canny edges); their guidance adds up",
        )
        self.second_controlnet_scale_spin = _spin(0, 2, 0.05)
        self.second_controlnet_scale_spin.setValue(0.5)
        _add_row(
            form,
            "Second strength",
            _row(self.second_controlnet_scale_spin),
            "How strongly the clip holds the second ControlNet's map (0 = not at all)",
        )
        self.video_field = FileField(
            lambda _: self.dialogs.open_file("Choose the input video", VIDEOS_FILTER),
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
        self.reference_field = FileField(
            lambda _: self.dialogs.open_file("Choose the reference image", IMAGE_FILTER),
            "Optional: an image every frame takes its look from",
        )
        _add_row(form, "Reference image", self.reference_field, REFERENCE_TIP)
        self.reference_scale_spin = _spin(0, 2, 0.05)
        self.reference_scale_spin.setValue(0.6)
        _add_row(
            form,
            "Reference strength",
            _row(self.reference_scale_spin),
            "How closely the clip follows the reference image (0 = not at all, 1 = closely)",
        )

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
        self.smoothing_spin = _spin(0, 1, 0.1)
        self.smoothing_spin.setSpecialValueText("Off")
        self.smoothing_tip = (
            "Holds the background still as the camera moves: each frame's background is pulled "
            "towards frame 0's by this much (0: off; the paper uses 0.6). The clip is denoised "
            "twice, and the foreground is found with an ADE20K segmentation model"
        )
        _add_row(clip, "Smooth background", _row(self.smoothing_spin), self.smoothing_tip)
        self._fps_row(clip, "The clip's frame rate (a clip from a video keeps the video's)")
        self._lay_out(
            self._prompt_group("What the clip shows"), model_group, clip_group, self._output_group()
        )
        self.video_field.changed.connect(self._video_changed)
        self.reference_field.changed.connect(self._validate)

    def _controlnet_picker(self, none_text: str, what: str) -> ModelPicker:
        """A ControlNet from the library, a file or a diffusers folder (`what`: for titles)."""
        return ModelPicker(
            self.models,
            "controlnet",
            none_text,
            lambda: self.dialogs.open_file(f"Choose {what}", MODEL_FILTER),
            lambda: self.dialogs.open_folder("Choose a diffusers ControlNet folder"),
        )

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
        controlnet = self.controlnet_picker.path() is not None
        self.controlnet_scale_spin.setEnabled(controlnet)
        self.second_controlnet_picker.setEnabled(controlnet)
        second = self.second_controlnet_picker.path() is not None
        self.second_controlnet_scale_spin.setEnabled(controlnet and second)
        self.reference_scale_spin.setEnabled(self.reference_field.path() is not None)
        self.motion_row.setEnabled(not controlled)
        self.fps_spin.setEnabled(not controlled)
        self.smoothing_spin.setEnabled(not controlled and self.has_foreground_source)
        self.smoothing_spin.setToolTip(
            self.smoothing_tip
            + (
                ""
                if self.has_foreground_source
                else "\n\nNo ADE20K segmentation model found: "
                "put one in your models folder's annotators/ to use it"
            )
        )
        self.video_note.setVisible(bool(self.video_note.text()))

    def invalid_reason(self) -> str | None:
        reason = self._model_reason()
        if reason:
            return reason
        if not self.prompt_edit.toPlainText().strip():
            return "Write a prompt: it is what the clip shows."
        controlnet, video = self.controlnet_picker.path(), self.video_field.path()
        second = self._second_controlnet()
        for path in (controlnet, second):
            if path is not None and not path.exists():
                return f"The ControlNet {path} does not exist."
        reason = self._mode_reason(controlnet, video)
        if reason:
            return reason
        reference = self.reference_field.path()
        if reference is not None and not reference.is_file():
            return f"The reference image {reference} does not exist."
        if reference is not None and self._unet_inputs.get(self.model_picker.path()) == 8:
            return "A reference image does not work with InstructPix2Pix editing: clear it."
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
        if model is not None and model not in self._unet_inputs:
            self._unet_inputs[model] = unet_input_channels(model)
        instruct = model is not None and self._unet_inputs[model] == 8
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

    def _second_controlnet(self) -> Path | None:
        """The second ControlNet, while a first is chosen (else it is not used)."""
        return self.second_controlnet_picker.path() if self.controlnet_picker.path() else None

    def remembered(self) -> dict[str, Any]:
        values = super().remembered()
        values.update(
            controlnet=_text(self.controlnet_picker.path()),
            second_controlnet=_text(self.second_controlnet_picker.path()),
            video=_text(self.video_field.path()),
            reference=_text(self.reference_field.path()),
        )
        return values

    def restore(self, values: Mapping[str, Any]) -> None:
        for key, picker in (
            ("controlnet", self.controlnet_picker),
            ("second_controlnet", self.second_controlnet_picker),
        ):
            if isinstance(values.get(key), str):
                picker.set_path(values[key])
        video = values.get("video")
        if isinstance(video, str) and Path(video).is_file():  # an optional input that is gone
            self.video_field.set_path(video)  # is dropped, not reported (probed on change)
        reference = values.get("reference")
        if isinstance(reference, str) and Path(reference).is_file():
            self.reference_field.set_path(reference)
        super().restore(values)  # after the video: a remembered size wins over the video's

    def choice(self) -> TextToVideoChoice:
        """The clip asked for; raises ZvsError while the dialog shows a reason."""
        self._check()
        second = self._second_controlnet()
        return TextToVideoChoice(
            **self._common(),
            motion_field=(self.motion_x_spin.value(), self.motion_y_spin.value()),
            smooth_background=self.smoothing_spin.value() if self.smoothing_spin.isEnabled() else 0,
            controlnet=self.controlnet_picker.path(),
            controlnet_scale=self.controlnet_scale_spin.value(),
            more_controlnets=(
                ((second, self.second_controlnet_scale_spin.value()),) if second else ()
            ),
            video=self.video_field.path(),
            reference=self.reference_field.path(),
            reference_scale=self.reference_scale_spin.value(),
        )


def _has_seg_model() -> bool:
    """Whether background smoothing can find a foreground (an ADE20K model is on disk)."""
    from zvstudio.diffusion.seg import find_seg_model

    try:
        return find_seg_model() is not None
    except ZvsError:  # $ZVSTUDIO_SEG_MODEL names no usable model: the render says why
        return False


class AnimateDialog(_GenerateDialog):
    """File > Animate image...: AnimateZero animates an image (or a still it generates from the
    prompt) with an AnimateDiff motion module; DynamiCrafter, offered when a checkpoint of it is
    in the model library or browsed to, animates an image with its own video model (or
    interpolates to a last image, or loops). Read the answer with `choice()` after `exec()`.
    `allow_pickle` is the app setting: a pickled DynamiCrafter checkpoint needs it."""

    OK_TEXT = "Animate"
    OUTPUT_STEM = "animation"
    INT_FIELDS = (
        "frames",
        "steps",
        "width",
        "height",
        "clip_skip",
        "window_length",
        "dc_frames",
        "dc_steps",
        "dc_fs",
    )
    FLOAT_FIELDS = (
        "guidance",
        "seed",
        "fps",
        "dc_guidance",
        "dc_guidance_rescale",
        "dc_seed",
        "dc_fps",
    )

    def __init__(
        self,
        parent: QWidget | None,
        models: Sequence[ModelInfo],
        remembered: Mapping[str, Any] | None,
        folder: Path,
        dialogs: FileDialogs | None = None,
        *,
        allow_pickle: bool = False,
    ) -> None:
        self.allow_pickle = allow_pickle
        self._shown_engine: str | None = None
        super().__init__(parent, models, remembered, folder, dialogs)

    def _build(self) -> None:
        engine_group, form = _group("Engine")
        self.engine_combo = QComboBox()
        for value, label in ENGINES.items():
            self.engine_combo.addItem(label, value)
        self.dc_browse_button = QPushButton("DynamiCrafter file…")
        self.dc_browse_button.setToolTip(
            "Choose a DynamiCrafter checkpoint (.ckpt or .safetensors)"
        )
        self.dc_browse_button.clicked.connect(self._browse_dynamicrafter)
        _add_row(
            form,
            "Engine",
            _row(self.engine_combo, self.dc_browse_button),
            "AnimateZero: an SD1.5 checkpoint with an AnimateDiff motion module; DynamiCrafter: "
            "its own video model (needs a DynamiCrafter checkpoint)",
        )

        source_group, self.image_form = _group("Image")
        self.image_field = FileField(
            lambda _: self.dialogs.open_file("Choose the image to animate", IMAGE_FILTER),
            "Empty: generate the still from the prompt",
        )
        _add_row(
            self.image_form,
            "Image",
            self.image_field,
            "The still that becomes frame 0 (AnimateZero keeps its size; DynamiCrafter crops "
            "it to its model's size); AnimateZero, empty: generate one",
        )
        self.last_image_field = FileField(
            lambda _: self.dialogs.open_file("Choose the last image", IMAGE_FILTER),
            "The frame to end on (interpolate only)",
        )
        _add_row(
            self.image_form,
            "Last image",
            self.last_image_field,
            "DynamiCrafter, interpolate: the clip goes from the image to this one",
        )
        self._size_row(self.image_form, "The size of a generated still (multiples of 8)")

        self.model_group, models = _group("Models")
        self._checkpoint_rows(models)
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

        self.clip_group, clip = _group("Animation")
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
        self.dc_group = self._dynamicrafter_group()
        self._lay_out(
            engine_group,
            source_group,
            self._prompt_group("What the clip shows"),
            self.model_group,
            self.clip_group,
            self.dc_group,
            self._output_group(),
        )
        self.dc_picker.select_first()

    def _dynamicrafter_group(self) -> QGroupBox:
        group, form = _group("DynamiCrafter")
        self.dc_picker = ModelPicker(
            self.models,
            "video_model",
            "(choose a DynamiCrafter checkpoint)",
            lambda: self.dialogs.open_file(
                "Choose a DynamiCrafter checkpoint", DYNAMICRAFTER_FILTER
            ),
            None,
            bases=("dynamicrafter",),
            refused="{base}: not a DynamiCrafter model",
        )
        self.dc_picker.file_button.setToolTip("Choose a DynamiCrafter checkpoint file")
        _add_row(
            form,
            "Checkpoint",
            self.dc_picker,
            "A DynamiCrafter checkpoint (dynamicrafter_512_v1/model.ckpt, or a .safetensors copy)",
        )
        self.dc_preset_combo = QComboBox()
        self.dc_preset_combo.addItem("Auto (from the file name)", AUTO_PRESET)
        for name, config in DYNAMICRAFTER_PRESETS.items():
            kind = "interpolation, " if config.interpolation else ""
            self.dc_preset_combo.addItem(f"{name} ({kind}{config.width}×{config.height})", name)
        self.dc_preset_note = QLabel()
        self.dc_preset_note.setStyleSheet("color: #777;")
        _add_row(
            form,
            "Preset",
            _row(self.dc_preset_combo, self.dc_preset_note),
            "Which DynamiCrafter release the checkpoint is: its size and sampling settings "
            "(Auto: from the released file or folder names)",
        )
        self.dc_mode_combo = QComboBox()
        for value, label in DYNAMICRAFTER_MODES.items():
            self.dc_mode_combo.addItem(label, value)
        _add_row(
            form,
            "Mode",
            _row(self.dc_mode_combo),
            "Animate: the 256, 512 and 1024 models; interpolate (to a last image) and loop: "
            "the 512_interp model",
        )
        self._sampling_rows(
            form,
            frames=16,
            max_frames=64,
            steps=50,
            min_steps=1,
            prefix="dc_",
            min_frames=2,
            seed=123,
        )
        self.dc_guidance_rescale_spin = _spin(-0.05, 1.0, 0.05)
        self.dc_guidance_rescale_spin.setSpecialValueText("Default")
        self.dc_guidance_rescale_spin.setMinimumWidth(130)
        self.dc_guidance_rescale_spin.setValue(-0.05)
        _add_row(
            form,
            "Guidance rescale",
            _row(self.dc_guidance_rescale_spin),
            "0 to 1: tames over-saturated guidance (Default: the model's own, 0.7; 0 for 256)",
        )
        self.dc_fs_spin = _int_spin(0, 240)
        self.dc_fs_spin.setSpecialValueText("Default")
        self.dc_fs_spin.setMinimumWidth(130)
        self.dc_fs_label = QLabel("Motion")
        self.dc_fs_label.setToolTip(MOTION_NUMBER_TIP)
        fs_row = _row(self.dc_fs_spin)
        fs_row.setToolTip(MOTION_NUMBER_TIP)
        self.dc_fs_spin.setToolTip(MOTION_NUMBER_TIP)
        form.addRow(self.dc_fs_label, fs_row)
        self._fps_row(
            form,
            "How fast the written clip plays (the released scripts write 8 fps)",
            "dc_",
            "Output frame rate",
        )
        return group

    def _browse_dynamicrafter(self) -> None:
        path = self.dialogs.open_file("Choose a DynamiCrafter checkpoint", DYNAMICRAFTER_FILTER)
        if path:
            self.dc_picker.set_path(path)
            self.engine_combo.setCurrentIndex(self.engine_combo.findData("dynamicrafter"))

    # -- what the dialog shows ------------------------------------------------------------
    def engine(self) -> str:
        return self.engine_combo.currentData()

    def dc_preset(self) -> str | None:
        """The preset chosen, or guessed from the checkpoint's name; None when unknown."""
        chosen = self.dc_preset_combo.currentData()
        if chosen != AUTO_PRESET:
            return chosen
        checkpoint = self.dc_picker.path()
        return guess_preset(checkpoint) if checkpoint is not None else None

    def _update_enabled(self) -> None:
        available = self.dc_picker.has_choices()
        entry = self.engine_combo.findData("dynamicrafter")
        item = self.engine_combo.model().item(entry)  # type: ignore[attr-defined]
        item.setEnabled(available)
        self.engine_combo.setItemData(
            entry, None if available else NO_DYNAMICRAFTER, Qt.ItemDataRole.ToolTipRole
        )
        self.dc_browse_button.setVisible(not available)
        dc = self.engine() == "dynamicrafter"
        self.model_group.setVisible(not dc)
        self.clip_group.setVisible(not dc)
        self.dc_group.setVisible(dc)
        self.image_form.setRowVisible(self.size_row, not dc)
        self.image_form.setRowVisible(self.last_image_field, dc)
        self.last_image_field.setEnabled(self.dc_mode_combo.currentData() == "interpolate")
        generated = self.image_field.path() is None and not dc
        self.size_label.setEnabled(generated)
        self.size_row.setEnabled(generated)
        self.window_length_spin.setEnabled(self.window_combo.currentData() != "none")
        self.image_field.edit.setPlaceholderText(
            "The image to animate" if dc else "Empty: generate the still from the prompt"
        )
        if dc:
            placeholder = "The motion: what happens in the clip (optional)"
        elif generated:
            placeholder = "What the clip shows (and the still, when no image is given)"
        else:
            placeholder = "What the clip shows (optional)"
        self.prompt_edit.setPlaceholderText(placeholder)
        self._update_preset_fields()
        if self._shown_engine != self.engine():
            self._shown_engine = self.engine()
            self.setWindowTitle(f"Animate image ({'DynamiCrafter' if dc else 'AnimateZero'})")
            self.adjustSize()

    def _update_preset_fields(self) -> None:
        """The preset's note, its default motion number and guidance rescale."""
        preset = self.dc_preset()
        auto = self.dc_preset_combo.currentData() == AUTO_PRESET
        if not auto or self.dc_picker.path() is None:
            self.dc_preset_note.setText("")
        elif preset is None:
            self.dc_preset_note.setText("the file name does not tell: choose one")
        else:
            self.dc_preset_note.setText(f"from the name: {preset}")
        config = DYNAMICRAFTER_PRESETS.get(preset) if preset else None
        if config is None:
            self.dc_fs_label.setText("Motion")
            self.dc_fs_spin.setSpecialValueText("Default")
            self.dc_guidance_rescale_spin.setSpecialValueText("Default")
            return
        stride = config.fs_kind == "frame_stride"
        self.dc_fs_label.setText("Motion (frame stride)" if stride else "Motion (fps)")
        low, high = config.fs_range
        self.dc_fs_spin.setSpecialValueText(f"Default ({config.default_fs}; {low}–{high})")
        rescale = config.schedule.guidance_rescale
        self.dc_guidance_rescale_spin.setSpecialValueText(f"Default ({rescale:g})")

    # -- validation ------------------------------------------------------------------------
    def invalid_reason(self) -> str | None:
        if self.engine() == "dynamicrafter":
            return self._dynamicrafter_reason()
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

    def _dynamicrafter_reason(self) -> str | None:
        checkpoint = self.dc_picker.path()
        if checkpoint is None:
            return "Choose a DynamiCrafter checkpoint (from the list, or a file)."
        if not checkpoint.is_file():
            return f"The DynamiCrafter checkpoint {checkpoint} does not exist."
        if checkpoint.suffix.lower() in PICKLE_SUFFIXES and not self.allow_pickle:
            return (
                f"{checkpoint.name} is a pickled checkpoint, which can run code hidden in it: "
                "allow pickled checkpoints in Settings if you trust where it came from, or use "
                "a .safetensors copy."
            )
        preset = self.dc_preset()
        if preset is None:
            return (
                f"Cannot tell which DynamiCrafter model {checkpoint.name} is from its name: "
                "choose the preset."
            )
        image = self.image_field.path()
        if image is None:
            return "Choose the image to animate (DynamiCrafter does not generate a still)."
        if not image.is_file():
            return f"The image {image} does not exist."
        mode = self.dc_mode_combo.currentData()
        interpolation = DYNAMICRAFTER_PRESETS[preset].interpolation
        if mode != "animate" and not interpolation:
            return (
                f"The {mode} mode needs the interpolation model (preset 512_interp, "
                f"dynamicrafter_512_interp_v1), not the {preset} model."
            )
        if mode == "animate" and interpolation:
            return "The interpolation model makes interpolations and loops: choose that mode."
        last = self._dc_last_image()
        if mode == "interpolate" and last is None:
            return "Choose the last image: the interpolation ends on it."
        if last is not None and not last.is_file():
            return f"The last image {last} does not exist."
        return self._output_reason([image, last])

    def _dc_last_image(self) -> Path | None:
        if self.dc_mode_combo.currentData() != "interpolate":
            return None  # kept in the field, but only interpolation uses it
        return self.last_image_field.path()

    # -- remembering -----------------------------------------------------------------------
    def remembered(self) -> dict[str, Any]:
        values = super().remembered()
        values.update(
            engine=self.engine(),
            motion_adapter=_text(self.motion_picker.path()),
            image=_text(self.image_field.path()),
            window=self.window_combo.currentData(),
            dc_checkpoint=_text(self.dc_picker.path()),
            dc_preset=self.dc_preset_combo.currentData(),
            dc_mode=self.dc_mode_combo.currentData(),
            dc_last_image=_text(self.last_image_field.path()),
        )
        return values

    def restore(self, values: Mapping[str, Any]) -> None:
        super().restore(values)
        if isinstance(values.get("motion_adapter"), str):
            self.motion_picker.set_path(values["motion_adapter"])
        for name, field in (("image", self.image_field), ("dc_last_image", self.last_image_field)):
            image = values.get(name)
            if isinstance(image, str) and Path(image).is_file():
                field.set_path(image)
        checkpoint = values.get("dc_checkpoint")
        if isinstance(checkpoint, str) and Path(checkpoint).is_file():  # a gone one would
            self.dc_picker.set_path(checkpoint)  # offer DynamiCrafter without a model
        for combo, name in (
            (self.window_combo, "window"),
            (self.dc_preset_combo, "dc_preset"),
            (self.dc_mode_combo, "dc_mode"),
        ):
            index = combo.findData(values.get(name))
            if index >= 0:
                combo.setCurrentIndex(index)
        if values.get("engine") == "dynamicrafter" and self.dc_picker.has_choices():
            self.engine_combo.setCurrentIndex(self.engine_combo.findData("dynamicrafter"))

    def choice(self) -> AnimateChoice | DynamiCrafterChoice:
        """The animation asked for; raises ZvsError while the dialog shows a reason."""
        self._check()
        if self.engine() == "dynamicrafter":
            return self._dynamicrafter_choice()
        length = self.window_length_spin.value()
        return AnimateChoice(
            **self._common(),
            motion_adapter=self.motion_picker.path(),
            window=self.window_combo.currentData(),
            window_length=length or None,
            image=self.image_field.path(),
        )

    def _dynamicrafter_choice(self) -> DynamiCrafterChoice:
        preset = self.dc_preset_combo.currentData()
        rescale = self.dc_guidance_rescale_spin.value()
        return DynamiCrafterChoice(
            checkpoint=self.dc_picker.path(),
            image=self.image_field.path(),
            output=self.output_field.path(),
            preset=None if preset == AUTO_PRESET else preset,
            mode=self.dc_mode_combo.currentData(),
            last_image=self._dc_last_image(),
            prompt=self.prompt_edit.toPlainText().strip(),
            negative_prompt=self.negative_edit.toPlainText().strip(),
            frames=self.dc_frames_spin.value(),
            steps=self.dc_steps_spin.value(),
            guidance_scale=self.dc_guidance_spin.value(),
            guidance_rescale=None if rescale < 0 else rescale,
            seed=int(self.dc_seed_spin.value()),
            fs=self.dc_fs_spin.value() or None,
            fps=fps_fraction(self.dc_fps_spin.value()),
        )
