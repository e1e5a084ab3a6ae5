"""Labeled images with their train/validation side, and writing the engine's split assignment.

The engine remembers when it last assigned sides (``project_meta['splits_assigned_at']``): images
labeled (or relabeled) after that are the new ones it may place; all others keep their side.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select, update

from storage.chunks import in_list_chunks
from storage.models import Image, ProjectMeta
from storage.project import Project

ASSIGNED_AT_KEY = "splits_assigned_at"


@dataclass(frozen=True)
class LabeledImage:
    image_id: int
    class_id: int
    source: str
    split: str
    split_pinned: bool
    labeled_at: dt.datetime
    content_hash: str


def labeled_images(project: Project) -> list[LabeledImage]:
    """Every labeled image, by image id, with its class and side (one plain SQL query: training reads it
    on every retrain, and ORM rows cost ~30 us each)."""
    with project.engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT i.id, l.class_id, i.source, i.split, i.split_pinned, l.labeled_at, i.content_hash "
            "FROM images i JOIN labels l ON l.image_id = i.id JOIN classes c ON c.id = l.class_id ORDER BY i.id"
        ).fetchall()
    return [LabeledImage(int(r[0]), int(r[1]), r[2] or "", r[3] or "train", bool(r[4]), _timestamp(r[5]), r[6])
            for r in rows]


def _timestamp(value) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(str(value))


def image_sources(project: Project) -> dict[int, str]:
    with project.session() as session:
        return {int(i): s or "" for i, s in session.execute(select(Image.id, Image.source))}


def splits_assigned_at(project: Project) -> dt.datetime | None:
    with project.session() as session:
        value = session.scalar(select(ProjectMeta.value).where(ProjectMeta.key == ASSIGNED_AT_KEY))
    return None if value is None else dt.datetime.fromisoformat(value)


SPLIT_WRITE_CHUNK = 100  # images per write transaction: a label key waits for at most one chunk


def write_splits(project: Project, sides: Mapping[int, str], assigned_at: dt.datetime) -> None:
    """Put unpinned images on the given sides, then record when this assignment was made.

    In short transactions of ``SPLIT_WRITE_CHUNK`` images (the first training places every labeled
    image; one transaction held the write lock 55-80 ms while a label key waited on the GUI thread),
    the time last: a job stopped halfway leaves the rest to be placed again by the next training."""
    by_side: dict[str, list[int]] = {"train": [], "val": []}
    for image_id, side in sides.items():
        by_side[side].append(int(image_id))
    for side, ids in by_side.items():
        for chunk in in_list_chunks(ids, SPLIT_WRITE_CHUNK):
            with project.writing() as session:
                session.execute(
                    update(Image).where(Image.id.in_(chunk), Image.split_pinned.is_(False), Image.split != side)
                    .values(split=side)
                )
    with project.writing() as session:
        row = session.get(ProjectMeta, ASSIGNED_AT_KEY)
        if row is None:
            session.add(ProjectMeta(key=ASSIGNED_AT_KEY, value=assigned_at.isoformat()))
        else:
            row.value = assigned_at.isoformat()
