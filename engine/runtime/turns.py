"""One Python-heavy job at a time beside the GUI thread: a soft, fair turn shared by the window's job threads.

Why: CPython runs one thread's Python code at a time (the GIL). When the map, the next batch, the model
report and the advice all start together after a training, four job threads want the GIL whenever the GUI
thread lets it go, and a 20 ms repaint of the window stretches to 100 ms while it waits its turn among
them. With one job thread at a time beside it, the GUI thread gets the GIL back within one switch interval.

The turn is *soft*: a job waits for it at most ``patience_s`` and then runs anyway, so a job that waits on
something another job holds (a write turn, an import lock) can never deadlock; and it is *passed* at every
checkpoint (``JobContext.check_cancelled`` and ``progress``), first come first served, so a long t-SNE
never holds the report up for more than one of its steps.
"""

from __future__ import annotations

import threading

from storage.file_writes import FairTurn, inside_a_write


class WorkerTurns:
    """A first-come-first-served turn between job threads (``take``, ``give``, ``pass_turn``), on the
    same fair lock as the project file's write turn, taken at most once per thread."""

    def __init__(self, patience_s: float = 1.0) -> None:
        self.patience_s = patience_s
        self._turn = FairTurn()
        self._members = threading.local()  # set on the job threads that take part

    def join(self) -> None:
        """This thread takes part (a job thread): its checkpoints pass the turn. Others' do nothing."""
        self._members.joined = True

    def take(self) -> None:
        """Wait (at most ``patience_s``) for this thread's turn; run without it past that."""
        if not self.held_here:
            self._turn.acquire(timeout=self.patience_s)

    def give(self) -> None:
        """End this thread's turn (if it had one)."""
        if self.held_here:
            self._turn.release()

    @property
    def held_here(self) -> bool:
        return self._turn.owner == threading.get_ident()

    @property
    def holder(self) -> int | None:
        return self._turn.owner

    @property
    def waiting(self) -> int:
        """How many job threads wait for the turn now."""
        return self._turn.waiting

    def pass_turn(self) -> None:
        """At a checkpoint: let a waiting job run first, then queue again (nothing to do when none waits,
        or on a thread that does not take part, e.g. a job's decoder threads, or inside a write
        transaction: a label key may be waiting for it to commit)."""
        if not getattr(self._members, "joined", False) or inside_a_write():
            return
        if self.waiting:
            self.give()
            self.take()


WINDOW_TURNS = WorkerTurns()  # shared by every runner made with yield_to_gui=True in this process
