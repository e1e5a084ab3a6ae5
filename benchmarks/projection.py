"""How long the embedding map takes: PCA (shown at once) and t-SNE (refining in the background)
at 1,000 and 10,000 points of 1280-dimensional features (EfficientNet-Lite0's feature size),
drawn from a mixture of clusters like real image features. Also the time to t-SNE's first
streamed layout, which is when points start moving on screen.

Last line: JSON {"benchmark": "projection", "pca_1k_s", "tsne_1k_s", "pca_10k_s", "tsne_10k_s", ...,
"peak_rss_mb"}.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.runtime.jobs import JobContext  # noqa: E402
from engine.insight.projection import compute_embedding  # noqa: E402


def features(n: int, dim: int = 1280, k: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.0, (k, dim)).astype(np.float32)
    labels = rng.integers(0, k, n)
    X = centers[labels] + rng.normal(0, 0.8, (n, dim)).astype(np.float32)
    return np.maximum(X, 0)  # features after a ReLU-like activation are non-negative


def peak_rss_mb() -> float:
    """The process's peak resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def main() -> int:
    result: dict = {"benchmark": "projection"}
    for n, tag in ((1000, "1k"), (10000, "10k")):
        X = features(n)
        started = time.perf_counter()
        pca = compute_embedding(JobContext(), X, "pca")
        result[f"pca_{tag}_s"] = round(time.perf_counter() - started, 3)
        first = []
        count = [0]

        def on_partial(_partial, first=first, count=count):
            count[0] += 1
            if not first:
                first.append(time.perf_counter())

        started = time.perf_counter()
        compute_embedding(JobContext(on_partial=on_partial), X, "tsne", init=pca)
        elapsed = time.perf_counter() - started
        result[f"tsne_{tag}_s"] = round(elapsed, 2)
        result[f"tsne_{tag}_first_layout_s"] = round(first[0] - started, 2) if first else None
        result[f"tsne_{tag}_layouts"] = count[0]
        print(f"{n:>6} points: PCA {result[f'pca_{tag}_s']:.2f} s, t-SNE {elapsed:.1f} s "
              f"(first layout after {result[f'tsne_{tag}_first_layout_s']} s, {count[0]} layouts)", flush=True)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
