"""A fast path into pyqtgraph's ScatterPlotItem for the map: whole numpy arrays in, no per-point
Python work, for items whose style (symbol, size, pen, brush) is set on the item, never per point.

pyqtgraph 0.14 keeps an item's points in a record array (``item.data``) of x, y and a few
Python-object fields; these functions write that array directly where setData would resolve every
point's symbol one by one, and fall back to setData for any other layout."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg

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
    """Replace all points of a ScatterPlotItem.

    setData() resolves each point's symbol in pyqtgraph's symbol atlas one by one in Python
    (about 4 us a point: 0.4-0.9 s at 100k, on the GUI thread). With one style for all points
    every point gets the same atlas rectangle, so this lets setData resolve one point and gives
    all points that record: from ``pool`` (a slice from ``start``) when given, else copied."""
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
