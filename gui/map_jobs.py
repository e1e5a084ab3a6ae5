"""The map's background work: the layout job (PCA at once, then t-SNE streaming) on one runner,
and the reads of the points' colors (labels, sources, predictions) on another, so a long t-SNE
never delays a recolor. Results of a request that was replaced or cancelled are dropped, even
when they were already queued for the GUI thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from engine.insight.projection import MapColors, map_colors
from engine.runtime.jobs import JobContext, JobOutcome, JobStatus
from gui.runner import QtJobRunner

LAYOUT_JOB = "embedding"
COLORS_JOB = "map-colors"


def _colors_job(context: JobContext, project, image_ids: np.ndarray) -> MapColors:
    """Background job body: the map's colors as plain arrays."""
    context.check_cancelled()
    return map_colors(project, image_ids)


class MapJobs(QObject):
    """Submits and cancels the map's jobs; hands their current results on as signals."""

    layout_streamed = Signal(object)  # the layout job's partials: MapLayout
    layout_finished = Signal(object)  # its JobOutcome
    colors_read = Signal(object)  # MapColors for exactly the points shown

    def __init__(self, runner: QtJobRunner | None, reader: QtJobRunner | None,
                 shown_ids: Callable[[], np.ndarray], parent: QObject | None = None):
        """``shown_ids()`` gives the image ids on screen: colors read for other points are read again."""
        super().__init__(parent)
        self.runner = runner
        self.reader = reader
        self._shown_ids = shown_ids
        self.layout_key: tuple | None = None  # what the last layout job was asked to map
        self._layout_generation = 0
        self._colors_generation = 0
        self._colors_busy = False  # a colors read is in flight
        self._colors_again = False  # ...and another was asked for meanwhile

    @property
    def can_compute(self) -> bool:
        return self.runner is not None and not self.runner.closed

    def cancel(self) -> None:
        """Stop both jobs; their late results will be dropped."""
        self._layout_generation += 1
        self._colors_generation += 1
        self._colors_busy = self._colors_again = False
        self.layout_key = None
        for runner, name in ((self.runner, LAYOUT_JOB), (self.reader, COLORS_JOB)):
            if runner is not None and not runner.closed:
                runner.cancel(name)

    def compute_layout(self, key: tuple, job: Callable[..., Any], project, backbone: str, layer: str | None) -> None:
        """Replace the running layout job by ``job(context, project, backbone, layer)``."""
        self.runner.cancel(LAYOUT_JOB)
        self._layout_generation += 1
        generation = self._layout_generation
        self.layout_key = key

        def current() -> bool:
            return generation == self._layout_generation

        self.runner.submit(
            LAYOUT_JOB, job, project, backbone, layer,
            on_partial=lambda result: self.layout_streamed.emit(result) if current() else None,
            on_done=lambda outcome: self._layout_done(outcome) if current() else None,
        )

    def _layout_done(self, outcome: JobOutcome) -> None:
        if outcome.status is JobStatus.FAILED:
            self.layout_key = None  # "Recompute" and the next compute() try again
        self.layout_finished.emit(outcome)

    def read_colors(self, project) -> None:
        """Read the shown points' colors in the background (or at once without a reader). One
        read at a time: requests made while one is in flight are merged into one more read."""
        if self.reader is None:
            self.colors_read.emit(map_colors(project, self._shown_ids()))
            return
        if self.reader.closed:
            return
        if self._colors_busy:
            self._colors_again = True
            return
        self._colors_busy = True
        self._colors_generation += 1
        generation, image_ids = self._colors_generation, self._shown_ids()
        self.reader.submit(COLORS_JOB, _colors_job, project, image_ids,
                           on_done=lambda outcome: self._colors_done(generation, project, image_ids, outcome))

    def _colors_done(self, generation: int, project, image_ids: np.ndarray, outcome: JobOutcome) -> None:
        if generation != self._colors_generation:
            return  # from before a cancel or another project
        self._colors_busy = False
        if outcome.status is JobStatus.DONE:
            if np.array_equal(image_ids, self._shown_ids()):
                self.colors_read.emit(outcome.result)
            else:
                self._colors_again = True  # the points changed meanwhile
        if self._colors_again:
            self._colors_again = False
            self.read_colors(project)
