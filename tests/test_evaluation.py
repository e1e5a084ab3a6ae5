"""Evaluation: stable stratified splits that respect pins, the holdout/CV choice, and metrics."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.feature_projects import add_placeholder_images, make_feature_project

from engine.models.evaluation import (
    MIN_LABELED_FOR_HOLDOUT,
    assign_splits,
    classification_metrics,
    out_of_fold_probabilities,
    plan_evaluation,
)
from engine.models.metrics import ConfusionMatrix, Metrics
from engine.runtime.jobs import JobCancelled, JobContext
from storage import catalog
from storage.splits import labeled_images


def val_share_by_class(project) -> dict[int, float]:
    images = labeled_images(project)
    shares = {}
    for c in {img.class_id for img in images}:
        members = [img for img in images if img.class_id == c]
        shares[c] = sum(img.split == "val" for img in members) / len(members)
    return shares


def test_splits_are_stratified_and_stable_as_images_arrive(project):
    fp = make_feature_project(project, [50, 30, 10])
    first = assign_splits(project)
    assert all(abs(share - 0.2) < 0.03 for share in val_share_by_class(project).values())
    assert first == assign_splits(project)  # nothing new: nothing moves
    more = add_placeholder_images(project, 40, start=1000)
    catalog.set_labels(project, more[:20], fp.class_by_name["c0"])
    catalog.set_labels(project, more[20:], fp.class_by_name["c2"])
    second = assign_splits(project)
    assert all(second[i] == side for i, side in first.items())
    assert all(abs(share - 0.2) < 0.03 for share in val_share_by_class(project).values())


def test_split_is_deterministic_from_content(tmp_path):
    from storage.project import create_project

    sides = []
    for name in ("a", "b"):
        with create_project(tmp_path / f"{name}.sortlab") as proj:
            make_feature_project(proj, [20, 20])
            sides.append(sorted(v for _, v in sorted(assign_splits(proj).items())))
    assert sides[0] == sides[1]
    assert sides[0].count("val") == 8


def test_pinned_images_keep_their_side(project):
    fp = make_feature_project(project, [10, 10])
    pinned_val, pinned_train = fp.image_ids[:6], fp.image_ids[10:12]
    catalog.set_split(project, pinned_val, "val")
    catalog.set_split(project, pinned_train, "train")
    sides = assign_splits(project)
    assert all(sides[i] == "val" for i in pinned_val)
    assert all(sides[i] == "train" for i in pinned_train)
    # class c0 already has 6 of 10 on the validation side: no unpinned image joins them.
    assert sum(sides[i] == "val" for i in fp.image_ids[:10]) == 6


def test_relabeled_image_is_placed_again_but_others_stay(project):
    fp = make_feature_project(project, [15, 15])
    before = assign_splits(project)
    catalog.set_labels(project, fp.image_ids[:1], fp.class_by_name["c1"])
    after = assign_splits(project)
    assert all(after[i] == before[i] for i in fp.image_ids[1:])


def test_plan_prefers_cv_for_small_data_and_holdout_for_large():
    y = np.repeat([1, 2], 50)
    is_val = np.arange(100) % 5 == 0
    plan = plan_evaluation(y, is_val)
    assert (plan.kind, plan.folds, plan.description) == ("cv", 5, "5-fold CV")
    y = np.repeat([1, 2], MIN_LABELED_FOR_HOLDOUT)
    assert plan_evaluation(y, np.arange(len(y)) % 5 == 0).kind == "holdout"
    assert plan_evaluation(np.array([1, 1, 2, 2, 2]), np.zeros(5, bool)).folds == 2
    assert plan_evaluation(np.array([1, 2, 2]), np.zeros(3, bool)).kind == "none"


def test_metrics_cover_classes_sources_and_topk():
    classes = np.array([10, 20, 30])
    y_true = np.array([10, 10, 20, 20, 30, 30])
    proba = np.array([[.8, .1, .1], [.2, .7, .1], [.1, .8, .1], [.1, .8, .1], [.1, .1, .8], [.5, .2, .3]])
    m = classification_metrics(y_true, proba, classes, ["a", "b", "c"], ["x", "x", "x", "y", "y", "y"])
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.balanced_accuracy == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m.confusion_matrix == ConfusionMatrix(["a", "b", "c"], [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    b = m.per_class["b"]
    assert (b.precision, b.recall, b.f1, b.support) == (pytest.approx(2 / 3), 1.0, pytest.approx(0.8), 2)
    assert {name: (s.accuracy, s.n) for name, s in m.per_source.items()} == {
        "x": (pytest.approx(2 / 3), 3), "y": (pytest.approx(2 / 3), 3)}
    assert m.top_3_accuracy is None and "top_3_accuracy" not in m.to_json()
    rng = np.random.default_rng(0)
    many = np.arange(7)
    y7 = rng.integers(0, 7, 50)
    p7 = rng.dirichlet(np.ones(7), 50)
    m7 = classification_metrics(y7, p7, many, [str(c) for c in many])
    assert 0 <= m7.accuracy <= m7.top_3_accuracy <= m7.top_5_accuracy <= 1


def test_metrics_survive_the_json_the_project_stores():
    """What training stores (to_json) reads back (from_json) as the same typed metrics, JSON-safe."""
    import json

    y_true = np.array([1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6])
    proba = np.random.default_rng(2).dirichlet(np.ones(6), 12)
    m = classification_metrics(y_true, proba, np.arange(1, 7), list("abcdef"), ["cam"] * 12)
    m = m.with_counts(evaluation="2-fold CV", n_labeled=12, n_train=12, n_val=12, folds=2)
    assert Metrics.from_json(json.loads(json.dumps(m.to_json()))) == m
    unevaluated = Metrics(n_train=3)
    assert unevaluated.to_json()["accuracy"] is None and not unevaluated.evaluated
    assert Metrics.from_json(unevaluated.to_json()) == unevaluated


def test_out_of_fold_probabilities_come_from_models_that_never_saw_the_image():
    from engine.models.classifiers import LogisticClassifier

    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 6)).astype(np.float32)  # pure noise: in-sample fits memorize, held out cannot
    y = np.repeat([0, 1], 20)
    oof = out_of_fold_probabilities(JobContext(), lambda Xf, yf: LogisticClassifier(C=100.0).fit(Xf, yf), X, y, 5)
    in_sample = LogisticClassifier(C=100.0).fit(X, y).predict_proba(X)
    assert (in_sample.argmax(1) == y).mean() > (oof.argmax(1) == y).mean()
    context = JobContext()
    context.cancel()
    with pytest.raises(JobCancelled):
        out_of_fold_probabilities(context, lambda Xf, yf: None, X, y, 5)
