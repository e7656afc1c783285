"""The Export dialog: format, quality, frame range, audio and where to write the result.

The dialog only gathers a choice; `ExportChoice` goes to the engine, whose writer checks the
output again (permissions, an existing folder) before any work starts. Here the OK button stays
disabled, with the reason shown, while the choice is obviously unusable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from zvstudio.errors import ZvsError
from zvstudio.media.writer import ALPHA_FORMATS, IMAGE_FORMATS, output_suffixes
from zvstudio.project.model import OutputSettings

FORMAT_LABELS = {
    "h264": "H.264",
    "h265": "H.265 (HEVC)",
    "prores": "ProRes 422",
    "png": "PNG frames",
    "tiff": "TIFF frames",
    "exr": "OpenEXR frames (linear light)",
    "dpx": "DPX frames (10-bit)",
}
# The suffixes the writer accepts for each format (its first is the one suggested; image
# frames go into a folder, a path without one).
ALLOWED_SUFFIXES = {fmt: output_suffixes(fmt) for fmt in FORMAT_LABELS}
DEFAULT_SUFFIX = {fmt: suffixes[0] for fmt, suffixes in ALLOWED_SUFFIXES.items()}
CRF_FORMATS = ("h264", "h265")


@dataclass(frozen=True)
class ExportChoice:
    """What to export: frames `first`..`last` (inclusive) to `path` (a folder for frames)."""

    path: Path
    output: OutputSettings
    first: int
    last: int


def alpha_tip(has_matte: bool, fmt: str) -> str:
    """What the alpha box does, or why it cannot."""
    if not has_matte:
        return "Choose a matte in the inspector first: the alpha channel comes from it"
    if fmt not in ALPHA_FORMATS:
        return f"{FORMAT_LABELS[fmt]} has no alpha channel: choose ProRes (4444), PNG, TIFF or EXR"
    return (
        "Write the matte as the alpha channel, for a compositor to put the render over the "
        "footage, instead of putting it over the original here"
    )


def path_for_format(path: str, old_format: str, new_format: str) -> str:
    """`path` with the suffix `new_format` needs: a suffix that was the old format's default or
    that the new format cannot take is replaced; one the user chose and still fits is kept."""
    if not path.strip():
        return path
    current = Path(path)
    suffix = current.suffix.lower()
    if suffix in ALLOWED_SUFFIXES[new_format] and suffix != DEFAULT_SUFFIX[old_format]:
        return path
    return str(current.with_suffix(DEFAULT_SUFFIX[new_format]))


class ExportDialog(QDialog):
    """Asks how and where to export; read the answer with `choice()` after `exec()`."""

    def __init__(
        self,
        parent: QWidget | None,
        frame_count: int,
        fps: float,
        output: OutputSettings,
        suggested_path: str,
        in_out: tuple[int, int] | None = None,
        size: tuple[int, int] | None = None,
        source_colour: str = "",
        has_matte: bool = False,
    ) -> None:
        super().__init__(parent)
        self._has_matte = has_matte  # the project has a matte, which can become the alpha
        self.setWindowTitle("Export")
        self._size = size  # (width, height) the frames are rendered at, when known
        self._source_colour = source_colour  # an HDR or BT.2020 clip's (MediaInfo.colour)
        self._frame_count = max(frame_count, 1)
        self._fps = fps
        self._in_out = in_out
        self._format = output.format
        self._build(output, suggested_path)
        self._connect()
        self._on_format_changed()
        self._on_range_changed()

    # -- construction ----------------------------------------------------------------------
    def _build(self, output: OutputSettings, suggested_path: str) -> None:
        form = QFormLayout()
        self.format_combo = QComboBox()
        for key, label in FORMAT_LABELS.items():
            self.format_combo.addItem(label, key)
        self.format_combo.setCurrentIndex(self.format_combo.findData(output.format))
        form.addRow("Format:", self.format_combo)
        form.addRow("Quality (CRF):", self._build_quality(output.crf))
        form.addRow("Frames:", self._build_range())
        if self._size is not None:
            self.size_label = QLabel("{} × {}".format(*self._size))
            self.size_label.setToolTip("The render size: Keys and propagation in the inspector")
            form.addRow("Size:", self.size_label)
        if self._source_colour:
            self.colour_label = QLabel(f"SDR BT.709 (the clip is {self._source_colour})")
            self.colour_label.setToolTip(
                "HDR and BT.2020 clips are converted to SDR BT.709 as they are read, the "
                "colours the models work in"
            )
            form.addRow("Colour:", self.colour_label)
        self.audio_check = QCheckBox("Include the clip's audio")
        self.audio_check.setChecked(output.audio)
        form.addRow("Audio:", self.audio_check)
        self.alpha_check = QCheckBox("The matte as an alpha channel")
        self.alpha_check.setChecked(output.alpha)
        form.addRow("Alpha:", self.alpha_check)
        form.addRow("Save to:", self._build_path(suggested_path))

        self.reason_label = QLabel()
        self.reason_label.setStyleSheet("color: #c0392b;")
        self.reason_label.setWordWrap(True)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Export")
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.reason_label)
        layout.addWidget(self.buttons)

    def _build_quality(self, crf: int) -> QWidget:
        self.crf_slider = QSlider(Qt.Orientation.Horizontal)
        self.crf_spin = QSpinBox()
        for widget in (self.crf_slider, self.crf_spin):
            widget.setRange(0, 51)
            widget.setValue(crf)
        self.crf_spin.setToolTip("Lower is better and larger; 18 looks like the source")
        return _row(self.crf_slider, self.crf_spin)

    def _build_range(self) -> QWidget:
        self.whole_radio = QRadioButton("Whole clip")
        self.in_out_radio = QRadioButton("In to out")
        self.custom_radio = QRadioButton("Custom")
        self.range_group = QButtonGroup(self)
        for button in (self.whole_radio, self.in_out_radio, self.custom_radio):
            self.range_group.addButton(button)
        self.first_spin = QSpinBox()
        self.last_spin = QSpinBox()
        for spin in (self.first_spin, self.last_spin):
            spin.setRange(0, self._frame_count - 1)
        self.in_out_radio.setEnabled(self._in_out is not None)
        if self._in_out is not None:
            self.in_out_radio.setText(f"In to out ({self._in_out[0]}..{self._in_out[1]})")
        (self.in_out_radio if self._in_out else self.whole_radio).setChecked(True)
        self.range_info = QLabel()
        box = QWidget()
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(_row(self.whole_radio, self.in_out_radio, self.custom_radio))
        column.addWidget(
            _row(QLabel("First"), self.first_spin, QLabel("Last"), self.last_spin, self.range_info)
        )
        return box

    def _build_path(self, suggested_path: str) -> QWidget:
        self.path_edit = QLineEdit(suggested_path)
        self.browse_button = QPushButton("Browse…")
        return _row(self.path_edit, self.browse_button)

    def _connect(self) -> None:
        self.crf_slider.valueChanged.connect(self.crf_spin.setValue)
        self.crf_spin.valueChanged.connect(self.crf_slider.setValue)
        self.format_combo.currentIndexChanged.connect(self._on_format_changed)
        self.range_group.buttonToggled.connect(self._on_range_changed)
        self.first_spin.valueChanged.connect(self._validate)
        self.last_spin.valueChanged.connect(self._validate)
        self.path_edit.textChanged.connect(self._validate)
        self.browse_button.clicked.connect(self.browse)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

    # -- reactions -------------------------------------------------------------------------
    def current_format(self) -> str:
        return self.format_combo.currentData()

    def _on_format_changed(self) -> None:
        fmt = self.current_format()
        self.crf_slider.setEnabled(fmt in CRF_FORMATS)
        self.crf_spin.setEnabled(fmt in CRF_FORMATS)
        beside = "as audio.wav beside the frames" if fmt in IMAGE_FORMATS else "in the file"
        self.audio_check.setToolTip(f"The clip's sound, {beside}")
        self.alpha_check.setEnabled(self._has_matte and fmt in ALPHA_FORMATS)
        self.alpha_check.setToolTip(alpha_tip(self._has_matte, fmt))
        self.path_edit.setText(path_for_format(self.path_edit.text(), self._format, fmt))
        self._format = fmt
        self._validate()

    def _on_range_changed(self, *_: object) -> None:
        custom = self.custom_radio.isChecked()
        self.first_spin.setEnabled(custom)
        self.last_spin.setEnabled(custom)
        if not custom:
            first, last = self._preset_range()
            self.first_spin.setValue(first)
            self.last_spin.setValue(last)
        self._validate()

    def _preset_range(self) -> tuple[int, int]:
        if self.in_out_radio.isChecked() and self._in_out is not None:
            return self._in_out
        return 0, self._frame_count - 1

    def invalid_reason(self) -> str | None:
        """Why the choice cannot be exported as it stands, or None."""
        path = self.path_edit.text().strip()
        fmt = self.current_format()
        if not path:
            return "Choose where to save the export."
        suffix = Path(path).suffix.lower()
        if fmt in IMAGE_FORMATS and suffix:
            return f"{FORMAT_LABELS[fmt]} are saved into a folder: remove the file extension."
        if fmt not in IMAGE_FORMATS and suffix not in ALLOWED_SUFFIXES[fmt]:
            allowed = ", ".join(ALLOWED_SUFFIXES[fmt])
            return f"{FORMAT_LABELS[fmt]} is saved as a {allowed} file."
        if self.first_spin.value() > self.last_spin.value():
            return "The first frame is after the last frame."
        return None

    def _validate(self) -> None:
        reason = self.invalid_reason()
        self.reason_label.setText(reason or "")
        self.reason_label.setVisible(reason is not None)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(reason is None)
        count = self.last_spin.value() - self.first_spin.value() + 1
        if count > 0:
            seconds = f", {count / self._fps:.2f} s" if self._fps > 0 else ""
            self.range_info.setText(f"{count} frames{seconds}")
        else:
            self.range_info.setText("")

    def browse(self) -> None:
        """Ask for a file (video) or a folder (image frames) with the platform's dialog."""
        fmt = self.current_format()
        current = self.path_edit.text().strip()
        if fmt in IMAGE_FORMATS:
            title = f"Folder for the {FORMAT_LABELS[fmt]}"
            chosen = QFileDialog.getExistingDirectory(self, title, current)
        else:
            patterns = " ".join(f"*{s}" for s in ALLOWED_SUFFIXES[fmt])
            chosen, _ = QFileDialog.getSaveFileName(
                self, "Export to", current, f"{FORMAT_LABELS[fmt]} video ({patterns})"
            )
            if chosen and not Path(chosen).suffix:
                chosen += DEFAULT_SUFFIX[fmt]  # some platforms' dialogs add none
        if chosen:
            self.path_edit.setText(chosen)

    # -- the answer ------------------------------------------------------------------------
    def choice(self) -> ExportChoice:
        """The export asked for; raises ZvsError while the dialog shows a reason."""
        reason = self.invalid_reason()
        if reason is not None:
            raise ZvsError(reason)
        fmt = self.current_format()
        output = OutputSettings(
            format=fmt,
            crf=self.crf_spin.value(),
            audio=self.audio_check.isChecked(),
            alpha=self.alpha_check.isChecked() and self.alpha_check.isEnabled(),
        )
        path = Path(self.path_edit.text().strip()).expanduser()
        return ExportChoice(path, output, self.first_spin.value(), self.last_spin.value())


def _row(*widgets: QWidget) -> QWidget:
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return box
