"""Is the embedding map smooth with 10,000 points and usable with 100,000?

Drives the real EmbeddingView widget offscreen (no project: the points, labels and predictions
are made up here, the way the map job and the colors read hand them over) and times, each
including the repaint the user waits for:

- ``set``: the first layout of N new points with their colors (PCA arriving);
- ``move``: the same points moving (each streamed t-SNE step);
- ``recolor``: new colors after labeling (the background read arriving) and a color-mode switch;
- ``hover``: the pointer over a point (nearest point, highlight, thumbnail popup);
- ``lasso``: a 200-vertex lasso around a quarter of the map, and the selection drawn.

Each figure is the median of a few repeats. Last line: JSON {"benchmark": "embedding_view",
"points_10k_set_ms", ..., "lasso_100k_ms", "peak_rss_mb"}. Smooth means a move or hover well
under 50 ms at 10k; usable means no interaction over a few hundred ms at 100k.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PySide6.QtCore import QPointF  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

REPEATS = 5


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def layout(n: int, seed: int, k: int = 12) -> np.ndarray:
    """Clustered 2-D points, like a t-SNE map of images."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-40, 40, (k, 2))
    return (centers[rng.integers(0, k, n)] + rng.normal(0, 4, (n, 2))).astype(np.float32)


def colors(ids: np.ndarray, classes: list, seed: int):
    from engine.insight.projection import MapColors

    rng = np.random.default_rng(seed)
    n = len(ids)
    class_ids = np.asarray([c.id for c in classes], np.int64)
    labels = np.where(rng.random(n) < 0.3, class_ids[rng.integers(0, len(class_ids), n)], -1)
    predicted = class_ids[rng.integers(0, len(class_ids), n)]
    sources = rng.integers(0, 3, n).astype(np.int32)
    return MapColors(ids, labels.astype(np.int64), sources, ["camera", "phone", "scanner"], predicted, classes)


def timed(app: QApplication, view, action) -> float:
    """Milliseconds for ``action()`` plus the repaint it causes."""
    app.processEvents()
    started = time.perf_counter()
    action()
    view.plot.viewport().repaint()
    app.processEvents()
    return (time.perf_counter() - started) * 1000.0


def median_ms(app, view, actions) -> float:
    return round(float(np.median([timed(app, view, action) for action in actions])), 1)


def measure(app: QApplication, n: int, tag: str) -> dict:
    from gui.embedding_view import EmbeddingView
    from storage.catalog import ClassInfo

    palette = ["#4E79A7", "#F28E2B", "#59A14F", "#E15759", "#B07AA1"]
    classes = [ClassInfo(i + 1, f"class {i + 1}", palette[i], i, str(i + 1)) for i in range(5)]
    view = EmbeddingView(None, None)  # no project: hovering shows captions without thumbnails
    view.resize(900, 700)
    view.show()
    app.processEvents()
    ids = np.arange(1, n + 1, dtype=np.int64)
    result = {}

    def set_new(seed):
        view.set_layout(np.zeros(0, np.int64), np.zeros((0, 2), np.float32))
        app.processEvents()
        return timed(app, view, lambda: view.set_layout(ids, layout(n, seed), "pca", colors=colors(ids, classes, seed)))

    result[f"points_{tag}_set_ms"] = round(float(np.median([set_new(s) for s in range(3)])), 1)
    steps = [layout(n, 100 + s) for s in range(REPEATS)]
    result[f"points_{tag}_move_ms"] = median_ms(app, view, [lambda c=c: view.set_layout(ids, c, "tsne") for c in steps])
    recolors = [colors(ids, classes, 200 + s) for s in range(REPEATS)]
    result[f"points_{tag}_recolor_ms"] = median_ms(app, view, [lambda c=c: view.apply_colors(c) for c in recolors])
    modes = ["prediction", "source", "label", "prediction", "label"]
    result[f"points_{tag}_color_mode_ms"] = median_ms(app, view, [lambda m=m: view.set_color_mode(m) for m in modes])
    result[f"points_{tag}_paint_ms"] = median_ms(app, view, [lambda: view.plot.viewport().update()] * REPEATS)

    # Hover: the pointer over different points, as the mouse sweeps across the map.
    rng = np.random.default_rng(3)

    def hover(index: int) -> None:
        x, y = view.coords[index]
        view.hover.scene_pos = view.viewbox.mapViewToScene(QPointF(float(x), float(y)))
        view.hover.update()

    targets = rng.integers(0, n, REPEATS)
    result[f"hover_{tag}_ms"] = median_ms(app, view, [lambda i=i: hover(int(i)) for i in targets])
    assert view.hover.index >= 0, "the hover found no point"

    # Lasso: a wobbly 200-vertex loop around about a quarter of the map.
    lo, hi = view.coords.min(axis=0), view.coords.max(axis=0)
    center = lo + (hi - lo) * 0.3
    radius = (hi - lo) * 0.28
    angles = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    wobble = 1 + 0.05 * np.sin(angles * 7)
    polygon = np.c_[center[0] + radius[0] * wobble * np.cos(angles), center[1] + radius[1] * wobble * np.sin(angles)]
    result[f"lasso_{tag}_ms"] = median_ms(app, view, [lambda: view.select_polygon(polygon)] * REPEATS)
    result[f"lasso_{tag}_selected"] = int(view.selected.sum())
    result[f"clear_selection_{tag}_ms"] = median_ms(app, view, [lambda: view.select_indices(np.zeros(0, np.int64))] * 3)
    view.close()
    view.deleteLater()
    app.processEvents()
    print(f"{n:>7} points: " + ", ".join(f"{k} {v}" for k, v in result.items()), flush=True)
    return result


def main() -> int:
    app = QApplication.instance() or QApplication(sys.argv)
    result: dict = {"benchmark": "embedding_view"}
    for n, tag in ((10_000, "10k"), (100_000, "100k")):
        result.update(measure(app, n, tag))
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
