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
