"""Background jobs: a job context (like Orange's TaskState) and a single-worker runner.

A job is a plain function ``fn(context, *args)``. It reports through the context:
``context.progress(fraction, message)``, ``context.partial(result)`` for streaming results
(curves, embeddings), and ``context.check_cancelled()`` at safe points, which raises
``JobCancelled``. Jobs run one at a time on one worker thread, so the project database has a
single engine-side writer (the way Anki's collection executor works). The GUI wraps the
callbacks into Qt signals; the CLI prints progress to stderr.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from engine.runtime.turns import WINDOW_TURNS, WorkerTurns

ProgressCallback = Callable[[float, str], None]
PartialCallback = Callable[[Any], None]


class JobCancelled(Exception):
    """Raised inside a job when the user asked to cancel it; never an error."""


class JobContext:
    """What a running job sees: where to report progress and partial results, and whether to stop."""

    def __init__(
        self,
        on_progress: ProgressCallback | None = None,
        on_partial: PartialCallback | None = None,
        cancel_event: threading.Event | None = None,
        turns: WorkerTurns | None = None,
    ):
        self._turns = turns
        self._on_progress = on_progress
        self._on_partial = on_partial
        self._cancel_event = cancel_event or threading.Event()
        self.fraction = 0.0
        self.message = ""

    @property
    def cancelled(self) -> bool:
        return self._cancel_event.is_set()

    def cancel(self) -> None:
        self._cancel_event.set()

    def check_cancelled(self) -> None:
        """A safe point: raises JobCancelled when asked to stop, and lets another waiting job run a while."""
        if self._cancel_event.is_set():
            raise JobCancelled()
        if self._turns is not None:
            self._turns.pass_turn()

    def wait_cancelled(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` but wake at once on cancel (a polling job's pause); True if cancelled."""
        if self._turns is None:
            return self._cancel_event.wait(seconds)
        self._turns.give()  # nobody waits on a sleeping job
        try:
            return self._cancel_event.wait(seconds)
        finally:
            self._turns.take()

    def progress(self, fraction: float, message: str = "") -> None:
        if self._turns is not None:
            self._turns.pass_turn()
        self.fraction = min(max(float(fraction), 0.0), 1.0)
        if message:
            self.message = message
        if self._on_progress is not None:
            self._on_progress(self.fraction, self.message)

    def partial(self, result: Any) -> None:
        if self._on_partial is not None:
            self._on_partial(result)

    def subcontext(self, start: float, end: float, partials: bool = True) -> JobContext:
        """A context whose 0..1 progress maps onto [start, end] of this one (for job steps); without
        ``partials`` the step's partial results are not passed on (a step nobody should chart)."""
        parent = self

        def scaled(fraction: float, message: str) -> None:
            parent.progress(start + (end - start) * fraction, message)

        return JobContext(scaled, self._on_partial if partials else None, self._cancel_event, self._turns)


class JobStatus(str, Enum):
    """How a job ended. A job that stops because the user asked always ends CANCELLED (it raised
    ``JobCancelled``), never DONE with a flag in its result."""

    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass
class JobOutcome:
    """How a job ended, as plain data the GUI or CLI can show. ``result`` is the job function's
    typed return value (DONE only); ``error`` is one line for the user (FAILED only)."""

    status: JobStatus
    result: Any = None
    error: str = ""
    details: str = ""
    seconds: float = 0.0


def run_job(fn: Callable[..., Any], context: JobContext, *args: Any, **kwargs: Any) -> JobOutcome:
    """Run a job synchronously, turning cancellation and errors into a JobOutcome."""
    started = time.perf_counter()
    try:
        result = fn(context, *args, **kwargs)
    except JobCancelled:
        return JobOutcome(JobStatus.CANCELLED, seconds=time.perf_counter() - started)
    except Exception as exc:  # a job's failure is reported to the user, never crashes the app
        return JobOutcome(
            JobStatus.FAILED,
            error=user_message(exc),
            details=traceback.format_exc(),
            seconds=time.perf_counter() - started,
        )
    return JobOutcome(JobStatus.DONE, result=result, seconds=time.perf_counter() - started)


def user_message(exc: BaseException) -> str:
    """One clear line for the user: our own errors carry their message; others get their type too.
    A library that failed to import says so in words (its Python message stays in the details)."""
    if isinstance(exc, ImportError):
        part = f" ({exc.name.split('.')[0]})" if exc.name else ""
        return (f"A part of Sortlab could not be loaded{part}. Restart Sortlab; if this happens again, "
                "reinstall it.")
    text = str(exc).strip() or exc.__class__.__name__
    if isinstance(exc, (OSError, MemoryError)) and not isinstance(exc, FileNotFoundError):
        if getattr(exc, "errno", None) == 28:
            return "The disk is full: free some space and try again. Nothing was lost."
    return text


@dataclass
class JobHandle:
    """A submitted job: cancel it, or wait for its outcome."""

    name: str
    context: JobContext
    future: Future = field(repr=False)

    def cancel(self) -> None:
        self.context.cancel()

    def outcome(self, timeout: float | None = None) -> JobOutcome:
        return self.future.result(timeout)

    @property
    def done(self) -> bool:
        return self.future.done()


JOB_NICENESS = 5  # how far a window's job threads step back from its GUI thread (Linux nice levels)


def _step_back_from_the_gui() -> None:
    """Give this worker thread a lower CPU priority than the GUI thread (Linux only, where a thread
    has its own nice value; the threads it starts, e.g. decoders and onnxruntime's, inherit it).
    On two busy cores the GUI thread then gets a core as soon as it has an event to handle, instead
    of queueing behind the job's threads: the window keeps answering within a frame."""
    if not sys.platform.startswith("linux"):
        return
    try:
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + JOB_NICENESS))
    except OSError:  # a sandbox may refuse: the job just runs at the GUI's priority
        pass


class JobRunner:
    """Runs jobs one at a time on a single worker thread, in submission order. ``yield_to_gui``
    (the window's runners) runs that thread at a lower priority than the GUI thread, and its jobs
    take turns with the other window runners' jobs (engine.runtime.turns)."""

    def __init__(self, yield_to_gui: bool = False) -> None:
        self._turns = WINDOW_TURNS if yield_to_gui else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sortlab-job",
                                            initializer=self._start_worker if yield_to_gui else None)
        self._lock = threading.Lock()
        self._pending: list[JobHandle] = []

    def submit(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        on_progress: ProgressCallback | None = None,
        on_partial: PartialCallback | None = None,
        on_done: Callable[[JobOutcome], None] | None = None,
        **kwargs: Any,
    ) -> JobHandle:
        context = JobContext(on_progress, on_partial, turns=self._turns)

        def work() -> JobOutcome:
            if context.cancelled:
                outcome = JobOutcome(JobStatus.CANCELLED)
            elif self._turns is None:
                outcome = run_job(fn, context, *args, **kwargs)
            else:
                self._turns.take()
                try:
                    outcome = run_job(fn, context, *args, **kwargs)
                finally:
                    self._turns.give()
            with self._lock:
                self._pending = [h for h in self._pending if h.context is not context]
            if on_done is not None:
                on_done(outcome)
            return outcome

        handle = JobHandle(name, context, self._executor.submit(work))
        with self._lock:
            self._pending.append(handle)
        return handle

    def _start_worker(self) -> None:
        _step_back_from_the_gui()
        self._turns.join()

    def pending(self) -> list[JobHandle]:
        with self._lock:
            return [h for h in self._pending if not h.done]

    def cancel_all(self) -> None:
        for handle in self.pending():
            handle.cancel()

    def shutdown(self, wait: bool = True) -> None:
        self.cancel_all()
        self._executor.shutdown(wait=wait)
