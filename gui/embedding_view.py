"""The embedding map: every image as a point (pyqtgraph), PCA at once and t-SNE refining.

Points are drawn by a handful of ScatterPlotItems, one per color group (a class, a source, or
"unlabeled"), each fed whole numpy arrays with one brush, so no per-point Python objects exist in
the hot paths (streaming layouts, hover, selection). Hover shows the thumbnail; a click selects one
image; lasso or rectangle selects many; a number key labels the selection as one undoable step.
"""

from __future__ import annotations

import html
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, QPointF, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QKeyEvent, QPainterPath, QPalette, QPixmap, QPixmapCache, QUndoCommand, QUndoStack
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFrame,
    QGraphicsItem,
    QGraphicsPathItem,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.jobs import JobOutcome
from engine.projection import MapColors, align, embedding_job, map_colors
from gui.runner import QtJobRunner

JOB_NAME = "embedding"
COLORS_JOB = "map-colors"
UNLABELED_COLOR = "#9a9a9a"
SOURCE_COLORS = ["#4E79A7", "#F28E2B", "#59A14F", "#E15759", "#B07AA1", "#76B7B2", "#EDC948", "#9C755F", "#FF9DA7"]
HOVER_RADIUS_PX = 8.0
CACHE_FROM_POINTS = 30_000  # maps this large keep their drawing as pixmaps (see _apply_cache_mode)
MAX_PIXMAP_CACHE_KB = 160 * 1024
COLOR_MODES = (("label", "Color by label"), ("prediction", "Color by prediction"), ("source", "Color by source"))


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon for many points at once. Returns a boolean mask.

    After a bounding-box cut the candidate points are sorted by y; an edge can only be crossed
    by the horizontal rays of the points within its y-span, a contiguous run of that order. So
    a 200-vertex lasso around 30k points costs a few hundred short numpy slices instead of 200
    passes over every point."""
    points = np.asarray(points, dtype=np.float64)
    polygon = np.asarray(polygon, dtype=np.float64)
    inside = np.zeros(len(points), dtype=bool)
    if len(polygon) < 3 or len(points) == 0:
        return inside
    lo, hi = polygon.min(axis=0), polygon.max(axis=0)
    candidates = np.flatnonzero(
        (points[:, 0] >= lo[0]) & (points[:, 0] <= hi[0]) & (points[:, 1] >= lo[1]) & (points[:, 1] <= hi[1])
    )
    if candidates.size == 0:
        return inside
    order = candidates[np.argsort(points[candidates, 1], kind="stable")]
    xs, ys = points[order, 0], points[order, 1]
    hit = np.zeros(len(order), dtype=bool)
    xj, yj = polygon[-1]
    for xi, yi in polygon:
        if yi != yj:
            # (yi > y) != (yj > y)  <=>  min(yi, yj) <= y < max(yi, yj)
            start = np.searchsorted(ys, min(yi, yj), side="left")
            stop = np.searchsorted(ys, max(yi, yj), side="left")
            if stop > start:
                x_cross = (xj - xi) * (ys[start:stop] - yi) / (yj - yi) + xi
                hit[start:stop] ^= xs[start:stop] < x_cross
        xj, yj = xi, yi
    inside[order] = hit
    return inside


def normalize_layout(coords: np.ndarray) -> np.ndarray:
    """Center a layout and scale it so most points lie in [-1, 1]: PCA and every t-SNE step then
    share one view range, and streaming updates move points without the view jumping."""
    coords = np.asarray(coords, dtype=np.float64)
    if len(coords) == 0:
        return coords.astype(np.float32)
    center = np.median(coords, axis=0)
    centered = coords - center
    scale = float(np.percentile(np.abs(centered), 99)) if len(coords) > 1 else 1.0
    if not np.isfinite(scale) or scale < 1e-12:
        scale = 1.0
    return (centered / scale).astype(np.float32)


_SCATTER_FIELDS = {"x", "y", "sourceRect"}


def _has_record_array(item: pg.ScatterPlotItem) -> bool:
    data = getattr(item, "data", None)
    return isinstance(data, np.ndarray) and _SCATTER_FIELDS <= set(data.dtype.names or ())


def _points_changed(item: pg.ScatterPlotItem) -> None:
    """What ScatterPlotItem.addPoints does once its record array is ready."""
    item.prepareGeometryChange()
    item.informViewBoundsChanged()
    item.bounds = [None, None]
    item.invalidate()
    item.sigPlotChanged.emit(item)


class RecordPool:
    """One block of pyqtgraph point records that a family of scatter items share, each item
    owning a disjoint slice (the map's color groups split the points; the selection has its own
    pool). Creating a record array costs about 2 us a point (five Python-object fields each), so
    the block is made once per map size and reused by every recolor and selection."""

    def __init__(self) -> None:
        self.records: np.ndarray | None = None

    def block(self, template: np.ndarray, start: int, n: int) -> np.ndarray:
        """``n`` records from ``start`` on, with the template's style columns; grows as needed."""
        need = start + n
        records = self.records
        if records is None or len(records) < need or records.dtype != template.dtype:
            size = max(need, 2 * len(records) if records is not None else 0, 64)
            records = np.tile(template[:1], size)  # copies the one resolved record: no per-point work
            self.records = records
        block = records[start:need]
        block["sourceRect"] = template["sourceRect"][0]
        return block

    def clear(self) -> None:
        self.records = None


def fill_scatter(item: pg.ScatterPlotItem, x: np.ndarray, y: np.ndarray, pool: RecordPool | None = None,
                 start: int = 0) -> None:
    """Replace all points of a ScatterPlotItem whose style (symbol, size, pen, brush) is set on
    the item itself, never per point, as every item of the map is.

    setData() resolves each point's symbol in pyqtgraph's symbol atlas one by one in Python
    (about 4 us a point: 0.4-0.9 s at 100k, on the GUI thread). With one style for all points
    every point gets the same atlas rectangle, so this lets setData resolve one point and gives
    all points that record: from ``pool`` (a slice from ``start``) when given, else copied.
    pyqtgraph 0.14 keeps the points in the ``data`` record array; other versions fall back to
    setData."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    if n < 2 or not _has_record_array(item):
        item.setData(x=x, y=y)
        return
    item.setData(x=x[:1], y=y[:1])
    template = item.data
    if not _has_record_array(item) or len(template) != 1:
        item.setData(x=x, y=y)
        return
    if pool is not None:
        data = pool.block(template, start, n)
    else:
        data = np.tile(template, n)
    data["x"] = x
    data["y"] = y
    item.data = data
    _points_changed(item)


def move_scatter(item: pg.ScatterPlotItem, x: np.ndarray, y: np.ndarray) -> None:
    """Move the points of a ScatterPlotItem without rebuilding them.

    When only positions change, as they do while t-SNE streams, writing the x/y columns of
    pyqtgraph's record array in place and invalidating bounds and the cached picture is what
    setData does minus re-resolving every point's symbol (see fill_scatter)."""
    data = getattr(item, "data", None)
    if not _has_record_array(item) or len(data) != len(x):
        fill_scatter(item, x, y)
        return
    data["x"] = x
    data["y"] = y
    _points_changed(item)


def _colors_job(context, read: Callable[[Any, np.ndarray], MapColors], project, image_ids: np.ndarray) -> MapColors:
    """Background job body: the map's colors (labels, sources, predictions) as plain arrays."""
    context.check_cancelled()
    return read(project, image_ids)


class LabelImagesCommand(QUndoCommand):
    """Label many images at once (or unlabel, class_id None); undo restores each image's old label."""

    def __init__(self, project, image_ids: Sequence[int], class_id: int | None, text: str,
                 on_changed: Callable[[list[int]], None] | None = None):
        super().__init__(text)
        self.project = project
        self.image_ids = [int(i) for i in image_ids]
        self.class_id = class_id
        self.on_changed = on_changed
        self.before = None

    def redo(self) -> None:
        from storage.catalog import set_labels

        previous = set_labels(self.project, self.image_ids, self.class_id)
        if self.before is None:
            self.before = previous
        self._changed()

    def undo(self) -> None:
        from storage.catalog import restore_labels

        restore_labels(self.project, self.before or [])
        self._changed()

    def _changed(self) -> None:
        if self.on_changed is not None:
            self.on_changed(self.image_ids)


class MapViewBox(pg.ViewBox):
    """A ViewBox whose left drag draws a lasso or rectangle (unless the tool is 'move')."""

    def __init__(self, view: EmbeddingView):
        super().__init__(enableMenu=False)
        self.view = view
        self.tool = "lasso"
        self._drag_points: list[tuple[float, float]] = []
        self._last_screen: QPointF | None = None
        self.outline = QGraphicsPathItem()
        self.outline.setPen(pg.mkPen("#1f6feb", width=1.5, style=Qt.PenStyle.DashLine))
        self.outline.setBrush(QBrush(QColor(31, 111, 235, 30)))
        self.outline.setZValue(1000)
        self.addItem(self.outline, ignoreBounds=True)
        self.outline.hide()

    def mouseDragEvent(self, ev, axis=None):
        if self.tool == "move" or ev.button() != Qt.MouseButton.LeftButton:
            return super().mouseDragEvent(ev, axis)
        ev.accept()
        if ev.isStart():
            start = self.mapSceneToView(ev.buttonDownScenePos())
            self._drag_points = [(start.x(), start.y())]
            self._last_screen = ev.buttonDownScreenPos()
        pos = self.mapSceneToView(ev.scenePos())
        if self.tool == "rect":
            x0, y0 = self._drag_points[0]
            self._drag_points = [(x0, y0), (pos.x(), y0), (pos.x(), pos.y()), (x0, pos.y())]
        else:
            screen = ev.screenPos()
            if self._last_screen is None or (screen - self._last_screen).manhattanLength() >= 3:
                self._drag_points.append((pos.x(), pos.y()))
                self._last_screen = screen
        self._draw_outline()
        if ev.isFinish():
            additive = bool(ev.modifiers() & Qt.KeyboardModifier.ShiftModifier)
            polygon = np.asarray(self._drag_points, dtype=np.float64)
            self._drag_points = []
            self.outline.hide()
            self.view.select_polygon(polygon, additive=additive)

    def _draw_outline(self) -> None:
        path = QPainterPath()
        if self._drag_points:
            path.moveTo(*self._drag_points[0])
            for point in self._drag_points[1:]:
                path.lineTo(*point)
            path.closeSubpath()
        self.outline.setPath(path)
        self.outline.show()

    def mouseClickEvent(self, ev):
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            pos = self.mapSceneToView(ev.scenePos())
            self.view.click_at(pos.x(), pos.y(), additive=bool(ev.modifiers() & Qt.KeyboardModifier.ShiftModifier))
        else:
            super().mouseClickEvent(ev)


class _KeyFilter(QObject):
    """Number keys on the map label its selection, even if the window has 1-9 shortcuts."""

    def __init__(self, view: EmbeddingView):
        super().__init__(view)
        self.view = view

    def eventFilter(self, obj, event):
        if event.type() in (QEvent.Type.ShortcutOverride, QEvent.Type.KeyPress):
            if self.view.handles_key(event):
                event.accept()
                if event.type() == QEvent.Type.KeyPress:
                    self.view.keyPressEvent(event)
                return True
        return False


class EmbeddingView(QWidget):
    """Map of all images. Plain data in (``set_layout``, ``set_attributes``), signals out."""

    image_clicked = Signal(int)
    images_selected = Signal(object)  # list[int]
    labels_changed = Signal(object)  # list[int] relabeled here
    _follow_layout = True  # see _stop_following

    def __init__(
        self,
        runner: QtJobRunner | None = None,
        project=None,
        *,
        undo_stack: QUndoStack | None = None,
        thumbnail_fn: Callable[[int], bytes | None] | None = None,
        predictions_fn: Callable[[Any], dict] | None = None,
        label_command_factory: Callable[[list[int], int | None, str], QUndoCommand] | None = None,
        reader: QtJobRunner | None = None,
        parent: QWidget | None = None,
    ):
        """``runner`` computes layouts; ``reader`` (another runner, so a long t-SNE never delays
        a recolor) reads labels and predictions after they change. Without a reader those reads
        happen at once on the GUI thread (fine for tests and small projects)."""
        super().__init__(parent)
        self.runner = runner
        self.reader = reader
        self.project = project
        self.undo_stack = undo_stack if undo_stack is not None else QUndoStack(self)
        self._thumbnail_fn = thumbnail_fn
        self._predictions_fn = predictions_fn
        self._label_command_factory = label_command_factory
        self._thumb_cache: OrderedDict[int, QPixmap] = OrderedDict()

        self.image_ids = np.zeros(0, dtype=np.int64)
        self.coords = np.zeros((0, 2), dtype=np.float32)
        self.class_ids = np.zeros(0, dtype=np.int64)
        self.predicted = np.zeros(0, dtype=np.int64)
        self.source_codes = np.zeros(0, dtype=np.int32)
        self.source_names: list[str] = [""]
        self.classes: list = []  # storage.catalog.ClassInfo-like: id, name, color, shortcut
        self.selected = np.zeros(0, dtype=bool)
        self.color_mode = "label"
        self.method = ""
        self._groups: list[tuple[np.ndarray, pg.ScatterPlotItem]] = []
        self._group_records = RecordPool()
        self._selection_records = RecordPool()
        self._map_key: tuple | None = None
        self._hover_index = -1
        # Every compute() and set_project() starts a new generation: partials and outcomes of an
        # older (cancelled) layout job still queued on the GUI thread are recognised and dropped.
        self._generation = 0
        self._colors_generation = 0
        self._colors_busy = False  # a colors read is in flight
        self._colors_again = False  # ...and another was asked for meanwhile

        # -- plot ---------------------------------------------------------------------------
        self.viewbox = MapViewBox(self)
        background = self.palette().color(QPalette.ColorRole.Base)
        self.plot = pg.PlotWidget(viewBox=self.viewbox, background=background)
        self.plot.hideAxis("left")
        self.plot.hideAxis("bottom")
        self.plot.getPlotItem().setMenuEnabled(False)
        self.plot.setAntialiasing(False)
        self.viewbox.setAspectLocked(False)
        # The legend is a label above the plot, so it never hides points.
        self.legend = QLabel()
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setWordWrap(True)
        self.selection_item = pg.ScatterPlotItem(
            pxMode=True, size=12, symbol="o", brush=None, pen=pg.mkPen("#111111" if background.lightness() > 128 else "#ffffff", width=1.6)
        )
        self.selection_item.setZValue(500)
        self.plot.addItem(self.selection_item)
        self.hover_item = pg.ScatterPlotItem(pxMode=True, size=14, symbol="o", brush=None, pen=pg.mkPen("#1f6feb", width=2))
        self.hover_item.setZValue(600)
        self.plot.addItem(self.hover_item)

        # -- toolbar ------------------------------------------------------------------------
        self.lasso_button = QToolButton(text="Lasso")
        self.rect_button = QToolButton(text="Rectangle")
        self.move_button = QToolButton(text="Move")
        self.lasso_button.setToolTip("Drag to draw around images (Shift adds to the selection)")
        self.rect_button.setToolTip("Drag a rectangle around images (Shift adds to the selection)")
        self.move_button.setToolTip("Drag to move the map; the mouse wheel zooms in every mode")
        self.tools = QButtonGroup(self)
        for name, button in (("lasso", self.lasso_button), ("rect", self.rect_button), ("move", self.move_button)):
            button.setCheckable(True)
            button.setAutoRaise(True)
            self.tools.addButton(button)
            button.toggled.connect(lambda on, name=name: on and self.set_tool(name))
        self.lasso_button.setChecked(True)
        self.color_combo = QComboBox()
        for key, title in COLOR_MODES:
            self.color_combo.addItem(title, key)
        self.color_combo.currentIndexChanged.connect(lambda _i: self.set_color_mode(self.color_combo.currentData()))
        self.fit_button = QToolButton(text="Fit")
        self.fit_button.setToolTip("Show the whole map")
        self.fit_button.setAutoRaise(True)
        self.fit_button.clicked.connect(self.fit)
        # The view follows the map (streaming t-SNE steps, a dock shown or resized) until the user
        # pans or zooms; "Fit" hands it back to the map.
        self.viewbox.sigRangeChangedManually.connect(self._stop_following)
        self.recompute_button = QPushButton("Recompute map")
        self.recompute_button.clicked.connect(lambda: self.compute(*(self._map_key or (None, None))[:2], force=True))
        self.status = QLabel("No map yet: it appears once image features exist (after the first training).")
        self.status.setWordWrap(True)
        self.hint = QLabel()
        self.hint.setWordWrap(True)

        bar = QHBoxLayout()
        for widget in (self.lasso_button, self.rect_button, self.move_button, self.fit_button):
            bar.addWidget(widget)
        bar.addStretch(1)
        bar.addWidget(self.color_combo)
        bar.addWidget(self.recompute_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(bar)
        layout.addWidget(self.legend)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.status)
        layout.addWidget(self.hint)

        # -- hover thumbnail (a child label: no extra top-level window) -----------------------
        self.thumb_label = QFrame(self)
        self.thumb_label.setObjectName("mapThumbnail")
        self.thumb_label.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.thumb_label.setStyleSheet(
            "#mapThumbnail { background: palette(tool-tip-base); border: 1px solid palette(mid); border-radius: 4px; }"
            " QLabel { color: palette(tool-tip-text); }"
        )
        popup = QVBoxLayout(self.thumb_label)
        popup.setContentsMargins(4, 4, 4, 4)
        popup.setSpacing(2)
        self.thumb_image = QLabel()
        self.thumb_image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.thumb_caption = QLabel()
        popup.addWidget(self.thumb_image)
        popup.addWidget(self.thumb_caption)
        self.thumb_label.hide()
        self._hover_pos: QPointF | None = None
        self._hover_timer = QTimer(self)
        self._hover_timer.setSingleShot(True)
        self._hover_timer.setInterval(25)
        self._hover_timer.timeout.connect(self._update_hover)
        self.plot.scene().sigMouseMoved.connect(self._mouse_moved)
        self.plot.viewport().installEventFilter(self)

        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self._key_filter = _KeyFilter(self)
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
        self._thumb_cache.clear()
        self._map_key = None
        self._follow_layout = True
        self.set_layout(np.zeros(0, np.int64), np.zeros((0, 2), np.float32))
        self._group_records.clear()
        self._selection_records.clear()
        self.status.setText("No map yet: it appears once image features exist (after the first training).")

    def cancel(self) -> None:
        """Stop computing the layout and the colors; their late results will be dropped."""
        self._generation += 1
        self._colors_generation += 1
        self._colors_busy = self._colors_again = False
        for runner, name in ((self.runner, JOB_NAME), (self.reader, COLORS_JOB)):
            if runner is not None and not getattr(runner, "closed", False):
                runner.cancel(name)

    def set_layout(self, image_ids: Sequence[int] | np.ndarray, coords: np.ndarray, method: str = "",
                   colors: MapColors | None = None) -> None:
        """Place the points. Same image ids as before: points just move (the streaming case).

        New image ids need new colors: ``colors`` when given (the layout job reads them in the
        background), else they are read (see refresh_attributes)."""
        image_ids = np.asarray(image_ids, dtype=np.int64)
        coords = normalize_layout(coords)
        first = len(self.image_ids) == 0
        same = len(image_ids) == len(self.image_ids) and np.array_equal(image_ids, self.image_ids)
        self.coords = coords
        self.method = method or self.method
        if not same:
            old_ids = self.image_ids
            self.image_ids = image_ids
            self.selected = np.zeros(len(image_ids), dtype=bool)
            self._hover_index = -1
            if colors is not None and np.array_equal(colors.image_ids, image_ids):
                self.apply_colors(colors)
            else:
                # Until the colors arrive, keep each point's colors where the old map knew them.
                self.class_ids = align(old_ids, self.class_ids, image_ids, -1).astype(np.int64)
                self.predicted = align(old_ids, self.predicted, image_ids, -1).astype(np.int64)
                self.source_codes = align(old_ids, self.source_codes, image_ids, 0).astype(np.int32)
                self._regroup()
                self.refresh_attributes()
        else:
            if colors is not None and np.array_equal(colors.image_ids, image_ids):
                self.apply_colors(colors)
            self._move_points()
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
        """Re-read labels, sources, classes and predictions from the project and recolor: in the
        background with a reader runner (one read at a time; requests made meanwhile are merged
        into one more read), else at once."""
        if self.project is None or len(self.image_ids) == 0:
            self._regroup()
            return
        reader = self.reader
        if reader is None:
            self.apply_colors(self._read_colors(self.project, self.image_ids))
            return
        if getattr(reader, "closed", False):
            return
        if self._colors_busy:
            self._colors_again = True
            return
        self._colors_busy = True
        self._colors_generation += 1
        generation, image_ids = self._colors_generation, self.image_ids
        reader.submit(COLORS_JOB, _colors_job, self._read_colors, self.project, image_ids,
                      on_done=lambda outcome: self._colors_ready(generation, image_ids, outcome))

    def _colors_ready(self, generation: int, image_ids: np.ndarray, outcome: JobOutcome) -> None:
        if generation != self._colors_generation:
            return  # from before a cancel or another project
        self._colors_busy = False
        if outcome.status == "done" and np.array_equal(image_ids, self.image_ids):
            self.apply_colors(outcome.result)
        elif outcome.status == "done":
            self._colors_again = True  # the points changed meanwhile
        if self._colors_again:
            self._colors_again = False
            self.refresh_attributes()

    def _read_colors(self, project, image_ids: np.ndarray) -> MapColors:
        """Map colors; predictions come from ``predictions_fn`` when one was given (tests)."""
        colors = map_colors(project, image_ids)
        if self._predictions_fn is None:
            return colors
        table = self._predictions_fn(project) or {}
        lookup = {int(k): getattr(v, "class_id", v) for k, v in table.items()}
        predicted = np.asarray([-1 if lookup.get(int(i)) is None else lookup[int(i)] for i in image_ids], np.int64)
        return MapColors(colors.image_ids, colors.class_ids, colors.source_codes, colors.source_names,
                         predicted, colors.classes)

    # -- computing the layout -----------------------------------------------------------------
    def compute(self, backbone: str | None, layer: str | None = None, *, force: bool = False,
                job: Callable[..., Any] | None = None) -> bool:
        """Submit the embedding job (PCA now, t-SNE refining). Skipped when the map already shows
        these features for the same images, unless forced. Returns whether a job was submitted."""
        if self.runner is None or self.project is None:
            return False
        backbone = backbone or "efficientnet_lite0"
        key = (backbone, layer, self._image_count())
        if not force and key == self._map_key and len(self.image_ids):
            self.refresh_attributes()
            return False
        if getattr(self.runner, "closed", False):
            return False
        self.runner.cancel(JOB_NAME)
        self._generation += 1
        generation = self._generation
        self._map_key = key
        self.status.setText("Computing the map…")
        self.runner.submit(
            JOB_NAME, job or embedding_job, self.project, backbone, layer,
            on_partial=lambda result: self._on_partial(JOB_NAME, result) if generation == self._generation else None,
            on_done=lambda outcome: self._on_done(outcome) if generation == self._generation else None,
        )
        return True

    def _image_count(self) -> int:
        from sqlalchemy import func, select

        from storage.models import Image

        with self.project.session() as session:
            return int(session.scalar(select(func.count(Image.id))) or 0)

    def _on_partial(self, name: str, result: Any) -> None:
        if name != JOB_NAME or not isinstance(result, dict) or result.get("kind") != "embedding":
            return
        ids = result.get("image_ids")
        if ids is None:
            ids = self.image_ids
        self.set_layout(ids, result["coords"], result.get("method", ""), colors=result.get("colors"))
        if result.get("method") == "tsne":
            total = result.get("total_iterations")
            self.status.setText(
                f"{len(self.image_ids):,} images. Refining the map (t-SNE step {result.get('iteration')}"
                + (f" of {total})…" if total else ")…")
            )
        else:
            self.status.setText(f"{len(self.image_ids):,} images. Quick map (PCA); refining…")

    def _on_progress(self, name: str, fraction: float, message: str) -> None:
        if name == JOB_NAME and not len(self.image_ids) and message:
            self.status.setText(message + "…")

    def _on_done(self, outcome: JobOutcome) -> None:
        if outcome.status == "done" and isinstance(outcome.result, dict):
            self.set_layout(outcome.result["image_ids"], outcome.result["coords"], outcome.result.get("method", ""))
            n = len(self.image_ids)
            self.status.setText(
                f"{n:,} images, similar ones close together (t-SNE)." if self.method == "tsne"
                else f"{n:,} images (PCA)."
            ) if n else self.status.setText("No image features yet: train a model first.")
        elif outcome.status == "cancelled":
            if len(self.image_ids):
                self.status.setText(f"{len(self.image_ids):,} images (map refinement stopped).")
        else:
            self._map_key = None
            self.status.setText(f"The map could not be computed: {outcome.error}")

    # -- drawing ------------------------------------------------------------------------------
    def _class_colors(self) -> dict[int, tuple[str, str]]:
        return {int(c.id): (c.name, c.color) for c in self.classes}

    def _group_codes(self) -> tuple[np.ndarray, list[tuple[str, str, bool]]]:
        """Each point's group, and per group (legend name, color, hollow)."""
        n = len(self.image_ids)
        labeled = self.class_ids >= 0
        classes = self._class_colors()
        specs: list[tuple[str, str, bool]] = []
        codes = np.zeros(n, dtype=np.int64)
        if self.color_mode == "source":
            keys = self.source_codes.astype(np.int64)
            for s, name in enumerate(self.source_names):
                color = SOURCE_COLORS[s % len(SOURCE_COLORS)]
                specs.append((name or "(no source)", color, False))
                specs.append((f"{name or '(no source)'}, unlabeled", color, True))
            codes = keys * 2 + (~labeled)
            return codes, specs
        values = self.predicted if self.color_mode == "prediction" else self.class_ids
        order = [int(c.id) for c in self.classes]
        index_of = {cid: i for i, cid in enumerate(order)}
        for cid in order:
            name, color = classes[cid]
            specs.append((name, color, False))
            specs.append((f"{name}, unlabeled" if self.color_mode == "prediction" else name, color, True))
        none_group = len(specs)
        specs.append(("no prediction" if self.color_mode == "prediction" else "unlabeled", UNLABELED_COLOR, True))
        lut_keys = np.asarray(order, dtype=np.int64)
        codes[:] = none_group
        if len(lut_keys):
            sorter = np.argsort(lut_keys)
            pos = np.clip(np.searchsorted(lut_keys[sorter], values), 0, len(lut_keys) - 1)
            known = lut_keys[sorter][pos] == values
            class_index = np.asarray([index_of[int(k)] for k in lut_keys[sorter]], dtype=np.int64)[pos]
            if self.color_mode == "prediction":
                codes = np.where(known, class_index * 2 + (~labeled), none_group)
            else:
                codes = np.where(known & labeled, class_index * 2, none_group)
        return codes, specs

    def _regroup(self) -> None:
        """Rebuild the per-group scatter items (colors, sizes) and the legend."""
        for _idx, item in self._groups:
            self.plot.removeItem(item)
        self._groups = []
        offset = 0  # each group's slice of the shared point records
        self.legend.setText("")
        if len(self.image_ids) == 0:
            self._draw_selection()
            return
        codes, specs = self._group_codes()
        big = len(self.image_ids) > 20000
        entries = []
        for g, (name, color, hollow) in enumerate(specs):
            idx = np.flatnonzero(codes == g)
            if idx.size == 0:
                continue
            qcolor = QColor(color)
            if hollow:
                fill = QColor(qcolor)
                fill.setAlpha(40 if color != UNLABELED_COLOR else 90)
                item = pg.ScatterPlotItem(pxMode=True, size=4 if big else 6, symbol="o",
                                          pen=pg.mkPen(qcolor, width=1) if not big else None, brush=pg.mkBrush(fill))
                item.setZValue(10)
            else:
                item = pg.ScatterPlotItem(pxMode=True, size=6 if big else 9, symbol="o",
                                          pen=pg.mkPen(qcolor.darker(140), width=0.8) if not big else None,
                                          brush=pg.mkBrush(qcolor))
                item.setZValue(20)
            fill_scatter(item, self.coords[idx, 0], self.coords[idx, 1], self._group_records, offset)
            offset += idx.size
            self.plot.addItem(item)
            self._groups.append((idx, item))
            entries.append(
                f'<span style="color:{color}; font-size:large">{"○" if hollow else "●"}</span>&nbsp;'
                f"{html.escape(name)} ({idx.size:,})"
            )
        self.legend.setText("&nbsp;&nbsp;&nbsp;".join(entries))
        self._apply_cache_mode()
        self._draw_selection()

    def _apply_cache_mode(self) -> None:
        """Large maps keep each scatter item's drawing as a pixmap: hovering, drawing a lasso or
        showing a selection then repaint by copying pixmaps (4 ms) instead of drawing every
        point again (60 ms at 100k). Qt keeps those pixmaps in QPixmapCache, 10 MB by default,
        which a dozen window-sized pixmaps overflow; evicted pixmaps are redrawn on every
        paint, slower than no cache at all. So the limit is raised to what the items need
        (up to MAX_PIXMAP_CACHE_KB), and small maps, which draw faster than the pixmaps are
        copied, do without."""
        items = [item for _idx, item in self._groups] + [self.selection_item]
        mode = QGraphicsItem.CacheMode.NoCache
        if len(self.image_ids) >= CACHE_FROM_POINTS:
            size = self.plot.viewport().size()
            ratio = self.plot.devicePixelRatioF()
            needed_kb = int(size.width() * size.height() * ratio * ratio * 4 / 1024 * (len(items) + 1) * 1.25)
            if needed_kb <= MAX_PIXMAP_CACHE_KB:
                if QPixmapCache.cacheLimit() < needed_kb:
                    QPixmapCache.setCacheLimit(needed_kb)
                mode = QGraphicsItem.CacheMode.DeviceCoordinateCache
        for item in items:
            if item.cacheMode() != mode:
                item.setCacheMode(mode)

    def _move_points(self) -> None:
        for idx, item in self._groups:
            move_scatter(item, self.coords[idx, 0], self.coords[idx, 1])
        self._draw_selection()
        if 0 <= self._hover_index < len(self.coords):
            self.hover_item.setData(x=self.coords[[self._hover_index], 0], y=self.coords[[self._hover_index], 1])

    def _draw_selection(self) -> None:
        if len(self.selected) and self.selected.any():
            idx = np.flatnonzero(self.selected)
            fill_scatter(self.selection_item, self.coords[idx, 0], self.coords[idx, 1], self._selection_records)
        else:
            self.selection_item.setData(x=np.zeros(0), y=np.zeros(0))
        self._update_hint()

    def set_color_mode(self, mode: str) -> None:
        if mode not in dict(COLOR_MODES):
            raise ValueError(f"Unknown color mode {mode!r}")
        self.color_mode = mode
        index = self.color_combo.findData(mode)
        if index != self.color_combo.currentIndex():
            self.color_combo.setCurrentIndex(index)
        self._regroup()

    def set_tool(self, tool: str) -> None:
        self.viewbox.tool = tool
        button = {"lasso": self.lasso_button, "rect": self.rect_button, "move": self.move_button}[tool]
        if not button.isChecked():
            button.setChecked(True)

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
        if len(self.coords):
            lo = np.nanmin(self.coords, axis=0)
            hi = np.nanmax(self.coords, axis=0)
            self.viewbox.setRange(xRange=(float(lo[0]), float(hi[0])), yRange=(float(lo[1]), float(hi[1])), padding=0.05)

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

    def nearest_point(self, x: float, y: float, radius_px: float = HOVER_RADIUS_PX) -> int:
        """Index of the point nearest to (x, y) within radius_px screen pixels, else -1."""
        if len(self.coords) == 0:
            return -1
        pixel_w, pixel_h = self.viewbox.viewPixelSize()
        pixel_w, pixel_h = (pixel_w or 1.0), (pixel_h or 1.0)
        dx = (self.coords[:, 0] - x) / pixel_w
        dy = (self.coords[:, 1] - y) / pixel_h
        d2 = dx * dx + dy * dy
        index = int(np.argmin(d2))
        return index if d2[index] <= radius_px * radius_px else -1

    def click_at(self, x: float, y: float, additive: bool = False) -> None:
        index = self.nearest_point(x, y)
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
            return bool(len(self.selected) and self.selected.any())
        return bool(self.selected_ids) and self._class_for_key(event.text()) is not None

    def _class_for_key(self, text: str):
        for info in self.classes:
            if info.shortcut and info.shortcut == text:
                return info
        return None

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Escape and len(self.selected) and self.selected.any():
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
        if self._label_command_factory is not None:
            command = self._label_command_factory(ids, class_id, text)
        else:
            command = LabelImagesCommand(self.project, ids, class_id, text, on_changed=self._labels_written)
        self.undo_stack.push(command)
        return command

    def _labels_written(self, image_ids: list[int]) -> None:
        self.refresh_attributes()
        self.labels_changed.emit(list(image_ids))

    # -- hover --------------------------------------------------------------------------------
    def _mouse_moved(self, scene_pos) -> None:
        self._hover_pos = scene_pos
        if not self._hover_timer.isActive():
            self._hover_timer.start()

    def eventFilter(self, obj, event):
        if event.type() == QEvent.Type.Leave:
            self._set_hover(-1)
        elif event.type() == QEvent.Type.Resize and len(self.image_ids):
            self._apply_cache_mode()  # larger pixmaps: the cache may need more room
        return False

    def _update_hover(self) -> None:
        if self._hover_pos is None or not self.viewbox.sceneBoundingRect().contains(self._hover_pos):
            self._set_hover(-1)
            return
        pos = self.viewbox.mapSceneToView(self._hover_pos)
        self._set_hover(self.nearest_point(pos.x(), pos.y()))

    def _set_hover(self, index: int) -> None:
        if index == self._hover_index:
            if index >= 0:
                self._place_thumbnail()
            return
        self._hover_index = index
        if index < 0:
            self.hover_item.setData(x=np.zeros(0), y=np.zeros(0))
            self.thumb_label.hide()
            return
        self.hover_item.setData(x=self.coords[[index], 0], y=self.coords[[index], 1])
        image_id = int(self.image_ids[index])
        pixmap = self._thumbnail(image_id)
        names = {int(c.id): c.name for c in self.classes}
        label = names.get(int(self.class_ids[index]), "unlabeled") if len(self.class_ids) > index else ""
        caption = f"#{image_id} · {label}"
        if len(self.predicted) > index and self.predicted[index] >= 0:
            caption += f" · predicted {names.get(int(self.predicted[index]), '?')}"
        has_image = pixmap is not None and not pixmap.isNull()
        self.thumb_image.setPixmap(pixmap if has_image else QPixmap())
        self.thumb_image.setVisible(has_image)
        self.thumb_caption.setText(caption)
        self.thumb_label.adjustSize()
        self._place_thumbnail()
        self.thumb_label.show()
        self.thumb_label.raise_()

    def _place_thumbnail(self) -> None:
        if self._hover_pos is None:
            return
        view_pos = self.plot.mapFromScene(self._hover_pos)
        pos = self.plot.mapTo(self, view_pos)
        x, y = pos.x() + 16, pos.y() + 16
        if x + self.thumb_label.width() > self.width():
            x = pos.x() - 16 - self.thumb_label.width()
        if y + self.thumb_label.height() > self.height():
            y = pos.y() - 16 - self.thumb_label.height()
        self.thumb_label.move(max(0, x), max(0, y))

    def _thumbnail(self, image_id: int) -> QPixmap | None:
        if image_id in self._thumb_cache:
            self._thumb_cache.move_to_end(image_id)
            return self._thumb_cache[image_id]
        data = None
        if self._thumbnail_fn is not None:
            data = self._thumbnail_fn(image_id)
        elif self.project is not None:
            try:
                from storage.images import read_thumbnails
            except ImportError:
                read_thumbnails = None
            if read_thumbnails is not None:
                data = read_thumbnails(self.project, [image_id]).get(image_id)
        pixmap = QPixmap()
        if data:
            pixmap.loadFromData(data)
            if not pixmap.isNull() and max(pixmap.width(), pixmap.height()) > 128:
                pixmap = pixmap.scaled(128, 128, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
        self._thumb_cache[image_id] = pixmap
        while len(self._thumb_cache) > 300:
            self._thumb_cache.popitem(last=False)
        return pixmap

    def _update_hint(self) -> None:
        n = int(self.selected.sum()) if len(self.selected) else 0
        if n:
            keys = ", ".join(f"{c.shortcut} = {c.name}" for c in self.classes if c.shortcut)
            self.hint.setText(f"{n} selected. Press a number to label them all ({keys}); Esc clears; Ctrl+Z undoes.")
        else:
            self.hint.setText("Hover a point to see the image. Click one, or drag around many, then press a number key to label them.")
