"""The classes panel: the user's sorting scheme with counts and shortcut keys, and its editing.

Class edits are small writes done directly (they are not label changes, so they are not on the
undo stack); deleting asks first and says how many labels go away.
"""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QColorDialog,
    QDialog,
    QGridLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from storage import catalog
from storage.class_order import classes_ordered, set_classes_ordered
from storage.errors import ProjectError

CLASS_ID_ROLE = Qt.ItemDataRole.UserRole + 1


def color_swatch(color: str, side: int = 16) -> QIcon:
    pixmap = QPixmap(side, side)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setBrush(QColor(color))
    painter.setPen(QColor(color).darker(130))
    painter.drawRoundedRect(1, 1, side - 2, side - 2, 4, 4)
    painter.end()
    return QIcon(pixmap)


def _item_text(info: catalog.ClassInfo) -> str:
    return f"{info.shortcut or ' '}   {info.name}   ({info.count})"


class ClassListWidget(QListWidget):
    """Reorderable by drag and drop; ``order_changed`` reports the new order of class ids."""

    order_changed = Signal(list)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setDragDropMode(QAbstractItemView.DragDropMode.InternalMove)
        self.setDefaultDropAction(Qt.DropAction.MoveAction)
        self.setIconSize(QSize(16, 16))
        self.setSpacing(2)

    def dropEvent(self, event) -> None:
        super().dropEvent(event)
        self.order_changed.emit([self.item(i).data(CLASS_ID_ROLE) for i in range(self.count())])


_FAILED = object()  # what _edit returns when a change was refused (None is a valid result)
QUESTION_MIN_WIDTH = 380  # QInputDialog.getText sizes itself to its label and clips its title


def name_dialog(parent, title: str, label: str, text: str = "") -> QInputDialog:
    """A one-line question wide enough for its title."""
    dialog = QInputDialog(parent)
    dialog.setWindowTitle(title)
    dialog.setLabelText(label)
    dialog.setTextValue(text)
    dialog.setMinimumWidth(max(QUESTION_MIN_WIDTH, dialog.fontMetrics().horizontalAdvance(title) + 160))
    return dialog


def ask_name(parent, title: str, label: str, text: str = "") -> str | None:
    """The name the user typed, or None when they cancelled."""
    dialog = name_dialog(parent, title, label, text)
    return dialog.textValue() if dialog.exec() == QDialog.DialogCode.Accepted else None


class ClassesPanel(QWidget):
    """Lists classes (key, colour, name, count); emits ``classes_changed`` after any edit and
    ``class_activated(class_id)`` when the user double-clicks one (to label the selection)."""

    classes_changed = Signal()
    class_activated = Signal(int)
    class_deleted = Signal(int, str)  # id and name of a class just deleted (its labels are gone)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.project = None
        self.classes: list[catalog.ClassInfo] = []
        self.unlabeled_count = 0
        self.list = ClassListWidget()
        self.list.order_changed.connect(self._reordered)
        self.list.itemDoubleClicked.connect(lambda item: self.class_activated.emit(item.data(CLASS_ID_ROLE)))
        self.list.currentRowChanged.connect(lambda _row: self._update_buttons())
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: palette(placeholder-text);")

        self.read_only = False  # a team project role that may not change classes (gui.team_session)
        self.buttons: dict[str, QToolButton] = {}
        grid = QGridLayout()  # two rows of three: the panel stays narrow beside the grid
        grid.setSpacing(2)
        for position, (key, text, tip, slot) in enumerate((
            ("add", "Add", "Add a class (Ctrl+K)", self.add_class_interactively),
            ("rename", "Rename", "Rename the chosen class", self.rename_current),
            ("color", "Colour", "Change the chosen class's colour", self.recolor_current),
            ("up", "▲", "Move up (its key number changes too)", lambda: self.move_current(-1)),
            ("down", "▼", "Move down (its key number changes too)", lambda: self.move_current(1)),
            ("delete", "Delete", "Delete the chosen class", self.delete_current),
        )):
            button = QToolButton()
            button.setText(text)
            button.setToolTip(tip)
            button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            button.clicked.connect(slot)
            self.buttons[key] = button
            grid.addWidget(button, position // 3, position % 3)

        self.ordered = QCheckBox("Ordered levels (top = lowest)")
        self.ordered.setToolTip("The classes are levels of one scale, e.g. how full a bin is: the list order is the "
                                "level order. Training and the model report then treat a near miss as a small error.")
        self.ordered.toggled.connect(lambda on: self._edit(lambda: set_classes_ordered(self.project, on)))

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.ordered)
        layout.addLayout(grid)
        layout.addWidget(self.hint)
        self._update_buttons()

    # -- data -----------------------------------------------------------------------------------
    def set_project(self, project) -> None:
        self.project = project
        self.refresh()

    def refresh(self) -> None:
        """Re-read classes and counts (a grouped count over the labels index: cheap)."""
        current = self.current_class_id()
        self.classes = catalog.list_classes(self.project) if self.project is not None else []
        self.ordered.blockSignals(True)
        self.ordered.setChecked(self.project is not None and classes_ordered(self.project))
        self.ordered.blockSignals(False)
        self.list.clear()
        for info in self.classes:
            item = QListWidgetItem(color_swatch(info.color), _item_text(info))
            item.setData(CLASS_ID_ROLE, info.id)
            item.setToolTip(f"Press {info.shortcut} (or double-click here) to label the selected images "
                            f"'{info.name}'." if info.shortcut else
                            f"'{info.name}' has no number key (only the first ten do): double-click it to label "
                            "the selected images.")
            self.list.addItem(item)
            if info.id == current:
                self.list.setCurrentItem(item)
        if self.project is None:
            self.hint.setText("")
        elif not self.classes:
            self.hint.setText("No classes yet. Add one for each kind of image you want to sort, e.g. "
                              "“cans”, “bottles”, “paper”.")
        else:
            self.hint.setText("Keys 1–9 and 0 (or a double-click on a class) label the selected images; "
                              "Backspace removes the label. Drag classes to reorder them.")
        self._update_buttons()

    def show_counts(self, per_class: dict[int, int]) -> None:
        """New label counts ({class id: labels}) after labeling: the texts change in place, with no
        re-read of the classes (labeling never adds or removes one; if the classes differ, re-read)."""
        if not set(per_class) <= {info.id for info in self.classes}:
            self.refresh()
            return
        self.classes = [replace(info, count=per_class.get(info.id, 0)) for info in self.classes]
        for row, info in enumerate(self.classes):
            item = self.list.item(row)
            if item is None or item.data(CLASS_ID_ROLE) != info.id:
                self.refresh()
                return
            text = _item_text(info)
            if item.text() != text:
                item.setText(text)

    def current_class_id(self) -> int | None:
        item = self.list.currentItem()
        return item.data(CLASS_ID_ROLE) if item is not None else None

    def class_for_key(self, key: str) -> catalog.ClassInfo | None:
        return next((info for info in self.classes if info.shortcut == key), None)

    def _current_info(self) -> catalog.ClassInfo | None:
        class_id = self.current_class_id()
        return next((info for info in self.classes if info.id == class_id), None)

    def _update_buttons(self) -> None:
        has_project = self.project is not None and not self.read_only
        chosen = self.current_class_id() is not None
        self.buttons["add"].setEnabled(has_project)
        self.ordered.setEnabled(has_project and len(self.classes) >= 2)
        for key in ("rename", "color", "up", "down", "delete"):
            self.buttons[key].setEnabled(has_project and chosen)

    # -- edits ----------------------------------------------------------------------------------
    def add_class(self, name: str, color: str | None = None) -> catalog.ClassInfo | None:
        info = self._edit(lambda: catalog.add_class(self.project, name, color))
        return None if info is _FAILED else info

    def add_class_interactively(self) -> None:
        name = ask_name(self, "Add a class", "Name of the new class:")
        if name is not None and name.strip():
            info = self.add_class(name)
            if info is not None:
                self.select_class(info.id)

    def rename_current(self) -> None:
        info = self._current_info()
        if info is None:
            return
        name = ask_name(self, "Rename a class", f"New name for “{info.name}”:", text=info.name)
        if name is not None and name.strip() and name != info.name:
            self._edit(lambda: catalog.rename_class(self.project, info.id, name))

    def recolor_current(self) -> None:
        info = self._current_info()
        if info is None:
            return
        color = QColorDialog.getColor(QColor(info.color), self, f"Colour of “{info.name}”")
        if color.isValid():
            self._edit(lambda: catalog.recolor_class(self.project, info.id, color.name()))

    def move_current(self, step: int) -> None:
        row = self.list.currentRow()
        target = row + step
        if row < 0 or not (0 <= target < len(self.classes)):
            return
        order = [info.id for info in self.classes]
        order[row], order[target] = order[target], order[row]
        self._edit(lambda: catalog.reorder_classes(self.project, order))

    def delete_current(self, *, confirm: bool = True) -> None:
        info = self._current_info()
        if info is None:
            return
        if confirm and not self._confirm_delete(info):
            return
        if self._edit(lambda: catalog.remove_class(self.project, info.id)) is not _FAILED:
            self.class_deleted.emit(info.id, info.name)

    def _confirm_delete(self, info: catalog.ClassInfo) -> bool:
        labels = f"{info.count} image{'s' if info.count != 1 else ''}"
        text = (f"Delete the class “{info.name}”?\n\n{labels} labeled “{info.name}” will become unlabeled. "
                "The images themselves stay in the project. This cannot be undone.")
        answer = QMessageBox.question(self, "Delete class", text,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
                                      QMessageBox.StandardButton.Cancel)
        return answer == QMessageBox.StandardButton.Yes

    def select_class(self, class_id: int) -> None:
        for row in range(self.list.count()):
            if self.list.item(row).data(CLASS_ID_ROLE) == class_id:
                self.list.setCurrentRow(row)

    def _reordered(self, order: list[int]) -> None:
        self._edit(lambda: catalog.reorder_classes(self.project, order))

    def _edit(self, change):
        """Run a catalog change, then refresh and emit classes_changed; _FAILED if it was refused."""
        if self.project is None:
            return _FAILED
        try:
            result = change()
        except ProjectError as exc:
            QMessageBox.warning(self, "Classes", str(exc))
            self.refresh()
            return _FAILED
        self.refresh()
        self.classes_changed.emit()
        return result
