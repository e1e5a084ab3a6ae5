"""What changed in a team project since a client last looked: label changes by anyone (from the label
history, ``label_events``) and the active model version, read with two index-only queries so a
window can poll every second or two.

Event ids come from a sequence and are taken when a row is inserted, not when its transaction
commits, so a slow writer's event can appear below ids already seen: each poll looks back over the
last ``LOOK_BACK`` ids and remembers which it has reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text

from storage.modelstore import active_version
from storage.project import Project

LOOK_BACK = 1000


@dataclass(frozen=True)
class TeamChanges:
    image_ids: list[int]  # images whose label changed since the last poll (anyone's change)
    actors: list[str]  # who made those changes, each once
    active_model: int | None


class ChangeWatcher:
    """Polls one project; ``poll()`` returns what is new since the previous call (the first call: nothing)."""

    def __init__(self, project: Project):
        self.project = project
        self._seen: set[int] = set()
        self._top = 0
        top = self._max_id()
        self._seen = {row[0] for row in self._rows(max(0, top - LOOK_BACK))}
        self._top = max(self._seen, default=0)

    def _max_id(self) -> int:
        with self.project.engine.connect() as connection:
            return connection.execute(text("SELECT COALESCE(MAX(id), 0) FROM label_events")).scalar_one()

    def _rows(self, floor: int) -> list:
        with self.project.engine.connect() as connection:
            return connection.execute(text("SELECT id, image_id, actor FROM label_events WHERE id > :floor ORDER BY id"),
                                      {"floor": floor}).all()

    def poll(self) -> TeamChanges:
        floor = max(0, self._top - LOOK_BACK)
        rows = self._rows(floor)
        new = [row for row in rows if row[0] not in self._seen]
        self._seen.update(row[0] for row in new)
        if rows:
            self._top = max(self._top, rows[-1][0])
        self._seen = {i for i in self._seen if i > self._top - LOOK_BACK}
        return TeamChanges(list(dict.fromkeys(row[1] for row in new)), list(dict.fromkeys(row[2] for row in new)),
                           active_version(self.project))
