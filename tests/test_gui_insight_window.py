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

    def add_dock(self, widget, title, area):
        dock = QDockWidget(title, self)
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def filter_grid(self, image_ids, description=""):
        self.filtered.append((list(image_ids), description))

    def select_image(self, image_id):
        self.selected.append(image_id)


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

    panels.embedding.image_clicked.emit(7)
    assert window.selected == [7]

    panels.training._retrain_timer.setInterval(10)
    started = []
    monkeypatch.setattr(panels.training, "start", lambda automatic=False: started.append(automatic) or True)
    window.labels_changed.emit([1])
    qtbot.waitUntil(lambda: started == [True], timeout=2000)
    panels.map_runner.shutdown()


def _jpeg(color) -> bytes:
    import io

    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.new("RGB", (32, 24), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_real_main_window_report_filters_grid_and_map_labels_undoably(qtbot, project, tmp_path):
    """The real MainWindow: an active model version in the store, the report's confusion cell
    filters the grid to exactly those images, and a map selection labeled with a number key is
    one step on the window's undo stack (the workspace's own label command)."""
    import numpy as np
    from PySide6.QtCore import QSettings

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
    said = {1: cats.id, 2: dogs.id, 3: dogs.id, 4: dogs.id, 5: cats.id, 6: dogs.id, 7: cats.id, 8: dogs.id}
    with project.writing() as session:
        model = ModelVersion(method="logreg", backbone="efficientnet_lite0", layer="pooled", class_names=["cats", "dogs"],
                             class_ids=[cats.id, dogs.id], weights=b"", is_active=True, n_labeled=6,
                             metrics={"accuracy": 0.5})
        session.add(model)
        session.flush()
        for image_id, class_id in said.items():
            index = [cats.id, dogs.id].index(class_id)
            session.add(Prediction(model_version_id=model.id, image_id=image_id, class_index=index, class_id=class_id,
                                   probability=0.8, margin=0.6, probabilities=np.array([0.8, 0.2], "<f4").tobytes(),
                                   out_of_fold=image_id <= 6))
    window = MainWindow(project, settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat),
                        data_dir=tmp_path, projects_dir=tmp_path)
    qtbot.addWidget(window)
    panels = install_insight_panels(window)
    window.resize(1200, 800)
    window.show()
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=20000)

    report = panels.report
    assert report.selected_version() == model.id
    assert report.report.n == 6 and report.report.accuracy == pytest.approx(3 / 6)
    matrix = report.matrix
    matrix.scrollTo(matrix.model().index(0, 1))
    rect = matrix.visualItemRect(matrix.item(0, 1))  # true cats, said dogs
    qtbot.mouseClick(matrix.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: sorted(window.grid_model.ids.tolist()) == [2, 3], timeout=5000)

    view = panels.embedding
    view.set_layout(np.arange(1, 9), np.c_[np.arange(8.0), np.arange(8.0) % 3])
    view.select_indices(np.array([6, 7]))  # images 7 and 8, unlabeled
    qtbot.keyClick(view.plot, "2")  # key 2 = dogs
    assert window.undo_stack.count() == 1
    assert [s.class_id for s in label_states(project, [7, 8])] == [dogs.id, dogs.id]
    qtbot.waitUntil(lambda: list(view.class_ids[6:]) == [dogs.id, dogs.id], timeout=3000)
    window.undo_stack.undo()
    assert [s.class_id for s in label_states(project, [7, 8])] == [None, None]
    panels.training.auto_retrain.setChecked(False)
    window.runner.cancel_all()
    panels.map_runner.shutdown()
