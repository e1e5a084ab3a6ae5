"""Edit > Labels As They Were At…: give the selected images (or all) the labels they had at a time the
user picks, from the label history, as one step of the undo history."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import TYPE_CHECKING

from PySide6.QtCore import QDateTime, QTimer
from PySide6.QtGui import QUndoCommand
from PySide6.QtWidgets import (
    QButtonGroup,
    QDateTimeEdit,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLayout,
    QLabel,
    QRadioButton,
    QVBoxLayout,
)

from engine.runtime.jobs import JobContext, JobOutcome, JobStatus
from gui.labeling import count_text
from storage.catalog import LabelState, label_states, restore_labels
from storage.label_history import AsOfPlan, apply_labels_as_of, plan_labels_as_of

if TYPE_CHECKING:
    from gui.main_window import MainWindow


def as_of_text(count: int, when: dt.datetime) -> str:
    return f"Labels of {count_text(count, 'image')} as they were at {when.astimezone():%Y-%m-%d %H:%M}"


class LabelsAsOfCommand(QUndoCommand):
    """Going back to the labels of ``when``: the first redo writes them (recorded in the label
    history as 'as of'), undo puts back what the images had, redo puts back what the first run wrote."""

    def __init__(self, project, when: dt.datetime, image_ids: list[int] | None, text: str, on_changed=None):
        super().__init__(text)
        self.project = project
        self.when = when
        self.image_ids = image_ids
        self.on_changed = on_changed
        self.before: list[LabelState] | None = None
        self.after: list[LabelState] | None = None

    def redo(self) -> None:
        if self.before is None:
            self.before = apply_labels_as_of(self.project, self.when, self.image_ids)
        else:
            restore_labels(self.project, self.after or [])
        self._notify()

    def undo(self) -> None:
        self.after = label_states(self.project, [s.image_id for s in self.before or []])
        restore_labels(self.project, self.before or [])
        self._notify()

    def _notify(self) -> None:
        if self.on_changed is not None and self.before:
            self.on_changed([s.image_id for s in self.before])


def plan_job(_context: JobContext, project, when: dt.datetime, image_ids: list[int] | None) -> AsOfPlan:
    return plan_labels_as_of(project, when, image_ids)


class LabelsAsOfDialog(QDialog):
    def __init__(self, window: MainWindow):
        super().__init__(window)
        self.window = window
        self.runner = window.backups.runner
        self.selection = window.selected_image_ids()
        self.plan: AsOfPlan | None = None
        self.setWindowTitle("Labels As They Were At")
        self.resize(560, 250)

        intro = QLabel("Sortlab remembers every label change (who, what, when). Pick a moment: the images get "
                       "the labels they had then. It is one step in Edit > Undo.")
        intro.setWordWrap(True)
        self.when_edit = QDateTimeEdit(QDateTime.currentDateTime().addSecs(-3600))
        self.when_edit.setCalendarPopup(True)
        self.when_edit.setDisplayFormat("ddd yyyy-MM-dd HH:mm")
        self.when_edit.setMaximumDateTime(QDateTime.currentDateTime())
        self.selected_radio = QRadioButton(f"The selected images ({self.selection and len(self.selection) or 0:,})")
        self.all_radio = QRadioButton("All images")
        group = QButtonGroup(self)
        group.addButton(self.selected_radio)
        group.addButton(self.all_radio)
        self.selected_radio.setEnabled(bool(self.selection))
        (self.selected_radio if self.selection else self.all_radio).setChecked(True)
        self.preview = QLabel("")
        self.preview.setWordWrap(True)
        self.preview.setMinimumHeight(3 * self.preview.fontMetrics().lineSpacing())

        form = QFormLayout()
        form.addRow("As they were at:", self.when_edit)
        form.addRow("For:", self.selected_radio)
        form.addRow("", self.all_radio)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.apply_button = self.buttons.addButton("Go Back to Those Labels", QDialogButtonBox.ButtonRole.AcceptRole)
        self.buttons.accepted.connect(self.apply)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.preview)
        layout.addWidget(self.buttons)
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)  # the preview may wrap to more lines

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(250)
        self._debounce.timeout.connect(self._plan)
        self.when_edit.dateTimeChanged.connect(lambda _v: self._debounce.start())
        self.selected_radio.toggled.connect(lambda _v: self._debounce.start())
        self._plan()

    def when(self) -> dt.datetime:
        return self.when_edit.dateTime().toPython().astimezone()  # local wall time -> aware

    def image_ids(self) -> list[int] | None:
        return self.selection if self.selected_radio.isChecked() else None

    def _plan(self) -> None:
        self.apply_button.setEnabled(False)
        self.preview.setText("Looking at the label history…")
        when, ids = self.when(), self.image_ids()
        self.runner.submit("labels as of", plan_job, self.window.project, when, ids,
                           on_done=lambda outcome: self._planned(outcome, when, ids))

    def _planned(self, outcome: JobOutcome, when: dt.datetime, ids) -> None:
        if (when, ids) != (self.when(), self.image_ids()):
            return  # the user moved on; the newer plan is on its way
        if outcome.status is not JobStatus.DONE:
            self.preview.setText(f"Cannot read the label history: {outcome.error}")
            return
        self.plan = plan = outcome.result
        names = {c.id: c.name for c in self.window.classes_panel.classes}
        moves = Counter(names.get(c, "?") if c is not None else "no label" for c in plan.changes.values())
        if plan.changes:
            text = (f"<b>{count_text(len(plan.changes), 'label')} will change</b> (of {plan.considered:,} images): "
                    + ", ".join(f"{n:,} to “{name}”" if name != "no label" else f"{n:,} to no label"
                                for name, n in moves.most_common(6)) + ".")
        else:
            text = f"The {count_text(plan.considered, 'image')} had the same labels then as now."
        if plan.missing_classes:
            text += (f"<br>{count_text(len(plan.missing_classes), 'image')} had a class that was removed since; "
                     "they keep their label.")
        self.preview.setText(text)
        self.apply_button.setEnabled(bool(plan.changes))

    def apply(self) -> None:
        if self.plan is None or not self.plan.changes:
            return
        when, ids = self.when(), self.image_ids()
        command = LabelsAsOfCommand(self.window.project, when, ids, as_of_text(len(self.plan.changes), when),
                                    self.window.notify_labels_changed)
        self.window.undo_stack.push(command)
        self.window.show_message(f"{command.text()}. Edit > Undo brings back the labels of a moment ago.", 8000)
        self.accept()
