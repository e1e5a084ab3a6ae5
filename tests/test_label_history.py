"""The label history: every label write records who/what/when, and labels come back as they were."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from storage import catalog, images
from storage.label_history import (
    apply_labels_as_of,
    label_history,
    labels_as_of,
    plan_labels_as_of,
)
from storage.models import Label


class FakeClock:
    """Label writes read ``catalog.utcnow``: a clock that moves one minute per reading."""

    def __init__(self):
        self.now = dt.datetime(2026, 12, 1, 9, 0)

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(minutes=1)
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(catalog, "utcnow", fake)
    return fake


def _new_images(project, n, class_id=None, start=0):
    rows = [images.NewImage(f"h{start + i}", f"{i}.jpg", f"/x/{i}.jpg", "cam", 4, 3, "JPEG", b"x", b"t",
                            class_id=class_id) for i in range(n)]
    return images.add_images(project, rows)


def test_every_label_write_records_who_what_and_how(project, clock):
    ant = catalog.add_class(project, "ant")
    bee = catalog.add_class(project, "bee")
    imported = _new_images(project, 2, class_id=ant.id)
    plain = _new_images(project, 2, start=10)
    project.actor = "ana"
    catalog.set_labels(project, plain, bee.id)
    catalog.set_labels(project, plain, bee.id)  # given again: kept as a confirmation (agreement counts it)
    before = catalog.set_labels_by_class(project, {imported[0]: bee.id}, origin="suggestion")
    catalog.restore_labels(project, before)
    project.actor = "ben"
    catalog.set_labels(project, [plain[0]], None)
    catalog.remove_class(project, bee.id)

    events = label_history(project, limit=None)
    assert [(e.origin, e.actor) for e in events][:3] == [("class removed", "ben"), ("manual", "ben"),
                                                          ("undo", "ana")]
    assert sorted(e.origin for e in events) == sorted(
        ["import"] * 2 + ["manual"] * 4 + ["suggestion", "undo", "manual", "class removed"])
    removal = events[0]
    assert (removal.image_id, removal.previous_class_id, removal.class_id) == (plain[1], bee.id, None)
    assert removal.previous_class_name is None  # the class is gone; its id stays in the history
    one = label_history(project, imported[0])
    assert [(e.previous_class_name, e.class_name, e.origin) for e in one] == [
        (None, "ant", "undo"), ("ant", None, "suggestion"), (None, "ant", "import")]  # "bee" was removed
    assert [e.id for e in label_history(project, image_ids=[imported[0]], limit=2)] == [e.id for e in one[:2]]
    assert {e.actor for e in label_history(project, actor="ben", limit=None)} == {"ben"}
    assert all(e.at > one[-1].at for e in label_history(project, since=one[-1].at + dt.timedelta(seconds=1)))


def test_labels_as_of_a_time_and_going_back_is_one_undoable_step(project, clock):
    ant = catalog.add_class(project, "ant")
    bee = catalog.add_class(project, "bee")
    ids = _new_images(project, 4)
    catalog.set_labels(project, ids[:3], ant.id)
    tuesday = clock.now
    catalog.set_labels(project, ids[1:], bee.id)
    catalog.set_labels(project, [ids[2]], None)
    assert labels_as_of(project, tuesday) == {ids[0]: ant.id, ids[1]: ant.id, ids[2]: ant.id, ids[3]: None}
    # An aware time in another zone means the same instant.
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert labels_as_of(project, tuesday.replace(tzinfo=dt.timezone.utc).astimezone(plus_two)) == \
        labels_as_of(project, tuesday)
    assert labels_as_of(project, tuesday, [ids[3], ids[1]]) == {ids[3]: None, ids[1]: ant.id}

    plan = plan_labels_as_of(project, tuesday, ids[1:3])
    assert plan.changes == {ids[1]: ant.id, ids[2]: ant.id} and plan.missing_classes == {}
    before = apply_labels_as_of(project, tuesday, ids[1:3])  # a selection: ids[3] keeps its label
    now = {s.image_id: s.class_id for s in catalog.label_states(project, ids)}
    assert now == {ids[0]: ant.id, ids[1]: ant.id, ids[2]: ant.id, ids[3]: bee.id}
    assert label_history(project, ids[1], limit=1)[0].origin == "as of"
    catalog.restore_labels(project, before)  # the GUI's undo
    assert [s.class_id for s in catalog.label_states(project, ids)] == [ant.id, bee.id, None, bee.id]


def test_labels_from_before_the_history_and_removed_classes(project, clock):
    ant = catalog.add_class(project, "ant")
    bee = catalog.add_class(project, "bee")
    ids = _new_images(project, 2)
    with project.writing() as session:  # labels set before the project kept a history (an upgraded file)
        session.add_all([Label(image_id=i, class_id=ant.id, origin="manual") for i in ids])
    early = clock()
    catalog.set_labels(project, ids, bee.id)
    assert labels_as_of(project, early) == {ids[0]: ant.id, ids[1]: ant.id}
    catalog.remove_class(project, ant.id)
    plan = plan_labels_as_of(project, early)
    assert plan.changes == {} and plan.missing_classes == {ids[0]: ant.id, ids[1]: ant.id}
    assert apply_labels_as_of(project, early) == []
    assert [s.class_id for s in catalog.label_states(project, ids)] == [bee.id, bee.id]


OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["set", "unset", "accept", "undo", "as_of"]),
              st.lists(st.integers(0, 5), min_size=1, max_size=4), st.integers(0, 2), st.integers(0, 30)),
    min_size=1, max_size=12)


@pytest.fixture(scope="module")
def shared_project(tmp_path_factory):
    from storage.project import create_project

    opened = create_project(tmp_path_factory.mktemp("history") / "h.sortlab")
    yield opened
    opened.close()


@settings(max_examples=15)
@given(OPERATIONS)
def test_labels_as_of_any_moment_are_exactly_the_labels_then(shared_project, operations):
    project = shared_project
    with project.writing() as session:  # each example starts from an empty project
        for table in ("label_events", "labels", "images", "classes"):
            session.execute(text(f"DELETE FROM {table}"))
    clock = FakeClock()
    original = catalog.utcnow
    catalog.utcnow = clock
    try:
        classes = [catalog.add_class(project, name).id for name in ("a", "b", "c")]
        ids = _new_images(project, 6)
        snapshots = []
        undo: list = []
        for kind, picks, class_index, back in operations:
            chosen = [ids[p] for p in picks]
            if kind == "set":
                undo.append(catalog.set_labels(project, chosen, classes[class_index]))
            elif kind == "unset":
                undo.append(catalog.set_labels(project, chosen, None))
            elif kind == "accept":
                undo.append(catalog.set_labels_by_class(project, {i: classes[(i + class_index) % 3] for i in chosen}))
            elif kind == "undo" and undo:
                catalog.restore_labels(project, undo.pop())
            elif kind == "as_of" and snapshots:
                moment, _ = snapshots[back % len(snapshots)]
                undo.append(apply_labels_as_of(project, moment, chosen))
            snapshots.append((clock(), {s.image_id: s.class_id for s in catalog.label_states(project, ids)}))
        for moment, labels in snapshots:
            assert labels_as_of(project, moment) == labels
    finally:
        catalog.utcnow = original
