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
predictor holds them exactly as they are saved (C order, float64, read-only), so the fitted model,
the loaded one (app, CLI) and the exported one run the same BLAS kernel on the same bits: a matrix
in Fortran order takes another kernel on AVX-512 CPUs and rounds differently in the last bits.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.class_weight import compute_sample_weight
from threadpoolctl import threadpool_limits

from storage.errors import ProjectError

# Logistic regression's C on unit-length rows (see the module docstring): no search.
DEFAULT_C = 1.0
# The linear SVM's hinge loss wants its C searched: CV chose from 0.001 to 0.3 on the same data sets.
SVM_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
SVM_FALLBACK_C = 0.01  # too few labels to cross-validate: the SVM's most frequent choice
MAX_FOLDS = 5
# Below this many feature values, BLAS threads cost more than they save (badly so on a busy 2-core CPU).
SINGLE_THREAD_BELOW = 4_000_000


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


_ARRAY_FIELDS = ("classes", "mean", "scale", "coef", "intercept", "calib_a", "calib_b", "unit_norm")
NORMALIZATIONS = ("standardize", "unit")
# A row shorter than this is left as it is by ``unit_rows`` (pooled features are never this small).
MIN_NORM = 1e-12


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Each row scaled to unit Euclidean length (float64): x / max(||x||, MIN_NORM), as the exported
    network computes it."""
    X = np.asarray(X, dtype=np.float64)
    return X / np.maximum(_row_lengths(X), MIN_NORM)[:, None]


def _row_lengths(X: np.ndarray) -> np.ndarray:
    """Euclidean length of each row, summed in float64 (einsum: one pass, a few times faster than norm)."""
    return np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))


def _stored_array(value, dtype) -> np.ndarray:
    """A private, read-only, C-ordered copy in the saved dtype (what from_bytes gives back too)."""
    array = np.array(value, dtype=dtype, order="C", copy=True)
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class LinearPredictor:
    """A fitted linear classifier as plain arrays: [unit length,] standardize, project, then softmax or
    calibrated sigmoids.

    ``unit_norm`` (a one-element array holding 1.0) says the feature rows are scaled to unit length
    first (``unit_rows``); models saved before it existed have none and use the features as they are.

    ``coef`` has one row for two classes (the positive, second class) and one per class otherwise.
    With ``calib_a``/``calib_b`` each decision value f becomes 1 / (1 + exp(a f + b)) (Platt scaling,
    as scikit-learn's CalibratedClassifierCV does), renormalized over classes; without, softmax.
    """

    classes: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    calib_a: np.ndarray | None = None
    calib_b: np.ndarray | None = None
    unit_norm: np.ndarray | None = None

    def __post_init__(self) -> None:
        # The one place that fixes layout and dtype: every constructor (fit, from_bytes, warm start) goes through it.
        for name in _ARRAY_FIELDS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _stored_array(value, np.int64 if name == "classes" else np.float64))

    @property
    def n_features(self) -> int:
        return int(self.coef.shape[1])

    @property
    def scales_rows(self) -> bool:
        """Whether feature rows are scaled to unit length before standardizing (``unit_rows``)."""
        return self.unit_norm is not None and bool(self.unit_norm.reshape(-1)[0])

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float64)  # same layout from every caller, same kernel
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"Expected features of shape (N, {self.n_features}), got {X.shape}.")
        if self.scales_rows:
            X = unit_rows(X)
        return ((X - self.mean) / self.scale) @ self.coef.T + self.intercept

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        scores = self.decision_function(X)
        binary = self.coef.shape[0] == 1
        if self.calib_a is not None:
            p = expit(-(self.calib_a * scores + self.calib_b))
            if binary:
                return np.column_stack([1.0 - p[:, 0], p[:, 0]])
            total = p.sum(axis=1, keepdims=True)
            uniform = np.full_like(p, 1.0 / p.shape[1])
            return np.divide(p, total, out=uniform, where=total != 0)
        if binary:
            p = expit(scores[:, 0])
            return np.column_stack([1.0 - p, p])
        return softmax(scores, axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes[np.argmax(self.predict_proba(X), axis=1)]

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays as saved, by name (calibration only when there is one)."""
        return {name: getattr(self, name) for name in _ARRAY_FIELDS if getattr(self, name) is not None}

    def to_bytes(self) -> bytes:
        return save_safetensors(self.arrays(), metadata={"format": "sortlab-linear-1"})

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearPredictor:
        try:
            arrays = load_safetensors(data)
        except Exception as exc:  # safetensors raises its own SafetensorError for foreign bytes
            raise ValueError("Not a Sortlab linear model (not a safetensors file).") from exc
        missing = {"classes", "mean", "scale", "coef", "intercept"} - set(arrays)
        if missing:
            raise ValueError(f"Not a Sortlab linear model (missing {', '.join(sorted(missing))}).")
        return cls(arrays["classes"], arrays["mean"], arrays["scale"], arrays["coef"], arrays["intercept"],
                   arrays.get("calib_a"), arrays.get("calib_b"), arrays.get("unit_norm"))


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
        factor = np.sqrt(X.shape[1]) / np.maximum(_row_lengths(X), MIN_NORM)
        return (X * factor[:, None].astype(np.float32)).astype(np.float32, copy=False)

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
        with threadpool_limits(1 if X.size < SINGLE_THREAD_BELOW else None):
            X = self._prepared(X)
            self.C_ = self._choose_C(X, y, counts)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                self.predictor_ = self._fit_predictor(X, y, counts)
        return self

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
        return LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=self.random_state)

    def _fit_predictor(self, X, y, counts) -> LinearPredictor:
        pipeline = self._pipeline(self.C_)
        warm = self.warm_start_from
        scaler, model = pipeline.named_steps["scale"], pipeline.named_steps["model"]
        if (warm is not None and np.array_equal(warm.classes, self.classes_) and warm.n_features == X.shape[1]
                and warm.scales_rows == self.unit_length):
            if self.standardize:
                scaler.fit(X)
            mean, scale = self._scaling(scaler)
            # Move the old solution into the new scaling: w' = w * s_new / s_old, b' shifted to match.
            coef = warm.coef * (scale / warm.scale)
            intercept = warm.intercept + warm.coef @ ((mean - warm.mean) / warm.scale)
            model.set_params(warm_start=True)
            model.coef_, model.intercept_ = coef, intercept
            model.fit(scaler.transform(X) if self.standardize else X, y)
        else:
            pipeline.fit(X, y)
        self.n_iter_ = int(np.max(model.n_iter_))
        return self._predictor(scaler, model)


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
