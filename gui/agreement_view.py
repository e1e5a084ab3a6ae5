"""The model report's "Agreement between labelers" section: for each pair of people who labeled the
same images, how often they chose the same class and Cohen's kappa in words; a click on a pair shows
the images they labeled differently in the grid (as a confusion-matrix cell does). Hidden when no two
people labeled the same image. Plain data in: ``storage.team_agreement.AgreementReport`` via the
engine's ``Report.agreement``."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

VISIBLE_ROWS = 2
COLUMNS = ["Labelers", "Same class", "Agreement (kappa)", "Labeled differently"]
KAPPA_TIP = ("Cohen's kappa: 1 is full agreement, 0 is no more than chance would give, below 0 worse than "
             "chance. Counts each person's own latest label of each image they both labeled.")


def kappa_words(kappa: float | None) -> str:
    """Landis and Koch's plain words for a kappa."""
    if kappa is None:
        return "not measurable yet"
    for limit, words in ((0.0, "poor"), (0.2, "slight"), (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial")):
        if kappa <= limit:
            return f"{words} ({kappa:.2f})"
    return f"almost perfect ({kappa:.2f})"


def pair_sentence(pair) -> str:
    shared = f"{pair.overlap} image{'s' if pair.overlap != 1 else ''}"
    return (f"{pair.first} and {pair.second} both labeled {shared} and chose the same class for "
            f"{pair.agreed}; agreement {kappa_words(pair.kappa)}.")


class AgreementSection(QWidget):
    """One row per pair of labelers; a click on a row emits ``show_images(ids, description)``."""

    show_images = Signal(object, str)  # image ids, description

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.agreement = None
        self.title = QLabel("<b>Agreement between labelers</b>")
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.horizontalHeaderItem(2).setToolTip(KAPPA_TIP)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.table.cellClicked.connect(lambda row, _column: self.open_pair(row))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.hint)
        layout.addWidget(self.table)
        self.setVisible(False)

    def show_agreement(self, agreement) -> None:
        """An ``AgreementReport`` (None, or no pair: the section hides)."""
        self.agreement = agreement if agreement is not None and agreement.pairs else None
        self.table.setRowCount(0)
        if self.agreement is None:
            self.setVisible(False)
            return
        pairs = self.agreement.pairs
        disputed = len(self.agreement.disputed)
        self.hint.setText(
            (pair_sentence(pairs[0]) + " " if len(pairs) == 1 else "")
            + (f"Click a row to see the {disputed} image{'s' if disputed != 1 else ''} labeled differently."
               if disputed else "They agree on every image they both labeled."))
        self.table.setRowCount(len(pairs))
        for row, pair in enumerate(pairs):
            cells = (f"{pair.first} and {pair.second}", f"{pair.agreed} of {pair.overlap}", kappa_words(pair.kappa),
                     str(len(pair.disputed)))
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(pair_sentence(pair) + (" Click to see the images they labeled differently."
                                                       if pair.disputed else ""))
                self.table.setItem(row, column, item)
        # Short: up to VISIBLE_ROWS rows (more scroll), so the report above keeps its room in a docked panel.
        self.table.resizeRowsToContents()
        header = self.table.horizontalHeader().sizeHint().height()
        rows = sum(self.table.rowHeight(r) for r in range(min(len(pairs), VISIBLE_ROWS)))
        self.table.setFixedHeight(header + rows + 2 * self.table.frameWidth())
        self.setVisible(True)

    def pair_images(self, row: int) -> list[int]:
        if self.agreement is None or not 0 <= row < len(self.agreement.pairs):
            return []
        return list(self.agreement.pairs[row].disputed)

    def open_pair(self, row: int) -> None:
        """Show the images this pair labeled differently."""
        if self.agreement is None or not 0 <= row < len(self.agreement.pairs):
            return
        pair = self.agreement.pairs[row]
        self.show_images.emit(self.pair_images(row), f"Labeled differently by {pair.first} and {pair.second}")
