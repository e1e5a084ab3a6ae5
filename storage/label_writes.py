"""How labels are written: the few statements behind one label key, on both backends.

A label write reads each image's current label (undo needs it, the history needs the class it had),
records the changes in ``label_events`` and upserts the new labels (``INSERT ... ON CONFLICT (image_id)
DO UPDATE``, SQLite >= 3.24 and PostgreSQL), all in the caller's write transaction:

- a file project: ``BEGIN IMMEDIATE`` (one writer at a time), one SELECT of the images and their labels
  (a missing image is found here, before anything is written), one INSERT of the events, one upsert (or
  a DELETE when labels are removed);
- a team project: the per-image advisory lock (``backends.lock_images_for_labeling``), then one statement
  that reads, records and writes together (a data-modifying WITH: every part sees the labels as they were
  when it started, which is after the lock, so after any other writer of these images committed).

An unknown class is the labels table's foreign key refusing the row; ``set_labels`` turns that into
``UnknownClassError`` (one look-up, only on that path). Concurrency: two people labeling one image at
once are serialised by the lock (team) or by SQLite's single writer (file), so each write's history
event names the label the other one left, and nothing is lost or duplicated.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Boolean, DateTime, Integer, String, bindparam, delete, select, text
from sqlalchemy.orm import Session

from storage.backends import lock_images_for_labeling
from storage.chunks import in_list_chunks
from storage.errors import ProjectError
from storage.models import Image, Label, LabelEvent, utcnow

LABEL_COLUMNS = ("class_id", "labeled_at", "origin", "reviewed_at", "twins_checked")


@dataclass(frozen=True)
class LabelState:
    """An image's label as it was: what undo needs to restore it (class_id None = unlabeled).
    ``reviewed_at``: when the user kept the label in the review queue (None: not reviewed)."""

    image_id: int
    class_id: int | None
    origin: str | None
    labeled_at: dt.datetime | None
    reviewed_at: dt.datetime | None = None


def record_label_events(session: Session, project, changes: Iterable[tuple[int, int | None, int | None]],
                        origin: str, at: dt.datetime | None = None) -> int:
    """Write the label history of ``changes`` ((image_id, previous_class_id, class_id); None = no label)
    in the caller's write transaction, as ``project.actor``, at ``at`` (default now). Unchanged labels are
    skipped; one executemany, so a label key stays a few-row write. Returns how many events were written."""
    at = at or utcnow()
    actor = getattr(project, "actor", "") or ""
    # A label given again is kept too (someone confirming it: agreement between labelers needs it,
    # storage.team_agreement): always in team projects, and for a person's own key in a file project.
    confirmations = getattr(project, "is_database", False) or origin == "manual"
    rows = [{"image_id": i, "previous_class_id": p, "class_id": c, "origin": origin, "actor": actor, "at": at}
            for i, p, c in changes if p != c or (confirmations and c is not None)]
    if rows:
        session.connection().execute(_INSERT_EVENTS, rows)  # Core executemany, not the ORM bulk path
    return len(rows)


_INSERT_EVENTS = LabelEvent.__table__.insert()
# The images asked for and their labels, if any (an image missing here does not exist): built once.
_IMAGES_AND_LABELS = (select(Image.id, Label.class_id, Label.origin, Label.labeled_at, Label.reviewed_at)
                      .outerjoin(Label, Label.image_id == Image.id)
                      .where(Image.id.in_(bindparam("ids", expanding=True))))


def current_label_states(session: Session, image_ids: list[int]) -> dict[int, LabelState]:
    lock_images_for_labeling(session, image_ids)  # team projects: one writer per image at a time
    columns = select(Label.image_id, Label.class_id, Label.origin, Label.labeled_at, Label.reviewed_at)
    return {
        row[0]: LabelState(*row)
        for chunk in in_list_chunks(image_ids)
        for row in session.execute(columns.where(Label.image_id.in_(chunk)))
    }


# Written out (a dialect's insert().on_conflict_do_update() is not in SQLAlchemy's compiled cache, and
# compiling it again on every label key costs more than running it). Valid for SQLite and PostgreSQL.
_UPSERT = text(
    "INSERT INTO labels (image_id, class_id, labeled_at, origin, reviewed_at, twins_checked) "
    "VALUES (:image_id, :class_id, :labeled_at, :origin, :reviewed_at, :twins_checked) "
    "ON CONFLICT (image_id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in LABEL_COLUMNS)
).bindparams(bindparam("image_id", type_=Integer), bindparam("class_id", type_=Integer),
             bindparam("labeled_at", type_=DateTime), bindparam("origin", type_=String),
             bindparam("reviewed_at", type_=DateTime), bindparam("twins_checked", type_=Boolean))


def upsert_label_rows(session: Session, rows: list[dict]) -> None:
    """Insert or replace whole label rows (dicts with image_id and every LABEL_COLUMNS value): one
    executemany upsert instead of a DELETE and an INSERT."""
    if rows:
        session.connection().execute(_UPSERT, rows)


def delete_labels(session: Session, image_ids: list[int]) -> None:
    for chunk in in_list_chunks(image_ids):
        session.execute(delete(Label).where(Label.image_id.in_(chunk)))


def _missing(image_ids: Iterable[int]) -> ProjectError:
    return ProjectError(f"No image with id {', '.join(map(str, list(image_ids)[:5]))}.")


def _kept_review(state: LabelState, class_id: int | None) -> dt.datetime | None:
    """A review mark survives a relabeling only when the class stays the same."""
    return state.reviewed_at if state.class_id is not None and state.class_id == class_id else None


def write_labels(session: Session, project, assignments: dict[int, int | None], origin: str,
                 now: dt.datetime) -> list[LabelState]:
    """Give each image its class ({image_id: class_id or None to remove the label}) in the caller's write
    transaction, with its history events; returns the previous states in the order given. An image that
    does not exist raises ProjectError before anything is written; an unknown class makes the labels'
    foreign key raise IntegrityError."""
    if not assignments:
        return []
    if session.connection().dialect.name == "postgresql":
        return _write_labels_pg(session, project, assignments, origin, now)
    ids = list(assignments)
    found: dict[int, LabelState] = {}
    connection = session.connection()
    for chunk in in_list_chunks(ids):
        for row in connection.execute(_IMAGES_AND_LABELS, {"ids": chunk}):
            found[row[0]] = LabelState(*row) if row[1] is not None else LabelState(row[0], None, None, None)
    if len(found) < len(ids):
        raise _missing(i for i in ids if i not in found)
    before = [found[i] for i in ids]
    record_label_events(session, project, ((s.image_id, s.class_id, assignments[s.image_id]) for s in before),
                        origin, now)
    upsert_label_rows(session, [
        {"image_id": s.image_id, "class_id": assignments[s.image_id], "labeled_at": now, "origin": origin,
         "reviewed_at": _kept_review(s, assignments[s.image_id]), "twins_checked": False}
        for s in before if assignments[s.image_id] is not None])
    delete_labels(session, [s.image_id for s in before if assignments[s.image_id] is None and s.class_id is not None])
    return before


# One statement after the lock: the old labels (and which images exist), the history events and the new
# labels. Every part of a WITH sees the same snapshot, taken after the lock was granted.
_PG_WRITE = text("""
WITH wanted AS (
    SELECT w.image_id, w.class_id
    FROM unnest(CAST(:ids AS integer[]), CAST(:classes AS integer[])) AS w(image_id, class_id)
), old AS (
    SELECT w.image_id, w.class_id AS new_class, i.id IS NOT NULL AS found,
           l.class_id, l.origin, l.labeled_at, l.reviewed_at
    FROM wanted w LEFT JOIN images i ON i.id = w.image_id LEFT JOIN labels l ON l.image_id = w.image_id
), events AS (
    INSERT INTO label_events (image_id, class_id, previous_class_id, origin, actor, at)
    SELECT image_id, new_class, class_id, CAST(:origin AS VARCHAR), CAST(:actor AS VARCHAR),
           CAST(:at AS TIMESTAMP WITHOUT TIME ZONE)
    FROM old WHERE found AND (new_class IS NOT NULL OR class_id IS NOT NULL)
    ORDER BY image_id
), labeled AS (
    INSERT INTO labels (image_id, class_id, labeled_at, origin, reviewed_at, twins_checked)
    SELECT image_id, new_class, CAST(:at AS TIMESTAMP WITHOUT TIME ZONE), CAST(:origin AS VARCHAR),
           CASE WHEN class_id = new_class THEN reviewed_at END, false
    FROM old WHERE found AND new_class IS NOT NULL
    ON CONFLICT (image_id) DO UPDATE SET class_id = EXCLUDED.class_id, labeled_at = EXCLUDED.labeled_at,
        origin = EXCLUDED.origin, reviewed_at = EXCLUDED.reviewed_at, twins_checked = false
), removed AS (
    DELETE FROM labels WHERE image_id IN (
        SELECT image_id FROM old WHERE found AND new_class IS NULL AND class_id IS NOT NULL)
)
SELECT image_id, found, class_id, origin, labeled_at, reviewed_at FROM old
""")


def _write_labels_pg(session: Session, project, assignments: dict[int, int | None], origin: str,
                     now: dt.datetime) -> list[LabelState]:
    """A team project's label write: the lock, then one statement (the history names every class given,
    a teammate confirming a label too, as ``record_label_events`` does for team projects)."""
    ids = list(assignments)
    lock_images_for_labeling(session, ids)
    rows = session.connection().execute(_PG_WRITE, {
        "ids": ids, "classes": [assignments[i] for i in ids], "origin": origin,
        "actor": getattr(project, "actor", "") or "", "at": now}).all()
    missing = [row[0] for row in rows if not row[1]]
    if missing:
        raise _missing(missing)  # the caller's transaction rolls back what the statement wrote
    found = {row[0]: LabelState(row[0], row[2], row[3], row[4], row[5]) if row[2] is not None
             else LabelState(row[0], None, None, None) for row in rows}
    return [found[i] for i in ids]
