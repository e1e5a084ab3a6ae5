"""What a new user meets in the first ten minutes (issue #12), driven through the window the app
shows: it fits a laptop screen, the demo's digits have their own keys, a closed project leaves
nothing behind, exports make their folder, re-imports apply folder labels, sources can be renamed,
the tile menu, the viewer's undo, empty states, and the words of the status bar and undo history.

Windows are built by gui.app.create_main_window through test_gui_workspace's fixtures; only the
engine's expensive entry points are faked, returning the engine's own typed results."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QDockWidget, QToolBar, QToolButton
from test_gui_workspace import (  # noqa: F401  (labeled_window, trainer and window are fixtures)
    add_model,
    add_rows,
    labeled_window,
    labels_in_file,
    press,
    trainer,
    window,
)

from engine.ship.export import ExportReport
from engine.ship.verify import VerificationResult
from gui.source_dialog import RenameSourceDialog
from storage import browse
from storage.catalog import add_class, set_labels
from storage.project import create_project

pytestmark = pytest.mark.gui


def settle() -> None:
    """Layouts and dock sizes apply on the next turns of the event loop."""
    for _ in range(3):
        QApplication.processEvents()


def tile_point(window, row: int) -> QPoint:
    return window.grid.visualRect(window.grid_model.index(row)).center()


# -- the window fits the screen -----------------------------------------------------------------


def test_the_window_fits_a_laptop_screen_and_opening_a_project_never_widens_it(window, project):
    long_source = "import 2026-12-01 21:40 (folder 'holiday pictures from the summer of 2025/camera one')"
    add_rows(project, 6, sources=(long_source, "another camera with a long name too"))
    for name in ("a class with a rather long name", "bees", "wasps"):
        add_class(project, name)
    window.resize(1366, 740)
    window.restore_layout()  # first run: the default dock sizes
    settle()
    assert window.width() == 1366

    window.set_project(project)
    window.status_line._job_progress("import", 0.5, "Imported 120 of 1,000 (3 duplicates, 0 failed) " * 3)
    settle()
    docks = window.findChildren(QDockWidget)
    assert len(docks) == 4 and all(d.isVisible() for d in docks)  # classes, training, map, report
    assert window.width() == 1366  # opening the project did not widen the window
    # Every panel open: the window could even be as small as 1024 x 700.
    assert window.minimumSizeHint().width() <= 1024 and window.minimumSizeHint().height() <= 700
    window.resize(1024, 700)
    settle()
    assert (window.width(), window.height()) == (1024, 700)
    assert all(d.isVisible() and d.width() >= 150 for d in docks)


# -- the demo's keys ----------------------------------------------------------------------------


def test_each_demo_digit_is_labeled_by_its_own_key(window, qtbot, monkeypatch):
    import engine.images.demo

    real = engine.images.demo.build_demo_project
    monkeypatch.setattr(engine.images.demo, "build_demo_project",
                        lambda context, path: real(context, path, n_images=30))
    window.projects.open_demo()
    qtbot.waitUntil(lambda: window.project is not None, timeout=20_000)
    panel = window.classes_panel
    assert all(panel.class_for_key(str(digit)).name == str(digit) for digit in range(10))

    window.set_filter(browse.UNLABELED)
    grid, first, second = window.grid, window.grid_model.image_id(0), window.grid_model.image_id(1)
    grid.select_rows([0])
    press(qtbot, grid, Qt.Key.Key_7)
    press(qtbot, grid, Qt.Key.Key_0)  # moved on after the 7: the next image becomes a 0
    labels = labels_in_file(window.project.path)
    names = {c.id: c.name for c in panel.classes}
    assert (names[labels[first][0]], names[labels[second][0]]) == ("7", "0")
    grid.select_rows([1])
    press(qtbot, grid, Qt.Key.Key_Backspace)  # removing a label has its own key
    assert second not in labels_in_file(window.project.path)
    assert "0" in [k.toString() for a in window.commands.label_actions for k in a.shortcuts()]


# -- nothing of a closed project stays on screen ------------------------------------------------


def test_closing_or_switching_projects_resets_the_workspace_and_the_panels(labeled_window, qtbot, tmp_path):
    window = labeled_window
    ids, cats, dogs = window.test_ids, window.cats, window.dogs
    add_model(window.project, {i: (cats.id, 0.9) for i in ids}, [cats.id, dogs.id])
    window.refresh_predictions_view()
    panels = window.insight
    with qtbot.waitSignal(panels.report.report_shown, timeout=20_000):
        panels.report.refresh()
    assert panels.report.report_version is not None
    panels.embedding.set_layout(ids, np.random.default_rng(0).normal(size=(len(ids), 2)))
    window.filter_grid(ids[:2], "cats taken for dogs")
    window.show_message("Accepted 2 suggestions.")
    seen = []
    window.project_changed.connect(seen.append)

    window.close_project()
    assert seen == [None]
    assert panels.training.project is None and panels.embedding.project is None and panels.report.project is None
    assert panels.report.report_version is None and panels.report.versions_table.rowCount() == 0
    assert len(panels.embedding.image_ids) == 0
    combo = window.filter_bar.filter_combo
    assert "cats taken for dogs" not in [combo.itemText(i) for i in range(combo.count())]
    assert window.statusBar().currentMessage() == "" and not window.has_model
    assert window.status_line.counts_label.text() == "No project open"

    empty = create_project(tmp_path / "empty.sortlab")
    window.set_project(empty)
    assert seen[-1] is empty and panels.training.project is empty and panels.report.report_version is None
    assert window.filter_bar.query() == browse.GridQuery() and window.grid_model.rowCount() == 0
    assert not window.commands.export_model_action.isEnabled()
    assert window.grid_area.currentWidget() is window.empty_message


# -- empty states -------------------------------------------------------------------------------


def test_an_empty_project_and_an_empty_filter_say_what_to_do(window, project, qtbot):
    window.set_project(project)
    message = window.empty_message
    assert window.grid_area.currentWidget() is message
    assert "Drop images here or Import…" in message.title.text()
    assert message.import_button.isVisibleTo(window) and not message.all_button.isVisibleTo(window)
    qtbot.mouseClick(message.import_button, Qt.MouseButton.LeftButton)
    assert window.projects.import_dialog is not None and window.projects.import_dialog.isVisible()
    window.projects.import_dialog.reject()

    add_rows(project, 3)
    cats = add_class(project, "cats")
    window.refresh_after_import()
    assert window.grid_area.currentWidget() is window.grid
    window.set_filter(browse.LABELED_AS, class_id=cats.id)
    assert window.grid_area.currentWidget() is message
    assert message.title.text() == "<h3>No images match “Labeled “cats””</h3>"
    assert message.detail.text() == "No image is labeled “cats” yet: select images and press 1."
    qtbot.mouseClick(message.all_button, Qt.MouseButton.LeftButton)
    assert window.filter_bar.query().kind == browse.ALL and window.grid_area.currentWidget() is window.grid


# -- the tile's context menu --------------------------------------------------------------------


def test_right_click_on_a_tile_offers_what_users_expect(labeled_window, qtbot, tmp_path, monkeypatch):
    from PySide6.QtGui import QDesktopServices

    window = labeled_window
    ids, cats, dogs = window.test_ids, window.cats, window.dogs
    window.grid.select_rows([0, 1])
    settle()
    menu = window.tile_menu.menu_at(tile_point(window, 3))  # an unselected tile: it becomes the selection
    assert window.grid.selected_image_ids() == [ids[3]]
    actions = {a.text().split("\t")[0]: a for a in menu.actions() if a.text()}
    assert list(actions) == ["Label as", "Remove label", "Accept suggestion", "Open", "Show in map",
                             "Copy the file's path"]  # the original /x/img3.jpg is gone
    assert not actions["Accept suggestion"].isEnabled() and not actions["Show in map"].isEnabled()
    label_as = {a.text(): a for a in actions["Label as"].menu().actions()}
    assert list(label_as) == ["cats\t1", "dogs\t2"]
    label_as["dogs\t2"].trigger()
    assert labels_in_file(window.project.path) == {ids[3]: (dogs.id, "manual")}
    actions["Remove label"].trigger()
    assert labels_in_file(window.project.path) == {}
    actions["Copy the file's path"].trigger()
    assert QGuiApplication.clipboard().text() == "/x/img3.jpg"
    assert "no longer there" in window.statusBar().currentMessage()

    window.grid.select_rows([0, 1, 2])
    add_model(window.project, {i: (cats.id, 0.9) for i in ids}, [cats.id, dogs.id])
    window.refresh_predictions_view()
    map_view = window.insight.embedding
    map_view.set_layout(ids, np.random.default_rng(1).normal(size=(len(ids), 2)))
    settle()
    menu = window.tile_menu.menu_at(tile_point(window, 1))  # a selected tile: the selection stays
    actions = {a.text().split("\t")[0]: a for a in menu.actions() if a.text()}
    actions["Accept suggestion"].trigger()
    assert labels_in_file(window.project.path) == {i: (cats.id, "suggestion") for i in ids[:3]}
    assert actions["Show in map"].isEnabled()
    actions["Show in map"].trigger()
    assert sorted(map_view.selected_ids) == ids[:3]
    assert window.insight.docks["map"].isVisible()
    actions["Open"].trigger()
    assert window.viewer is not None and window.viewer.image_id == ids[1]
    window.viewer.close()

    picture = tmp_path / "shelf" / "kept.png"
    picture.parent.mkdir()
    PILImage.new("RGB", (8, 8), (5, 5, 5)).save(picture)
    dialog = window.projects.show_import_dialog([str(picture)])
    dialog.start()
    qtbot.waitUntil(lambda: dialog.report is not None, timeout=10_000)
    dialog.accept()
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or True)
    row = window.grid_model.row_of(dialog.report.image_ids[0])
    settle()
    window.grid.scrollTo(window.grid_model.index(row))
    settle()
    menu = window.tile_menu.menu_at(tile_point(window, row))
    reveal = next(a for a in menu.actions() if a.text() == "Show the file in its folder")
    reveal.trigger()
    assert opened == [str(picture.parent)]


# -- the viewer, accepting, undo words ----------------------------------------------------------


def test_the_viewer_moves_on_after_labeling_and_undoes_like_the_grid(labeled_window, qtbot):
    window = labeled_window
    ids, cats = window.test_ids, window.cats
    viewer = window.open_viewer(0)
    viewer.activateWindow()  # the keys go to the viewer's window, not the main window's shortcuts
    qtbot.waitActive(viewer)
    press(qtbot, viewer, Qt.Key.Key_1)
    assert labels_in_file(window.project.path) == {ids[0]: (cats.id, "manual")}
    assert viewer.image_id == ids[1] and window.grid.selected_image_ids() == [ids[1]]
    assert window.undo_stack.undoText() == "Label 1 image as “cats”"
    press(qtbot, viewer, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert labels_in_file(window.project.path) == {}
    press(qtbot, viewer, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert labels_in_file(window.project.path) == {ids[0]: (cats.id, "manual")}
    press(qtbot, viewer, Qt.Key.Key_Left)
    press(qtbot, viewer, Qt.Key.Key_Delete)
    assert labels_in_file(window.project.path) == {} and viewer.image_id == ids[1]
    assert window.undo_stack.undoText() == "Remove the label of 1 image"
    viewer.close()

    # The map pushes the workspace's command with its own words; the undo history reads one way.
    command = window.make_label_command(ids[:2], cats.id, "Label 2 images as cats")
    assert command.text() == "Label 2 images as “cats”"


def test_accepting_suggestions_says_how_many_and_skips_labeled_images(labeled_window, qtbot):
    window = labeled_window
    ids, cats, dogs = window.test_ids, window.cats, window.dogs
    set_labels(window.project, ids[:2], dogs.id)
    window.notify_labels_changed(ids[:2])
    add_model(window.project, {i: (cats.id, 0.8) for i in ids[:5]}, [cats.id, dogs.id])
    window.refresh_predictions_view()
    window.grid.select_rows(range(6))  # the sixth has no suggestion
    press(qtbot, window.grid, Qt.Key.Key_Return)
    assert window.statusBar().currentMessage() == "Accepted 3 suggestions (2 already labeled)."
    assert window.undo_stack.undoText() == "Accept 3 suggestions"
    labels = labels_in_file(window.project.path)
    assert labels == {**{i: (dogs.id, "manual") for i in ids[:2]}, **{i: (cats.id, "suggestion") for i in ids[2:5]}}
    window.grid.select_rows([0])
    press(qtbot, window.grid, Qt.Key.Key_A)
    assert "already labeled" in window.statusBar().currentMessage() and window.undo_stack.count() == 1


def test_toolbar_buttons_keep_their_place_as_the_undo_text_changes(labeled_window, qtbot):
    window = labeled_window
    toolbar = window.findChild(QToolBar, "toolbar-main")
    undo_button = toolbar.widgetForAction(window.commands.toolbar_undo)
    assert isinstance(undo_button, QToolButton)
    settle()
    before = [toolbar.widgetForAction(a).geometry() for a in toolbar.actions() if toolbar.widgetForAction(a)]
    window.grid.select_rows(range(12))
    press(qtbot, window.grid, Qt.Key.Key_1)
    settle()
    assert undo_button.text() == "Undo" and undo_button.isEnabled()
    assert undo_button.toolTip() == "Undo: Label 12 images as “cats”"
    after = [toolbar.widgetForAction(a).geometry() for a in toolbar.actions() if toolbar.widgetForAction(a)]
    assert [g.x() for g in after] == [g.x() for g in before]
    undo_button.click()
    assert labels_in_file(window.project.path) == {} and window.commands.toolbar_redo.isEnabled()


# -- help and dialogs ---------------------------------------------------------------------------


def test_the_shortcuts_help_is_a_table_with_every_key(window):
    from PySide6.QtWidgets import QMessageBox

    from gui.window_commands import SHORTCUTS

    window.commands.shortcuts_action.trigger()
    box = window.commands.shortcuts_box
    assert isinstance(box, QMessageBox) and box.isVisible() and box.textFormat() == Qt.TextFormat.RichText
    assert box.text().startswith("<table") and box.text().count("<tr>") == len(SHORTCUTS)
    keys = " ".join(keys for keys, _what in SHORTCUTS)
    for expected in ("Ctrl+K", "Ctrl+L", "Double-click", "double-click", "Right-click", "Backspace", "0"):
        assert expected in keys
    box.close()


def test_the_add_class_dialog_is_wide_enough_for_its_title(window):
    from gui.classes_panel import name_dialog

    dialog = name_dialog(window, "Add a class", "Name of the new class:")
    title_width = dialog.fontMetrics().horizontalAdvance("Add a class")
    assert dialog.minimumWidth() >= title_width + 160 and dialog.minimumWidth() >= 380


# -- sources ------------------------------------------------------------------------------------


def test_a_source_is_renamed_from_the_edit_menu_and_the_filter_follows(labeled_window, monkeypatch):
    window = labeled_window

    def rename_cam1(dialog: RenameSourceDialog) -> int:
        assert dialog.source_combo.currentData() == "cam1"  # the source the grid shows is offered
        dialog.name_edit.setText("  kitchen   camera ")
        dialog.accept()
        return dialog.result()

    monkeypatch.setattr(RenameSourceDialog, "exec", rename_cam1)
    window.set_filter(browse.FROM_SOURCE, source="cam1")
    renamed = []
    window.sources_changed.connect(lambda: renamed.append(True))
    window.commands.rename_source_action.trigger()
    assert renamed == [True]
    assert window.filter_bar.query() == browse.GridQuery(kind=browse.FROM_SOURCE, source="kitchen camera")
    assert window.filter_bar.filter_combo.currentText() == "From kitchen camera (6)"
    assert len(window.grid_model.ids) == 6
    assert window.statusBar().currentMessage() == "Source “cam1” is now called “kitchen camera”."


def test_import_a_folder_lets_the_user_name_and_place_the_project(window, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    folder = tmp_path / "train"
    folder.mkdir()
    answers = iter(["", str(tmp_path / "elsewhere" / "Ants and bees")])
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args: (next(answers), ""))
    window.projects.import_folder_as_project(str(folder))  # cancelled: nothing is made
    assert window.project is None and not list(tmp_path.rglob("*.sortlab"))
    window.projects.import_folder_as_project(str(folder))
    assert window.project.path == tmp_path / "elsewhere" / "Ants and bees.sortlab"
    assert window.projects.import_dialog.paths() == [str(folder)]
    window.projects.import_dialog.reject()


# -- re-import and export -----------------------------------------------------------------------


def test_reimporting_with_folder_labels_labels_the_duplicates_and_lists_conflicts(window, project, qtbot, tmp_path):
    folder = tmp_path / "train"
    for name, color in (("ants", (200, 30, 30)), ("bees", (30, 30, 200))):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            PILImage.new("RGB", (16, 12), (color[0], color[1] + 60 * i, color[2])).save(folder / name / f"{i}.png")
    window.set_project(project)
    first = window.projects.show_import_dialog([str(folder)])
    first.folders_are_classes.setChecked(False)
    first.start()
    qtbot.waitUntil(lambda: first.report is not None, timeout=10_000)
    first.accept()
    bees = add_class(project, "bees")
    set_labels(project, [first.report.image_ids[0]], bees.id)  # ants/0.png, labeled "bees" by the user

    again = window.projects.show_import_dialog([str(folder)])
    assert again.folders_are_classes.isChecked()
    again.start()
    qtbot.waitUntil(lambda: again.report is not None, timeout=10_000)
    text = again.status.text()
    assert "0 images imported" in text and "4 duplicates skipped" in text
    assert "3 of them had no label and got their folder's label" in text
    assert "1 of them is labeled otherwise than their folder says: their label was kept" in text
    row = again.failures.topLevelItem(0)
    assert again.failures.isVisibleTo(again) and row.text(0).endswith("0.png")
    assert row.text(1) == "kept its label “bees”; its folder says “ants”"
    assert len(labels_in_file(project.path)) == 4
    assert "4 labeled" in window.status_line.counts_label.text()
    again.accept()


def test_the_export_dialog_says_it_made_the_missing_folder(labeled_window, qtbot, tmp_path, monkeypatch):
    import gui.export_dialog

    window = labeled_window
    ids, cats, dogs = window.test_ids, window.cats, window.dogs
    add_model(window.project, {i: (cats.id, 0.9) for i in ids}, [cats.id, dogs.id])
    window.refresh_predictions_view()
    target = tmp_path / "new folder" / "bundle"
    asked = []

    def export(context, project, out_dir, model_version=None, make_zip=False) -> ExportReport:
        asked.append(out_dir)  # the real export, without building a network (tests/test_export.py)
        return ExportReport(str(out_dir), model_version, ["cats", "dogs"], VerificationResult(12, 12, 1e-7, "labeled"),
                            ["model.onnx"], 10, created_folder=str(tmp_path / "new folder"))

    monkeypatch.setattr(gui.export_dialog, "export_bundle", export)
    dialog = window.projects.show_export_dialog(0)
    dialog.model_target.edit.setText(str(target))
    dialog.start_export()
    qtbot.waitUntil(lambda: dialog.last_outcome is not None, timeout=10_000)
    assert asked == [target]
    assert dialog.status.text().startswith(f"Created the folder {tmp_path / 'new folder'} (it did not exist).\n"
                                           f"Saved to {target}.")
    # The check in plain words; the technical figures in the tooltip (issue 12, item 14).
    assert "the same answer as Sortlab on 12 of 12 labeled images" in dialog.status.text()
    assert "ONNX" not in dialog.status.text() and "e-07" not in dialog.status.text()
    assert "max probability difference 1.00e-07" in dialog.status.toolTip()
    dialog.reject()
