"""Import throughput: N unique 512x384 JPEGs (noise plus shapes) into a fresh project.

Run from the repository root: ``.venv/bin/python benchmarks/import_speed.py [N]``.
Prints human-readable lines, then one JSON line (the last line) for benchmarks/run_all.py.
Target (issue 2): at least 100 images/s on the 2-core reference machine.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from engine.images.importing import import_paths  # noqa: E402
from engine.runtime.jobs import JobContext  # noqa: E402
from storage.images import image_count  # noqa: E402
from storage.project import create_project  # noqa: E402

DEFAULT_IMAGES = 300
WIDTH, HEIGHT = 512, 384


def make_jpegs(folder: Path, count: int, seed: int = 0) -> None:
    """Unique photo-like JPEGs: smooth noise background plus a few random filled shapes."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        coarse = rng.integers(0, 256, size=(HEIGHT // 16, WIDTH // 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse, "RGB").resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
        grain = rng.integers(-12, 13, size=(HEIGHT, WIDTH, 3))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, WIDTH - 40)), int(rng.integers(0, HEIGHT - 40))
            box = (x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 150)))
            color = tuple(int(c) for c in rng.integers(0, 256, size=3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
        image.save(folder / f"photo_{index:05d}.jpg", quality=90)


def timed_import(project_path: Path, folder: Path, count: int, max_side: int) -> tuple[float | None, float]:
    """Seconds to import the folder into a new project (None if the import went wrong), and file size."""
    with create_project(project_path) as project:
        started = time.perf_counter()
        report = import_paths(JobContext(), project, [folder], max_side=max_side)
        seconds = time.perf_counter() - started
        stored = image_count(project)
    if report.imported != count or stored != count or report.failed:
        print(f"import went wrong: {report.summary()}", file=sys.stderr)
        return None, 0.0
    return seconds, project_path.stat().st_size / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_IMAGES
    with tempfile.TemporaryDirectory(prefix="sortlab-import-bench-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        started = time.perf_counter()
        make_jpegs(folder, count)
        print(f"generated {count} JPEGs of {WIDTH}x{HEIGHT} in {time.perf_counter() - started:.1f} s", flush=True)
        seconds, size_mb = timed_import(Path(tmp) / "bench.sortlab", folder, count, max_side=1024)
        # A smaller max side forces every image through decode, resize and re-encode (what
        # large, progressive or rotated photos cost), for comparison with the as-is path above.
        reencode_seconds, _ = timed_import(Path(tmp) / "reencode.sortlab", folder, count, max_side=384)
    if seconds is None or reencode_seconds is None:
        return 1
    rate = count / seconds
    print(f"imported {count} images in {seconds:.2f} s: {rate:.0f} images/s (target >= 100); "
          f"project file {size_mb:.1f} MiB")
    print(f"re-encoding every image (max side 384): {count / reencode_seconds:.0f} images/s")
    print(json.dumps({
        "benchmark": "import_speed",
        "images": count,
        "seconds": round(seconds, 3),
        "images_per_s": round(rate, 1),
        "reencode_images_per_s": round(count / reencode_seconds, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
