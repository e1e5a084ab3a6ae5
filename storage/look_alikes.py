"""Look-alike groups the user decided to keep whole ("these are different pictures, keep them all"),
so the "Look-alikes" list stops showing them. Stored as JSON in ``project_meta['look_alikes.kept']``
(small: a list of image-id lists), so no migration is needed."""

from __future__ import annotations

import json
from collections.abc import Iterable

from storage.models import ProjectMeta
from storage.project import Project

KEPT_KEY = "look_alikes.kept"


def _read(session) -> list[frozenset[int]]:
    row = session.get(ProjectMeta, KEPT_KEY)
    if row is None:
        return []
    try:
        return [frozenset(int(i) for i in group) for group in json.loads(row.value)]
    except (ValueError, TypeError):  # a damaged value: nothing is kept, nothing else is lost
        return []


def _write(session, groups: list[frozenset[int]]) -> None:
    row = session.get(ProjectMeta, KEPT_KEY)
    value = json.dumps([sorted(group) for group in groups])
    if row is None:
        session.add(ProjectMeta(key=KEPT_KEY, value=value))
    else:
        row.value = value


def kept_groups(project: Project) -> list[frozenset[int]]:
    """The groups kept whole, oldest first."""
    with project.session() as session:
        return _read(session)


def keep_group(project: Project, image_ids: Iterable[int]) -> None:
    """Keep these images together as different pictures (not asked about again)."""
    group = frozenset(int(i) for i in image_ids)
    with project.writing() as session:
        groups = _read(session)
        if group not in groups:
            _write(session, [*groups, group])


def forget_group(project: Project, image_ids: Iterable[int]) -> None:
    """Undo ``keep_group``: the group is asked about again."""
    group = frozenset(int(i) for i in image_ids)
    with project.writing() as session:
        _write(session, [g for g in _read(session) if g != group])
