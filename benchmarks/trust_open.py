"""What do the untrusted-file checks (storage.trust) cost when opening a 100,000-image project?

Generates the project the way benchmarks/grid.py does (executemany, tiny JPEGs, 30% labeled, one
model with a prediction per image), then times, interleaved so machine load hits both alike:

- before_s: open_project() + the grid's first reads (image ids, the first 200 thumbnails), with the
  trust hooks switched off (what opening cost before the checks existed);
- after_s: the same with the checks on, for a file this computer already checked (the usual case:
  the user's own project): hardened connections, the schema comparison, bounded blob reads;
- first_open_s: the same for a file never seen here (adds PRAGMA quick_check over the whole file);
- label_write_*_ms: the median label write (one image, one transaction) without / with the checks
  (the authorizer runs when SQLite prepares a statement);
- check_s: ``sortlab check``'s report (quick_check, schema, orphans, stored-size scan);
- schema_build_s: building the migrations' schema in a scratch database (once per Sortlab version).

Medians of ``--repeats`` runs. Last line: JSON {"benchmark": "trust_open", "images", "file_mb", ...}.
Target: after_s within a few percent (or ~10 ms) of before_s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _open_and_read(path: Path) -> None:
    from storage.images import image_ids, read_thumbnails
    from storage.project import open_project

    project = open_project(path)
    try:
        ids = image_ids(project)
        read_thumbnails(project, ids[:200])
    finally:
        project.close()


def _timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def _label_writes(path: Path, writes: int = 200) -> float:
    """Median seconds of one label write (a key press: one image, its own transaction)."""
    from storage import catalog
    from storage.project import open_project

    project = open_project(path)
    try:
        durations = []
        for index in range(writes):
            started = time.perf_counter()
            catalog.set_labels(project, [1 + (index * 7919) % 1000], 1 + index % 3)
            durations.append(time.perf_counter() - started)
    finally:
        project.close()
    return statistics.median(durations)


def _without_trust(fn, path: Path):
    from storage import trust

    saved = trust.harden, trust.vet_project_file, trust.remember_file
    trust.harden = lambda *_: None
    trust.vet_project_file = lambda *_: None
    trust.remember_file = lambda *_: None
    try:
        return fn(path)
    finally:
        trust.harden, trust.vet_project_file, trust.remember_file = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sortlab-trust-bench-") as folder:
        os.environ["SORTLAB_CACHE_DIR"] = str(Path(folder) / "cache")  # never the user's state folder
        from benchmarks.grid import generate_project
        from storage import trust
        from storage.project import head_revision
        from storage.trust_check import check_project

        path = Path(folder) / "bench.sortlab"
        started = time.perf_counter()
        generate_project(path, args.images)
        generate_s = time.perf_counter() - started
        schema_build_s = _timed(trust.expected_schema, head_revision())
        _open_and_read(path)  # warm the page cache and remember the file
        before, after, first = [], [], []
        for _ in range(args.repeats):
            before.append(_timed(_without_trust, _open_and_read, path))
            after.append(_timed(_open_and_read, path))
            trust.forget_file(path)
            first.append(_timed(_open_and_read, path))
        writes_before = [_without_trust(_label_writes, path) for _ in range(2)]
        writes_after = [_label_writes(path) for _ in range(2)]
        check_s = _timed(check_project, path)
        result = {
            "benchmark": "trust_open", "images": args.images,
            "file_mb": round(path.stat().st_size / 2**20, 1), "generate_s": round(generate_s, 1),
            "before_s": round(statistics.median(before), 4), "after_s": round(statistics.median(after), 4),
            "first_open_s": round(statistics.median(first), 3), "check_s": round(check_s, 3),
            "schema_build_s": round(schema_build_s, 3), "repeats": args.repeats,
            "label_write_before_ms": round(1000 * min(writes_before), 2),
            "label_write_after_ms": round(1000 * min(writes_after), 2),
            "load_average": [round(v, 2) for v in os.getloadavg()],
        }
        result["after_over_before"] = round(result["after_s"] / result["before_s"], 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
