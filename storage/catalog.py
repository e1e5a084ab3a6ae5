"""Classes and labels: the user's sorting scheme, as plain-data functions over a Project.

Every function opens its own short-lived session and returns dataclasses, never ORM objects,
so it is safe to call from any thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.chunks import in_list_chunks
from storage.errors import ProjectError
from storage import label_writes
from storage.label_writes import (  # noqa: F401  (LabelState and current_label_states are catalog's API too)
    LabelState,
    current_label_states,
    delete_labels,
    upsert_label_rows,
    write_labels,
)
from storage.models import Image, ImageClass, Label, utcnow
from storage.project import Project

# Distinct, colour-blind-friendly defaults (Okabe-Ito first, then Tableau).
DEFAULT_COLORS = [
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
    "#4E79A7", "#F28E2B", "#59A14F", "#B07AA1", "#9C755F", "#EDC948", "#76B7B2",
]
SHORTCUT_KEYS = "1234567890"  # the keyboard's number row, left to right: the tenth class gets 0
LABEL_ORIGINS = ("manual", "suggestion", "import")


class UnknownClassError(ProjectError):
    """A class name or id that the project does not have."""


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    color: str
    position: int
    shortcut: str | None
    count: int = 0


def record_label_events(session: Session, project: Project, changes: Iterable[tuple[int, int | None, int | None]],
                        origin: str) -> int:
    """Write the label history of ``changes`` ((image_id, previous_class_id, class_id); None = no label)
    in the caller's write transaction, as ``project.actor``, now (``label_writes.record_label_events``)."""
    return label_writes.record_label_events(session, project, changes, origin, utcnow())


def _validate_name(name: str) -> str:
    cleaned = " ".join(str(name).split())
    if not cleaned:
        raise ProjectError("A class name cannot be empty.")
    if len(cleaned) > 255:
        raise ProjectError("A class name can have at most 255 characters.")
    return cleaned


def list_classes(project: Project) -> list[ClassInfo]:
    """All classes in display order, each with its number of labeled images."""
    with project.session() as session:
        counts = dict(session.execute(select(Label.class_id, func.count()).group_by(Label.class_id)).all())
        rows = session.scalars(select(ImageClass).order_by(ImageClass.position, ImageClass.id)).all()
        return [
            ClassInfo(row.id, row.name, row.color, row.position, row.shortcut, counts.get(row.id, 0))
            for row in rows
        ]


def labeled_class_count(project: Project, at_most: int | None = None) -> int:
    """How many classes have labeled images, counting no further than ``at_most`` (whether training
    can succeed needs two: a couple of index look-ups, quick at 100k labels)."""
    query = select(Label.class_id).distinct()
    if at_most is not None:
        query = query.limit(at_most)
    with project.session() as session:
        return len(session.scalars(query).all())


def find_class(project: Project, name: str) -> ClassInfo:
    for info in list_classes(project):
        if info.name == name:
            return info
    known = ", ".join(c.name for c in list_classes(project)) or "none yet"
    raise UnknownClassError(f"No class named '{name}' (classes: {known}).")


def add_class(project: Project, name: str, color: str | None = None) -> ClassInfo:
    name = _validate_name(name)
    with project.writing() as session:
        if session.scalar(select(ImageClass.id).where(ImageClass.name == name)) is not None:
            raise ProjectError(f"A class named '{name}' already exists.")
        existing = session.scalars(select(ImageClass)).all()
        used_shortcuts = {c.shortcut for c in existing}
        position = max((c.position for c in existing), default=-1) + 1
        shortcut = next((k for k in SHORTCUT_KEYS if k not in used_shortcuts), None)
        color = color or DEFAULT_COLORS[len(existing) % len(DEFAULT_COLORS)]
        row = ImageClass(name=name, color=color, position=position, shortcut=shortcut)
        session.add(row)
        session.flush()
        return ClassInfo(row.id, row.name, row.color, row.position, row.shortcut, 0)


def ensure_classes(project: Project, names: Iterable[str]) -> dict[str, int]:
    """Class ids by name, creating the classes that do not exist yet (for folder-per-class imports)."""
    ids = {c.name: c.id for c in list_classes(project)}
    for name in names:
        cleaned = _validate_name(name)
        if cleaned not in ids:
            ids[cleaned] = add_class(project, cleaned).id
        ids[name] = ids[cleaned]
    return ids


def rename_class(project: Project, class_id: int, new_name: str) -> None:
    new_name = _validate_name(new_name)
    with project.writing() as session:
        row = session.get(ImageClass, class_id)
        if row is None:
            raise UnknownClassError(f"No class with id {class_id}.")
        clash = session.scalar(select(ImageClass.id).where(ImageClass.name == new_name, ImageClass.id != class_id))
        if clash is not None:
            raise ProjectError(f"A class named '{new_name}' already exists.")
        row.name = new_name


def recolor_class(project: Project, class_id: int, color: str) -> None:
    with project.writing() as session:
        row = session.get(ImageClass, class_id)
        if row is None:
            raise UnknownClassError(f"No class with id {class_id}.")
        row.color = color


def reorder_classes(project: Project, ordered_ids: Sequence[int]) -> None:
    """Set display order; shortcut keys (1-9, then 0) follow the new order."""
    with project.writing() as session:
        rows = {row.id: row for row in session.scalars(select(ImageClass))}
        if set(ordered_ids) != set(rows):
            raise ProjectError("Reordering must list every class exactly once.")
        for position, class_id in enumerate(ordered_ids):
            rows[class_id].position = position
            rows[class_id].shortcut = SHORTCUT_KEYS[position] if position < len(SHORTCUT_KEYS) else None


def remove_class(project: Project, class_id: int) -> int:
    """Delete a class; its images become unlabeled. Returns how many labels were removed."""
    with project.writing() as session:
        row = session.get(ImageClass, class_id)
        if row is None:
            raise UnknownClassError(f"No class with id {class_id}.")
        labeled = session.scalars(select(Label.image_id).where(Label.class_id == class_id)).all()
        record_label_events(session, project, ((i, class_id, None) for i in labeled), "class removed")
        removed = session.execute(delete(Label).where(Label.class_id == class_id)).rowcount
        session.delete(row)
    remaining = [c.id for c in list_classes(project)]
    reorder_classes(project, remaining)
    return removed


def label_states(project: Project, image_ids: Iterable[int]) -> list[LabelState]:
    """Current labels of these images (for undo), in the order given."""
    image_ids = list(image_ids)
    with project.session() as session:
        rows = current_label_states(session, image_ids)
    return [rows.get(i) or LabelState(i, None, None, None) for i in image_ids]


def _unknown_class(project: Project, class_ids: Iterable[int | None]) -> UnknownClassError | None:
    """The clear error for a label write the labels' foreign key refused (None: every class exists)."""
    wanted = {int(c) for c in class_ids if c is not None}
    with project.session() as session:
        known = set(session.scalars(select(ImageClass.id).where(ImageClass.id.in_(wanted)))) if wanted else set()
    unknown = sorted(wanted - known)
    return UnknownClassError(f"No class with id {unknown[0]}.") if unknown else None


def _write(project: Project, assignments: dict[int, int | None], origin: str) -> list[LabelState]:
    """``write_labels`` in its own write transaction, an unknown class turned into UnknownClassError."""
    try:
        with project.writing() as session:
            return write_labels(session, project, assignments, origin, utcnow())
    except IntegrityError as exc:
        clear = _unknown_class(project, assignments.values())
        if clear is None:
            raise
        raise clear from exc


def set_labels(
    project: Project, image_ids: Iterable[int], class_id: int | None, origin: str = "manual"
) -> list[LabelState]:
    """Label (or, with class_id None, unlabel) images in one transaction; returns the previous states.
    A label that changes class loses its review mark (the user has not looked at the new one).
    One label key is a few statements (``storage.label_writes``); an image or class the project does
    not have raises a ProjectError naming it, and nothing is written."""
    if origin not in LABEL_ORIGINS:
        raise ValueError(f"origin must be one of {LABEL_ORIGINS}")
    image_ids = list(dict.fromkeys(int(i) for i in image_ids))
    class_id = None if class_id is None else int(class_id)
    if not image_ids:
        unknown = _unknown_class(project, [class_id])
        if unknown is not None:
            raise unknown
        return []
    return _write(project, dict.fromkeys(image_ids, class_id), origin)


def restore_labels(project: Project, states: Iterable[LabelState]) -> None:
    """Put labels back exactly as they were, review marks included (undo/redo)."""
    restore_label_states(project, states, origin="undo")


def restore_label_states(project: Project, states: Iterable[LabelState], origin: str) -> None:
    """``restore_labels`` with the label history naming ``origin`` as what made the change."""
    states = list(states)
    with project.writing() as session:
        ids = [s.image_id for s in states]
        current = current_label_states(session, ids)
        if origin == "undo":  # team projects: a teammate's later label stays (undo undoes only your own)
            from storage.team_store import without_teammates_changes

            states = without_teammates_changes(session, project, states)
        previous = {i: state.class_id for i, state in current.items()}
        record_label_events(session, project, ((s.image_id, previous.get(s.image_id), s.class_id) for s in states),
                            origin)
        upsert_label_rows(session, [  # one executemany: undoing a large step stays quick
            {"image_id": s.image_id, "class_id": s.class_id, "origin": s.origin or "manual",
             "labeled_at": s.labeled_at or utcnow(), "reviewed_at": s.reviewed_at, "twins_checked": False}
            for s in states if s.class_id is not None])
        delete_labels(session, [s.image_id for s in states if s.class_id is None and s.image_id in current])


def set_labels_by_class(project: Project, assignments: dict[int, int], origin: str = "manual") -> list[LabelState]:
    """Give each image its own class in one transaction ({image_id: class_id}), e.g. accepting suggestions.
    As with ``set_labels``, only labels that keep their class keep their review mark."""
    return _write(project, {int(i): int(c) for i, c in assignments.items()}, origin)


def mark_reviewed(project: Project, image_ids: Iterable[int], reviewed: bool = True) -> list[LabelState]:
    """Mark labels as kept by the user (the review queue stops asking about them until they change), or
    with ``reviewed=False`` ask again. Unlabeled images are skipped. Returns the previous states, for
    undo with ``restore_labels``."""
    image_ids = list(dict.fromkeys(int(i) for i in image_ids))
    before = [state for state in label_states(project, image_ids) if state.class_id is not None]
    with project.writing() as session:
        for chunk in in_list_chunks([s.image_id for s in before]):
            session.execute(update(Label).where(Label.image_id.in_(chunk))
                            .values(reviewed_at=utcnow() if reviewed else None))
    return before


def reviewed_image_ids(project: Project) -> set[int]:
    """Images whose current label the user kept in the review queue."""
    with project.session() as session:
        return set(session.scalars(select(Label.image_id).where(Label.reviewed_at.is_not(None))))


def set_split(project: Project, image_ids: Iterable[int], split: str, pinned: bool = True) -> None:
    """Pin images to the training or validation side (the engine keeps pinned images where they are)."""
    if split not in ("train", "val"):
        raise ProjectError("The split must be 'train' or 'val'.")
    ids = list(image_ids)
    with project.writing() as session:
        for chunk in in_list_chunks(ids):
            session.execute(update(Image).where(Image.id.in_(chunk)).values(split=split, split_pinned=pinned))
