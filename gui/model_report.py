"""The model report: how good is the model, where does it go wrong, and which version is in use.

``build_report`` (no Qt) turns true and predicted class ids into accuracy, balanced accuracy,
per-class precision/recall, per-source accuracy and a confusion matrix that remembers which images
fall in each cell. ``ModelReport`` shows it; clicking a confusion-matrix cell emits
``show_images(ids, description)`` with exactly the images of that cell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from gui.training_panel import metric

REPORT_JOB = "model-report"


@dataclass
class Report:
    class_ids: list[int]
    class_names: list[str]
    n: int
    accuracy: float
    balanced_accuracy: float
    precision: np.ndarray  # per class, nan where never predicted
    recall: np.ndarray  # per class, nan where no true images
    support: np.ndarray  # true images per class
    confusion: np.ndarray  # [true, predicted] counts
    cell_images: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    sources: list[tuple[str, float, int]] = field(default_factory=list)  # (source, accuracy, n)
    basis: str = ""  # which images were evaluated, in words


def build_report(
    image_ids: Sequence[int], y_true: Sequence[int], y_pred: Sequence[int],
    class_ids: Sequence[int], class_names: Sequence[str],
    sources: Sequence[str] | None = None, basis: str = "",
) -> Report:
    """Metrics over images with a true and a predicted class (ids in ``class_ids`` order)."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    k = len(class_ids)
    t = _class_index(class_ids, y_true)
    p = _class_index(class_ids, y_pred)
    keep = (t >= 0) & (p >= 0)
    image_ids, t, p = image_ids[keep], t[keep], p[keep]
    source_arr = np.asarray(list(sources), dtype=object)[keep] if sources is not None else None
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (t, p), 1)
    correct = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, correct / support, np.nan)
        precision = np.where(predicted > 0, correct / predicted, np.nan)
    n = int(len(t))
    accuracy = float(correct.sum() / n) if n else float("nan")
    balanced = float(np.nanmean(recall)) if n and np.isfinite(recall).any() else float("nan")
    cells: dict[tuple[int, int], list[int]] = {}
    if n:
        order = np.lexsort((image_ids, p, t))
        keys = t[order] * max(k, 1) + p[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for s, e in zip(starts, ends):
            cells[(int(t[order[s]]), int(p[order[s]]))] = [int(i) for i in image_ids[order[s:e]]]
    per_source = []
    if source_arr is not None and n:
        for name in sorted(set(source_arr.tolist())):
            mask = source_arr == name
            per_source.append((str(name), float(np.mean(t[mask] == p[mask])), int(mask.sum())))
    return Report(list(map(int, class_ids)), list(class_names), n, accuracy, balanced, precision, recall,
                  support, confusion, cells, per_source, basis)


def _class_index(class_ids: Sequence[int], values: np.ndarray) -> np.ndarray:
    """Position of each value in ``class_ids`` (-1 when absent), vectorized for 100k images."""
    from engine.projection import align

    keys = np.asarray(list(class_ids), dtype=np.int64)
    return align(keys, np.arange(len(keys), dtype=np.int64), values, -1)


def project_report(project, version: int | None = None, predictions_fn: Callable | None = None) -> Report | None:
    """The report of one model version (the active one by default) from the project's predictions.

    Honest numbers first: cross-validated (out-of-fold) predictions of labeled images when the
    store has them, else the labeled validation images, else all labeled images (optimistic).
    It reads every prediction: the window runs it as a background job (``report_job``)."""
    from engine.projection import point_attributes, prediction_arrays
    from storage.catalog import list_classes

    if predictions_fn is None:
        ids, predicted, out_of_fold = prediction_arrays(project, version)
    else:
        table = predictions_fn(project, version) or {}
        ids = np.fromiter((int(i) for i in table), dtype=np.int64, count=len(table))
        predicted = np.asarray([_class_id(table[int(i)]) for i in ids], dtype=np.int64)
        out_of_fold = np.asarray([bool(getattr(table[int(i)], "out_of_fold", False)) for i in ids], dtype=bool)
    if not len(ids):
        return None
    attributes = point_attributes(project, ids)
    labeled = attributes.class_ids >= 0
    if (labeled & out_of_fold).any():
        use, basis = labeled & out_of_fold, "cross-validated predictions of your labeled images"
    elif (labeled & (attributes.splits == 1)).any():
        use, basis = labeled & (attributes.splits == 1), "your labeled validation images"
    else:
        use, basis = labeled, "all labeled images, including training images (optimistic)"
    classes = list_classes(project)
    sources = [attributes.source_names[c] or "(no source)" for c in attributes.source_codes[use]]
    return build_report(ids[use], attributes.class_ids[use], predicted[use], [c.id for c in classes],
                        [c.name for c in classes], sources, basis)


def report_job(context, report_fn: Callable[[Any, int | None], Report | None], project, version: int | None):
    """Background job body: the report of one version (plain data back to the GUI thread)."""
    context.check_cancelled()
    return report_fn(project, version)


def _class_id(prediction: Any) -> int:
    value = getattr(prediction, "class_id", prediction)
    return -1 if value is None else int(value)


def _fmt(value: float) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value * 100:.1f}%"


def _readonly_table(columns: Sequence[str]) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    table.horizontalHeader().setStretchLastSection(True)
    return table


class ModelReport(QWidget):
    """Model versions (make one active) and the selected version's report."""

    show_images = Signal(object, str)  # image ids, description
    active_changed = Signal(int)
    report_shown = Signal(object)  # the version whose report (or lack of one) is now on screen

    def __init__(
        self,
        project=None,
        *,
        list_models_fn: Callable | None = None,
        set_active_fn: Callable | None = None,
        report_fn: Callable[[Any, int | None], Report | None] | None = None,
        runner=None,
        parent: QWidget | None = None,
    ):
        """``runner`` (a QtJobRunner for reads) computes reports in the background: a report reads
        every prediction and label, which would freeze the window at 100k images. Without one
        the report is computed at once, on the calling thread."""
        super().__init__(parent)
        self.project = project
        self.runner = runner
        self._list_models_fn = list_models_fn
        self._set_active_fn = set_active_fn
        self._report_fn = report_fn or (lambda project, version: project_report(project, version))
        self.report: Report | None = None
        self.report_version: int | None = None
        self._versions: list[Any] = []
        self._generation = 0  # reports of older requests are dropped when they arrive

        self.versions_table = _readonly_table(["Version", "Date", "Method", "Network", "Labeled", "Accuracy", "In use"])
        self.versions_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.versions_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.versions_table.itemSelectionChanged.connect(self._version_selected)
        self.activate_button = QPushButton("Use this version")
        self.activate_button.setToolTip("Make the selected version the one that sorts and suggests")
        self.activate_button.setEnabled(False)
        self.activate_button.clicked.connect(self.activate_selected)

        self.summary = QLabel("No model yet: train one in the training panel.")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.class_table = _readonly_table(["Class", "Precision", "Recall", "Images"])
        self.source_table = _readonly_table(["Source", "Accuracy", "Images"])
        self.matrix = QTableWidget(0, 0)
        self.matrix.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.matrix.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.matrix.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.matrix.horizontalHeader().setMinimumSectionSize(70)
        self.matrix.cellClicked.connect(self.open_cell)
        matrix_hint = QLabel("Rows: the true class. Columns: what the model said. Click a cell to see those images.")
        matrix_hint.setWordWrap(True)

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(QLabel("<b>Model versions</b>"))
        top_layout.addWidget(self.versions_table)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.activate_button)
        top_layout.addLayout(buttons)

        bottom = QWidget()
        grid = QVBoxLayout(bottom)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(self.summary)
        tables = QHBoxLayout()
        tables.addWidget(self.class_table, 3)
        tables.addWidget(self.source_table, 2)
        grid.addLayout(tables, 1)
        grid.addWidget(QLabel("<b>Confusion matrix</b>"))
        grid.addWidget(matrix_hint)
        grid.addWidget(self.matrix, 2)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(bottom)
        splitter.setStretchFactor(1, 3)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)
        self.refresh()

    # -- data ---------------------------------------------------------------------------------
    def set_project(self, project) -> None:
        self.cancel()
        self.project = project
        self.refresh()

    def cancel(self) -> None:
        """Drop the report being computed (another project, or the window is closing)."""
        self._generation += 1
        if self.runner is not None and not getattr(self.runner, "closed", False):
            self.runner.cancel(REPORT_JOB)

    def _list_models(self) -> list[Any]:
        if self.project is None:
            return []
        fn = self._list_models_fn
        if fn is None:
            try:
                from storage.modelstore import list_models as fn
            except ImportError:
                return []
        return list(fn(self.project))

    def refresh(self) -> None:
        """Reload the versions list and recompute the report of the version the user was looking
        at (labels may have changed), else the active (or else the newest) version's."""
        previous = self.selected_version() if self._versions else None
        self._versions = self._list_models()
        table = self.versions_table
        table.blockSignals(True)
        table.setRowCount(len(self._versions))
        active_row = None
        for row, info in enumerate(self._versions):
            version = _version_of(info)
            created = getattr(info, "created_at", None)
            accuracy = metric(getattr(info, "metrics", {}) or {}, "val_acc", "val_accuracy", "accuracy")
            active = bool(getattr(info, "is_active", False))
            if active:
                active_row = row
            cells = [
                str(version),
                created.strftime("%Y-%m-%d %H:%M") if hasattr(created, "strftime") else str(created or ""),
                _method_words(getattr(info, "method", "")),
                str(getattr(info, "backbone", "")),
                str(getattr(info, "n_labeled", "")),
                _fmt(accuracy if accuracy is None or accuracy <= 1 else accuracy / 100),
                "✓ in use" if active else "",
            ]
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, version)
                if active:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                table.setItem(row, column, item)
        if self._versions:
            versions = [_version_of(v) for v in self._versions]
            row = (versions.index(previous) if previous in versions
                   else active_row if active_row is not None else len(self._versions) - 1)
            table.selectRow(row)
        table.blockSignals(False)
        if self._versions:
            self._version_selected()  # always: the same version's report changes with the labels
        else:
            self._generation += 1
            self.show_report(None)
            self.activate_button.setEnabled(False)

    def selected_version(self) -> int | None:
        rows = self.versions_table.selectionModel().selectedRows()
        if not rows:
            return None
        return _version_of(self._versions[rows[0].row()])

    def _version_selected(self) -> None:
        version = self.selected_version()
        info = next((v for v in self._versions if _version_of(v) == version), None)
        self.activate_button.setEnabled(info is not None and not bool(getattr(info, "is_active", False)))
        if version is None or self.project is None:
            return
        self.request_report(version)

    def request_report(self, version: int) -> None:
        """Compute and show one version's report: in the background when there is a runner."""
        self._generation += 1
        runner = self.runner
        if runner is None:
            self.show_report(self._report_fn(self.project, version), version)
            return
        if getattr(runner, "closed", False):
            return
        runner.cancel(REPORT_JOB)  # a queued older request is skipped
        generation = self._generation
        if self.report_version != version:
            self.summary.setText(f"Computing the report of version {version}…")
        runner.submit(REPORT_JOB, report_job, self._report_fn, self.project, version,
                      on_done=lambda outcome: self._report_ready(generation, version, outcome))

    def _report_ready(self, generation: int, version: int, outcome) -> None:
        if generation != self._generation:
            return  # the user moved on (another version, new labels, another project)
        if outcome.status == "done":
            self.show_report(outcome.result, version)
        elif outcome.status == "failed":
            self.summary.setText(f"The report of version {version} could not be computed: {outcome.error}")

    def activate_selected(self) -> None:
        version = self.selected_version()
        if version is None or self.project is None:
            return
        fn = self._set_active_fn
        if fn is None:
            from storage.modelstore import set_active_model as fn
        fn(self.project, version)
        self.refresh()
        self.active_changed.emit(int(version))

    # -- view ---------------------------------------------------------------------------------
    def show_report(self, report: Report | None, version: int | None = None) -> None:
        self.report = report
        self.report_version = version
        self.class_table.setRowCount(0)
        self.source_table.setRowCount(0)
        self.matrix.clear()
        self.matrix.setRowCount(0)
        self.matrix.setColumnCount(0)
        if report is None or report.n == 0:
            self.summary.setText(
                "No model yet: train one in the training panel." if version is None
                else f"Version {version} has no predictions for labeled images yet."
            )
            self.report_shown.emit(version)
            return
        self.summary.setText(
            f"<b>Version {version}</b>: accuracy <b>{_fmt(report.accuracy)}</b>, balanced accuracy "
            f"<b>{_fmt(report.balanced_accuracy)}</b> (the average of the per-class recalls) on "
            f"{report.n} images: {report.basis}."
        )
        self.class_table.setRowCount(len(report.class_names))
        for row, name in enumerate(report.class_names):
            for column, text in enumerate(
                (name, _fmt(report.precision[row]), _fmt(report.recall[row]), str(int(report.support[row])))
            ):
                self.class_table.setItem(row, column, QTableWidgetItem(text))
        self.source_table.setRowCount(len(report.sources))
        for row, (name, accuracy, n) in enumerate(report.sources):
            for column, text in enumerate((name, _fmt(accuracy), str(n))):
                self.source_table.setItem(row, column, QTableWidgetItem(text))
        k = len(report.class_names)
        self.matrix.setRowCount(k)
        self.matrix.setColumnCount(k)
        self.matrix.setVerticalHeaderLabels([f"{n} (true)" for n in report.class_names])
        self.matrix.setHorizontalHeaderLabels([f"said {n}" for n in report.class_names])
        peak = max(int(report.confusion.max()), 1)
        text_color = self.palette().color(QPalette.ColorRole.Text)
        for i in range(k):
            for j in range(k):
                count = int(report.confusion[i, j])
                item = QTableWidgetItem(str(count))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                strength = count / peak
                base = QColor(0, 158, 115) if i == j else QColor(213, 94, 0)
                base.setAlpha(int(25 + 200 * strength) if count else 0)
                item.setBackground(QBrush(base))
                item.setForeground(QBrush(QColor("white") if strength > 0.6 else text_color))
                item.setToolTip(
                    f"{count} image{'s' if count != 1 else ''} of {report.class_names[i]} "
                    f"{'correctly recognized' if i == j else 'taken for ' + report.class_names[j]}; click to see them"
                )
                self.matrix.setItem(i, j, item)
        self.report_shown.emit(version)

    def cell_images(self, row: int, column: int) -> list[int]:
        if self.report is None:
            return []
        return list(self.report.cell_images.get((row, column), []))

    def open_cell(self, row: int, column: int) -> None:
        """Show exactly the images whose true class is row and predicted class is column."""
        if self.report is None:
            return
        ids = self.cell_images(row, column)
        names = self.report.class_names
        description = (
            f"{names[row]} recognized correctly" if row == column else f"{names[row]} taken for {names[column]}"
        )
        self.show_images.emit(ids, description)


def _version_of(info: Any) -> int:
    for name in ("version", "model_version", "id"):
        value = getattr(info, name, None)
        if value is not None:
            return int(value)
    raise ValueError("A model entry without a version number")


def _method_words(method: str) -> str:
    return {"logreg": "Quick", "finetune": "Thorough"}.get(method, method)
