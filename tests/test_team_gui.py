"""The window on a team project: File > Open Team Project… opens a database URL (the password is not
kept), a teammate's labels appear within seconds without touching the selection, and the commands a
role may not use are greyed out."""

from __future__ import annotations

import uuid

import pytest
from PySide6.QtCore import QItemSelectionModel, QSettings

from gui.app import create_main_window
from gui.runner import QtJobRunner
from helpers.pg_server import pg_server, pg_url  # noqa: F401  (fixtures)
from storage import catalog
from storage.backends import parse_database_url
from storage.project import create_project, open_project
from storage.team_roles import grant
from test_gui_workspace import add_rows

pytestmark = pytest.mark.gui


@pytest.fixture
def team_url(pg_server, pg_url):  # noqa: F811
    """A team project of 6 images and two classes, with a labeler and a viewer role."""
    with create_project(pg_url) as project:
        add_rows(project, 6)
        catalog.ensure_classes(project, ["ants", "bees"])
        roles = {}
        for level in ("labeler", "viewer"):
            name = f"{level}_{uuid.uuid4().hex[:6]}"
            grant(project, name, level)
            roles[level] = pg_server.url(parse_database_url(pg_url).database, name)
    return pg_url, roles


def window_for(qtbot, tmp_path):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    window = create_main_window(insight=False, settings=settings, data_dir=tmp_path / "data",
                                projects_dir=tmp_path / "projects")

    def idle_then_close() -> None:
        runners = window.findChildren(QtJobRunner)
        qtbot.waitUntil(lambda: not any(r.busy for r in runners), timeout=60_000)
        window._confirm_quit_while_busy = lambda: True  # a job started after the wait: no box nobody answers

    qtbot.addWidget(window, before_close_func=lambda _widget: idle_then_close())
    return window, settings


def test_a_teammates_label_appears_without_touching_the_selection(qtbot, tmp_path, team_url):
    url, roles = team_url
    window, settings = window_for(qtbot, tmp_path)
    assert window.team.open_url(roles["labeler"], password="not-needed-here")
    assert window.project.is_database and window.team.level == "labeler"
    assert "not-needed-here" not in str(settings.value("team/last_url")) and "@" in settings.value("team/last_url")
    # A labeler labels, but neither edits classes, imports, exports nor trains.
    assert not window.commands.import_action.isEnabled() and not window.commands.add_class_action.isEnabled()
    assert not window.classes_panel.buttons["add"].isEnabled()
    selection = window.grid.selectionModel()
    selection.select(window.grid_model.index(1, 0), QItemSelectionModel.SelectionFlag.Select)
    assert window.commands.label_actions[0].isEnabled()
    chosen = window.selected_image_ids()

    ants = catalog.find_class(window.project, "ants").id
    with open_project(url) as teammate:  # another client, as the project's owner
        catalog.set_labels(teammate, [1, 4], ants)
    qtbot.waitUntil(lambda: next(c.count for c in window.classes_panel.classes if c.name == "ants") == 2,
                    timeout=10_000)
    qtbot.waitUntil(lambda: "changed by postgres" in window.statusBar().currentMessage(), timeout=5_000)
    assert window.selected_image_ids() == chosen
    tiles = [window.grid_model.tile(row) for row in range(window.grid_model.rowCount())]
    assert {tile.image_id for tile in tiles if tile.class_id == ants} == {1, 4}


def test_a_viewer_cannot_label(qtbot, tmp_path, team_url):
    _, roles = team_url
    window, _ = window_for(qtbot, tmp_path)
    assert window.team.open_url(roles["viewer"])
    window.grid.selectionModel().select(window.grid_model.index(0, 0), QItemSelectionModel.SelectionFlag.Select)
    assert window.team.level == "viewer"
    assert not any(action.isEnabled() for action in window.commands.label_actions)
    assert not window.commands.clear_action.isEnabled() and not window.classes_panel.isEnabled()
    window.close_project()
    assert window.classes_panel.read_only is False  # a file project opened next is the user's own
