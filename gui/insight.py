"""Docks the training panel, the embedding map and the model report into the main window and
wires them to it and to each other.

``install_insight_panels(main_window)`` uses the main window's panel interface (gui/main_window.py):
``project``, ``runner``, ``undo_stack``, ``add_dock``, the ``labels_changed`` and
``project_changed`` signals, ``filter_grid``, ``select_image`` and ``make_label_command``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer
from PySide6.QtWidgets import QMainWindow

from engine.jobs import JobOutcome
from gui.embedding_view import EmbeddingView
from gui.model_report import ModelReport
from gui.runner import QtJobRunner
from gui.training_panel import TrainingPanel


class InsightPanels(QObject):
    """The three insight widgets of one main window and the wiring between them."""

    def __init__(self, main_window: QMainWindow):
        super().__init__(main_window)
        self.window = main_window
        project = main_window.project
        self.runner: QtJobRunner = main_window.runner
        undo_stack = main_window.undo_stack
        # Maps only read the project; they get their own worker so a 40-second t-SNE never
        # holds up training, importing or labeling jobs queued on the main runner.
        self.map_runner = QtJobRunner(self)

        self.training = TrainingPanel(self.runner, project)
        self.embedding = EmbeddingView(
            self.map_runner, project, undo_stack=undo_stack,
            label_command_factory=self._label_command_factory(),
        )
        self.report = ModelReport(project)

        area = Qt.DockWidgetArea
        self.docks = {
            "training": main_window.add_dock(self.training, "Training", area.RightDockWidgetArea),
            "map": main_window.add_dock(self.embedding, "Map of your images", area.RightDockWidgetArea),
            "report": main_window.add_dock(self.report, "Model report", area.RightDockWidgetArea),
        }
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(300)
        self._refresh_timer.timeout.connect(self._refresh_after_labels)

        self.training.training_finished.connect(self._training_finished)
        self.report.show_images.connect(self.show_images)
        self.report.active_changed.connect(lambda _v: self.embedding.refresh_attributes())
        self.embedding.image_clicked.connect(self.select_image)
        self.embedding.labels_changed.connect(self._map_labeled)
        main_window.labels_changed.connect(self.labels_changed)
        if hasattr(main_window, "project_changed"):
            main_window.project_changed.connect(self.set_project)
        if project is not None:
            QTimer.singleShot(0, self._show_existing_map)

    # -- the main window's side -----------------------------------------------------------------
    def _label_command_factory(self) -> Callable | None:
        """The workspace's own label command, so grid and map share one undo history and one
        labels-changed notification; the map's own command when the window has none."""
        make = getattr(self.window, "make_label_command", None)
        if make is None:
            return None
        return lambda ids, class_id, text: make(ids, class_id, text)

    def show_images(self, image_ids: list[int], description: str = "") -> None:
        """Filter the grid to exactly these images (a confusion-matrix cell)."""
        self.window.filter_grid(list(image_ids), description)

    def select_image(self, image_id: int) -> None:
        self.window.select_image(int(image_id))

    def _map_labeled(self, image_ids: list[int]) -> None:
        """Labels written by the map's own command (only without make_label_command)."""
        notify = getattr(self.window, "notify_labels_changed", None)
        if notify is not None:
            notify(image_ids)
        else:
            self.labels_changed(image_ids)

    # -- reactions ------------------------------------------------------------------------------
    def set_project(self, project=None) -> None:
        self.training.set_project(project)
        self.embedding.set_project(project)
        self.report.set_project(project)
        if project is not None:
            self._show_existing_map()

    def labels_changed(self, *_args) -> None:
        self.training.labels_changed()
        self._refresh_timer.start()

    def _refresh_after_labels(self) -> None:
        self.embedding.refresh_attributes()
        self.report.refresh()

    def _training_finished(self, outcome: JobOutcome) -> None:
        if outcome.status != "done":
            return
        self.report.refresh()
        # Features exist now: draw the map (or only recolor it when the images are the same).
        self.embedding.compute(self.training.backbone, self.training.layer)

    def _show_existing_map(self) -> None:
        """On opening a project that already has a model, draw its map from the cached features."""
        project = self.training.project
        if project is None:
            return
        try:
            from storage.modelstore import active_model
        except ImportError:
            return
        model = active_model(project)
        if model is not None:
            self.embedding.compute(getattr(model, "backbone", None), getattr(model, "layer", None))


def install_insight_panels(main_window: QMainWindow) -> InsightPanels:
    """Create the training panel, the embedding map and the model report and dock them."""
    panels = InsightPanels(main_window)
    main_window.insight = panels
    return panels
