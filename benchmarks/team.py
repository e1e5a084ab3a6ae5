"""Team project throughput on a local throwaway PostgreSQL: labels per second sustained with 1, 2 and 4
concurrent labeling clients (separate processes), p99 label-write latency, and how long until a client
sees a label another client wrote (polling ``storage.team_sync``-style: the label count query, every
100 ms). Targets from the issue: p99 label write <= 50 ms with 4 clients; another client sees a label
within 2 s. Also: the statements one single-image label write sends (``label_write.statements_per_write``),
each client's CPU time per write and the load average after each run (the machine may be shared).
Prints ONE JSON line last.

    .venv/bin/python benchmarks/team.py [--seconds 10] [--images 1000]

``worker`` mode is also what the concurrency test runs in each labeling process:

    .venv/bin/python benchmarks/team.py worker URL --ops N | --seconds S --seed K --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def worker(url: str, ops: int | None, seconds: float | None, seed: int, out: str, start_at: float | None) -> None:
    """Label random images of the project (one image per write, as a click does) and record every write."""
    import random

    from storage import catalog
    from storage.project import open_project

    rng = random.Random(seed)
    with open_project(url) as project:
        classes = [c.id for c in catalog.list_classes(project)] + [None]
        with project.session() as session:
            from sqlalchemy import select

            from storage.models import Image

            image_ids = list(session.scalars(select(Image.id)))
        if start_at is not None:
            time.sleep(max(0.0, start_at - time.time()))
        writes, changes, latencies, cpu = 0, 0, [], []
        deadline = time.monotonic() + seconds if seconds else None
        started = time.monotonic()
        while (ops is None or writes < ops) and (deadline is None or time.monotonic() < deadline):
            image, class_id = rng.choice(image_ids), rng.choice(classes)
            began, began_cpu = time.perf_counter(), time.process_time()
            before = catalog.set_labels(project, [image], class_id)
            latencies.append(time.perf_counter() - began)
            cpu.append(time.process_time() - began_cpu)
            writes += 1
            # Every write of a class is recorded in a team project (a label given again too); a removal
            # of no label is not.
            changes += sum(1 for state in before if state.class_id != class_id or class_id is not None)
        elapsed = time.monotonic() - started
    Path(out).write_text(json.dumps({"actor": project.actor, "writes": writes, "changes": changes,
                                     "seconds": elapsed, "latencies": latencies,
                                     "cpu": cpu}))


def run_workers(url: str, count: int, *, ops: int | None = None, seconds: float | None = None,
                env: dict | None = None, folder: Path) -> list[dict]:
    """``count`` labeling processes started together; their result dicts."""
    start_at = time.time() + 1.5 + 0.3 * count  # all import and connect first, then label together
    processes, outputs = [], []
    for index in range(count):
        out = folder / f"worker-{index}-{time.time_ns()}.json"
        command = [sys.executable, __file__, "worker", url if isinstance(url, str) else url[index],
                   "--seed", str(index + 1), "--out", str(out), "--start-at", str(start_at)]
        command += ["--ops", str(ops)] if ops is not None else ["--seconds", str(seconds)]
        processes.append(subprocess.Popen(command, env=env))
        outputs.append(out)
    for process in processes:
        if process.wait(timeout=600) != 0:
            raise RuntimeError(f"a labeling worker failed (exit {process.returncode})")
    return [json.loads(out.read_text()) for out in outputs]


def time_to_see(url: str, rounds: int = 20) -> list[float]:
    """Seconds from one client's committed label to another client noticing it by polling every 100 ms."""
    from storage import browse, catalog
    from storage.project import open_project

    seen = []
    with open_project(url) as writer, open_project(url) as reader:
        classes = [c.id for c in catalog.list_classes(writer)]
        for index in range(rounds):
            catalog.set_labels(writer, [index + 1], None)
            before = browse.image_and_label_counts(reader)[1]
            catalog.set_labels(writer, [index + 1], classes[index % len(classes)])
            committed = time.perf_counter()
            while browse.image_and_label_counts(reader)[1] == before:
                time.sleep(0.1)
            seen.append(time.perf_counter() - committed)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode")
    work = sub.add_parser("worker")
    work.add_argument("url")
    work.add_argument("--ops", type=int)
    work.add_argument("--seconds", type=float)
    work.add_argument("--seed", type=int, default=1)
    work.add_argument("--out", required=True)
    work.add_argument("--start-at", type=float)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    if args.mode == "worker":
        worker(args.url, args.ops, args.seconds, args.seed, args.out, args.start_at)
        return

    import numpy as np

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.feature_projects import add_placeholder_images
    from helpers.pg_server import start_server
    from label_write import statements_per_write
    from storage import catalog
    from storage.project import create_project

    server = start_server()
    if server is None:
        print(json.dumps({"skipped": "no PostgreSQL binaries"}))
        return
    results = {"load_average": os.getloadavg()[0], "cpus": os.cpu_count(), "seconds_per_run": args.seconds,
               "images": args.images}
    try:
        url = server.new_database()
        with create_project(url) as project:
            image_ids = add_placeholder_images(project, args.images)
            class_ids = list(catalog.ensure_classes(project, ["a", "b", "c"]).values())
            # the SQL one label key sends (the commit, and the pool's connection check, not counted)
            results["statements_per_write"] = statements_per_write(project, image_ids, class_ids)
        folder = server.root
        for clients in (1, 2, 4):
            runs = run_workers(url, clients, seconds=args.seconds, folder=folder)
            latencies = np.concatenate([run["latencies"] for run in runs])
            results[f"clients_{clients}"] = {
                "labels_per_second": round(sum(run["writes"] for run in runs) / max(run["seconds"] for run in runs), 1),
                "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2),
                "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2),
                "client_cpu_median_ms": round(float(np.median(np.concatenate([run["cpu"] for run in runs]))) * 1000, 2),
                "load_average": round(os.getloadavg()[0], 2),
            }
        seen = time_to_see(url)
        results["see_other_label_s"] = {"median": round(float(np.median(seen)), 3), "max": round(max(seen), 3)}
        results["load_average_end"] = round(os.getloadavg()[0], 2)
        results["p99_ok"] = results["clients_4"]["p99_ms"] <= 50.0
        results["see_ok"] = results["see_other_label_s"]["max"] <= 2.0
    finally:
        server.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
