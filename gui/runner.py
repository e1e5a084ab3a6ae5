"""The GUI's only door to the engine: submits jobs to the single-worker JobRunner and turns their
progress, partial results and outcomes (by their JobStatus) into Qt signals on the GUI thread."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

from engine.runtime.jobs import JobHandle, JobOutcome, JobRunner, JobStatus


class QtJobRunner(QObject):
    """Qt face of engine.runtime.jobs.JobRunner. Signals carry the job name first so views can filter.

    Signals are emitted from the worker thread; Qt queues them to receivers living on the GUI
    thread, so slots run on the GUI thread and engine work never does.
    """

    progress = Signal(str, float, str)  # job name, fraction 0..1, message
    partial = Signal(str, object)  # job name, partial result (plain data)
    finished = Signal(str, object)  # job name, JobOutcome: every ending, whatever its status
    succeeded = Signal(str, object)  # job name, the job's typed result: JobStatus.DONE only
    busy_changed = Signal(bool)
    _job_ended = Signal(int, str, object)  # internal: token, name, outcome
    _job_partial = Signal(int, object)  # internal: token, partial result (for per-job on_partial)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._runner = JobRunner(yield_to_gui=True)  # the window answers first, the job gets the rest
        self._tokens = itertools.count()
        self._handles: dict[int, JobHandle] = {}
        self._on_done: dict[int, Callable[[JobOutcome], None]] = {}
        self._on_partial: dict[int, Callable[[Any], None]] = {}
        self._closed = False
        self._job_ended.connect(self._deliver)
        self._job_partial.connect(self._deliver_partial)

    def submit(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        on_done: Callable[[JobOutcome], None] | None = None,
        on_partial: Callable[[Any], None] | None = None,
        **kwargs: Any,
    ) -> JobHandle:
        """Queue ``fn(context, *args, **kwargs)``; ``on_done(outcome)`` then runs on the GUI thread.

        ``on_partial(result)`` receives this job's partial results only, on the GUI thread and
        before the ``partial`` signal, so a view can tell its current job's results from those of
        an older job that were still queued when it was cancelled."""
        if self._closed:
            raise RuntimeError("This job runner has been shut down.")
        token = next(self._tokens)
        if on_done is not None:
            self._on_done[token] = on_done
        if on_partial is not None:
            self._on_partial[token] = on_partial

        def emit_partial(result: Any) -> None:
            if on_partial is not None:
                self._job_partial.emit(token, result)
            self.partial.emit(name, result)
        handle = self._runner.submit(
            name,
            fn,
            *args,
            on_progress=lambda fraction, message: self.progress.emit(name, fraction, message),
            on_partial=emit_partial,
            on_done=lambda outcome: self._job_ended.emit(token, name, outcome),
            **kwargs,
        )
        self._handles[token] = handle
        self.busy_changed.emit(True)
        return handle

    def cancel(self, name: str) -> None:
        """Ask every queued or running job with this name to stop (cooperatively)."""
        for handle in self._handles.values():
            if handle.name == name:
                handle.cancel()

    def is_running(self, name: str) -> bool:
        return any(h.name == name for h in self._handles.values())

    @property
    def busy(self) -> bool:
        return bool(self._handles)

    def cancel_all(self) -> None:
        self._runner.cancel_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def shutdown(self) -> None:
        """Cancel every job and wait for the worker to stop; later submits raise. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._runner.shutdown(wait=True)

    def _deliver_partial(self, token: int, result: Any) -> None:
        callback = self._on_partial.get(token)
        if callback is not None:
            callback(result)

    def _deliver(self, token: int, name: str, outcome: JobOutcome) -> None:
        self._handles.pop(token, None)
        self._on_partial.pop(token, None)
        callback = self._on_done.pop(token, None)
        self.finished.emit(name, outcome)
        if outcome.status is JobStatus.DONE:
            self.succeeded.emit(name, outcome.result)
        if callback is not None:
            callback(outcome)
        if not self._handles:
            self.busy_changed.emit(False)
