"""The grid's curation modes driven through the real window (offscreen): "Label next", "Review labels"
and "Look-alikes". The engine's entry points are replaced where the GUI calls them, and the fakes
return the engine's own typed results (NextBatch, LabelReview, DuplicateGroup)."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QSettings, Qt
from test_gui_workspace import FakeTrainer, add_rows, open_window, press

import engine.curation.duplicates as duplicates
import engine.curation.next_batch as next_batch
import engine.curation.outliers as outliers
import engine.curation.review as review
import engine.models.training
from engine.curation.selection_rules import Strategy
from gui.filter_bar import CURATION, LABEL_NEXT, LOOK_ALIKES, REVIEW_LABELS, UNUSUAL
from gui.runner import QtJobRunner
from storage import browse
from storage.catalog import add_class, label_states, reviewed_image_ids, set_labels

pytestmark = pytest.mark.gui

JOB_TIMEOUT = 60_000  # the mode's job queues behind the panels' jobs for the new project (one worker)
TYPICAL = "typical of a group with no label yet"
HESITATES = "the model hesitates between cats and dogs"


@pytest.fixture
def app_window(qtbot, tmp_path, monkeypatch):
    """The app's window, no project open yet (training faked)."""
    monkeypatch.setattr(engine.models.training, "train_model", FakeTrainer())
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    main = open_window(qtbot, settings, tmp_path)
    main.show()
    qtbot.waitExposed(main)
    qtbot.waitUntil(lambda: not any(r.busy for r in main.findChildren(QtJobRunner)), timeout=180_000)
    return main


@pytest.fixture
def window(app_window, project):
    """The app's window on a project of 12 images with classes cats (key 1) and dogs (key 2)."""
    main = app_window
    main.test_ids = add_rows(project, 12)
    main.cats, main.dogs = add_class(project, "cats"), add_class(project, "dogs")
    main.set_project(project)
    return main


def choose(window, mode: str) -> None:
    """Pick a curation mode in the filter list, as the user does."""
    bar = window.filter_bar
    index = next(i for i in range(bar.filter_combo.count()) if bar.filter_combo.itemData(i) == (CURATION, mode))
    bar.filter_combo.setCurrentIndex(index)


def shown(window) -> list[int]:
    return window.grid_model.ids.tolist()


def tooltip(window, row: int) -> str:
    return window.grid_model.data(window.grid_model.index(row), Qt.ItemDataRole.ToolTipRole)


def label_of(window, image_id: int) -> int | None:
    return label_states(window.project, [image_id])[0].class_id


def test_label_next_shows_the_batch_in_order_and_appends_the_next(window, qtbot, monkeypatch):
    ids = window.test_ids
    batches = [
        next_batch.NextBatch(Strategy.TYPICAL, [next_batch.NextImage(ids[i], f"/x/img{i}.jpg", TYPICAL, 0.9 - i / 100)
                                                for i in (5, 2, 9)]),
        next_batch.NextBatch(Strategy.UNCERTAIN, [next_batch.NextImage(ids[i], f"/x/img{i}.jpg", HESITATES, 0.1)
                                                  for i in (0, 7)]),
    ]
    asked = []

    def fake_next_images(context, project, count):
        asked.append(count)
        return batches[len(asked) - 1]

    monkeypatch.setattr(next_batch, "next_images", fake_next_images)
    choose(window, LABEL_NEXT)
    first = [ids[5], ids[2], ids[9]]
    qtbot.waitUntil(lambda: shown(window) == first, timeout=JOB_TIMEOUT)
    assert window.grid.selected_image_ids() == [ids[5]]
    assert TYPICAL in tooltip(window, 0)
    assert window.curation.summary.text() == "You labeled 0 images · no model yet"

    for key in (Qt.Key.Key_1, Qt.Key.Key_2, Qt.Key.Key_1):  # label and move on, one key per image
        press(qtbot, window.grid, key)
    assert [label_of(window, i) for i in first] == [window.cats.id, window.dogs.id, window.cats.id]
    qtbot.waitUntil(lambda: len(shown(window)) == 5, timeout=JOB_TIMEOUT)
    assert shown(window) == first + [ids[0], ids[7]]  # the labeled tiles stay where they were
    assert len(asked) == 2
    assert window.grid.selected_image_ids() == [ids[0]]
    assert HESITATES in tooltip(window, 3)
    # Two classes labeled: the training panel retrains by itself and the counter shows its accuracy.
    qtbot.waitUntil(lambda: window.curation.summary.text()
                    == "You labeled 3 images · the model is right on 100 % of its tests", timeout=JOB_TIMEOUT)
    assert window.filter_bar.count_label.text() == "5 of 12 images"


def make_review(ids, cats: int, dogs: int) -> review.LabelReview:
    """Six labeled images; ids[1] (labeled cats) looks like a dog, ids[4] (labeled dogs) a bit like a cat."""
    labels = np.array([cats, cats, cats, dogs, dogs, dogs], dtype=np.int64)
    cat_probability = np.array([0.9, 0.08, 0.85, 0.2, 0.7, 0.1])
    probabilities = np.column_stack([cat_probability, 1 - cat_probability])
    scores = np.where(labels == cats, cat_probability, 1 - cat_probability)
    return review.LabelReview(np.array(ids[:6], dtype=np.int64), labels, np.array([cats, dogs]), probabilities,
                              scores, suggested_count=2, unchecked=[], method="logreg", C=1.0, folds=5)


def test_review_shows_suspects_and_takes_keeps_or_relabels_undoably(window, qtbot, monkeypatch):
    ids, cats, dogs = window.test_ids, window.cats.id, window.dogs.id
    set_labels(window.project, ids[:3], cats)
    set_labels(window.project, ids[3:6], dogs)
    window.notify_labels_changed(ids[:6])
    monkeypatch.setattr(review, "review_labels", lambda context, project: make_review(ids, cats, dogs))

    choose(window, REVIEW_LABELS)
    qtbot.waitUntil(lambda: shown(window) == [ids[1], ids[4]], timeout=JOB_TIMEOUT)  # most suspicious first
    assert "labeled cats · looks like dogs 92 %" in tooltip(window, 0)
    assert "labeled dogs · looks like cats 70 %" in tooltip(window, 1)
    assert window.curation.summary.text() == "2 images are worth a look"
    assert window.grid.selected_image_ids() == [ids[1]]

    press(qtbot, window.grid, Qt.Key.Key_Return)  # take the suggestion
    assert label_of(window, ids[1]) == dogs
    assert "labeled dogs · looks like dogs" in tooltip(window, 0)
    window.undo_stack.undo()
    assert label_of(window, ids[1]) == cats
    assert "labeled cats · looks like dogs" in tooltip(window, 0)

    window.grid.select_rows([0])
    press(qtbot, window.grid, Qt.Key.Key_K)  # keep: the label is right, it leaves the queue
    assert shown(window) == [ids[4]]
    assert reviewed_image_ids(window.project) == {ids[1]}
    assert label_of(window, ids[1]) == cats
    assert window.curation.summary.text() == "1 image is worth a look"
    assert window.grid.selected_image_ids() == [ids[4]]
    press(qtbot, window.grid, Qt.Key.Key_1)  # another class by its key
    assert label_of(window, ids[4]) == cats

    window.undo_stack.undo()
    assert label_of(window, ids[4]) == dogs
    window.undo_stack.undo()  # the keep
    assert reviewed_image_ids(window.project) == set()
    assert shown(window) == [ids[1], ids[4]]
    assert window.grid.selected_image_ids() == [ids[1]]


def test_look_alikes_show_each_group_together(window, qtbot, monkeypatch):
    ids = window.test_ids
    groups = [duplicates.DuplicateGroup((ids[3], ids[7], ids[8]), 0.93, identical=False),
              duplicates.DuplicateGroup((ids[1], ids[10]), 1.0, identical=True)]
    monkeypatch.setattr(duplicates, "project_duplicates", lambda context, project: groups)

    choose(window, LOOK_ALIKES)
    qtbot.waitUntil(lambda: shown(window) == [ids[3], ids[7], ids[8], ids[1], ids[10]], timeout=JOB_TIMEOUT)
    assert window.curation.summary.text() == "2 groups of look-alike images"
    assert "Group 1 of 2: 3 images, look-alike (93 % alike)" in tooltip(window, 0)
    assert "Group 2 of 2: 2 images, identical" in tooltip(window, 4)
    assert window.statusBar().currentMessage().startswith("Group 1 of 2")

    window.set_filter(browse.ALL)  # another filter leaves the mode
    assert len(shown(window)) == 12
    assert not window.curation.summary.isVisible()
    assert "Group" not in tooltip(window, 0)


def test_unusual_images_show_most_unusual_first_with_the_reason(window, qtbot, monkeypatch):
    ids = window.test_ids
    flagged = [outliers.Outlier(ids[5], 9.0, ("looks like no other image in the project",)),
               outliers.Outlier(ids[2], 4.5, ("looks like no other image labeled 'cats'",))]
    monkeypatch.setattr(outliers, "project_outliers", lambda context, project: flagged)

    choose(window, UNUSUAL)
    qtbot.waitUntil(lambda: shown(window) == [ids[5], ids[2]], timeout=JOB_TIMEOUT)
    assert window.curation.summary.text() == "2 images unlike the others"
    assert "Looks like no other image in the project" in tooltip(window, 0)
    assert "labeled 'cats'" in tooltip(window, 1)
    window.set_filter(browse.ALL)
    assert len(shown(window)) == 12 and "Looks like" not in tooltip(window, 0)


def test_label_next_with_the_real_engine_on_cached_features(app_window, project, qtbot):
    """No fake: the engine chooses from synthetic cached features (cold start, nothing labeled)."""
    from helpers.feature_projects import make_feature_project

    window = app_window
    made = make_feature_project(project, [0, 0, 0], unlabeled=40)
    window.set_project(project)
    choose(window, LABEL_NEXT)
    qtbot.waitUntil(lambda: len(shown(window)) == next_batch.DEFAULT_COUNT, timeout=JOB_TIMEOUT)
    assert set(shown(window)) <= set(made.image_ids)
    assert all("no label yet" in tooltip(window, row) for row in range(len(shown(window))))
    assert window.curation.summary.text() == "You labeled 0 images · no model yet"
