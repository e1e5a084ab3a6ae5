"""How fast does a 100,000-image project open and scroll in the main window's thumbnail grid?

Generates the project directly (executemany of rows with tiny generated JPEG thumbnails, three
classes, 30% labeled, one active model with a prediction for every image) instead of going
through the import pipeline, then measures in the real MainWindow built the way gui/app.py builds
it, insight panels (training, map, model report) docked (``--bare``: the workspace alone;
offscreen is fine):

- open_s: from open_project() until the grid has painted the first screen of real thumbnails;
- scroll_fps: the view is scrolled a page at a time through many pages, each step processing
  events (thumbnail loads included) and repainting; frames per second of that loop;
- peak_rss_mb: the largest resident memory (psutil) sampled while opening and scrolling;
  process_peak_rss_mb is the kernel's high-water mark, project generation included.

Without ``--project`` the project lives in a temporary directory that is removed afterwards.
Last line: JSON {"benchmark": "grid", "images", "open_s", "scroll_fps", "peak_rss_mb", "window", ...}.
Targets: open_s < 2, scroll_fps >= 30, memory bounded (thumbnail cache is an LRU).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

CLASSES = [("cans", "#E69F00"), ("bottles", "#56B4E9"), ("paper", "#009E73")]
DISTINCT_THUMBNAILS = 256


def _tiny_jpegs(count: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """Small coloured pictures (a shape on a tinted background) so tiles look like tiles."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    pictures = []
    for _ in range(count):
        background = tuple(int(v) for v in rng.integers(120, 240, 3))
        image = Image.new("RGB", size, background)
        draw = ImageDraw.Draw(image)
        x, y = (int(v) for v in rng.integers(0, size[0] // 2, 2))
        draw.ellipse([x, y, x + size[0] // 2, y + size[1] // 2], fill=tuple(int(v) for v in rng.integers(0, 120, 3)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=70)
        pictures.append(buffer.getvalue())
    return pictures


def generate_project(path: Path, images: int, seed: int = 0) -> None:
    """A project with ``images`` rows, made with executemany (seconds, not the import pipeline)."""
    from storage.project import create_project

    create_project(path).close()
    thumbnails = _tiny_jpegs(DISTINCT_THUMBNAILS, (120, 90), seed)
    data = _tiny_jpegs(8, (16, 12), seed + 1)
    rng = np.random.default_rng(seed)
    now = dt.datetime(2024, 1, 1).isoformat(sep=" ")
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.executemany(
                "INSERT INTO classes (id, name, color, position, shortcut) VALUES (?, ?, ?, ?, ?)",
                [(i + 1, name, color, i, str(i + 1)) for i, (name, color) in enumerate(CLASSES)],
            )
            connection.executemany(
                "INSERT INTO images (id, content_hash, original_name, original_path, source, width, height, "
                "original_format, imported_at, data, thumbnail, split, split_pinned) "
                "VALUES (?, ?, ?, ?, ?, 120, 90, 'JPEG', ?, ?, ?, 'train', 0)",
                (
                    (i, f"{i:064x}", f"img_{i:06d}.jpg", f"/bench/cam{i % 4}/img_{i:06d}.jpg", f"cam{i % 4}",
                     now, data[i % len(data)], thumbnails[(i * 7919) % len(thumbnails)])
                    for i in range(1, images + 1)
                ),
            )
            labeled = rng.random(images) < 0.3
            truth = rng.integers(1, len(CLASSES) + 1, images)
            connection.executemany(
                "INSERT INTO labels (image_id, class_id, labeled_at, origin) VALUES (?, ?, ?, 'manual')",
                ((int(i) + 1, int(truth[i]), now) for i in np.flatnonzero(labeled)),
            )
            connection.execute(
                "INSERT INTO model_versions (id, created_at, method, backbone, layer, params, class_names, "
                "class_ids, metrics, weights, is_active, n_labeled) VALUES (1, ?, 'logreg', 'bench', 'bench', "
                "'{}', ?, ?, '{}', x'', 1, ?)",
                (now, json.dumps([c[0] for c in CLASSES]), json.dumps([1, 2, 3]), int(labeled.sum())),
            )
            probabilities = rng.dirichlet(np.ones(len(CLASSES)), images).astype("<f4")
            top = probabilities.argmax(axis=1)
            ordered = np.sort(probabilities, axis=1)
            connection.executemany(
                "INSERT INTO predictions (model_version_id, image_id, class_index, class_id, probability, margin, "
                "probabilities, out_of_fold) VALUES (1, ?, ?, ?, ?, ?, ?, 0)",
                (
                    (i + 1, int(top[i]), int(top[i]) + 1, float(ordered[i, -1]), float(ordered[i, -1] - ordered[i, -2]),
                     probabilities[i].tobytes())
                    for i in range(images)
                ),
            )
    finally:
        connection.close()


def _wait(app, predicate, timeout_s: float) -> None:
    deadline = time.perf_counter() + timeout_s
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError("timed out waiting for the grid")
        app.processEvents()


def _screen_painted(window) -> bool:
    """Every tile of the first screen has its real thumbnail."""
    grid = window.grid
    rows = grid.visible_rows()
    return len(rows) > 0 and all(grid.grid_model.pixmap(grid.grid_model.image_id(r)) is not None for r in rows)


def measure(path: Path, pages: int, insight: bool = True) -> dict:
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from gui.app import create_main_window
    from gui.runner import QtJobRunner
    from storage.project import open_project

    app = QApplication.instance() or QApplication(sys.argv)
    # A throwaway settings file: the benchmark must not touch the user's recent projects.
    settings = QSettings(str(path.with_suffix(".ini")), QSettings.Format.IniFormat)
    # Built as gui/app.py builds it (insight panels docked): the window users actually get.
    window = create_main_window(insight, settings=settings, data_dir=path.parent, projects_dir=path.parent)
    process = psutil.Process()
    rss = [process.memory_info().rss]
    steps = {"window": rss[-1]}  # resident memory after each step, to tell where the peak comes from
    window.resize(1400, 900)
    window.show()
    app.processEvents()
    runners = window.findChildren(QtJobRunner)
    # Start-up jobs (the training panel warms up torch and scikit-learn) end before the user has
    # picked a project on the welcome screen; what the panels do on opening one is measured.
    started = time.perf_counter()
    _wait(app, lambda: not any(r.busy for r in runners), 300)
    startup_jobs_s = time.perf_counter() - started
    rss.append(process.memory_info().rss)
    steps["startup_jobs"] = rss[-1]

    started = time.perf_counter()
    project = open_project(path)
    window.set_project(project)
    _wait(app, lambda: _screen_painted(window), 30)
    window.grid.viewport().repaint()
    open_s = time.perf_counter() - started
    rows = window.grid_model.rowCount()
    rss.append(process.memory_info().rss)
    steps["opened"] = rss[-1]

    scrollbar = window.grid.verticalScrollBar()
    frames = 0
    started = time.perf_counter()
    for _ in range(pages):
        scrollbar.setValue(min(scrollbar.maximum(), scrollbar.value() + scrollbar.pageStep()))
        app.processEvents()
        window.grid.viewport().repaint()
        frames += 1
        if frames % 10 == 0:
            rss.append(process.memory_info().rss)
    scroll_s = time.perf_counter() - started
    # Then let the last screen fill in: scrolling never blocks on thumbnails.
    _wait(app, lambda: _screen_painted(window), 30)
    cached = window.grid_model.cached_thumbnails
    rss.append(process.memory_info().rss)
    steps["scrolled"] = rss[-1]
    # What the panels' jobs do once a project is open (the report, the advice) ends before closing.
    _wait(app, lambda: not any(r.busy for r in runners), 300)
    rss.append(process.memory_info().rss)
    steps["settled"] = rss[-1]
    heavy = [m for m in ("torch", "sklearn", "openTSNE", "onnxruntime", "scipy", "pyqtgraph") if m in sys.modules]

    window.close_project()  # cancels the panels' jobs; closing with a job running would ask first
    _wait(app, lambda: not any(r.busy for r in runners), 300)
    window.close()
    project.close()
    app.processEvents()
    return {
        "startup_jobs_s": round(startup_jobs_s, 1),
        "rows": rows,
        "open_s": round(open_s, 3),
        "scroll_fps": round(frames / scroll_s, 1),
        "scrolled_pages": pages,
        "cached_thumbnails": cached,
        "peak_rss_mb": round(max(rss) / 2**20, 1),
        "rss_mb_after": {step: round(value / 2**20, 1) for step, value in steps.items()},
        "heavy_imported": heavy,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--project", type=Path, help="reuse (or create) this project file (kept afterwards)")
    parser.add_argument("--bare", action="store_true", help="the workspace alone, without the insight panels")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sortlab-grid-") as scratch:
        path = args.project or Path(scratch) / "grid.sortlab"
        generate_s = None
        if not path.exists():
            started = time.perf_counter()
            generate_project(path, args.images)
            generate_s = round(time.perf_counter() - started, 1)
            print(f"generated {args.images} images in {generate_s} s at {path}", file=sys.stderr)
        result = measure(path, args.pages, insight=not args.bare)
    print(json.dumps({
        "benchmark": "grid",
        "images": result["rows"],
        "open_s": result["open_s"],
        "scroll_fps": result["scroll_fps"],
        "peak_rss_mb": result["peak_rss_mb"],
        "scrolled_pages": result["scrolled_pages"],
        "cached_thumbnails": result["cached_thumbnails"],
        "window": "workspace only" if args.bare else "with insight panels (as gui/app.py)",
        "startup_jobs_s": result["startup_jobs_s"],
        "rss_mb_after": result["rss_mb_after"],
        "heavy_imported": result["heavy_imported"],
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "generate_s": generate_s,
        "process_peak_rss_mb": round(_peak_rss_bytes() / 2**20, 1),
        "goal": {"open_s": 2.0, "scroll_fps": 30},
    }))
    return 0


def _peak_rss_bytes() -> int:
    """Peak resident set size (ru_maxrss is in KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    sys.exit(main())
