"""The insight panels in the window the app builds (gui.app.create_main_window): real training on
cached features, the report, the map, the lasso and model versions, wired to the workspace."""

from __future__ import annotations

import numpy as np
import pytest
import shiboken6
from helpers.feature_projects import make_feature_project
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QDockWidget
from test_gui_insight import lasso_around, save_version, wait_until_laid_out

from engine.features.runners import device_name
from engine.models.results import TrainResult
from engine.runtime.jobs import JobStatus
from gui.app import create_main_window
from gui.dock_layout import panel_of
from gui.labeling import SetLabelCommand
from gui.training_status import done_text
from gui.model_report import VERSION_COLUMNS
from gui.runner import QtJobRunner
from storage.catalog import add_class, label_states, list_classes, set_labels

pytestmark = pytest.mark.gui
FEATURE_DIM = 1280  # the default network's pooled layer: the cached vectors are used as they are


@pytest.fixture
def open_window(qtbot, tmp_path):
    """The app's main window with a project open; closed (and its workers stopped) afterwards."""
    windows = []

    def make(project):
        window = create_main_window(project=project, data_dir=tmp_path, projects_dir=tmp_path,
                                    settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
        qtbot.addWidget(window)
        window.resize(1366, 740)
        window.show()
        qtbot.waitExposed(window)
        windows.append(window)
        return window

    yield make
    for window in windows:
        if not shiboken6.isValid(window):  # Qt already deleted it (closed with its workers stopped)
            continue
        # A test that failed mid-job must not leave the window asking "quit?" (a modal box nobody answers).
        runners = window.findChildren(QtJobRunner)
        for runner in runners:
            runner.cancel_all()
        qtbot.waitUntil(lambda: not any(shiboken6.isValid(r) and r.busy for r in runners), timeout=120000)
        if not shiboken6.isValid(window):
            continue
        # A job may still start after that wait (on a loaded machine one did, and the modal box hung the
        # run): answer the box as a user who wants to quit would.
        window._confirm_quit_while_busy = lambda: True
        window.close()
        qtbot.waitUntil(lambda: window.insight.closed, timeout=30000)
        assert window.insight.map_runner.closed and window.insight.read_runner.closed
        window.runner.shutdown()  # the window's own runner is the window's business


def test_training_from_the_window_updates_report_map_and_history(qtbot, project, open_window, monkeypatch):
    import gui.training_panel

    monkeypatch.setattr(gui.training_panel, "AUTO_RETRAIN_DELAY_MS", 50)
    features = make_feature_project(project, [12, 12], unlabeled=8, dim=FEATURE_DIM)
    window = open_window(project)
    panels = window.insight
    titles = sorted(d.windowTitle() for d in window.findChildren(QDockWidget) if panel_of(d) in
                    (panels.training, panels.embedding, panels.report))
    assert titles == ["Map of your images", "Model report", "Training"]
    training = panels.training
    # The options warm-up job (it imports torch) starts once the window is on screen.
    qtbot.waitUntil(lambda: panels.on_screen and not window.runner.busy, timeout=120000)
    device = training.status.device_label
    assert device_name().removeprefix("GPU:").strip() in device.text() + device.toolTip()

    with qtbot.waitSignal(training.training_finished, timeout=120000) as finished:
        qtbot.mouseClick(training.start_button, Qt.MouseButton.LeftButton)
    outcome = finished.args[0]
    assert outcome.status is JobStatus.DONE, outcome.details
    result: TrainResult = outcome.result
    assert result.model_version == 1 and result.metrics.evaluated and result.n_labeled == 24
    assert training.status.step_label.text() == done_text(result, outcome.seconds)
    # The panels react one event-loop turn each (gui.one_per_turn): the history follows shortly.
    qtbot.waitUntil(lambda: training.curves.history_curve.getData()[0] is not None, timeout=10000)
    x, y = training.curves.history_curve.getData()
    np.testing.assert_allclose(x, [24])
    np.testing.assert_allclose(y, [result.metrics.accuracy * 100], rtol=1e-12)

    # The report recomputes the training's own evaluation from the stored out-of-fold predictions.
    report = panels.report
    qtbot.waitUntil(lambda: report.report_version == 1, timeout=30000)
    assert report.report.basis.endswith("cross-validation")
    assert report.report.n == result.metrics.n_val == 24
    assert report.report.metrics.accuracy == pytest.approx(result.metrics.accuracy, abs=1e-12)
    assert report.report.metrics.confusion_matrix == result.metrics.confusion_matrix
    assert report.versions_table.rowCount() == 1
    assert report.versions_table.item(0, 4).text() == "Quick"

    # The finished training draws the map from the cached features: PCA, then t-SNE.
    view = panels.embedding
    qtbot.waitUntil(lambda: view.method == "tsne" and not panels.map_runner.busy, timeout=120000)
    assert sorted(view.image_ids.tolist()) == sorted(features.image_ids)
    assert view.status.text() == "32 images, similar ones close together (t-SNE)."

    # Labeling one more image retrains by itself (Quick), and the history grows.
    with qtbot.waitSignal(training.training_finished, timeout=120000) as finished:
        window.label_images([features.image_ids[24]], features.class_by_name["c0"])
    assert finished.args[0].status is JobStatus.DONE and finished.args[0].result.model_version == 2
    qtbot.waitUntil(lambda: training.curves.history_curve.getData()[0].tolist() == [24, 25], timeout=10000)
    # The report lists the new version as the one in use, and shows it: version 1 is out of date.
    qtbot.waitUntil(lambda: report.versions_table.rowCount() == 2, timeout=30000)
    assert report.versions_table.item(1, 1).text() == "✓" and report.selected_version() == 2
    qtbot.waitUntil(lambda: report.report_version == 2, timeout=30000)


def _jpeg(color) -> bytes:
    import io

    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.new("RGB", (32, 24), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def wait_all_idle(qtbot, window, timeout: int = 120_000) -> None:
    """Until every job runner of the window (its own, the map's, the reads') is idle on three checks in a
    row, event-loop turns apart: a job a zero-delay timer submits (the opening map) is seen before we go on."""
    runners = window.findChildren(QtJobRunner)
    idle_checks = [0]

    def settled() -> bool:
        idle_checks[0] = 0 if any(r.busy for r in runners) else idle_checks[0] + 1
        return idle_checks[0] >= 3

    qtbot.waitUntil(settled, timeout=timeout)


def test_report_cells_lasso_and_model_versions_drive_the_workspace(qtbot, project, open_window):
    """The report's confusion cell filters the grid to exactly those images; a real lasso on the
    map selects those images in the grid too, a number key labels them as one step of the
    window's own undo stack (its make_label_command) and undo restores them; making another model
    version active moves the grid and the map to its predictions."""
    from storage.models import Image

    with project.writing() as session:
        for i in range(1, 9):
            session.add(Image(id=i, content_hash=f"h{i}", original_name=f"{i}.jpg", original_path=f"/{i}.jpg",
                              source="cam", width=32, height=24, original_format="JPEG",
                              data=_jpeg((30 * i, 80, 120)), thumbnail=_jpeg((30 * i, 80, 120))))
    cats, dogs = add_class(project, "cats"), add_class(project, "dogs")
    set_labels(project, [1, 2, 3], cats.id)
    set_labels(project, [4, 5, 6], dogs.id)
    older_said = {i: cats.id for i in range(1, 9)}
    said = {1: cats.id, 2: dogs.id, 3: dogs.id, 4: dogs.id, 5: cats.id, 6: dogs.id, 7: cats.id, 8: dogs.id}
    older = save_version(project, [cats, dogs], older_said, accuracy=0.5, n_labeled=6, out_of_fold=range(1, 7))
    newer = save_version(project, [cats, dogs], said, accuracy=0.5, n_labeled=6, out_of_fold=range(1, 7))
    window = open_window(project)
    panels = window.insight
    panels.training.auto_retrain.setChecked(False)  # these images have no features to train on
    qtbot.waitUntil(lambda: panels.on_screen, timeout=60000)
    wait_all_idle(qtbot, window)  # the start-up jobs and the opening map (no features: nothing to draw)

    report = panels.report
    assert report.selected_version() == newer
    qtbot.waitUntil(lambda: report.report is not None, timeout=30000)  # computed on the read runner
    assert report.report.n == 6 and report.report.metrics.accuracy == pytest.approx(3 / 6)
    panels.docks["report"].raise_()
    matrix = report.view.matrix
    matrix.scrollTo(matrix.model().index(0, 1))
    rect = matrix.visualItemRect(matrix.item(0, 1))  # true cats, said dogs
    qtbot.mouseClick(matrix.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: sorted(window.grid_model.ids.tolist()) == [2, 3], timeout=30000)

    # The map: images 1-6 on the left, 7 and 8 (unlabeled) on the right; lasso around 7 and 8.
    view = panels.embedding
    panels.docks["map"].raise_()
    qtbot.waitExposed(view)
    wait_all_idle(qtbot, window)  # nothing left that could replace the layout set below
    view.set_layout(np.arange(1, 9), np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [5, 0], [5, 2]], float))
    qtbot.waitUntil(lambda: list(view.predicted) == [said[i] for i in range(1, 9)], timeout=60000)
    wait_until_laid_out(qtbot, view, timeout=30000)
    lasso_around(view, view.coords[6:])
    assert sorted(view.selected_ids) == [7, 8]
    qtbot.waitUntil(lambda: sorted(window.selected_image_ids()) == [7, 8], timeout=15000)  # the grid selects them too

    qtbot.keyClick(view.plot, "2")  # key 2 = dogs
    assert window.undo_stack.count() == 1
    assert isinstance(window.undo_stack.command(0), SetLabelCommand)  # the workspace's own command
    assert [s.class_id for s in label_states(project, [7, 8])] == [dogs.id, dogs.id]
    qtbot.waitUntil(lambda: list(view.class_ids[6:]) == [dogs.id, dogs.id], timeout=60000)
    window.undo_stack.undo()
    assert [s.class_id for s in label_states(project, [7, 8])] == [None, None]
    assert [s.class_id for s in label_states(project, [1, 4])] == [cats.id, dogs.id]
    qtbot.waitUntil(lambda: list(view.class_ids[6:]) == [-1, -1], timeout=60000)

    # Make the older version the one in use: the grid and the map follow.
    assert window.grid_model.model_version == newer
    report.versions_table.selectRow(0)
    assert report.selected_version() == older and report.activate_button.isEnabled()
    qtbot.mouseClick(report.activate_button, Qt.MouseButton.LeftButton)
    assert window.grid_model.model_version == older
    qtbot.waitUntil(lambda: list(view.predicted) == [cats.id] * 8, timeout=60000)


def test_every_panel_resets_when_the_project_changes(qtbot, project, open_window, tmp_path):
    """Closing a project leaves none of its model, accuracy, chart points, report or map on screen;
    in a new empty project a failed start ("No labeled images yet") is said in red until images
    arrive."""
    from helpers.feature_projects import add_placeholder_images

    from storage.project import create_project

    features = make_feature_project(project, [6, 6], dim=FEATURE_DIM)
    classes = list_classes(project)
    save_version(project, classes, {i: classes[0].id for i in features.image_ids}, accuracy=0.75, n_labeled=12)
    window = open_window(project)
    panels = window.insight
    training, report, view = panels.training, panels.report, panels.embedding
    qtbot.waitUntil(lambda: panels.on_screen and not window.runner.busy, timeout=120000)
    qtbot.waitUntil(lambda: report.report_version == 1 and view.showing_points, timeout=60000)
    assert len(training.curves.history_curve.getData()[0]) == 1

    window.close_project()
    assert training.status.step_label.text() == "Ready." and training.curves.showing_empty_text()
    assert training.curves.empty_text.text().startswith("Open or create a project")
    assert report.versions_table.rowCount() == 0 and report.report_version is None
    assert not view.showing_points and view.empty_text.text().startswith("Open or create a project")
    assert not training.start_button.isEnabled()

    empty = create_project(tmp_path / "empty.sortlab")
    window.set_project(empty)
    assert training.curves.showing_empty_text() and "Label a few images" in training.curves.empty_text.text()
    with qtbot.waitSignal(training.training_finished, timeout=60000) as finished:
        qtbot.mouseClick(training.start_button, Qt.MouseButton.LeftButton)
    assert finished.args[0].status is JobStatus.FAILED
    label = training.status.step_label
    assert label.text().startswith("Training failed:") and "b00020" in label.styleSheet()
    add_placeholder_images(window.project, 3)
    window.refresh_after_import()  # what an import ends with
    assert label.text() == "Ready." and label.styleSheet() == ""


def test_the_report_shows_in_use_and_accuracy_at_the_docks_width(qtbot, project, open_window):
    """At the window's first-run layout on a 1366 x 768 screen, the versions table shows the
    "In use" column and the whole "Accuracy" column without scrolling."""
    ids = make_feature_project(project, [3, 3], dim=8).image_ids
    classes = list_classes(project)
    for accuracy in (0.5, 0.875):
        save_version(project, classes, {i: classes[0].id for i in ids}, accuracy=accuracy, n_labeled=6)
    window = open_window(project)
    window.restore_layout()
    panels = window.insight
    panels.docks["report"].raise_()
    table = panels.report.versions_table
    qtbot.waitUntil(lambda: table.isVisible() and table.viewport().width() > 0, timeout=30000)
    header = table.horizontalHeader()
    for name in ("Version", "In use", "Accuracy"):
        column = VERSION_COLUMNS.index(name)
        right = header.sectionViewportPosition(column) + header.sectionSize(column)
        assert 0 <= header.sectionViewportPosition(column) and right <= table.viewport().width(), name
        assert header.sectionSize(column) >= header.sectionSizeFromContents(column).width(), name
    assert table.item(1, VERSION_COLUMNS.index("Accuracy")).text() == "87.5%"
