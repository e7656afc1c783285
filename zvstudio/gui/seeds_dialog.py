"""Render > Try seeds: the key rendered with a few seeds side by side, to pick one."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QGridLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from zvstudio.gui.viewer import numpy_to_qimage

_CELL_WIDTH = 320  # pixels per image: four fit a laptop screen in two rows
_COLUMNS = 2


class SeedsDialog(QDialog):
    """The variations of one key, (seed, image) each, with a button per seed; after `exec()`,
    `chosen` is the seed picked, or None."""

    def __init__(
        self, frame: int, variations: list[tuple[int, np.ndarray]], target: str, parent=None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Seeds for frame {frame}")
        self.chosen: int | None = None
        self.buttons: dict[int, QPushButton] = {}
        grid = QGridLayout()
        for index, (seed, image) in enumerate(variations):
            grid.addWidget(self._cell(seed, image), index // _COLUMNS, index % _COLUMNS)
        note = QLabel(f"The seed you pick becomes {target}.")
        note.setWordWrap(True)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        close.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addWidget(note)
        layout.addWidget(close)

    def _cell(self, seed: int, image: np.ndarray) -> QWidget:
        picture = QLabel()
        pixmap = QPixmap.fromImage(numpy_to_qimage(image))
        picture.setPixmap(pixmap.scaledToWidth(_CELL_WIDTH, Qt.SmoothTransformation))
        button = QPushButton(f"Use seed {seed}")
        button.clicked.connect(lambda _=False, s=seed: self._choose(s))
        self.buttons[seed] = button
        cell = QWidget()
        box = QVBoxLayout(cell)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(picture)
        box.addWidget(button)
        return cell

    def _choose(self, seed: int) -> None:
        self.chosen = seed
        self.accept()
