"""How long until the first window appears on a first start (issue #19: goal <= 1.5 s)?

Starts ``main.py`` (no arguments, an empty home folder: no settings, no caches) in a fresh process,
``--runs`` times (5), and times from launching the process until the main window's first paint,
which is what the user waits for, and until the insight panels are docked in it (the window
complete), noting which heavy libraries were imported by then. The process reports through an
event filter on the window that gui.app.create_main_window returns, and exits at once.

Bytecode: by default every module has current .pyc files (compiled by an untimed start into the
benchmark's own PYTHONPYCACHEPREFIX, as an installation that ships or compiles them); with
``--cold-bytecode`` none (every module of the app, its libraries and the standard library compiled
from source on every run). QT_QPA_PLATFORM (default offscreen; xcb with DISPLAY for an X server) is
passed on. Also run as ``gui_latency.py --case first-window``.

Last line: JSON {"benchmark": "gui_latency", "case": "first_window", "first_paint_median_s",
"first_paint_cpu_s", "panels_ready_median_s", "runs", "load_avg_1m", ...}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

FIRST_PAINT_PROBE = """
import os, runpy, sys, time
sys.path.insert(0, os.getcwd())
import gui.app
from PySide6.QtCore import QEvent, QObject, QTimer

HEAVY = ("torch", "sklearn", "openTSNE", "onnxruntime", "scipy", "sqlalchemy", "alembic", "pyqtgraph")

def loaded():
    return ",".join(m for m in HEAVY if m in sys.modules) or "-"

class FirstPaint(QObject):
    def eventFilter(self, watched, event):
        if event.type() == QEvent.Type.Paint and not getattr(self, "seen", False):
            self.seen = True
            print(f"FIRST_PAINT {time.time():.6f} {time.process_time():.3f} {loaded()}", flush=True)
            self.poll = QTimer()
            self.poll.timeout.connect(lambda: self.panels_ready(watched))
            self.poll.start(1)
        return False

    def panels_ready(self, window):
        if getattr(window, "insight", None) is not None:  # the insight panels are docked: the window is complete
            print(f"PANELS_READY {time.time():.6f} {time.process_time():.3f} {loaded()}", flush=True)
            os._exit(0)  # (quitting would ask whether to stop the start-up jobs)

real = gui.app.create_main_window
def create_main_window(*args, **kwargs):
    window = real(*args, **kwargs)
    window.installEventFilter(FirstPaint(window))
    return window
gui.app.create_main_window = create_main_window
sys.argv = ["main.py"]
runpy.run_path("main.py", run_name="__main__")
"""


def first_window(runs: int = 5, cold_bytecode: bool = False) -> int:
    """Seconds from starting main.py in a fresh process (empty settings) to the main window's first
    paint, and to the insight panels being docked in it (the window complete).

    Bytecode lives in a folder of the benchmark's own (PYTHONPYCACHEPREFIX), so the tree's
    __pycache__ (stale where files were edited and PYTHONDONTWRITEBYTECODE is set) plays no part.
    By default one untimed start first compiles every module into it: the runs find current .pyc
    files, as an installation that ships or compiles them does. ``cold_bytecode``: the folder stays
    empty and nothing is written, so every module of the app and its libraries is compiled from
    source on every run. Either way each run has a fresh home folder (no settings, no caches)."""
    pycache = Path(tempfile.mkdtemp(prefix="sortlab-bench-pycache-"))

    def start(home: Path, write_bytecode: bool) -> subprocess.CompletedProcess:
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
               "XDG_DATA_HOME": str(home / ".local" / "share"), "XDG_CACHE_HOME": str(home / ".cache"),
               "PYTHONPYCACHEPREFIX": str(pycache)}
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if not write_bytecode:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        return subprocess.run([sys.executable, "-c", FIRST_PAINT_PROBE], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)

    if not cold_bytecode:
        start(Path(tempfile.mkdtemp(prefix="sortlab-first-start-")), write_bytecode=True)
    seconds, cpu_seconds, heavy, ready, ready_heavy = [], [], [], [], []
    for _ in range(runs):
        home = Path(tempfile.mkdtemp(prefix="sortlab-first-start-"))
        started = time.time()
        done = start(home, write_bytecode=False)
        lines = {x.split()[0]: x.split()[1:] for x in done.stdout.splitlines() if x.startswith(("FIRST_PAINT ", "PANELS_READY "))}
        if "FIRST_PAINT" not in lines or "PANELS_READY" not in lines:
            raise SystemExit(f"main.py never painted its window:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        stamp, cpu, loaded = lines["FIRST_PAINT"]
        seconds.append(float(stamp) - started)
        cpu_seconds.append(float(cpu))
        heavy.append(loaded)
        ready.append(float(lines["PANELS_READY"][0]) - started)
        ready_heavy.append(lines["PANELS_READY"][2])
        print(f"first paint after {seconds[-1]:.2f} s, {cpu_seconds[-1]:.2f} s of CPU (libraries imported: {loaded}); "
              f"panels docked after {ready[-1]:.2f} s", flush=True)
    print(json.dumps({
        "benchmark": "gui_latency", "case": "first_window", "first_paint_s": round(seconds[0], 2),
        "first_paint_median_s": round(float(np.median(seconds)), 2), "runs": [round(x, 2) for x in seconds],
        "first_paint_cpu_s": round(float(np.median(cpu_seconds)), 2),
        "panels_ready_median_s": round(float(np.median(ready)), 2),
        "imported_at_paint": heavy[0], "imported_when_panels_ready": ready_heavy[0],
        "bytecode": "cold (compiled from source)" if cold_bytecode else "current .pyc",
        "platform": os.environ.get("QT_QPA_PLATFORM", "offscreen"),
        "load_avg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(), "goal_s": 1.5,
    }))
    return 0


def main() -> int:
    runs = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 5
    return first_window(runs, cold_bytecode="--cold-bytecode" in sys.argv)


if __name__ == "__main__":
    sys.exit(main())
