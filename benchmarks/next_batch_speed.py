"""How fast "label these next" answers: the one-off index (PCA, fine clusters, typicality) and a batch.

Synthetic 1280-d vectors (as EfficientNet-Lite0's pooled features) in 200 Gaussian groups, at 10k
and 100k images, on at most 2 BLAS threads. A labeling session is simulated: a cold-start batch with
no labels, a cold-start batch with 5 % labeled, then an uncertain batch with a model's probabilities
for 20 classes. The targets: a batch in <= 1 s at 10k and <= 3 s at 100k (the index is built in the
background when features change). Last line: one JSON object.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.curation.selection_index import build_selection_index  # noqa: E402
from engine.curation.selection_rules import choose_batch  # noqa: E402

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


def main() -> int:
    with threadpool_limits(2):
        rows = [measure(n) for n in SIZES]
    worst = {row["images"]: max(row["cold_start_s"], row["labeled_s"], row["uncertain_s"]) for row in rows}
    print(json.dumps({
        "benchmark": "next_batch_speed", "dim": DIM, "batch": BATCH, "sizes": list(SIZES),
        "index_s": [row["index_s"] for row in rows], "next_batch_s": [worst[n] for n in SIZES],
        "cold_start_s": [row["cold_start_s"] for row in rows], "uncertain_s": [row["uncertain_s"] for row in rows],
        "within_target": all(worst[n] <= TARGET_S[n] for n in SIZES),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
