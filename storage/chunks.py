"""Slicing id lists for ``IN (...)`` clauses: SQLite refuses a statement with more bound parameters
than its limit (999 in builds before 3.32, and some distributions still ship those)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

# Under 999 with room to spare for the statement's other parameters (a model version, a side, ...).
IN_LIST_LIMIT = 900

Item = TypeVar("Item")


def in_list_chunks(items: Iterable[Item], size: int = IN_LIST_LIMIT) -> Iterator[list[Item]]:
    """``items`` in consecutive slices of at most ``size``, each small enough for one IN list."""
    values = list(items)
    for start in range(0, len(values), size):
        yield values[start : start + size]
