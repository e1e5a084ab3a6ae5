"""Whether a project's classes are ordered (fill levels: empty < 1/4 < 1/2 < 3/4 < full).

The flag lives in ``project_meta['classes_ordered']`` ("1" or absent), so no migration is needed; the
order itself is the classes' ``position`` (the class list's order, set with
storage.catalog.reorder_classes).
"""

from __future__ import annotations

from sqlalchemy import select

from storage.catalog import list_classes
from storage.models import ProjectMeta
from storage.project import Project

ORDERED_KEY = "classes_ordered"


def classes_ordered(project: Project) -> bool:
    """Whether the user marked the project's classes as ordered."""
    with project.session() as session:
        value = session.scalar(select(ProjectMeta.value).where(ProjectMeta.key == ORDERED_KEY))
    return value == "1"


def set_classes_ordered(project: Project, ordered: bool) -> None:
    """Mark the classes as ordered (in their list order) or not."""
    with project.writing() as session:
        row = session.get(ProjectMeta, ORDERED_KEY)
        if ordered and row is None:
            session.add(ProjectMeta(key=ORDERED_KEY, value="1"))
        elif ordered:
            row.value = "1"
        elif row is not None:
            session.delete(row)


def class_levels(project: Project) -> list[int] | None:
    """The class ids from lowest to highest level when the classes are ordered, else None."""
    if not classes_ordered(project):
        return None
    return [c.id for c in list_classes(project)]
