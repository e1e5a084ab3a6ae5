"""2-D maps of the image collection: PCA at once, t-SNE (openTSNE) refining in the background.

``compute_embedding`` is a plain job function body (it takes a ``JobContext``): t-SNE streams its
intermediate layouts as ``MapLayout`` partials every few iterations so a view can move the points
while it runs, and it stops promptly when the job is cancelled. ``embedding_job`` is the job the
map submits: cached features in, PCA first, then t-SNE, and the final ``MapLayout`` returned.
No Qt here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from engine.runtime.blas import native_threads, thread_pools
from engine.runtime.first_imports import heavy_imports
from engine.runtime.jobs import JobContext
from storage.modelstore import active_version
from storage.models import Image, Label, Prediction
from storage.project import Project

PARTIAL_EVERY = 25  # t-SNE iterations between streamed layouts
EARLY_ITERATIONS = 250  # early exaggeration phase
MAIN_ITERATIONS = 500
PCA_DIMS_FOR_TSNE = 50  # t-SNE neighbours are searched in this many principal components


@dataclass(frozen=True)
class MapLayout:
    """The map's points placed in 2-D: streamed while t-SNE refines and returned by the map's job."""

    image_ids: np.ndarray  # int64, the image of each row of coords
    coords: np.ndarray  # (N, 2) float32
    method: str  # "pca" or "tsne"
    iteration: int = 0  # a streamed t-SNE layout's iterations done (0 otherwise)
    total_iterations: int = 0  # ... and planned (0 otherwise)
    colors: MapColors | None = None  # the points' colors, read once with the first layout


def background_threads() -> int:
    """Threads the map may use: every core but one, which stays free for the window's own
    thread (on a two-core laptop a two-thread t-SNE made the window miss its frames)."""
    return max(1, (os.cpu_count() or 2) - 1)


def _limited_blas():
    """Numpy's BLAS (PCA's matrix products and eigh) limited to background_threads() while a
    map is computed (process-wide, restored afterwards)."""
    return native_threads(background_threads(), user_api="blas")


def _standardize(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    mean = X.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = X.std(axis=0, dtype=np.float64).astype(np.float32)
    std[std < 1e-8] = 1.0
    return (X - mean) / std


def _pca(X: np.ndarray, n_components: int, seed: int = 0) -> np.ndarray:
    """Principal components of standardized X, padded with zeros when X has too few dimensions.

    An eigendecomposition of the smaller of the covariance (D x D) and Gram (N x N) matrices,
    with numpy only: numpy's matmul and eigh release the GIL, whereas scikit-learn's PCA solvers
    go through SciPy's LAPACK wrappers, which hold it (measured: 90-200 ms GUI stalls at 10k
    points with the randomized solver, seconds with the full one). Signs are fixed (largest
    loading positive) so the same data always gives the same picture. ``seed`` is unused: the
    result is exact and deterministic."""
    n, d = X.shape
    k = max(0, min(n_components, n - 1, d))
    out = np.zeros((n, n_components), dtype=np.float32)
    if k == 0:
        return out
    Z = _standardize(X)
    if d <= n:
        covariance = (Z.T @ Z).astype(np.float64)
        _values, vectors = np.linalg.eigh(covariance)
        axes = vectors[:, ::-1][:, :k]
        signs = np.sign(axes[np.abs(axes).argmax(axis=0), range(k)])
        axes *= np.where(signs == 0, 1.0, signs)
        out[:, :k] = Z @ axes.astype(np.float32)
    else:
        gram = (Z @ Z.T).astype(np.float64)
        values, vectors = np.linalg.eigh(gram)
        values, vectors = values[::-1][:k], vectors[:, ::-1][:, :k]
        scores = vectors * np.sqrt(np.clip(values, 0, None))
        loadings = Z.T.astype(np.float64) @ vectors  # proportional to the principal axes
        signs = np.sign(loadings[np.abs(loadings).argmax(axis=0), range(k)])
        scores *= np.where(signs == 0, 1.0, signs)
        out[:, :k] = scores.astype(np.float32)
    return out


def warm_up() -> None:
    """Import openTSNE and find the BLAS libraries ahead of time (from a background job at
    start-up): both hold the GIL for a long stretch, which would stall the GUI when the first
    map is computed."""
    with heavy_imports():
        import openTSNE  # noqa: F401

    thread_pools()


def compute_embedding(
    context: JobContext,
    X: np.ndarray,
    method: str = "pca",
    seed: int = 0,
    init: np.ndarray | None = None,
    image_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Map the rows of X (N, D) to 2-D points, (N, 2) float32.

    ``method="pca"`` returns at once. ``method="tsne"`` streams a ``MapLayout`` every
    PARTIAL_EVERY iterations, checks for cancellation at each of them, and starts from ``init``
    (N, 2) when given (for example the PCA layout already on screen), else from PCA. The streamed
    layouts name their rows by ``image_ids`` (row numbers when not given).
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError("X must be a 2-D array of feature vectors (one row per image).")
    if method not in ("pca", "tsne"):
        raise ValueError(f"Unknown embedding method {method!r}; use 'pca' or 'tsne'.")
    # BLAS threads are limited too: on a busy two-core machine OpenBLAS's own two threads made
    # the eigendecomposition of a 1,000-image map take 13 s instead of 0.3 s.
    with _limited_blas():
        if method == "pca":
            return _pca(X, 2, seed)
        if image_ids is None:
            image_ids = np.arange(len(X), dtype=np.int64)
        return _tsne(context, X, seed, init, np.asarray(image_ids, dtype=np.int64))


def _tsne(
    context: JobContext, X: np.ndarray, seed: int, init: np.ndarray | None, image_ids: np.ndarray,
) -> np.ndarray:
    n = X.shape[0]
    if n < 5:  # too few points for neighbourhoods: PCA is the honest answer
        return _pca(X, 2, seed)
    with heavy_imports():  # the start-up warm-up may be importing it on another thread
        from openTSNE import TSNEEmbedding
        from openTSNE.affinity import PerplexityBasedNN

    context.check_cancelled()
    context.progress(0.0, "Preparing the map")
    reduced = _pca(X, PCA_DIMS_FOR_TSNE, seed)
    context.check_cancelled()
    perplexity = float(min(30.0, (n - 1) / 3.0))
    context.progress(0.02, "Finding similar images")
    affinities = PerplexityBasedNN(
        reduced, perplexity=perplexity, method="auto", n_jobs=background_threads(), random_state=seed,
        verbose=False,
    )
    context.check_cancelled()
    if init is not None and np.asarray(init).shape == (n, 2):
        start = np.asarray(init, dtype=np.float64).copy()
    else:
        start = reduced[:, :2].astype(np.float64)
    start -= start.mean(axis=0)
    spread = float(np.std(start[:, 0])) or 1.0
    start *= 1e-4 / spread  # openTSNE's convention: a tiny initial spread keeps early steps stable
    embedding = TSNEEmbedding(
        start, affinities, negative_gradient_method="bh" if n < 5000 else "fft", n_jobs=background_threads(), random_state=seed,
        verbose=False,
    )
    # Barnes-Hut is quicker for small maps; the FFT approximation scales to 100k points.
    total = EARLY_ITERATIONS + MAIN_ITERATIONS
    offset = 0

    def callback(iteration: int, error: float, current: np.ndarray) -> bool:
        context.check_cancelled()  # raises JobCancelled straight out of openTSNE's loop
        done = offset + iteration
        coords = np.asarray(current, dtype=np.float32).copy()
        context.partial(MapLayout(image_ids, coords, "tsne", iteration=done, total_iterations=total))
        context.progress(0.05 + 0.95 * done / total, f"Refining the map ({done}/{total})")
        return False

    embedding = embedding.optimize(
        n_iter=EARLY_ITERATIONS, exaggeration=12, momentum=0.5,
        callbacks=callback, callbacks_every_iters=PARTIAL_EVERY,
    )
    offset = EARLY_ITERATIONS
    embedding = embedding.optimize(
        n_iter=MAIN_ITERATIONS, exaggeration=1, momentum=0.8,
        callbacks=callback, callbacks_every_iters=PARTIAL_EVERY,
    )
    context.progress(1.0, "Map ready")
    return np.asarray(embedding, dtype=np.float32).copy()


def embedding_job(
    context: JobContext, project: Project, backbone: str, layer: str | None = None, seed: int = 0,
    tsne: bool = True,
) -> MapLayout:
    """Map every image with cached features: a PCA ``MapLayout`` partial at once, then t-SNE ones,
    and the final layout returned.

    The first (PCA) partial also carries ``colors``, the points' ``MapColors``, read here so that
    the GUI thread never has to query labels and predictions of every image.
    """
    with heavy_imports():  # the warm-up job imports the feature modules too (via training)
        from engine.features.extraction import load_features

    context.progress(0.0, "Loading image features")
    image_ids, X = load_features(project, backbone, layer)
    image_ids = np.asarray(image_ids, dtype=np.int64)
    context.check_cancelled()
    if len(image_ids) == 0:
        return MapLayout(image_ids, np.zeros((0, 2), np.float32), "pca")
    pca = compute_embedding(context, X, "pca", seed=seed)
    context.partial(MapLayout(image_ids, pca, "pca", colors=map_colors(project, image_ids)))
    if not tsne:
        return MapLayout(image_ids, pca, "pca")

    coords = compute_embedding(context.subcontext(0.05, 1.0), X, "tsne", seed=seed, init=pca, image_ids=image_ids)
    return MapLayout(image_ids, coords, "tsne")


@dataclass(frozen=True)
class PointAttributes:
    """What a map colors points by, aligned with the image ids asked for."""

    image_ids: np.ndarray  # int64
    class_ids: np.ndarray  # int64, -1 = unlabeled
    source_codes: np.ndarray  # int32 index into source_names
    source_names: list[str]
    splits: np.ndarray  # int8, 1 = validation


def point_attributes(project: Project, image_ids: Sequence[int] | np.ndarray) -> PointAttributes:
    """Labels, sources and train/validation split of these images in one query (fast for 100k)."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    with project.session() as session:
        rows = session.execute(
            select(Image.id, Image.source, Image.split, Label.class_id).outerjoin(
                Label, Label.image_id == Image.id
            )
        ).all()
    n = len(rows)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
    classes = np.fromiter((-1 if r[3] is None else r[3] for r in rows), dtype=np.int64, count=n)
    source_names = sorted({r[1] or "" for r in rows}) or [""]
    code_of = {name: i for i, name in enumerate(source_names)}
    sources = np.fromiter((code_of[r[1] or ""] for r in rows), dtype=np.int32, count=n)
    splits = np.fromiter((r[2] == "val" for r in rows), dtype=np.int8, count=n)
    return PointAttributes(
        image_ids,
        align(ids, classes, image_ids, -1).astype(np.int64),
        align(ids, sources, image_ids, 0).astype(np.int32),
        source_names,
        align(ids, splits, image_ids, 0).astype(np.int8),
    )


def prediction_arrays(project: Project, version: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image ids, predicted class ids (-1 = none), out-of-fold flags) of one model version (the
    active one by default; empty arrays without a model), sorted by image id.

    Plain columns instead of storage.modelstore.predictions()'s dict of objects: about ten times
    quicker at 100k images, and what the map and the report actually use."""
    version = active_version(project) if version is None else int(version)
    rows = []
    if version is not None:
        with project.session() as session:
            rows = session.execute(
                select(Prediction.image_id, Prediction.class_id, Prediction.out_of_fold)
                .where(Prediction.model_version_id == version).order_by(Prediction.image_id)
            ).all()
    n = len(rows)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
    classes = np.fromiter((-1 if r[1] is None else r[1] for r in rows), dtype=np.int64, count=n)
    out_of_fold = np.fromiter((bool(r[2]) for r in rows), dtype=bool, count=n)
    return ids, classes, out_of_fold


def align(values_ids: np.ndarray, values: np.ndarray, image_ids: np.ndarray, missing) -> np.ndarray:
    """``values`` (given per ``values_ids``) reordered to ``image_ids``; ``missing`` where absent."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    out = np.full(len(image_ids), missing, dtype=np.asarray(values).dtype if len(values) else np.int64)
    if len(values_ids) and len(image_ids):
        order = np.argsort(values_ids, kind="stable")
        sorted_ids = values_ids[order]
        pos = np.clip(np.searchsorted(sorted_ids, image_ids), 0, len(sorted_ids) - 1)
        found = sorted_ids[pos] == image_ids
        out[found] = np.asarray(values)[order[pos[found]]]
    return out


@dataclass(frozen=True)
class MapColors:
    """Everything the map colors its points by, aligned with ``image_ids`` (plain data, made off
    the GUI thread)."""

    image_ids: np.ndarray  # int64
    class_ids: np.ndarray  # int64, -1 = unlabeled
    source_codes: np.ndarray  # int32 index into source_names
    source_names: list[str]
    predicted: np.ndarray  # int64, -1 = no prediction
    classes: list  # storage.catalog.ClassInfo, display order


def map_colors(project: Project, image_ids: Sequence[int] | np.ndarray, version: int | None = None) -> MapColors:
    """Labels, sources, predictions (active model by default) and the class list for the map."""
    from storage.catalog import list_classes

    image_ids = np.asarray(image_ids, dtype=np.int64)
    attributes = point_attributes(project, image_ids)
    predicted_ids, predicted_classes, _oof = prediction_arrays(project, version)
    predicted = align(predicted_ids, predicted_classes, image_ids, -1).astype(np.int64)
    return MapColors(image_ids, attributes.class_ids, attributes.source_codes, attributes.source_names,
                     predicted, list_classes(project))

