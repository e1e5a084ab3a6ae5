"""Reactions that would otherwise run back to back, one per turn of the event loop.

When a training ends, the grid, the curation counter, the model report, the map and the learning
curves all react: 10-20 ms each on the GUI thread, 50-80 ms in one go, and the window would not
answer a key or repaint in between. Queued here, each runs in its own turn, with input, timers
and paints handled between them. GUI thread only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import shiboken6
from PySide6.QtCore import QObject, QTimer


class OnePerTurn:
    """A first-in-first-out queue of callbacks; one runs per turn of the event loop."""

    def __init__(self) -> None:
        self._queue: deque[tuple[Callable[[], None], QObject]] = deque()
        self._scheduled = False

    def add(self, callback: Callable[[], None], owner: QObject) -> None:
        self._queue.append((callback, owner))
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and self._queue:
            self._scheduled = True
            # A 1 ms timer, not a 0 ms one: zero-timers are posted events, which Qt runs back to back,
            # before due timers; timers take turns with the window's other timers.
            QTimer.singleShot(1, self._run_next)

    def _run_next(self) -> None:
        self._scheduled = False
        callback, owner = self._queue.popleft()
        self._schedule()  # before running it: a failing reaction must not strand the rest
        if shiboken6.isValid(owner):  # its window may have closed meanwhile
            callback()


REACTIONS = OnePerTurn()  # the GUI thread's one queue


def in_turn(callback: Callable[[], None], owner: QObject) -> None:
    """Run ``callback`` after the reactions already queued, in a turn of its own, unless ``owner`` (the
    widget it updates) was deleted by then."""
    REACTIONS.add(callback, owner)
