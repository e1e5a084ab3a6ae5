"""Docks the training panel, the embedding map and the model report into the main window and
wires them to it and to each other.

``install_insight_panels(main_window)`` uses the main window's panel interface (gui/main_window.py):
``project``, ``runner``, ``undo_stack``, ``add_dock``, the ``labels_changed`` and
``project_changed`` signals, ``filter_grid``, ``select_images``, ``make_label_command`` and
``refresh_predictions_view``.

Threads: training, importing and labeling jobs run on the window's runner; the map's layout
(PCA, then a t-SNE of up to a minute) on ``map_runner``; and the reads that follow each labeling
burst or model change (every label and prediction, for the map's colors and the report) on
``read_runner``, so they neither wait behind a t-SNE nor freeze the window at 100k images.

Start-up: nothing heavy runs before the window is on screen. Its first paint starts the training
panel's warm-up job (scikit-learn, openTSNE; torch only where a GPU driver is: engine.insight.options) and the map of a
project opened from the command line; those imports go one thread at a time
(engine.runtime.first_imports), so the map's t-SNE never sees a half-imported openTSNE.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt, QTimer
from PySide6.QtWidgets import QMainWindow

from engine.runtime.jobs import JobOutcome, JobStatus
from gui.embedding_view import EmbeddingView
from gui.model_report import ModelReport
from gui.one_per_turn import in_turn
from gui.runner import QtJobRunner
from gui.training_panel import TrainingPanel
from storage.modelstore import active_model


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
        self.read_runner = QtJobRunner(self)
        self.closed = False
        self.on_screen = False  # the window has been painted once (heavy work may start)
        self._pending_selection: list[int] | None = None

        self.training = TrainingPanel(self.runner, project)
        # The map labels through the workspace's own command: grid and map share one undo
        # history and one labels-changed notification.
        self.embedding = EmbeddingView(
            self.map_runner, project, undo_stack=undo_stack,
            label_command_factory=main_window.make_label_command, reader=self.read_runner,
        )
        self.report = ModelReport(project, runner=self.read_runner)

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
        self.report.active_changed.connect(self._active_model_changed)
        # A click selects one image and a lasso many: both arrive as images_selected.
        self.embedding.images_selected.connect(self.select_images)
        main_window.labels_changed.connect(self.labels_changed)
        main_window.classes_changed.connect(self.training.project_content_changed)  # also after imports
        main_window.project_changed.connect(self.set_project)
        main_window.installEventFilter(self)
        if main_window.isVisible():
            QTimer.singleShot(0, self._window_on_screen)

    # -- the main window's side -----------------------------------------------------------------
    def show_images(self, image_ids: list[int], description: str = "") -> None:
        """Filter the grid to exactly these images (a confusion-matrix cell)."""
        self.window.filter_grid(list(image_ids), description)

    def select_images(self, image_ids) -> None:
        """Select the map's selection in the grid too (so grid actions apply to it).

        Deferred to the next turn of the event loop, and only the latest selection is sent: the
        map draws its selection at once, and a grid selecting tens of thousands of rows after a
        big lasso is asked once, not once per drag."""
        first = self._pending_selection is None
        self._pending_selection = [int(i) for i in image_ids]
        if first:
            QTimer.singleShot(0, self._send_selection)

    def _send_selection(self) -> None:
        ids, self._pending_selection = self._pending_selection, None
        if ids is not None and not self.closed:
            self.window.select_images(ids)

    def _active_model_changed(self, _version: int) -> None:
        """Another model version is in use: the grid's suggestions and the map's colors follow."""
        self.embedding.refresh_attributes()
        self.window.refresh_predictions_view()

    # -- reactions ------------------------------------------------------------------------------
    def set_project(self, project=None) -> None:
        """Another project (or none): the old one's map and report jobs are cancelled first."""
        self._refresh_timer.stop()
        if self.closed:
            return
        self.training.set_project(project)
        self.training.advice.refresh(project)
        self.embedding.set_project(project)
        self.report.set_project(project)
        if project is not None and self.on_screen:
            self._show_existing_map()

    def labels_changed(self, *_args) -> None:
        if self.closed:
            return
        self.training.project_content_changed()
        self.training.labels_changed()
        self._refresh_timer.start()

    def _refresh_after_labels(self) -> None:
        """Once a labeling burst settles: recolor the map and recompute the report, both read in
        the background (read_runner)."""
        if self.closed:
            return
        self.embedding.refresh_attributes()
        self.report.refresh()

    def _training_finished(self, outcome: JobOutcome) -> None:
        if outcome.status is not JobStatus.DONE or self.closed:
            return
        # Each in a turn of its own, so the window answers in between (gui.one_per_turn).
        project = self.training.project
        in_turn(lambda: self.report.refresh() if self._still_showing(project) else None, self.report)
        if not outcome.result.params.get("quick"):  # a quick retrain after a label edit barely moves the curves
            in_turn(lambda: self.training.advice.refresh(project) if self._still_showing(project) else None,
                    self.training.advice)
        # Features exist now: draw the map (or only recolor it when the images are the same).
        in_turn(lambda: self.embedding.compute(self.training.backbone, self.training.layer)
                if self._still_showing(project) else None, self.embedding)

    def _still_showing(self, project) -> bool:
        return not self.closed and self.training.project is project

    def _show_existing_map(self) -> None:
        """On opening a project that already has a model, draw its map from the cached features."""
        project = self.training.project
        if project is None or self.closed:
            return
        model = active_model(project)
        if model is not None:
            self.embedding.compute(model.backbone, model.layer)

    # -- start-up and closing --------------------------------------------------------------------
    def eventFilter(self, obj, event) -> bool:
        if obj is self.window and event.type() == QEvent.Type.Paint and not self.on_screen:
            self._window_on_screen()  # submitting jobs only: the work starts on their threads
        if obj is self.window and event.type() == QEvent.Type.Close:
            # The window may still refuse to close (a job is running and the user says No):
            # look again once the close event has been handled.
            QTimer.singleShot(0, self._window_maybe_closed)
        return False

    def _window_on_screen(self) -> None:
        """The window is on screen: start the warm-up, then draw the open project's map."""
        if self.on_screen or self.closed:
            return
        self.on_screen = True
        self.training.find_options()
        QTimer.singleShot(0, self._show_existing_map)
        if self.training.project is not None:
            self.training.advice.refresh(self.training.project)  # after the paint that got us here

    def _window_maybe_closed(self) -> None:
        if not self.window.isVisible():
            self.shutdown()

    def shutdown(self) -> None:
        """Cancel the map and report jobs and stop their workers (the window is closing). The
        window's own runner is the window's to shut down. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self._refresh_timer.stop()
        self.training._retrain_timer.stop()
        self.embedding.cancel()
        self.report.cancel()
        self.training.advice.shutdown()
        for runner in (self.map_runner, self.read_runner):
            runner.shutdown()


def install_insight_panels(main_window: QMainWindow) -> InsightPanels:
    """Create the training panel, the embedding map and the model report and dock them."""
    panels = InsightPanels(main_window)
    main_window.insight = panels
    return panels
