"""Filter and sort controls above the grid. Each choice becomes a ``browse.GridQuery`` that the
window runs as one SQL query.

The curation modes ("Label next", "Review labels", "Look-alikes") need a background job before
they have images to show: choosing one emits ``curation_requested(mode)``; the job's ranked ids come
back through ``show_curation`` and are shown as chosen images in exactly that order."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QToolButton, QWidget

from gui.classes_panel import color_swatch
from storage import browse
from storage.catalog import ClassInfo

SORT_TITLES = {
    browse.IMPORT_ORDER: "Import order",
    browse.CONFIDENCE: "Least sure first",
    browse.NAME: "File name",
}
CURATION = "curation"  # the filter entries whose images a background job chooses (itemData (CURATION, mode))
LABEL_NEXT, REVIEW_LABELS, LOOK_ALIKES, UNUSUAL = "label_next", "review_labels", "look_alikes", "unusual"
CURATION_TITLES = {
    LABEL_NEXT: "Label next (suggested by Sortlab)",
    REVIEW_LABELS: "Review labels (likely mistakes first)",
    LOOK_ALIKES: "Look-alikes (near-duplicate photos)",
    UNUSUAL: "Unusual images (possibly wrong pictures)",
}
CURATION_TIPS = {
    LABEL_NEXT: "The images that teach the model most, in order: label them with the number keys.",
    REVIEW_LABELS: "Labeled images whose label looks wrong to a model that never saw them. "
                   "K keeps the label, Enter takes the suggestion, a number key sets another class.",
    LOOK_ALIKES: "Images that look like copies of each other, each group together.",
    UNUSUAL: "Images that look like no other image of their class or of the project, most unusual first: "
             "placeholders, blank frames and pictures that ended up in the wrong folder.",
}
SORT_TIPS = {
    browse.CONFIDENCE: "The images the model is least sure about come first: they are the ones worth a look.",
}


class FilterBar(QWidget):
    """Show: [filter]  Sort: [order]  "N of M images"; emits ``query_changed(GridQuery)``."""

    query_changed = Signal(object)
    curation_requested = Signal(str)  # a curation mode was chosen (or refreshed): its job should run

    def __init__(self, parent=None):
        super().__init__(parent)
        # Combos sized by a few characters, never by their longest entry (a long source name must
        # not widen the window); the open list shows whole names.
        self.filter_combo = QComboBox()
        self.filter_combo.setMinimumContentsLength(24)  # "Label next (suggested by Sortlab)" nearly whole
        self.filter_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.filter_combo.view().setMinimumWidth(360)
        self.sort_combo = QComboBox()
        self.sort_combo.setMinimumContentsLength(10)
        self.sort_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        for key, title in SORT_TITLES.items():
            self.sort_combo.addItem(title, key)
            if key in SORT_TIPS:
                self.sort_combo.setItemData(self.sort_combo.count() - 1, SORT_TIPS[key], Qt.ItemDataRole.ToolTipRole)
        self.count_label = QLabel()
        self.refresh_button = QToolButton()
        self.refresh_button.setText("Refresh")
        self.refresh_button.setToolTip("Run the filter again (F5): images you just labeled may no longer match it.")
        self.refresh_button.clicked.connect(self._emit)  # a curation mode chooses afresh
        self._curation_ids: dict[str, tuple[int, ...]] = {}
        self._chosen: browse.GridQuery | None = None
        self._chosen_title = ""
        self._filling = False

        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.addWidget(QLabel("Show:"))
        layout.addWidget(self.filter_combo, 2)
        layout.addSpacing(8)
        layout.addWidget(QLabel("Sort:"))
        layout.addWidget(self.sort_combo, 1)
        layout.addWidget(self.refresh_button)
        layout.addStretch(1)
        layout.addWidget(self.count_label)
        self.filter_combo.currentIndexChanged.connect(self._emit)
        self.sort_combo.currentIndexChanged.connect(self._emit)
        self.set_choices([], [], has_model=False)

    def set_choices(self, classes: list[ClassInfo], sources: list[tuple[str, int]], has_model: bool) -> None:
        """Rebuild the filter list, keeping the current choice when it still exists."""
        current = self.query()
        current_data = self.filter_combo.currentData()
        self._filling = True
        combo = self.filter_combo
        combo.clear()
        combo.addItem("All images", (browse.ALL, None))
        combo.addItem("Unlabeled", (browse.UNLABELED, None))
        for info in classes:
            combo.addItem(color_swatch(info.color), f"Labeled “{info.name}”", (browse.LABELED_AS, info.id))
        if len(sources) > 1:
            for name, count in sources:
                combo.addItem(f"From {name or '(no source)'} ({count})", (browse.FROM_SOURCE, name))
        if has_model:
            for info in classes:
                combo.addItem(color_swatch(info.color), f"Suggested “{info.name}”", (browse.PREDICTED_AS, info.id))
            combo.addItem("Label disagrees with suggestion", (browse.DISAGREES, None))
            combo.addItem(f"Unsure suggestions (below {browse.LOW_CONFIDENCE_THRESHOLD:.0%})",
                          (browse.LOW_CONFIDENCE, None))
        for mode, title in CURATION_TITLES.items():
            if mode != REVIEW_LABELS or len(classes) >= 2:
                combo.addItem(title, (CURATION, mode))
                combo.setItemData(combo.count() - 1, CURATION_TIPS[mode], Qt.ItemDataRole.ToolTipRole)
        if self._chosen is not None:
            combo.addItem(self._chosen_title, (browse.CHOSEN, None))
        kept = self._index_of(current_data) if current_data and current_data[0] == CURATION else -1
        if kept >= 0:
            combo.setCurrentIndex(kept)
        else:
            self._select(current)
        self._filling = False

    def _select(self, query: browse.GridQuery) -> None:
        wanted = (query.kind, query.class_id if query.kind in (browse.LABELED_AS, browse.PREDICTED_AS)
                  else query.source if query.kind == browse.FROM_SOURCE else None)
        index = next((i for i in range(self.filter_combo.count()) if self.filter_combo.itemData(i) == wanted), 0)
        self.filter_combo.setCurrentIndex(index)

    def query(self) -> browse.GridQuery:
        data = self.filter_combo.currentData() or (browse.ALL, None)
        kind, value = data
        sort = self.sort_combo.currentData() or browse.IMPORT_ORDER
        if kind == CURATION:  # the job's ranking is the order
            return browse.GridQuery(kind=browse.CHOSEN, image_ids=self._curation_ids.get(value, ()), sort=browse.RANKED)
        if kind == browse.CHOSEN and self._chosen is not None:
            return browse.GridQuery(kind=kind, image_ids=self._chosen.image_ids, sort=sort)
        if kind in (browse.LABELED_AS, browse.PREDICTED_AS):
            return browse.GridQuery(kind=kind, class_id=value, sort=sort)
        if kind == browse.FROM_SOURCE:
            return browse.GridQuery(kind=kind, source=value, sort=sort)
        return browse.GridQuery(kind=kind, sort=sort)

    def set_query(self, query: browse.GridQuery) -> None:
        """Choose a filter from code (e.g. the View menu); emits query_changed once."""
        self._filling = True
        sort_index = self.sort_combo.findData(query.sort)
        self.sort_combo.setCurrentIndex(max(0, sort_index))
        self._select(query)
        self._filling = False
        self._emit()

    def reset(self) -> None:
        """Back to all images in import order, without a "chosen images" entry (another project)."""
        self._chosen = None
        self._chosen_title = ""
        self._curation_ids.clear()
        self.set_choices([], [], has_model=False)
        self._filling = True
        self.filter_combo.setCurrentIndex(0)
        self.sort_combo.setCurrentIndex(0)
        self.count_label.setText("")
        self._filling = False

    def show_chosen(self, image_ids, title: str) -> None:
        """Add (or replace) the "chosen images" entry, select it and emit."""
        self._chosen = browse.GridQuery(kind=browse.CHOSEN, image_ids=tuple(int(i) for i in image_ids))
        self._chosen_title = title or f"{len(image_ids)} chosen images"
        self._filling = True
        for i in range(self.filter_combo.count() - 1, -1, -1):
            if self.filter_combo.itemData(i) == (browse.CHOSEN, None):
                self.filter_combo.removeItem(i)
        self.filter_combo.addItem(self._chosen_title, (browse.CHOSEN, None))
        self.filter_combo.setCurrentIndex(self.filter_combo.count() - 1)
        self._filling = False
        self._emit()

    def curation_mode(self) -> str | None:
        """The curation mode chosen in the filter list, or None for a plain filter."""
        data = self.filter_combo.currentData()
        return data[1] if data and data[0] == CURATION else None

    def show_curation(self, mode: str, image_ids, emit: bool = True) -> None:
        """Select this curation mode showing these images in this order (``emit``: show them now;
        without it the caller puts them in the grid itself, e.g. appended below the tiles shown)."""
        self._curation_ids[mode] = tuple(int(i) for i in image_ids)
        self._filling = True
        index = self._index_of((CURATION, mode))
        if index >= 0:
            self.filter_combo.setCurrentIndex(index)
        self.sort_combo.setEnabled(False)
        self._filling = False
        if emit:
            self.query_changed.emit(self.query())

    def _index_of(self, data) -> int:
        return next((i for i in range(self.filter_combo.count()) if self.filter_combo.itemData(i) == data), -1)

    def set_counts(self, shown: int, total: int) -> None:
        self.count_label.setText(f"{shown:,} of {total:,} images" if shown != total else f"{total:,} images")

    def _emit(self) -> None:
        if self._filling:
            return
        mode = self.curation_mode()
        self.sort_combo.setEnabled(mode is None)  # a curation mode has its own order
        if mode is not None:  # chosen in the list: the job shows its images when done
            self.curation_requested.emit(mode)
            return
        self.query_changed.emit(self.query())
