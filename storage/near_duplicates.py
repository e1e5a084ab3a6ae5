"""Near-duplicate pairs among labeled images, kept up to date one newly labeled image at a time.

The leak guard (engine.curation.leak_guard) compares each labeled image whose label row is not yet
``twins_checked`` with every labeled image, stores the pairs it finds and marks the image checked,
so a retrain after one label edit compares one image, not all of them with each other. The pairs
belong to one feature space and threshold (``project_meta['near_duplicate_space']``): when that
changes, ``reset_near_duplicates`` forgets them and every labeled image is compared again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import delete, select, update

from storage.chunks import in_list_chunks
from storage.models import Label, NearDuplicate, ProjectMeta
from storage.project import Project

SPACE_KEY = "near_duplicate_space"


def near_duplicate_space(project: Project) -> str | None:
    """The feature space and threshold the stored pairs were found in (None before the first check)."""
    with project.session() as session:
        return session.scalar(select(ProjectMeta.value).where(ProjectMeta.key == SPACE_KEY))


def reset_near_duplicates(project: Project, space: str) -> None:
    """Forget every pair and every checked mark, and record the space the next pairs belong to."""
    with project.writing() as session:
        session.execute(delete(NearDuplicate))
        session.execute(update(Label).values(twins_checked=False))
        row = session.get(ProjectMeta, SPACE_KEY)
        if row is None:
            session.add(ProjectMeta(key=SPACE_KEY, value=space))
        else:
            row.value = space


def unchecked_labeled_ids(project: Project) -> list[int]:
    """Labeled images not yet compared with the others, by id."""
    with project.session() as session:
        return list(session.scalars(select(Label.image_id).where(Label.twins_checked.is_(False))
                                    .order_by(Label.image_id)))


def add_near_duplicates(
    project: Project, image_a: Sequence[int], image_b: Sequence[int], similarity: Sequence[float],
    checked: Sequence[int],
) -> None:
    """Store pairs (either order; kept as a < b) and mark ``checked`` images as compared, in one transaction."""
    rows = {}
    for a, b, s in zip(np.asarray(image_a).tolist(), np.asarray(image_b).tolist(), np.asarray(similarity).tolist()):
        if a != b:
            rows[(min(a, b), max(a, b))] = float(s)
    with project.writing() as session:
        if rows:
            session.connection().exec_driver_sql(
                "INSERT OR REPLACE INTO near_duplicates (image_a, image_b, similarity) "
                "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM images WHERE id = ?) "
                "AND EXISTS (SELECT 1 FROM images WHERE id = ?)",
                [(a, b, s, a, b) for (a, b), s in rows.items()],
            )
        for chunk in in_list_chunks([int(i) for i in checked]):
            session.execute(update(Label).where(Label.image_id.in_(chunk)).values(twins_checked=True))


def labeled_near_duplicates(project: Project) -> tuple[np.ndarray, np.ndarray]:
    """(image_a, image_b) of every stored pair whose two images are both labeled now."""
    with project.engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT d.image_a, d.image_b FROM near_duplicates d "
            "JOIN labels la ON la.image_id = d.image_a JOIN labels lb ON lb.image_id = d.image_b"
        ).fetchall()
    pairs = np.array(rows, dtype=np.int64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]
