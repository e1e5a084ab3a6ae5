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
