"""Linear feature classifiers: sklearn conventions, seeds, tiny data, and lossless safetensors round trips."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, normalize
from sklearn.svm import LinearSVC
from sklearn.utils.class_weight import compute_sample_weight

from engine.models.classifiers import (
    DEFAULT_C,
    SVM_CS,
    LinearPredictor,
    LinearSVMClassifier,
    LogisticClassifier,
    NotEnoughLabelsError,
    make_classifier,
)
from engine.models.logistic_float32 import TOL


def blobs(n: int, k: int, dim: int = 24, seed: int = 0, spread: float = 2.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * 2
    y = np.arange(n) % k
    X = (centers[y] + rng.normal(scale=spread, size=(n, dim))).astype(np.float32)
    return X, (y * 7 + 3).astype(np.int64)  # class ids need not be 0..k-1


@pytest.mark.parametrize("cls", [LogisticClassifier, LinearSVMClassifier])
@pytest.mark.parametrize("k", [2, 4])
def test_fit_predict_follow_sklearn_conventions(cls, k):
    X, y = blobs(80, k)
    model = cls(random_state=0).fit(X, y)
    proba = model.predict_proba(X)
    assert list(model.classes_) == sorted(set(y.tolist()))
    assert proba.shape == (80, k)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert np.array_equal(model.predict(X), model.classes_[proba.argmax(axis=1)])
    assert model.score(X, y) > 0.85
    assert model.C_ in model.search_Cs
    assert set(clone(model).get_params()) >= {"C", "Cs", "random_state"}


@pytest.mark.parametrize("cls", [LogisticClassifier, LinearSVMClassifier])
@pytest.mark.parametrize("k", [2, 3])
def test_fitted_and_loaded_predictors_hold_identical_arrays(cls, k):
    """The fitted model predicts through exactly what is saved: same values, dtype, shape and C order
    (a Fortran-ordered coef made AVX-512 BLAS round the fitted model's products differently)."""
    X, y = blobs(60, k, seed=1)
    model = cls(random_state=3).fit(X, y)
    data = model.to_bytes()
    assert data[8:9] == b"{"  # a safetensors header, not a pickle
    fitted, loaded = model.predictor_.arrays(), LinearPredictor.from_bytes(data).arrays()
    assert fitted.keys() == loaded.keys()
    assert ("calib_a" in fitted) == (cls is LinearSVMClassifier)
    for name, array in fitted.items():
        assert array.dtype == loaded[name].dtype == (np.int64 if name == "classes" else np.float64), name
        assert array.flags.c_contiguous and loaded[name].flags.c_contiguous, name
        assert not array.flags.writeable and not loaded[name].flags.writeable, name
        assert array.shape == loaded[name].shape, name
        assert np.array_equal(array, loaded[name]), name  # a storage round trip, not a computation: bit-exact


@pytest.mark.parametrize("cls", [LogisticClassifier, LinearSVMClassifier])
@pytest.mark.parametrize("k", [2, 3])
def test_saved_and_loaded_model_gives_the_same_probabilities(cls, k):
    X, y = blobs(60, k, seed=1)
    model = cls(random_state=3).fit(X, y)
    loaded = LinearPredictor.from_bytes(model.to_bytes())
    X_new, _ = blobs(30, k, seed=2)
    # Same arrays, same layout: equal in practice; the tolerance only allows for BLAS rounding.
    np.testing.assert_allclose(loaded.predict_proba(X_new), model.predict_proba(X_new), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(loaded.predict_proba(np.asfortranarray(X_new)), model.predict_proba(X_new),
                               rtol=1e-12, atol=1e-12)
    assert np.array_equal(loaded.predict(X_new), model.predict(X_new))
    assert np.array_equal(loaded.classes, model.classes_)


def test_exported_arrays_match_independent_sklearn_models():
    """Unit-length rows (times sqrt(D)) into plain sklearn models give what the saved arrays give."""
    X, y = blobs(90, 3, seed=4)
    rows = normalize(X.astype(np.float64)) * np.sqrt(X.shape[1])
    logreg = LogisticClassifier(C=0.1).fit(X, y)
    reference = LogisticRegression(C=0.1, class_weight="balanced", tol=TOL, max_iter=2000).fit(rows, y)
    # The same objective from float32 rows rounded a little differently: at a tolerance of 1e-5 the solver
    # runs to where float32 rounding steers its last steps, so the two stop a few 1e-4 apart.
    np.testing.assert_allclose(logreg.predict_proba(X), reference.predict_proba(rows), atol=1e-3)
    svm = LinearSVMClassifier(C=0.1, random_state=0).fit(X, y)
    calibrated = CalibratedClassifierCV(
        LinearSVC(C=0.1, class_weight="balanced", max_iter=5000, random_state=0), method="sigmoid", ensemble=False,
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
    ).fit(rows, y, sample_weight=compute_sample_weight("balanced", y))
    np.testing.assert_allclose(svm.predict_proba(X), calibrated.predict_proba(rows), atol=1e-6)
    old_recipe = LogisticClassifier(C=0.1, unit_length=False, standardize=True).fit(X, y)
    standardized = make_pipeline(StandardScaler(),
                                 LogisticRegression(C=0.1, class_weight="balanced", tol=TOL, max_iter=2000))
    np.testing.assert_allclose(old_recipe.predict_proba(X), standardized.fit(X, y).predict_proba(X), atol=1e-3)


@pytest.mark.parametrize("cls", [LogisticClassifier, LinearSVMClassifier])
def test_a_row_scaled_by_a_positive_factor_gets_the_same_answer(cls):
    """Unit-length rows: brightness-like changes of a feature vector's overall size do not move predictions;
    the same model standardizing raw features would change its mind."""
    X, y = blobs(60, 3, seed=11)
    X = np.abs(X)
    model = cls(C=1.0, random_state=0).fit(X, y)
    loaded = LinearPredictor.from_bytes(model.to_bytes())
    assert loaded.scales_rows
    np.testing.assert_allclose(loaded.predict_proba(3.0 * X), model.predict_proba(X), atol=1e-6)  # float32 rounding of 3x
    raw = cls(C=1.0, random_state=0, unit_length=False, standardize=True).fit(X, y)
    assert not LinearPredictor.from_bytes(raw.to_bytes()).scales_rows
    assert np.abs(raw.predict_proba(3.0 * X) - raw.predict_proba(X)).max() > 0.1


def test_logistic_regression_uses_its_fixed_C_and_the_svm_searches():
    X, y = blobs(60, 3, seed=12)
    logreg = LogisticClassifier().fit(X, y)
    assert logreg.C_ == DEFAULT_C and logreg.cv_results_ == []
    svm = LinearSVMClassifier().fit(X, y)
    assert [r["C"] for r in svm.cv_results_] == list(SVM_CS) and svm.C_ in SVM_CS


def test_a_previous_model_on_other_features_is_not_a_warm_start():
    """A model saved with standardized raw features (before unit length) cannot start a unit-length fit:
    the new fit is the cold one."""
    X, y = blobs(120, 3, dim=32, seed=13)
    old = LogisticClassifier(C=1.0, unit_length=False, standardize=True).fit(X, y).predictor_
    warm = LogisticClassifier(C=1.0, warm_start_from=old).fit(X, y)
    cold = LogisticClassifier(C=1.0).fit(X, y)
    np.testing.assert_allclose(warm.predict_proba(X), cold.predict_proba(X), atol=1e-9)
    assert warm.n_iter_ == cold.n_iter_


@pytest.mark.parametrize("method", ["logreg", "svm"])
def test_same_seed_same_model(method):
    X, y = blobs(50, 3, seed=5, spread=4.0)
    a = make_classifier(method, random_state=7).fit(X, y)
    b = make_classifier(method, random_state=7).fit(X, y)
    assert a.C_ == b.C_
    assert np.array_equal(a.predict_proba(X), b.predict_proba(X))


@pytest.mark.parametrize("method", ["logreg", "svm"])
@pytest.mark.parametrize("per_class", [1, 2])
def test_one_or_two_examples_per_class_still_train(method, per_class):
    X, y = blobs(3 * per_class, 3, seed=6, spread=0.5)
    model = make_classifier(method).fit(X, y)
    proba = model.predict_proba(X)
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert (model.predict(X) == y).mean() >= 2 / 3


@pytest.mark.parametrize("method", ["logreg", "svm"])
def test_one_class_or_no_labels_is_a_clear_error(method):
    X, _ = blobs(6, 2)
    with pytest.raises(NotEnoughLabelsError, match="at least two classes"):
        make_classifier(method).fit(X, np.full(6, 4))
    with pytest.raises(NotEnoughLabelsError, match="No labeled images"):
        make_classifier(method).fit(X[:0], np.zeros(0, dtype=np.int64))


def imbalanced(n0: int, n1: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping Gaussian classes (means 0 and 0.8 in 8 dimensions)."""
    X = np.vstack([rng.normal(0, 1, (n0, 8)), rng.normal(0.8, 1, (n1, 8))]).astype(np.float32)
    return X, np.array([0] * n0 + [1] * n1)


@pytest.mark.parametrize("cls, baseline", [
    (LogisticClassifier, lambda: LogisticRegression(C=1.0, max_iter=2000)),
    (LinearSVMClassifier, lambda: CalibratedClassifierCV(LinearSVC(C=1.0), method="sigmoid", ensemble=False,
                                                         cv=StratifiedKFold(5, shuffle=True, random_state=0))),
])
def test_class_weights_lift_the_minority_class_on_held_out_data(cls, baseline):
    """Trained on 190 versus 10 images of overlapping classes and judged on fresh, balanced data, the
    weighted classifier finds far more of the rare class than the same model without class weights."""
    rng = np.random.default_rng(0)
    X, y = imbalanced(190, 10, rng)
    X_test, y_test = imbalanced(500, 500, rng)
    weighted = cls(C=1.0).fit(X, y)
    unweighted = make_pipeline(StandardScaler(), baseline()).fit(X, y)

    def minority_recall(model) -> float:
        return float((model.predict(X_test[y_test == 1]) == 1).mean())

    assert minority_recall(unweighted) < 0.55  # the baseline mostly answers "majority"
    assert minority_recall(weighted) >= minority_recall(unweighted) + 0.2
    assert balanced_accuracy_score(y_test, weighted.predict(X_test)) >= balanced_accuracy_score(
        y_test, unweighted.predict(X_test)) + 0.05


def test_warm_start_reaches_the_same_solution_faster():
    X, y = blobs(300, 4, dim=64, seed=9, spread=4.0)
    first = LogisticClassifier(C=0.1).fit(X, y)
    y2 = y.copy()
    y2[0] = y[1]
    cold = LogisticClassifier(C=0.1).fit(X, y2)
    warm = LogisticClassifier(C=0.1, warm_start_from=first.predictor_).fit(X, y2)
    np.testing.assert_allclose(warm.predict_proba(X), cold.predict_proba(X), atol=2e-3)
    assert warm.n_iter_ < cold.n_iter_


def test_wrong_feature_width_and_garbage_bytes_are_refused():
    X, y = blobs(20, 2)
    model = LogisticClassifier(C=1.0).fit(X, y)
    with pytest.raises(ValueError, match="shape"):
        model.predict_proba(X[:, :5])
    from safetensors.numpy import save

    with pytest.raises(ValueError, match="Not a Sortlab linear model"):
        LinearPredictor.from_bytes(save({"x": np.zeros(2)}))
