"""The window's job threads take turns (engine.runtime.turns), and the GUI's reactions to a finished
job run one per event-loop turn (gui.one_per_turn)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from engine.runtime import jobs, turns
from engine.runtime.jobs import JobRunner, JobStatus

WAIT_S = 30  # only a failure waits this long


def _runners(count: int) -> list[JobRunner]:
    return [JobRunner(yield_to_gui=True) for _ in range(count)]


@pytest.fixture
def patient_turns(monkeypatch):
    """The process's turn with a patience no test reaches: a job runs only when given the turn."""
    fresh = turns.WorkerTurns(patience_s=WAIT_S)
    monkeypatch.setattr(turns, "WINDOW_TURNS", fresh)
    monkeypatch.setattr(jobs, "WINDOW_TURNS", fresh)
    return fresh


def _wait_until(predicate) -> None:
    """Polls the condition every few milliseconds (the threads under test notify nothing)."""
    deadline = time.monotonic() + WAIT_S
    pause = threading.Event()
    while not predicate():
        assert time.monotonic() < deadline, "the condition never came true"
        pause.wait(0.002)


def test_a_second_job_runs_only_when_the_first_reaches_a_checkpoint(patient_turns):
    order: list[str] = []
    first, second = _runners(2)

    def holder(context):
        order.append("first starts")
        _wait_until(lambda: patient_turns.waiting == 1)  # the second job waits for the turn
        order.append("first, still alone")
        context.check_cancelled()  # a checkpoint: the waiting job runs before this one goes on
        order.append("first again")

    def other(_context):
        order.append("second")

    try:
        handle = first.submit("hold", holder)
        _wait_until(lambda: order == ["first starts"])
        other_handle = second.submit("other", other)
        assert handle.outcome(WAIT_S).status is JobStatus.DONE
        assert other_handle.outcome(WAIT_S).status is JobStatus.DONE
    finally:
        first.shutdown(), second.shutdown()
    assert order == ["first starts", "first, still alone", "second", "first again"]


def test_a_job_waiting_on_another_runs_anyway_after_the_patience(monkeypatch):
    """Soft turns cannot deadlock: the holder waits on something only the other job does."""
    fresh = turns.WorkerTurns(patience_s=0.05)
    monkeypatch.setattr(jobs, "WINDOW_TURNS", fresh)
    done = threading.Event()
    first, second = _runners(2)
    try:
        handle = first.submit("waits", lambda _context: done.wait(WAIT_S))
        _wait_until(lambda: fresh.holder is not None)
        second.submit("sets", lambda _context: done.set())
        assert handle.outcome(WAIT_S).result is True
    finally:
        first.shutdown(), second.shutdown()


def test_threads_outside_the_window_runners_never_take_the_turn(patient_turns):
    """A job's own helper threads (decoders) report progress through its context: no turn for them."""
    context = jobs.JobContext(turns=patient_turns)
    patient_turns._turn._queue.append(-1)  # someone waits
    try:
        helper = threading.Thread(target=context.progress, args=(0.5, "decoding"))
        helper.start()
        helper.join(WAIT_S)
        assert not helper.is_alive() and patient_turns.holder is None
    finally:
        patient_turns._turn._queue.clear()


def test_a_sleeping_job_lets_the_others_run(patient_turns):
    ran = threading.Event()
    first, second = _runners(2)
    try:
        handle = first.submit("polls", lambda context: context.wait_cancelled(WAIT_S))
        _wait_until(lambda: patient_turns.holder is None and not handle.done)  # gave the turn while asleep
        second.submit("other", lambda _context: ran.set()).outcome(WAIT_S)
        assert ran.is_set()
        handle.cancel()
        assert handle.outcome(WAIT_S).result is True
    finally:
        first.shutdown(), second.shutdown()


def test_plain_runners_take_no_turns():
    """The CLI's runner (no window) never waits for a turn."""
    runner = JobRunner()
    try:
        assert runner.submit("plain", lambda context: context._turns).outcome(WAIT_S).result is None
    finally:
        runner.shutdown()


def test_reactions_run_in_order_each_in_a_turn_of_its_own(qtbot):
    from PySide6.QtCore import QTimer

    from gui.one_per_turn import in_turn

    seen: list[str] = []

    def first():
        seen.append("first")
        QTimer.singleShot(0, lambda: seen.append("an event posted by the first"))

    def failing():
        seen.append("failing")
        raise RuntimeError("a reaction that fails")

    from PySide6.QtCore import QObject

    owner, closed = QObject(), QObject()
    with qtbot.capture_exceptions() as raised:
        in_turn(first, owner)
        in_turn(failing, owner)
        in_turn(lambda: seen.append("its window closed"), closed)
        closed.deleteLater()
        in_turn(lambda: seen.append("last"), owner)
        qtbot.waitUntil(lambda: "last" in seen, timeout=WAIT_S * 1000)
    assert seen == ["first", "an event posted by the first", "failing", "last"]
    assert [str(error[1]) for error in raised] == ["a reaction that fails"]  # reported, and the rest still ran


def test_the_next_batch_pca_keeps_what_scikit_learn_keeps():
    """engine.curation.selection_index's numpy-only PCA (it releases the GIL) against scikit-learn's."""
    from sklearn.decomposition import PCA

    from engine.curation.selection_index import principal_axes

    rng = np.random.default_rng(3)
    spectrum = np.exp(-np.arange(256) / 12)
    X = ((rng.standard_normal((1500, 256)) * spectrum) @ np.linalg.qr(rng.standard_normal((256, 256)))[0]).astype(np.float32)
    mean, axes = principal_axes(X, 20, np.random.default_rng(0))
    np.testing.assert_allclose(axes @ axes.T, np.eye(20), atol=1e-4)
    centred = X - mean
    ours = np.linalg.norm(centred @ axes.T) ** 2 / np.linalg.norm(centred) ** 2
    theirs = PCA(20, svd_solver="full").fit(X).explained_variance_ratio_.sum()
    assert ours == pytest.approx(theirs, abs=2e-3)


def test_a_job_never_pauses_for_its_turn_inside_a_write(patient_turns, tmp_path):
    """A label key may be waiting for that write to commit: the checkpoint lets nobody in there."""
    from storage.file_writes import write_turn

    context = jobs.JobContext(turns=patient_turns)
    patient_turns.join()
    patient_turns.take()
    patient_turns._turn._queue.append(-1)  # another job waits
    try:
        with write_turn(tmp_path / "p.sortlab"):
            context.check_cancelled()
            assert patient_turns.holder == threading.get_ident()  # kept it, did not queue behind
    finally:
        patient_turns._turn._queue.clear()
        patient_turns.give()
