"""Docks the training panel, the embedding map and the model report into the main window and
wires them to it and to each other.

``install_insight_panels(main_window)`` needs from the main window: ``add_dock(widget, title,
area)``, the open project, the QtJobRunner and the QUndoStack; it uses, when present, the
labels-changed and project-changed signals, grid filtering and image selection (see ``_MainWindowLink``).
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


def _attribute(obj: Any, *names: str) -> Any:
    """The first attribute present (called if it is a plain method taking no arguments)."""
    for name in names:
        value = getattr(obj, name, None)
        if value is None:
            continue
        if callable(value) and not hasattr(value, "connect") and not isinstance(value, QObject):
            try:
                return value()
            except TypeError:
                continue
        return value
    return None


def _method(obj: Any, *names: str) -> Callable | None:
    for name in names:
        value = getattr(obj, name, None)
        if callable(value):
            return value
    return None


class InsightPanels(QObject):
    """The three insight widgets of one main window and the wiring between them."""

    def __init__(self, main_window: QMainWindow):
        super().__init__(main_window)
        self.window = main_window
        project = _attribute(main_window, "project", "current_project")
        self.runner: QtJobRunner = _attribute(main_window, "runner", "job_runner", "jobs")
        if self.runner is None:
            raise RuntimeError("The main window has no QtJobRunner (expected main_window.runner).")
        undo_stack = _attribute(main_window, "undo_stack", "undoStack")
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
        labels_signal = _attribute(main_window, "labels_changed", "labelsChanged")
        if labels_signal is not None and hasattr(labels_signal, "connect"):
            labels_signal.connect(self.labels_changed)
        project_signal = _attribute(main_window, "project_changed", "project_opened")
        if project_signal is not None and hasattr(project_signal, "connect"):
            project_signal.connect(self.set_project)
        if project is not None:
            QTimer.singleShot(0, self._show_existing_map)

    # -- the main window's side -----------------------------------------------------------------
    def _label_command_factory(self) -> Callable | None:
        """The workspace's own label command when the main window offers one (so grid and map
        share one undo history and one labels-changed notification), else the map's."""
        make = _method(self.window, "make_label_command", "label_command")
        if make is None:
            return None
        return lambda ids, class_id, text: make(ids, class_id, text)

    def show_images(self, image_ids: list[int], description: str = "") -> None:
        """Filter the grid to exactly these images."""
        show = _method(self.window, "filter_grid", "show_images", "filter_to_images", "set_grid_filter")
        if show is None:
            raise RuntimeError("The main window cannot filter its grid to given images.")
        try:
            show(list(image_ids), description)
        except TypeError:
            show(list(image_ids))

    def select_image(self, image_id: int) -> None:
        select = _method(self.window, "select_image", "select_images", "reveal_image")
        if select is not None:
            select(image_id if select.__name__ != "select_images" else [image_id])

    def _map_labeled(self, image_ids: list[int]) -> None:
        notify = _method(self.window, "notify_labels_changed", "labels_were_changed")
        if notify is not None:
            notify(image_ids)
        else:
            self.labels_changed(image_ids)

    # -- reactions ------------------------------------------------------------------------------
    def set_project(self, project=None) -> None:
        if project is None:
            project = _attribute(self.window, "project", "current_project")
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
