"""The labeling workspace driven through real widgets (offscreen): import, label with keys,
undo/redo, filters, the viewer, accepting suggestions, classes — checked in the project file.

The window is built by gui.app.create_main_window, as the app builds it (training panel, map and
model report docked). Only the engine's expensive entry points the GUI calls are faked (training,
predicting new images, the demo's size), and the fakes return the engine's own typed results."""

from __future__ import annotations

import io
import sqlite3

import numpy as np
import pytest
from PIL import Image as PILImage
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QApplication, QDockWidget

from engine.features.backbones import DEFAULT_BACKBONE, DEFAULT_LAYER
from engine.models.methods import DEFAULT_METHOD
from engine.models.metrics import Metrics
from engine.models.predicting import RefreshOutcome
from engine.models.results import TrainResult
from engine.runtime.jobs import JobStatus
from gui.app import create_main_window
from gui.runner import QtJobRunner
from storage import browse, modelstore
from storage.catalog import add_class, label_states, list_classes, set_labels
from storage.images import NewImage, add_images, image_ids

pytestmark = pytest.mark.gui


def jpeg(color, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def add_rows(project, count: int, sources=("cam1", "cam2")) -> list[int]:
    """Images stored directly (the import pipeline has its own tests); names count down."""
    return add_images(project, [
        NewImage(content_hash=f"hash{i}", original_name=f"img{count - i:03d}.jpg", original_path=f"/x/img{i}.jpg",
                 source=sources[i % len(sources)], width=40, height=30, original_format="JPEG",
                 data=jpeg((10 * i % 255, 80, 120)), thumbnail=jpeg((10 * i % 255, 80, 120)))
        for i in range(count)
    ])


def probabilities(predictions: dict[int, tuple[int, float]], class_ids: list[int]) -> modelstore.PredictionBatch:
    """{image_id: (class_id, probability)} as the engine stores it: a row per image, the rest spread evenly."""
    ids = list(predictions)
    proba = np.zeros((len(ids), len(class_ids)), dtype=np.float32)
    for row, image_id in enumerate(ids):
        class_id, probability = predictions[image_id]
        proba[row] = (1 - probability) / (len(class_ids) - 1)
        proba[row, class_ids.index(class_id)] = probability
    return modelstore.PredictionBatch(np.array(ids, dtype=np.int64), proba)


def add_model(project, predictions: dict[int, tuple[int, float]], class_ids: list[int]) -> int:
    """An active model version predicting {image_id: (class_id, probability)}."""
    names = {c.id: c.name for c in list_classes(project)}
    metrics = Metrics(accuracy=0.75, balanced_accuracy=0.75, evaluation="holdout", n_labeled=4, n_train=3, n_val=1)
    model = modelstore.NewModel(DEFAULT_METHOD, DEFAULT_BACKBONE, DEFAULT_LAYER, [names[c] for c in class_ids],
                                class_ids, weights=b"", metrics=metrics.to_json(), n_labeled=4)
    return modelstore.save_model_version(project, model, probabilities(predictions, class_ids))


class FakeTrainer:
    """engine.models.training.train_model without a network: stores a model version that predicts each
    labeled image's class (90%) and the first class for the rest (60%), and returns the engine's TrainResult."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, context, project, method: str = DEFAULT_METHOD, backbone: str | None = DEFAULT_BACKBONE,
                 layer: str | None = None, seed: int = 0, quick: bool | None = None,
                 automatic: bool = False) -> TrainResult:
        self.calls.append(method)
        classes = [c.id for c in list_classes(project)]
        labels = {s.image_id: s.class_id for s in label_states(project, image_ids(project))}
        n_labeled = sum(c is not None for c in labels.values())
        context.progress(0.5, "Training on the cached features")
        run = modelstore.start_training_run(project, method)
        metrics = Metrics(accuracy=1.0, balanced_accuracy=1.0, evaluation="5-fold CV", n_labeled=n_labeled,
                          n_train=n_labeled, n_val=n_labeled, folds=5)
        said = {i: (c, 0.9) if c is not None else (classes[0], 0.6) for i, c in labels.items()}
        names = [c.name for c in list_classes(project)]
        model = modelstore.NewModel(method, backbone or DEFAULT_BACKBONE, layer or DEFAULT_LAYER, names, classes,
                                    weights=b"", metrics=metrics.to_json(), n_labeled=n_labeled)
        version = modelstore.save_model_version(project, model, probabilities(said, classes))
        modelstore.finish_training_run(project, run, "done", model_version=version)
        return TrainResult(version, method, model.backbone, model.layer, metrics, n_labeled, run)


def labels_in_file(path) -> dict[int, tuple[int, str]]:
    """Labels as a separate connection sees them: proof they are committed, not just in memory."""
    connection = sqlite3.connect(path)
    try:
        return {i: (c, o) for i, c, o in connection.execute("SELECT image_id, class_id, origin FROM labels")}
    finally:
        connection.close()


def open_window(qtbot, settings: QSettings, tmp_path):
    """The window the app shows; closed after the test once its jobs (and its panels' jobs) are over.

    (Closing with a job running would ask the user. The training panel's start-up job imports torch,
    scikit-learn and openTSNE in the first window of a session: on a busy machine, most of a minute.)"""
    window = create_main_window(settings=settings, data_dir=tmp_path / "data", projects_dir=tmp_path / "projects")

    def idle_then_close() -> None:
        runners = window.findChildren(QtJobRunner)
        qtbot.waitUntil(lambda: not any(r.busy for r in runners), timeout=180_000)
        window._confirm_quit_while_busy = lambda: True  # a job started after the wait: no box nobody answers

    qtbot.addWidget(window, before_close_func=lambda _widget: idle_then_close())
    return window


@pytest.fixture
def trainer(monkeypatch):
    """Training in every window of a test goes to a FakeTrainer (the training panel retrains by itself)."""
    import engine.models.training

    fake = FakeTrainer()
    monkeypatch.setattr(engine.models.training, "train_model", fake)
    return fake


@pytest.fixture
def window(qtbot, tmp_path, trainer):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    main = open_window(qtbot, settings, tmp_path)
    main.show()
    main.activateWindow()
    qtbot.waitExposed(main)
    # The panels' start-up jobs end before the user picks a project; jobs queue behind them.
    qtbot.waitUntil(lambda: not any(r.busy for r in main.findChildren(QtJobRunner)), timeout=180_000)
    return main


@pytest.fixture
def labeled_window(window, project):
    """Window showing 12 images, classes cats (key 1) and dogs (key 2), nothing labeled."""
    ids = add_rows(project, 12)
    cats, dogs = add_class(project, "cats"), add_class(project, "dogs")
    window.set_project(project)
    window.test_ids, window.cats, window.dogs = ids, cats, dogs
    return window


def press(qtbot, widget, key, modifier=Qt.KeyboardModifier.NoModifier):
    qtbot.keyClick(widget, key, modifier)
    QApplication.processEvents()


def make_image_folder(root):
    """ants/ and bees/ with a few pictures each, a duplicate, and a file that is not an image."""
    for name, color in (("ants", (200, 30, 30)), ("bees", (30, 30, 200))):
        (root / name).mkdir(parents=True)
        for i in range(3):
            PILImage.new("RGB", (64, 48), (color[0], color[1] + 40 * i, color[2])).save(root / name / f"{i}.png")
    (root / "bees" / "copy.png").write_bytes((root / "bees" / "0.png").read_bytes())
    (root / "ants" / "broken.jpg").write_bytes(b"this is not a jpeg")


def dock(window, object_name: str) -> QDockWidget:
    found = window.findChild(QDockWidget, object_name)
    assert found is not None, f"no dock {object_name}"
    return found


# -- projects and import ----------------------------------------------------------------------------


def test_import_folder_through_the_dialog(window, qtbot, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    from engine.images.importing import ImportReport

    folder = tmp_path / "photos"
    make_image_folder(folder)
    (tmp_path / "projects").mkdir()
    offered = []

    def save_as(parent, title, start, file_filter):  # the user takes the name offered
        offered.append(start)
        return start, file_filter

    monkeypatch.setattr(QFileDialog, "getSaveFileName", save_as)
    window.projects.import_folder_as_project(str(folder))
    assert offered == [str(tmp_path / "projects" / "photos.sortlab")]
    assert window.project is not None and window.project.path == tmp_path / "projects" / "photos.sortlab"
    dialog = window.projects.import_dialog
    assert dialog.paths() == [str(folder)]
    assert dialog.folders_are_classes.isChecked()  # one folder with sub-folders: looks like classes

    qtbot.mouseClick(dialog.import_button, Qt.MouseButton.LeftButton)
    assert dialog.running and dialog.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.report is not None, timeout=20_000)

    report = dialog.report
    assert isinstance(report, ImportReport)
    assert (report.imported, report.duplicates, len(report.failed)) == (6, 1, 1)
    assert "6 images imported" in dialog.status.text() and "1 duplicate skipped" in dialog.status.text()
    assert dialog.failures.topLevelItemCount() == 1
    failed = dialog.failures.topLevelItem(0)
    assert failed.text(0).endswith("broken.jpg") and failed.text(1)
    assert window.grid_model.rowCount() == 6
    assert [c.name for c in window.classes_panel.classes] == ["ants", "bees"]
    assert "6 images" in window.windowTitle()
    labels = labels_in_file(window.project.path)
    assert len(labels) == 6 and {origin for _c, origin in labels.values()} == {"import"}
    dialog.accept()


def test_demo_builds_in_background_then_opens(window, qtbot, monkeypatch):
    import engine.images.demo

    real = engine.images.demo.build_demo_project
    monkeypatch.setattr(engine.images.demo, "build_demo_project", lambda context, path: real(context, path, n_images=30))
    window.welcome.demo_button.click()
    assert not window.welcome.demo_button.isEnabled() and not window.commands.demo_action.isEnabled()
    qtbot.waitUntil(lambda: window.project is not None, timeout=20_000)
    assert window.project.path == window.projects.demo_path()
    assert window.grid_model.rowCount() == 30
    assert [c.name for c in window.classes_panel.classes] == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"]
    assert window.commands.demo_action.isEnabled()


def test_a_failed_demo_build_says_why_and_opens_nothing(window, qtbot, monkeypatch):
    import engine.images.demo
    from PySide6.QtWidgets import QMessageBox

    def no_space(context, path):
        raise OSError(28, "No space left on device")

    warnings = []
    monkeypatch.setattr(engine.images.demo, "build_demo_project", no_space)
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text: warnings.append(text))
    window.projects.open_demo()
    qtbot.waitUntil(lambda: warnings != [], timeout=10_000)
    assert warnings == ["The demo could not be built: The disk is full: free some space and try again. Nothing was lost."]
    assert window.project is None and window.welcome.demo_button.isEnabled()
    assert not window.projects.demo_path().exists()


def test_recent_projects_and_window_state_survive_a_restart(window, project, qtbot, tmp_path):
    add_rows(project, 2)
    window.set_project(project)
    window.classes_dock.setFloating(False)
    window.resize(window.width(), 560)
    window.save_layout()
    window.close_project()
    assert window.welcome.recent_list.count() == 1 and window.stack.currentWidget() is window.welcome

    again = open_window(qtbot, window.settings, tmp_path)
    assert again.height() != 560  # a new window starts at its default size...
    again.restore_layout()
    assert again.height() == 560  # ...until the layout the user left comes back (the width is clamped to
    # the 800-pixel offscreen screen)
    recent = again.welcome.recent_list.item(0).data(Qt.ItemDataRole.UserRole)
    assert again.open_project_file(recent)
    assert again.grid_model.rowCount() == 2 and "test — 2 images" in again.windowTitle()
    again.close_project()


def test_opening_a_file_that_is_no_project_warns_and_keeps_the_welcome_page(window, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    not_a_project = tmp_path / "notes.sortlab"
    not_a_project.write_text("these are my notes")
    warnings = []
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text: warnings.append(title))
    assert not window.open_project_file(not_a_project)
    assert warnings == ["Cannot open project"]
    assert window.project is None and window.stack.currentWidget() is window.welcome
    assert not window.commands.import_action.isEnabled() and not window.commands.close_action.isEnabled()


def test_dropping_files_opens_the_import_dialog(labeled_window, qtbot, tmp_path):
    from PySide6.QtCore import QMimeData, QPoint, QUrl
    from PySide6.QtGui import QDropEvent

    picture = tmp_path / "new.png"
    PILImage.new("RGB", (8, 8), (1, 2, 3)).save(picture)
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(picture))])
    event = QDropEvent(QPoint(10, 10), Qt.DropAction.CopyAction, data, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    labeled_window.dropEvent(event)
    dialog = labeled_window.projects.import_dialog
    assert dialog is not None and dialog.paths() == [str(picture)] and not dialog.folders_are_classes.isChecked()
    dialog.start()
    qtbot.waitUntil(lambda: dialog.report is not None, timeout=10_000)
    assert labeled_window.grid_model.rowCount() == 13
    dialog.accept()


def test_drag_enter_accepts_local_files_only(labeled_window, tmp_path):
    from PySide6.QtCore import QMimeData, QPoint, QUrl
    from PySide6.QtGui import QDragEnterEvent

    def drag(data):
        event = QDragEnterEvent(QPoint(5, 5), Qt.DropAction.CopyAction, data, Qt.MouseButton.NoButton,
                                Qt.KeyboardModifier.NoModifier)
        event.ignore()
        labeled_window.dragEnterEvent(event)
        return event.isAccepted()

    files = QMimeData()
    files.setUrls([QUrl.fromLocalFile(str(tmp_path / "a.jpg"))])
    web = QMimeData()
    web.setUrls([QUrl("https://example.com/a.jpg")])
    text = QMimeData()
    text.setText("just words")
    assert drag(files) and not drag(web) and not drag(text)


def test_a_drop_after_a_finished_import_opens_a_fresh_dialog(labeled_window, qtbot, tmp_path):
    window = labeled_window
    first_picture, second_picture = tmp_path / "first.png", tmp_path / "second.png"
    PILImage.new("RGB", (8, 8), (1, 2, 3)).save(first_picture)
    PILImage.new("RGB", (8, 8), (4, 5, 6)).save(second_picture)
    first = window.projects.show_import_dialog([str(first_picture)])
    assert window.projects.show_import_dialog([str(second_picture)]) is first  # not started: the files join it
    assert first.paths() == [str(first_picture), str(second_picture)]
    first.start()
    qtbot.waitUntil(lambda: first.report is not None, timeout=10_000)
    assert not first.import_button.isEnabled()

    third_picture = tmp_path / "third.png"
    PILImage.new("RGB", (8, 8), (7, 8, 9)).save(third_picture)
    import_action = window.commands.import_action
    assert "Ctrl+I" in [k.toString() for k in import_action.shortcuts()]
    import_action.trigger()  # Ctrl+I while the report shows
    fresh = window.projects.import_dialog
    assert fresh is not first and not first.isVisible() and fresh.paths() == []
    fresh.add_paths([str(third_picture)])
    assert fresh.import_button.isEnabled()
    fresh.start()
    qtbot.waitUntil(lambda: fresh.report is not None, timeout=10_000)
    assert fresh.report.imported == 1 and window.grid_model.rowCount() == 15
    fresh.accept()


def test_new_images_get_predictions_after_an_import(labeled_window, qtbot, tmp_path, monkeypatch):
    import engine.models.predicting

    window = labeled_window
    ids, cats, dogs = window.test_ids, window.cats, window.dogs
    add_model(window.project, {i: (cats.id, 0.9) for i in ids}, [cats.id, dogs.id])
    window.refresh_predictions_view()
    asked = []

    def predict_new(context, project) -> RefreshOutcome:  # the real one needs a feature extractor
        version = modelstore.active_version(project)
        missing = engine.models.predicting.images_without_prediction(project, version)
        asked.append(missing)
        stored = modelstore.store_predictions(project, version, probabilities({i: (dogs.id, 0.7) for i in missing},
                                                                               [cats.id, dogs.id]))
        return RefreshOutcome(version, stored)

    monkeypatch.setattr(engine.models.predicting, "refresh_if_model", predict_new)
    picture = tmp_path / "new.png"
    PILImage.new("RGB", (8, 8), (9, 9, 9)).save(picture)
    repaints = []
    window.grid_model.tiles_changed.connect(lambda: repaints.append(True))
    dialog = window.projects.show_import_dialog([str(picture)])
    dialog.start()
    qtbot.waitUntil(lambda: "Suggestions added for 1 new images" in window.statusBar().currentMessage(), timeout=10_000)
    assert len(asked[0]) == 1 and asked[0][0] not in ids  # only the new image needed a prediction
    # The grid repaints in a turn of its own after the job (gui.one_per_turn), maybe after the message.
    qtbot.waitUntil(lambda: bool(repaints), timeout=10_000)
    assert repaints == [True]  # the grid dropped its tile facts once the predictions were stored
    new_row = window.grid_model.row_of(asked[0][0])
    assert window.grid_model.tile(new_row).predicted_class_id == dogs.id
    dialog.accept()


def test_export_actions_open_the_export_dialog(labeled_window, qtbot):
    window, commands = labeled_window, labeled_window.commands
    ids, cats, dogs = window.test_ids, window.cats, window.dogs
    assert not commands.export_model_action.isEnabled() and commands.export_dataset_action.isEnabled()
    commands.export_dataset_action.trigger()
    dialog = window.projects.export_dialog
    assert dialog is not None and dialog.isVisible() and dialog.tabs.currentIndex() == 1
    assert not dialog.tabs.isTabEnabled(0)  # no model to export yet
    dialog.reject()

    add_model(window.project, {ids[0]: (cats.id, 0.9)}, [cats.id, dogs.id])
    window.refresh_predictions_view()
    assert commands.export_model_action.isEnabled()
    commands.export_model_action.trigger()
    dialog = window.projects.export_dialog
    assert dialog.isVisible() and dialog.tabs.currentIndex() == 0 and dialog.model_combo.count() == 1
    assert commands.export_model_action in window.menuBar().actions()[0].menu().actions()
    dialog.reject()


# -- labeling with keys -----------------------------------------------------------------------------


def test_number_keys_label_and_undo_redo_writes_the_file(labeled_window, qtbot):
    window, grid = labeled_window, labeled_window.grid
    ids, cats, dogs = window.test_ids, window.cats, window.dogs
    changed = []
    window.labels_changed.connect(changed.append)

    grid.select_rows([0, 1, 2])
    press(qtbot, grid, Qt.Key.Key_1)
    assert labels_in_file(window.project.path) == {i: (cats.id, "manual") for i in ids[:3]}
    assert changed[-1] == ids[:3]
    assert window.grid_model.tile(1).class_id == cats.id

    grid.select_rows([2])
    press(qtbot, grid, Qt.Key.Key_2)  # one image: label it and move on to the next
    assert labels_in_file(window.project.path)[ids[2]] == (dogs.id, "manual")
    assert grid.selected_image_ids() == [ids[3]]

    press(qtbot, grid, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert labels_in_file(window.project.path)[ids[2]] == (cats.id, "manual")
    press(qtbot, grid, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert labels_in_file(window.project.path) == {}
    press(qtbot, grid, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert set(labels_in_file(window.project.path)) == set(ids[:3])

    press(qtbot, grid, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    assert len(grid.selected_image_ids()) == 12
    press(qtbot, grid, Qt.Key.Key_2)
    assert {c for c, _o in labels_in_file(window.project.path).values()} == {dogs.id}
    assert len(labels_in_file(window.project.path)) == 12
    press(qtbot, grid, Qt.Key.Key_Delete)
    assert labels_in_file(window.project.path) == {}
    assert "0 labeled" in window.status_line.counts_label.text()
    assert window.undo_stack.count() == 3  # the redone first label, all-dogs, clear (the undone one was dropped)


def test_a_key_without_a_class_says_so_and_labels_nothing(labeled_window, qtbot):
    window = labeled_window
    window.grid.select_rows([0])
    press(qtbot, window.grid, Qt.Key.Key_7)
    assert labels_in_file(window.project.path) == {}
    assert window.statusBar().currentMessage() == "No class has key 7. Add classes in the Classes panel."
    assert window.undo_stack.count() == 0 and window.grid.selected_image_ids() == [window.test_ids[0]]


def test_backspace_clears_the_label(labeled_window, qtbot):
    window, grid = labeled_window, labeled_window.grid
    ids, cats = window.test_ids, window.cats
    set_labels(window.project, ids[:2], cats.id)
    window.notify_labels_changed(ids[:2])
    grid.select_rows([0, 1])
    press(qtbot, grid, Qt.Key.Key_Backspace)
    assert labels_in_file(window.project.path) == {}
    assert window.grid_model.tile(0).class_id is None
    press(qtbot, grid, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert set(labels_in_file(window.project.path)) == set(ids[:2])


def test_accept_suggestion_with_enter_is_undoable(labeled_window, qtbot):
    window, project = labeled_window, labeled_window.project
    ids, cats, dogs = window.test_ids, window.cats, window.dogs
    add_model(project, {ids[0]: (dogs.id, 0.8), ids[1]: (cats.id, 0.7)}, [cats.id, dogs.id])
    window.refresh_predictions_view()
    tile = window.grid_model.tile(0)
    assert (tile.predicted_class_id, tile.probability) == (dogs.id, pytest.approx(0.8))

    window.grid.select_rows([0, 1, 2])  # the third has no suggestion and stays unlabeled
    press(qtbot, window.grid, Qt.Key.Key_Return)
    assert labels_in_file(project.path) == {ids[0]: (dogs.id, "suggestion"), ids[1]: (cats.id, "suggestion")}
    press(qtbot, window.grid, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert labels_in_file(project.path) == {}


def test_accepting_without_a_model_says_to_train_first(labeled_window, qtbot):
    window = labeled_window
    window.grid.select_rows([0])
    press(qtbot, window.grid, Qt.Key.Key_A)
    assert window.statusBar().currentMessage() == "No suggestions for these images yet: train a model first."
    assert labels_in_file(window.project.path) == {} and window.undo_stack.count() == 0


def test_labeling_retrains_through_the_training_panel_and_the_grid_shows_its_suggestions(labeled_window, qtbot,
                                                                                        trainer):
    window = labeled_window
    ids, cats, dogs = window.test_ids, window.cats, window.dogs
    assert window.grid_model.tile(5).predicted_class_id is None  # no model yet
    window.grid.select_rows([0, 1])
    press(qtbot, window.grid, Qt.Key.Key_1)
    window.grid.select_rows([2, 3])
    press(qtbot, window.grid, Qt.Key.Key_2)  # two classes labeled: a model can be trained

    qtbot.waitUntil(lambda: window.grid_model.model_version is not None, timeout=20_000)
    assert trainer.calls == [DEFAULT_METHOD]  # debounced: one quick retrain for the whole burst
    version = modelstore.active_version(window.project)
    assert window.grid_model.model_version == version
    assert [window.grid_model.tile(r).predicted_class_id for r in range(6)] == [cats.id, cats.id, dogs.id, dogs.id,
                                                                                 cats.id, cats.id]
    assert window.commands.export_model_action.isEnabled()  # a model to export now
    combo = window.filter_bar.filter_combo
    assert "Suggested “dogs”" in [combo.itemText(i) for i in range(combo.count())]
    assert labels_in_file(window.project.path) == {ids[0]: (cats.id, "manual"), ids[1]: (cats.id, "manual"),
                                                   ids[2]: (dogs.id, "manual"), ids[3]: (dogs.id, "manual")}


def test_deleting_a_class_clears_the_undo_history(labeled_window, qtbot, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    window, grid = labeled_window, labeled_window.grid
    ids, cats, dogs = window.test_ids, window.cats, window.dogs
    grid.select_rows([0, 1])
    press(qtbot, grid, Qt.Key.Key_1)
    grid.select_rows([0, 1])
    press(qtbot, grid, Qt.Key.Key_2)  # undoing this would put the cats labels back
    assert window.undo_stack.count() == 2

    monkeypatch.setattr(QMessageBox, "question", lambda *args, **kw: QMessageBox.StandardButton.Yes)
    window.classes_panel.select_class(cats.id)
    window.classes_panel.delete_current()
    assert window.undo_stack.count() == 0 and not window.commands.undo_action.isEnabled()
    assert "undo history was cleared" in window.statusBar().currentMessage()
    press(qtbot, grid, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)  # nothing left to undo
    assert labels_in_file(window.project.path) == {ids[0]: (dogs.id, "manual"), ids[1]: (dogs.id, "manual")}


# -- filters, predictions and the viewer ------------------------------------------------------------


def test_filters_and_sorting_are_sql_queries(labeled_window, qtbot):
    window, project = labeled_window, labeled_window.project
    ids, cats, dogs = window.test_ids, window.cats, window.dogs
    set_labels(project, ids[:4], cats.id)
    set_labels(project, ids[4:6], dogs.id)
    predictions = {i: (cats.id, 0.9) for i in ids[:6]}
    predictions.update({ids[4]: (cats.id, 0.55), ids[6]: (dogs.id, 0.95), ids[7]: (cats.id, 0.52)})
    add_model(project, predictions, [cats.id, dogs.id])
    window.refresh_predictions_view()

    def shown():
        return window.grid_model.ids.tolist()

    window.set_filter(browse.UNLABELED)
    assert shown() == ids[6:]
    window.set_filter(browse.LABELED_AS, class_id=dogs.id)
    assert shown() == ids[4:6]
    window.set_filter(browse.FROM_SOURCE, source="cam2")
    assert shown() == ids[1::2]
    window.set_filter(browse.PREDICTED_AS, class_id=dogs.id)
    assert shown() == [ids[6]]
    window.set_filter(browse.DISAGREES)
    assert shown() == [ids[4], ids[5]]  # dogs the model takes for cats
    window.set_filter(browse.LOW_CONFIDENCE)
    assert shown() == [ids[4], ids[7]]
    assert window.filter_bar.count_label.text() == "2 of 12 images"

    window.filter_bar.sort_combo.setCurrentIndex(window.filter_bar.sort_combo.findData(browse.CONFIDENCE))
    assert shown() == [ids[7], ids[4]]
    window.set_filter(browse.ALL)
    window.filter_bar.sort_combo.setCurrentIndex(window.filter_bar.sort_combo.findData(browse.NAME))
    assert shown() == list(reversed(ids))  # names count down

    window.filter_grid([ids[3], ids[9]], "cats taken for dogs")
    assert sorted(shown()) == [ids[3], ids[9]]
    assert window.filter_bar.filter_combo.currentText() == "cats taken for dogs"
    window.select_images([ids[5]])  # not in the chosen set: the grid shows everything to reveal it
    assert window.filter_bar.query().kind == browse.ALL and window.grid.selected_image_ids() == [ids[5]]


def test_refresh_predictions_view_follows_the_active_model(labeled_window):
    window = labeled_window
    ids, cats, dogs = window.test_ids, window.cats, window.dogs
    first = add_model(window.project, {i: (cats.id, 0.9) for i in ids}, [cats.id, dogs.id])
    window.refresh_predictions_view()
    window.set_filter(browse.PREDICTED_AS, class_id=cats.id)
    assert len(window.grid_model.ids) == 12
    assert window.commands.export_model_action.isEnabled()

    second = add_model(window.project, {ids[0]: (dogs.id, 0.7)}, [cats.id, dogs.id])
    modelstore.set_active_model(window.project, second)
    window.refresh_predictions_view()
    assert window.grid_model.model_version == second
    assert window.grid_model.ids.tolist() == []  # "suggested cats" ran again, with the new model
    window.set_filter(browse.ALL)
    assert (window.grid_model.tile(0).predicted_class_id, window.grid_model.tile(1).predicted_class_id) == (dogs.id, None)
    modelstore.set_active_model(window.project, first)
    window.refresh_predictions_view()
    assert window.grid_model.tile(1).predicted_class_id == cats.id


def test_viewer_walks_the_filter_and_labels_in_place(labeled_window, qtbot):
    window = labeled_window
    ids, dogs = window.test_ids, window.dogs
    window.set_filter(browse.FROM_SOURCE, source="cam1")
    window.grid.select_rows([1])
    press(qtbot, window.grid, Qt.Key.Key_Space)
    viewer = window.viewer
    assert viewer is not None and viewer.isVisible() and viewer.image_id == ids[2]
    assert not viewer.image_label.pixmap().isNull()

    press(qtbot, viewer, Qt.Key.Key_Right)
    assert viewer.image_id == ids[4] and window.grid.selected_image_ids() == [ids[4]]
    press(qtbot, viewer, Qt.Key.Key_2)
    assert labels_in_file(window.project.path) == {ids[4]: (dogs.id, "manual")}
    assert viewer.image_id == ids[6] and window.grid.selected_image_ids() == [ids[6]]  # it moved on
    press(qtbot, viewer, Qt.Key.Key_Left)
    assert viewer.image_id == ids[4] and "dogs" in viewer.label_label.text()
    press(qtbot, viewer, Qt.Key.Key_Left)
    assert viewer.image_id == ids[2]
    press(qtbot, viewer, Qt.Key.Key_Escape)
    assert not viewer.isVisible()

    window.grid.doubleClicked.emit(window.grid_model.index(0))
    assert window.viewer.image_id == ids[0]
    window.viewer.close()


def test_viewer_shows_the_probabilities_of_the_model(labeled_window, qtbot):
    from PySide6.QtWidgets import QProgressBar

    window = labeled_window
    ids, cats, dogs = window.test_ids, window.cats, window.dogs
    add_model(window.project, {ids[0]: (dogs.id, 0.8)}, [cats.id, dogs.id])
    window.refresh_predictions_view()
    viewer = window.open_viewer(0)
    assert "dogs" in viewer.prediction_label.text() and "80% sure" in viewer.prediction_label.text()
    bars = [viewer.bars.itemAt(i).widget() for i in range(viewer.bars.count())]
    assert [bar.format() for bar in bars if isinstance(bar, QProgressBar)] == ["dogs  80%", "cats  20%"]
    assert bars[0].value() == 800
    viewer.close()


# -- classes ----------------------------------------------------------------------------------------


def test_classes_panel_edits_and_delete_reports_lost_labels(labeled_window, qtbot, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    window, panel = labeled_window, labeled_window.classes_panel
    ids, cats = window.test_ids, window.cats
    set_labels(window.project, ids[:3], cats.id)
    panel.refresh()
    assert panel.list.item(0).text() == "1   cats   (3)"

    bird = panel.add_class("birds")
    assert panel.list.item(2).text().startswith("3   birds")
    panel.select_class(bird.id)
    panel.move_current(-1)
    assert [c.name for c in panel.classes] == ["cats", "birds", "dogs"]
    assert panel.class_for_key("2").name == "birds"

    questions = []
    monkeypatch.setattr(QMessageBox, "question", lambda *args, **kw: questions.append(args[2]) or QMessageBox.StandardButton.Yes)
    panel.select_class(cats.id)
    panel.delete_current()
    assert "3 images labeled “cats” will become unlabeled" in questions[0]
    assert [c.name for c in panel.classes] == ["birds", "dogs"]
    assert labels_in_file(window.project.path) == {}
    combo_texts = [window.filter_bar.filter_combo.itemText(i) for i in range(window.filter_bar.filter_combo.count())]
    assert "Labeled “cats”" not in combo_texts and "Labeled “birds”" in combo_texts


def test_rename_and_recolour_a_class(labeled_window, monkeypatch):
    from PySide6.QtGui import QColor
    from PySide6.QtWidgets import QColorDialog

    import gui.classes_panel

    window, panel = labeled_window, labeled_window.classes_panel
    cats = window.cats
    panel.select_class(cats.id)
    monkeypatch.setattr(gui.classes_panel, "ask_name", lambda *args, **kw: "kittens")
    panel.rename_current()
    monkeypatch.setattr(QColorDialog, "getColor", lambda *args, **kw: QColor("#123456"))
    panel.recolor_current()

    stored = {c.id: c for c in list_classes(window.project)}[cats.id]
    assert (stored.name, stored.color.lower()) == ("kittens", "#123456")
    assert panel.list.item(0).text().startswith("1   kittens")
    assert window.grid.tile_delegate.classes[cats.id].name == "kittens"  # tiles draw the new name and colour
    assert window.grid.tile_delegate._colors[cats.id].name() == "#123456"
    combo = window.filter_bar.filter_combo
    assert "Labeled “kittens”" in [combo.itemText(i) for i in range(combo.count())]


# -- docks and window state -------------------------------------------------------------------------


def test_the_insight_panels_share_the_right_side_as_tabs(window):
    training, map_dock, report = (dock(window, name) for name in
                                  ("dock-training", "dock-map-of-your-images", "dock-model-report"))
    QApplication.processEvents()  # the dock layout settles on the next event loop pass
    assert set(window.tabifiedDockWidgets(training)) == {map_dock, report}
    assert window.dockWidgetArea(window.classes_dock) == Qt.DockWidgetArea.LeftDockWidgetArea
    view_actions = window.commands.view_menu.actions()
    assert all(d.toggleViewAction() in view_actions for d in (window.classes_dock, training, map_dock, report))


def test_docks_and_toolbar_come_back_as_they_were_left(window, project, qtbot, tmp_path):
    from PySide6.QtWidgets import QToolBar

    window.set_project(project)
    report = dock(window, "dock-model-report")
    window.removeDockWidget(report)
    window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, report)
    report.show()
    dock(window, "dock-training").hide()
    window.findChild(QToolBar, "toolbar-main").hide()
    window.save_layout()
    window.close_project()

    again = open_window(qtbot, window.settings, tmp_path)
    again.show()
    again.restore_layout()
    QApplication.processEvents()
    assert again.dockWidgetArea(dock(again, "dock-model-report")) == Qt.DockWidgetArea.BottomDockWidgetArea
    assert not dock(again, "dock-training").isVisible() and dock(again, "dock-model-report").isVisible()
    assert not again.findChild(QToolBar, "toolbar-main").isVisible()
    assert not again.classes_dock.isVisible()  # no project open: the classes panel stays hidden


# -- the job runner ---------------------------------------------------------------------------------


def test_the_runner_signals_success_with_the_typed_result_and_only_on_success(qtbot):
    from engine.runtime.jobs import JobCancelled

    runner = QtJobRunner()
    ended = []
    runner.finished.connect(lambda name, outcome: ended.append((name, outcome.status)))
    succeeded = []
    runner.succeeded.connect(lambda name, result: succeeded.append((name, result)))

    def cancelled(context):
        raise JobCancelled()

    def failing(context):
        raise ValueError("no two classes")

    result = RefreshOutcome(model_version=3, predicted=2)
    try:
        with qtbot.waitSignal(runner.busy_changed, check_params_cb=lambda busy: not busy, timeout=5000):
            runner.submit("cancelled", cancelled)
            runner.submit("failing", failing)
            runner.submit("predict", lambda context: result)
        assert ended == [("cancelled", JobStatus.CANCELLED), ("failing", JobStatus.FAILED), ("predict", JobStatus.DONE)]
        assert succeeded == [("predict", result)]
    finally:
        runner.shutdown()


# -- thumbnails and the grid ------------------------------------------------------------------------


def test_lru_cache_forgets_the_least_recently_used():
    from gui.lru_cache import LruCache

    cache: LruCache[int, str] = LruCache(4)
    for key in range(1, 5):
        cache.put(key, f"pixmap {key}")
    assert cache.get(1) == "pixmap 1"  # 1 is now the most recently used
    cache.put(5, "pixmap 5")
    assert len(cache) == 4 and 2 not in cache and all(i in cache for i in (1, 3, 4, 5))
    cache.put(6, "pixmap 6")
    assert 3 not in cache and 1 in cache and cache.get(3) is None
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError):
        LruCache(0)


def test_thumbnails_load_lazily_in_the_background(labeled_window, qtbot):
    model, grid = labeled_window.grid_model, labeled_window.grid
    qtbot.waitUntil(lambda: len(grid.visible_rows()) > 0
                    and all(model.pixmap(model.image_id(r)) is not None for r in grid.visible_rows()), timeout=5000)
    assert model.cached_thumbnails == len(grid.visible_rows())  # loaded for what is on screen, nothing more


def test_only_asked_rows_are_loaded_into_a_bounded_cache(project, qtbot):
    from gui.grid_model import ThumbnailGridModel
    from gui.lru_cache import LruCache
    from gui.thumbnails import THUMB_SIDE

    ids = add_rows(project, 40)
    model = ThumbnailGridModel()
    model.set_project(project)
    model._pixmaps = LruCache(4)
    model.set_ids(np.array(ids))
    loaded = []
    model._loader.loaded.connect(lambda images: loaded.extend(i for i, _image in images))
    try:
        for row in range(6):
            assert model.thumbnail(row) is None  # not cached yet: queued
        qtbot.waitUntil(lambda: len(set(loaded)) == 6, timeout=5000)
        assert set(loaded) == set(ids[:6])  # rows nobody asked for are never read or decoded
        assert model.cached_thumbnails == 4  # two of the six were evicted
        pixmap = next(model.pixmap(i) for i in ids[:6] if model.pixmap(i) is not None)
        assert max(pixmap.width(), pixmap.height()) == round(THUMB_SIDE * model.device_pixel_ratio)  # pre-scaled

        for row in range(10, 30):
            model.thumbnail(row)
        model.retain_thumbnail_rows(28, 29)  # scrolled on: only the last two are still wanted
        qtbot.waitUntil(lambda: model.pending_thumbnails == 0, timeout=5000)
        QApplication.processEvents()
        assert set(loaded) - set(ids[:6]) <= set(ids[28:30])
    finally:
        model.shutdown()


def test_the_grid_loads_the_screen_and_not_the_rows_below_it(window, project, qtbot):
    ids = add_rows(project, 150)
    window.set_project(project)
    grid, model = window.grid, window.grid_model
    qtbot.waitUntil(lambda: len(grid.visible_rows()) > 0
                    and all(model.pixmap(model.image_id(r)) is not None for r in grid.visible_rows()), timeout=5000)
    first, last = grid.visible_row_span()
    assert last < 100  # the window shows far fewer than 150 tiles
    QApplication.processEvents()
    assert all(model.pixmap(i) is None for i in ids[last + 1:])
    assert model.cached_thumbnails <= last - first + 1


def test_refreshing_many_tiles_repaints_the_view_instead_of_signalling_every_row(project, qtbot):
    from gui.grid_model import MAX_ROW_SIGNALS, ThumbnailGridModel

    ids = add_rows(project, MAX_ROW_SIGNALS + 4)
    cats = add_class(project, "cats")
    model = ThumbnailGridModel()
    model.set_project(project)
    model.set_ids(np.array(ids))
    try:
        assert model.tile(0).class_id is None
        changed, repaints = [], []
        model.dataChanged.connect(lambda first, last, roles: changed.append((first.row(), last.row())))
        model.tiles_changed.connect(lambda: repaints.append(True))
        set_labels(project, ids, cats.id)
        model.refresh_tiles(ids)  # e.g. select all, then a number key
        assert changed == [] and repaints == [True]
        assert model.tile(0).class_id == cats.id  # the cached facts were dropped
        model.refresh_tiles([ids[5]])
        assert changed == [(5, 5)]
    finally:
        model.shutdown()
