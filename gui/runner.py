"""The GUI's only door to the engine: submits jobs to the single-worker JobRunner and turns their
progress, partial results and outcomes into Qt signals (delivered on the GUI thread)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

from engine.jobs import JobHandle, JobOutcome, JobRunner


class QtJobRunner(QObject):
    """Qt face of engine.jobs.JobRunner. Signals carry the job name first so views can filter.

    Signals are emitted from the worker thread; Qt queues them to receivers living on the GUI
    thread, so slots run on the GUI thread and engine work never does.
    """

    progress = Signal(str, float, str)  # job name, fraction 0..1, message
    partial = Signal(str, object)  # job name, partial result (plain data)
    finished = Signal(str, object)  # job name, JobOutcome
    busy_changed = Signal(bool)
    _job_ended = Signal(int, str, object)  # internal: token, name, outcome

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._runner = JobRunner()
        self._tokens = itertools.count()
        self._handles: dict[int, JobHandle] = {}
        self._on_done: dict[int, Callable[[JobOutcome], None]] = {}
        self._job_ended.connect(self._deliver)

    def submit(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        on_done: Callable[[JobOutcome], None] | None = None,
        **kwargs: Any,
    ) -> JobHandle:
        """Queue ``fn(context, *args, **kwargs)``; ``on_done(outcome)`` then runs on the GUI thread."""
        token = next(self._tokens)
        if on_done is not None:
            self._on_done[token] = on_done
        handle = self._runner.submit(
            name,
            fn,
            *args,
            on_progress=lambda fraction, message: self.progress.emit(name, fraction, message),
            on_partial=lambda result: self.partial.emit(name, result),
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

    def shutdown(self) -> None:
        self._runner.shutdown(wait=True)

    def _deliver(self, token: int, name: str, outcome: JobOutcome) -> None:
        self._handles.pop(token, None)
        callback = self._on_done.pop(token, None)
        self.finished.emit(name, outcome)
        if callback is not None:
            callback(outcome)
        if not self._handles:
            self.busy_changed.emit(False)
