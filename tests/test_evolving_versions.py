"""Automatic retrains keep one evolving model version (issue 12, item 8): real training on cached
(synthetic) features, the versions the project keeps, and the accuracy history the chart draws."""

from __future__ import annotations

import datetime as dt

from helpers.feature_projects import BACKBONE, LAYER, make_feature_project

from engine.insight.history import list_versions, model_history
from engine.models.evolving import ACCURACY_STEP, is_evolving, keep_version, plan_version
from engine.models.metrics import Metrics
from engine.models.training import train_on_cached_features
from engine.runtime.jobs import JobContext
from storage import catalog, modelstore


def train(project, automatic: bool):
    return train_on_cached_features(JobContext(), project, "logreg", BACKBONE, LAYER, seed=0, automatic=automatic)


class Labeler:
    """A project of two well-apart classes with ``held`` images per class unlabeled at first, and
    the user labeling them back with their true class, a few at a time (the accuracy stays near 100 %)."""

    def __init__(self, project, held: int):
        self.project = project
        fp = make_feature_project(project, [30 + held, 30 + held], spread=0.5)
        self.fp = fp
        self.todo: list[tuple[int, int]] = []
        for class_id in fp.class_by_name.values():
            members = [i for i, c in zip(fp.image_ids, fp.class_ids) if c == class_id][:held]
            catalog.set_labels(project, members, None)
            self.todo += [(i, class_id) for i in members]
        self.todo.sort()

    def label(self, count: int) -> None:
        done, self.todo = self.todo[:count], self.todo[count:]
        catalog.set_labels_by_class(self.project, dict(done))


def test_automatic_retrains_replace_one_evolving_version_and_keep_its_accuracy_history(project):
    user = Labeler(project, held=4)
    on_purpose = train(project, automatic=False)
    labeled_counts = [on_purpose.n_labeled]
    for _ in range(4):
        user.label(2)
        result = train(project, automatic=True)
        labeled_counts.append(result.n_labeled)
    versions = modelstore.list_models(project)
    # The version trained on purpose stays; the four automatic retrains left one evolving version, in use.
    assert [v.version for v in versions] == [on_purpose.model_version, result.model_version]
    assert not is_evolving(versions[0]) and is_evolving(versions[1]) and versions[1].is_active
    # Nothing of the chart is lost: one point per labeled count, oldest first.
    history = model_history(project)
    assert history.n_labeled == labeled_counts
    assert all(0.9 <= a <= 1.0 for a in history.accuracy)
    # The predictions of the pruned versions went with them; the evolving version has its own.
    assert set(modelstore.predictions(project)) == set(user.fp.image_ids)
    summary = list_versions(project)[-1]
    assert summary.evolving and [n for n, _ in summary.history] == labeled_counts[1:-1]


def test_a_relabel_without_a_new_label_replaces_the_last_point_instead_of_stacking_dots(project):
    user = Labeler(project, held=1)
    train(project, automatic=False)
    user.label(2)
    train(project, automatic=True)
    first_labeled, its_class = user.fp.image_ids[-1], user.fp.class_ids[-1]
    other = next(c for c in user.fp.class_by_name.values() if c != its_class)
    for class_id in (other, its_class):  # the count of labeled images does not change
        catalog.set_labels(project, [first_labeled], class_id)
        train(project, automatic=True)
    history = model_history(project)
    assert history.n_labeled == [60, 62, 62]  # kept version, then one point per count (the newest)
    assert len(modelstore.list_models(project)) == 2


def test_training_on_purpose_and_exporting_keep_versions_that_retrains_never_replace(project):
    user = Labeler(project, held=3)
    train(project, automatic=False)
    user.label(2)
    exported = train(project, automatic=True)
    keep_version(project, exported.model_version)  # what engine.ship.export.export_bundle does on success
    user.label(2)
    evolving = train(project, automatic=True)
    user.label(2)
    on_purpose = train(project, automatic=False)  # prunes the evolving version, keeps its point
    versions = [v.version for v in modelstore.list_models(project)]
    assert exported.model_version in versions and on_purpose.model_version in versions
    assert evolving.model_version not in versions
    assert not any(is_evolving(v) for v in modelstore.list_models(project))
    assert model_history(project).n_labeled == [60, 62, 64, 66]


def info(version: int, accuracy: float, automatic: bool = False, kept: bool = True) -> modelstore.ModelInfo:
    return modelstore.ModelInfo(version, dt.datetime(2026, 1, 1), "logreg", BACKBONE, LAYER,
                                {"automatic": automatic, "kept": kept}, ["a", "b"], [1, 2],
                                Metrics(accuracy=accuracy).to_json(), True, 10 * version)


def test_an_automatic_retrain_is_kept_when_its_accuracy_moves_enough():
    kept, evolving = info(1, 0.80), info(2, 0.81, automatic=True, kept=False)
    small = plan_version([kept, evolving], automatic=True, accuracy=0.80 + ACCURACY_STEP / 2)
    assert small.params["kept"] is False and small.prune == (2,)
    for moved in (0.80 + ACCURACY_STEP * 1.5, 0.80 - ACCURACY_STEP * 1.5):
        big = plan_version([kept, evolving], automatic=True, accuracy=moved)
        assert big.params["kept"] is True and big.prune == (2,)
        assert big.params["history"] == [[20, 0.81]]
    first = plan_version([], automatic=True, accuracy=0.5)  # a project's first model is kept
    assert first.params["kept"] is True and first.prune == ()
