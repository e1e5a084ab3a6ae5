"""Classes and labels: CRUD, shortcuts, undo states, and clear errors."""

from __future__ import annotations

import pytest

from storage import catalog
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


def test_labeling_many_images_crosses_sqlite_parameter_limit(project):
    ids = _add_images(project, 2500)
    ant = catalog.add_class(project, "ant")
    catalog.set_labels(project, ids, ant.id)
    assert catalog.list_classes(project)[0].count == 2500
