"""A fitted linear classifier as plain arrays (``LinearPredictor``): what every linear method saves, loads,
predicts with and exports.

The arrays are the unit-length flag, the scaler's mean/scale, coef, intercept and the optional sigmoid
calibration; they save to safetensors bytes (no pickle). The predictor holds them exactly as they are
saved (C order, float64, read-only) and predicts with ONE float32 matrix product of the features as
stored, the standardization folded into the weights (as the exported network computes it: engine.ship.
onnx_compose), then divides by the row lengths and adds the bias in float64: no float64 copy of 100k
feature rows. The fitted model and the loaded one (app, CLI) run the same BLAS kernel on the same bits
(rows are made C-ordered float32 first: a Fortran-order matrix takes another kernel on AVX-512 CPUs
and rounds differently in the last bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors
from scipy.special import expit, softmax

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
    """Euclidean length of each row as float64, summed in the rows' own precision (einsum: one pass, no
    copy; on float32 rows about three times faster than summing in float64, within 1e-6 of it)."""
    return np.sqrt(np.einsum("ij,ij->i", X, X).astype(np.float64))


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
        """((x / ||x|| - mean) / scale) @ coef.T + intercept, computed as ONE float32 matrix product of the
        rows as stored with the folded weights, then divided by the row lengths and shifted in float64
        (what the exported network computes; no float64 copy of X)."""
        X = np.ascontiguousarray(X, dtype=np.float32)  # same layout from every caller, same kernel
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"Expected features of shape (N, {self.n_features}), got {X.shape}.")
        weight, bias = self._folded
        scores = (X @ weight).astype(np.float64)
        if self.scales_rows:
            scores /= np.maximum(_row_lengths(X), MIN_NORM)[:, None]
        return scores + bias

    @property
    def _folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(float32 weight (D, K), float64 bias): the standardization folded into the linear map, computed once."""
        folded = self.__dict__.get("_folded_arrays")
        if folded is None:
            weight = self.coef / self.scale
            folded = (np.ascontiguousarray(weight.T, dtype=np.float32), self.intercept - weight @ self.mean)
            object.__setattr__(self, "_folded_arrays", folded)
        return folded

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
