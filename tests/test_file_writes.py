"""Writers of one project file in one process take turns on a Python lock (storage.file_writes):
while one thread's write transaction is open, another thread cannot take the file's turn, and it
gets it as soon as the first commits."""

from __future__ import annotations

import threading

from storage import catalog, file_writes


def _turn_is_free(path) -> bool:
    """Whether another thread could take the file's write turn right now (without waiting)."""
    turn = file_writes._WRITE_TURNS[str(path)]
    answer = []

    def probe() -> None:
        got = turn.acquire(blocking=False)
        if got:
            turn.release()
        answer.append(got)

    prober = threading.Thread(target=probe)
    prober.start()
    prober.join(10)
    return answer[0]


def test_a_write_holds_the_files_turn_until_it_commits(project):
    ant = catalog.add_class(project, "ant")
    inside, release, done = threading.Event(), threading.Event(), threading.Event()

    def long_write() -> None:
        with project.writing():
            inside.set()
            release.wait(30)
        done.set()

    writer = threading.Thread(target=long_write)
    writer.start()
    assert inside.wait(30)
    assert not _turn_is_free(project.path)  # a label key pressed now waits for this transaction
    release.set()
    assert done.wait(30)
    writer.join(30)
    assert _turn_is_free(project.path)
    bee = catalog.add_class(project, "bee")  # and the next write goes ahead
    assert [c.id for c in catalog.list_classes(project)] == [ant.id, bee.id]


def test_database_projects_take_no_python_turn():
    with file_writes.write_turn(None):
        assert "None" not in file_writes._WRITE_TURNS


def test_a_writer_that_asks_again_queues_behind_the_one_already_waiting(project):
    """A job storing chunk after chunk lets a waiting label key in after the chunk it is writing."""
    catalog.add_class(project, "ant")  # the file's turn exists from here
    turn = file_writes._WRITE_TURNS[str(project.path)]
    order: list[str] = []
    holding = threading.Event()
    pause = threading.Event()

    def job() -> None:
        with file_writes.write_turn(project.path):
            holding.set()
            while not turn.waiting:  # until the label key queues
                pause.wait(0.001)
            order.append("chunk 1")
        with file_writes.write_turn(project.path):  # at once: the next chunk
            order.append("chunk 2")

    writer = threading.Thread(target=job)
    writer.start()
    assert holding.wait(30)
    with file_writes.write_turn(project.path):
        order.append("label key")
    writer.join(30)
    assert order == ["chunk 1", "label key", "chunk 2"]


def test_the_write_turn_is_reentrant_and_refuses_a_foreign_release():
    turn = file_writes.FairTurn()
    with turn, turn:
        assert turn.acquire(blocking=False)
        turn.release()
    errors = []
    other = threading.Thread(target=lambda: errors.append(_release_fails(turn)))
    turn.acquire()
    other.start()
    other.join(10)
    turn.release()
    assert errors == [True]


def _release_fails(turn) -> bool:
    try:
        turn.release()
    except RuntimeError:
        return True
    return False
