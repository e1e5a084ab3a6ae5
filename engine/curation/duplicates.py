"""Near-duplicates: the same photo twice, or the same object shot again, found in the cached features.

Cosine similarity is computed exactly, tile by tile (float32, L2-normalized rows), so memory stays at a
few tens of MB at 100k images and no N x N matrix is ever held; the job can be cancelled between
tiles. Pairs above the threshold are joined into groups (connected components, i.e. union-find).
Byte-identical files (same content hash) always form a group.

Thresholds, calibrated on planted copies (half size, JPEG quality 35, cropped 6 % a side, brightened
30 %) of 15 % of the hymenoptera images with Lite0 features (benchmarks/duplicates.py): an edited copy
lands anywhere from about 0.65 to 1.0 (median ~0.93) while no two distinct hymenoptera photos reach
0.81. ``LOOK_ALIKE`` (0.86, the default) finds 96 % of the copies (0.88: 94 %, 0.85: 97 %) and pairs no
distinct photo. On caltech-101 the pairs between 0.86 and 0.95 are mostly the same object or scene
shot again; from ``SAME_PHOTO`` (0.95) up they are nearly all the same picture (mirrored, re-cropped).

Leak guard (engine.curation.leak_guard, run by every split assignment): ``keep_groups_on_one_side``
moves every group to one side of the train/validation split, so a validation image never has its twin
in training; ``validation_twins`` counts those that had one. ``look_alikes_of`` is the import summary's
"12 images look like ones you already have".
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from engine.curation.project_features import load_project_features, resolve_feature_space
from engine.runtime.jobs import JobContext
from storage.featurestore import load_vectors, vector_image_ids
from storage.project import Project

SAME_PHOTO = 0.95
LOOK_ALIKE = 0.86
ROW_BLOCK = 1024
COLUMN_BLOCK = 8192  # a 1024 x 8192 float32 tile is 32 MB


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that look like copies of each other; ``similarity`` is the weakest link that joined them."""

    image_ids: tuple[int, ...]
    similarity: float
    identical: bool  # every member has the same file content

    @property
    def kind(self) -> str:
        if self.identical:
            return "identical"
        return "same photo" if self.similarity >= SAME_PHOTO else "look-alike"


def unit_rows(X: np.ndarray) -> np.ndarray:
    """float32 rows scaled to length 1 (an all-zero row stays zero and matches nothing)."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.divide(X, norms, out=np.zeros_like(X), where=norms > 0)


def _tiles(n_rows: int, n_columns: int, upper_triangle: bool = False):
    """(row start, row end, [(column start, column end), ...]) per row block; the upper triangle skips
    the columns left of the block (pairs already seen from the other side)."""
    for r0 in range(0, n_rows, ROW_BLOCK):
        r1 = min(r0 + ROW_BLOCK, n_rows)
        starts = range(r0 if upper_triangle else 0, n_columns, COLUMN_BLOCK)
        yield r0, r1, [(c0, min(c0 + COLUMN_BLOCK, n_columns)) for c0 in starts]


def similar_pairs(
    X: np.ndarray, threshold: float, context: JobContext | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of rows (a < b) whose cosine similarity is at least ``threshold``: (a, b, similarity)."""
    context = context or JobContext()
    U = unit_rows(X)
    n = len(U)
    found_a, found_b, found_s = [], [], []
    for r0, r1, columns in _tiles(n, n, upper_triangle=True):
        for c0, c1 in columns:
            context.check_cancelled()
            S = U[r0:r1] @ U[c0:c1].T
            rows, cols = np.nonzero(S >= threshold)
            keep = cols + c0 > rows + r0
            found_a.append(rows[keep] + r0)
            found_b.append(cols[keep] + c0)
            found_s.append(S[rows[keep], cols[keep]])
        context.progress(1.0 - ((n - r1) / n) ** 2, f"Compared {r1} of {n} images")
    if not found_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return (np.concatenate(found_a).astype(np.int64), np.concatenate(found_b).astype(np.int64),
            np.concatenate(found_s))


def pairs_between(
    queries: np.ndarray, base: np.ndarray, threshold: float, context: JobContext | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query row, base row) pair whose cosine similarity is at least ``threshold``:
    (query rows, base rows, similarities). Comparing a few new images with many known ones."""
    context = context or JobContext()
    # The base is divided by its row lengths tile by tile: no normalized copy of it (a few new images
    # against 100k known ones would copy 500 MB for one row of products).
    Q, B = unit_rows(queries), np.asarray(base, dtype=np.float32)
    lengths = np.sqrt(np.einsum("ij,ij->i", B, B))
    inverse = np.divide(1.0, lengths, out=np.zeros_like(lengths), where=lengths > 0)
    found_q, found_b, found_s = [], [], []
    for r0, r1, columns in _tiles(len(Q), len(B)):
        for c0, c1 in columns:
            context.check_cancelled()
            S = (Q[r0:r1] @ B[c0:c1].T) * inverse[c0:c1]
            rows, cols = np.nonzero(S >= threshold)
            found_q.append(rows + r0)
            found_b.append(cols + c0)
            found_s.append(S[rows, cols])
        context.progress(r1 / len(Q), f"Compared {r1} of {len(Q)} images")
    if not found_q:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return (np.concatenate(found_q).astype(np.int64), np.concatenate(found_b).astype(np.int64),
            np.concatenate(found_s))


def nearest_neighbours(
    queries: np.ndarray, base: np.ndarray | None = None, k: int = 1, context: JobContext | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(rows of base (Q, k), cosine similarities (Q, k)), most similar first, computed exactly in tiles.

    Without ``base``, each query's neighbours are the other queries (itself excluded)."""
    context = context or JobContext()
    Q = unit_rows(queries)
    B = Q if base is None else unit_rows(base)
    k = min(k, len(B) - (1 if base is None else 0))
    best_rows = np.zeros((len(Q), max(k, 0)), dtype=np.int64)
    best_sims = np.full((len(Q), max(k, 0)), -np.inf, dtype=np.float32)
    if k <= 0:
        return best_rows, best_sims
    for r0, r1, columns in _tiles(len(Q), len(B)):
        rows, sims = best_rows[r0:r1, :0], best_sims[r0:r1, :0]
        for c0, c1 in columns:
            context.check_cancelled()
            S = Q[r0:r1] @ B[c0:c1].T
            if base is None:
                own = np.arange(r0, r1)
                inside = (own >= c0) & (own < c1)
                S[np.nonzero(inside)[0], own[inside] - c0] = -np.inf
            top = min(k, c1 - c0)
            tile_cols = np.argpartition(-S, top - 1, axis=1)[:, :top]
            rows = np.hstack([rows, tile_cols + c0])
            sims = np.hstack([sims, np.take_along_axis(S, tile_cols, axis=1)])
            if rows.shape[1] > k:
                keep = np.argpartition(-sims, k - 1, axis=1)[:, :k]
                rows, sims = np.take_along_axis(rows, keep, axis=1), np.take_along_axis(sims, keep, axis=1)
        order = np.argsort(-sims, axis=1, kind="stable")
        best_rows[r0:r1] = np.take_along_axis(rows, order, axis=1)
        best_sims[r0:r1] = np.take_along_axis(sims, order, axis=1)
        context.progress(r1 / len(Q), f"Compared {r1} of {len(Q)} images")
    return best_rows, best_sims


def _hash_pairs(content_hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    first_with: dict[str, int] = {}
    a, b = [], []
    for row, digest in enumerate(content_hashes):
        if digest in first_with:
            a.append(first_with[digest])
            b.append(row)
        else:
            first_with[digest] = row
    return np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)


def find_duplicates(
    image_ids: Sequence[int], X: np.ndarray, threshold: float = LOOK_ALIKE,
    content_hashes: Sequence[str] | None = None, context: JobContext | None = None,
) -> list[DuplicateGroup]:
    """Groups of look-alike images (largest first, then by first image id): feature pairs at or above
    ``threshold`` and byte-identical files, joined transitively."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    n = len(image_ids)
    a, b, sims = similar_pairs(X, threshold, context)
    if content_hashes is not None:
        ha, hb = _hash_pairs(content_hashes)
        a, b = np.concatenate([a, ha]), np.concatenate([b, hb])
        sims = np.concatenate([sims, np.ones(len(ha), dtype=np.float32)])
    if n == 0 or len(a) == 0:
        return []
    from engine.runtime.first_imports import heavy_imports

    with heavy_imports():  # here, not at import: the main window imports this module
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    weakest: dict[int, float] = {}
    for row, sim in zip(a.tolist(), sims.tolist()):
        group = int(component[row])
        weakest[group] = min(weakest.get(group, 1.0), float(sim))
    groups = []
    for group, similarity in weakest.items():
        rows = np.flatnonzero(component == group)
        identical = content_hashes is not None and len({content_hashes[r] for r in rows}) == 1
        groups.append(DuplicateGroup(tuple(int(i) for i in np.sort(image_ids[rows])), similarity, identical))
    return sorted(groups, key=lambda g: (-len(g.image_ids), g.image_ids))


@dataclass(frozen=True)
class LookAlike:
    """A newly imported image that looks like one the project already had."""

    image_id: int
    like_id: int  # the most similar image that was there before
    similarity: float


@dataclass(frozen=True)
class LookAlikeSummary:
    """What the import summary says: "N images look like ones you already have" (``matches``, most similar
    first). New images without cached features could not be compared yet (``missing_features``): call
    again after the next feature extraction (training extracts them)."""

    matches: list[LookAlike]
    compared: int
    missing_features: list[int]


def look_alikes_of(
    context: JobContext, project: Project, new_ids: Sequence[int], threshold: float = LOOK_ALIKE,
    backbone: str | None = None, layer: str | None = None,
) -> LookAlikeSummary:
    """Which of ``new_ids`` look like an image the project had besides them, from cached features only
    (nothing is extracted). The known images are read ``COLUMN_BLOCK`` at a time, so memory stays small
    at 100k images."""
    backbone, layer = resolve_feature_space(project, backbone, layer)
    wanted = sorted({int(i) for i in new_ids})
    query_ids, Q = load_vectors(project, backbone, layer, wanted)
    known = vector_image_ids(project, backbone, layer)
    known = known[~np.isin(known, wanted)]
    best_id = np.full(len(query_ids), -1, dtype=np.int64)
    best_sim = np.full(len(query_ids), -np.inf, dtype=np.float32)
    for start in range(0, len(known) if len(query_ids) else 0, COLUMN_BLOCK):
        context.check_cancelled()
        block_ids, B = load_vectors(project, backbone, layer, known[start:start + COLUMN_BLOCK])
        if not len(block_ids):
            continue
        rows, sims = nearest_neighbours(Q, B, k=1)
        better = sims[:, 0] > best_sim
        best_sim[better], best_id[better] = sims[better, 0], block_ids[rows[better, 0]]
        context.progress(min(1.0, (start + COLUMN_BLOCK) / len(known)), f"Compared with {start + len(block_ids)} images")
    found = np.flatnonzero(best_sim >= threshold)
    matches = sorted((LookAlike(int(query_ids[r]), int(best_id[r]), float(best_sim[r])) for r in found),
                     key=lambda m: (-m.similarity, m.image_id))
    missing = sorted(set(wanted) - set(query_ids.tolist()))
    return LookAlikeSummary(matches, int(len(query_ids)), missing)


def keep_groups_on_one_side(
    groups: Iterable[Iterable[int]], sides: Mapping[int, str], pinned: Collection[int] = (),
    settled: Collection[int] = (),
) -> dict[int, str]:
    """Sides after moving every group that straddles train and validation wholly to one side.

    The side is the one the group's pinned images are on, else the one most of its ``settled`` images
    (placed at an earlier assignment) are on, so a new twin joins its group rather than moving it, else
    the side most of the group is on; a tie goes to the side of the group's first image, so that ties
    favour neither side and the validation share stays where the placement put it. Pinned images never
    move, so a group the user pinned to both sides is the one case left straddling. Images not in
    ``sides`` are ignored.
    """
    new_sides = dict(sides)
    pinned, settled = set(pinned), set(settled)
    for group in groups:
        members = [i for i in group if i in sides]
        on = {sides[i] for i in members}
        if on != {"train", "val"}:
            continue
        pinned_sides = {sides[i] for i in members if i in pinned}
        if len(pinned_sides) == 1:
            target = pinned_sides.pop()
        else:
            voters = [i for i in members if i in settled] or members
            n_val = sum(sides[i] == "val" for i in voters)
            n_train = len(voters) - n_val
            target = sides[voters[0]] if n_val == n_train else "val" if n_val > n_train else "train"
        for i in members:
            if i not in pinned:
                new_sides[i] = target
    return new_sides


def validation_twins(groups: Iterable[Iterable[int]], sides: Mapping[int, str]) -> list[int]:
    """Validation images that have a near-duplicate on the training side (they flatter the accuracy)."""
    twins: list[int] = []
    for group in groups:
        members = [i for i in group if i in sides]
        if any(sides[i] == "train" for i in members):
            twins.extend(i for i in members if sides[i] == "val")
    return sorted(twins)


def project_duplicates(
    context: JobContext, project: Project, threshold: float = LOOK_ALIKE, backbone: str | None = None,
    layer: str | None = None,
) -> list[DuplicateGroup]:
    """A background job: extract missing features, then group the project's look-alike images."""
    features = load_project_features(context.subcontext(0.0, 0.3), project, backbone, layer)
    context.progress(0.3, f"Comparing {len(features.image_ids)} images")
    return find_duplicates(features.image_ids, features.X, threshold, context=context.subcontext(0.3, 1.0))
