"""The "overlap" share of a team project: a fixed subset of images shown to everyone who labels, so
that two people label the same images on purpose and their agreement can be measured
(``storage.team_agreement``).

The share lives in ``project_meta['team.overlap_share']`` (a fraction 0..1; absent: 0, no overlap).
Only owners change it: in a team project the database refuses labelers and viewers (they may not
write ``project_meta``). Which images are in the overlap depends only on the image id and the share
(a 64-bit mix of the id, SplitMix64's finalizer), so every client agrees without asking anyone, the
choice does not move when images are added, and a larger share keeps every image a smaller one had.

Works for project files too: there "who" is ``project.actor`` (``SORTLAB_USER`` or the login name),
as the label history records it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from sqlalchemy import select

from storage.chunks import in_list_chunks
from storage.errors import PermissionDeniedError
from storage.models import Image, LabelEvent, ProjectMeta
from storage.project import Project

OVERLAP_KEY = "team.overlap_share"
_MASK = (1 << 64) - 1


def parse_share(value: str | float) -> float:
    """A share the user typed: 0.1, 10% or 10 (percent when above 1); ValueError in words otherwise."""
    text = str(value).strip()
    percent = text.endswith("%")
    try:
        share = float(text.rstrip("%").strip())
    except ValueError:
        raise ValueError(f"The overlap share must be a number such as 0.1 or 10%, not {text!r}.") from None
    if percent or share > 1:
        share /= 100
    if not np.isfinite(share) or not 0 <= share <= 1:
        raise ValueError(f"The overlap share must be between 0 and 1 (0% and 100%), not {text}.")
    return share


def overlap_share(project: Project) -> float:
    """The project's overlap share (0 when never set, or when the stored value is unreadable)."""
    with project.session() as session:
        value = session.scalar(select(ProjectMeta.value).where(ProjectMeta.key == OVERLAP_KEY))
    try:
        return parse_share(value) if value is not None else 0.0
    except ValueError:
        return 0.0


def set_overlap_share(project: Project, share: float) -> float:
    """Store the share (0..1); returns it. A role that may not change project settings gets
    ``PermissionDeniedError`` (the database refuses the write)."""
    share = parse_share(share)
    try:
        with project.writing() as session:
            session.merge(ProjectMeta(key=OVERLAP_KEY, value=repr(share)))
    except PermissionDeniedError as exc:
        raise PermissionDeniedError("Only the project's owners may change the overlap share: "
                                    f"{project.actor} may not.") from exc
    return share


def overlap_fraction(image_ids: Iterable[int] | np.ndarray) -> np.ndarray:
    """A fixed pseudo-random number in [0, 1) for each image id (the same on every client)."""
    ids = np.asarray(list(image_ids) if not isinstance(image_ids, np.ndarray) else image_ids, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = ids + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def in_overlap(image_ids: Iterable[int] | np.ndarray, share: float) -> np.ndarray:
    """Boolean mask: which of ``image_ids`` are in the overlap at this share."""
    ids = np.asarray(list(image_ids) if not isinstance(image_ids, np.ndarray) else image_ids, dtype=np.int64)
    if share <= 0 or not len(ids):
        return np.zeros(len(ids), dtype=bool)
    return overlap_fraction(ids) < share


def overlap_image_ids(project: Project, share: float | None = None) -> list[int]:
    """The project's images in the overlap (ascending ids)."""
    share = overlap_share(project) if share is None else share
    if share <= 0:
        return []
    with project.session() as session:
        ids = np.asarray(session.scalars(select(Image.id).order_by(Image.id)).all(), dtype=np.int64)
    return ids[in_overlap(ids, share)].tolist()


def own_labeled_ids(project: Project, actor: str | None = None) -> set[int]:
    """Images whose standing label from ``actor`` (default: this session's) is a class: their last
    label change by that person set one (a removal withdraws it)."""
    actor = project.actor if actor is None else actor
    last: dict[int, int | None] = {}
    with project.session() as session:
        rows = session.execute(select(LabelEvent.image_id, LabelEvent.class_id).where(LabelEvent.actor == actor)
                               .order_by(LabelEvent.at, LabelEvent.id))
        for image_id, class_id in rows:
            last[int(image_id)] = class_id
    return {i for i, c in last.items() if c is not None}


def pending_overlap(project: Project, share: float | None = None, actor: str | None = None) -> dict[int, str]:
    """Overlap images a teammate labeled but this person has not: {image_id: who labeled it last},
    oldest label first (images are offered in the order teammates labeled them)."""
    share = overlap_share(project) if share is None else share
    if share <= 0:
        return {}
    actor = project.actor if actor is None else actor
    with project.engine.connect() as connection:  # Core rows, not ORM ones: ~10x quicker at 100k labels
        rows = connection.exec_driver_sql("SELECT image_id FROM labels ORDER BY labeled_at, image_id").fetchall()
        labeled = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        candidates = labeled[in_overlap(labeled, share)].tolist()
        mine: dict[int, int | None] = {}
        last_by: dict[int, str] = {}
        for chunk in in_list_chunks(candidates):  # only the overlap's events: quick however long the history
            for image_id, class_id, who in connection.execute(
                    select(LabelEvent.image_id, LabelEvent.class_id, LabelEvent.actor)
                    .where(LabelEvent.image_id.in_(chunk)).order_by(LabelEvent.at, LabelEvent.id)):
                if who == actor:
                    mine[int(image_id)] = class_id
                elif class_id is not None:
                    last_by[int(image_id)] = who or ""
    return {i: last_by.get(i, "") for i in candidates if mine.get(i) is None}


def describe_share(share: float) -> str:
    if share <= 0:
        return "No overlap: each image is offered to one person only."
    return (f"{share * 100:.3g}% of the images are shown to everyone on the team, so that their agreement "
            "can be measured.")

