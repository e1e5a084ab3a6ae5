"""Project file: creation, pragmas, migrations from the first revision, clear errors."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import select, text

from storage.catalog import label_states, mark_reviewed
from storage.errors import NewerProjectError, NotAProjectError, ReadOnlyProjectError
from storage.near_duplicates import add_near_duplicates, unchecked_labeled_ids
from storage.outliers import replace_outliers, stored_outliers
from storage.models import Image, ImageClass, Label
from storage.project import (
    backup_path,
    create_project,
    current_revision,
    head_revision,
    open_project,
    project_meta,
)


def test_new_project_is_at_head_with_wal_and_foreign_keys(project):
    assert current_revision(project) == head_revision()
    with project.session() as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1
    assert project_meta(project)["app"] == "sortlab"


def test_upgrade_from_first_revision_keeps_data_and_makes_backup(tmp_path):
    path = tmp_path / "old.sortlab"
    old = create_project(path, revision="0001")
    with old.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO images (id, content_hash, original_name, original_path, source, width, height,"
                " original_format, imported_at, data, thumbnail) VALUES (1, 'h', 'a.jpg', '/a.jpg', 'cam1',"
                " 4, 3, 'JPEG', '2026-01-01 00:00:00', x'00', x'00')"
            )
        )
        connection.execute(text("INSERT INTO classes (id, name, color, position) VALUES (1, 'ant', '#ff0000', 0)"))
        connection.execute(
            text("INSERT INTO labels (image_id, class_id, labeled_at, origin) VALUES (1, 1, '2026-01-01', 'manual')")
        )
    old.close()

    upgraded = open_project(path)
    try:
        assert current_revision(upgraded) == head_revision() != "0001"
        assert backup_path(path, "0001").exists()
        with upgraded.session() as session:
            image = session.get(Image, 1)
            assert image.split == "train" and image.split_pinned is False
            assert session.scalars(select(Label.class_id)).all() == [1]
            assert session.get(ImageClass, 1).name == "ant"
    finally:
        upgraded.close()


def test_upgrade_from_0002_adds_review_marks_near_duplicates_and_outliers(tmp_path):
    path = tmp_path / "before-review.sortlab"
    old = create_project(path, revision="0002")
    with old.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO images (id, content_hash, original_name, original_path, source, width, height,"
            " original_format, imported_at, data, thumbnail, split, split_pinned) VALUES (1, 'h', 'a.jpg',"
            " '/a.jpg', 'cam1', 4, 3, 'JPEG', '2026-01-01 00:00:00', x'00', x'00', 'val', 1)"))
        connection.execute(text("INSERT INTO classes (id, name, color, position) VALUES (1, 'ant', '#ff0000', 0)"))
        connection.execute(text(
            "INSERT INTO labels (image_id, class_id, labeled_at, origin) VALUES (1, 1, '2026-01-01', 'manual')"))
    old.close()

    upgraded = open_project(path)
    try:
        assert current_revision(upgraded) == head_revision()
        assert backup_path(path, "0002").exists()
        with upgraded.session() as session:
            label = session.get(Label, 1)
            assert (label.class_id, label.reviewed_at, label.twins_checked) == (1, None, False)
            assert session.get(Image, 1).split == "val"
        # The new tables work, and the new columns do what they are for.
        add_near_duplicates(upgraded, [1], [1], [1.0], checked=[1])
        assert unchecked_labeled_ids(upgraded) == []
        assert replace_outliers(upgraded, [(1, 4.2, ["looks like no other image"])]) == 1
        assert [o.image_id for o in stored_outliers(upgraded)] == [1]
        mark_reviewed(upgraded, [1])
        assert label_states(upgraded, [1])[0].reviewed_at is not None
    finally:
        upgraded.close()


def test_upgrade_from_0003_adds_the_label_history(tmp_path):
    import datetime as dt

    from storage.catalog import set_labels
    from storage.label_history import label_history, labels_as_of

    path = tmp_path / "before-history.sortlab"
    old = create_project(path, revision="0003")
    with old.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO images (id, content_hash, original_name, original_path, source, width, height,"
            " original_format, imported_at, data, thumbnail) VALUES (1, 'h', 'a.jpg', '/a.jpg', 'cam1', 4, 3,"
            " 'JPEG', '2026-01-01 00:00:00', x'00', x'00')"))
        connection.execute(text("INSERT INTO classes (id, name, color, position) VALUES (1, 'ant', '#ff0000', 0),"
                                " (2, 'bee', '#00ff00', 1)"))
        connection.execute(text(
            "INSERT INTO labels (image_id, class_id, labeled_at, origin) VALUES (1, 1, '2026-01-01', 'manual')"))
    old.close()

    upgraded = open_project(path)
    try:
        assert current_revision(upgraded) == head_revision()
        assert backup_path(path, "0003").exists()
        assert label_history(upgraded) == []
        before_any_change = dt.datetime.now(dt.timezone.utc)
        set_labels(upgraded, [1], 2)
        assert [(e.previous_class_id, e.class_id) for e in label_history(upgraded, 1)] == [(1, 2)]
        assert labels_as_of(upgraded, before_any_change) == {1: 1}  # the label from before the history
    finally:
        upgraded.close()


def test_not_a_project_gives_clear_message(tmp_path):
    text_file = tmp_path / "notes.sortlab"
    text_file.write_text("hello")
    with pytest.raises(NotAProjectError, match="not a Sortlab project"):
        open_project(text_file)

    other_db = tmp_path / "other.sortlab"
    sqlite3.connect(other_db).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(NotAProjectError, match="not a Sortlab project"):
        open_project(other_db)


def test_newer_project_gives_clear_message(tmp_path):
    path = tmp_path / "future.sortlab"
    create_project(path).close()
    connection = sqlite3.connect(path)
    connection.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    connection.commit()
    connection.close()
    with pytest.raises(NewerProjectError, match="newer version of Sortlab"):
        open_project(path)


def test_read_only_project_gives_clear_message(tmp_path):
    import os

    path = tmp_path / "ro.sortlab"
    create_project(path).close()
    os.chmod(path, 0o444)
    try:
        with pytest.raises(ReadOnlyProjectError, match="read-only"):
            open_project(path)
    finally:
        os.chmod(path, 0o644)


def test_write_rolls_back_on_error(project):
    with pytest.raises(RuntimeError):
        with project.writing() as session:
            session.add(ImageClass(name="ghost", color="#000000", position=0))
            session.flush()
            raise RuntimeError("boom")
    with project.session() as session:
        assert session.scalars(select(ImageClass)).all() == []
