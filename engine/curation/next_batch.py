"""'Label these next' for a project: features, labels and the active model's predictions in, a batch out.

Two calls, both safe to run in a background job (``JobContext`` for progress and cancelling):

* ``prepare_selection`` extracts missing features and builds the ``SelectionIndex`` (PCA, fine
  clusters, Ward tree, typicality): ~10 s at 10k images, ~1 min at 100k. The index is kept in a
  ``SelectionCache`` for as long as the feature set is unchanged (same creation time and vector
  count), so a GUI calls it when features change and every later batch skips it.
* ``next_images`` answers from the cached index, the current labels and the active model's stored
  predictions; the project's own images only, each with its original path and a reason in words.

Teams: with an overlap share set (``storage.team_overlap``), overlap images a teammate labeled but the
person asking has not are offered too (a share of each batch, all of it once nothing else is left), so
two people label them and their agreement can be measured; other labeled images never are.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.curation.project_features import resolve_feature_space
from engine.curation.selection_index import SelectionIndex, build_selection_index
from engine.curation.selection_rules import Strategy, choose_batch
from engine.runtime.jobs import JobContext
from storage.catalog import list_classes
from storage.featurestore import StoredFeatureSet, find_feature_set, load_vectors
from storage.images import image_count, list_images
from storage.modelstore import ModelInfo, active_model, prediction_probabilities
from storage.project import Project
from storage.splits import labeled_images
from storage.team_overlap import in_overlap, overlap_share, pending_overlap

DEFAULT_COUNT = 20
OVERLAP_REASON = "shown to everyone on the team to check agreement"


@dataclass(frozen=True)
class NextImage:
    image_id: int
    path: str  # the file's original path as imported
    reason: str
    score: float
    overlap: bool = False  # in the team's overlap share: everyone labels it (agreement)

    def to_dict(self) -> dict:
        return {"id": self.image_id, "path": self.path, "reason": self.reason, "score": round(self.score, 4),
                "overlap": self.overlap}


@dataclass(frozen=True)
class NextBatch:
    strategy: Strategy
    images: list[NextImage]

    def to_dict(self) -> dict:
        return {"strategy": self.strategy.value, "images": [image.to_dict() for image in self.images]}


@dataclass(frozen=True)
class PreparedSelection:
    """A selection index and the image id of each of its rows (ascending)."""

    backbone: str
    layer: str
    fingerprint: str
    image_ids: np.ndarray  # int64, row order of the index
    index: SelectionIndex


class SelectionCache:
    """The last few prepared indexes by (project file, backbone, layer); thread-safe."""

    def __init__(self, capacity: int = 2):
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, PreparedSelection] = OrderedDict()

    def get(self, key: tuple, fingerprint: str) -> PreparedSelection | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None or found.fingerprint != fingerprint:
                return None
            self._entries.move_to_end(key)
            return found

    def put(self, key: tuple, prepared: PreparedSelection) -> None:
        with self._lock:
            self._entries[key] = prepared
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)


DEFAULT_CACHE = SelectionCache()


def _fingerprint(feature_set: StoredFeatureSet) -> str:
    """Changes whenever the vectors could have: images are never deleted and a feature set's vectors
    are only ever added, or all dropped when it is recreated (new creation time). No vector is read."""
    return f"{feature_set.id}:{feature_set.created_at.isoformat()}:{feature_set.vectors}"


def prepare_selection(
    context: JobContext, project: Project, backbone: str | None = None, layer: str | None = None,
    cache: SelectionCache = DEFAULT_CACHE,
) -> PreparedSelection:
    """Extract missing features, then the cached index for them (built when the features changed)."""
    backbone, layer = resolve_feature_space(project, backbone, layer)
    feature_set = find_feature_set(project, backbone, layer)
    if feature_set is None or feature_set.vectors < image_count(project):
        from engine.features.extraction import ensure_features

        ensure_features(context.subcontext(0.0, 0.6), project, backbone, layer)
        feature_set = find_feature_set(project, backbone, layer)
    context.check_cancelled()
    if feature_set is None or feature_set.vectors == 0:
        raise ValueError("No image has features yet: import images first.")
    key = (str(Path(project.path).resolve()) if project.path is not None else project.location, backbone, layer)
    prepared = cache.get(key, _fingerprint(feature_set))
    if prepared is None:
        ids, X = load_vectors(project, backbone, layer)
        context.check_cancelled()
        index = build_selection_index(X, progress=context.subcontext(0.65, 1.0).progress)
        ids = np.asarray(ids, dtype=np.int64)
        prepared = PreparedSelection(backbone, layer, _fingerprint(feature_set), ids, index)
        cache.put(key, prepared)
    context.progress(1.0, "Ready to choose images")
    return prepared


def _rows_of(prepared: PreparedSelection, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, mask): the index rows of ``ids``; mask says which ids have a row (a vector)."""
    ids = np.asarray(ids, dtype=np.int64)
    positions = np.minimum(np.searchsorted(prepared.image_ids, ids), max(len(prepared.image_ids) - 1, 0))
    found = prepared.image_ids[positions] == ids if len(prepared.image_ids) else np.zeros(len(ids), dtype=bool)
    return positions[found], found


def _class_codes(
    project: Project, model: ModelInfo | None, labeled_class_ids: np.ndarray,
) -> tuple[dict[int, int], list[str]]:
    """Class id -> column: the model's classes in its own order first, then labeled classes it lacks."""
    names = {info.id: info.name for info in list_classes(project)}
    codes: dict[int, int] = {}
    ordered: list[str] = []
    model_classes = list(zip(model.class_ids, model.class_names)) if model is not None else []
    for class_id, name in model_classes:
        codes[int(class_id)] = len(ordered)
        ordered.append(name)
    for class_id in labeled_class_ids:
        if int(class_id) not in codes:
            codes[int(class_id)] = len(ordered)
            ordered.append(names.get(int(class_id), f"class {class_id}"))
    return codes, ordered


def _model_probabilities(
    project: Project, prepared: PreparedSelection, model: ModelInfo, columns: int,
) -> np.ndarray | None:
    """The active model's stored probabilities per index row (NaN where it has none), or None."""
    ids, proba = prediction_probabilities(project, model.version)
    if len(ids) == 0 or proba.shape[1] != len(model.class_ids):
        return None
    rows, found = _rows_of(prepared, ids)
    full = np.full((prepared.index.size, columns), np.nan, dtype=np.float64)
    full[rows, :] = 0.0
    full[rows, : proba.shape[1]] = proba[found]
    return full


def next_images(
    context: JobContext, project: Project, count: int = DEFAULT_COUNT, backbone: str | None = None,
    layer: str | None = None, cache: SelectionCache = DEFAULT_CACHE,
) -> NextBatch:
    """The ``count`` unlabeled images most worth labeling next, best first (cold start without labels);
    with a team overlap share, some of them overlap images a teammate labeled and this person has not."""
    prepared = prepare_selection(context.subcontext(0.0, 0.9), project, backbone, layer, cache)
    labeled = labeled_images(project)
    labeled_ids = np.array([item.image_id for item in labeled], dtype=np.int64)
    labeled_class_ids = np.array([item.class_id for item in labeled], dtype=np.int64)
    rows, found = _rows_of(prepared, labeled_ids)
    model = active_model(project)
    codes, class_names = _class_codes(project, model, labeled_class_ids)
    probabilities = None if model is None else _model_probabilities(project, prepared, model, len(class_names))
    labeled_codes = np.array([codes[int(c)] for c in labeled_class_ids[found]], dtype=np.int64)
    share = overlap_share(project)
    pending = pending_overlap(project, share) if share > 0 else {}
    # A share of the batch (as many as a teammate's batch of this size holds on average), and more when
    # nothing else is left to label.
    overlap_count = min(len(pending), max(1, math.ceil(count * share))) if pending else 0
    context.check_cancelled()
    selection = choose_batch(prepared.index, rows, labeled_codes, count - overlap_count, probabilities, class_names)
    overlap_count = min(len(pending), count - len(selection.picks))
    chosen_ids = [int(prepared.image_ids[pick.row]) for pick in selection.picks]
    shared_ids = list(pending)[:overlap_count]
    paths = {info.id: info.original_path for info in list_images(project, chosen_ids + shared_ids)}
    new_overlap = set(np.asarray(chosen_ids, dtype=np.int64)[in_overlap(chosen_ids, share)].tolist())
    images = [
        NextImage(image_id, paths.get(image_id, ""),
                  pick.reason + (f"; {OVERLAP_REASON}" if image_id in new_overlap else ""), pick.score,
                  image_id in new_overlap)
        for image_id, pick in zip(chosen_ids, selection.picks)
    ]
    shared = [NextImage(image_id, paths.get(image_id, ""), _overlap_reason(pending[image_id]), 1.0, True)
              for image_id in shared_ids]
    images = _interleave(images, shared)
    context.progress(1.0, f"{len(images)} images to label next")
    return NextBatch(selection.strategy, images)


def _overlap_reason(labeled_by: str) -> str:
    who = f"{labeled_by} labeled it" if labeled_by else "a teammate labeled it"
    return f"{OVERLAP_REASON} ({who}; give your own label)"


def _interleave(picks: list[NextImage], shared: list[NextImage]) -> list[NextImage]:
    """Overlap images spread evenly through the batch, the first of them first."""
    if not shared:
        return picks
    out: list[NextImage] = []
    step = (len(picks) + len(shared)) / len(shared)
    slots = {int(k * step) for k in range(len(shared))}
    shared_iter, picks_iter = iter(shared), iter(picks)
    for position in range(len(picks) + len(shared)):
        out.append(next(shared_iter) if position in slots else next(picks_iter))
    return out
