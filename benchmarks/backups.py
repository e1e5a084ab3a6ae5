"""Label writes while the daily backup runs: the longest a label key waits, with and without a backup.

A project of ``IMAGES`` images (random ``BLOB_KB`` KiB blobs: the size of stored JPEGs and thumbnails,
so the file is a few hundred MB) is labeled one image at a time, as the GUI does on a key press
(``catalog.set_labels``, which records the label history in the same transaction), every 20 ms, first
alone and then while ``storage.backups.make_backup`` copies the file (the background job's code path).
Target: no label write over 50 ms during the backup. Also: how long the backup took, and the label
writes' median and 95th percentile with and without a backup (on a loaded machine the maximum of the
writes alone shows the load's own stalls). Writes go to a temporary folder on the same disk as /tmp.
Last line: JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage import backups, catalog, images  # noqa: E402
from storage.project import create_project  # noqa: E402

IMAGES = int(os.environ.get("BACKUP_BENCH_IMAGES", "10000"))
BLOB_KB = 24
INTERVAL_S = 0.02
TARGET_MS = 50.0


def build(path: Path) -> tuple:
    project = create_project(path)
    classes = [catalog.add_class(project, name).id for name in ("ant", "bee", "wasp")]
    ids = []
    for start in range(0, IMAGES, 1000):
        rows = [images.NewImage(f"h{i}", f"{i}.jpg", f"/x/{i}.jpg", "cam", 640, 480, "JPEG",
                                os.urandom(BLOB_KB * 1024), os.urandom(4096))
                for i in range(start, min(IMAGES, start + 1000))]
        ids += images.add_images(project, rows)
    project.engine.dispose()
    return project, ids, classes


def label_while(project, ids, classes, running) -> list[float]:
    """Label one image at a time every INTERVAL_S while ``running()``; each write's seconds."""
    latencies = []
    k = 0
    while running() or len(latencies) < 10:
        image_id, class_id = ids[k % len(ids)], classes[k % len(classes)]
        start = time.perf_counter()
        catalog.set_labels(project, [image_id], class_id)
        latencies.append(time.perf_counter() - start)
        k += 1
        time.sleep(INTERVAL_S)
    return latencies


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.sortlab"
        t0 = time.perf_counter()
        project, ids, classes = build(path)
        build_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 2**20

        deadline = time.perf_counter() + 3.0
        alone = label_while(project, ids, classes, lambda: time.perf_counter() < deadline)

        done = threading.Event()
        result = {}

        def backup():
            start = time.perf_counter()
            result["info"] = backups.make_backup(project, backups.MANUAL)
            result["seconds"] = time.perf_counter() - start
            done.set()

        thread = threading.Thread(target=backup)
        thread.start()
        during = label_while(project, ids, classes, lambda: not done.is_set())
        thread.join()
        project.close()
    worst_ms = max(during) * 1000
    summary = {
        "benchmark": "backups", "images": IMAGES, "project_mb": round(size_mb, 1), "build_s": round(build_s, 1),
        "backup_s": round(result["seconds"], 2), "label_writes_during_backup": len(during),
        "max_label_write_ms_during_backup": round(worst_ms, 1),
        "median_label_write_ms_during_backup": round(statistics.median(during) * 1000, 2),
        "p95_label_write_ms_during_backup": round(sorted(during)[int(0.95 * (len(during) - 1))] * 1000, 1),
        "max_label_write_ms_alone": round(max(alone) * 1000, 1),
        "p95_label_write_ms_alone": round(sorted(alone)[int(0.95 * (len(alone) - 1))] * 1000, 1),
        "median_label_write_ms_alone": round(statistics.median(alone) * 1000, 2),
        "target_ms": TARGET_MS, "meets_target": worst_ms <= TARGET_MS, "load_average": os.getloadavg()[0],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
