"""install_insight_panels: docking into a main window and the wiring between panels and window."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QUndoStack
from PySide6.QtWidgets import QDockWidget, QMainWindow

from gui.insight import install_insight_panels
from gui.runner import QtJobRunner

pytestmark = pytest.mark.gui


class HostWindow(QMainWindow):
    """The part of the main window's interface the insight panels use."""

    labels_changed = Signal(object)

    def __init__(self, project):
        super().__init__()
        self.project = project
        self.runner = QtJobRunner(self)
        self.undo_stack = QUndoStack(self)
        self.filtered: list = []
        self.selected: list = []
        self.selected_lists: list = []

    def add_dock(self, widget, title, area):
        dock = QDockWidget(title, self)
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def filter_grid(self, image_ids, description=""):
        self.filtered.append((list(image_ids), description))

    def select_image(self, image_id):
        self.selected.append(image_id)

    def select_images(self, image_ids):
        self.selected_lists.append(list(image_ids))


@dataclass
class Prediction:
    class_id: int


def test_panels_dock_and_confusion_cells_filter_the_grid(qtbot, project, monkeypatch):
    from storage.catalog import add_class, set_labels
    from storage.models import Image

    with project.writing() as session:
        for i in range(1, 9):
            session.add(Image(id=i, content_hash=f"h{i}", original_name=f"{i}.png", original_path=f"/{i}.png",
                              source="", width=4, height=4, original_format="PNG", data=b"", thumbnail=b""))
    cats, dogs = add_class(project, "cats"), add_class(project, "dogs")
    set_labels(project, [1, 2, 3, 4], cats.id)
    set_labels(project, [5, 6, 7, 8], dogs.id)
    window = HostWindow(project)
    qtbot.addWidget(window)
    panels = install_insight_panels(window)
    assert window.insight is panels
    titles = sorted(d.windowTitle() for d in window.findChildren(QDockWidget))
    assert titles == ["Map of your images", "Model report", "Training"]
    assert panels.training.runner is window.runner and panels.embedding.undo_stack is window.undo_stack

    predictions = {1: Prediction(cats.id), 2: Prediction(dogs.id), 3: Prediction(dogs.id), 4: Prediction(cats.id),
                   5: Prediction(dogs.id), 6: Prediction(dogs.id), 7: Prediction(cats.id), 8: Prediction(dogs.id)}
    from gui import model_report

    report = model_report.project_report(project, 1, predictions_fn=lambda p, v: predictions)
    panels.report.show_report(report, 1)
    window.show()
    matrix = panels.report.matrix
    rect = matrix.visualItemRect(matrix.item(0, 1))
    qtbot.mouseClick(matrix.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert window.filtered == [([2, 3], "cats taken for dogs")]

    view = panels.embedding
    view.set_layout([1, 2, 3, 7], [[0, 0], [1, 0], [0, 1], [1, 1]])
    view.select_indices([0, 2])
    view.select_indices([0, 3])  # what a lasso ends with; only the latest selection is sent
    qtbot.waitUntil(lambda: window.selected_lists == [[1, 7]], timeout=2000)

    panels.training._retrain_timer.setInterval(10)
    started = []
    monkeypatch.setattr(panels.training, "start", lambda automatic=False: started.append(automatic) or True)
    window.labels_changed.emit([1])
    qtbot.waitUntil(lambda: started == [True], timeout=2000)

    window.close()  # closing the window stops the map's and the report's workers
    qtbot.waitUntil(lambda: panels.closed, timeout=5000)
    assert panels.map_runner.closed and panels.read_runner.closed
    assert not window.runner.closed  # the window's own runner is the window's business
    window.runner.shutdown()


def _jpeg(color) -> bytes:
    import io

    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.new("RGB", (32, 24), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_real_main_window_report_lasso_and_model_versions(qtbot, project, tmp_path):
    """The real MainWindow: the report's confusion cell filters the grid to exactly those images;
    a real lasso on the map selects those images in the grid too, a number key labels them as one
    step of the window's own undo stack (make_label_command) and undo restores them; making
    another model version active moves the grid and the map to its predictions."""
    import numpy as np
    from PySide6.QtCore import QPoint, QPointF, QSettings
    from test_gui_insight import drag

    from gui.labeling import SetLabelCommand
    from gui.main_window import MainWindow
    from storage.catalog import add_class, label_states, set_labels
    from storage.models import Image, ModelVersion, Prediction

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
    versions = []
    with project.writing() as session:
        for predicted, active in ((older_said, False), (said, True)):
            model = ModelVersion(method="logreg", backbone="efficientnet_lite0", layer="pooled",
                                 class_names=["cats", "dogs"], class_ids=[cats.id, dogs.id], weights=b"",
                                 is_active=active, n_labeled=6, metrics={"accuracy": 0.5})
            session.add(model)
            session.flush()
            versions.append(model.id)
            for image_id, class_id in predicted.items():
                index = [cats.id, dogs.id].index(class_id)
                session.add(Prediction(model_version_id=model.id, image_id=image_id, class_index=index,
                                       class_id=class_id, probability=0.8, margin=0.6,
                                       probabilities=np.array([0.8, 0.2], "<f4").tobytes(), out_of_fold=image_id <= 6))
    older, newer = versions
    window = MainWindow(project, settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat),
                        data_dir=tmp_path, projects_dir=tmp_path)
    qtbot.addWidget(window)
    panels = install_insight_panels(window)
    panels.training.auto_retrain.setChecked(False)
    window.resize(1200, 800)
    window.show()
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=20000)

    report = panels.report
    assert report.selected_version() == newer
    qtbot.waitUntil(lambda: report.report is not None, timeout=5000)  # computed on the read runner
    assert report.report.n == 6 and report.report.accuracy == pytest.approx(3 / 6)
    panels.docks["report"].raise_()
    matrix = report.matrix
    matrix.scrollTo(matrix.model().index(0, 1))
    rect = matrix.visualItemRect(matrix.item(0, 1))  # true cats, said dogs
    qtbot.mouseClick(matrix.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: sorted(window.grid_model.ids.tolist()) == [2, 3], timeout=5000)

    # The map: images 1-6 on the left, 7 and 8 (unlabeled) on the right; lasso around 7 and 8.
    view = panels.embedding
    qtbot.waitUntil(lambda: not panels.map_runner.busy, timeout=10000)  # the (empty: no features) opening map
    panels.docks["map"].raise_()
    qtbot.waitExposed(view)
    view.set_layout(np.arange(1, 9), np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [5, 0], [5, 2]], float))
    qtbot.waitUntil(lambda: list(view.predicted) == [said[i] for i in range(1, 9)], timeout=5000)
    qtbot.wait(50)  # let the view apply its range before mapping map coordinates to pixels

    def to_widget(x, y):
        point = view.plot.mapFromScene(view.viewbox.mapViewToScene(QPointF(float(x), float(y))))
        return QPoint(point.x(), point.y())

    right = view.coords[6:]
    pad = 0.05 * (view.coords.max(axis=0) - view.coords.min(axis=0))
    lo, hi = right.min(axis=0) - pad, right.max(axis=0) + pad
    drag(view.plot.viewport(), [to_widget(lo[0], lo[1]), to_widget(hi[0], lo[1]), to_widget(hi[0], hi[1]),
                                to_widget(lo[0], hi[1]), to_widget(lo[0], lo[1] + pad[1])])
    assert sorted(view.selected_ids) == [7, 8]
    qtbot.waitUntil(lambda: sorted(window.selected_image_ids()) == [7, 8], timeout=3000)  # the grid selects them too

    qtbot.keyClick(view.plot, "2")  # key 2 = dogs
    assert window.undo_stack.count() == 1
    assert isinstance(window.undo_stack.command(0), SetLabelCommand)  # the workspace's own command
    assert [s.class_id for s in label_states(project, [7, 8])] == [dogs.id, dogs.id]
    qtbot.waitUntil(lambda: list(view.class_ids[6:]) == [dogs.id, dogs.id], timeout=5000)
    window.undo_stack.undo()
    assert [s.class_id for s in label_states(project, [7, 8])] == [None, None]
    assert [s.class_id for s in label_states(project, [1, 4])] == [cats.id, dogs.id]
    qtbot.waitUntil(lambda: list(view.class_ids[6:]) == [-1, -1], timeout=5000)

    # Make the older version the one in use: the grid and the map follow.
    assert window.grid_model.model_version == newer
    report.versions_table.selectRow(0)
    assert report.selected_version() == older and report.activate_button.isEnabled()
    qtbot.mouseClick(report.activate_button, Qt.MouseButton.LeftButton)
    assert window.grid_model.model_version == older
    qtbot.waitUntil(lambda: list(view.predicted) == [cats.id] * 8, timeout=5000)

    window.close()
    qtbot.waitUntil(lambda: panels.closed, timeout=5000)
    assert panels.map_runner.closed and panels.read_runner.closed
