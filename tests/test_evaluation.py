"""Evaluation: stable stratified splits that respect pins, the holdout/CV choice, and metrics."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.feature_projects import BACKBONE, LAYER, add_placeholder_images, make_feature_project

from engine.curation.leak_guard import GuardFeatures
from engine.models.evaluation import (
    MIN_LABELED_FOR_HOLDOUT,
    EvaluationPlan,
    assign_splits,
    classification_metrics,
    evaluation_splits,
    out_of_fold_probabilities,
    plan_evaluation,
    split_labeled_images,
    twin_scores,
    twins_across_folds,
    twins_without_guard,
)
from engine.models.metrics import ConfusionMatrix, Metrics
from engine.runtime.jobs import JobCancelled, JobContext
from storage import catalog
from storage.featurestore import load_vectors
from storage.splits import labeled_images


def val_share_by_class(project) -> dict[int, float]:
    images = labeled_images(project)
    shares = {}
    for c in {img.class_id for img in images}:
        members = [img for img in images if img.class_id == c]
        shares[c] = sum(img.split == "val" for img in members) / len(members)
    return shares


# Wide clusters (spread 3) hold no two vectors near enough to count as near-duplicates: the tests of
# the plain placement below run without the leak guard moving anything.
FAR_APART = 3.0


def test_splits_are_stratified_and_stable_as_images_arrive(project):
    fp = make_feature_project(project, [50, 30, 10], spread=FAR_APART)
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
            make_feature_project(proj, [20, 20], spread=FAR_APART)
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


# ---- leak guard ---------------------------------------------------------------------------------------


def plant_twins(project, originals, copies, seed: int = 0) -> None:
    """Give each copy the cached vector of its original plus a little noise (an edited re-save)."""
    from storage.featurestore import ensure_feature_set, load_vectors, store_vectors

    ids, X = load_vectors(project, BACKBONE, LAYER)
    row_of = {int(i): r for r, i in enumerate(ids)}
    noise = np.random.default_rng(seed).normal(scale=0.05, size=(len(copies), X.shape[1]))
    feature_set = ensure_feature_set(project, BACKBONE, LAYER, X.shape[1])
    store_vectors(project, feature_set.id, copies, X[[row_of[i] for i in originals]] + noise.astype(np.float32))


def test_near_duplicates_never_straddle_train_and_validation(project):
    fp = make_feature_project(project, [60, 60], unlabeled=6, dim=64)  # 64-d: distinct vectors stay below 0.86
    labeled = fp.image_ids[:120]
    copies = labeled[60:100]  # 40 copies of class c0 and c1 images, filed under the class of their original
    originals = labeled[:20] + labeled[100:120]
    plant_twins(project, originals, copies)
    catalog.set_labels(project, [c for c, o in zip(copies, originals) if o in labeled[:60]], fp.class_by_name["c0"])
    pinned_val = originals[0]
    catalog.set_split(project, [pinned_val], "val")

    ids, X = load_vectors(project, BACKBONE, LAYER)
    split = split_labeled_images(project, features=GuardFeatures(BACKBONE, LAYER, ids, X))
    sides = split.sides
    assert set(split.groups) == {tuple(sorted(pair)) for pair in zip(originals, copies)}
    assert all(sides[o] == sides[c] for o, c in zip(originals, copies))
    assert sides[pinned_val] == "val" and sides[copies[0]] == "val"  # the pinned image's side wins
    # Without the guard, the hash order alone would have split some pairs (else this proves nothing).
    assert twins_without_guard(labeled_images(project), split.groups) > 0

    # A later twin joins its original's side, and the original does not move. (assign_splits finds the
    # cached vectors by itself: those of the feature space the guard last ran in.)
    settled = dict(sides)
    new_copy = fp.image_ids[-1]
    plant_twins(project, [originals[5]], [new_copy], seed=1)
    catalog.set_labels(project, [new_copy], fp.class_by_name["c0"])
    later = assign_splits(project)
    assert later[new_copy] == settled[originals[5]]
    assert all(later[i] == side for i, side in settled.items())


def test_evaluation_splits_hold_out_every_labeled_image_once_and_twins_together():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], 40)
    is_val = rng.random(len(y)) < 0.25
    groups = np.arange(len(y))
    groups[[1, 2, 3]] = 1  # near-duplicates: rows 1-3, and 50 with 51
    groups[51] = 50
    is_val[[1, 2, 3]], is_val[[50, 51]] = False, True  # as the guard leaves them: each group on one side
    for plan, quick, n_splits in ((EvaluationPlan("holdout"), False, 5), (EvaluationPlan("holdout"), True, 3),
                                  (EvaluationPlan("cv", folds=5), False, 5)):
        splits = evaluation_splits(plan, y, is_val, groups, seed=0, quick=quick)
        assert len(splits) == n_splits
        held = np.concatenate([test for _, test in splits])
        assert sorted(held.tolist()) == list(range(len(y)))  # each image exactly once
        for train, test in splits:
            assert not set(train.tolist()) & set(test.tolist())
            for members in ([1, 2, 3], [50, 51]):
                assert len({int(np.isin(m, test)) for m in members}) == 1  # twins held out together
        if plan.kind == "holdout":
            np.testing.assert_array_equal(splits[0][1], np.flatnonzero(is_val))
    # An image alone in its class cannot be held out: it trains every fold.
    y_single = np.append(y, 7)
    splits = evaluation_splits(plan_evaluation(y_single, np.zeros(len(y_single), bool)), y_single,
                               np.zeros(len(y_single), bool))
    held = np.concatenate([test for _, test in splits])
    assert len(y_single) - 1 not in held and len(held) == len(y)
    assert all(len(y_single) - 1 in train for train, _ in splits)


def test_twin_scores_count_twins_and_score_the_others():
    classes = np.array([0, 1])
    y = np.array([0, 0, 1, 1, 0])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.4, 0.6], [0.3, 0.7]])
    groups = np.array([0, 0, 2, 3, 4])  # rows 0 and 1 are twins
    scores = twin_scores(y, proba, classes, np.arange(5), groups, before_guard=1)
    assert scores == {"n_val_with_twin_before_guard": 1, "n_val_with_twin": 2,
                      "accuracy_without_twins": pytest.approx(2 / 3)}
    assert twin_scores(y, proba, classes, np.array([2, 3]), groups, 0)["accuracy_without_twins"] is None
    folds = [(np.array([1, 2, 3, 4]), np.array([0])), (np.array([0, 2, 3, 4]), np.array([1, 2, 3, 4]))]
    assert twins_across_folds(folds, groups) == 2


def test_training_reports_twins_before_and_after_the_guard(project):
    from engine.models.training import train_on_cached_features

    fp = make_feature_project(project, [130, 120], dim=64)
    labeled = fp.image_ids
    originals, copies = labeled[:30] + labeled[130:160], labeled[100:130] + labeled[220:250]
    plant_twins(project, originals, copies)
    metrics = train_on_cached_features(JobContext(), project, "logreg", BACKBONE, LAYER).metrics
    assert metrics.evaluation == "holdout"
    assert metrics.n_val_with_twin_before_guard > 0
    assert 0 < metrics.n_val_with_twin < metrics.n_val and metrics.accuracy_without_twins is not None
    sides = {img.image_id: img.split for img in labeled_images(project)}
    assert all(sides[o] == sides[c] for o, c in zip(originals, copies))
    assert Metrics.from_json(metrics.to_json()) == metrics


def test_metrics_match_sklearns_own_scores():
    """classification_metrics reads every score off one confusion matrix: the same numbers sklearn's
    scoring functions give, on random predictions (classes missing from the truth included)."""
    import warnings

    from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    for _ in range(100):
        k = int(rng.integers(2, 8))
        classes = np.sort(rng.choice(100, k, replace=False))
        y = rng.choice(classes[: rng.integers(1, k + 1)], int(rng.integers(1, 60)))
        proba = rng.dirichlet(np.ones(k), len(y))
        m = classification_metrics(y, proba, classes, [str(c) for c in classes])
        predicted = classes[proba.argmax(axis=1)]
        precision, recall, f1, support = precision_recall_fscore_support(y, predicted, labels=classes, zero_division=0)
        with warnings.catch_warnings():  # "y_pred contains classes not in y_true"
            warnings.simplefilter("ignore")
            balanced = balanced_accuracy_score(y, predicted)
        np.testing.assert_allclose([m.accuracy, m.balanced_accuracy], [accuracy_score(y, predicted), balanced],
                                   atol=1e-12)
        scores = list(m.per_class.values())
        np.testing.assert_allclose([[c.precision, c.recall, c.f1] for c in scores],
                                   np.column_stack([precision, recall, f1]), atol=1e-12)
        assert [c.support for c in scores] == support.tolist()
