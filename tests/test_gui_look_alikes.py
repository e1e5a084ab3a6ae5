"""Look-alike groups in the window (issue 14): keep one image and remove the rest of its group, or keep
them all (undoable). The groups are the engine's typed DuplicateGroup, faked where the GUI asks for them;
the removal and the kept groups are the real storage writes."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox
from test_gui_curation import JOB_TIMEOUT, app_window, choose, shown, window  # noqa: F401  (fixtures)

import engine.curation.duplicates as duplicates
from engine.curation.look_alike_review import groups_to_review
from gui.filter_bar import LOOK_ALIKES
from storage import browse
from storage.catalog import label_states, set_labels
from storage.images import image_ids
from storage.look_alikes import kept_groups

pytestmark = pytest.mark.gui


@pytest.fixture
def grouped(window, qtbot, monkeypatch):
    ids = window.test_ids
    groups = [duplicates.DuplicateGroup((ids[3], ids[7], ids[8]), 0.93, identical=False),
              duplicates.DuplicateGroup((ids[1], ids[10]), 1.0, identical=True)]
    monkeypatch.setattr(duplicates, "project_duplicates", lambda context, project: groups)
    choose(window, LOOK_ALIKES)
    qtbot.waitUntil(lambda: shown(window) == [ids[3], ids[7], ids[8], ids[1], ids[10]], timeout=JOB_TIMEOUT)
    return window, groups


def test_keep_only_the_selected_image_removes_the_rest_of_its_group(grouped, qtbot, monkeypatch):
    window, groups = grouped
    ids = window.test_ids
    actions = window.curation.look_alikes
    assert actions.keep_one_button.isVisibleTo(window) and actions.keep_all_button.isVisibleTo(window)
    set_labels(window.project, [ids[8]], window.cats.id)
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *args: asked.append(args[2]) or QMessageBox.StandardButton.No)
    window.grid.select_rows([2])  # ids[8], the one to keep
    qtbot.mouseClick(actions.keep_one_button, Qt.MouseButton.LeftButton)
    assert asked and "Remove the other 2 images of this group" in asked[0]
    assert len(image_ids(window.project)) == 12  # "No": nothing removed

    monkeypatch.setattr(QMessageBox, "question", lambda *args: QMessageBox.StandardButton.Yes)
    qtbot.mouseClick(actions.keep_one_button, Qt.MouseButton.LeftButton)
    remaining = image_ids(window.project)
    assert ids[3] not in remaining and ids[7] not in remaining and ids[8] in remaining and len(remaining) == 10
    assert label_states(window.project, [ids[8]])[0].class_id == window.cats.id
    assert shown(window) == [ids[1], ids[10]]  # the other group stays listed
    assert window.curation.summary.text() == "1 group of look-alike images"
    assert "Removed 2 look-alike images" in window.statusBar().currentMessage()
    assert window.undo_stack.count() == 0
    window.set_filter(browse.ALL)
    assert len(shown(window)) == 10
    assert not actions.keep_one_button.isVisibleTo(window)


def test_keep_all_of_a_group_leaves_the_list_and_undo_lists_it_again(grouped, qtbot):
    window, groups = grouped
    ids = window.test_ids
    actions = window.curation.look_alikes
    window.grid.select_rows([3])  # ids[1], in the identical pair
    qtbot.mouseClick(actions.keep_all_button, Qt.MouseButton.LeftButton)
    assert kept_groups(window.project) == [frozenset({ids[1], ids[10]})]
    assert shown(window) == [ids[3], ids[7], ids[8]]
    assert len(image_ids(window.project)) == 12  # nothing removed
    assert groups_to_review(window.project, groups) == groups[:1]
    window.undo_stack.undo()
    assert kept_groups(window.project) == []
    qtbot.waitUntil(lambda: shown(window) == [ids[3], ids[7], ids[8], ids[1], ids[10]], timeout=JOB_TIMEOUT)


def test_a_kept_group_that_gains_an_image_is_listed_again(project):
    from storage.look_alikes import keep_group

    from helpers.feature_projects import add_placeholder_images

    ids = add_placeholder_images(project, 3)
    keep_group(project, ids[:2])
    grown = duplicates.DuplicateGroup(tuple(ids), 0.9, identical=False)
    same = duplicates.DuplicateGroup(tuple(ids[:2]), 0.9, identical=False)
    assert groups_to_review(project, [grown, same]) == [grown]
