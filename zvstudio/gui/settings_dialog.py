"""The Settings dialog: device and memory policy, the render cache, autosave.

Device choices list what torch sees. Counting CUDA GPUs does not create a CUDA context (asking
for their names would, costing a few hundred MB per GPU), so they are listed by number only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from zvstudio import diskcache
from zvstudio.appsettings import MAX_AUTOSAVE_MINUTES, PRECISION_CHOICES, AppSettings, edited
from zvstudio.engine.device import OFFLOAD_MODES, DeviceProbe, TorchProbe
from zvstudio.paths import cache_root

GiB = 1 << 30  # the cache limit is in GiB (see diskcache.cache_limit)
PRECISION_LABELS = {
    "auto": "Automatic (fp16 on a GPU, fp32 on the CPU)",
    "fp32": "fp32 (full precision)",
    "fp16": "fp16 (half precision)",
    "bf16": "bf16 (bfloat16)",
}
OFFLOAD_LABELS = {
    "auto": "Automatic (from the GPU's free memory)",
    "none": "None: every model stays on the GPU (fastest)",
    "model": "Model: one stage on the GPU at a time",
    "sequential": "Sequential: layer by layer (slowest, least memory)",
}


def available_devices(probe: DeviceProbe | None = None) -> list[str]:
    """ "auto", "cpu", then each CUDA GPU ("cuda:N") and "mps" when the machine has them."""
    probe = probe if probe is not None else TorchProbe()
    devices = ["auto", "cpu"]
    devices += [f"cuda:{i}" for i in range(probe.cuda_count())]
    if probe.mps_available():
        devices.append("mps")
    return devices


def format_gib(size: int) -> str:
    return f"{size / GiB:.2f} GB"


class SettingsDialog(QDialog):
    """Edit the application settings; `settings()` returns the edited copy.

    `devices` overrides the device list (tests, or a machine other than this one).
    """

    def __init__(
        self,
        settings: AppSettings,
        parent: QWidget | None = None,
        devices: Sequence[str] | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self._settings = settings
        form = QFormLayout()
        self._build_device(form, settings, available_devices() if devices is None else devices)
        self._build_cache(form, settings)
        self.autosave_spin = QSpinBox()
        self.autosave_spin.setRange(0, MAX_AUTOSAVE_MINUTES)
        self.autosave_spin.setSpecialValueText("Off")
        self.autosave_spin.setSuffix(" min")
        self.autosave_spin.setValue(settings.autosave_minutes)
        form.addRow("Autosave every:", self.autosave_spin)

        self.reason_label = QLabel()
        self.reason_label.setStyleSheet("color: #c0392b;")
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.reason_label)
        layout.addWidget(self.buttons)
        self._validate()
        self.refresh_usage()

    # -- construction ----------------------------------------------------------------------
    def _build_device(
        self, form: QFormLayout, settings: AppSettings, devices: Sequence[str]
    ) -> None:
        self.device_combo = QComboBox()
        for device in devices:
            self.device_combo.addItem("Automatic" if device == "auto" else device, device)
        if self.device_combo.findData(settings.device) < 0:  # saved on another machine: keep it
            self.device_combo.addItem(f"{settings.device} (not found)", settings.device)
        self.device_combo.setCurrentIndex(self.device_combo.findData(settings.device))
        self.device_combo.setToolTip(
            "Where the diffusion models and propagation's per-pixel work run (the optical flow"
            " always uses every CPU core). Automatic: a GPU when there is one."
        )
        form.addRow("Device:", self.device_combo)

        self.precision_combo = _choice_combo(
            PRECISION_CHOICES, PRECISION_LABELS, settings.precision
        )
        form.addRow("Precision:", self.precision_combo)

        self.memory_check = QCheckBox("Limit to")
        self.memory_spin = QDoubleSpinBox()
        self.memory_spin.setRange(1.0, 4096.0)
        self.memory_spin.setDecimals(1)
        self.memory_spin.setSuffix(" GB")
        self.memory_spin.setValue(settings.memory_limit_gb or 8.0)
        self.memory_check.setChecked(settings.memory_limit_gb is not None)
        self.memory_spin.setEnabled(self.memory_check.isChecked())
        self.memory_check.toggled.connect(self.memory_spin.setEnabled)
        form.addRow("GPU memory:", _row(self.memory_check, self.memory_spin))

        offloads = ("auto", *OFFLOAD_MODES)
        self.offload_combo = _choice_combo(offloads, OFFLOAD_LABELS, settings.offload)
        form.addRow("Offload:", self.offload_combo)

    def _build_cache(self, form: QFormLayout, settings: AppSettings) -> None:
        self.cache_edit = QLineEdit(settings.cache_dir or "")
        self.cache_edit.setPlaceholderText(f"default: {cache_root()}")
        self.cache_edit.textChanged.connect(self._on_cache_dir_changed)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_cache)
        form.addRow("Cache folder:", _row(self.cache_edit, browse))

        self.cache_limit_spin = QDoubleSpinBox()
        self.cache_limit_spin.setRange(0.5, 1_000_000.0)
        self.cache_limit_spin.setDecimals(1)
        self.cache_limit_spin.setSuffix(" GB")
        self.cache_limit_spin.setValue(settings.cache_limit_gb)
        form.addRow("Cache limit:", self.cache_limit_spin)

        self.usage_label = QLabel()
        self.clear_button = QPushButton("Clear cache…")
        self.clear_button.clicked.connect(self._confirm_clear)
        form.addRow("Cache in use:", _row(self.usage_label, self.clear_button))

    # -- cache -----------------------------------------------------------------------------
    def cache_folder(self) -> Path:
        """The cache folder as edited (the current default when the field is empty)."""
        text = self.cache_edit.text().strip()
        return Path(text).expanduser() if text else cache_root()

    def refresh_usage(self) -> None:
        """Show what the cache folder holds (a walk over its entries: quick, it is metadata)."""
        folder = self.cache_folder()
        totals = diskcache.usage(folder) if folder.is_dir() else dict.fromkeys(diskcache.KINDS, 0)
        parts = ", ".join(f"{kind} {format_gib(size)}" for kind, size in totals.items() if size)
        total = format_gib(sum(totals.values()))
        self.usage_label.setText(f"{total} ({parts})" if parts else total)
        self.clear_button.setEnabled(sum(totals.values()) > 0)

    def clear_cache(self) -> int:
        """Delete every cache entry in the edited cache folder, without asking; bytes freed."""
        folder = self.cache_folder()
        freed = diskcache.clear(folder) if folder.is_dir() else 0
        self.refresh_usage()
        return freed

    def _confirm_clear(self) -> None:
        answer = QMessageBox.question(
            self,
            "Clear the cache",
            f"Delete every cached flow, key and segment in {self.cache_folder()}?\n"
            "Renders will compute them again.",
        )
        if answer == QMessageBox.StandardButton.Yes:
            self.clear_cache()

    def _browse_cache(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Cache folder", str(self.cache_folder()))
        if folder:
            self.cache_edit.setText(folder)

    def _on_cache_dir_changed(self) -> None:
        self._validate()
        self.refresh_usage()

    # -- validation and the answer ---------------------------------------------------------
    def invalid_reason(self) -> str | None:
        folder = self.cache_folder()
        if folder.exists() and not folder.is_dir():
            return f"The cache folder {folder} is a file."
        return None

    def _validate(self) -> None:
        reason = self.invalid_reason()
        self.reason_label.setText(reason or "")
        self.reason_label.setVisible(reason is not None)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(reason is None)

    def settings(self) -> AppSettings:
        """The settings as edited (validated; other fields as they were)."""
        return edited(
            self._settings,
            device=self.device_combo.currentData(),
            precision=self.precision_combo.currentData(),
            memory_limit_gb=self.memory_spin.value() if self.memory_check.isChecked() else None,
            offload=self.offload_combo.currentData(),
            cache_dir=self.cache_edit.text().strip() or None,
            cache_limit_gb=self.cache_limit_spin.value(),
            autosave_minutes=self.autosave_spin.value(),
        )


def _choice_combo(choices: Sequence[str], labels: dict[str, str], current: str) -> QComboBox:
    combo = QComboBox()
    for choice in choices:
        combo.addItem(labels.get(choice, choice), choice)
    combo.setCurrentIndex(max(combo.findData(current), 0))
    return combo


def _row(*widgets: QWidget) -> QWidget:
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return box
