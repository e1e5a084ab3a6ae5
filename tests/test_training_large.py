"""The paths quick training takes on large projects, exercised on small data with their thresholds lowered:
logistic regression fitted in float32 (engine.models.logistic_float32), predictions as one float32
product, the leak guard comparing a newly labeled image with the cached matrix itself."""

from __future__ import annotations

import contextlib
import gc

import numpy as np
import pytest
from helpers.feature_projects import BACKBONE, LAYER, add_placeholder_images, make_feature_project
from scipy.special import softmax

from engine.curation.duplicates import pairs_between, unit_rows
from engine.curation.leak_guard import GuardFeatures, update_near_duplicates
from engine.models import classifiers
from engine.models.classifiers import LinearPredictor, LogisticClassifier
from engine.models.logistic_float32 import fit_logistic_float32, fit_many_logistic_float32
from engine.models.training import train_on_cached_features
from engine.runtime.jobs import JobContext
from storage import catalog, modelstore
from storage.featurestore import ensure_feature_set, load_vectors, store_vectors
from storage.near_duplicates import labeled_near_duplicates


def rectified_blobs(n: int, k: int, dim: int = 48, seed: int = 0):
    """Pooled-feature-like rows: class clusters, rectified, float32; class ids 3, 10, 17, ..."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=0.8, size=(k, dim))
    y = np.arange(n) % k
    X = np.maximum(centers[y] + rng.normal(size=(n, dim)), 0).astype(np.float32)
    return X, (y * 7 + 3).astype(np.int64)


@pytest.mark.parametrize("k", [2, 4])
def test_the_float32_fit_finds_scikit_learns_solution(monkeypatch, k):
    """Above the size threshold (lowered here to every fit) the float32 solver minimizes the same objective:
    the same probabilities as scikit-learn's solver within its tolerance, cold and warm started."""
    X, y = rectified_blobs(600, k, seed=k)
    y2 = y.copy()
    y2[:3] = y[3:6]  # a few labels changed, as before a quick retrain
    monkeypatch.setattr(classifiers, "FLOAT32_FIT_FROM", 10**12)
    reference = LogisticClassifier().fit(X, y)
    reference_warm = LogisticClassifier(warm_start_from=reference.predictor_).fit(X, y2)
    monkeypatch.setattr(classifiers, "FLOAT32_FIT_FROM", 0)
    fitted = LogisticClassifier().fit(X, y)
    cold = LogisticClassifier().fit(X, y2)
    warm = LogisticClassifier(warm_start_from=fitted.predictor_).fit(X, y2)

    # Within the solvers' precision: at a tolerance of 1e-5 float32 rounding steers scikit-learn's last steps.
    np.testing.assert_allclose(fitted.predict_proba(X), reference.predict_proba(X), atol=1e-3)
    np.testing.assert_allclose(warm.predict_proba(X), reference_warm.predict_proba(X), atol=2e-2)
    np.testing.assert_allclose(warm.predict_proba(X), cold.predict_proba(X), atol=2e-2)
    assert (warm.predict(X) == reference_warm.predict(X)).mean() > 0.99
    assert warm.n_iter_ < cold.n_iter_  # the warm start is used
    assert fitted.predictor_.coef.shape == (1 if k == 2 else k, X.shape[1])
    assert fitted.predictor_.scales_rows
    loaded = LinearPredictor.from_bytes(fitted.to_bytes())
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))


@pytest.mark.parametrize("k", [2, 3])
def test_models_fitted_together_match_models_fitted_alone(monkeypatch, k):
    """fit_subsets: one model per row subset, sharing the passes over X, each as if fitted on its rows alone
    (its own balanced class weights), warm start included."""
    monkeypatch.setattr(classifiers, "FLOAT32_FIT_FROM", 0)
    X, y = rectified_blobs(450, k, seed=10 + k)
    y[:40] = y[40:80]  # unbalanced, so that each subset's class weights differ
    subsets = [np.arange(300), np.arange(450), np.arange(150, 450)]
    previous = LogisticClassifier().fit(X[:200], y[:200]).predictor_
    for warm in (None, previous):
        together = LogisticClassifier(C=0.5, warm_start_from=warm).fit_subsets(X, y, subsets)
        for model, rows in zip(together, subsets):
            alone = LogisticClassifier(C=0.5, warm_start_from=warm).fit(X[rows], y[rows])
            assert model.C_ == 0.5 and np.array_equal(model.classes_, alone.classes_)
            # Two runs of the solver stopping within its tolerance (1e-4) of one optimum, by other paths.
            np.testing.assert_allclose(model.predict_proba(X), alone.predict_proba(X), atol=2e-2)
            assert (model.predict(X) == alone.predict(X)).mean() > 0.99
    # With a tight tolerance both reach the same optimum: the objectives are each model's own.
    y_index = np.searchsorted(np.unique(y), y)
    fits, _ = fit_many_logistic_float32(X, y_index, k, 0.5, subsets, tol=1e-6)
    for (coef, intercept), rows in zip(fits, subsets):
        coef_alone, intercept_alone, _ = fit_logistic_float32(X[rows], y_index[rows], k, 0.5, tol=1e-6)
        scores = X @ np.column_stack([coef.T, coef_alone.T])
        np.testing.assert_allclose(scores[:, :len(coef)] + intercept, scores[:, len(coef):] + intercept_alone,
                                   atol=0.05 * np.abs(scores).max())
    with pytest.raises(ValueError, match="every class"):
        LogisticClassifier().fit_subsets(X, y, [np.flatnonzero(y != y[0])])


def test_the_float32_fit_is_used_only_from_the_threshold(monkeypatch):
    """Below the threshold, and for the standardized recipe, scikit-learn's solver runs (its n_iter_ array)."""
    X, y = rectified_blobs(200, 3)
    calls = []
    real = classifiers.fit_logistic_float32

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(classifiers, "fit_logistic_float32", counting)
    monkeypatch.setattr(classifiers, "FLOAT32_FIT_FROM", X.size + 1)
    LogisticClassifier().fit(X, y)
    assert calls == []
    monkeypatch.setattr(classifiers, "FLOAT32_FIT_FROM", X.size)
    LogisticClassifier().fit(X, y)
    LogisticClassifier(unit_length=False, standardize=True).fit(X, y)
    assert calls == [X.shape]  # the large fit once; the standardized recipe kept scikit-learn's


def test_predictions_are_the_saved_formula_in_float32():
    """One float32 product with the folded weights gives the predictor's formula computed in float64."""
    X, y = rectified_blobs(300, 4)
    predictor = LogisticClassifier().fit(X, y).predictor_
    x64 = X.astype(np.float64)
    unit = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    expected = softmax(((unit - predictor.mean) / predictor.scale) @ predictor.coef.T + predictor.intercept, axis=1)
    np.testing.assert_allclose(predictor.predict_proba(X), expected, atol=1e-5)
    np.testing.assert_array_equal(predictor.predict_proba(np.asfortranarray(x64)), predictor.predict_proba(X))


def test_pairs_between_divides_the_base_by_its_lengths_without_copying_it():
    rng = np.random.default_rng(5)
    base = np.abs(rng.normal(size=(50, 16))).astype(np.float32)
    base[7] = 0.0  # a zero row matches nothing
    queries = np.vstack([base[3] * 2.5 + 0.01, base[40]]).astype(np.float32)
    q, b, s = pairs_between(queries, base, 0.9)
    exact = unit_rows(queries) @ unit_rows(base).T
    expected = set(zip(*np.nonzero(exact >= 0.9)))
    assert set(zip(q.tolist(), b.tolist())) == {(int(i), int(j)) for i, j in expected}
    assert (0, 3) in set(zip(q.tolist(), b.tolist())) and (1, 40) in set(zip(q.tolist(), b.tolist()))
    np.testing.assert_allclose(s, exact[q, b], atol=1e-6)


def test_a_newly_labeled_image_is_paired_with_labeled_twins_only(project):
    """After a label edit the guard compares the new image with the whole cached matrix and keeps only
    pairs with labeled images (an unlabeled look-alike is no leak)."""
    fp = make_feature_project(project, [20, 20], unlabeled=3, dim=32)
    ids, X = load_vectors(project, BACKBONE, LAYER)
    labeled = fp.image_ids[:40]
    update_near_duplicates(project, labeled, GuardFeatures(BACKBONE, LAYER, ids, X))
    new, labeled_twin, unlabeled_twin = fp.image_ids[40:43]
    row_of = {int(i): r for r, i in enumerate(ids)}
    X[row_of[labeled_twin]] = X[row_of[labeled[4]]] * 1.01
    X[row_of[unlabeled_twin]] = X[row_of[new]] * 0.99
    X[row_of[labeled_twin]] = X[row_of[new]] * 1.02  # the new image's twin, labeled with it below
    feature_set = ensure_feature_set(project, BACKBONE, LAYER, X.shape[1])
    twins = [labeled_twin, unlabeled_twin]
    store_vectors(project, feature_set.id, twins, X[[row_of[i] for i in twins]])
    catalog.set_labels(project, [new, labeled_twin], fp.class_by_name["c0"])
    ids, X = load_vectors(project, BACKBONE, LAYER)
    compared = update_near_duplicates(project, [*labeled, new, labeled_twin], GuardFeatures(BACKBONE, LAYER, ids, X))
    assert compared == 2
    a, b = labeled_near_duplicates(project)
    pairs = set(zip(a.tolist(), b.tolist()))
    assert (min(new, labeled_twin), max(new, labeled_twin)) in pairs
    assert all(unlabeled_twin not in pair for pair in pairs)


def test_quick_training_reports_its_phases_and_stays_honest(project, monkeypatch):
    """A quick retrain through the float32 paths: every labeled image still gets an out-of-fold
    prediction, and the timings name each phase (what benchmarks/gui_latency.py prints)."""
    monkeypatch.setattr(classifiers, "FLOAT32_FIT_FROM", 0)
    fp = make_feature_project(project, [150, 150], dim=32, spread=3.0)
    first = train_on_cached_features(JobContext(), project, "logreg", BACKBONE, LAYER)
    catalog.set_labels(project, [fp.image_ids[0]], fp.class_by_name["c1"])
    result = train_on_cached_features(JobContext(), project, "logreg", BACKBONE, LAYER, quick=True)
    assert result.params["quick"] and result.metrics.evaluation == first.metrics.evaluation == "holdout"
    assert {"labels_s", "vectors_s", "leak_guard_s", "train_s", "predict_s", "store_s", "total_s"} <= set(result.timings)
    assert result.metrics.accuracy > 0.9
    ids, proba = modelstore.prediction_probabilities(project, result.model_version)
    monkeypatch.setattr(classifiers, "FLOAT32_FIT_FROM", 10**12)  # the same retrain, each model fitted alone
    catalog.set_labels(project, [fp.image_ids[0]], fp.class_by_name["c0"])
    catalog.set_labels(project, [fp.image_ids[0]], fp.class_by_name["c1"])
    alone = train_on_cached_features(JobContext(), project, "logreg", BACKBONE, LAYER, quick=True)
    assert (alone.metrics.n_train, alone.metrics.n_val) == (result.metrics.n_train, result.metrics.n_val)
    assert abs(alone.metrics.accuracy - result.metrics.accuracy) <= 2 / result.metrics.n_val
    ids_alone, proba_alone = modelstore.prediction_probabilities(project, alone.model_version)
    assert np.array_equal(ids, ids_alone)
    assert (proba.argmax(axis=1) == proba_alone.argmax(axis=1)).mean() > 0.98


def test_deleting_a_version_removes_its_predictions_in_short_transactions(project, monkeypatch):
    """Automatic retrains prune the version they replace: at 100k images its predictions must not go in one
    long write (a label key pressed meanwhile would wait for it). The version disappears from the lists
    at once, its predictions chunk by chunk, and the other versions keep theirs."""
    ids = add_placeholder_images(project, 23)
    class_ids = list(catalog.ensure_classes(project, ["c0", "c1"]).values())
    proba = np.tile(np.array([[0.3, 0.7]], dtype=np.float32), (len(ids), 1))

    def save() -> int:
        return modelstore.save_model_version(project, modelstore.NewModel(
            "logreg", "lite0", "pool", ["c0", "c1"], class_ids, b"w", {"C": 1.0}, {}, 10),
            modelstore.PredictionBatch(np.asarray(ids), proba))

    kept, pruned = save(), save()
    monkeypatch.setattr(modelstore, "PREDICTION_CHUNK", 5)
    writes, real_writing = [], type(project).writing
    seen_listed = []

    @contextlib.contextmanager
    def writing(self):
        writes.append(1)
        if len(writes) == 2:  # the first chunk: the version is already gone from the lists
            seen_listed.append([m.version for m in modelstore.list_models(project)])
        with real_writing(self) as session:
            yield session

    monkeypatch.setattr(type(project), "writing", writing)
    modelstore.delete_model(project, pruned)
    assert len(writes) >= 1 + len(ids) // 5 + 1  # hide, the chunks, the row
    assert seen_listed == [[kept]]
    assert modelstore.active_version(project) == kept
    assert [m.version for m in modelstore.list_models(project)] == [kept]
    assert len(modelstore.prediction_probabilities(project, kept)[0]) == len(ids)
    assert len(modelstore.prediction_probabilities(project, pruned)[0]) == 0
    modelstore.delete_model(project, pruned)  # gone already: nothing to do


def test_the_cycle_collector_is_paused_while_training_and_back_after(project, monkeypatch):
    """Full garbage collections during a 100k-image training froze the GUI thread, and its Python loops
    kept the GIL 5 ms at a time from a label key's writes: the job pauses the collector and shortens the
    switch interval, and gives both back as it found them, also when training fails."""
    import sys

    from engine.models import training

    make_feature_project(project, [30, 30], dim=16)
    seen = []
    real = training.save_model_version
    interval = sys.getswitchinterval()

    def saving(*args, **kwargs):
        seen.append((gc.isenabled(), sys.getswitchinterval()))
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "save_model_version", saving)
    assert gc.isenabled()
    train_on_cached_features(JobContext(), project, "logreg", BACKBONE, LAYER)
    assert seen == [(False, pytest.approx(min(interval, training.TRAINING_SWITCH_INTERVAL_S)))]
    assert gc.isenabled() and sys.getswitchinterval() == pytest.approx(interval)

    def failing(*args, **kwargs):
        raise OSError("disk trouble")

    monkeypatch.setattr(training, "save_model_version", failing)
    with pytest.raises(OSError, match="disk trouble"):
        train_on_cached_features(JobContext(), project, "logreg", BACKBONE, LAYER)
    assert gc.isenabled()
    gc.disable()
    try:  # a caller that had it off keeps it off
        monkeypatch.setattr(training, "save_model_version", real)
        train_on_cached_features(JobContext(), project, "logreg", BACKBONE, LAYER)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_log_is_copied_by_background_writers_never_by_a_label_key_commit(project, monkeypatch):
    """SQLite's automatic checkpoint is off (it ran in whichever commit crossed 1000 pages, often a
    label key on the GUI thread); after a write on a background thread whose log has grown, the
    thread copies the log into the file after its commit, outside the write turn; the main thread
    leaves a small log alone. Every prediction of a chunked save is stored."""
    import threading

    from sqlalchemy import event

    from storage import file_writes

    with project.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    ids = add_placeholder_images(project, 40)
    class_ids = list(catalog.ensure_classes(project, ["c0", "c1"]).values())
    monkeypatch.setattr(modelstore, "PREDICTION_CHUNK", 4)
    monkeypatch.setattr(file_writes, "WAL_CHECKPOINT_BYTES", 1)  # any log is "grown"
    statements = []

    def trace(dbapi_connection, _record):  # every statement SQLite runs, driver-level ones included
        dbapi_connection.set_trace_callback(lambda sql: statements.append((threading.current_thread().name, sql)))

    def save():
        return modelstore.save_model_version(project, modelstore.NewModel(
            "logreg", "lite0", "pool", ["c0", "c1"], class_ids, b"w", {"C": 1.0}, {}, 10),
            modelstore.PredictionBatch(np.asarray(ids), np.tile(np.float32([[0.4, 0.6]]), (len(ids), 1))))

    project.engine.dispose()  # new connections, each traced
    event.listen(project.engine, "connect", trace)
    try:
        saved = []
        worker = threading.Thread(target=lambda: saved.append(save()), name="saver")
        worker.start()
        worker.join(60)
        catalog.set_labels(project, ids[:1], class_ids[0])  # the main thread: a small log stays
    finally:
        event.remove(project.engine, "connect", trace)
    checkpoints = [name for name, statement in statements if "wal_checkpoint" in statement]
    assert checkpoints and set(checkpoints) == {"saver"}
    assert len(checkpoints) >= 10  # after each of the 10 chunks' commits (and the version's own writes)
    assert len(modelstore.prediction_probabilities(project, saved[0])[0]) == len(ids)
