"""Linear classifiers on cached deep features, with scikit-learn conventions and no pickle.

``LogisticClassifier`` and ``LinearSVMClassifier`` scale each feature row to unit length (then by
sqrt(D), the length a standardized row has on average, so C keeps its usual meaning), weight classes
by inverse frequency (``class_weight='balanced'``), and are reproducible with a seed. Logistic
regression uses C = 1; the SVM picks C by stratified cross-validation when there are enough labels.
Why (benchmarks/accuracy.py, 5 draws): standardizing with 5-10 labels per class estimates 1280 means
and spreads from a few dozen rows, and cost up to 16 points of mean per-class accuracy on hymenoptera
(0.756 against 0.916 at 5 per class). On unit-length rows, 5-fold CV on log loss over C = 0.001..1 chose
C = 1 in 28 of 39 draws on caltech101-dev, hymenoptera and the digits demo (0.3 or 1 in 35), C = 1 scored
as well in accuracy and log loss, and the search cost 40-65x the training time (20-76 s on caltech).
``standardize=True, unit_length=False`` is the recipe of models saved before.
After fitting, every prediction goes through ``LinearPredictor``: the learned arrays alone
(unit-length flag, scaler mean/scale, coef, intercept, sigmoid calibration), which save to safetensors bytes. The
predictor (engine.models.predictor) predicts with one float32 matrix product, the same for the fitted
model, the loaded one and the exported one. Large fits (``FLOAT32_FIT_FROM``) use
engine.models.logistic_float32.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.class_weight import compute_sample_weight

from engine.models.logistic_float32 import TOL, fit_logistic_float32, fit_many_logistic_float32
from engine.runtime.blas import native_threads
from engine.models.predictor import MIN_NORM, LinearPredictor, _row_lengths, unit_rows  # noqa: F401 (re-exported)
from storage.errors import ProjectError

# Logistic regression's C on unit-length rows (see the module docstring): no search.
DEFAULT_C = 1.0
# The linear SVM's hinge loss wants its C searched: CV chose from 0.001 to 0.3 on the same data sets.
SVM_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
SVM_FALLBACK_C = 0.01  # too few labels to cross-validate: the SVM's most frequent choice
MAX_FOLDS = 5
# Below this many feature values, BLAS threads cost more than they save (badly so on a busy 2-core CPU).
SINGLE_THREAD_BELOW = 4_000_000
# From this many feature values, logistic regression on unit-length rows fits in float32
# (engine.models.logistic_float32: the same optimum as scikit-learn's, several times faster at 100k rows).
FLOAT32_FIT_FROM = 1_000_000


class NotEnoughLabelsError(ProjectError):
    """Training needs at least two classes with labeled images."""


def check_labels(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes and their counts, or a clear error when there is nothing to tell apart."""
    y = np.asarray(y)
    if y.size == 0:
        raise NotEnoughLabelsError("No labeled images yet: label images of at least two classes first.")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError("Class labels must be integer class ids.")
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise NotEnoughLabelsError(
            "Only one class has labeled images: label images of at least two classes to train a classifier."
        )
    return classes, counts


def fold_count(counts: np.ndarray, max_folds: int = MAX_FOLDS) -> int:
    """Stratified folds the labels allow: every class needs an image in every fold (0 = too few)."""
    folds = min(max_folds, int(np.min(counts)))
    return folds if folds >= 2 else 0


class _LinearFeatureClassifier(ClassifierMixin, BaseEstimator):
    """Shared fitting logic: validate labels, choose C (cross-validation over ``Cs``, the method's own
    ``default_Cs`` when None; no search for a single value), fit, export arrays."""

    cv_scoring = "balanced_accuracy"
    default_Cs: tuple[float, ...] = (DEFAULT_C,)
    fallback_C = DEFAULT_C

    def __init__(self, C: float | None = None, Cs=None, max_folds: int = MAX_FOLDS, random_state: int = 0,
                 warm_start_from: LinearPredictor | None = None, unit_length: bool = True, standardize: bool = False):
        self.C = C
        self.Cs = Cs
        self.max_folds = max_folds
        self.random_state = random_state
        self.warm_start_from = warm_start_from
        self.unit_length = unit_length
        self.standardize = standardize

    def _linear_model(self, C: float):
        raise NotImplementedError

    def _pipeline(self, C: float) -> Pipeline:
        return Pipeline([("scale", StandardScaler() if self.standardize else "passthrough"),
                         ("model", self._linear_model(C))])

    def _prepared(self, X: np.ndarray) -> np.ndarray:
        """The rows the pipeline sees: scaled to length sqrt(D) when ``unit_length`` (the squared length a
        standardized row has on average, so that C means about the same with either normalization).
        Float32 like the features: the solver runs about twice as fast as on float64."""
        if not self.unit_length:
            return X
        return (X * self._row_factors(X)[:, None].astype(np.float32)).astype(np.float32, copy=False)

    @staticmethod
    def _row_factors(X: np.ndarray) -> np.ndarray:
        """sqrt(D) / ||x|| per row (float64): what ``_prepared`` multiplies each row by."""
        return np.sqrt(X.shape[1]) / np.maximum(_row_lengths(X), MIN_NORM)

    def _scaling(self, scaler: StandardScaler | str) -> tuple[np.ndarray, np.ndarray]:
        """(mean, scale) of the fitted scaler on the predictor's input (unit rows when ``unit_length``:
        the pipeline's sqrt(D) factor is folded in)."""
        dim = self.n_features_in_
        mean = scaler.mean_ if self.standardize else np.zeros(dim)
        scale = scaler.scale_ if self.standardize else np.ones(dim)
        if self.unit_length:
            return mean / np.sqrt(dim), scale / np.sqrt(dim)
        return mean, scale

    def _predictor(self, scaler: StandardScaler | str, model, calib_a=None, calib_b=None) -> LinearPredictor:
        """The arrays of a fitted pipeline, for ``LinearPredictor`` to predict from unprepared features."""
        mean, scale = self._scaling(scaler)
        return LinearPredictor(self.classes_, mean, scale, model.coef_, model.intercept_, calib_a, calib_b,
                               np.ones(1) if self.unit_length else None)

    @property
    def search_Cs(self) -> tuple[float, ...]:
        """The C values cross-validation chooses from (one value: no search)."""
        return tuple(self.default_Cs if self.Cs is None else self.Cs)

    def _choose_C(self, X: np.ndarray, y: np.ndarray, counts: np.ndarray) -> float:
        folds = fold_count(counts, self.max_folds)
        Cs = self.search_Cs
        if self.C is not None:
            return float(self.C)
        if folds == 0 or len(Cs) == 1:
            self.cv_results_ = []
            return float(Cs[0]) if len(Cs) == 1 else self.fallback_C
        search = GridSearchCV(
            self._pipeline(self.fallback_C), {"model__C": list(Cs)}, scoring=self.cv_scoring,
            cv=StratifiedKFold(folds, shuffle=True, random_state=self.random_state), n_jobs=1, error_score="raise",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            search.fit(X, y)
        self.cv_results_ = [
            {"C": float(c), "score": float(s)}
            for c, s in zip(search.cv_results_["param_model__C"], search.cv_results_["mean_test_score"])
        ]
        return float(search.best_params_["model__C"])

    def fit(self, X, y):
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y)
        classes, counts = check_labels(y)
        if X.ndim != 2 or X.shape[0] != y.shape[0]:
            raise ValueError(f"X has shape {X.shape} but there are {y.shape[0]} labels.")
        self.classes_ = classes
        self.n_features_in_ = X.shape[1]
        self.cv_results_ = []
        with native_threads(1 if X.size < SINGLE_THREAD_BELOW else None):
            self.predictor_ = self._fit_rows(X, y, counts)
        return self

    def _fit_rows(self, X: np.ndarray, y: np.ndarray, counts: np.ndarray) -> LinearPredictor:
        """Choose C and fit on the prepared rows (float32 features, labels checked)."""
        X = self._prepared(X)
        self.C_ = self._choose_C(X, y, counts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return self._fit_predictor(X, y, counts)

    def _fit_predictor(self, X, y, counts) -> LinearPredictor:
        raise NotImplementedError

    def _check_fitted(self) -> LinearPredictor:
        predictor = getattr(self, "predictor_", None)
        if predictor is None:
            raise RuntimeError("This classifier is not fitted yet.")
        return predictor

    def decision_function(self, X) -> np.ndarray:
        return self._check_fitted().decision_function(X)

    def predict_proba(self, X) -> np.ndarray:
        return self._check_fitted().predict_proba(X)

    def predict(self, X) -> np.ndarray:
        return self._check_fitted().predict(X)

    def to_bytes(self) -> bytes:
        return self._check_fitted().to_bytes()


class LogisticClassifier(_LinearFeatureClassifier):
    """Multinomial logistic regression; ``warm_start_from`` (a previous predictor with the same classes and
    features) starts the solver from the old solution, which makes retraining after one label change quick."""

    cv_scoring = "neg_log_loss"

    def _linear_model(self, C: float) -> LogisticRegression:
        return LogisticRegression(C=C, class_weight="balanced", tol=TOL, max_iter=2000, random_state=self.random_state)

    def fits_in_float32(self, X: np.ndarray) -> bool:
        """Whether fits on ``X`` take the float32 solver: from ``FLOAT32_FIT_FROM`` feature values, on
        unit-length rows, with C not searched."""
        return (self.unit_length and not self.standardize and np.asarray(X).size >= FLOAT32_FIT_FROM
                and (self.C is not None or len(self.search_Cs) == 1))

    def fit_subsets(self, X: np.ndarray, y: np.ndarray, subsets: list[np.ndarray]) -> list[LogisticClassifier]:
        """One fitted copy per array of row indices, as ``clone(self).fit(X[rows], y[rows])`` would give
        (same C, same warm start), fitted together sharing every pass over ``X``
        (engine.models.logistic_float32.fit_many_logistic_float32): no row subset is copied. Needs
        ``fits_in_float32(X)`` and every class in every subset."""
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y)
        classes, counts = check_labels(y)
        if not self.fits_in_float32(X) or any(np.unique(y[rows]).size != classes.size for rows in subsets):
            raise ValueError("fit_subsets needs a float32 fit and every class in every subset")
        models = [clone(self) for _ in subsets]
        for model in models:
            model.classes_, model.n_features_in_, model.cv_results_ = classes, X.shape[1], []
            model.C_ = model._choose_C(X, y, counts)  # no search: the fixed C
        warm = models[0]._usable_warm_start(X.shape[1])
        with native_threads(1):  # as in _fit_rows
            fits, iterations = fit_many_logistic_float32(
                X, np.searchsorted(classes, y), len(classes), models[0].C_, list(subsets),
                models[0]._moved_solution(warm, "passthrough") if warm is not None else None,
                scale=self._row_factors(X))
        for model, (coef, intercept) in zip(models, fits):
            model.n_iter_ = iterations
            model.predictor_ = model._predictor("passthrough", SimpleNamespace(coef_=coef, intercept_=intercept))
        return models

    def _fit_rows(self, X: np.ndarray, y: np.ndarray, counts: np.ndarray) -> LinearPredictor:
        """From ``FLOAT32_FIT_FROM`` feature values (unit-length rows, C not searched): the same objective
        fitted on the features as they are, each row's sqrt(D) / ||x|| applied inside the products
        (engine.models.logistic_float32): no scaled copy, no float64 copy."""
        if not self.fits_in_float32(X):
            return super()._fit_rows(X, y, counts)
        self.C_ = self._choose_C(X, y, counts)  # no search: the fixed C
        warm = self._usable_warm_start(X.shape[1])
        # One BLAS thread: the products are memory-bound (5 columns), a second thread gains little and on
        # a busy 2-core machine costs several times over (and it leaves the GUI thread a core).
        with native_threads(1):
            coef, intercept, self.n_iter_ = fit_logistic_float32(
                X, np.searchsorted(self.classes_, y), len(self.classes_), self.C_,
                self._moved_solution(warm, "passthrough") if warm is not None else None, scale=self._row_factors(X))
        return self._predictor("passthrough", SimpleNamespace(coef_=coef, intercept_=intercept))

    def _usable_warm_start(self, dim: int) -> LinearPredictor | None:
        warm = self.warm_start_from
        if (warm is not None and np.array_equal(warm.classes, self.classes_) and warm.n_features == dim
                and warm.scales_rows == self.unit_length):
            return warm
        return None

    def _fit_predictor(self, X, y, counts) -> LinearPredictor:
        pipeline = self._pipeline(self.C_)
        warm = self._usable_warm_start(X.shape[1])
        scaler, model = pipeline.named_steps["scale"], pipeline.named_steps["model"]
        if warm is not None:
            if self.standardize:
                scaler.fit(X)
            model.set_params(warm_start=True)
            model.coef_, model.intercept_ = self._moved_solution(warm, scaler)
            model.fit(scaler.transform(X) if self.standardize else X, y)
        else:
            pipeline.fit(X, y)
        self.n_iter_ = int(np.max(model.n_iter_))
        return self._predictor(scaler, model)

    def _moved_solution(self, warm: LinearPredictor, scaler) -> tuple[np.ndarray, np.ndarray]:
        """The old solution in the new scaling: w' = w * s_new / s_old, b' shifted to match."""
        mean, scale = self._scaling(scaler)
        return warm.coef * (scale / warm.scale), warm.intercept + warm.coef @ ((mean - warm.mean) / warm.scale)


class LinearSVMClassifier(_LinearFeatureClassifier):
    """Linear SVM (one-vs-rest) with sigmoid-calibrated probabilities: CalibratedClassifierCV on held-out
    decision values when every class has two or more images, else Platt scaling on the training scores."""

    default_Cs = SVM_CS
    fallback_C = SVM_FALLBACK_C

    def _linear_model(self, C: float) -> LinearSVC:
        return LinearSVC(C=C, class_weight="balanced", max_iter=5000, random_state=self.random_state)

    def _fit_predictor(self, X, y, counts) -> LinearPredictor:
        folds = fold_count(counts, self.max_folds)
        if folds:
            # Balanced weights for the sigmoids too: calibrated on the raw class frequencies they would
            # bring the training prior back and undo the SVM's class weights at predict time.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*does not appear to accept sample_weight")
                calibrated = CalibratedClassifierCV(
                    self._pipeline(self.C_), method="sigmoid", ensemble=False,
                    cv=StratifiedKFold(folds, shuffle=True, random_state=self.random_state),
                ).fit(X, y, sample_weight=compute_sample_weight("balanced", y))
            fitted = calibrated.calibrated_classifiers_[0]
            pipeline, calibrators = fitted.estimator, fitted.calibrators
            calib_a = np.array([c.a_ for c in calibrators], dtype=np.float64)
            calib_b = np.array([c.b_ for c in calibrators], dtype=np.float64)
        else:
            pipeline = self._pipeline(self.C_).fit(X, y)
            calib_a, calib_b = _platt_on_training_scores(pipeline.decision_function(X), y, self.classes_)
        return self._predictor(pipeline.named_steps["scale"], pipeline.named_steps["model"], calib_a, calib_b)


def _platt_on_training_scores(scores: np.ndarray, y: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One regularized sigmoid per decision column (too few images to hold any out)."""
    scores = scores.reshape(len(y), -1)
    positives = [classes[1]] if scores.shape[1] == 1 else list(classes)
    a, b = [], []
    for column, positive in enumerate(positives):
        fit = LogisticRegression(C=1.0, class_weight="balanced").fit(scores[:, [column]], (y == positive).astype(int))
        a.append(-float(fit.coef_[0, 0]))
        b.append(-float(fit.intercept_[0]))
    return np.array(a), np.array(b)


CLASSIFIERS = {"logreg": LogisticClassifier, "svm": LinearSVMClassifier}


def make_classifier(method: str, **params) -> _LinearFeatureClassifier:
    if method not in CLASSIFIERS:
        raise ValueError(f"Unknown feature classifier '{method}' (choose from {', '.join(CLASSIFIERS)}).")
    return CLASSIFIERS[method](**params)


def refit_with_C(estimator: _LinearFeatureClassifier, C: float, warm_start_from: LinearPredictor | None = None):
    """An unfitted copy with C fixed (no search), e.g. for cross-validation folds."""
    return clone(estimator).set_params(C=C, warm_start_from=warm_start_from)
