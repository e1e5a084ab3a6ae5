"""2-D maps of the image collection: PCA at once, t-SNE (openTSNE) refining in the background.

``compute_embedding`` is a plain job function body (it takes a ``JobContext``): t-SNE streams its
intermediate layouts through ``context.partial({"kind": "embedding", ...})`` every few iterations
so a view can move the points while it runs, and it stops promptly when the job is cancelled.
``embedding_job`` is the job the map submits: cached features in, PCA first, then t-SNE.
No Qt here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from engine.jobs import JobContext
from storage.models import Image, Label
from storage.project import Project

PARTIAL_EVERY = 25  # t-SNE iterations between streamed layouts
EARLY_ITERATIONS = 250  # early exaggeration phase
MAIN_ITERATIONS = 500
PCA_DIMS_FOR_TSNE = 50  # t-SNE neighbours are searched in this many principal components


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
    """Import openTSNE ahead of time (from a background job at start-up): a first import holds the
    GIL for a long stretch, which would stall the GUI when the first map is computed."""
    import openTSNE.affinity  # noqa: F401
    import openTSNE.tsne  # noqa: F401


def compute_embedding(
    context: JobContext,
    X: np.ndarray,
    method: str = "pca",
    seed: int = 0,
    init: np.ndarray | None = None,
    partial_extra: dict | None = None,
) -> np.ndarray:
    """Map the rows of X (N, D) to 2-D points, (N, 2) float32.

    ``method="pca"`` returns at once. ``method="tsne"`` streams partial layouts (every
    PARTIAL_EVERY iterations, ``{"kind": "embedding", "coords", "iteration", "method": "tsne"}``),
    checks for cancellation at each of them, and starts from ``init`` (N, 2) when given
    (for example the PCA layout already on screen), else from PCA. ``partial_extra`` is merged
    into every partial (``embedding_job`` adds the image ids).
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError("X must be a 2-D array of feature vectors (one row per image).")
    if method == "pca":
        return _pca(X, 2, seed)
    if method != "tsne":
        raise ValueError(f"Unknown embedding method {method!r}; use 'pca' or 'tsne'.")
    return _tsne(context, X, seed, init, partial_extra or {})


def _tsne(context: JobContext, X: np.ndarray, seed: int, init: np.ndarray | None, extra: dict) -> np.ndarray:
    n = X.shape[0]
    if n < 5:  # too few points for neighbourhoods: PCA is the honest answer
        return _pca(X, 2, seed)
    from openTSNE import TSNEEmbedding
    from openTSNE.affinity import PerplexityBasedNN

    context.check_cancelled()
    context.progress(0.0, "Preparing the map")
    reduced = _pca(X, PCA_DIMS_FOR_TSNE, seed)
    context.check_cancelled()
    perplexity = float(min(30.0, (n - 1) / 3.0))
    context.progress(0.02, "Finding similar images")
    affinities = PerplexityBasedNN(
        reduced, perplexity=perplexity, method="auto", n_jobs=2, random_state=seed, verbose=False
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
        start, affinities, negative_gradient_method="bh" if n < 5000 else "fft", n_jobs=2, random_state=seed, verbose=False
    )
    # Barnes-Hut is quicker for small maps; the FFT approximation scales to 100k points.
    total = EARLY_ITERATIONS + MAIN_ITERATIONS
    offset = 0

    def callback(iteration: int, error: float, current: np.ndarray) -> bool:
        context.check_cancelled()  # raises JobCancelled straight out of openTSNE's loop
        done = offset + iteration
        context.partial(
            {
                "kind": "embedding",
                "coords": np.asarray(current, dtype=np.float32).copy(),
                "iteration": done,
                "method": "tsne",
                "total_iterations": total,
                **extra,
            }
        )
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
) -> dict:
    """Map every image with cached features: a PCA partial at once, then t-SNE partials.

    Every partial carries ``image_ids`` (the row order of ``coords``). Returns the final
    ``{"image_ids", "coords", "method"}``.
    """
    from engine.features import load_features

    context.progress(0.0, "Loading image features")
    image_ids, X = load_features(project, backbone, layer)
    image_ids = np.asarray(image_ids, dtype=np.int64)
    context.check_cancelled()
    if len(image_ids) == 0:
        return {"image_ids": image_ids, "coords": np.zeros((0, 2), np.float32), "method": "pca"}
    pca = compute_embedding(context, X, "pca", seed=seed)
    context.partial(
        {"kind": "embedding", "coords": pca, "iteration": 0, "method": "pca", "image_ids": image_ids}
    )
    if not tsne:
        return {"image_ids": image_ids, "coords": pca, "method": "pca"}

    coords = compute_embedding(
        context.subcontext(0.05, 1.0), X, "tsne", seed=seed, init=pca, partial_extra={"image_ids": image_ids}
    )
    return {"image_ids": image_ids, "coords": coords, "method": "tsne"}


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
    out_classes = np.full(len(image_ids), -1, np.int64)
    out_sources = np.zeros(len(image_ids), np.int32)
    out_splits = np.zeros(len(image_ids), np.int8)
    if n and len(image_ids):
        order = np.argsort(ids)
        pos = np.clip(np.searchsorted(ids[order], image_ids), 0, n - 1)
        take = order[pos]
        found = ids[take] == image_ids
        out_classes[found] = classes[take[found]]
        out_sources[found] = sources[take[found]]
        out_splits[found] = splits[take[found]]
    return PointAttributes(image_ids, out_classes, out_sources, source_names, out_splits)
