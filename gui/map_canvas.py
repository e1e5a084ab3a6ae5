"""The map's drawing surface: every image as a point, in a handful of ScatterPlotItems, one per
color group (a class, a source, or "unlabeled"), each fed whole numpy arrays with one brush, so no
per-point Python objects exist in the hot paths (streaming layouts, hover, selection). Also the
selection rings, the hover ring, and which point lies under the mouse.

``point_groups`` decides the groups and their legend; ``MapCanvas`` draws what it is given and
knows nothing about projects or jobs (gui/embedding_view.py does)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QColor, QPixmapCache
from PySide6.QtWidgets import QGraphicsItem

from gui.map_lasso import LassoViewBox
from gui.map_scatter import RecordPool, fill_scatter, move_scatter

COLOR_MODES = (("label", "Color by label"), ("prediction", "Color by prediction"), ("source", "Color by source"))
UNLABELED_COLOR = "#9a9a9a"
SOURCE_COLORS = ["#4E79A7", "#F28E2B", "#59A14F", "#E15759", "#B07AA1", "#76B7B2", "#EDC948", "#9C755F", "#FF9DA7"]
HOVER_RADIUS_PX = 8.0
BIG_MAP_POINTS = 20_000  # larger maps draw smaller points without outlines
CACHE_FROM_POINTS = 30_000  # maps this large keep their drawing as pixmaps (see apply_cache_mode)
MAX_PIXMAP_CACHE_KB = 160 * 1024


class GroupStyle(NamedTuple):
    """One color group: its legend name, its color, and hollow (unlabeled) or filled (labeled)."""

    name: str
    color: str
    hollow: bool


def point_groups(mode: str, class_ids: np.ndarray, predicted: np.ndarray, source_codes: np.ndarray,
                 source_names: Sequence[str], classes: Sequence) -> tuple[np.ndarray, list[GroupStyle]]:
    """Each point's group index and every group's style, for one color mode.

    'label': a filled group per class, one gray hollow group for the unlabeled points.
    'prediction': per class a filled group (labeled) and a hollow one (only predicted), plus
    gray for no prediction. 'source': per source, filled labeled and hollow unlabeled points.
    ``classes`` are storage.catalog.ClassInfo in display order."""
    labeled = class_ids >= 0
    styles: list[GroupStyle] = []
    if mode == "source":
        for s, name in enumerate(source_names):
            color = SOURCE_COLORS[s % len(SOURCE_COLORS)]
            styles.append(GroupStyle(name or "(no source)", color, False))
            styles.append(GroupStyle(f"{name or '(no source)'}, unlabeled", color, True))
        return source_codes.astype(np.int64) * 2 + (~labeled), styles
    by_prediction = mode == "prediction"
    values = predicted if by_prediction else class_ids
    for info in classes:
        styles.append(GroupStyle(info.name, info.color, False))
        styles.append(GroupStyle(f"{info.name}, unlabeled" if by_prediction else info.name, info.color, True))
    none_group = len(styles)
    styles.append(GroupStyle("no prediction" if by_prediction else "unlabeled", UNLABELED_COLOR, True))
    codes = np.full(len(class_ids), none_group, dtype=np.int64)
    keys = np.asarray([int(info.id) for info in classes], dtype=np.int64)
    if len(keys):
        sorter = np.argsort(keys)
        pos = np.clip(np.searchsorted(keys[sorter], values), 0, len(keys) - 1)
        known = keys[sorter][pos] == values
        class_index = sorter[pos]  # the class's display position
        if by_prediction:
            codes = np.where(known, class_index * 2 + (~labeled), none_group)
        else:
            codes = np.where(known & labeled, class_index * 2, none_group)
    return codes, styles


class MapCanvas(pg.PlotWidget):
    """Draws groups of points, the selection and the hovered point; finds the point under the mouse."""

    _n_points = 0  # points drawn (resizeEvent already runs inside PlotWidget.__init__)

    def __init__(self, background: QColor):
        viewbox = LassoViewBox()
        super().__init__(viewBox=viewbox, background=background)
        self.viewbox = viewbox
        self.hideAxis("left")
        self.hideAxis("bottom")
        self.getPlotItem().setMenuEnabled(False)
        self.getPlotItem().hideButtons()  # pyqtgraph's "A" (auto-range): the toolbar's Fit does that
        self.setAntialiasing(False)
        self.viewbox.setAspectLocked(False)
        self.groups: list[tuple[np.ndarray, pg.ScatterPlotItem]] = []  # (point indices, item)
        self._group_records = RecordPool()
        self._selection_records = RecordPool()
        ring = "#111111" if background.lightness() > 128 else "#ffffff"
        self.selection_item = pg.ScatterPlotItem(pxMode=True, size=12, symbol="o", brush=None,
                                                 pen=pg.mkPen(ring, width=1.6))
        self.selection_item.setZValue(500)
        self.addItem(self.selection_item)
        self.hover_item = pg.ScatterPlotItem(pxMode=True, size=14, symbol="o", brush=None, pen=pg.mkPen("#1f6feb", width=2))
        self.hover_item.setZValue(600)
        self.addItem(self.hover_item)

    def forget_points(self) -> None:
        """Another project: drop the shared point records (the next map may be much smaller)."""
        self._group_records.clear()
        self._selection_records.clear()

    def draw_groups(self, coords: np.ndarray, codes: np.ndarray, styles: Sequence[GroupStyle]) -> str:
        """Rebuild the per-group scatter items; returns the legend (rich text) of the groups drawn."""
        for _idx, item in self.groups:
            self.removeItem(item)
        self.groups = []
        self._n_points = len(coords)
        big = len(coords) > BIG_MAP_POINTS
        offset = 0  # each group's slice of the shared point records
        entries = []
        for g, style in enumerate(styles):
            idx = np.flatnonzero(codes == g)
            if idx.size == 0:
                continue
            item = _group_item(style, big)
            fill_scatter(item, coords[idx, 0], coords[idx, 1], self._group_records, offset)
            offset += idx.size
            self.addItem(item)
            self.groups.append((idx, item))
            entries.append(
                f'<span style="color:{style.color}; font-size:large">{"○" if style.hollow else "●"}</span>&nbsp;'
                f"{html.escape(style.name)} ({idx.size:,})"
            )
        self.apply_cache_mode(len(coords))
        return "&nbsp;&nbsp;&nbsp;".join(entries)

    def move_points(self, coords: np.ndarray) -> None:
        """New positions for the same points (a streamed t-SNE step)."""
        for idx, item in self.groups:
            move_scatter(item, coords[idx, 0], coords[idx, 1])

    def draw_selection(self, coords: np.ndarray, selected: np.ndarray) -> None:
        if len(selected) and selected.any():
            idx = np.flatnonzero(selected)
            fill_scatter(self.selection_item, coords[idx, 0], coords[idx, 1], self._selection_records)
        else:
            self.selection_item.setData(x=np.zeros(0), y=np.zeros(0))

    def draw_hover(self, coords: np.ndarray, index: int) -> None:
        """Ring the point at ``index`` (none for -1)."""
        if 0 <= index < len(coords):
            self.hover_item.setData(x=coords[[index], 0], y=coords[[index], 1])
        else:
            self.hover_item.setData(x=np.zeros(0), y=np.zeros(0))

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self._n_points:
            self.apply_cache_mode(self._n_points)  # larger pixmaps: the cache may need more room

    def apply_cache_mode(self, n_points: int) -> None:
        """Large maps keep each scatter item's drawing as a pixmap: hovering, drawing a lasso or
        showing a selection then repaint by copying pixmaps (4 ms) instead of drawing every
        point again (60 ms at 100k). Qt keeps those pixmaps in QPixmapCache, 10 MB by default,
        which a dozen window-sized pixmaps overflow; evicted pixmaps are redrawn on every
        paint, slower than no cache at all. So the limit is raised to what the items need
        (up to MAX_PIXMAP_CACHE_KB), and small maps, which draw faster than the pixmaps are
        copied, do without."""
        items = [item for _idx, item in self.groups] + [self.selection_item]
        mode = QGraphicsItem.CacheMode.NoCache
        if n_points >= CACHE_FROM_POINTS:
            size = self.viewport().size()
            ratio = self.devicePixelRatioF()
            needed_kb = int(size.width() * size.height() * ratio * ratio * 4 / 1024 * (len(items) + 1) * 1.25)
            if needed_kb <= MAX_PIXMAP_CACHE_KB:
                if QPixmapCache.cacheLimit() < needed_kb:
                    QPixmapCache.setCacheLimit(needed_kb)
                mode = QGraphicsItem.CacheMode.DeviceCoordinateCache
        for item in items:
            if item.cacheMode() != mode:
                item.setCacheMode(mode)

    def fit(self, coords: np.ndarray) -> None:
        """Show every point (with a small margin)."""
        if len(coords):
            lo = np.nanmin(coords, axis=0)
            hi = np.nanmax(coords, axis=0)
            self.viewbox.setRange(xRange=(float(lo[0]), float(hi[0])), yRange=(float(lo[1]), float(hi[1])), padding=0.05)

    def nearest_point(self, coords: np.ndarray, x: float, y: float, radius_px: float = HOVER_RADIUS_PX) -> int:
        """Index of the point nearest to map position (x, y) within radius_px screen pixels, else -1."""
        if len(coords) == 0:
            return -1
        pixel_w, pixel_h = self.viewbox.viewPixelSize()
        pixel_w, pixel_h = (pixel_w or 1.0), (pixel_h or 1.0)
        dx = (coords[:, 0] - x) / pixel_w
        dy = (coords[:, 1] - y) / pixel_h
        d2 = dx * dx + dy * dy
        index = int(np.argmin(d2))
        return index if d2[index] <= radius_px * radius_px else -1


def _group_item(style: GroupStyle, big: bool) -> pg.ScatterPlotItem:
    """A scatter item styled once for all its points: filled and on top for labeled points,
    hollow with a faint fill below them for the others."""
    color = QColor(style.color)
    if style.hollow:
        fill = QColor(color)
        fill.setAlpha(40 if style.color != UNLABELED_COLOR else 90)
        item = pg.ScatterPlotItem(pxMode=True, size=4 if big else 6, symbol="o",
                                  pen=None if big else pg.mkPen(color, width=1), brush=pg.mkBrush(fill))
        item.setZValue(10)
    else:
        item = pg.ScatterPlotItem(pxMode=True, size=6 if big else 9, symbol="o",
                                  pen=None if big else pg.mkPen(color.darker(140), width=0.8), brush=pg.mkBrush(color))
        item.setZValue(20)
    return item
