"""How fast "label these next" answers: the one-off index (PCA, fine clusters, typicality) and a batch.

Synthetic 1280-d vectors (as EfficientNet-Lite0's pooled features) in 200 Gaussian groups, at 10k
and 100k images, on at most 2 BLAS threads. A labeling session is simulated: a cold-start batch with
no labels, a cold-start batch with 5 % labeled, then an uncertain batch with a model's probabilities
for 20 classes. The targets: a batch in <= 1 s at 10k and <= 3 s at 100k (the index is built in the
background when features change).

Then the same through a project file, as the app and ``sortlab next`` call it: ``next_images`` with
the index already cached, so its time is the database reads (labels, the active model's stored
probabilities, the feature-set fingerprint) plus the choice. Last line: one JSON object.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.curation.next_batch import SelectionCache, next_images, prepare_selection  # noqa: E402
from engine.curation.selection_index import build_selection_index  # noqa: E402
from engine.curation.selection_rules import choose_batch  # noqa: E402
from engine.features.backbones import DEFAULT_BACKBONE, get_backbone  # noqa: E402
from engine.runtime.jobs import JobContext  # noqa: E402
from storage import catalog  # noqa: E402
from storage.featurestore import ensure_feature_set, store_vectors  # noqa: E402
from storage.modelstore import NewModel, PredictionBatch, save_model_version  # noqa: E402
from storage.project import create_project  # noqa: E402

SIZES = (10_000, 100_000)
DIM = 1280
CLASSES = 20
BATCH = 20
TARGET_S = {10_000: 1.0, 100_000: 3.0}


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, DIM)).astype(np.float32)
    group = rng.integers(0, 200, n)
    X = centres[group] + rng.normal(scale=1.5, size=(n, DIM)).astype(np.float32)
    return X, group % CLASSES


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def measure(n: int) -> dict:
    X, truth = synthetic(n)
    index, build_s = timed(lambda: build_selection_index(X))
    rng = np.random.default_rng(1)
    none = np.array([], dtype=np.int64)
    cold, cold_s = timed(lambda: choose_batch(index, none, none, BATCH))
    labeled = rng.choice(n, n // 20, replace=False)
    warm, warm_s = timed(lambda: choose_batch(index, labeled, truth[labeled], BATCH))
    logits = rng.normal(size=(n, CLASSES)) + 3.0 * np.eye(CLASSES)[truth]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    uncertain, uncertain_s = timed(lambda: choose_batch(index, labeled, truth[labeled], BATCH, proba))
    worst = max(cold_s, warm_s, uncertain_s)
    print(f"{n:>7} images: index {build_s:6.2f} s | batch of {BATCH}: cold start {cold_s:.3f} s, "
          f"{len(labeled)} labeled {warm_s:.3f} s ({warm.strategy.value}), with a model {uncertain_s:.3f} s "
          f"({uncertain.strategy.value}) | target {TARGET_S[n]:.0f} s: {'ok' if worst <= TARGET_S[n] else 'MISSED'}")
    assert len(cold.picks) == len(warm.picks) == len(uncertain.picks) == BATCH
    return {"images": n, "index_s": round(build_s, 2), "cold_start_s": round(cold_s, 3),
            "labeled_s": round(warm_s, 3), "uncertain_s": round(uncertain_s, 3), "target_s": TARGET_S[n]}


def build_project(path: Path, X: np.ndarray, truth: np.ndarray, proba: np.ndarray, labeled: np.ndarray):
    """A project holding X as cached features, ``labeled`` rows labeled, and a model with ``proba`` stored."""
    project = create_project(path)
    with project.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO images (content_hash, original_name, original_path, source, width, height, "
            "original_format, imported_at, data, thumbnail, split, split_pinned) "
            "VALUES (?, ?, ?, 'cam', 8, 8, 'JPEG', '2024-01-01 00:00:00', x'00', x'00', 'train', 0)",
            [(f"speed-{i}", f"{i}.jpg", f"/speed/{i}.jpg") for i in range(len(X))],
        )
    ids = np.array([r[0] for r in project.engine.connect().exec_driver_sql("SELECT id FROM images ORDER BY id")])
    class_ids = catalog.ensure_classes(project, [f"class {c}" for c in range(CLASSES)])
    for c in range(CLASSES):
        catalog.set_labels(project, ids[labeled[truth[labeled] == c]].tolist(), class_ids[f"class {c}"], "manual")
    layer = get_backbone(DEFAULT_BACKBONE).layer(None)
    feature_set = ensure_feature_set(project, DEFAULT_BACKBONE, layer.name, layer.dim)
    for start in range(0, len(X), 5000):
        store_vectors(project, feature_set.id, ids[start : start + 5000], X[start : start + 5000])
    model = NewModel("logreg", DEFAULT_BACKBONE, layer.name, [f"class {c}" for c in range(CLASSES)],
                     [class_ids[f"class {c}"] for c in range(CLASSES)], weights=b"", n_labeled=len(labeled))
    save_model_version(project, model, PredictionBatch(ids, proba.astype(np.float32)))
    return project


def measure_project(n: int, folder: Path) -> dict:
    X, truth = synthetic(n)
    rng = np.random.default_rng(1)
    labeled = rng.choice(n, n // 20, replace=False)
    logits = rng.normal(size=(n, CLASSES)) + 3.0 * np.eye(CLASSES)[truth]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    with build_project(folder / f"speed-{n}.sortlab", X, truth, proba, labeled) as project:
        cache = SelectionCache()
        _, prepare_s = timed(lambda: prepare_selection(JobContext(), project, cache=cache))
        batch, next_s = timed(lambda: next_images(JobContext(), project, BATCH, cache=cache))
    assert len(batch.images) == BATCH
    print(f"{n:>7} images in a project: first prepare_selection {prepare_s:6.2f} s (load + index), "
          f"next_images with the index cached {next_s:.3f} s ({batch.strategy.value}) | target {TARGET_S[n]:.0f} s: "
          f"{'ok' if next_s <= TARGET_S[n] else 'MISSED'}")
    return {"prepare_s": round(prepare_s, 2), "next_images_s": round(next_s, 3)}


def main() -> int:
    with threadpool_limits(2):
        rows = [measure(n) for n in SIZES]
        with tempfile.TemporaryDirectory() as folder:
            projects = [measure_project(n, Path(folder)) for n in SIZES]
    worst = {row["images"]: max(row["cold_start_s"], row["labeled_s"], row["uncertain_s"]) for row in rows}
    print(json.dumps({
        "benchmark": "next_batch_speed", "dim": DIM, "batch": BATCH, "sizes": list(SIZES),
        "index_s": [row["index_s"] for row in rows], "next_batch_s": [worst[n] for n in SIZES],
        "cold_start_s": [row["cold_start_s"] for row in rows], "uncertain_s": [row["uncertain_s"] for row in rows],
        "project_prepare_s": [row["prepare_s"] for row in projects],
        "project_next_images_s": [row["next_images_s"] for row in projects],
        "within_target": all(max(worst[n], row["next_images_s"]) <= TARGET_S[n] for n, row in zip(SIZES, projects)),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
