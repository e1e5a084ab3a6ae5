"""Retraining after one label change: logistic regression on 2,500 cached 1280-d feature vectors
(EfficientNet-Lite0's size, 5 classes), then fresh predictions stored for every image.

The timed step is exactly what the GUI runs after a label edit: ``train_model(..., quick=True)``,
which checks the feature cache, reassigns splits (comparing the relabeled image with every labeled one
for the leak guard), retrains (previous C, warm starts), evaluates on the validation side, scores the
training side out-of-fold in two parts, refits, and writes the new active version with 2,500
predictions (every labeled one out-of-fold). Synthetic vectors stand in for real ones (same shape and
sparsity as pooled ReLU features); target <= 1 s. ``retrain_cpu_s`` is the CPU time of the same step
(all threads): on a busy shared machine, where wall time swells with the other processes, compare that.
``--labeled N`` times another size (issue 19: <= 10 s at 100,000; ``phases_s`` splits the time into
reading labels, reading vectors, the leak guard, fitting and evaluating, predicting every image, storing).
Last line: JSON (``peak_rss_mb``: peak resident memory, ru_maxrss of this process and its children).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.features.backbones import DEFAULT_BACKBONE, get_backbone  # noqa: E402
from engine.models.training import train_model  # noqa: E402
from engine.runtime.jobs import JobContext  # noqa: E402
from storage import catalog  # noqa: E402
from storage.featurestore import ensure_feature_set, store_vectors  # noqa: E402
from storage.project import create_project  # noqa: E402

IMAGES = 2500
CLASSES = 5
RETRAINS = 5


PHASES = ("labels_s", "vectors_s", "leak_guard_s", "train_s", "predict_s", "store_s")


def synthetic_features(n: int, dim: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping class clusters, rectified like pooled CNN activations (so the solver has real work)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=0.6, size=(k, dim))
    y = rng.integers(0, k, n)
    return np.maximum(centers[y] + rng.normal(size=(n, dim)), 0).astype(np.float32), y


def build_project(path: Path, images: int = IMAGES):
    project = create_project(path)
    layer = get_backbone(DEFAULT_BACKBONE).layer(None)
    X, y = synthetic_features(images, layer.dim, CLASSES)
    with project.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO images (content_hash, original_name, original_path, source, width, height, "
            "original_format, imported_at, data, thumbnail, split, split_pinned) "
            "VALUES (?, ?, ?, ?, 8, 8, 'JPEG', '2024-01-01 00:00:00', x'00', x'00', 'train', 0)",
            [(f"bench-{i}", f"{i}.jpg", f"/bench/{i}.jpg", f"cam-{i % 3}") for i in range(images)],
        )
    image_ids = [int(r[0]) for r in project.engine.connect().exec_driver_sql("SELECT id FROM images ORDER BY id")]
    class_ids = catalog.ensure_classes(project, [f"class {c}" for c in range(CLASSES)])
    for c in range(CLASSES):
        catalog.set_labels(project, [image_ids[i] for i in np.flatnonzero(y == c)], class_ids[f"class {c}"], "import")
    feature_set = ensure_feature_set(project, DEFAULT_BACKBONE, layer.name, layer.dim)
    store_vectors(project, feature_set.id, image_ids, X)
    return project, image_ids, [class_ids[f"class {c}"] for c in range(CLASSES)], y


def peak_rss_mb() -> float:
    """Peak resident memory of this process and (separately measured) its children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)  # Linux reports KiB


def phases(timings: dict[str, float]) -> dict[str, float]:
    return {name: round(timings[name], 3) for name in PHASES if name in timings}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labeled", type=int, default=IMAGES, help=f"labeled images (default {IMAGES})")
    parser.add_argument("--retrains", type=int, default=RETRAINS, help=f"quick retrains timed (default {RETRAINS})")
    args = parser.parse_args()
    images = args.labeled
    with tempfile.TemporaryDirectory() as folder:
        project, image_ids, class_ids, y = build_project(Path(folder) / "bench.sortlab", images)
        context = JobContext()
        started = time.perf_counter()
        first = train_model(context, project)
        initial_s = time.perf_counter() - started
        print(f"initial training (not quick): {initial_s:.2f} s, C={first.params['C']}, "
              f"{first.metrics.evaluation} accuracy {first.metrics.accuracy:.3f}")
        runs = []
        for r in range(args.retrains):
            image = (r * 97) % images
            catalog.set_labels(project, [image_ids[image]], class_ids[(y[image] + 1) % CLASSES])
            started, cpu_started = time.perf_counter(), time.process_time()
            result = train_model(context, project, quick=True)
            runs.append((time.perf_counter() - started, result, time.process_time() - cpu_started))
            print(f"retrain {r + 1}: {runs[-1][0]:.3f} s (train {result.timings['train_s']:.3f} s, predict+store "
                  f"{result.timings['predict_store_s']:.3f} s), version {result.model_version}, "
                  f"accuracy {result.metrics.accuracy:.3f}; phases {phases(result.timings)}", flush=True)
        project.close()
    median = statistics.median(seconds for seconds, _, _ in runs)
    _, typical, _ = min(runs, key=lambda run: abs(run[0] - median))
    print(json.dumps({
        "benchmark": "retrain", "images": images, "labeled": images, "classes": CLASSES,
        "dim": int(typical.params["n_features"]), "retrain_s": round(median, 3),
        "retrain_cpu_s": round(statistics.median(cpu for _, _, cpu in runs), 3),
        "train_s": round(typical.timings["train_s"], 3), "predict_store_s": round(typical.timings["predict_store_s"], 3),
        "phases_s": phases(typical.timings), "evaluation": typical.metrics.evaluation,
        "initial_train_s": round(initial_s, 2), "retrains": args.retrains, "peak_rss_mb": peak_rss_mb(),
        "load_avg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(), "goal_s": 1.0 if images <= IMAGES else 10.0,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
