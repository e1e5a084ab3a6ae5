"""Starting the app with a project (``main.py PROJECT.sortlab``): the window appears before anything
heavy is imported, and the training panel's warm-up and the map's first layout, on two worker
threads, import openTSNE one at a time (issue #12: "cannot import name 'Affinities' from partially
initialized module 'openTSNE.affinity'", and a panel "Checking for a GPU…" forever)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from helpers.feature_projects import make_feature_project
from PySide6.QtCore import QSettings
from test_gui_insight import save_version

import engine.insight.projection
from engine.insight.options import available_backbones
from engine.runtime.first_imports import heavy_imports
from gui.app import create_main_window
from storage.catalog import list_classes
from storage.project import create_project

pytestmark = pytest.mark.gui
STARTS = 20


@pytest.fixture
def project_file(tmp_path):
    """A project with cached features and a model in use: opening it draws its map at once."""
    path = tmp_path / "started.sortlab"
    project = create_project(path)
    try:
        features = make_feature_project(project, [10, 10], unlabeled=10, dim=32)
        classes = list_classes(project)
        save_version(project, classes, {i: classes[0].id for i in features.image_ids}, accuracy=0.8, n_labeled=20)
    finally:
        project.close()
    return path


def forget_open_tsne() -> None:
    """As in a freshly started app, openTSNE is not imported yet (so two threads may race for it)."""
    for name in [name for name in sys.modules if name == "openTSNE" or name.startswith("openTSNE.")]:
        del sys.modules[name]


# A package whose modules import each other like openTSNE's (its __init__ imports tsne, tsne
# imports affinity, affinity needs tsne), and whose steps wait for each other so that two threads
# importing it at once interleave exactly as the warm-up job and the map's job once did.
CIRCULAR_PACKAGE = {
    "__init__.py": """
        import racesync
        racesync.package_started.set()
        racesync.submodule_started.wait(racesync.PATIENCE_S)
        from .tsne import TSNE
    """,
    "tsne.py": """
        import time
        import racesync
        racesync.tsne_started.set()
        if racesync.affinity_waits.wait(racesync.PATIENCE_S):
            time.sleep(0.2)  # the other thread is blocked on this module's lock by now
        from racepkg.affinity import Affinities
        TSNE = Affinities
    """,
    "affinity.py": """
        import racesync
        racesync.submodule_started.set()
        racesync.tsne_started.wait(racesync.PATIENCE_S)
        racesync.affinity_waits.set()
        import racepkg.tsne
        Affinities = "affinities"
    """,
}


def import_racing_threads(tmp_path, monkeypatch, guard) -> list[str]:
    """One thread imports the package (the map's job), the other its submodule (the warm-up),
    each inside ``guard()``; returns the import errors they met."""
    import types

    package = tmp_path / "racepkg"
    package.mkdir(parents=True)
    for name, code in CIRCULAR_PACKAGE.items():
        (package / name).write_text(textwrap.dedent(code))
    sync = types.ModuleType("racesync")
    sync.PATIENCE_S = 2.0
    for event in ("package_started", "submodule_started", "tsne_started", "affinity_waits"):
        setattr(sync, event, threading.Event())
    monkeypatch.setitem(sys.modules, "racesync", sync)
    monkeypatch.syspath_prepend(str(tmp_path))
    errors: list[str] = []

    def run(statement):
        try:
            with guard():
                exec(statement, {})
        except ImportError as exc:
            errors.append(str(exc))

    whole = threading.Thread(target=run, args=("import racepkg",))
    submodule = threading.Thread(target=run, args=("import racepkg.affinity",))
    whole.start()
    assert sync.package_started.wait(5)
    submodule.start()
    for thread in (whole, submodule):
        thread.join(30)
    for name in [name for name in sys.modules if name.split(".")[0] == "racepkg"]:
        del sys.modules[name]
    return errors


def test_heavy_imports_keeps_two_threads_from_half_imported_modules(tmp_path, monkeypatch):
    import contextlib

    unguarded = import_racing_threads(tmp_path / "plain", monkeypatch, contextlib.nullcontext)
    assert unguarded and "partially initialized module 'racepkg.affinity'" in unguarded[0]  # the race
    assert import_racing_threads(tmp_path / "guarded", monkeypatch, heavy_imports) == []


def start_app(qtbot, tmp_path, project_file):
    """What gui.app.run_app does with a project argument, up to the event loop."""
    window = create_main_window(data_dir=tmp_path, projects_dir=tmp_path,
                                settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    window.show()
    window.restore_layout()
    assert window.open_project_file(project_file)
    return window


def close_app(qtbot, window) -> None:
    window.close()
    qtbot.waitUntil(lambda: window.insight.closed, timeout=10_000)
    window.runner.shutdown()


def test_nothing_heavy_runs_before_the_window_is_on_screen(qtbot, tmp_path, project_file):
    window = create_main_window(data_dir=tmp_path, projects_dir=tmp_path,
                                settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    assert window.open_project_file(project_file)
    panels = window.insight
    assert not panels.on_screen and not window.runner.busy and not panels.map_runner.busy
    window.show()
    qtbot.waitUntil(lambda: panels.on_screen, timeout=10_000)
    # Both started by the first paint: the warm-up job and the open project's map.
    qtbot.waitUntil(lambda: panels.embedding.method == "tsne" and not panels.map_runner.busy, timeout=120_000)
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=120_000)
    assert not panels.training.status.device_label.text().startswith("Checking")
    close_app(qtbot, window)


def test_starting_with_a_project_20_times_never_races_for_open_tsne(qtbot, tmp_path, project_file, monkeypatch):
    # The race is at import time: a short t-SNE keeps 20 starts quick.
    monkeypatch.setattr(engine.insight.projection, "EARLY_ITERATIONS", 25)
    monkeypatch.setattr(engine.insight.projection, "MAIN_ITERATIONS", 25)
    backbones = len(available_backbones())
    for start in range(STARTS):
        forget_open_tsne()
        window = start_app(qtbot, tmp_path, project_file)
        panels = window.insight
        device, view = panels.training.status.device_label, panels.embedding
        qtbot.waitUntil(lambda: not device.text().startswith("Checking") and not window.runner.busy
                        and view.method == "tsne" and not panels.map_runner.busy, timeout=120_000)
        assert device.text().startswith(("No GPU found", "GPU in use")), (start, device.text())
        assert panels.training.options.backbone_combo.count() == backbones, start
        assert view.status.text() == "30 images, similar ones close together (t-SNE).", (start, view.status.text())
        close_app(qtbot, window)


# A fresh process per start: the first imports of torch, scikit-learn and openTSNE really happen
# on the worker threads, as when a user double-clicks a project file.
FRESH_START = r"""
import json, os, sys
from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication
import engine.insight.projection as projection
projection.EARLY_ITERATIONS = projection.MAIN_ITERATIONS = 25  # the race is at import time
from gui.app import create_main_window
folder, path = sys.argv[1], sys.argv[2]
app = QApplication([sys.argv[0]])
window = create_main_window(data_dir=folder, projects_dir=folder,
                            settings=QSettings(os.path.join(folder, "s.ini"), QSettings.Format.IniFormat))
window.show()
window.restore_layout()
window.open_project_file(path)
panels = window.insight
def report_when_done():
    runners = (window.runner, panels.map_runner, panels.read_runner)
    if not panels.on_screen or any(runner.busy for runner in runners):
        QTimer.singleShot(100, report_when_done)
        return
    print(json.dumps({"device": panels.training.status.device_label.text(),
                      "backbones": panels.training.options.backbone_combo.count(),
                      "map": panels.embedding.status.text(), "report": panels.report.view.summary.text()}))
    sys.stdout.flush()
    os._exit(0)
QTimer.singleShot(0, report_when_done)
app.exec()
"""


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 20 fresh processes, each importing torch
def test_20_fresh_starts_with_a_project_show_their_options_and_map(tmp_path, project_file):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": root}
    backbones = len(available_backbones())
    for start in range(STARTS):
        done = subprocess.run([sys.executable, "-c", FRESH_START, str(tmp_path), str(project_file)], cwd=root,
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (start, done.stderr[-2000:])
        shown = json.loads(done.stdout.strip().splitlines()[-1])
        assert shown["device"].startswith(("No GPU found", "GPU in use")), (start, shown)
        assert shown["backbones"] == backbones, (start, shown)
        assert shown["map"] == "30 images, similar ones close together (t-SNE).", (start, shown)
        assert shown["report"].startswith("<b>Version 1</b> is right on"), (start, shown)
