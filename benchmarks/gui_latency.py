"""Does the window stay responsive while a model trains?

Opens the main window with the insight panels docked, imports real images into a temporary project (../shared/data/hymenoptera/train,
else generated pictures), then runs a real training job from the training panel through the
QtJobRunner: feature extraction followed by the quick (logistic regression) classifier. A 5 ms
QTimer records perf_counter on every tick of the GUI event loop; a gap between ticks is a stall
the user would feel. The embedding map job runs afterwards and is measured too.

Last line: JSON {"benchmark": "gui_latency", "max_stall_ms", "p99_stall_ms", "ticks", ...};
the goal is max_stall_ms <= 50.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "hymenoptera" / "train"

from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402


class TickRecorder:
    """Records the time of every tick of a 5 ms timer; stalls are the gaps between ticks."""

    def __init__(self) -> None:
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def start(self) -> None:
        self.ticks.clear()
        self.timer.start()

    def stop(self) -> list[float]:
        self.timer.stop()
        return list(self.ticks)


def stall_stats(ticks: list[float]) -> dict:
    gaps = np.diff(np.asarray(ticks)) * 1000.0
    if gaps.size == 0:
        return {"max_stall_ms": None, "p99_stall_ms": None, "ticks": len(ticks)}
    return {
        "max_stall_ms": round(float(gaps.max()), 1),
        "p99_stall_ms": round(float(np.percentile(gaps, 99)), 1),
        "median_tick_ms": round(float(np.median(gaps)), 1),
        "ticks": int(len(ticks)),
        "worst_at_s": round(float(ticks[int(np.argmax(gaps))] - ticks[0]), 2),
    }


def image_paths(folder: Path) -> tuple[list[Path], str]:
    if folder.is_dir():
        return [folder], "hymenoptera/train"
    from PIL import Image, ImageDraw

    out = Path(tempfile.mkdtemp(prefix="sortlab-bench-images-"))
    rng = np.random.default_rng(0)
    for name, color in (("red", (200, 40, 40)), ("blue", (40, 60, 200))):
        (out / name).mkdir()
        for i in range(100):
            image = Image.new("RGB", (256, 256), tuple(int(v) for v in rng.integers(0, 255, 3)))
            draw = ImageDraw.Draw(image)
            x, y = rng.integers(10, 150, 2)
            draw.ellipse([int(x), int(y), int(x) + 90, int(y) + 90], fill=color)
            image.save(out / name / f"{i}.png")
    return [out], "generated"


def wait(app: QApplication, predicate, timeout_s: float) -> None:
    deadline = time.perf_counter() + timeout_s
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError("the job did not finish in time")
        app.processEvents()
        time.sleep(0.001)


def build_window(project, workdir: Path):
    """The real main window, set up the way gui.app does it, with the insight panels docked."""
    from PySide6.QtCore import QSettings

    from gui.insight import install_insight_panels
    from gui.main_window import MainWindow

    settings = QSettings(str(workdir / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(project, settings=settings, data_dir=workdir, projects_dir=workdir)
    panels = install_insight_panels(window)
    window.suggestions.enabled = False  # as gui.app does: the training panel retrains instead
    return window, panels


def main() -> int:
    from engine.importing import import_paths
    from storage.project import create_project

    app = QApplication.instance() or QApplication(sys.argv)
    workdir = Path(tempfile.mkdtemp(prefix="sortlab-bench-"))
    project = create_project(workdir / "bench.sortlab")
    paths, dataset = image_paths(DATA)
    window, panels = build_window(project, workdir)
    window.resize(1400, 900)
    window.show()
    app.processEvents()
    runner = panels.runner

    done = {}
    runner.submit("import", import_paths, project, paths, labels_from_folders=True,
                  on_done=lambda outcome: done.setdefault("import", outcome))
    wait(app, lambda: "import" in done, 600)
    if done["import"].status != "done":
        raise SystemExit(f"import failed: {done['import'].error}")
    print(f"imported {len(done['import'].result.image_ids)} images ({dataset})", flush=True)

    # Start-up work (the training panel's background warm-up, the grid's thumbnails) is done first:
    # the measurement is about a training job started in an idle window.
    wait(app, lambda: not runner.busy, 120)
    for _ in range(50):
        app.processEvents()
        time.sleep(0.01)
    panel = panels.training
    panel.set_method("logreg")
    recorder = TickRecorder()
    finished = []
    panel.training_finished.connect(finished.append)
    map_runner = panels.embedding.runner
    ended = []
    map_runner.finished.connect(lambda name, outcome: ended.append(outcome) if name == "embedding" else None)
    recorder.start()
    started = time.perf_counter()
    if not panel.start():
        raise SystemExit("the training panel did not start a job")
    wait(app, lambda: bool(finished), 900)
    train_end = time.perf_counter()
    outcome = finished[0]
    if outcome.status != "done":
        raise SystemExit(f"training failed: {outcome.error}\n{outcome.details}")
    # Finishing the training starts the map (PCA, then t-SNE streaming into the scatter plot).
    wait(app, lambda: any(o.status != "cancelled" for o in ended), 600)
    map_end = time.perf_counter()
    ticks = recorder.stop()
    if ended[-1].status != "done":
        raise SystemExit(f"the map failed: {ended[-1].error}")
    split = int(np.searchsorted(ticks, train_end))
    training, mapping, overall = stall_stats(ticks[:split]), stall_stats(ticks[split - 1:]), stall_stats(ticks)
    train_s = train_end - started
    print(f"training (features + logreg) took {train_s:.1f} s; stalls: {training}", flush=True)
    print(f"map (PCA + t-SNE) took {map_end - train_end:.1f} s; stalls: {mapping}", flush=True)

    result = {
        "benchmark": "gui_latency",
        "max_stall_ms": overall["max_stall_ms"],
        "p99_stall_ms": overall["p99_stall_ms"],
        "ticks": overall["ticks"],
        "training_max_stall_ms": training["max_stall_ms"],
        "training_p99_stall_ms": training["p99_stall_ms"],
        "map_max_stall_ms": mapping["max_stall_ms"],
        "map_p99_stall_ms": mapping["p99_stall_ms"],
        "training_s": round(train_s, 1),
        "images": len(done["import"].result.image_ids),
        "data": dataset,
        "goal_max_stall_ms": 50,
    }
    window.close()
    runner.shutdown()
    if map_runner is not runner:
        map_runner.shutdown()
    project.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
