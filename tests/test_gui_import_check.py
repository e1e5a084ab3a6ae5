"""The import summary says which new images look like ones the project had and which look like nothing
else (issue 14), and shows exactly those images in the grid: the window the app builds, a real import
through the dialog, the engine's check faked with its own typed result (tests/test_import_check.py
runs the real one)."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from test_gui_workspace import labeled_window, make_image_folder, trainer, window  # noqa: F401  (fixtures)

import engine.curation.import_check as import_check
from engine.curation.duplicates import LookAlike
from engine.curation.outliers import Outlier
from gui.import_check import CHECKING_TEXT

pytestmark = pytest.mark.gui


def test_the_import_summary_names_look_alikes_and_odd_images_and_shows_them(labeled_window, qtbot, tmp_path,
                                                                           monkeypatch):
    window = labeled_window
    folder = tmp_path / "more"
    make_image_folder(folder)
    asked = []

    def check(context, project, new_ids):
        asked.append(sorted(new_ids))
        context.progress(0.5, "Comparing the new images with the others")
        return import_check.ImportCheck(
            [LookAlike(new_ids[0], window.test_ids[0], 0.97), LookAlike(new_ids[1], window.test_ids[1], 0.9)],
            [Outlier(new_ids[2], 5.0, ("looks like no other image in the project",))], len(new_ids))

    monkeypatch.setattr(import_check, "check_new_images", check)
    dialog = window.projects.show_import_dialog([str(folder)])
    qtbot.mouseClick(dialog.import_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.report is not None, timeout=20_000)
    new_ids = sorted(dialog.report.image_ids)
    assert len(new_ids) == 6
    view = dialog.check
    assert view.isVisibleTo(dialog)
    qtbot.waitUntil(lambda: not view.running, timeout=20_000)
    assert asked == [new_ids]
    assert view.look_alike_label.text() == "2 images look like ones you already have."
    assert view.outlier_label.text().startswith("1 image looks like no other image of the project")
    assert view.show_look_alikes.isVisibleTo(dialog) and view.show_outliers.isVisibleTo(dialog)

    qtbot.mouseClick(view.show_look_alikes, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: sorted(window.grid_model.ids.tolist()) == new_ids[:2], timeout=10_000)
    qtbot.mouseClick(view.show_outliers, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.grid_model.ids.tolist() == [new_ids[2]], timeout=10_000)
    dialog.accept()


def test_nothing_to_report_says_so_and_a_failed_check_keeps_the_import(labeled_window, qtbot, tmp_path,
                                                                       monkeypatch):
    window = labeled_window
    folder = tmp_path / "more"
    make_image_folder(folder)
    monkeypatch.setattr(import_check, "check_new_images",
                        lambda context, project, new_ids: import_check.ImportCheck([], [], len(new_ids)))
    dialog = window.projects.show_import_dialog([str(folder)])
    qtbot.mouseClick(dialog.import_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.report is not None and not dialog.check.running, timeout=20_000)
    view = dialog.check
    assert view.status.text() == ("None of the 6 images looks like one you already have, and none looks out "
                                  "of place.")
    assert not view.show_look_alikes.isVisibleTo(dialog) and not view.show_outliers.isVisibleTo(dialog)
    dialog.accept()

    def broken(context, project, new_ids):
        raise OSError("disk on fire")

    monkeypatch.setattr(import_check, "check_new_images", broken)
    assert view.start(window.project, new_ids=dialog.report.image_ids)
    assert view.status.text() == CHECKING_TEXT
    qtbot.waitUntil(lambda: not view.running, timeout=20_000)
    assert view.status.text().startswith("The new images could not be compared")
    assert "disk on fire" in view.status.toolTip()
    assert window.grid_model.rowCount() == 18  # the import itself stays
