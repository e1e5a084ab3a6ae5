"""Starts the GUI: the QApplication (named, so QSettings has a home), the main window with the
insight panels docked, the window layout as the user left it, and an optional project to open.

The window is on screen before the insight panels are made: ``run_app`` shows the workspace with
the panels' docks in place (each saying "Loading…"), and the first paint makes the panels (their
imports, pyqtgraph's among them, are most of a second on a 2-core machine) and only then opens
the project named on the command line. A saved layout is restored around the reserved docks, so
nothing moves when the panels arrive; on the very first run the right side then takes the width
the panels ask for (gui/dock_layout.py)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QEvent, QObject, Qt, QTimer
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QWidget

from gui import project_files

# The docks gui/insight.py fills, in its order: run_app reserves them before the first paint.
INSIGHT_DOCKS = ("Training", "Map of your images", "Model report")
# What the main window's modules import from the layers below (no Qt there, by contract): SQLAlchemy
# and the ORM models are ~0.5 s of the first start, imported while Qt starts (gui.app.run_app).
WINDOW_ENGINE_MODULES = ("storage.catalog", "storage.browse", "storage.modelstore", "storage.images",
                         "engine.curation.duplicates", "engine.curation.next_batch")


def import_in_the_background(names=WINDOW_ENGINE_MODULES) -> threading.Thread:
    """Start importing ``names`` on a thread of their own, so the imports overlap with Qt's start
    (the platform plugin, fonts: C++ that leaves the GIL free). The window's own imports then find
    them done, or wait on Python's import lock for the rest: never a half-imported module."""
    def work() -> None:
        for name in names:
            try:
                import_module(name)
            except Exception:  # noqa: BLE001 - the window's own import will raise it where it can be seen
                return

    thread = threading.Thread(target=work, name="sortlab-first-imports", daemon=True)
    thread.start()
    return thread


def create_main_window(insight: bool = True, **kwargs):
    """The main window as users get it: the workspace plus (``insight``) the docked training panel,
    map and model report (the training panel keeps the suggestions fresh while the user labels).

    Keyword arguments go to MainWindow (settings, data_dir, projects_dir); benchmarks and tests
    build the window here so they measure exactly what the app shows."""
    scan_imports_without_keeping_sources()
    from gui.main_window import MainWindow

    window = MainWindow(**kwargs)
    if insight:
        install_insight(window)
    return window


def scan_imports_without_keeping_sources() -> None:
    """PySide6 reads the source of every module imported after it, to tell modules that mention
    "PySide6" (they may opt in to ``from __feature__ import snake_case``, which Sortlab never does)
    from the rest. It reads them with inspect.getsource, and linecache keeps every file it read:
    after the start-up imports (scikit-learn, SciPy, openTSNE, onnxruntime) some 28 million
    characters, 65 MB of the app's memory, and 0.1-0.2 s of CPU before the first window. The same
    test on the file's bytes gives the same answers and keeps nothing. (A PySide6 without that scan
    is left as it is.)"""
    feature = sys.modules.get("shibokensupport.feature")
    if feature is None or not callable(getattr(feature, "_mod_uses_pyside", None)):
        return

    def mentions_pyside(module) -> bool:
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not path.endswith(".py"):
            return False  # built in, compiled, or bytecode only: inspect.getsource finds no source either
        try:
            with open(path, "rb") as file:
                return b"PySide6" in file.read()
        except OSError:
            return False

    feature._mod_uses_pyside = mentions_pyside


def install_insight(window) -> None:
    """Dock the training panel, the map and the model report (into reserved docks, if any)."""
    from gui.insight import install_insight_panels

    install_insight_panels(window)


def reserve_insight_docks(window) -> None:
    """The insight panels' docks, empty until ``install_insight`` fills them."""
    for title in INSIGHT_DOCKS:
        window.docks.reserve(title, Qt.DockWidgetArea.RightDockWidgetArea)


class AfterFirstPaint(QObject):
    """Calls ``then`` once, on the event loop's next turn after ``widget`` was first painted (so
    that paint reaches the screen before ``then`` runs)."""

    def __init__(self, widget: QWidget, then: Callable[[], None]):
        super().__init__(widget)
        self.then = then
        widget.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.Paint and self.then is not None:
            then, self.then = self.then, None
            watched.removeEventFilter(self)
            QTimer.singleShot(0, then)
        return False


def finish_start(window, argv: list[str]) -> None:
    """After the first paint: the insight panels, then the project named on the command line."""
    if not window.isVisible():  # closed before its first turn of the event loop
        return
    install_insight(window)
    projects = [a for a in argv if a.endswith(".sortlab")]
    if projects and Path(projects[0]).exists():
        window.open_project_file(projects[0])
    elif argv and argv[0].startswith(("postgresql://", "postgresql+psycopg://")):
        window.team.open_url(argv[0])  # a team project (libpq's ~/.pgpass or PGPASSWORD for its password)


def open_window(argv: list[str], **kwargs):
    """The window ``run_app`` shows: on screen with the insight panels' docks reserved; its first
    paint then makes the panels and opens the project in ``argv`` (``finish_start``). Keyword
    arguments go to MainWindow (tests give settings and folders of their own)."""
    window = create_main_window(insight=False, **kwargs)
    reserve_insight_docks(window)
    window.show()
    window.restore_layout()  # after show: dock sizes only apply to a laid-out window
    AfterFirstPaint(window, lambda: finish_start(window, argv))
    return window


def run_app(argv: list[str]) -> int:
    """Open the main window (with the project named in argv, if any) and run the event loop."""
    scan_imports_without_keeping_sources()  # before any import the next line starts
    import_in_the_background()
    QCoreApplication.setOrganizationName(project_files.ORG_NAME)
    QCoreApplication.setApplicationName(project_files.APP_NAME)
    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication.instance() or QApplication([sys.argv[0], *argv])
    app.setApplicationDisplayName("Sortlab")
    window = open_window(argv)  # noqa: F841 (kept alive while the event loop runs)
    return app.exec()
