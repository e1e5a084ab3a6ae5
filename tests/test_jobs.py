"""Job context and single-worker runner: progress, partials, cancellation, errors, ordering."""

from __future__ import annotations

import threading

from engine.runtime.jobs import JobCancelled, JobContext, JobRunner, run_job


def test_run_job_reports_progress_partials_and_result():
    seen_progress, seen_partials = [], []
    context = JobContext(lambda f, m: seen_progress.append((f, m)), seen_partials.append)

    def job(ctx, n):
        for i in range(n):
            ctx.partial(i)
            ctx.progress((i + 1) / n, f"step {i + 1}")
        return "ok"

    outcome = run_job(job, context, 3)
    assert outcome.status == "done" and outcome.result == "ok"
    assert seen_partials == [0, 1, 2]
    assert seen_progress[-1] == (1.0, "step 3")


def test_cancellation_is_its_own_outcome_not_an_error():
    context = JobContext()

    def job(ctx):
        ctx.cancel()
        ctx.check_cancelled()
        return "never"

    outcome = run_job(job, context)
    assert outcome.status == "cancelled" and outcome.error == ""


def test_errors_become_messages():
    outcome = run_job(lambda ctx: (_ for _ in ()).throw(ValueError("bad labels")), JobContext())
    assert outcome.status == "failed" and outcome.error == "bad labels"
    assert "ValueError" in outcome.details


def test_subcontext_maps_progress_into_parent_range():
    seen = []
    parent = JobContext(lambda f, m: seen.append(round(f, 3)))
    child = parent.subcontext(0.5, 1.0)
    child.progress(0.5, "half of second step")
    assert seen == [0.75]


def test_runner_runs_jobs_one_at_a_time_in_order():
    runner = JobRunner()
    order, threads = [], set()
    gate = threading.Event()

    def job(ctx, name):
        threads.add(threading.current_thread().name)
        if name == "first":
            gate.wait(5)
        order.append(name)
        return name

    first = runner.submit("a", job, "first")
    second = runner.submit("b", job, "second")
    assert not second.done
    gate.set()
    assert second.outcome(5).result == "second"
    assert first.outcome(5).status == "done"
    assert order == ["first", "second"] and len(threads) == 1
    runner.shutdown()


def test_cancelling_a_queued_job_skips_it():
    runner = JobRunner()
    gate = threading.Event()
    ran = []
    blocker = runner.submit("block", lambda ctx: gate.wait(5))
    queued = runner.submit("queued", lambda ctx: ran.append(1))
    queued.cancel()
    gate.set()
    assert blocker.outcome(5).status == "done"
    assert queued.outcome(5).status == "cancelled" and ran == []
    runner.shutdown()


def test_job_cancelled_is_not_a_generic_error():
    assert not issubclass(JobCancelled, (ValueError, RuntimeError))


def _nice_of_this_thread(_context=None) -> int:
    import os

    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_window_runner_steps_back_from_the_gui_thread_and_a_plain_one_does_not():
    import sys

    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread nice values are Linux's")
    gui_nice = _nice_of_this_thread()
    window_runner, plain_runner = JobRunner(yield_to_gui=True), JobRunner()
    try:
        stepped = window_runner.submit("nice", _nice_of_this_thread).outcome(30).result
        plain = plain_runner.submit("nice", _nice_of_this_thread).outcome(30).result
    finally:
        window_runner.shutdown()
        plain_runner.shutdown()
    assert plain == gui_nice
    assert stepped == min(19, gui_nice + 5)
    assert _nice_of_this_thread() == gui_nice  # the GUI thread itself keeps its priority
