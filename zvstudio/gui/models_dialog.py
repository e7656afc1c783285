"""The model manager: which folders are scanned for models, and what was found in them.

Scanning reads safetensors headers and hashing reads whole files (gigabytes), so both run as
engine jobs through the bridge, never on the GUI thread: the table fills when the scan ends and
the hash column when the hashes are read (they are remembered on disk, so only new files are
slow). A new scan cancels the jobs of the previous one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from zvstudio.appsettings import AppSettings, edited
from zvstudio.diffusion.identify import BASE_LABELS, KIND_LABELS, ModelInfo
from zvstudio.diffusion.library import (
    default_model_folders,
    format_size,
    hf_cache_dir,
    home_models_folder,
    scan,
)
from zvstudio.engine.jobs import ANALYSIS, JobContext, JobError, JobEvent, Work
from zvstudio.errors import ZvsError
from zvstudio.gui.bridge import EngineBridge
from zvstudio.progress import Progress

COLUMNS = ("Name", "Kind", "Base", "Size", "Hash")
DEFAULT_ROLE = Qt.ItemDataRole.UserRole  # list items: True for a default (read-only) folder
PENDING_HASH = "…"


def default_folders(settings: AppSettings) -> list[Path]:
    """The folders scanned whatever the user adds: the models folder, $ZVSTUDIO_MODELS and the
    Hugging Face cache (shown even when missing, so the user knows where to put models)."""
    own = Path(settings.models_dir).expanduser() if settings.models_dir else home_models_folder()
    env = [e for e in os.environ.get("ZVSTUDIO_MODELS", "").split(os.pathsep) if e.strip()]
    return [own, *(Path(e).expanduser() for e in env), hf_cache_dir()]


def scan_folders(settings: AppSettings, extra: Sequence[str]) -> list[Path]:
    """The existing folders to scan, as the command line finds them (A1111/ComfyUI installs
    expanded to their model subfolders)."""
    return default_model_folders(settings.models_dir, extra)


def _scan_job(settings: AppSettings, extra: list[str]) -> Work:
    def work(ctx: JobContext) -> list[ModelInfo]:
        folders = scan_folders(settings, extra)  # stats folders: slow on a sleeping network drive

        def report(progress: Progress) -> None:
            ctx.cancel.raise_if_cancelled()  # scan has no token of its own: poll it here
            ctx.progress(progress)

        return scan(folders, report)

    return work


def _hash_job(models: list[ModelInfo]) -> Work:
    def work(ctx: JobContext) -> dict[Path, str]:
        files = [m for m in models if m.format != "diffusers"]
        hashes = {}
        for done, info in enumerate(files):
            ctx.cancel.raise_if_cancelled()
            ctx.progress(Progress("hashing models", done, len(files), info.path.name))
            try:
                hashes[info.path] = info.short_hash or "-"
            except ZvsError:  # unreadable: the row says so, the others still get theirs
                hashes[info.path] = "?"
        return hashes

    return work


class ModelManagerDialog(QDialog):
    """Edit the scanned folders and browse the models found; `settings()` has the edits."""

    def __init__(
        self, settings: AppSettings, bridge: EngineBridge, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Models")
        self.resize(820, 560)
        self._settings = settings
        self._bridge = bridge
        self._models: list[ModelInfo] = []
        self._scan_id: int | None = None
        self._hash_id: int | None = None
        self._scanned_once = False
        self._summary = ""
        self._build()
        self._fill_folders(settings)
        bridge.finished.connect(self._on_finished)
        bridge.failed.connect(self._on_failed)
        bridge.event.connect(self._on_event)

    # -- construction ----------------------------------------------------------------------
    def _build(self) -> None:
        self.folder_list = QListWidget()
        self.add_button = QPushButton("Add…")
        self.remove_button = QPushButton("Remove")
        self.remove_button.setEnabled(False)
        self.pickle_check = QCheckBox(
            "Allow pickled models (.ckpt, .pt, .bin): loading them runs code stored in the file"
        )
        self.pickle_check.setChecked(self._settings.allow_pickle)
        buttons = QVBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch()
        folders = QGroupBox("Folders scanned for models")
        folder_row = QHBoxLayout(folders)
        folder_row.addWidget(self.folder_list)
        folder_row.addLayout(buttons)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.status_label = QLabel("Not scanned yet.")
        self.status_label.setWordWrap(True)
        self.refresh_button = QPushButton("Refresh")
        status_row = QHBoxLayout()
        status_row.addWidget(self.status_label, 1)
        status_row.addWidget(self.refresh_button)

        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        layout = QVBoxLayout(self)
        layout.addWidget(folders)
        layout.addWidget(self.pickle_check)
        layout.addWidget(self.table, 1)
        layout.addLayout(status_row)
        layout.addWidget(self.buttons)

        self.add_button.clicked.connect(self._ask_folder)
        self.remove_button.clicked.connect(self.remove_selected)
        self.folder_list.currentItemChanged.connect(self._update_remove)
        self.refresh_button.clicked.connect(self.refresh)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

    def _fill_folders(self, settings: AppSettings) -> None:
        for folder in default_folders(settings):
            missing = "" if folder.is_dir() else " (missing)"
            item = QListWidgetItem(f"{folder}  [default{missing}]")
            item.setData(DEFAULT_ROLE, True)
            item.setForeground(self.palette().placeholderText())
            item.setToolTip("Always scanned; set by zvstudio and $ZVSTUDIO_MODELS")
            self.folder_list.addItem(item)
        for folder in settings.model_folders:
            self._add_item(folder)

    def _add_item(self, folder: str) -> None:
        item = QListWidgetItem(folder)
        item.setData(DEFAULT_ROLE, False)
        item.setToolTip("Scanned with its subfolders; an A1111 or ComfyUI install as its models")
        self.folder_list.addItem(item)

    # -- folders ---------------------------------------------------------------------------
    def extra_folders(self) -> list[str]:
        """The user's folders, in the order shown."""
        items = (self.folder_list.item(i) for i in range(self.folder_list.count()))
        return [item.text() for item in items if not item.data(DEFAULT_ROLE)]

    def add_folder(self, folder: str | os.PathLike[str]) -> None:
        """Add a folder (once) and scan again."""
        path = os.path.abspath(os.path.expanduser(folder))
        if path not in self.extra_folders():
            self._add_item(path)
            self.refresh()

    def remove_selected(self) -> None:
        item = self.folder_list.currentItem()
        if item is not None and not item.data(DEFAULT_ROLE):
            self.folder_list.takeItem(self.folder_list.row(item))
            self.refresh()

    def _ask_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a model folder")
        if folder:
            self.add_folder(folder)

    def _update_remove(self, item: QListWidgetItem | None, *_: object) -> None:
        self.remove_button.setEnabled(item is not None and not item.data(DEFAULT_ROLE))

    # -- scanning --------------------------------------------------------------------------
    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if not self._scanned_once:  # list what is there as soon as the dialog opens
            self.refresh()

    def scanning(self) -> bool:
        return self._scan_id is not None

    def refresh(self) -> None:
        """Scan the folders again in a job (cancelling a scan still running)."""
        self._scanned_once = True
        self._cancel_jobs()
        job = _scan_job(self._settings, self.extra_folders())
        self._scan_id = self._bridge.submit(job, "scan model folders", ANALYSIS)
        self._set_status("Scanning…")

    def _cancel_jobs(self) -> None:
        for job_id in (self._scan_id, self._hash_id):
            if job_id is not None:
                self._bridge.cancel(job_id)
        self._scan_id = self._hash_id = None

    def _on_event(self, event: JobEvent) -> None:
        if event.kind != "progress":
            return
        if event.job == self._scan_id:
            self._set_status(f"Scanning… {event.done} of {event.total} {event.message}")
        elif event.job == self._hash_id:  # the summary stays: the table is already usable
            self._set_status(f"{self._summary} (reading hashes: {event.done} of {event.total})")

    def _on_finished(self, job_id: int, result: object) -> None:
        if job_id == self._scan_id:
            self._scan_id = None
            self._show_models(result)
            if self._models:
                self._hash_id = self._bridge.submit(
                    _hash_job(self._models), "hash models", ANALYSIS
                )
        elif job_id == self._hash_id:
            self._hash_id = None
            self._show_hashes(result)
            self._set_status(self._summary)

    def _on_failed(self, job_id: int, error: JobError) -> None:
        if job_id == self._scan_id:
            self._scan_id = None
            self._set_status(f"The scan failed: {error}", error=True)
        elif job_id == self._hash_id:
            self._hash_id = None
            self._set_status(f"Reading the hashes failed: {error}", error=True)

    def _set_status(self, text: str, error: bool = False) -> None:
        self.status_label.setText(text)
        self.status_label.setStyleSheet("color: #c0392b;" if error else "")

    # -- the table -------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        """The models found by the last finished scan."""
        return list(self._models)

    def _show_models(self, models: list[ModelInfo]) -> None:
        self._models = list(models)
        self.table.setRowCount(len(models))
        for row, info in enumerate(models):
            for column, text in enumerate(_cells(info)):
                item = QTableWidgetItem(text)
                item.setToolTip(_tooltip(info))
                self.table.setItem(row, column, item)
        broken = sum("error" in m.details for m in models)
        found = f"{len(models)} model(s) found" if models else "No models found in these folders"
        self._summary = found + (f"; {broken} could not be read (see tooltips)" if broken else "")
        self._set_status(self._summary)

    def _show_hashes(self, hashes: dict[Path, str]) -> None:
        for row, info in enumerate(self._models):
            self.table.item(row, COLUMNS.index("Hash")).setText(hashes.get(info.path, "-"))

    # -- closing ---------------------------------------------------------------------------
    def done(self, result: int) -> None:
        self._cancel_jobs()  # the bridge outlives the dialog: leave it no work of ours
        super().done(result)

    def settings(self) -> AppSettings:
        """The settings with the edited folder list and pickle permission."""
        return edited(
            self._settings,
            model_folders=self.extra_folders(),
            allow_pickle=self.pickle_check.isChecked(),
        )


def _cells(info: ModelInfo) -> list[str]:
    base = BASE_LABELS.get(info.base, info.base) if info.base != "unknown" else "?"
    name = info.name + (" (pickle)" if info.pickled else "")
    pending = "-" if info.format == "diffusers" else PENDING_HASH
    return [name, KIND_LABELS[info.kind], base, format_size(info.size_bytes), pending]


def _tooltip(info: ModelInfo) -> str:
    lines = [str(info.path)]
    if "error" in info.details:
        lines.append(f"Cannot be used: {info.details['error']}")
    if info.details.get("note"):
        lines.append(str(info.details["note"]))
    return "\n".join(lines)
