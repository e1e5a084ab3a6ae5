"""The first window (issue #19): ``gui.app.open_window``, what ``run_app`` shows, is on screen before
the insight panels are made; their docks wait in place and the first paint fills them, then opens
the project named on the command line. Nothing heavy (the panels' plotting library, alembic, torch,
scikit-learn, openTSNE) is imported before that paint, and PySide6's scan of imported modules
keeps no source files in memory."""

from __future__ import annotations

import json
import linecache
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication, QDockWidget

from gui.app import INSIGHT_DOCKS, create_main_window, open_window, scan_imports_without_keeping_sources
from gui.dock_layout import panel_of
from gui.runner import QtJobRunner
from storage.project import create_project

pytestmark = pytest.mark.gui
ROOT = Path(__file__).resolve().parent.parent


def settings_in(folder: Path) -> QSettings:
    return QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat)


def settle() -> None:
    for _ in range(5):
        QApplication.processEvents()


def close(qtbot, window) -> None:
    qtbot.waitUntil(lambda: not any(r.busy for r in window.findChildren(QtJobRunner)), timeout=180_000)
    window.close()
    qtbot.waitUntil(lambda: window.insight.closed, timeout=10_000)
    window.runner.shutdown()


def right_docks(window) -> list[QDockWidget]:
    return [d for d in window.docks.docks if d.windowTitle() in INSIGHT_DOCKS]  # in the order they were made


def test_the_panels_fill_their_reserved_docks_after_the_first_paint(qtbot, tmp_path):
    window = open_window([], settings=settings_in(tmp_path), data_dir=tmp_path, projects_dir=tmp_path)
    qtbot.addWidget(window)
    # Before the first paint: the workspace and the panels' docks, waiting.
    assert getattr(window, "insight", None) is None
    assert window.docks.reserved == list(INSIGHT_DOCKS)
    assert [d.windowTitle() for d in right_docks(window)] == list(INSIGHT_DOCKS)
    assert panel_of(right_docks(window)[0]).text() == "Loading…"

    qtbot.waitUntil(lambda: getattr(window, "insight", None) is not None, timeout=30_000)
    panels = window.insight
    settle()
    assert window.docks.reserved == []
    # The same docks as a window built whole (no second set), each showing its panel.
    whole = create_main_window(settings=settings_in(tmp_path / "whole"), data_dir=tmp_path, projects_dir=tmp_path)
    qtbot.addWidget(whole)
    names = sorted(d.objectName() for d in window.findChildren(QDockWidget))
    assert names == sorted(d.objectName() for d in whole.findChildren(QDockWidget))
    assert [panel_of(panels.docks[key]) for key in ("training", "map", "report")] == \
        [panels.training, panels.embedding, panels.report]
    assert panels.docks["training"] is right_docks(window)[0]
    listed = [a.text() for a in window.commands.view_menu.actions() if a.text() in INSIGHT_DOCKS]
    assert listed == list(INSIGHT_DOCKS)  # View lists each panel once
    # First run: the right side is sized from the real panels, as for the window built whole.
    whole.resize(window.size())
    whole.show()
    whole.restore_layout()
    settle()
    assert panels.docks["training"].width() == whole.insight.docks["training"].width()
    close(qtbot, whole)
    close(qtbot, window)


def test_a_project_on_the_command_line_opens_once_the_panels_are_in(qtbot, tmp_path):
    path = tmp_path / "given.sortlab"
    create_project(path).close()
    window = open_window([str(path)], settings=settings_in(tmp_path), data_dir=tmp_path, projects_dir=tmp_path)
    qtbot.addWidget(window)
    assert window.project is None  # not before the window is on screen
    qtbot.waitUntil(lambda: window.project is not None, timeout=30_000)
    assert Path(window.project.path) == path
    assert window.insight.training.project is window.project  # the panels saw it open
    close(qtbot, window)


def test_the_saved_layout_comes_back_around_the_reserved_docks(qtbot, tmp_path):
    settings = settings_in(tmp_path)
    first = create_main_window(settings=settings, data_dir=tmp_path, projects_dir=tmp_path)
    qtbot.addWidget(first)
    first.show()
    first.restore_layout()
    first.insight.docks["map"].raise_()  # the user left the map in front
    settle()
    first.save_layout()
    close(qtbot, first)

    again = open_window([], settings=settings_in(tmp_path), data_dir=tmp_path, projects_dir=tmp_path)
    qtbot.addWidget(again)
    qtbot.waitUntil(lambda: getattr(again, "insight", None) is not None, timeout=30_000)
    settle()
    docks = again.insight.docks
    in_front = [key for key, dock in docks.items() if not dock.visibleRegion().isEmpty()]  # (tabs behind stay "visible")
    assert in_front == ["map"]
    close(qtbot, again)


def test_modules_imported_after_pyside_keep_no_source_and_are_told_apart_as_before(tmp_path, monkeypatch):
    feature = sys.modules.get("shibokensupport.feature")
    if feature is None or not hasattr(feature, "pyside_feature_dict"):
        pytest.skip("this PySide6 does not scan imported modules")
    scan_imports_without_keeping_sources()
    (tmp_path / "mentions_qt.py").write_text("# uses PySide6\nVALUE = 1\n")
    (tmp_path / "plain_module.py").write_text("VALUE = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        for name in ("mentions_qt", "plain_module"):
            exec(f"import {name}", {})  # an import statement: PySide6 watches builtins.__import__
        assert feature.pyside_feature_dict["mentions_qt"] == 0  # PySide's own mark for modules naming it
        assert feature.pyside_feature_dict["plain_module"] == -1
        assert not any(str(tmp_path) in name for name in linecache.cache)
    finally:
        for name in ("mentions_qt", "plain_module"):
            sys.modules.pop(name, None)
            feature.pyside_feature_dict.pop(name, None)


# main.py without arguments in a fresh process: what has been imported when the window first
# paints, and when its panels are in (gui.app.create_main_window is watched, as the benchmark does).
FRESH_START = r"""
import json, os, runpy, sys, time
sys.path.insert(0, os.getcwd())
import gui.app
from PySide6.QtCore import QEvent, QObject, QTimer

WATCH = ("gui.insight", "pyqtgraph", "alembic", "torch", "sklearn", "openTSNE", "onnxruntime")
seen = {}

class Watch(QObject):
    def eventFilter(self, window, event):
        if event.type() == QEvent.Type.Paint and "paint" not in seen:
            seen["paint"] = [m for m in WATCH if m in sys.modules]
            self.timer = QTimer()
            self.timer.timeout.connect(lambda: self.check(window))
            self.timer.start(10)
        return False

    def check(self, window):
        if getattr(window, "insight", None) is not None:
            seen["panels"] = [m for m in WATCH if m in sys.modules]
            print(json.dumps(seen), flush=True)
            os._exit(0)

real = gui.app.create_main_window
def create_main_window(*args, **kwargs):
    window = real(*args, **kwargs)
    window.installEventFilter(Watch(window))
    return window
gui.app.create_main_window = create_main_window
sys.argv = ["main.py"]
runpy.run_path("main.py", run_name="__main__")
"""


def test_main_py_paints_its_window_before_importing_anything_heavy(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([sys.executable, "-c", FRESH_START], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    seen = json.loads(lines[-1])
    assert seen["paint"] == []
    assert "gui.insight" in seen["panels"] and "pyqtgraph" in seen["panels"]
    assert "torch" not in seen["panels"]  # the start-up jobs import the rest later, on their threads


def test_the_window_modules_below_qt_are_imported_while_qt_starts():
    """gui.app.run_app imports the storage and engine modules the window needs on a thread of its own
    (they overlap with Qt's start-up); a module that fails to import leaves the rest to the window."""
    probe = (
        "import sys, gui.app\n"
        "before = 'storage.catalog' in sys.modules\n"
        "qt = {name for name in sys.modules if name.startswith('PySide6')}\n"
        "gui.app.import_in_the_background().join(60)\n"
        "print(before, all(name in sys.modules for name in gui.app.WINDOW_ENGINE_MODULES),\n"
        "      qt == {name for name in sys.modules if name.startswith('PySide6')})\n"
        "gui.app.import_in_the_background(('no_such_module_here', 'wave')).join(60)\n"
        "print('wave' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == "False True True"  # not before; all of them after; no Qt module among what they import
    assert lines[1] == "False"  # a failing import ends that thread quietly (the window's own import reports it)
