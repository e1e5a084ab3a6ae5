"""The embedding map panel: every image as a point, PCA at once and t-SNE refining.

Hover shows the thumbnail; a click selects one image; lasso or rectangle selects many; a number
key labels the selection as one undoable step of the workspace's own label command. The drawing
is gui/map_canvas.py's, the mouse tools gui/map_lasso.py's, the hover card gui/map_hover.py's and
the background jobs gui/map_jobs.py's; this panel owns the points' data, the selection and labeling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeyEvent, QPalette, QUndoCommand, QUndoStack
from PySide6.QtWidgets import QLabel, QStackedWidget, QVBoxLayout, QWidget

from engine.features.backbones import DEFAULT_BACKBONE
from engine.insight.map_geometry import normalize_layout, points_in_polygon
from engine.insight.projection import MapColors, MapLayout, align, embedding_job
from engine.runtime.jobs import JobOutcome, JobStatus
from gui.labeling import SetLabelCommand
from gui.map_canvas import COLOR_MODES, MapCanvas, point_groups
from gui.map_hover import PointHover, read_hover_image
from gui.map_keys import MapKeyFilter
from gui.map_jobs import LAYOUT_JOB, MapJobs
from gui.map_toolbar import MapToolbar
from gui.runner import QtJobRunner
from storage.images import image_count

NO_PROJECT_TEXT = "Open or create a project to see a map of your images."
NO_MAP_TEXT = (
    "No map yet. Label a few images of two classes: after the first training every image appears "
    "here as a point, similar images close together, and you can label many at once."
)
COMPUTING_TEXT = "Drawing the map of your images…"
FAILED_TEXT = "The map could not be drawn. Press “Recompute map” to try again."

LabelCommandFactory = Callable[[list[int], int | None, str], QUndoCommand]


class EmbeddingView(QWidget):
    """Map of all images. Plain data in (``set_layout``, ``set_attributes``), signals out."""

    image_clicked = Signal(int)
    images_selected = Signal(object)  # list[int]
    labels_changed = Signal(object)  # list[int] relabeled by the map's default label command
    _follow_layout = True  # see _stop_following

    def __init__(
        self,
        runner: QtJobRunner | None = None,
        project=None,
        *,
        undo_stack: QUndoStack | None = None,
        label_command_factory: LabelCommandFactory | None = None,
        reader: QtJobRunner | None = None,
        parent: QWidget | None = None,
    ):
        """``runner`` computes layouts; ``reader`` (another runner, so a long t-SNE never delays
        a recolor) reads labels and predictions after they change. Without a reader those reads
        happen at once on the GUI thread (fine for tests and small projects).
        ``label_command_factory(ids, class_id, text)`` makes the undoable label command (the main
        window's ``make_label_command``); without one the map pushes gui.labeling's
        SetLabelCommand itself and reports through ``labels_changed``."""
        super().__init__(parent)
        self.runner = runner
        self.reader = reader
        self.project = project
        self.undo_stack = undo_stack if undo_stack is not None else QUndoStack(self)
        self._label_command_factory = label_command_factory or self._own_label_command

        self.image_ids = np.zeros(0, dtype=np.int64)
        self.coords = np.zeros((0, 2), dtype=np.float32)
        self.class_ids = np.zeros(0, dtype=np.int64)
        self.predicted = np.zeros(0, dtype=np.int64)
        self.source_codes = np.zeros(0, dtype=np.int32)
        self.source_names: list[str] = [""]
        self.classes: list = []  # storage.catalog.ClassInfo in display order
        self.selected = np.zeros(0, dtype=bool)
        self.color_mode = "label"
        self.method = ""
        self.jobs = MapJobs(runner, reader, lambda: self.image_ids, self)
        self.jobs.layout_streamed.connect(self._on_partial)
        self.jobs.layout_finished.connect(self._on_done)
        self.jobs.colors_read.connect(self.apply_colors)

        self.plot = MapCanvas(self.palette().color(QPalette.ColorRole.Base))
        self.viewbox = self.plot.viewbox
        self.viewbox.polygon_drawn.connect(self.select_polygon)
        self.viewbox.clicked.connect(self.click_at)
        # The legend is a label above the plot, so it never hides points.
        self.legend = QLabel()
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setWordWrap(True)
        self.toolbar = MapToolbar()
        self.toolbar.tool_chosen.connect(self.set_tool)
        self.toolbar.color_mode_chosen.connect(self.set_color_mode)
        self.toolbar.fit_clicked.connect(self.fit)
        self.toolbar.recompute_clicked.connect(
            lambda: self.compute(*(self.jobs.layout_key or (None, None))[:2], force=True))
        # The view follows the map (streaming t-SNE steps, a dock shown or resized) until the user
        # pans or zooms; "Fit" hands it back to the map.
        self.viewbox.sigRangeChangedManually.connect(self._stop_following)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        # Without points the plot would be a blank square: a sentence says what will appear there.
        self.empty_text = QLabel()
        self.empty_text.setWordWrap(True)
        self.empty_text.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_text.setMargin(12)
        self.empty_text.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.pages = QStackedWidget()
        self.pages.addWidget(self.plot)
        self.pages.addWidget(self.empty_text)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.toolbar)
        layout.addWidget(self.legend)
        layout.addWidget(self.pages, 1)
        layout.addWidget(self.status)
        layout.addWidget(self.hint)

        self.hover = PointHover(self, self.plot, lambda: self.coords, self._describe, self._read_image)
        self._show_empty(NO_MAP_TEXT if project is not None else NO_PROJECT_TEXT)

        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self._key_filter = MapKeyFilter(self)
        self.plot.installEventFilter(self._key_filter)
        self.installEventFilter(self._key_filter)

        if runner is not None:
            runner.progress.connect(self._on_progress)
        self._update_hint()

    # -- data in ------------------------------------------------------------------------------
    def set_project(self, project) -> None:
        """Show another project (or none): the running layout job of the old one is cancelled
        and anything it still sends is ignored."""
        self.cancel()
        self.project = project
        self.hover.card.forget_thumbnails()
        self._follow_layout = True
        self.set_layout(np.zeros(0, np.int64), np.zeros((0, 2), np.float32))
        self.plot.forget_points()
        self._show_empty(NO_MAP_TEXT if project is not None else NO_PROJECT_TEXT)

    def _show_empty(self, text: str, details: str = "") -> None:
        """The sentence shown while there are no points (``details`` in its tooltip); a status
        line of its own would repeat it."""
        self.empty_text.setText(text)
        self.empty_text.setToolTip(details)
        if not len(self.image_ids):
            self.pages.setCurrentWidget(self.empty_text)
        self.status.clear()
        self.status.setToolTip("")

    @property
    def showing_points(self) -> bool:
        return self.pages.currentWidget() is self.plot

    def cancel(self) -> None:
        """Stop computing the layout and the colors; their late results will be dropped."""
        self.jobs.cancel()

    def set_layout(self, image_ids: Sequence[int] | np.ndarray, coords: np.ndarray, method: str = "",
                   colors: MapColors | None = None) -> None:
        """Place the points. Same image ids as before: points just move (the streaming case).

        New image ids need new colors: ``colors`` when given (the layout job reads them in the
        background), else they are read (see refresh_attributes)."""
        image_ids = np.asarray(image_ids, dtype=np.int64)
        first = len(self.image_ids) == 0
        self.pages.setCurrentWidget(self.plot if len(image_ids) else self.empty_text)
        same = len(image_ids) == len(self.image_ids) and np.array_equal(image_ids, self.image_ids)
        self.coords = normalize_layout(coords)
        self.method = method or self.method
        fresh_colors = colors is not None and np.array_equal(colors.image_ids, image_ids)
        if same:
            if fresh_colors:
                self.apply_colors(colors)
            self._move_points()
        else:
            old_ids = self.image_ids
            self.image_ids = image_ids
            self.selected = np.zeros(len(image_ids), dtype=bool)
            self.hover.forget()
            if fresh_colors:
                self.apply_colors(colors)
            else:
                # Until the colors arrive, keep each point's colors where the old map knew them.
                self.class_ids = align(old_ids, self.class_ids, image_ids, -1).astype(np.int64)
                self.predicted = align(old_ids, self.predicted, image_ids, -1).astype(np.int64)
                self.source_codes = align(old_ids, self.source_codes, image_ids, 0).astype(np.int32)
                self._regroup()
                self.refresh_attributes()
        if len(image_ids) and (first or self._follow_layout):
            self.fit()

    def set_attributes(self, class_ids: np.ndarray, source_codes: np.ndarray | None = None,
                       source_names: Sequence[str] | None = None, predicted: np.ndarray | None = None,
                       classes: Sequence | None = None) -> None:
        """Per-point label class ids (-1 unlabeled), source codes, predicted class ids (-1 none)."""
        n = len(self.image_ids)
        self.class_ids = np.asarray(class_ids, dtype=np.int64).reshape(n)
        self.source_codes = np.zeros(n, np.int32) if source_codes is None else np.asarray(source_codes, np.int32)
        self.source_names = list(source_names or [""])
        self.predicted = np.full(n, -1, np.int64) if predicted is None else np.asarray(predicted, np.int64)
        if classes is not None:
            self.classes = list(classes)
        self._regroup()

    def apply_colors(self, colors: MapColors) -> None:
        """Recolor from colors read for exactly the points on screen."""
        self.set_attributes(colors.class_ids, colors.source_codes, colors.source_names, colors.predicted,
                            colors.classes)

    def refresh_attributes(self) -> None:
        """Re-read labels, sources, classes and predictions from the project and recolor (in the
        background when the map has a reader runner)."""
        if self.project is None or len(self.image_ids) == 0:
            self._regroup()
            return
        self.jobs.read_colors(self.project)

    # -- computing the layout -----------------------------------------------------------------
    def compute(self, backbone: str | None, layer: str | None = None, *, force: bool = False,
                job: Callable[..., Any] = embedding_job) -> bool:
        """Submit the embedding job (PCA now, t-SNE refining). Skipped when the map already shows
        these features for the same images, unless forced. Returns whether a job was submitted."""
        if self.project is None or not self.jobs.can_compute:
            return False
        backbone = backbone or DEFAULT_BACKBONE
        key = (backbone, layer, image_count(self.project))
        if not force and key == self.jobs.layout_key and len(self.image_ids):
            self.refresh_attributes()
            return False
        if not len(self.image_ids):
            self.empty_text.setText(COMPUTING_TEXT)
        self.status.setText("Computing the map…")
        self.status.setToolTip("")
        self.jobs.compute_layout(key, job, self.project, backbone, layer)
        return True

    def _on_partial(self, layout: MapLayout) -> None:
        """A layout streamed by the layout job (PCA first, then t-SNE steps)."""
        self.set_layout(layout.image_ids, layout.coords, layout.method, colors=layout.colors)
        if layout.method == "tsne":
            self.status.setText(f"{len(self.image_ids):,} images. Refining the map (t-SNE step "
                                f"{layout.iteration} of {layout.total_iterations})…")
        else:
            self.status.setText(f"{len(self.image_ids):,} images. Quick map (PCA); refining…")

    def _on_progress(self, name: str, fraction: float, message: str) -> None:
        if name == LAYOUT_JOB and not len(self.image_ids) and message:
            self.status.setText(message + "…")

    def _on_done(self, outcome: JobOutcome) -> None:
        n = len(self.image_ids)
        if outcome.status is JobStatus.DONE:
            layout: MapLayout = outcome.result
            self.set_layout(layout.image_ids, layout.coords, layout.method)
            n = len(self.image_ids)
            if not n:
                self._show_empty(NO_MAP_TEXT)
            elif self.method == "tsne":
                self.status.setText(f"{n:,} images, similar ones close together (t-SNE).")
            else:
                self.status.setText(f"{n:,} images (PCA).")
        elif outcome.status is JobStatus.CANCELLED:
            if n:
                self.status.setText(f"{n:,} images (map refinement stopped).")
        elif not n:  # a plain sentence; what went wrong, for a bug report, in the tooltip
            self._show_empty(FAILED_TEXT, outcome.error)
        else:
            self.status.setText(FAILED_TEXT)
            self.status.setToolTip(outcome.error)

    # -- drawing ------------------------------------------------------------------------------
    def _regroup(self) -> None:
        """Rebuild the per-group scatter items (colors, sizes) and the legend."""
        codes, styles = point_groups(self.color_mode, self.class_ids, self.predicted, self.source_codes,
                                     self.source_names, self.classes)
        self.legend.setText(self.plot.draw_groups(self.coords, codes, styles))
        self._draw_selection()

    def _move_points(self) -> None:
        self.plot.move_points(self.coords)
        self._draw_selection()
        self.hover.redraw()

    def _draw_selection(self) -> None:
        self.plot.draw_selection(self.coords, self.selected)
        self._update_hint()

    def set_color_mode(self, mode: str) -> None:
        if mode not in dict(COLOR_MODES):
            raise ValueError(f"Unknown color mode {mode!r}")
        self.color_mode = mode
        self.toolbar.show_color_mode(mode)
        self._regroup()

    def set_tool(self, tool: str) -> None:
        """'lasso', 'rect' or 'move': what a left drag on the map does."""
        self.viewbox.tool = tool
        self.toolbar.show_tool(tool)

    def _stop_following(self, *_args) -> None:
        self._follow_layout = False

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._follow_layout:
            self.fit()  # a map computed while its tab was hidden was fitted to no size at all

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self._follow_layout:
            self.fit()

    def fit(self) -> None:
        self._follow_layout = True
        self.plot.fit(self.coords)

    # -- selection ----------------------------------------------------------------------------
    @property
    def selected_ids(self) -> list[int]:
        return self.image_ids[self.selected].tolist() if len(self.selected) else []

    def select_indices(self, indices: np.ndarray, additive: bool = False) -> None:
        mask = np.zeros(len(self.image_ids), dtype=bool)
        mask[np.asarray(indices, dtype=np.int64)] = True
        self.selected = (self.selected | mask) if additive and len(self.selected) else mask
        self._draw_selection()
        self.images_selected.emit(self.selected_ids)

    def select_polygon(self, polygon: np.ndarray, additive: bool = False) -> None:
        """Select the points inside a polygon given in map (view) coordinates."""
        inside = points_in_polygon(self.coords, polygon)
        self.select_indices(np.flatnonzero(inside), additive=additive)
        self.setFocus()

    def click_at(self, x: float, y: float, additive: bool = False) -> None:
        index = self.plot.nearest_point(self.coords, x, y)
        self.setFocus()
        if index < 0:
            if not additive:
                self.select_indices(np.zeros(0, np.int64))
            return
        self.select_indices(np.asarray([index]), additive=additive)
        self.image_clicked.emit(int(self.image_ids[index]))

    # -- labeling -----------------------------------------------------------------------------
    def handles_key(self, event: QKeyEvent) -> bool:
        if event.modifiers() & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier | Qt.KeyboardModifier.MetaModifier):
            return False
        if event.key() == Qt.Key.Key_Escape:
            return bool(self.selected.any())
        return bool(self.selected_ids) and self._class_for_key(event.text()) is not None

    def _class_for_key(self, text: str):
        return next((info for info in self.classes if info.shortcut and info.shortcut == text), None)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Escape and self.selected.any():
            self.select_indices(np.zeros(0, np.int64))
            return
        info = self._class_for_key(event.text())
        if info is not None and self.selected_ids:
            self.label_selection(info.id)
            return
        super().keyPressEvent(event)

    def label_selection(self, class_id: int | None) -> QUndoCommand | None:
        """Label every selected image with one class, as ONE step on the undo stack."""
        ids = self.selected_ids
        if not ids or self.project is None:
            return None
        names = {int(c.id): c.name for c in self.classes}
        text = f"Label {len(ids)} image{'s' if len(ids) != 1 else ''} as {names.get(class_id, 'unlabeled')}"
        command = self._label_command_factory(ids, class_id, text)
        self.undo_stack.push(command)
        return command

    def _own_label_command(self, image_ids: list[int], class_id: int | None, text: str) -> QUndoCommand:
        """The workspace's label command, for a map used without a main window."""
        return SetLabelCommand(self.project, image_ids, class_id, text, on_changed=self._labels_written)

    def _labels_written(self, image_ids: list[int]) -> None:
        self.refresh_attributes()
        self.labels_changed.emit(list(image_ids))

    # -- hover --------------------------------------------------------------------------------
    def _describe(self, index: int) -> tuple[int, str]:
        """The hovered point's image id and caption: its label and what the model says."""
        image_id = int(self.image_ids[index])
        names = {int(c.id): c.name for c in self.classes}
        label = int(self.class_ids[index])
        caption = f"labeled {names.get(label, '?')}" if label >= 0 else "not labeled"
        if self.predicted[index] >= 0:
            caption += f" · the model says {names.get(int(self.predicted[index]), '?')}"
        return image_id, caption

    def _read_image(self, image_id: int) -> tuple[bytes | None, str]:
        return read_hover_image(self.project, image_id)

    def _update_hint(self) -> None:
        n = int(self.selected.sum())
        if n:
            keys = ", ".join(f"{c.shortcut} = {c.name}" for c in self.classes if c.shortcut)
            self.hint.setText(f"{n} selected. Press a number to label them all ({keys}); Esc clears; Ctrl+Z undoes.")
        else:
            self.hint.setText("Hover a point to see the image. Click one, or drag around many, then press a number key to label them.")
