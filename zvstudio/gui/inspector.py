"""The inspector: the project's render settings and the selected key's overrides.

Every change the user makes is one `Edit` pushed on the document (typing, spinning and
dragging merge into one undo step through the edit's field). When the document changes (an
edit, undo/redo, a newly loaded project) the widgets are refreshed from the project with
`_loading` set, so a refresh never pushes an edit of its own.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPalette, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from zvstudio.diffusion.annotators import (
    UNAVAILABLE_ANNOTATORS,
    available_annotators,
    weights_hint,
)
from zvstudio.diffusion.identify import FACE_ID_LAYOUT, ModelInfo
from zvstudio.engine.request import render_size
from zvstudio.errors import ZvsError
from zvstudio.gui.document import Document
from zvstudio.gui.elided_label import ElidedLabel
from zvstudio.gui.file_filters import MATTE_FILTER
from zvstudio.gui.style_params import StyleParamsEditor
from zvstudio.keyrender import working_size
from zvstudio.media import MediaInfo, clip_label, probe, sequence_path
from zvstudio.media.matte import MAX_FEATHER
from zvstudio.project.edits import Edit, SetKey, SetSettings, keys_every
from zvstudio.project.model import (
    CONSTRAINT_RANGES,
    DEFAULT_KEY_SIZE,
    MAX_CLIP_SKIP,
    SEED_MAX,
    ControlNetRef,
    KeyFrame,
    LoraRef,
    RenderSettings,
)
from zvstudio.stylize import available_styles, describe_style

ModelSource = Callable[[], Sequence[ModelInfo]]

RENDERER_LABELS = {
    "stylize": "Stylizer (no model needed)",
    "diffusion": "Diffusion (Stable Diffusion 1.5)",
    "painted": "Painted keys (your own images)",
}
CROSS_FRAME_LABELS = {
    "off": "Off",
    "decoder": "Decoder layers",
    "decoder_loose": "Decoder, loose (skips the coarsest layers)",
    "all": "All layers",
}
PIXEL_FUSION_LABELS = {
    "single_pass": "One pass (faster)",
    "two_pass": "Two passes (the paper)",
}
PIXEL_FUSION_MODE_TIP = (
    "Pixel fusion composites the warped keys over a rough render. Two passes make that rough "
    "render with a whole first pass; one pass uses the current prediction instead, which only "
    "fills what the warped keys do not cover."
)
SYNTHESIS_LABELS = {
    "flow": "Flow warp (fast)",
    "patch": "Flow + patch synthesis (best on a GPU)",
}
SYNTHESIS_TIP = (
    "How a key reaches the frames around it: along the optical flow, or also rebuilding "
    "from the key's patches what the flow cannot explain (EbSynth's method: sharper where "
    "things appear or move fast, many times slower on a CPU)"
)
FLOW_PRESET_LABELS = {
    "ultrafast": "Ultrafast",
    "fast": "Fast",
    "medium": "Medium",
    "fine": "Fine (best)",
}
BLEND_LABELS = {
    "soft": "Error-weighted (smooth)",
    "histogram": "Selection + histogram (Rerender)",
}
BLEND_TIP = (
    "How the results carried from the two surrounding keys are mixed: weighted smoothly by "
    "how well each fits, or Rerender-A-Video's per-pixel selection with a contrast-keeping "
    "blend"
)
POISSON_TIP = (
    "After blending, keep the blend's colours but the detail of the key that weighs more at "
    "each pixel (screened Poisson fusion): sharper where the two keys disagree slightly"
)
RENDER_BASES = ("sd1", "unknown")  # bases the sampler can load (unknown: let it try)
REFERENCE_TIP = (
    "An image every key takes its look from (its style, colours and subject), through an "
    "IP-Adapter; the prompt still says what to draw"
)
NO_IP_ADAPTER_NOTE = (
    "No IP-Adapter in the model folders: put ip-adapter_sd15.safetensors and its image_encoder "
    "folder (from h94/IP-Adapter's models folder) in your models folder, or keys cannot be "
    "rendered with a reference."
)
MODEL_FILTER = "Models (*.safetensors *.sft *.ckpt *.pt *.pth *.bin);;All files (*)"
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.tif *.tiff *.webp *.exr *.bmp);;All files (*)"
MATTE_TIP = (
    "A clip with one frame per frame of this one, as a roto or segmentation tool exports it: "
    "the render shows where it is white (or opaque, for images with transparency), the "
    "original footage elsewhere. Applied after rendering: changing it renders nothing again "
    "(unless keys are rendered closer)"
)
MATTE_CROP_TIP = (
    "Render each key's matte area (with a margin of context) at the size of the whole frame "
    "and put it back: a small subject gets the model's full resolution, as 'inpaint only "
    "masked' does. The keys depend on the matte then: changing it renders them again"
)
PROMPT_SYNTAX = (
    "As in AUTOMATIC1111: (word:1.3) or (word) weighs a word more, [word] less; BREAK starts "
    "a new 75-token chunk; [cat:dog:0.5] reads cat for half the steps, then dog; [cat|dog] "
    "alternates them; an embedding's name (e.g. EasyNegative) uses that embedding"
)
VAE_TIP = (
    "The VAE that turns images into latents and back: the checkpoint's own, or another (such "
    "as vae-ft-mse-840000-ema-pruned) when its colours look washed out or it has none"
)
CLIP_SKIP_TIP = (
    "Which of CLIP's layers, counted from the end, reads the prompt (AUTOMATIC1111's 'Clip "
    "skip'): 1, the last, for most models; 2 for those trained on the one before, as most "
    "anime models are"
)
MATTE_SHOWS = "the render shows where it is white or opaque"
MATTE_NONE = "None: the render fills the frame"

CONSTRAINT_TEXT = {
    "shape_fusion": (
        "Shape-aware fusion",
        "Early steps: the anchor's predicted image, warped by optical flow, fixes the shapes.",
    ),
    "pixel_fusion": (
        "Pixel-aware fusion",
        "Mid steps: sampling follows the warped earlier keys where the flow is valid.",
    ),
    "adain": (
        "AdaIN colour",
        "Late steps: matches each latent channel's mean and spread to the anchor's colours.",
    ),
}
CROSS_FRAME_NOTE = (
    "All steps: attention also looks at the anchor's and the previous key's features, so "
    "every key keeps the same style."
)
CONTROL_STEPS_TIP = (
    "Where the ControlNets guide, as fractions of the steps a key runs (0 to 1: all of "
    "them). Ending early (0 to 0.6) holds the structure and leaves the details to the prompt."
)
RANGE_TIP = (
    "When it acts, as fractions of the sampling schedule (1 = pure noise, 0 = the final "
    "image). Sampling starts at the strength, so a range above it never runs."
)


# ----------------------------------------------------------------------- small widgets


def _label(text: str, tip: str) -> QLabel:
    label = QLabel(text)
    label.setToolTip(tip)
    return label


RENDER_SIZES = (2160, 1440, 1080, 720, 540, 360)  # short sides offered, besides the clip's
RENDER_SIZE_TIP = (
    "The size the clip is rendered and exported at: a smaller one renders faster (a draft, or "
    "4K footage); the keys and the propagation run at it too"
)


def render_size_choices(info: MediaInfo | None, current: int) -> list[tuple[int, str]]:
    """(short side, label) for the render size combo: the clip's size, then the standard
    sizes below it (all of them without a clip), and `current` if it is none of those."""
    if info is None:
        choices = [(0, "Clip size"), *((side, f"{side} px short side") for side in RENDER_SIZES)]
    else:
        width, height = info.display_width, info.display_height
        choices = [(0, f"Clip size ({width} × {height})")]
        for side in (s for s in RENDER_SIZES if s < min(width, height)):
            choices.append((side, "{} × {}".format(*render_size(width, height, side))))
    if current not in {side for side, _ in choices}:
        choices.append((current, f"{current} px short side"))
    return choices


def key_size_note(frames: tuple[int, int] | None, key_size: int) -> str:
    """Where keys of `frames` (width, height: the render size) are rendered, e.g. "Keys at
    910 × 512, scaled to 1920 × 1080"; "" without a clip."""
    if frames is None:
        return ""
    width, height = frames
    key_height, key_width = working_size(height, width, key_size)
    if (key_width, key_height) == (width, height):
        return f"Keys at the frames' {width} × {height}"
    return f"Keys at {key_width} × {key_height}, scaled to {width} × {height}"


def _lacks_vae(model: str | None) -> bool:
    """Whether `model` has no VAE of its own (read once per file version: the inspector
    refreshes on every edit)."""
    if not model:
        return False
    try:
        version = os.stat(model).st_mtime_ns
    except OSError:
        return False
    return _lacks_vae_cached(model, version)


@functools.lru_cache(maxsize=64)
def _lacks_vae_cached(model: str, version: int) -> bool:
    from zvstudio.diffusion.identify import lacks_vae

    return lacks_vae(model)


def _note(text: str) -> QLabel:
    """A one-line explanation under a setting, in small muted text."""
    label = QLabel(text)
    label.setWordWrap(True)
    font = label.font()
    font.setPointSizeF(font.pointSizeF() * 0.9)
    label.setFont(font)
    palette = label.palette()
    muted = palette.color(QPalette.ColorRole.PlaceholderText)
    palette.setColor(QPalette.ColorRole.WindowText, muted)
    label.setPalette(palette)
    return label


def _combo() -> QComboBox:
    # Long entries (file names, labels) must not widen the dock: they elide instead.
    combo = QComboBox()
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(10)
    return combo


def _form(group: QWidget) -> QFormLayout:
    form = QFormLayout(group)
    form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)  # narrow docks stack rows
    return form


def _image_row(
    choose: Callable[[], None], clear_text: str, clear: Callable[[], None]
) -> tuple[ElidedLabel, QPushButton, QPushButton, QHBoxLayout]:
    """An image's name, a Choose… button and a button (`clear_text`) that clears it."""
    label = ElidedLabel()
    choose_button = QPushButton("Choose…")
    choose_button.clicked.connect(choose)
    clear_button = QPushButton(clear_text)
    clear_button.clicked.connect(clear)
    row = QHBoxLayout()
    row.addWidget(label, 1)
    row.addWidget(choose_button)
    row.addWidget(clear_button)
    return label, choose_button, clear_button, row


def _browse_row(
    combo: QComboBox, *actions: tuple[str, Callable[[], None]]
) -> tuple[QToolButton, QHBoxLayout]:
    """`combo` and a Browse… button beside it whose menu offers `actions` (text, slot)."""
    button = QToolButton(text="Browse…")
    menu = QMenu(button)
    for text, slot in actions:
        menu.addAction(text, slot)
    button.setMenu(menu)
    button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
    row = QHBoxLayout()
    row.addWidget(combo, 1)
    row.addWidget(button)
    return button, row


def _add_row(form: QFormLayout, text: str, widget: QWidget, tip: str) -> None:
    widget.setToolTip(tip)
    form.addRow(_label(text, tip), widget)


def _spin(low: float, high: float, step: float, decimals: int = 2) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setDecimals(decimals)
    return spin


def _int_spin(low: int, high: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    return spin


def _seed_spin() -> QDoubleSpinBox:
    # A double spin box: seeds go to 2**32 - 1, past QSpinBox's 32-bit signed range.
    spin = _spin(0, SEED_MAX, 1, decimals=0)
    spin.setButtonSymbols(QAbstractSpinBox.ButtonSymbols.NoButtons)
    return spin


def _text_edit(lines: int) -> QPlainTextEdit:
    edit = QPlainTextEdit()
    edit.setTabChangesFocus(True)
    edit.setFixedHeight(edit.fontMetrics().lineSpacing() * lines + 12)
    return edit


def _show(widget: QWidget, value: Any) -> None:
    """Put `value` in an editor unless it is already there (keeps the cursor while typing)."""
    if isinstance(widget, QPlainTextEdit):
        if widget.toPlainText() != value:
            widget.setPlainText(value)
    elif isinstance(widget, QCheckBox):
        widget.setChecked(bool(value))
    elif widget.value() != value:
        widget.setValue(value)


def _select(combo: QComboBox, data: Any) -> None:
    combo.setCurrentIndex(max(combo.findData(data), 0))


def _disable_item(combo: QComboBox, index: int, tip: str) -> None:
    model = combo.model()
    if isinstance(model, QStandardItemModel):
        model.item(index).setEnabled(False)
    combo.setItemData(index, tip, Qt.ItemDataRole.ToolTipRole)


def schedule_warnings(settings: RenderSettings) -> list[str]:
    """Constraints that the strength never lets run (as `check_schedule` says, without
    importing torch): sampling starts at strength·T_max, below a range that starts higher."""
    warnings = []
    for name in CONSTRAINT_RANGES:
        span = settings.constraint_range(name)
        if span is not None and span[0] > 0.0 and settings.strength <= span[0]:
            warnings.append(
                f"{CONSTRAINT_TEXT[name][0]} will not run: it acts above {span[0]:.2f}·T_max "
                f"but strength {settings.strength:.2f} starts sampling below it."
            )
    return warnings


class Dialogs:
    """The file dialogs the inspector opens; tests replace these methods."""

    def __init__(self, parent: QWidget) -> None:
        self.parent = parent

    def open_file(self, title: str, name_filter: str) -> str | None:
        path, _ = QFileDialog.getOpenFileName(self.parent, title, "", name_filter)
        return path or None

    def open_folder(self, title: str) -> str | None:
        return QFileDialog.getExistingDirectory(self.parent, title) or None


class ConstraintRow(QWidget):
    """A constraint's on/off box and its schedule range (`start`..`end` of T_max)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        label, _ = CONSTRAINT_TEXT[name]
        self.check = QCheckBox(label)
        self.start, self.end = _spin(0, 1, 0.05), _spin(0, 1, 0.05)
        for spin in (self.start, self.end):
            spin.setToolTip(RANGE_TIP)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.check, 1)
        for widget in (self.start, QLabel("to"), self.end):
            layout.addWidget(widget)

    def show_settings(self, settings: RenderSettings) -> None:
        """Show the settings (the caller guards against the resulting signals)."""
        on = getattr(settings, self.name)
        start, end = getattr(settings, f"{self.name}_start"), getattr(settings, f"{self.name}_end")
        self.start.setRange(0, 1)
        self.end.setRange(0, 1)
        _show(self.check, on)
        _show(self.start, start)
        _show(self.end, end)
        # The range may not be empty: the model refuses end <= start.
        self.start.setMaximum(end - 0.01)
        self.end.setMinimum(start + 0.01)
        self.start.setEnabled(on)
        self.end.setEnabled(on)


class _Panel(QWidget):
    """A part of the inspector: pushes edits, refreshes from the document without pushing."""

    problem = Signal(str)  # a refused change, for the inspector to show ("" clears it)

    def __init__(self, document: Document, dialogs: Dialogs) -> None:
        super().__init__()
        self.document, self.dialogs = document, dialogs
        # Until the subclass has built its widgets: filling a combo emits currentIndexChanged.
        self._loading = True
        document.changed.connect(self.refresh)

    @property
    def settings(self) -> RenderSettings:
        return self.document.project.settings

    def refresh(self) -> None:
        with self._refreshing():
            self._show_project()

    def _show_project(self) -> None:
        raise NotImplementedError

    @contextmanager
    def _refreshing(self) -> Iterator[None]:
        was, self._loading = self._loading, True
        try:
            yield
        finally:
            self._loading = was

    def _push(self, make_edit: Callable[[], Edit], text: str | None = None) -> None:
        """Push the edit `make_edit` builds; `text` names an edit that must not merge."""
        if self._loading:
            return
        try:
            edit = make_edit()
            if text is not None:
                edit.text = text
            self.document.push(edit)
        except ZvsError as exc:  # a refused value: say why and show the project's value again
            self.problem.emit(str(exc))
            self.refresh()
        else:
            self.problem.emit("")

    def _set(self, field: str, value: Any, text: str | None = None) -> None:
        """Change one global setting; typing merges unless `text` names a separate step."""
        if self._loading or getattr(self.settings, field) == value:
            return
        if text is None:
            self._push(lambda: SetSettings(replace(self.settings, **{field: value}), field))
        else:  # field "settings": SetSettings never merges it
            self._push(lambda: SetSettings(replace(self.settings, **{field: value})), text)


# ------------------------------------------------------------------------ render settings


class RenderPanel(_Panel):
    """The global render settings; diffusion's widgets show only for that renderer.

    Placing keys by motion needs the clip analysed, which is a job: the panel only asks for
    it (`keys_by_motion_requested` with the key interval) and the main window runs it."""

    keys_by_motion_requested = Signal(int)

    def __init__(
        self, document: Document, dialogs: Dialogs, models: ModelSource | None = None
    ) -> None:
        super().__init__(document, dialogs)
        self._models_source = models
        self.models: list[ModelInfo] = []
        layout = QVBoxLayout(self)
        layout.addWidget(self._renderer_group())
        self.diffusion_box = QWidget()
        box = QVBoxLayout(self.diffusion_box)
        box.setContentsMargins(0, 0, 0, 0)
        for group in (self._model_group(), self._prompt_group(), self._sampling_group()):
            box.addWidget(group)
        box.addWidget(self._constraint_group())
        layout.addWidget(self.diffusion_box)
        layout.addWidget(self._propagation_group())
        layout.addWidget(self._matte_group())
        layout.addStretch(1)
        self._loading = False
        self.reload_models()

    # -- building ----------------------------------------------------------------------------
    def _renderer_group(self) -> QGroupBox:
        group = QGroupBox("Renderer")
        form = _form(group)
        self.renderer_combo = _combo()
        for name, label in RENDERER_LABELS.items():
            self.renderer_combo.addItem(label, name)
        self.renderer_combo.currentIndexChanged.connect(
            lambda: self._set("renderer", self.renderer_combo.currentData(), "change renderer")
        )
        _add_row(form, "Key renderer", self.renderer_combo, "What renders the key frames")
        self.style_combo = _combo()
        self.style_combo.currentIndexChanged.connect(self._style_chosen)
        self.style_label = _label("Style", "The stylizer's look (hover a style for more)")
        form.addRow(self.style_label, self.style_combo)
        self.style_params_editor = StyleParamsEditor(form, self.style_combo)
        self.style_params_editor.changed.connect(self._style_params_edited)
        self.painted_note = _note("Each key uses the image painted for it (see the Key tab).")
        form.addRow(self.painted_note)
        return group

    def _model_group(self) -> QGroupBox:
        group = QGroupBox("Model")
        form = _form(group)
        self.model_combo = _combo()
        self.model_combo.currentIndexChanged.connect(self._model_chosen)
        self.model_browse_button, row = _browse_row(
            self.model_combo,
            ("Checkpoint file…", self._browse_model_file),
            ("Diffusers folder…", self._browse_model_folder),
        )
        tip = "The Stable Diffusion 1.5 checkpoint that renders the keys"
        form.addRow(_label("Checkpoint", tip), row)
        self._vae_row(form)
        self.lora_list = LoraList(self)
        _add_row(form, "LoRAs", self.lora_list, "LoRA files applied to the model, with weights")
        self._controlnet_rows(form)
        self._reference_rows(form)
        return group

    def _reference_rows(self, form: QFormLayout) -> None:
        self.reference_label, self.reference_button, self.clear_reference_button, row = _image_row(
            self._choose_reference,
            "None",
            lambda: self._set("reference_image", None, "remove the reference image"),
        )
        self.clear_reference_button.setToolTip("Keys take their look from the prompt alone")
        form.addRow(_label("Reference image", REFERENCE_TIP), row)
        self.reference_strength_spin = _spin(0, 2, 0.05)
        self.reference_strength_spin.valueChanged.connect(
            lambda value: self._set("reference_strength", value)
        )
        tip = "How closely keys follow the reference image (0 = not at all, 1 = closely)"
        _add_row(form, "Reference strength", self.reference_strength_spin, tip)
        self.ip_adapter_combo = _combo()
        self.ip_adapter_combo.currentIndexChanged.connect(
            lambda: self._set(
                "ip_adapter", self.ip_adapter_combo.currentData(), "change IP-Adapter"
            )
        )
        tip = "The IP-Adapter that reads the reference image (plus adapters follow it closer)"
        _add_row(form, "IP-Adapter", self.ip_adapter_combo, tip)
        self.reference_note = _note(NO_IP_ADAPTER_NOTE)
        form.addRow(self.reference_note)

    def _choose_reference(self) -> None:
        path = self.dialogs.open_file("Choose the reference image", IMAGE_FILTER)
        if path:
            self._set("reference_image", os.path.abspath(path), "choose a reference image")

    def _show_reference(self, settings: RenderSettings) -> None:
        current = settings.reference_image
        self.reference_label.set_full_text(Path(current).name if current else "None")
        self.reference_label.setToolTip(current or REFERENCE_TIP)
        adapters = self.known("ip_adapter")
        # The strength and adapter serve keys' own references too.
        used = bool(current) or any(k.reference_image for k in self.document.project.keyframes)
        combo = self.ip_adapter_combo
        self._show_files(combo, "ip_adapter", "From the model library", settings.ip_adapter)
        self.clear_reference_button.setEnabled(bool(current))
        self.reference_strength_spin.setEnabled(used)
        self.ip_adapter_combo.setEnabled(used)
        self.reference_note.setVisible(used and not adapters and not settings.ip_adapter)

    def _vae_row(self, form: QFormLayout) -> None:
        self.vae_combo = _combo()
        self.vae_combo.currentIndexChanged.connect(
            lambda: self._set("vae", self.vae_combo.currentData(), "change VAE")
        )
        self.vae_browse_button, row = _browse_row(
            self.vae_combo,
            ("VAE file…", self._browse_vae_file),
            ("Diffusers folder…", self._browse_vae_folder),
        )
        form.addRow(_label("VAE", VAE_TIP), row)
        self.vae_note = _note(
            "This checkpoint has no VAE of its own: choose one (such as "
            "vae-ft-mse-840000-ema-pruned), or keys cannot be rendered."
        )
        form.addRow(self.vae_note)

    def _controlnet_rows(self, form: QFormLayout) -> None:
        self.controlnet_combo = _combo()
        self.controlnet_combo.currentIndexChanged.connect(
            lambda: self._set(
                "controlnet", self.controlnet_combo.currentData(), "change ControlNet"
            )
        )
        tip = "What guides the structure of each key: edges or other maps of the input frame"
        _add_row(form, "ControlNet", self.controlnet_combo, tip)
        self.controlnet_scale_spin = _spin(0, 2, 0.05)
        self.controlnet_scale_spin.valueChanged.connect(
            lambda value: self._set("controlnet_scale", value)
        )
        tip = "How strongly the ControlNet holds the input's structure (0 = not at all)"
        _add_row(form, "ControlNet strength", self.controlnet_scale_spin, tip)
        self._control_steps_row(form)
        self.more_controlnets_list = ControlNetList(self)
        tip = (
            "ControlNets that guide the keys beside the first, each by its own map of the "
            "input (edges and depth, say) at its own strength; their guidance adds up"
        )
        _add_row(form, "More ControlNets", self.more_controlnets_list, tip)

    def _control_steps_row(self, form: QFormLayout) -> None:
        self.controlnet_start_spin, self.controlnet_end_spin = _spin(0, 1, 0.05), _spin(0, 1, 0.05)
        row = QHBoxLayout()
        for spin, field in (
            (self.controlnet_start_spin, "controlnet_start"),
            (self.controlnet_end_spin, "controlnet_end"),
        ):
            spin.valueChanged.connect(lambda value, field=field: self._set(field, value))
            spin.setToolTip(CONTROL_STEPS_TIP)
        row.addWidget(self.controlnet_start_spin, 1)
        row.addWidget(QLabel("to"))
        row.addWidget(self.controlnet_end_spin, 1)
        form.addRow(_label("ControlNet steps", CONTROL_STEPS_TIP), row)

    def _show_control_steps(self, settings: RenderSettings) -> None:
        start, end = self.controlnet_start_spin, self.controlnet_end_spin
        start.setRange(0, 1)
        end.setRange(0, 1)
        _show(start, settings.controlnet_start)
        _show(end, settings.controlnet_end)
        # The range may not be empty: the model refuses end <= start.
        start.setMaximum(settings.controlnet_end - 0.01)
        end.setMinimum(settings.controlnet_start + 0.01)
        guided = bool(settings.controlnets())
        start.setEnabled(guided)
        end.setEnabled(guided)

    def _prompt_group(self) -> QGroupBox:
        group = QGroupBox("Prompt")
        form = _form(group)
        self.prompt_edit = _text_edit(3)
        self.prompt_edit.setPlaceholderText("What the video should look like")
        self.prompt_edit.textChanged.connect(
            lambda: self._set("prompt", self.prompt_edit.toPlainText())
        )
        tip = f"Describe the look; keys may override it. {PROMPT_SYNTAX}"
        _add_row(form, "Prompt", self.prompt_edit, tip)
        self.negative_prompt_edit = _text_edit(2)
        self.negative_prompt_edit.setPlaceholderText("What to avoid")
        self.negative_prompt_edit.textChanged.connect(
            lambda: self._set("negative_prompt", self.negative_prompt_edit.toPlainText())
        )
        tip = f"What the model should steer away from (e.g. blurry, watermark). {PROMPT_SYNTAX}"
        _add_row(form, "Negative prompt", self.negative_prompt_edit, tip)
        return group

    def _sampling_group(self) -> QGroupBox:
        group = QGroupBox("Sampling")
        form = _form(group)
        self.seed_spin = _seed_spin()
        self.seed_spin.valueChanged.connect(lambda value: self._set("seed", int(value)))
        self.random_seed_button = QToolButton(text="Random")
        self.random_seed_button.setToolTip("Pick a random seed")
        self.random_seed_button.clicked.connect(self.random_seed)
        row = QHBoxLayout()
        row.addWidget(self.seed_spin, 1)
        row.addWidget(self.random_seed_button)
        tip = "The noise every key starts from: the same seed gives the same render"
        self.seed_spin.setToolTip(tip)
        form.addRow(_label("Seed", tip), row)
        self.strength_spin = self._number_row(form, "strength", _spin(0, 1, 0.05))
        self.steps_spin = self._number_row(form, "steps", _int_spin(1, 1000))
        self.guidance_spin = self._number_row(form, "guidance_scale", _spin(0, 100, 0.5, 1))
        self.clip_skip_spin = self._number_row(form, "clip_skip", _int_spin(1, MAX_CLIP_SKIP))
        key_size = _int_spin(0, 16384)
        key_size.setSingleStep(64)
        key_size.setSuffix(" px")
        key_size.setSpecialValueText("Clip size")
        self.key_size_spin = self._number_row(form, "key_size", key_size)
        self.key_size_note = _note("")
        form.addRow(self.key_size_note)
        return group

    def _number_row(self, form: QFormLayout, field: str, spin: QAbstractSpinBox) -> Any:
        label, tip = {
            "strength": ("Strength", "How much of the input is re-imagined (lower keeps more)"),
            "steps": ("Steps", "Sampling steps over the whole schedule (20 is usual)"),
            "guidance_scale": ("Guidance", "How closely the prompt is followed (CFG, 7.5)"),
            "clip_skip": ("CLIP skip", CLIP_SKIP_TIP),
            "key_size": (
                "Key size",
                "Keys are rendered at most this many pixels on their short side, then scaled to "
                f"the clip's size (SD1.5 was trained at {DEFAULT_KEY_SIZE}: much larger is slow "
                "and repeats subjects)",
            ),
        }[field]
        spin.valueChanged.connect(lambda value: self._set(field, value))
        _add_row(form, label, spin, tip)
        return spin

    def _constraint_group(self) -> QGroupBox:
        group = QGroupBox("Temporal consistency")
        group.setToolTip("The constraints that keep keys consistent with each other")
        form = _form(group)
        self.cross_frame_combo = _combo()
        for name, label in CROSS_FRAME_LABELS.items():
            self.cross_frame_combo.addItem(label, name)
        self.cross_frame_combo.currentIndexChanged.connect(
            lambda: self._set(
                "cross_frame_layers", self.cross_frame_combo.currentData(), "change cross-frame"
            )
        )
        _add_row(form, "Cross-frame attention", self.cross_frame_combo, CROSS_FRAME_NOTE)
        form.addRow(_note(CROSS_FRAME_NOTE))
        self.constraint_rows = {
            name: self._constraint_row(form, name) for name in CONSTRAINT_RANGES
        }
        self.pixel_fusion_weight_spin = _spin(0, 1, 0.05)
        self.pixel_fusion_weight_spin.valueChanged.connect(
            lambda value: self._set("pixel_fusion_weight", value)
        )
        tip = "How hard pixel-aware fusion pulls towards the warped keys (1 = fully)"
        _add_row(form, "Pixel fusion weight", self.pixel_fusion_weight_spin, tip)
        self.pixel_fusion_detail_spin = _spin(0, 1, 0.05)
        self.pixel_fusion_detail_spin.setSpecialValueText("0 (linear blend)")
        self.pixel_fusion_detail_spin.valueChanged.connect(
            lambda value: self._set("pixel_fusion_detail", value)
        )
        tip = (
            "How much of the frame's own noise the fused region keeps: 0 blends linearly "
            "(the paper), 0.9 is the authors' code (sharper, less faithful to the keys)"
        )
        _add_row(form, "Pixel fusion detail", self.pixel_fusion_detail_spin, tip)
        self.pixel_fusion_mode_combo = _combo()
        for name, label in PIXEL_FUSION_LABELS.items():
            self.pixel_fusion_mode_combo.addItem(label, name)
        self.pixel_fusion_mode_combo.currentIndexChanged.connect(
            lambda: self._set(
                "pixel_fusion_mode",
                self.pixel_fusion_mode_combo.currentData(),
                "change pixel fusion",
            )
        )
        _add_row(form, "Pixel fusion", self.pixel_fusion_mode_combo, PIXEL_FUSION_MODE_TIP)
        self.colour_correction_check = QCheckBox("Colour correction")
        self.colour_correction_check.setToolTip(
            "Match each later key's colours to the first key's render before re-rendering it, "
            "for prompts whose colours differ from the footage"
        )
        self.colour_correction_check.toggled.connect(
            lambda on: self._set(
                "colour_correction", on, f"turn colour correction {'on' if on else 'off'}"
            )
        )
        form.addRow(self.colour_correction_check)
        self.schedule_warning = _note("")
        self.schedule_warning.setStyleSheet("color: #c0392b;")
        form.addRow(self.schedule_warning)
        return group

    def _constraint_row(self, form: QFormLayout, name: str) -> ConstraintRow:
        row = ConstraintRow(name)
        row.check.setToolTip(CONSTRAINT_TEXT[name][1])
        row.check.toggled.connect(
            lambda on: self._set(
                name, on, f"turn {CONSTRAINT_TEXT[name][0]} {'on' if on else 'off'}"
            )
        )
        row.start.valueChanged.connect(lambda value: self._set(f"{name}_start", value))
        row.end.valueChanged.connect(lambda value: self._set(f"{name}_end", value))
        form.addRow(row)
        form.addRow(_note(CONSTRAINT_TEXT[name][1]))
        return row

    def _propagation_group(self) -> QGroupBox:
        group = QGroupBox("Keys and propagation")
        form = _form(group)
        self.render_size_combo = _combo()
        self.render_size_combo.currentIndexChanged.connect(
            lambda: self._set(
                "short_side", self.render_size_combo.currentData(), "change the render size"
            )
        )
        _add_row(form, "Render size", self.render_size_combo, RENDER_SIZE_TIP)
        self.key_interval_spin = _int_spin(1, 10_000)
        self.key_interval_spin.valueChanged.connect(lambda value: self._set("key_interval", value))
        self.fill_keys_button = QPushButton("Fill keys every K")
        self.fill_keys_button.setToolTip(
            "Place keys every K frames over the render range, counted again from each shot cut "
            "so that every shot has keys of its own (keys with overrides stay)"
        )
        self.fill_keys_button.clicked.connect(self.fill_keys)
        self.motion_keys_button = QPushButton("By motion")
        self.motion_keys_button.setToolTip(
            "Place as many keys as every K frames gives, where the motion needs them: fewer "
            "where little moves, more where new content comes into view (keys at most 2K "
            "apart; every shot starts with one; keys with overrides stay). The clip's motion "
            "is measured first, once"
        )
        self.motion_keys_button.clicked.connect(
            lambda: self.keys_by_motion_requested.emit(self.settings.key_interval)
        )
        row = QHBoxLayout()
        row.addWidget(self.key_interval_spin)
        row.addWidget(self.fill_keys_button)
        row.addWidget(self.motion_keys_button)
        tip = "K: frames between keys; the frames between are propagated from the keys (5-20)"
        self.key_interval_spin.setToolTip(tip)
        form.addRow(_label("Key interval K", tip), row)
        self.synthesis_combo = self._choice_row(
            form, "synthesis", "Propagation", SYNTHESIS_LABELS, SYNTHESIS_TIP
        )
        self.flow_preset_combo = self._choice_row(
            form,
            "flow_preset",
            "Flow quality",
            FLOW_PRESET_LABELS,
            "The optical flow's accuracy: finer follows motion better and takes longer",
        )
        self.blend_combo = self._choice_row(form, "blend", "Blend", BLEND_LABELS, BLEND_TIP)
        self.poisson_check = QCheckBox("Poisson fusion")
        self.poisson_check.setToolTip(POISSON_TIP)
        self.poisson_check.toggled.connect(
            lambda on: self._set("poisson", on, f"turn Poisson fusion {'on' if on else 'off'}")
        )
        form.addRow(self.poisson_check)
        return group

    def _matte_group(self) -> QGroupBox:
        group = QGroupBox("Matte")
        form = _form(group)
        self.matte_label = _note("")
        form.addRow(self.matte_label)
        self.matte_button = QPushButton("Choose matte…")
        self.matte_button.setToolTip(MATTE_TIP)
        self.matte_button.clicked.connect(self._choose_matte)
        self.clear_matte_button = QPushButton("No matte")
        self.clear_matte_button.setToolTip("The render fills the whole frame")
        self.clear_matte_button.clicked.connect(lambda: self.set_matte(None))
        row = QHBoxLayout()
        row.addWidget(self.matte_button)
        row.addWidget(self.clear_matte_button)
        form.addRow(row)
        self.matte_invert_check = QCheckBox("Invert: the render where the matte is black")
        self.matte_invert_check.toggled.connect(
            lambda on: self._set(
                "matte_invert", on, f"{'invert' if on else 'stop inverting'} the matte"
            )
        )
        form.addRow(self.matte_invert_check)
        self.matte_feather_spin = QDoubleSpinBox()
        self.matte_feather_spin.setRange(0.0, MAX_FEATHER)
        self.matte_feather_spin.setDecimals(1)
        self.matte_feather_spin.setSuffix(" px")
        self.matte_feather_spin.valueChanged.connect(lambda v: self._set("matte_feather", v))
        _add_row(form, "Feather", self.matte_feather_spin, "Soften the matte's edge")
        self.matte_crop_check = QCheckBox("Render keys closer: the matte's area at full size")
        self.matte_crop_check.setToolTip(MATTE_CROP_TIP)
        self.matte_crop_check.toggled.connect(
            lambda on: self._set(
                "matte_crop", on, f"render keys {'closer' if on else 'whole'} in the matte"
            )
        )
        form.addRow(self.matte_crop_check)
        return group

    def set_matte(self, path: str | None) -> None:
        """Use the clip at `path` as the matte (None: none). One whose frames do not match
        the clip's is refused, with the reason shown."""
        if path is not None:
            try:
                path = sequence_path(path)
                count = probe(path).frame_count
            except ZvsError as exc:
                self.problem.emit(f"Cannot use {Path(path).name} as a matte: {exc}")
                return
            if count != self.document.frame_count:
                self.problem.emit(
                    f"The matte has {count} frames and the clip {self.document.frame_count}: "
                    "export it from the same frames, one image per frame"
                )
                return
        self._set("matte", path, "choose a matte" if path else "remove the matte")

    def _choose_matte(self) -> None:
        path = self.dialogs.open_file(
            "Choose the matte: a video or any frame of a sequence", MATTE_FILTER
        )
        if path:
            self.set_matte(os.path.abspath(path))

    def _show_matte(self, settings: RenderSettings) -> None:
        has = settings.matte is not None
        text = f"{clip_label(settings.matte)}: {MATTE_SHOWS}" if has else MATTE_NONE
        self.matte_label.setText(text)
        self.matte_label.setToolTip(settings.matte or "")
        self.matte_button.setEnabled(self.document.frame_count > 0)
        for widget in (
            self.clear_matte_button,
            self.matte_invert_check,
            self.matte_feather_spin,
            self.matte_crop_check,
        ):
            widget.setEnabled(has)

    def _choice_row(
        self, form: QFormLayout, field: str, text: str, labels: dict[str, str], tip: str
    ) -> QComboBox:
        """A combo box choosing the setting `field` among `labels`' keys."""
        combo = _combo()
        for name, label in labels.items():
            combo.addItem(label, name)
        combo.currentIndexChanged.connect(
            lambda: self._set(field, combo.currentData(), f"change {text.lower()}")
        )
        _add_row(form, text, combo, tip)
        return combo

    # -- actions -----------------------------------------------------------------------------
    def reload_models(self) -> None:
        """Ask the model source again (after the library was rescanned)."""
        self.models = list(self._models_source()) if self._models_source else []
        self.lora_list.rebuild_menu()
        self.more_controlnets_list.rebuild_menu()
        self.refresh()

    def known(self, kind: str) -> list[ModelInfo]:
        return [m for m in self.models if m.kind == kind]

    def random_seed(self) -> None:
        self._set("seed", random.randint(0, SEED_MAX), "random seed")

    def fill_keys(self) -> None:
        interval = self.settings.key_interval
        doc = self.document
        self._push(lambda: keys_every(doc.project, interval, doc.frame_count, doc.shot_cuts))

    def set_model(self, path: str | None) -> None:
        self._set("model", path, "change model")

    def set_list(self, field: str, items: list[Any], text: str | None = None) -> None:
        """Change a list setting (LoRAs, more ControlNets): one step per `text`."""
        self._set(field, items, text)

    def _style_chosen(self) -> None:
        """Another style: its own parameters start at their defaults."""
        style = self.style_combo.currentData()
        if self._loading or style == self.settings.style:
            return
        changed = replace(self.settings, style=style, style_params={})
        self._push(lambda: SetSettings(changed), "change style")

    def _style_params_edited(self, name: str, values: dict[str, Any]) -> None:
        """One undo step per parameter (dragging or typing in one merges); a reset is its own."""
        if self._loading or values == self.settings.style_params:
            return
        changed = replace(self.settings, style_params=values)
        if name:
            self._push(lambda: SetSettings(changed, f"style_{name}"))
        else:
            self._push(lambda: SetSettings(changed), "reset the style's parameters")

    def _model_chosen(self) -> None:
        self.set_model(self.model_combo.currentData())

    def _browse_model_file(self) -> None:
        path = self.dialogs.open_file("Choose a Stable Diffusion 1.5 checkpoint", MODEL_FILTER)
        if path:
            self.set_model(os.path.abspath(path))

    def _browse_model_folder(self) -> None:
        path = self.dialogs.open_folder("Choose a diffusers model folder")
        if path:
            self.set_model(os.path.abspath(path))

    def _browse_vae_file(self) -> None:
        path = self.dialogs.open_file("Choose an SD1.x VAE", MODEL_FILTER)
        if path:
            self._set("vae", os.path.abspath(path), "change VAE")

    def _browse_vae_folder(self) -> None:
        path = self.dialogs.open_folder("Choose a diffusers VAE (or model) folder")
        if path:
            self._set("vae", os.path.abspath(path), "change VAE")

    # -- refreshing --------------------------------------------------------------------------
    def _show_project(self) -> None:
        settings = self.settings
        self._show_renderer(settings)
        self._show_models(settings.model)
        self._show_vaes(settings.vae)
        needs_vae = settings.vae is None and _lacks_vae(settings.model)
        self.vae_note.setVisible(needs_vae)
        self.lora_list.show_items(settings.loras)
        self.more_controlnets_list.show_items(settings.more_controlnets)
        self._show_controlnets(settings.controlnet)
        self.controlnet_scale_spin.setEnabled(settings.controlnet is not None)
        self._show_control_steps(settings)
        self._show_reference(settings)
        for widget, field in self._value_widgets():
            _show(widget, getattr(settings, field))
        self._show_constraints(settings)
        self.key_size_note.setText(key_size_note(self.document.render_size, settings.key_size))
        self._show_render_sizes(settings.short_side)
        for button in (self.fill_keys_button, self.motion_keys_button):
            button.setEnabled(self.document.frame_count > 0)
        self._show_matte(settings)
        for combo, field in (
            (self.synthesis_combo, "synthesis"),
            (self.flow_preset_combo, "flow_preset"),
            (self.blend_combo, "blend"),
        ):
            _select(combo, getattr(settings, field))

    def _show_render_sizes(self, current: int) -> None:
        combo = self.render_size_combo
        choices = render_size_choices(self.document.info, current)
        shown = [(combo.itemData(i), combo.itemText(i)) for i in range(combo.count())]
        if shown != choices:
            combo.clear()
            for short_side, label in choices:
                combo.addItem(label, short_side)
        _select(combo, current)

    def _show_renderer(self, settings: RenderSettings) -> None:
        _select(self.renderer_combo, settings.renderer)
        self._show_styles(settings.style)
        stylize = settings.renderer == "stylize"
        self.style_label.setVisible(stylize)
        self.style_combo.setVisible(stylize)
        self.style_params_editor.show_style(settings.style, settings.style_params)
        self.style_params_editor.set_visible(stylize and bool(self.style_params_editor.parameters))
        self.painted_note.setVisible(settings.renderer == "painted")
        self.diffusion_box.setVisible(settings.renderer == "diffusion")

    def _show_constraints(self, settings: RenderSettings) -> None:
        _select(self.cross_frame_combo, settings.cross_frame_layers)
        for row in self.constraint_rows.values():
            row.show_settings(settings)
        _select(self.pixel_fusion_mode_combo, settings.pixel_fusion_mode)
        for widget in (
            self.pixel_fusion_weight_spin,
            self.pixel_fusion_detail_spin,
            self.pixel_fusion_mode_combo,
        ):
            widget.setEnabled(settings.pixel_fusion)
        self.schedule_warning.setText("\n".join(schedule_warnings(settings)))

    def _value_widgets(self) -> list[tuple[QWidget, str]]:
        return [
            (self.prompt_edit, "prompt"),
            (self.negative_prompt_edit, "negative_prompt"),
            (self.seed_spin, "seed"),
            (self.strength_spin, "strength"),
            (self.steps_spin, "steps"),
            (self.guidance_spin, "guidance_scale"),
            (self.clip_skip_spin, "clip_skip"),
            (self.key_size_spin, "key_size"),
            (self.controlnet_scale_spin, "controlnet_scale"),
            (self.reference_strength_spin, "reference_strength"),
            (self.pixel_fusion_weight_spin, "pixel_fusion_weight"),
            (self.pixel_fusion_detail_spin, "pixel_fusion_detail"),
            (self.colour_correction_check, "colour_correction"),
            (self.key_interval_spin, "key_interval"),
            (self.poisson_check, "poisson"),
            (self.matte_invert_check, "matte_invert"),
            (self.matte_feather_spin, "matte_feather"),
            (self.matte_crop_check, "matte_crop"),
        ]

    def _show_styles(self, current: str) -> None:
        combo = self.style_combo
        if combo.count() == 0 or combo.findData(current) < 0:
            combo.clear()
            for name in available_styles():
                combo.addItem(name, name)
                combo.setItemData(
                    combo.count() - 1, describe_style(name), Qt.ItemDataRole.ToolTipRole
                )
            if combo.findData(current) < 0:  # a plugin's style that is not installed here
                combo.addItem(f"{current} (not installed)", current)
        _select(combo, current)
        combo.setToolTip(combo.currentData(Qt.ItemDataRole.ToolTipRole) or "")

    def _show_models(self, current: str | None) -> None:
        self._show_files(self.model_combo, "checkpoint", "(choose a checkpoint)", current)
        self.model_combo.setToolTip(current or "No checkpoint chosen yet")

    def _show_vaes(self, current: str | None) -> None:
        self._show_files(self.vae_combo, "vae", "The checkpoint's own", current)
        self.vae_combo.setToolTip(current or "The VAE inside the checkpoint")

    def _show_files(self, combo: QComboBox, kind: str, none_text: str, current: str | None):
        """`combo` lists the library's files of `kind` (those for other bases disabled) and
        `current` (a path), after a first item `none_text` for None."""
        combo.clear()
        combo.addItem(none_text, None)
        for info in self.known(kind):
            combo.addItem(info.name, str(info.path))
            combo.setItemData(combo.count() - 1, str(info.path), Qt.ItemDataRole.ToolTipRole)
            if info.base not in RENDER_BASES:
                _disable_item(combo, combo.count() - 1, f"{info.base}: zvstudio renders SD1.x")
            elif info.details.get("layout") == FACE_ID_LAYOUT:
                _disable_item(combo, combo.count() - 1, "Face ID adapters need InsightFace")
        if current is not None and combo.findData(current) < 0:
            combo.addItem(Path(current).name, current)
            combo.setItemData(combo.count() - 1, current, Qt.ItemDataRole.ToolTipRole)
        _select(combo, current)

    def _show_controlnets(self, current: str | None) -> None:
        combo = self.controlnet_combo
        combo.clear()
        combo.addItem("None", None)
        for name in available_annotators():
            combo.addItem(name, name)
        for name, text, tip in _missing_annotators():
            combo.addItem(text, name)
            _disable_item(combo, combo.count() - 1, tip)
        if current is not None and combo.findData(current) < 0:  # a ControlNet file's path
            combo.addItem(Path(current).name, current)
        _select(combo, current)


def _missing_annotators() -> list[tuple[str, str, str]]:
    """(name, menu text, tooltip) of each annotator zvstudio knows whose weights are not on
    disk, for the ControlNet menus to offer greyed with where to put them."""
    available = available_annotators()
    missing = []
    for name in (n for n in UNAVAILABLE_ANNOTATORS if n not in available):
        where = weights_hint(name)
        tip = (
            f"{name} needs annotator weights, which zvstudio does not download: "
            + (
                f"{where} (zvstudio models says what it finds)"
                if where
                else "zvstudio cannot run it yet, but a plugin can add it"
            )
            + "; else use canny"
        )
        missing.append((name, f"{name} (needs annotator weights)", tip))
    return missing


class WeightedRow(QWidget):
    """One model in use: its name, its weight and a remove button."""

    def __init__(self, name: str, weight: QDoubleSpinBox, noun: str, weight_tip: str) -> None:
        super().__init__()
        self.name = ElidedLabel(Path(name).name)
        self.name.setToolTip(name)
        self.weight = weight
        self.weight.setToolTip(weight_tip)
        self.remove_button = QToolButton(text="✕")
        self.remove_button.setToolTip(f"Remove this {noun}")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.name, 1)
        layout.addWidget(self.weight)
        layout.addWidget(self.remove_button)


class WeightedList(QWidget):
    """Models in use with a weight each (a list of `ref_type` in the settings' `field`), one
    `WeightedRow` each, and an Add button whose menu `rebuild_menu` fills."""

    field = ""
    ref_type: Any = None
    name_field, weight_field = "", ""
    noun = ""
    weight_range = (0.0, 2.0)
    weight_tip = ""

    def __init__(self, panel: RenderPanel) -> None:
        super().__init__()
        self.panel = panel
        self.rows: list[WeightedRow] = []
        self._shown: list[str] = []  # the names the rows show
        self._rows_layout = QVBoxLayout()
        self.add_button = QToolButton(text=f"Add {self.noun}")
        self.add_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.add_button.setMenu(QMenu(self.add_button))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self._rows_layout)
        layout.addWidget(self.add_button, 0, Qt.AlignmentFlag.AlignLeft)

    def rebuild_menu(self) -> None:
        raise NotImplementedError

    def _items(self) -> list[Any]:
        return list(getattr(self.panel.settings, self.field))

    def _name(self, item: Any) -> str:
        return getattr(item, self.name_field)

    def add(self, name: str) -> None:
        items = self._items()
        if all(self._name(item) != name for item in items):
            added = self.ref_type(**{self.name_field: name})
            text = f"add {self.noun} {Path(name).name}"
            self.panel.set_list(self.field, [*items, added], text)

    def remove(self, index: int) -> None:
        items = self._items()
        gone = items.pop(index)
        text = f"remove {self.noun} {Path(self._name(gone)).name}"
        self.panel.set_list(self.field, items, text)

    def set_weight(self, index: int, weight: float) -> None:
        items = self._items()
        if index < len(items) and getattr(items[index], self.weight_field) != weight:
            items[index] = replace(items[index], **{self.weight_field: weight})
            self.panel.set_list(self.field, items)  # merges: spinning a weight is one step

    def show_items(self, items: list[Any]) -> None:
        """Show `items`; rows are rebuilt only when the models change, so a weight being
        typed keeps its editor."""
        if [self._name(item) for item in items] != self._shown:
            self._rebuild(items)
        for row, item in zip(self.rows, items, strict=True):
            _show(row.weight, getattr(item, self.weight_field))

    def _browse_file(self, title: str) -> None:
        path = self.panel.dialogs.open_file(title, MODEL_FILTER)
        if path:
            self.add(os.path.abspath(path))

    def _rebuild(self, items: list[Any]) -> None:
        for row in self.rows:
            self._rows_layout.removeWidget(row)
            row.deleteLater()
        self.rows = [self._row(index, item) for index, item in enumerate(items)]
        for row in self.rows:
            self._rows_layout.addWidget(row)
        self._shown = [self._name(item) for item in items]

    def _row(self, index: int, item: Any) -> WeightedRow:
        spin = _spin(*self.weight_range, 0.05)
        spin.setValue(getattr(item, self.weight_field))
        row = WeightedRow(self._name(item), spin, self.noun, self.weight_tip)
        row.weight.valueChanged.connect(lambda value: self.set_weight(index, value))
        row.remove_button.clicked.connect(lambda: self.remove(index))
        return row


class LoraList(WeightedList):
    """The LoRAs in use; Add offers the library's LoRAs (those for other bases disabled) and
    Browse…."""

    field, ref_type = "loras", LoraRef
    name_field, weight_field = "path", "weight"
    noun = "LoRA"
    weight_range = (-5.0, 5.0)
    weight_tip = "The LoRA's weight (negative inverts it)"

    def rebuild_menu(self) -> None:
        menu = self.add_button.menu()
        menu.clear()
        for info in self.panel.known("lora"):
            action = menu.addAction(info.name, lambda path=str(info.path): self.add(path))
            action.setToolTip(str(info.path))
            action.setEnabled(info.base in RENDER_BASES)
        if menu.actions():
            menu.addSeparator()
        menu.addAction("Browse…", lambda: self._browse_file("Choose a LoRA"))


class ControlNetList(WeightedList):
    """The ControlNets guiding the keys beside the first (A1111's multi-ControlNet); Add
    offers the annotators (each finds its ControlNet in the library, as the first does) and
    a ControlNet file or folder."""

    field, ref_type, name_field, weight_field = (
        "more_controlnets",
        ControlNetRef,
        "controlnet",
        "scale",
    )
    noun = "ControlNet"
    weight_tip = "How strongly this ControlNet holds its map of the input (0 = not at all)"

    def rebuild_menu(self) -> None:
        menu = self.add_button.menu()
        menu.clear()
        for name in available_annotators():
            menu.addAction(name, lambda name=name: self.add(name))
        for _, text, tip in _missing_annotators():
            action = menu.addAction(text)
            action.setEnabled(False)
            action.setToolTip(tip)
        menu.addSeparator()
        menu.addAction("ControlNet file…", lambda: self._browse_file("Choose a ControlNet"))
        menu.addAction("Diffusers folder…", self._browse_folder)

    def _browse_folder(self) -> None:
        path = self.panel.dialogs.open_folder("Choose a diffusers ControlNet folder")
        if path:
            self.add(os.path.abspath(path))


# ---------------------------------------------------------------------------------- key


class Override:
    """One per-key override: its checkbox and its editor (greyed when the key uses the
    global value, which the editor then shows)."""

    def __init__(self, field: str, check: QCheckBox, editor: QWidget) -> None:
        self.field, self.check, self.editor = field, check, editor

    def value(self) -> Any:
        if isinstance(self.editor, QPlainTextEdit):
            return self.editor.toPlainText()
        value = self.editor.value()
        return int(value) if self.field == "seed" else value

    def show(self, own: Any, inherited: Any) -> None:
        _show(self.check, own is not None)
        self.editor.setEnabled(own is not None)
        if isinstance(self.editor, QPlainTextEdit):
            self.editor.setPlaceholderText(inherited)
            _show(self.editor, own or "")
        else:
            _show(self.editor, inherited if own is None else own)


class KeyPanel(_Panel):
    """The overrides of the key selected on the timeline."""

    def __init__(self, document: Document, dialogs: Dialogs) -> None:
        super().__init__(document, dialogs)
        self.frame: int | None = None
        self.placeholder = QLabel("Select a key frame on the timeline")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setWordWrap(True)
        self.key_box = QGroupBox()
        layout = QVBoxLayout(self.key_box)
        self.overrides_box = QWidget()
        form = _form(self.overrides_box)
        self.overrides = self._override_rows(
            form,
            {
                "prompt": ("Prompt", _text_edit(3), "This key's own prompt"),
                "negative_prompt": (
                    "Negative prompt",
                    _text_edit(2),
                    "This key's negative prompt",
                ),
                "seed": ("Seed", _seed_spin(), "This key's own seed"),
                "strength": ("Strength", _spin(0, 1, 0.05), "This key's own strength"),
            },
        )
        self._reference_row(form)
        tip = "How strongly this key takes the look of its reference image (own or the project's)"
        self.overrides |= self._override_rows(
            form, {"reference_strength": ("Reference strength", _spin(0, 2, 0.05), tip)}
        )
        layout.addWidget(self.overrides_box)
        layout.addLayout(self._painted_rows())
        outer = QVBoxLayout(self)
        outer.addWidget(self.placeholder)
        outer.addWidget(self.key_box)
        outer.addStretch(1)
        self._loading = False
        self.refresh()

    def _override_rows(
        self, form: QFormLayout, editors: dict[str, tuple[str, QWidget, str]]
    ) -> dict[str, Override]:
        """A row per override field: (label, editor, tooltip) each."""
        overrides = {}
        for field, (text, editor, tip) in editors.items():
            check = QCheckBox("override")
            check.setToolTip(f"{tip}; unchecked, the key uses the global value (shown greyed)")
            overrides[field] = override = Override(field, check, editor)
            check.toggled.connect(lambda on, o=override: self._toggled(o, on))
            signal = (
                editor.textChanged if isinstance(editor, QPlainTextEdit) else editor.valueChanged
            )
            signal.connect(lambda *_, o=override: self._edited(o))
            editor.setToolTip(tip)
            box = QVBoxLayout()
            box.addWidget(check)
            box.addWidget(editor)
            form.addRow(_label(text, tip), box)
        return overrides

    def _reference_row(self, form: QFormLayout) -> None:
        self.reference_label, self.reference_button, self.clear_reference_button, row = _image_row(
            self._choose_reference, "Project's", lambda: self.set_reference(None)
        )
        self.reference_button.setToolTip("A reference image for this key instead of the project's")
        self.clear_reference_button.setToolTip(
            "Use the project's reference image (Render settings > Model)"
        )
        tip = (
            "The image this key takes its look from, through an IP-Adapter: another shot's "
            "look; the adapter is the project's"
        )
        form.addRow(_label("Reference image", tip), row)

    def set_reference(self, path: str | None) -> None:
        key = self.key()
        if key is not None and key.reference_image != path:
            text = f"give key {key.frame} a reference image"
            if path is None:
                text = f"use the project's reference for key {key.frame}"
            self._push(lambda: SetKey(replace(key, reference_image=path)), text)

    def _choose_reference(self) -> None:
        path = self.dialogs.open_file("Choose this key's reference image", IMAGE_FILTER)
        if path:
            self.set_reference(os.path.abspath(path))

    def _painted_rows(self) -> QVBoxLayout:
        self.painted_label = QLabel()
        self.painted_label.setWordWrap(True)
        self.paint_button = QPushButton("Use painted image…")
        self.paint_button.setToolTip("Use an image painted outside zvstudio as this key's result")
        self.paint_button.clicked.connect(self._choose_painting)
        self.clear_paint_button = QPushButton("Clear painting")
        self.clear_paint_button.setToolTip("Render this key again instead of the painting")
        self.clear_paint_button.clicked.connect(lambda: self.set_painting(None))
        buttons = QHBoxLayout()
        buttons.addWidget(self.paint_button)
        buttons.addWidget(self.clear_paint_button)
        box = QVBoxLayout()
        box.addWidget(self.painted_label)
        box.addLayout(buttons)
        return box

    # -- the key -----------------------------------------------------------------------------
    def set_current_key(self, frame: int | None) -> None:
        if frame != self.frame:
            self.frame = frame
            self.refresh()

    def key(self) -> KeyFrame | None:
        return None if self.frame is None else self.document.project.key_at(self.frame)

    def set_painting(self, path: str | None) -> None:
        key = self.key()
        if key is not None and key.painted_image != path:
            what = "paint" if path else "clear the painting of"
            self._push(lambda: SetKey(replace(key, painted_image=path)), f"{what} key {key.frame}")

    def _choose_painting(self) -> None:
        path = self.dialogs.open_file("Choose the painted key image", IMAGE_FILTER)
        if path:
            self.set_painting(os.path.abspath(path))

    def _toggled(self, override: Override, on: bool) -> None:
        key = self.key()
        if self._loading or key is None:
            return
        # An override starts from the global value, for the user to change from there.
        value = getattr(self.settings, override.field) if on else None
        what = "override" if on else "use the global"
        text = f"{what} {override.field.replace('_', ' ')} of key {key.frame}"
        self._push(lambda: SetKey(replace(key, **{override.field: value})), text)

    def _edited(self, override: Override) -> None:
        key = self.key()
        if self._loading or key is None or not override.check.isChecked():
            return
        value = override.value()
        if getattr(key, override.field) != value:
            field = override.field
            self._push(lambda: SetKey(replace(key, **{field: value}), field=field))

    # -- refreshing --------------------------------------------------------------------------
    def _show_reference(self, key: KeyFrame) -> None:
        own, project = key.reference_image, self.settings.reference_image
        shown = own or project
        self.reference_label.set_full_text(Path(shown).name if shown else "None")
        tip = own or f"The project's reference image: {project or 'none'}"
        self.reference_label.setToolTip(tip)
        self.reference_label.setEnabled(bool(own))  # greyed while inherited, as overrides are
        self.clear_reference_button.setEnabled(bool(own))

    def _show_project(self) -> None:
        key = self.key()
        self.placeholder.setVisible(key is None)
        self.key_box.setVisible(key is not None)
        if key is None:
            return
        self.key_box.setTitle(f"Key at frame {key.frame}")
        for field, override in self.overrides.items():
            override.show(getattr(key, field), getattr(self.settings, field))
        self._show_reference(key)
        # A strength without an image to take the look from would change nothing.
        has_reference = bool(key.reference_image or self.settings.reference_image)
        self.overrides["reference_strength"].check.setEnabled(has_reference)
        # Prompts, seeds and strengths are the diffusion renderer's; paintings are anyone's.
        self.overrides_box.setVisible(self.settings.renderer == "diffusion")
        painted = key.painted_image
        self.painted_label.setText(f"Painted: {Path(painted).name}" if painted else "Not painted")
        self.painted_label.setToolTip(painted or "")
        self.clear_paint_button.setEnabled(painted is not None)


# ------------------------------------------------------------------------------ inspector


class Inspector(QWidget):
    """Render settings (global) and the selected key's overrides, in two tabs.

    Built with the `Document` and optionally `models`, a callable returning the model
    library's `ModelInfo`s (checkpoints and LoRAs are offered from it; call
    `reload_models()` after the library changes). The main window calls
    `set_current_key(frame)` when the playhead or the selection is on a key (None otherwise).

    Widgets for tests and the main window: `renderer_combo`, `style_combo`, `model_combo`,
    `prompt_edit`, `negative_prompt_edit`, `seed_spin`, `key_interval_spin`,
    `fill_keys_button`, `motion_keys_button` (its `render_panel.keys_by_motion_requested`
    signal asks the main window to place the keys), `diffusion_box` (hidden unless the
    renderer is diffusion), `key_prompt_edit`, `key_prompt_override` (its checkbox),
    `key_placeholder`; every other one is an attribute of `render_panel` (e.g.
    `constraint_rows["adain"].check`, `lora_list`, `cross_frame_combo`) or `key_panel`
    (`overrides["seed"].check`, `paint_button`). `dialogs` opens the file dialogs (tests
    replace its methods); `message_label` shows why a change was refused.
    """

    def __init__(
        self,
        document: Document,
        models: ModelSource | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.document = document
        self.dialogs = Dialogs(self)
        self.render_panel = RenderPanel(document, self.dialogs, models)
        self.key_panel = KeyPanel(document, self.dialogs)
        self.tabs = QTabWidget()
        self.tabs.addTab(_scrolled(self.render_panel), "Render settings")
        self.tabs.addTab(_scrolled(self.key_panel), "Key")
        self.message_label = QLabel()
        self.message_label.setWordWrap(True)
        self.message_label.setStyleSheet("color: #c0392b;")
        self.message_label.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        layout.addWidget(self.message_label)
        for panel in (self.render_panel, self.key_panel):
            panel.problem.connect(self._show_problem)
        self._expose_widgets()

    def _expose_widgets(self) -> None:
        render, key = self.render_panel, self.key_panel
        self.renderer_combo, self.style_combo = render.renderer_combo, render.style_combo
        self.model_combo, self.diffusion_box = render.model_combo, render.diffusion_box
        self.prompt_edit = render.prompt_edit
        self.negative_prompt_edit = render.negative_prompt_edit
        self.seed_spin = render.seed_spin
        self.key_interval_spin = render.key_interval_spin
        self.fill_keys_button = render.fill_keys_button
        self.motion_keys_button = render.motion_keys_button
        self.key_prompt_edit = key.overrides["prompt"].editor
        self.key_prompt_override = key.overrides["prompt"].check
        self.key_placeholder = key.placeholder

    def set_current_key(self, frame: int | None) -> None:
        """Show the overrides of the key at `frame` (None: no key selected)."""
        self.key_panel.set_current_key(frame)
        self.tabs.setTabText(1, "Key" if frame is None else f"Key {frame}")

    def reload_models(self) -> None:
        self.render_panel.reload_models()

    def _show_problem(self, text: str) -> None:
        self.message_label.setText(text)
        self.message_label.setVisible(bool(text))


def _scrolled(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(widget)
    return area
