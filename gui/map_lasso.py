"""The map's mouse tools: a ViewBox whose left drag draws a lasso or a rectangle and whose left
click reports where it fell; the map turns both into selections. 'move' leaves pyqtgraph's own
panning; the wheel zooms with every tool."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QPainterPath
from PySide6.QtWidgets import QGraphicsPathItem

TOOLS = ("lasso", "rect", "move")
MIN_LASSO_STEP_PX = 3  # screen distance between lasso vertices: a smooth outline, few vertices


class LassoViewBox(pg.ViewBox):
    """Draws the outline while dragging; emits the finished polygon in map coordinates."""

    polygon_drawn = Signal(object, bool)  # (N, 2) float64 polygon, additive (Shift held)
    clicked = Signal(float, float, bool)  # x, y in map coordinates, additive

    def __init__(self) -> None:
        super().__init__(enableMenu=False)
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
            if self._last_screen is None or (screen - self._last_screen).manhattanLength() >= MIN_LASSO_STEP_PX:
                self._drag_points.append((pos.x(), pos.y()))
                self._last_screen = screen
        self._draw_outline()
        if ev.isFinish():
            additive = bool(ev.modifiers() & Qt.KeyboardModifier.ShiftModifier)
            polygon = np.asarray(self._drag_points, dtype=np.float64)
            self._drag_points = []
            self.outline.hide()
            self.polygon_drawn.emit(polygon, additive)

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
        if ev.button() != Qt.MouseButton.LeftButton:
            return super().mouseClickEvent(ev)
        ev.accept()
        pos = self.mapSceneToView(ev.scenePos())
        self.clicked.emit(pos.x(), pos.y(), bool(ev.modifiers() & Qt.KeyboardModifier.ShiftModifier))
