"""What the window shows before there is a clip: the ways to begin and the recent projects.

Each way is a command link bound to the window's own action, so its name, shortcut and
enabled state are the menu's; the recent list mirrors File > Open recent.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtGui import QAction, QFont, QKeySequence, QShowEvent
from PySide6.QtWidgets import (
    QCommandLinkButton,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

_COLUMN_WIDTH = 460
_MAX_RECENT = 8


class StartPage(QWidget):
    """The ways to begin (`ways`: each an action and a line saying what it does) and the
    recent projects; `recent_chosen` gives the path of the one clicked."""

    recent_chosen = Signal(str)

    def __init__(self, ways: list[tuple[QAction, str]], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("start_page")
        self.buttons: list[QCommandLinkButton] = []
        column = QVBoxLayout()
        column.setSpacing(4)
        column.addWidget(self._heading("zvstudio", 22))
        tagline = QLabel("Re-render video with image diffusion models, frame by frame in style")
        tagline.setWordWrap(True)
        column.addWidget(tagline)
        column.addSpacing(12)
        for action, detail in ways:
            column.addWidget(self._way(action, detail))
        hint = QLabel("Or drop a video file, a folder of frames or a project on this window.")
        hint.setWordWrap(True)
        hint.setEnabled(False)  # greyed: a hint, not a control
        column.addWidget(hint)
        column.addSpacing(16)
        self.recent_heading = self._heading("Recent projects", 13)
        column.addWidget(self.recent_heading)
        self.recent_box = QVBoxLayout()
        self.recent_box.setSpacing(0)
        column.addLayout(self.recent_box)
        column.addStretch(1)
        self._lay_out(column)
        self.set_recent([])

    def _lay_out(self, column: QVBoxLayout) -> None:
        inner = QWidget()
        inner.setFixedWidth(_COLUMN_WIDTH)
        inner.setLayout(column)
        centred = QWidget()
        row = QHBoxLayout(centred)
        row.addStretch(1)
        row.addWidget(inner)
        row.addStretch(1)
        scroll = QScrollArea(self)  # a small window scrolls instead of squeezing the links
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(centred)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 24, 0, 0)
        outer.addWidget(scroll)

    @staticmethod
    def _heading(text: str, points: int) -> QLabel:
        label = QLabel(text)
        font = QFont(label.font())
        font.setPointSize(points)
        font.setBold(True)
        label.setFont(font)
        return label

    def _way(self, action: QAction, detail: str) -> QCommandLinkButton:
        title = action.text().replace("&", "").rstrip("…")
        shortcut = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        button = QCommandLinkButton(title, detail + (f"  ({shortcut})" if shortcut else ""))
        button.clicked.connect(action.trigger)
        button.setEnabled(action.isEnabled())
        action.enabledChanged.connect(button.setEnabled)
        self.buttons.append(button)
        return button

    def set_recent(self, paths: list[str]) -> None:
        """Show these projects (newest first); one that is gone is shown but cannot be opened."""
        self._paths = list(paths)
        while self.recent_box.count():
            item = self.recent_box.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        for path in paths[:_MAX_RECENT]:
            self.recent_box.addWidget(self._recent(Path(path)))
        self.recent_heading.setVisible(bool(paths))

    def showEvent(self, event: QShowEvent) -> None:
        self.set_recent(self._paths)  # projects may have been moved or deleted meanwhile
        super().showEvent(event)

    def _recent(self, path: Path) -> QCommandLinkButton:
        there = path.is_file()
        where = str(path.parent) if there else f"not found: {path.parent}"
        button = QCommandLinkButton(path.stem, where)
        button.setToolTip(str(path))
        button.setEnabled(there)
        button.clicked.connect(lambda _=False, p=str(path): self.recent_chosen.emit(p))
        return button

    def recent_buttons(self) -> list[QCommandLinkButton]:
        return [
            self.recent_box.itemAt(i).widget()
            for i in range(self.recent_box.count())
            if self.recent_box.itemAt(i).widget() is not None
        ]
