"""The label history: who changed which image's label, to what, and when; and labels as they were.

Every label write in ``storage.catalog`` and ``storage.images`` records one ``label_events`` row per
image whose class changed, in the same transaction, naming ``project.actor`` (the login name by
default; team projects set the database user) and an origin: 'manual', 'suggestion', 'import',
'undo' (undo/redo), 'class removed' (a removed class unlabels its images), 'as of' (going back with
``apply_labels_as_of``).

Times: stored naive in UTC like every time in the project. Functions here take naive datetimes as
UTC and aware ones in any zone (pass ``local.astimezone()`` for a time the user typed).

How a past state is found: an image's label at time T is the ``previous_class_id`` of its first
event after T, or, when nothing changed it since T, its label now. So labels older than the history
(set before the project was upgraded to keep it) come back right too.

API (plain data, any thread):
- ``label_history(project, image_id=None, limit=200, ...) -> list[LabelEvent]``, newest first
- ``labels_as_of(project, when, image_ids=None) -> {image_id: class_id or None}``
- ``plan_labels_as_of(project, when, image_ids=None) -> AsOfPlan``: what going back would change
- ``apply_labels_as_of(project, when, image_ids=None) -> list[LabelState]``: go back in one
  transaction; returns the previous states, which ``catalog.restore_labels`` puts back (undo)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from storage.catalog import LabelState, current_label_states, record_label_events
from storage.chunks import in_list_chunks
from storage.label_writes import delete_labels, upsert_label_rows
from storage.models import Image, ImageClass, Label, utcnow
from storage.models import LabelEvent as LabelEventRow
from storage.project import Project

AS_OF_ORIGIN = "as of"


@dataclass(frozen=True)
class LabelEvent:
    """One label change. ``class_id`` None: the label was removed; ``previous_class_id`` None: the
    image had none. Names are None when the class no longer exists. ``at`` is naive UTC."""

    id: int
    image_id: int
    class_id: int | None
    previous_class_id: int | None
    class_name: str | None
    previous_class_name: str | None
    origin: str
    actor: str
    at: dt.datetime


@dataclass(frozen=True)
class AsOfPlan:
    """What ``apply_labels_as_of`` would do. ``changes``: {image_id: class it had then (None: no
    label)}, only images whose label differs now; ``missing_classes``: {image_id: class id} of
    images whose class then has since been removed (left as they are); ``considered``: how many
    images were looked at."""

    when: dt.datetime
    changes: dict[int, int | None]
    missing_classes: dict[int, int]
    considered: int


def as_utc(when: dt.datetime) -> dt.datetime:
    """A naive UTC datetime, as stored (naive input is taken as UTC already)."""
    if when.tzinfo is None:
        return when
    return when.astimezone(dt.timezone.utc).replace(tzinfo=None)


def label_history(project: Project, image_id: int | None = None, limit: int | None = 200, *,
                  image_ids: Iterable[int] | None = None, since: dt.datetime | None = None,
                  until: dt.datetime | None = None, actor: str | None = None) -> list[LabelEvent]:
    """Label changes, newest first: of one image, of some images, or of the whole project; optionally
    only those in [since, until] or by one actor. ``limit`` None: all of them."""
    new_class, old_class = aliased(ImageClass), aliased(ImageClass)
    query = (
        select(LabelEventRow, new_class.name, old_class.name)
        .outerjoin(new_class, new_class.id == LabelEventRow.class_id)
        .outerjoin(old_class, old_class.id == LabelEventRow.previous_class_id)
        .order_by(LabelEventRow.at.desc(), LabelEventRow.id.desc())
    )
    if image_id is not None:
        query = query.where(LabelEventRow.image_id == int(image_id))
    if since is not None:
        query = query.where(LabelEventRow.at >= as_utc(since))
    if until is not None:
        query = query.where(LabelEventRow.at <= as_utc(until))
    if actor is not None:
        query = query.where(LabelEventRow.actor == actor)
    with project.session() as session:
        if image_ids is None:
            rows = session.execute(query.limit(limit)).all()
        else:
            ids = list(dict.fromkeys(int(i) for i in image_ids))
            rows = [row for chunk in in_list_chunks(ids)
                    for row in session.execute(query.where(LabelEventRow.image_id.in_(chunk))).all()]
            rows.sort(key=lambda row: (row[0].at, row[0].id), reverse=True)
            rows = rows[:limit] if limit is not None else rows
        return [LabelEvent(e.id, e.image_id, e.class_id, e.previous_class_id, name, previous_name, e.origin,
                           e.actor, e.at) for e, name, previous_name in rows]


def _first_after(session: Session, when: dt.datetime, image_ids: list[int] | None) -> dict[int, int | None]:
    """{image: its class just before its first change after ``when``}, for the images changed since.
    The events after ``when``, newest first: the dict keeps each image's last one read, its first
    event after ``when`` (one indexed range scan, Core rows: quick at 100k images)."""
    connection = session.connection()
    after = (select(LabelEventRow.image_id, LabelEventRow.previous_class_id)
             .where(LabelEventRow.at > as_utc(when)).order_by(LabelEventRow.id.desc()))
    if image_ids is None:
        return dict(connection.execute(after).all())
    found: dict[int, int | None] = {}
    for chunk in in_list_chunks(image_ids):
        found.update(connection.execute(after.where(LabelEventRow.image_id.in_(chunk))).all())
    return found


def _current_classes(session: Session, image_ids: list[int] | None) -> dict[int, int]:
    connection = session.connection()
    query = select(Label.image_id, Label.class_id)
    if image_ids is None or len(image_ids) > 20_000:  # one scan beats many IN lists
        labels = dict(connection.execute(query).all())
        return labels if image_ids is None else {i: labels[i] for i in image_ids if i in labels}
    return {i: c for chunk in in_list_chunks(image_ids) for i, c in connection.execute(query.where(
        Label.image_id.in_(chunk))).all()}


def _existing_images(session: Session, image_ids: list[int] | None) -> list[int]:
    connection = session.connection()
    if image_ids is None:
        return list(connection.execute(select(Image.id)).scalars())
    return [i for chunk in in_list_chunks(image_ids)
            for i in connection.execute(select(Image.id).where(Image.id.in_(chunk))).scalars()]


def _as_of_in(session: Session, when: dt.datetime, image_ids: list[int] | None) -> dict[int, int | None]:
    state: dict[int, int | None] = dict.fromkeys(_existing_images(session, image_ids))
    state.update(_current_classes(session, image_ids))
    state.update(_first_after(session, when, image_ids))
    return state


def labels_as_of(project: Project, when: dt.datetime, image_ids: Iterable[int] | None = None
                 ) -> dict[int, int | None]:
    """Each image's class at ``when`` (None: unlabeled then, or not imported yet), for these images or
    for every image in the project. Images that no longer exist are left out."""
    ids = None if image_ids is None else list(dict.fromkeys(int(i) for i in image_ids))
    with project.session() as session:
        return _as_of_in(session, when, ids)


def _plan_in(session: Session, when: dt.datetime, image_ids: list[int] | None) -> AsOfPlan:
    then = _first_after(session, when, image_ids)  # only images changed since can differ
    now = _current_classes(session, list(then))
    classes = set(session.connection().execute(select(ImageClass.id)).scalars())
    changes: dict[int, int | None] = {}
    missing: dict[int, int] = {}
    for image_id, class_id in then.items():
        if class_id == now.get(image_id):
            continue
        if class_id is not None and class_id not in classes:
            missing[image_id] = class_id
        else:
            changes[image_id] = class_id
    if image_ids is None:
        considered = session.connection().execute(select(func.count()).select_from(Image)).scalar_one()
    else:
        considered = len(_existing_images(session, image_ids))
    return AsOfPlan(as_utc(when), changes, missing, considered)


def plan_labels_as_of(project: Project, when: dt.datetime, image_ids: Iterable[int] | None = None) -> AsOfPlan:
    """What going back to the labels of ``when`` would change (nothing is written)."""
    ids = None if image_ids is None else list(dict.fromkeys(int(i) for i in image_ids))
    with project.session() as session:
        return _plan_in(session, when, ids)


def apply_labels_as_of(project: Project, when: dt.datetime, image_ids: Iterable[int] | None = None
                       ) -> list[LabelState]:
    """Give these images (None: all) the labels they had at ``when``, in one write transaction that
    records 'as of' events. Images whose class then has since been removed keep their label. Returns
    the previous states of the images it changed: ``catalog.restore_labels`` undoes it."""
    ids = None if image_ids is None else list(dict.fromkeys(int(i) for i in image_ids))
    now = utcnow()
    with project.writing() as session:
        plan = _plan_in(session, when, ids)
        changed = list(plan.changes)
        current = current_label_states(session, changed)
        before = [current.get(i) or LabelState(i, None, None, None) for i in changed]
        record_label_events(session, project, ((s.image_id, s.class_id, plan.changes[s.image_id]) for s in before),
                            AS_OF_ORIGIN)
        upsert_label_rows(session, [  # one Core executemany: quick at 100k images
            {"image_id": i, "class_id": c, "origin": "manual", "labeled_at": now, "reviewed_at": None,
             "twins_checked": False} for i, c in plan.changes.items() if c is not None])
        delete_labels(session, [s.image_id for s in before
                                if s.class_id is not None and plan.changes[s.image_id] is None])
    return before
