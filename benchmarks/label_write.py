"""What one label key costs in a project file: ``catalog.set_labels`` of a single image, as the grid and
the viewer call it for each number key. Measured on a fresh project of 10,000 placeholder images and
5 classes: wall time per write (median, p99), the process's own CPU time per write (the machine is
shared, so the wall time's tail is mostly other processes), and the SQL statements each write sends
(SQLAlchemy's ``before_cursor_execute``: ``BEGIN IMMEDIATE`` included, the commit not). The mix is a
labeling session's: new labels, changed labels, a label given again, removed labels. No target in the
issue for a file project; the team target is p99 <= 50 ms with 4 clients (``benchmarks/team.py``).
Prints ONE JSON line last.

    .venv/bin/python benchmarks/label_write.py [--writes 2000] [--images 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def statements_per_write(project, image_ids: list[int], class_ids: list[int]) -> dict[str, int]:
    """Statements sent by one single-image label write, per kind of write (new, changed, same, removed)."""
    from sqlalchemy import event

    from storage import catalog

    sent: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        sent.append(statement)

    image = image_ids[0]
    catalog.set_labels(project, [image], None)
    event.listen(project.engine, "before_cursor_execute", count)
    try:
        counts = {}
        for kind, class_id in (("new", class_ids[0]), ("changed", class_ids[1]), ("same", class_ids[1]),
                               ("removed", None)):
            sent.clear()
            catalog.set_labels(project, [image], class_id)
            counts[kind] = len(sent)
    finally:
        event.remove(project.engine, "before_cursor_execute", count)
    return counts


def time_writes(project, image_ids: list[int], class_ids: list[int], writes: int, seed: int = 0) -> dict:
    """Single-image writes of random images and classes (one in six a removal); times in ms."""
    import numpy as np

    from storage import catalog

    rng = random.Random(seed)
    choices = class_ids + [None]
    wall, cpu = [], []
    for _ in range(writes):
        image, class_id = rng.choice(image_ids), rng.choice(choices)
        began, began_cpu = time.perf_counter(), time.process_time()
        catalog.set_labels(project, [image], class_id)
        wall.append(time.perf_counter() - began)
        cpu.append(time.process_time() - began_cpu)
    wall_ms, cpu_ms = np.array(wall) * 1000, np.array(cpu) * 1000
    return {"writes": writes, "median_ms": round(float(np.median(wall_ms)), 3),
            "p99_ms": round(float(np.percentile(wall_ms, 99)), 3),
            "cpu_median_ms": round(float(np.median(cpu_ms)), 3),
            "cpu_p99_ms": round(float(np.percentile(cpu_ms, 99)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.feature_projects import add_placeholder_images
    from storage import catalog
    from storage.project import create_project

    results = {"benchmark": "label_write", "load_average": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
               "images": args.images}
    with tempfile.TemporaryDirectory() as folder, create_project(Path(folder) / "bench.sortlab") as project:
        image_ids = add_placeholder_images(project, args.images)
        class_ids = list(catalog.ensure_classes(project, ["a", "b", "c", "d", "e"]).values())
        results["statements_per_write"] = statements_per_write(project, image_ids, class_ids)
        time_writes(project, image_ids, class_ids, 50, seed=1)  # warm the statement caches
        results["single_label"] = time_writes(project, image_ids, class_ids, args.writes)
    results["load_average_end"] = round(os.getloadavg()[0], 2)
    print(f"one label key in a project file: median {results['single_label']['median_ms']} ms, "
          f"p99 {results['single_label']['p99_ms']} ms, statements {results['statements_per_write']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
