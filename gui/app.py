"""Starts the GUI: the QApplication (named, so QSettings has a home), the main window with the
insight panels docked, the window layout as the user left it, and an optional project to open."""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QCoreApplication, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication

from gui import project_files


def create_main_window(insight: bool = True, **kwargs):
    """The main window as users get it: the workspace plus (``insight``) the docked training panel,
    map and model report (the training panel keeps the suggestions fresh while the user labels).

    Keyword arguments go to MainWindow (settings, data_dir, projects_dir); benchmarks and tests
    build the window here so they measure exactly what the app shows."""
    from gui.insight import install_insight_panels
    from gui.main_window import MainWindow

    window = MainWindow(**kwargs)
    if insight:
        install_insight_panels(window)
    return window


def run_app(argv: list[str]) -> int:
    """Open the main window (with the project named in argv, if any) and run the event loop."""
    QCoreApplication.setOrganizationName(project_files.ORG_NAME)
    QCoreApplication.setApplicationName(project_files.APP_NAME)
    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication.instance() or QApplication([sys.argv[0], *argv])
    app.setApplicationDisplayName("Sortlab")

    window = create_main_window()
    window.show()
    window.restore_layout()  # after show: dock sizes only apply to a laid-out window
    projects = [a for a in argv if a.endswith(".sortlab")]
    if projects and Path(projects[0]).exists():
        window.open_project_file(projects[0])
    elif argv and argv[0].startswith(("postgresql://", "postgresql+psycopg://")):
        window.team.open_url(argv[0])  # a team project (libpq's ~/.pgpass or PGPASSWORD for its password)
    return app.exec()
