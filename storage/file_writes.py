"""How the writers of one project file share it within one process: whose turn it is to write, and
when the write-ahead log is copied into the file. No Qt here.

Both exist for the window's sake. SQLite's busy handler polls a held write lock with growing sleeps
(up to 100 ms), so a label written on the GUI thread while a job stores a chunk would wait until the
next poll: a Python lock per file hands over the moment the chunk commits, to the writers in the order
they asked (a job storing chunk after chunk would otherwise take it back before a waiting label key
woke up: three chunks, 52 ms, measured at 100k images). And SQLite's automatic
checkpoint runs in whichever commit crosses 1000 pages, often a label key's, which then waits for the
disk flush: it is off (``storage.project`` sets ``wal_autocheckpoint=0``) and ``checkpoint_if_due``
copies the log after a write instead, outside the write turn. Other processes (the CLI) still meet
at SQLite's lock; database projects need neither (the server queues writers itself).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import Engine

WAL_CHECKPOINT_BYTES = 4 << 20  # the write-ahead log a background writer copies into the file (1000 pages)
WAL_MAIN_THREAD_BYTES = 64 << 20  # ... and the main thread (label keys), only if nothing else did


class FairTurn:
    """A reentrant lock granted first come, first served (``threading.RLock`` favours the thread that
    just released it). Also the job threads' turn (engine.runtime.turns), with a timeout."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._owner: int | None = None
        self._depth = 0
        self._queue: deque[int] = deque()

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Wait for the turn behind those already waiting; False if not granted within ``timeout`` s."""
        me = threading.get_ident()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            if self._owner == me:
                self._depth += 1
                return True
            if not blocking and (self._owner is not None or self._queue):
                return False
            self._queue.append(me)
            while self._owner is not None or self._queue[0] != me:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._queue.remove(me)
                    self._condition.notify_all()  # the next in line may now be first
                    return False
                self._condition.wait(left)
            self._queue.popleft()
            self._owner, self._depth = me, 1
            return True

    def release(self) -> None:
        with self._condition:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a write turn this thread does not hold")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._condition.notify_all()

    @property
    def waiting(self) -> int:
        with self._condition:
            return len(self._queue)

    @property
    def owner(self) -> int | None:
        """The thread ident holding the turn (None: free)."""
        return self._owner

    def __enter__(self) -> FairTurn:
        self.acquire()
        return self

    def __exit__(self, *_exc) -> None:
        self.release()


_WRITE_TURNS: dict[str, FairTurn] = {}
_WRITE_TURNS_GUARD = threading.Lock()
_WRITING = threading.local()  # how many write transactions this thread is inside


@contextlib.contextmanager
def write_turn(path: Path | None) -> Iterator[None]:
    """Held around every write transaction on the file at ``path`` (None: a database project)."""
    _WRITING.depth = getattr(_WRITING, "depth", 0) + 1
    try:
        if path is None:
            yield
            return
        with _WRITE_TURNS_GUARD:
            turn = _WRITE_TURNS.setdefault(str(path), FairTurn())
        with turn:
            yield
    finally:
        _WRITING.depth -= 1


def inside_a_write() -> bool:
    """Whether this thread is inside a write transaction (it must not pause there: others wait on it)."""
    return getattr(_WRITING, "depth", 0) > 0


def checkpoint_if_due(engine: Engine, path: Path | None) -> None:
    """After a write: copy the log into the file once it has grown. Background threads do it from
    ``WAL_CHECKPOINT_BYTES`` on; the main thread, where a window's label keys are written, only past
    ``WAL_MAIN_THREAD_BYTES``, so a keypress does not wait for the disk unless nothing else ever
    checkpoints. A passive checkpoint blocks no writer."""
    if path is None:
        return
    main = threading.current_thread() is threading.main_thread()
    try:
        if os.path.getsize(f"{path}-wal") < (WAL_MAIN_THREAD_BYTES if main else WAL_CHECKPOINT_BYTES):
            return
    except OSError:  # no log (yet): nothing to copy
        return
    # On the driver's connection, outside any transaction (inside one SQLite refuses with "database
    # table is locked"); a checkpoint that cannot run now is left to the next write.
    connection = engine.raw_connection()
    try:
        connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.OperationalError:
        pass
    finally:
        connection.close()
