"""Help > Keyboard shortcuts: every menu command that has keys, read from the menus themselves
(so the list cannot fall behind them), grouped by menu, with a filter."""

from __future__ import annotations

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLineEdit,
    QMenu,
    QMenuBar,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)


def menu_shortcuts(bar: QMenuBar) -> list[tuple[str, str, str]]:
    """(menu, command, keys) for each command with keys in `bar`'s menus and their submenus,
    in menu order; names without their & accelerators."""
    found: list[tuple[str, str, str]] = []

    def walk(menu: QMenu, title: str) -> None:
        for action in menu.actions():
            if action.menu() is not None:
                walk(action.menu(), title)
            elif not action.isSeparator() and not action.shortcut().isEmpty():
                keys = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
                found.append((title, _plain(action.text()), keys))

    for action in bar.actions():
        if isinstance(action, QAction) and action.menu() is not None:
            walk(action.menu(), _plain(action.text()))
    return found


def _plain(text: str) -> str:
    return text.replace("&&", "\0").replace("&", "").replace("\0", "&").rstrip("…").strip()


class ShortcutsDialog(QDialog):
    """The shortcuts of `bar`'s menus; typing in the filter keeps the rows whose command or
    keys contain the text."""

    def __init__(self, bar: QMenuBar, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter: a command or a key")
        self.filter_edit.setClearButtonEnabled(True)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Command", "Keys"])
        self.tree.setRootIsDecorated(False)
        for menu, command, keys in menu_shortcuts(bar):
            group = self._group(menu)
            QTreeWidgetItem(group, [command, keys])
        self.tree.expandAll()
        self.tree.resizeColumnToContents(0)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.filter_edit)
        layout.addWidget(self.tree)
        layout.addWidget(buttons)
        self.filter_edit.textChanged.connect(self._filter)
        self.resize(480, 560)

    def _group(self, menu: str) -> QTreeWidgetItem:
        for index in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(index)
            if item.text(0) == menu:
                return item
        item = QTreeWidgetItem(self.tree, [menu])
        item.setFirstColumnSpanned(True)
        font = item.font(0)
        font.setBold(True)
        item.setFont(0, font)
        return item

    def _filter(self, text: str) -> None:
        wanted = text.strip().lower()
        for index in range(self.tree.topLevelItemCount()):
            group = self.tree.topLevelItem(index)
            shown = 0
            for row in range(group.childCount()):
                item = group.child(row)
                match = wanted in item.text(0).lower() or wanted in item.text(1).lower()
                item.setHidden(not match)
                shown += match
            group.setHidden(shown == 0)

    def visible_rows(self) -> list[tuple[str, str]]:
        """(command, keys) of the rows the filter leaves shown."""
        rows = []
        for index in range(self.tree.topLevelItemCount()):
            group = self.tree.topLevelItem(index)
            for row in range(group.childCount()):
                item = group.child(row)
                if not group.isHidden() and not item.isHidden():
                    rows.append((item.text(0), item.text(1)))
        return rows
