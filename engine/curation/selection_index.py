"""The slow half of "label these next": a feature-space index computed once per feature set.

Choosing a batch needs a compact space (PCA to ~50 dimensions, L2-normalized), a typicality score
per image (1 / mean distance to its 20 nearest neighbours: high in dense regions) and a clustering
with K = labeled + batch (TypiClust, Hacohen et al., ICML 2022). K changes after every batch, so the
index holds a fine k-means partition (a few images per cluster) and a Ward tree over the fine
clusters (weighted by their sizes); a query cuts the tree into K groups in milliseconds instead of
running k-means over every image, and the groups stay nested from one batch to the next. Everything
here depends on the feature vectors alone, never on labels or a model, so a GUI computes it in the
background when features change and keeps it while they don't.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.runtime.blas import native_threads
from engine.runtime.first_imports import heavy_imports

REDUCED_DIMS = 50
NEIGHBOURS = 20  # k of the k-NN typicality (TypiClust's value)
FINE_CLUSTER_SIZE = 4  # images per fine cluster on average...
MAX_FINE_CLUSTERS = 2000  # ...up to this many: K = labeled + batch rarely goes beyond
NEARBY_FINE_CLUSTERS = 6  # neighbours of an image are searched in its fine cluster and this many nearby ones
PCA_FIT_ROWS = 5_000  # the PCA basis is fitted on a sample this big (plenty for 50 components)
FINE_KMEANS_ROUNDS = 15  # a vector quantizer, not a final clustering: a few Lloyd rounds do
KMEANS_THREADS = 2

Progress = Callable[[float, str], None]


def _no_progress(fraction: float, message: str) -> None:
    return None


@dataclass
class SelectionIndex:
    """Row-aligned with the feature matrix it was built from (row i = the i-th vector)."""

    reduced: np.ndarray  # float32 (N, d): PCA + L2-normalized
    fine_labels: np.ndarray  # int32 (N,): fine cluster of each row
    fine_sizes: np.ndarray  # int64 (F,)
    merges: np.ndarray  # int64 (F - 1, 2): Ward merges of fine clusters, cheapest first
    typicality: np.ndarray  # float32 (N,): 1 / mean distance to the k nearest neighbours
    seed: int = 0

    @property
    def size(self) -> int:
        return int(self.reduced.shape[0])

    def coarse_clusters(self, k: int) -> np.ndarray:
        """Cluster of each row (int64 (N,), numbered 0..K-1) when the Ward tree is cut into K groups."""
        fine_count = len(self.fine_sizes)
        k = max(1, min(int(k), fine_count))
        parent = np.arange(fine_count)

        def root(node: int) -> int:
            while parent[node] != node:
                parent[node] = parent[parent[node]]
                node = parent[node]
            return node

        for a, b in self.merges[: fine_count - k]:
            parent[root(b)] = root(a)
        roots = np.array([root(node) for node in range(fine_count)])
        return np.unique(roots, return_inverse=True)[1].astype(np.int64)[self.fine_labels]


def reduce_features(X: np.ndarray, dims: int = REDUCED_DIMS, seed: int = 0) -> np.ndarray:
    """PCA to at most ``dims`` components (fitted on a sample), then L2-normalized rows."""
    X = np.asarray(X, dtype=np.float32)
    n, d = X.shape
    components = min(dims, d, max(n - 1, 1))
    if components < d and n > 2:
        rng = np.random.default_rng(seed)
        sample = X if n <= PCA_FIT_ROWS else X[rng.choice(n, PCA_FIT_ROWS, replace=False)]
        mean, axes = principal_axes(sample, components, rng)
        reduced = (X - mean) @ axes.T
    else:
        reduced = X - X.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(reduced, axis=1, keepdims=True)
    return reduced / np.maximum(norms, 1e-12)


def principal_axes(X: np.ndarray, k: int, rng: np.random.Generator, power_rounds: int = 4,
                   oversample: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the top ``k`` principal axes (rows) of X: a randomized SVD (Halko et al. 2011,
    what scikit-learn's PCA does with svd_solver="randomized") written with numpy alone, because
    numpy's matmul, QR and SVD release the GIL while SciPy's LAPACK wrappers, which scikit-learn
    calls, hold it: a 120 ms GUI stall when the next batch's index was rebuilt after a training."""
    mean = X.mean(axis=0, keepdims=True)
    centred = X - mean
    width = min(k + oversample, *centred.shape)
    basis = np.linalg.qr(centred @ rng.standard_normal((centred.shape[1], width), dtype=np.float32))[0]
    for _round in range(power_rounds):  # power iterations sharpen the basis toward the top axes
        basis = np.linalg.qr(centred.T @ basis)[0]
        basis = np.linalg.qr(centred @ basis)[0]
    _u, _s, vt = np.linalg.svd(basis.T @ centred, full_matrices=False)
    axes = vt[:k]
    signs = np.sign(axes[range(len(axes)), np.abs(axes).argmax(axis=1)])  # the same picture every time
    return mean.astype(np.float32), (axes * np.where(signs == 0, 1.0, signs)[:, None]).astype(np.float32)


def fine_cluster_count(n: int) -> int:
    return max(1, min(MAX_FINE_CLUSTERS, n // FINE_CLUSTER_SIZE))


def _fine_partition(reduced: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster of each row, centres, sizes) of a fine k-means; empty clusters are dropped."""
    n = len(reduced)
    count = fine_cluster_count(n)
    if count == 1:
        return np.zeros(n, dtype=np.int32), reduced.mean(axis=0, keepdims=True), np.array([n], dtype=np.int64)
    with heavy_imports():
        from sklearn.cluster import KMeans

    model = KMeans(n_clusters=count, init="random", n_init=1, max_iter=FINE_KMEANS_ROUNDS, random_state=seed)
    labels = model.fit_predict(reduced)
    sizes = np.bincount(labels, minlength=count)
    kept = np.flatnonzero(sizes)
    renumber = np.full(count, -1)
    renumber[kept] = np.arange(len(kept))
    return renumber[labels].astype(np.int32), model.cluster_centers_[kept].astype(np.float32), sizes[kept]


def ward_merges(centres: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Agglomerate weighted points by Ward's criterion (nearest-neighbour chain, O(F^2 d) time, O(F) memory).

    Returns the F - 1 merges (a, b) cheapest first; after a merge the group lives on in slot ``a``.
    The cost of joining groups a and b is the increase in within-group squared error:
    n_a n_b / (n_a + n_b) * |c_a - c_b|^2, so sizes count as they would in k-means.
    """
    centres = np.asarray(centres, dtype=np.float64).copy()
    weights = np.asarray(sizes, dtype=np.float64).copy()
    active = np.ones(len(weights), dtype=bool)
    merges: list[tuple[float, int, int]] = []
    chain: list[int] = []
    while len(merges) < len(weights) - 1:
        if not chain:
            chain.append(int(np.argmax(active)))
        a = chain[-1]
        cost = ((centres - centres[a]) ** 2).sum(axis=1) * (weights * weights[a] / (weights + weights[a]))
        cost[~active] = np.inf
        cost[a] = np.inf
        b = int(np.argmin(cost))
        if len(chain) > 1 and cost[chain[-2]] <= cost[b]:
            b = chain[-2]
        if len(chain) > 1 and b == chain[-2]:  # mutual nearest neighbours: merge them
            chain.pop()
            chain.pop()
            merges.append((float(cost[b]), a, b))
            total = weights[a] + weights[b]
            centres[a] = (weights[a] * centres[a] + weights[b] * centres[b]) / total
            weights[a] = total
            active[b] = False
        else:
            chain.append(b)
    merges.sort(key=lambda merge: merge[0])
    return np.array([(a, b) for _, a, b in merges], dtype=np.int64).reshape(-1, 2)


def _typicality(reduced: np.ndarray, labels: np.ndarray, centres: np.ndarray, progress: Progress) -> np.ndarray:
    """1 / mean distance to the k nearest neighbours, searched among the rows of the image's own fine
    cluster and the nearest few ones (exact for all but the sparsest outskirts, and linear in N)."""
    n = len(reduced)
    typicality = np.zeros(n, dtype=np.float32)
    boundaries = np.cumsum(np.bincount(labels, minlength=len(centres)))[:-1]
    members = np.split(np.argsort(labels, kind="stable"), boundaries)
    nearby_count = min(NEARBY_FINE_CLUSTERS + 1, len(centres))
    centre_sq = (centres * centres).sum(axis=1)
    for cluster, rows in enumerate(members):
        if len(rows) == 0:
            continue
        if cluster % 200 == 0:
            progress(cluster / len(centres), "Measuring how typical each image is")
        to_centres = centre_sq - 2.0 * centres @ centres[cluster]
        nearby = np.argpartition(to_centres, nearby_count - 1)[:nearby_count]
        candidates = np.concatenate([members[c] for c in nearby])
        k = min(NEIGHBOURS, len(candidates) - 1)
        if k < 1:
            typicality[rows] = 1.0
            continue
        a, b = reduced[rows], reduced[candidates]
        squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        distances = np.sqrt(np.maximum(squared, 0.0))
        closest = np.partition(distances, k, axis=1)[:, : k + 1]  # k neighbours and the image itself (~0)
        mean_distance = (closest.sum(axis=1) - closest.min(axis=1)) / k
        typicality[rows] = 1.0 / (mean_distance + 1e-5)
    return typicality


def build_selection_index(X: np.ndarray, seed: int = 0, progress: Progress = _no_progress) -> SelectionIndex:
    """Reduce, partition finely, build the Ward tree and score typicality for every row of X (float32 (N, D))."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"Expected a non-empty (N, D) feature matrix, got shape {X.shape}.")
    progress(0.0, "Reducing features")
    with native_threads(KMEANS_THREADS):
        reduced = reduce_features(X, seed=seed)
        progress(0.2, "Grouping similar images")
        labels, centres, sizes = _fine_partition(reduced, seed)
    progress(0.5, "Grouping similar images")
    merges = ward_merges(centres, sizes)
    typicality = _typicality(reduced, labels, centres, lambda f, m: progress(0.6 + 0.4 * f, m))
    progress(1.0, "Ready to choose images")
    return SelectionIndex(reduced, labels, sizes, merges, typicality, seed)
