"""The heat map over a picture in Qt: what the image viewer shows when "where the model looks" is on.

The viewer runs engine.insight.explain.explain_image as a job and hands its Explanation, with the
pixmap it shows, to ``with_heat_map``. Colours and transparency come from engine.insight.heatmap, so
the app shows what ``sortlab explain --out`` writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPen, QPixmap

from engine.insight.heatmap import DEFAULT_OPACITY, heat_colors, heat_over_image, peak_pixel

if TYPE_CHECKING:  # the explanation module brings scikit-learn: not needed for the window to appear
    from engine.insight.explain import Explanation


def heat_layer(explanation: Explanation, width: int, height: int, opacity: float = DEFAULT_OPACITY) -> QImage:
    """The coloured, mostly transparent heat layer for a picture shown at ``width`` x ``height``."""
    rgba = np.ascontiguousarray(heat_colors(heat_over_image(explanation, width, height), opacity))
    image = QImage(rgba.data, width, height, 4 * width, QImage.Format.Format_RGBA8888)
    return image.copy()  # own the pixels: ``rgba`` is freed when this function returns


def with_heat_map(pixmap: QPixmap, explanation: Explanation, opacity: float = DEFAULT_OPACITY) -> QPixmap:
    """A copy of ``pixmap`` (the picture the explanation is of, at any size) with the heat map painted
    over it and a ring around the hottest point."""
    result = QPixmap(pixmap)
    if result.isNull():
        return result
    width, height = result.width(), result.height()
    painter = QPainter(result)
    try:
        painter.drawImage(0, 0, heat_layer(explanation, width, height, opacity))
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        radius = max(4.0, 0.03 * min(width, height))
        painter.setPen(QPen(QColor(Qt.GlobalColor.white), max(1.0, radius / 4)))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawEllipse(QPointF(*peak_pixel(explanation, width, height)), radius, radius)
    finally:
        painter.end()
    return result


def heat_caption(explanation: Explanation) -> str:
    """One line in plain words saying what the colours show (the predicted class, or another one the
    user chose to explain)."""
    said = explanation.class_names[int(explanation.probabilities.argmax())]
    if said == explanation.class_name:
        return f"Red: what made the model say {said} ({explanation.probability:.0%})"
    return (f"Red: what speaks for {explanation.class_name} ({explanation.probability:.0%}); "
            f"the model says {said}")
