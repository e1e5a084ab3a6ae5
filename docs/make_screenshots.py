"""Regenerate the README's screenshots from the app itself, on real images.

    .venv/bin/python docs/make_screenshots.py [IMAGE_FOLDER]

IMAGE_FOLDER is a folder-per-class collection (default: ../shared/data/hymenoptera/train; without
it, the bundled handwritten-digits demo). The script builds a throwaway project in a temporary
folder, labels a growing share of the images and trains after each step (so the training panel
has a history to plot), leaves a third unlabeled (so suggestions show), then opens the real main
window, waits for the embedding map to finish and saves four PNGs into docs/screenshots/ (the window at
1366 x 768, the training panel, the map, the viewer's heat map).
Run it under a real X server (``xvfb-run -s '-screen 0 1366x768x24' ...``) for real fonts; the
offscreen platform works too.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "screenshots"
DEFAULT_FOLDER = ROOT.parent / "shared" / "data" / "hymenoptera" / "train"
LABELED_STEPS = (10, 20, 40, 80)  # labels per step before the final training on two thirds


def build_project(path: Path, folder: Path | None):
    """A project with two thirds of its images labeled and one model version per labeling step."""
    import numpy as np

    from engine.runtime.jobs import JobContext
    from engine.models.training import train_model
    from storage import catalog
    from storage.project import open_project

    context = JobContext()
    if folder is None:
        from engine.images.demo import build_demo_project

        build_demo_project(context, path)
        project = open_project(path)
    else:
        from engine.images.importing import import_paths

        project = open_project(path, create=True)
        import_paths(context, project, [folder], labels_from_folders=True)
    states = [s for s in catalog.label_states(project, _all_image_ids(project)) if s.class_id is not None]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(states))
    keep = len(states) * 2 // 3
    catalog.set_labels(project, [states[i].image_id for i in order[keep:]], None)
    final_labels = {states[i].image_id: states[i].class_id for i in order[:keep]}
    ordered_ids = list(final_labels)
    for step in (*LABELED_STEPS, keep):
        catalog.set_labels(project, ordered_ids[step:], None)
        catalog.set_labels_by_class(project, {i: final_labels[i] for i in ordered_ids[:step]})
        result = train_model(context, project)
        print(f"trained with {step} labels: accuracy {result.metrics.accuracy}", flush=True)
    return project


def _all_image_ids(project) -> list[int]:
    from sqlalchemy import select

    from storage.models import Image

    with project.session() as session:
        return list(session.scalars(select(Image.id).order_by(Image.id)))


def wait_until(app, condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        app.processEvents()
        if condition():
            return True
        time.sleep(0.02)
    return False


def save_heat_map(app, window) -> None:
    """The viewer on a labeled image with "Where the model looks" on (H), once the heat map is painted."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    labeled = [row for row in range(window.grid_model.rowCount()) if window.grid_model.tile(row).class_id is not None]
    viewer = window.open_viewer(labeled[0] if labeled else 0)
    viewer.resize(760, 620)
    wait_until(app, lambda: False, 0.5)
    QTest.keyClick(viewer, Qt.Key.Key_H)
    painted = wait_until(app, lambda: viewer.explanation is not None, 180)
    print(f"heat map painted: {painted}", flush=True)
    wait_until(app, lambda: False, 0.5)
    viewer.grab().save(str(OUT / "heatmap.png"))
    viewer.close()


def main(argv: list[str]) -> int:
    import numpy as np
    from PySide6.QtWidgets import QApplication

    folder = Path(argv[0]) if argv else (DEFAULT_FOLDER if DEFAULT_FOLDER.is_dir() else None)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        name = "Bees and ants" if folder == DEFAULT_FOLDER else (folder.name if folder else "Digits demo")
        project_path = Path(tmp) / f"{name}.sortlab"
        build_project(project_path, folder).close()

        app = QApplication.instance() or QApplication(sys.argv[:1])
        from gui.app import create_main_window
        from PySide6.QtCore import QPointF, QSettings

        settings = QSettings(str(Path(tmp) / "settings.ini"), QSettings.Format.IniFormat)
        window = create_main_window(settings=settings, data_dir=Path(tmp), projects_dir=Path(tmp))
        panels = window.insight  # the training panel, map and report, docked as the app docks them
        window.resize(1366, 768)  # a laptop screen, every panel open (issue 12)
        window.show()
        window.open_project_file(project_path)
        wait_until(app, lambda: False, 1.0)
        embedding = panels.embedding
        done = wait_until(
            app, lambda: not panels.map_runner.busy and embedding.method == "tsne", 180
        )
        print(f"map finished: {done}", flush=True)
        window.grid.select_rows([3, 4])
        wait_until(app, lambda: False, 1.0)
        window.grab().save(str(OUT / "workspace.png"))
        panels.docks["training"].raise_()
        wait_until(app, lambda: False, 0.5)
        panels.training.grab().save(str(OUT / "training.png"))
        panels.docks["map"].setFloating(True)
        panels.docks["map"].resize(820, 640)
        wait_until(app, lambda: False, 1.0)
        embedding.fit()
        wait_until(app, lambda: False, 0.5)
        # Hover an unlabeled point near the middle, as a user would (the popup follows the mouse).
        unlabeled = np.flatnonzero(embedding.class_ids < 0)
        center = embedding.coords.mean(axis=0)
        index = int(unlabeled[np.argmin(np.linalg.norm(embedding.coords[unlabeled] - center, axis=1))])
        x, y = (float(v) for v in embedding.coords[index])
        hover = embedding.hover
        hover.scene_pos = hover.canvas.viewbox.mapViewToScene(QPointF(x, y))
        hover.show_point(index)
        wait_until(app, lambda: False, 0.5)
        embedding.grab().save(str(OUT / "embedding.png"))
        panels.docks["map"].setFloating(False)
        save_heat_map(app, window)
        window.close()
    print(f"saved {', '.join(p.name for p in sorted(OUT.glob('*.png')))} in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
