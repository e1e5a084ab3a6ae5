"""Classes and labels: CRUD, shortcuts, undo states, and clear errors."""

from __future__ import annotations

import datetime as dt
import sqlite3

import numpy as np
import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError

from storage import catalog
from storage.chunks import IN_LIST_LIMIT, in_list_chunks
from storage.errors import ProjectError
from storage.models import Image


def _add_images(project, n):
    with project.writing() as session:
        rows = [
            Image(content_hash=f"h{i}", original_name=f"{i}.jpg", original_path=f"/x/{i}.jpg", source="cam",
                  width=4, height=3, original_format="JPEG", data=b"x", thumbnail=b"t")
            for i in range(n)
        ]
        session.add_all(rows)
        session.flush()
        return [r.id for r in rows]


def test_classes_get_shortcuts_colors_and_counts(project):
    ids = _add_images(project, 3)
    ant = catalog.add_class(project, "ant")
    bee = catalog.add_class(project, "  bee  ")
    assert (ant.shortcut, bee.shortcut, bee.name) == ("1", "2", "bee")
    assert ant.color != bee.color
    catalog.set_labels(project, ids[:2], ant.id)
    counts = {c.name: c.count for c in catalog.list_classes(project)}
    assert counts == {"ant": 2, "bee": 0}


def test_shortcuts_follow_the_number_row_so_the_tenth_class_gets_zero(project):
    for name in "cdefghijklm":  # eleven classes
        catalog.add_class(project, name)
    assert [c.shortcut for c in catalog.list_classes(project)] == list("1234567890") + [None]
    ordered = [c.id for c in catalog.list_classes(project)]
    catalog.reorder_classes(project, ordered[-1:] + ordered[:-1])
    assert [c.shortcut for c in catalog.list_classes(project)][:2] == ["1", "2"]
    assert catalog.list_classes(project)[9].shortcut == "0" and catalog.list_classes(project)[10].shortcut is None


def test_duplicate_and_empty_names_are_refused(project):
    catalog.add_class(project, "ant")
    with pytest.raises(ProjectError, match="already exists"):
        catalog.add_class(project, "ant")
    with pytest.raises(ProjectError, match="empty"):
        catalog.add_class(project, "   ")


def test_sql_looking_names_are_just_names(project):
    name = "x'); DROP TABLE images; --"
    catalog.add_class(project, name)
    assert catalog.find_class(project, name).name == name
    _add_images(project, 1)


def test_set_labels_returns_previous_state_for_undo(project):
    ids = _add_images(project, 3)
    ant = catalog.add_class(project, "ant")
    bee = catalog.add_class(project, "bee")
    catalog.set_labels(project, ids, ant.id)
    before = catalog.set_labels(project, ids[:2], bee.id)
    assert [s.class_id for s in before] == [ant.id, ant.id]
    catalog.restore_labels(project, before)
    assert [s.class_id for s in catalog.label_states(project, ids)] == [ant.id] * 3
    catalog.set_labels(project, ids[:1], None)
    assert catalog.label_states(project, ids[:1])[0].class_id is None


def test_remove_class_unlabels_its_images_and_renumbers_shortcuts(project):
    ids = _add_images(project, 2)
    ant = catalog.add_class(project, "ant")
    bee = catalog.add_class(project, "bee")
    catalog.set_labels(project, ids, ant.id)
    assert catalog.remove_class(project, ant.id) == 2
    remaining = catalog.list_classes(project)
    assert [(c.name, c.shortcut) for c in remaining] == [("bee", "1")]
    assert all(s.class_id is None for s in catalog.label_states(project, ids))


def test_rename_reorder_and_unknown_class(project):
    ant = catalog.add_class(project, "ant")
    bee = catalog.add_class(project, "bee")
    catalog.rename_class(project, ant.id, "ants")
    catalog.reorder_classes(project, [bee.id, ant.id])
    assert [(c.name, c.shortcut) for c in catalog.list_classes(project)] == [("bee", "1"), ("ants", "2")]
    with pytest.raises(catalog.UnknownClassError, match="No class named"):
        catalog.find_class(project, "wasp")
    with pytest.raises(ProjectError, match="No image"):
        catalog.set_labels(project, [999], bee.id)


def test_in_list_chunks_keep_every_item_once_in_order():
    items = list(range(2 * IN_LIST_LIMIT + 5))
    chunks = list(in_list_chunks(iter(items)))
    assert [len(c) for c in chunks] == [IN_LIST_LIMIT, IN_LIST_LIMIT, 5]
    assert [i for c in chunks for i in c] == items
    assert list(in_list_chunks([])) == []


def test_long_id_lists_work_where_sqlite_allows_only_999_parameters(project):
    """SQLite builds before 3.32 refuse a statement with over 999 bound parameters: labeling, undoing,
    reading, splitting and storing features of 1500 images at once must still work there (storage
    sends IN lists in chunks)."""
    from storage.featurestore import ensure_feature_set, load_vectors, store_vectors
    from storage.images import existing_hashes, list_images, read_thumbnails
    from storage.splits import write_splits

    ids = _add_images(project, 1500)
    ant = catalog.add_class(project, "ant")
    bee = catalog.add_class(project, "bee")

    @event.listens_for(project.engine, "connect")
    def _old_sqlite(dbapi_connection, _record):
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

    project.engine.dispose()  # pooled connections reconnect with the old limit
    with project.session() as session, pytest.raises(OperationalError, match="too many SQL variables"):
        session.execute(select(Image.id).where(Image.id.in_(ids))).all()

    catalog.set_labels(project, ids, ant.id)
    before = catalog.set_labels(project, ids, bee.id)
    assert catalog.list_classes(project)[1].count == 1500
    catalog.restore_labels(project, before)
    assert {s.class_id for s in catalog.label_states(project, ids)} == {ant.id}
    assert [info.id for info in list_images(project, ids)] == ids
    assert len(read_thumbnails(project, ids)) == 1500
    assert len(existing_hashes(project, [f"h{i}" for i in range(1500)])) == 1500

    write_splits(project, dict.fromkeys(ids, "val"), dt.datetime(2026, 1, 1))
    assert {info.split for info in list_images(project, ids)} == {"val"}
    feature_set = ensure_feature_set(project, "net", "pooled", 4)
    assert store_vectors(project, feature_set.id, ids, np.ones((1500, 4), np.float32)) == 1500
    assert load_vectors(project, "net", "pooled", ids)[0].tolist() == ids


def test_sides_are_written_in_short_transactions_with_the_time_last(project, monkeypatch):
    """A label key on the GUI thread waits for at most one chunk of a training's side assignment."""
    import storage.splits as splits
    from storage.images import list_images

    ids = _add_images(project, 25)
    catalog.set_split(project, [ids[0]], "train")  # pinned by the user: keeps its side
    monkeypatch.setattr(splits, "SPLIT_WRITE_CHUNK", 10)
    transactions = []
    writing = type(project).writing

    def counted(self):
        transactions.append(splits.splits_assigned_at(self))
        return writing(self)

    monkeypatch.setattr(type(project), "writing", counted)
    when = dt.datetime(2026, 1, 2, 3, 4, 5)
    splits.write_splits(project, dict.fromkeys(ids, "val"), when)
    assert len(transactions) == 4  # 3 chunks of at most 10 images, then the time
    assert transactions[-1] is None  # the time was not yet written while sides were
    assert splits.splits_assigned_at(project) == when
    sides = {info.id: info.split for info in list_images(project, ids)}
    assert sides[ids[0]] == "train" and {sides[i] for i in ids[1:]} == {"val"}
