"""Run every benchmark script in this folder and collect their last JSON lines.

Each benchmark prints human-readable lines and then, as its last line, one JSON object. This
runner writes them all to benchmarks/results.json (one object per benchmark) and prints a summary.
Figures from a shared, noisy machine: compare ratios measured inside one run, not across runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = {"run_all.py", "__init__.py", "dataset_features.py"}  # dataset_features: a shared helper, not a benchmark


def last_json_line(output: str) -> dict | None:
    for line in reversed(output.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def main() -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in SKIP)
    only = set(sys.argv[1:])
    results: dict[str, dict] = {}
    failures = 0
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    for script in scripts:
        if only and script.stem not in only:
            continue
        print(f"== {script.name}", flush=True)
        started = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, str(script)], cwd=HERE.parent, env=env, capture_output=True, text=True
        )
        elapsed = time.perf_counter() - started
        sys.stdout.write(completed.stdout)
        result = last_json_line(completed.stdout)
        if completed.returncode != 0 or result is None:
            failures += 1
            results[script.stem] = {"error": (completed.stderr or "no JSON line").strip().splitlines()[-1:]}
            print(f"   FAILED ({completed.returncode}): {completed.stderr.strip()[-500:]}", flush=True)
        else:
            result["wall_s"] = round(elapsed, 2)
            results[script.stem] = result
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
