"""Logistic regression fitted on float32 feature rows without ever converting them to float64.

scikit-learn's ``LogisticRegression`` (lbfgs) hands scipy float64 coefficients, so with float32
features every loss evaluation multiplies a float32 matrix by a float64 one: numpy converts the whole
feature matrix to float64 twice per evaluation (~0.4 s at 16,000 x 1280 on the 2-core test machine,
against ~0.06 s for the same two products in float32). At 100,000 labeled images that made a quick
retrain take tens of seconds. ``fit_logistic_float32`` minimizes exactly scikit-learn's objective
(balanced class weights, ``C``, the intercept unpenalized, the loss averaged over the sample weights;
binomial with one coefficient row for two classes, multinomial otherwise) with the same scipy L-BFGS-B
options and tolerance (``TOL``, given to both), and multiplies in float32: the two matrix products per evaluation run on the
features as stored, the rest (n x k) in float64. ``scale`` multiplies each row on the fly (the unit-length
rows times sqrt(D) of the classifiers) so no scaled copy of the features is made either.

Used by ``LogisticClassifier`` from ``FLOAT32_FIT_FROM`` feature values up (engine.models.classifiers):
below it scikit-learn's own solver runs (exact to the last digits the tests compare against), above it
the float32 products' rounding (about 1e-6 of a decision value) is far below the solver's tolerance.
``fit_many_logistic_float32`` fits several models on subsets of the rows at once (training's validation
model, final model and out-of-fold models): the products are memory-bound, so one pass over the rows
with every model's weights side by side costs about what one model's pass costs.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

# Largest projected gradient at the stop, for this solver and scikit-learn's (engine.models.classifiers).
# Tighter than scikit-learn's default 1e-4: there the solver stops early enough that a fit started from a
# previous solution keeps part of it. A quick retrain's validation model starts from the last model,
# which was trained on the validation images too, and so scored them 1.3 points too well on average at
# 30 labeled per class on caltech101-dev (0.4 at 10; up to 3.1 in one draw); at 1e-5 started and fresh
# fits agree (0.0 points in the same 10 draws) for ~2x the iterations of a started fit.
TOL = 1e-5
MAX_ITER = 2000


def balanced_weights(y_index: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-sample weights of ``class_weight='balanced'``: n / (k * count of the sample's class)."""
    counts = np.bincount(y_index, minlength=n_classes).astype(np.float64)
    return (len(y_index) / (n_classes * counts))[y_index]


def fit_logistic_float32(
    X: np.ndarray, y_index: np.ndarray, n_classes: int, C: float, start: tuple[np.ndarray, np.ndarray] | None = None,
    scale: np.ndarray | None = None, tol: float = TOL, max_iter: int = MAX_ITER,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(coef (k, D) float64, intercept (k,) float64, iterations), k = 1 for two classes else ``n_classes``.

    ``X``: float32 (N, D) rows, used as they are (no copy); ``scale``: an optional per-row factor the model
    sees the rows multiplied by; ``y_index``: each row's class as 0..n_classes-1; ``start``: (coef,
    intercept) to start from (a previous solution), else zeros."""
    fits, iterations = fit_many_logistic_float32(X, y_index, n_classes, C, [None], start, scale, tol, max_iter)
    (coef, intercept), = fits
    return coef, intercept, iterations


def fit_many_logistic_float32(
    X: np.ndarray, y_index: np.ndarray, n_classes: int, C: float, subsets: list[np.ndarray | None],
    start: tuple[np.ndarray, np.ndarray] | None = None, scale: np.ndarray | None = None, tol: float = TOL,
    max_iter: int = MAX_ITER,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """One model per subset of rows (an array of row indices, None for all rows), as if each were fitted on
    its rows alone, sharing every pass over ``X``: each step multiplies the rows once by every model's
    weights side by side, and each model weighs only its own rows (balanced over its rows' classes).
    The products are memory-bound, so fitting the validation model, the final one and the out-of-fold ones
    together costs about what one of them costs alone. The models' objectives are independent: their sum
    is minimized, and the stopping test (largest projected gradient <= ``tol``) holds for each.

    Returns ([(coef, intercept) per subset], iterations). Every subset must hold every class."""
    X = np.asarray(X)
    if X.dtype != np.float32:
        raise TypeError("fit_logistic_float32 takes float32 rows")
    n, dim = X.shape
    k = 1 if n_classes == 2 else n_classes
    models = len(subsets)
    sample = np.zeros((models, n))  # each model's weight of each row, over the model's total weight
    for m, rows in enumerate(subsets):
        rows = np.arange(n) if rows is None else np.asarray(rows)
        counts = np.bincount(y_index[rows], minlength=n_classes)
        if counts.min() == 0:
            raise ValueError("Every subset must hold every class.")
        sample[m, rows] = (len(rows) / (n_classes * counts.astype(np.float64)))[y_index[rows]]
    totals = sample.sum(axis=1)
    sample /= totals[:, None]
    l2 = 1.0 / (C * totals)
    row_scale = np.ones(n) if scale is None else np.asarray(scale, dtype=np.float64)
    rows_all = np.arange(n)
    positive = (y_index == 1).astype(np.float64)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        params = theta.reshape(models * k, dim + 1)
        coef, intercept = params[:, :dim], params[:, dim]
        raw = (X @ coef.T.astype(np.float32)).astype(np.float64)
        raw *= row_scale[:, None]
        raw += intercept
        pointwise = np.empty_like(raw)
        loss = 0.0
        for m in range(models):
            block = raw[:, m * k:(m + 1) * k]
            if k == 1:
                z = block[:, 0]
                loss += float(sample[m] @ (np.logaddexp(0.0, z) - positive * z))
                pointwise[:, m] = sample[m] * (expit(z) - positive)
            else:  # softmax and log-sum-exp from one exp (scipy's logsumexp costs ms per call in overhead)
                top = block.max(axis=1)
                p = np.exp(block - top[:, None])
                total = p.sum(axis=1)
                loss += float(sample[m] @ (top + np.log(total) - block[rows_all, y_index]))
                p /= total[:, None]
                p[rows_all, y_index] -= 1.0
                pointwise[:, m * k:(m + 1) * k] = p * sample[m][:, None]
        penalty = np.repeat(l2, k)
        loss += 0.5 * float(penalty @ np.sum(coef * coef, axis=1))
        grad = np.empty((models * k, dim + 1))
        grad[:, :dim] = ((pointwise * row_scale[:, None]).T.astype(np.float32) @ X).astype(np.float64)
        grad[:, :dim] += penalty[:, None] * coef
        grad[:, dim] = pointwise.sum(axis=0)
        return loss, grad.ravel()

    theta = np.zeros((models, k, dim + 1))
    if start is not None:
        theta[:, :, :dim], theta[:, :, dim] = start[0], start[1]
    result = minimize(objective, theta.ravel(), jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps})
    params = result.x.reshape(models, k, dim + 1)
    return [(params[m, :, :dim].copy(), params[m, :, dim].copy()) for m in range(models)], int(result.nit)
