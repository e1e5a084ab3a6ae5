"""One label key is a few statements (storage.label_writes), on a project file and on a team project, and
still: an unknown image or class is one clear error with nothing written, review marks survive only when
the class stays, the history names every change, and undo puts back exactly what was there."""

from __future__ import annotations

import pytest
from sqlalchemy import event, select

from helpers.feature_projects import add_placeholder_images
from helpers.pg_server import pg_server, pg_url  # noqa: F401  (fixtures)
from storage import catalog
from storage.errors import ProjectError
from storage.label_history import label_history
from storage.models import Label
from storage.project import create_project


@pytest.fixture(params=["file", "team"])
def any_project(request, tmp_path):
    """A project file, and (where PostgreSQL binaries exist) a team project."""
    if request.param == "file":
        opened = create_project(tmp_path / "p.sortlab")
    else:
        opened = create_project(request.getfixturevalue("pg_url"))
    yield opened
    opened.close()


def _statements(project, write) -> list[str]:
    sent: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        sent.append(" ".join(statement.split()))

    event.listen(project.engine, "before_cursor_execute", count)
    try:
        write()
    finally:
        event.remove(project.engine, "before_cursor_execute", count)
    return sent


def _labels(project) -> dict[int, tuple]:
    with project.session() as session:
        return {row.image_id: (row.class_id, row.origin, row.reviewed_at, row.twins_checked)
                for row in session.scalars(select(Label))}


def test_one_label_key_sends_few_statements(any_project):
    project = any_project
    image = add_placeholder_images(project, 3)[0]
    ant, bee = (catalog.add_class(project, name).id for name in ("ant", "bee"))
    most = 2 if project.is_database else 4  # team: lock + one statement; file: BEGIN IMMEDIATE + 3
    for class_id in (ant, bee, bee, None):
        sent = _statements(project, lambda c=class_id: catalog.set_labels(project, [image], c))
        assert len(sent) <= most, sent
    assert _labels(project) == {}
    kinds = [(e.previous_class_id, e.class_id) for e in reversed(label_history(project, image))]
    confirmed = [(bee, bee)]  # a label given again is kept (a confirmation: agreement counts it)
    assert kinds == [(None, ant), (ant, bee)] + confirmed + [(bee, None)]


def test_unknown_image_or_class_is_one_clear_error_and_nothing_is_written(any_project):
    project = any_project
    images = add_placeholder_images(project, 2)
    ant = catalog.add_class(project, "ant").id
    catalog.set_labels(project, [images[0]], ant)
    before_labels, before_events = _labels(project), label_history(project, limit=None)
    with pytest.raises(ProjectError, match="No image with id 999"):
        catalog.set_labels(project, [images[1], 999], ant)
    with pytest.raises(ProjectError, match="No image with id 999"):
        catalog.set_labels(project, [images[0], 999], None)  # removing a label checks the images too
    with pytest.raises(catalog.UnknownClassError, match="No class with id 4242"):
        catalog.set_labels(project, images, 4242)
    with pytest.raises(catalog.UnknownClassError, match="No class with id 4242"):
        catalog.set_labels_by_class(project, {images[0]: ant, images[1]: 4242})
    with pytest.raises(catalog.UnknownClassError, match="No class with id 4242"):
        catalog.set_labels(project, [], 4242)
    assert _labels(project) == before_labels
    assert label_history(project, limit=None) == before_events
    assert catalog.set_labels(project, [], ant) == []


def test_review_marks_and_twin_checks_follow_the_class(any_project):
    project = any_project
    images = add_placeholder_images(project, 3)
    ant, bee = (catalog.add_class(project, name).id for name in ("ant", "bee"))
    catalog.set_labels(project, images, ant)
    catalog.mark_reviewed(project, images)
    with project.writing() as session:
        for row in session.scalars(select(Label)):
            row.twins_checked = True
    catalog.set_labels(project, [images[0]], ant, origin="suggestion")  # same class: the mark stays
    catalog.set_labels(project, [images[1]], bee)  # another class: the user has not looked at it yet
    labels = _labels(project)
    assert labels[images[0]][:2] == (ant, "suggestion") and labels[images[0]][2] is not None
    assert labels[images[1]][:3] == (bee, "manual", None)
    assert labels[images[2]][2] is not None and labels[images[2]][3] is True  # untouched
    assert labels[images[0]][3] is False and labels[images[1]][3] is False  # a written label is checked again


def test_undo_puts_back_exactly_what_was_there(any_project):
    project = any_project
    images = add_placeholder_images(project, 3)
    ant, bee = (catalog.add_class(project, name).id for name in ("ant", "bee"))
    catalog.set_labels(project, images[:2], ant)
    catalog.mark_reviewed(project, [images[0]])
    original = _labels(project)
    before = catalog.set_labels(project, images, bee)
    assert [s.class_id for s in before] == [ant, ant, None]
    assert before[0].reviewed_at is not None and before[2] == catalog.LabelState(images[2], None, None, None)
    catalog.restore_labels(project, before)
    assert _labels(project) == {i: (c, o, r, False) for i, (c, o, r, _) in original.items()}
    before = catalog.set_labels(project, images[:1], None)
    catalog.restore_labels(project, before)
    assert _labels(project)[images[0]][:3] == original[images[0]][:3]


def test_going_back_to_an_earlier_time_writes_through_the_same_upsert(any_project):
    from storage.label_history import apply_labels_as_of

    project = any_project
    images = add_placeholder_images(project, 3)
    ant, bee = (catalog.add_class(project, name).id for name in ("ant", "bee"))
    catalog.set_labels(project, images[:2], ant)
    then = label_history(project, limit=1)[0].at
    catalog.set_labels(project, [images[0]], bee)
    catalog.set_labels(project, [images[1]], None)
    catalog.set_labels(project, [images[2]], bee)
    before = apply_labels_as_of(project, then)
    assert {i: c for i, (c, *_rest) in _labels(project).items()} == {images[0]: ant, images[1]: ant}
    catalog.restore_labels(project, before)  # undo
    assert {i: c for i, (c, *_rest) in _labels(project).items()} == {images[0]: bee, images[2]: bee}
