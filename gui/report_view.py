"""One model version's report on screen: a summary line, per-class precision and recall, accuracy
per source, and the confusion matrix, whose cells show exactly their images when clicked. Plain
words first ("correct when it says cats"), the statistician's word in brackets and tooltips."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTabWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.insight.report import Report
from gui.agreement_view import AgreementSection

NO_MODEL_TEXT = "No model yet: train one in the training panel."
RIGHT_COLOR = QColor(0, 158, 115)
WRONG_COLOR = QColor(213, 94, 0)


def percent(value: float | None) -> str:
    """A fraction as a percentage; a dash for a number that could not be measured."""
    return "—" if value is None or not np.isfinite(value) else f"{value * 100:.1f}%"


CLASS_COLUMNS = {
    "Class": "",
    "Correct when it says\nthis class (precision)":
        "Precision: of the images the model gives this class, the share that really are",
    "Found of all images\nof this class (recall)":
        "Recall: of the images labeled with this class, the share the model recognized",
    "Images": "Labeled images of this class that were judged",
}
SOURCE_COLUMNS = {
    "Source": "Where the images came from (a camera, a folder, an import)",
    "Right": "Accuracy: the share of this source's images the model got right",
    "Images": "Labeled images of this source that were judged",
}


def readonly_table(columns: Sequence[str], tips: dict[str, str] | None = None) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    for column, name in enumerate(columns):
        table.horizontalHeaderItem(column).setToolTip((tips or {}).get(name, ""))
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    table.horizontalHeader().setStretchLastSection(True)
    return table



def twin_sentence(metrics) -> str:
    """What the leak guard did, in words: tested images whose look-alike would have been in training,
    and the accuracy on the tested images that have no look-alike at all ("" when no image has one)."""
    before, now, without = (metrics.n_val_with_twin_before_guard, metrics.n_val_with_twin,
                            metrics.accuracy_without_twins)
    if not before and not now:
        return ""
    text = ""
    if before:
        text += (f" {before} tested image{'s' if before != 1 else ''} would have had a look-alike among the images "
                 "it learned from; Sortlab kept each group of look-alikes on one side.")
    if now and without is not None:
        text += (f" On the tested images without any look-alike it is right on <b>{percent(without)}</b> "
                 f"({now} with one left out).")
    return text

class ReportView(QWidget):
    """Shows a ``Report``; a click on a confusion-matrix cell emits ``show_images(ids, description)``."""

    show_images = Signal(object, str)  # image ids, description

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.report: Report | None = None
        self.version: int | None = None  # whose report is shown
        self.summary = QLabel(NO_MODEL_TEXT)
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.class_table = readonly_table(list(CLASS_COLUMNS), CLASS_COLUMNS)
        self.source_table = readonly_table(list(SOURCE_COLUMNS), SOURCE_COLUMNS)
        self.matrix = QTableWidget(0, 0)
        self.matrix.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.matrix.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.matrix.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.matrix.horizontalHeader().setMinimumSectionSize(70)
        self.matrix.cellClicked.connect(self.open_cell)
        matrix_hint = QLabel("Rows: the true class. Columns: what the model said. Click a cell to see those images.")
        matrix_hint.setWordWrap(True)
        self.agreement = AgreementSection()  # team projects: where two people labeled the same images
        self.agreement.show_images.connect(self.show_images)

        # One table at a time, at the panel's full width: side by side, a dock cut their columns.
        self.tables = QTabWidget()
        self.tables.addTab(self.class_table, "Each class")
        self.tables.addTab(self.source_table, "Each source")
        self.tables.setTabToolTip(1, "Whether the model does as well on the images of every camera or folder")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addWidget(self.tables, 1)
        layout.addWidget(QLabel("<b>Confusion matrix</b>"))
        layout.addWidget(matrix_hint)
        layout.addWidget(self.matrix, 1)
        layout.addWidget(self.agreement)

    def say(self, text: str, details: str = "") -> None:
        """A line in place of the summary (a report on its way, or one that failed: ``details``
        says why, in the tooltip)."""
        self.summary.setText(text)
        self.summary.setToolTip(details)

    def show_report(self, report: Report | None, version: int | None) -> None:
        self.report = report
        self.version = version
        self.class_table.setRowCount(0)
        self.source_table.setRowCount(0)
        self.matrix.clear()
        self.matrix.setRowCount(0)
        self.matrix.setColumnCount(0)
        self.agreement.show_agreement(report.agreement if report is not None else None)
        if report is None or report.n == 0:
            self.say(NO_MODEL_TEXT if version is None else f"Version {version} has no predictions for labeled images yet.")
            return
        metrics = report.metrics
        self.say(
            f"<b>Version {version}</b> is right on <b>{percent(metrics.accuracy)}</b> of {report.n} "
            f"images ({report.basis}). Counting every class the same, however few its images: "
            f"<b>{percent(metrics.balanced_accuracy)}</b>."
            + (f" Ordered levels: within one level on <b>{percent(metrics.within_one_accuracy)}</b>, "
               f"off by <b>{metrics.mean_absolute_error_levels:.2f}</b> levels on average."
               if metrics.ordered else "")
            + twin_sentence(metrics)
        )
        self.summary.setToolTip(
            f"Accuracy {percent(metrics.accuracy)}; balanced accuracy {percent(metrics.balanced_accuracy)} "
            "(the average of the per-class recalls)."
        )
        self.class_table.setRowCount(len(report.class_names))
        for row, name in enumerate(report.class_names):
            scores = metrics.per_class[name]
            cells = (
                (name, ""),
                (percent(scores.precision), f"When the model says {name}, it is right {percent(scores.precision)} "
                                            "of the time (precision)."),
                (percent(scores.recall), f"Of the {scores.support} images labeled {name}, the model recognized "
                                         f"{percent(scores.recall)} (recall)."),
                (str(scores.support), ""),
            )
            for column, (text, tip) in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(tip)
                self.class_table.setItem(row, column, item)
        self.source_table.setRowCount(len(metrics.per_source))
        for row, (name, score) in enumerate(metrics.per_source.items()):
            for column, text in enumerate((name, percent(score.accuracy), str(score.n))):
                self.source_table.setItem(row, column, QTableWidgetItem(text))
        self._show_matrix(report)

    def _show_matrix(self, report: Report) -> None:
        names = report.class_names
        confusion = report.confusion
        k = len(names)
        self.matrix.setRowCount(k)
        self.matrix.setColumnCount(k)
        self.matrix.setVerticalHeaderLabels([f"{n} (true)" for n in names])
        self.matrix.setHorizontalHeaderLabels([f"said {n}" for n in names])
        peak = max(int(confusion.max()), 1)
        text_color = self.palette().color(QPalette.ColorRole.Text)
        for i in range(k):
            for j in range(k):
                count = int(confusion[i, j])
                item = QTableWidgetItem(str(count))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                strength = count / peak
                base = QColor(RIGHT_COLOR if i == j else WRONG_COLOR)
                base.setAlpha(int(25 + 200 * strength) if count else 0)
                item.setBackground(QBrush(base))
                item.setForeground(QBrush(QColor("white") if strength > 0.6 else text_color))
                item.setToolTip(
                    f"{count} image{'s' if count != 1 else ''} of {names[i]} "
                    f"{'correctly recognized' if i == j else 'taken for ' + names[j]}; click to see them"
                )
                self.matrix.setItem(i, j, item)

    def cell_images(self, row: int, column: int) -> list[int]:
        if self.report is None:
            return []
        return list(self.report.cell_images.get((row, column), []))

    def open_cell(self, row: int, column: int) -> None:
        """Show exactly the images whose true class is row and predicted class is column."""
        if self.report is None:
            return
        names = self.report.class_names
        description = (
            f"{names[row]} recognized correctly" if row == column else f"{names[row]} taken for {names[column]}"
        )
        self.show_images.emit(self.cell_images(row, column), description)
