"""Prediction throughput on a Dask cluster vs this machine (issue 18), on ../shared/data/hymenoptera.

A project is made from ``train/`` (245 images) with a logistic-regression model (not timed); then the
153 images of ``val/`` are predicted:

1. locally: ``predict_files`` (onnxruntime on every core, the model already loaded);
2. on a LocalCluster of 1 and of 2 single-threaded worker processes: the same files through
   ``--cluster``'s code (engine.cluster), timed twice: end to end (compose the network, ship it, one
   onnxruntime session per worker, stream the rows back) and streaming only (model already on the
   workers: the steady rate a long run approaches).

It also measures the scheduler's per-task overhead (round trip of tiny tasks on the 2-worker cluster)
and the per-worker rate, the two numbers the README's scaling estimate uses. On 2 cores, 2 workers can
at best match local prediction: the point is the overhead (target: <= 15 % at 2 workers, streaming).
Runs alternate (local, 1 worker, 2 workers) three times and the best of each is kept, so load from
other processes hits all alike.

Run from the repository root: ``.venv/bin/python benchmarks/cluster.py``; the last line is JSON.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hymenoptera"
ROUNDS = 3


def _noop(x):
    return x


def main() -> int:
    from engine.cluster.predict import file_chunks, network_onnx
    from engine.cluster.session import CHUNK_SIZE, ClusterConnection, ClusterSpec, install_model, map_in_order
    from engine.cluster.session import remove_model
    from engine.cluster.worker import Preprocessing
    from engine.features.backbones import get_backbone
    from engine.images.importing import import_paths
    from engine.models.predicting import expand_image_paths, predict_files
    from engine.models.training import train_model
    from engine.runtime.jobs import JobContext
    from engine.ship.network import OUTPUT_NAME
    from storage.modelstore import get_model
    from storage.project import create_project

    if not (DATA / "train").is_dir():
        print(json.dumps({"benchmark": "cluster", "skipped": "../shared/data/hymenoptera is not present"}))
        return 0
    folder = Path(tempfile.mkdtemp(prefix="sortlab-cluster-bench-"))
    project = create_project(folder / "bench.sortlab")
    import_paths(JobContext(), project, [DATA / "train"], labels_from_folders=True)
    train_model(JobContext(), project, "logreg")
    info = get_model(project, None)
    files = expand_image_paths([DATA / "val"])
    predict_files(JobContext(), project, files[:8])  # load the local network once
    prep = Preprocessing.of(get_backbone(info.backbone))

    def local() -> float:
        started = time.perf_counter()
        result = predict_files(JobContext(), project, files)
        assert len(result.predictions) + len(result.failed) == len(files)
        return len(files) / (time.perf_counter() - started)

    def on_cluster(connection) -> tuple[float, float]:
        """(end-to-end rate, streaming rate)."""
        started = time.perf_counter()
        plugin = install_model(connection, network_onnx(project, info), OUTPUT_NAME, prep, "predict")
        loaded = time.perf_counter()
        seen = [0]
        map_in_order(JobContext(), connection, plugin, file_chunks(files, CHUNK_SIZE),
                     lambda result: seen.__setitem__(0, seen[0] + len(result.keys) + len(result.failed)))
        done = time.perf_counter()
        remove_model(connection, plugin)
        assert seen[0] == len(files)
        return len(files) / (done - started), len(files) / (done - loaded)

    rates: dict[str, list] = {"local": [], "1": [], "2": []}
    with ClusterConnection(ClusterSpec(None, 1)) as one, ClusterConnection(ClusterSpec(None, 2)) as two:
        on_cluster(one), on_cluster(two)  # warm up: imports and the first session on each worker
        for _ in range(ROUNDS):
            rates["local"].append(local())
            rates["1"].append(on_cluster(one))
            rates["2"].append(on_cluster(two))
        started = time.perf_counter()
        futures = two.client.map(_noop, range(400), pure=False)
        two.client.gather(futures)
        task_ms = (time.perf_counter() - started) / 400 * 1000
    project.close()

    local_rate = max(rates["local"])
    one_e2e, one_stream = max(r[0] for r in rates["1"]), max(r[1] for r in rates["1"])
    two_e2e, two_stream = max(r[0] for r in rates["2"]), max(r[1] for r in rates["2"])
    overhead = 1 - two_stream / local_rate
    load = os.getloadavg()[0]
    print(f"{len(files)} images of hymenoptera/val, {info.backbone}; load average {load:.1f} on {os.cpu_count()} cores")
    print(f"local predict_files: {local_rate:.1f} images/s")
    print(f"1 worker: {one_stream:.1f} images/s streaming, {one_e2e:.1f} end to end")
    print(f"2 workers: {two_stream:.1f} images/s streaming, {two_e2e:.1f} end to end; "
          f"overhead vs local {overhead:.0%} (target <= 15 %)")
    print(f"scheduler round trip per task: {task_ms:.2f} ms ({CHUNK_SIZE} images per task)")
    print(json.dumps({
        "benchmark": "cluster", "images": len(files), "backbone": info.backbone, "load_average": round(load, 1),
        "local_img_s": round(local_rate, 1), "one_worker_img_s": round(one_stream, 1),
        "one_worker_end_to_end_img_s": round(one_e2e, 1), "two_workers_img_s": round(two_stream, 1),
        "two_workers_end_to_end_img_s": round(two_e2e, 1), "overhead_vs_local_2_workers": round(overhead, 3),
        "task_overhead_ms": round(task_ms, 2), "chunk_size": CHUNK_SIZE,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
