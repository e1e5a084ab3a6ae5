"""Where the model looks, measured: the pointing game for Sortlab's class activation maps.

A model is trained the way users train one (``train_model``, the default method, on a project
made by importing hymenoptera ``train/`` with labels from folders). Each ``val/`` image is then
pasted at half size (center-cropped to a square) into a random quadrant of a square canvas, plain
(one colour, a little noise) or cluttered (random shapes, lines and noise), and explained for its
true class. A hit is a peak inside the pasted quadrant. Target: at least 80 % hits.

Also reported: milliseconds per explained image (a warm network, the canvas decoded already) on
onnxruntime and, when PyTorch is here, on torch (its GPU when there is one), and how far the two
paths' peaks are apart (torch on the first ``--torch-canvases`` canvases: on a busy CPU it is slow).
Last line: JSON.

    python benchmarks/explain.py [--data ../shared/data/hymenoptera] [--limit N] [--seed 0] [--torch-canvases N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.images.imaging import open_image_file  # noqa: E402
from engine.images.importing import import_paths  # noqa: E402
from engine.insight.explain import explain_image  # noqa: E402
from engine.models.training import train_model  # noqa: E402
from engine.runtime.edition import torch_available  # noqa: E402
from engine.runtime.jobs import JobContext  # noqa: E402
from storage.project import create_project  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hymenoptera"
CANVAS = 448
TARGET_RATE = 0.80
QUADRANTS = ((0, 0), (1, 0), (0, 1), (1, 1))


def plain_canvas(rng: np.random.Generator) -> Image.Image:
    colour = rng.integers(40, 220, size=3)
    pixels = np.clip(colour + rng.normal(0.0, 6.0, size=(CANVAS, CANVAS, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def cluttered_canvas(rng: np.random.Generator) -> Image.Image:
    """Random rectangles, ellipses and lines in random colours over coloured noise: edges and
    textures everywhere, none of them an insect."""
    noise = rng.integers(0, 256, size=(CANVAS // 8, CANVAS // 8, 3), dtype=np.uint8)
    canvas = Image.fromarray(noise).resize((CANVAS, CANVAS), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(25, 45))):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x0, y0 = (int(v) for v in rng.integers(-40, CANVAS, size=2))
        w, h = (int(v) for v in rng.integers(15, 140, size=2))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
        elif shape == 1:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            draw.line((x0, y0, x0 + w, y0 + h), fill=colour, width=int(rng.integers(2, 9)))
    return canvas.filter(ImageFilter.GaussianBlur(0.8))


def pasted(obj: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, tuple[int, int]]:
    """The object at half the canvas's size in a random quadrant; returns (canvas, quadrant)."""
    canvas = plain_canvas(rng) if kind == "plain" else cluttered_canvas(rng)
    quadrant = QUADRANTS[int(rng.integers(0, 4))]
    half = CANVAS // 2
    canvas.paste(ImageOps.fit(obj, (half, half), Image.Resampling.BICUBIC), (quadrant[0] * half, quadrant[1] * half))
    return canvas, quadrant


def in_quadrant(peak: tuple[float, float], quadrant: tuple[int, int]) -> bool:
    return all(q * 0.5 <= p <= q * 0.5 + 0.5 for p, q in zip(peak, quadrant))


def trained_project(folder: Path, data: Path):
    project = create_project(folder / "explain.sortlab")
    context = JobContext()
    import_paths(context, project, [data / "train"], labels_from_folders=True)
    result = train_model(context, project)
    return project, result


def val_images(data: Path, limit: int | None) -> list[tuple[str, Path]]:
    items = [(folder.name, path) for folder in sorted((data / "val").iterdir()) if folder.is_dir()
             for path in sorted(folder.iterdir()) if path.is_file()]
    if limit:
        step = max(1, len(items) // limit)
        items = items[::step][:limit]
    return items


def timed_explain(project, canvas: Image.Image, class_name: str, runtime: str):
    started = time.perf_counter()
    explanation = explain_image(JobContext(), project, canvas, class_name, runtime=runtime)
    return explanation, (time.perf_counter() - started) * 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="at most this many val images (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-canvases", type=int, default=40,
                        help="also explain the first N canvases with torch, to time it and compare (0: none)")
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        print(json.dumps({"benchmark": "explain", "skipped": f"{args.data} is not present"}))
        return 0
    runtimes = ["onnx"] + (["torch"] if torch_available() and args.torch_canvases > 0 else [])
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        project, trained = trained_project(Path(folder), args.data)
        train_s = time.perf_counter() - started
        hits = {kind: [] for kind in ("plain", "cluttered")}
        predicted_right, ms = [], {runtime: [] for runtime in runtimes}
        peak_gaps, device = [], {}
        items = val_images(args.data, args.limit)
        with project:
            for runtime in runtimes:  # load each network once before timing
                device[runtime] = explain_image(JobContext(), project, plain_canvas(rng), runtime=runtime).device
            for class_name, path in items:
                obj = open_image_file(path)
                for kind in hits:
                    canvas, quadrant = pasted(obj, kind, rng)
                    explained = {}
                    for runtime in runtimes:
                        if runtime == "torch" and len(ms["torch"]) >= args.torch_canvases:
                            continue
                        explained[runtime], took = timed_explain(project, canvas, class_name, runtime)
                        ms[runtime].append(took)
                    onnx = explained["onnx"]
                    hits[kind].append(in_quadrant(onnx.peak, quadrant))
                    predicted_right.append(onnx.class_names[int(np.argmax(onnx.probabilities))] == class_name)
                    if "torch" in explained:
                        peak_gaps.append(float(np.hypot(*np.subtract(onnx.peak, explained["torch"].peak))))
        all_hits = hits["plain"] + hits["cluttered"]
        rate = float(np.mean(all_hits))
        report = {
            "benchmark": "explain", "images": len(items), "canvases": len(all_hits),
            "model_version": trained.model_version, "method": trained.method, "backbone": trained.backbone,
            "val_accuracy_on_canvases": round(float(np.mean(predicted_right)), 4),
            "pointing_rate": round(rate, 4),
            "pointing_rate_plain": round(float(np.mean(hits["plain"])), 4),
            "pointing_rate_cluttered": round(float(np.mean(hits["cluttered"])), 4),
            "target_rate": TARGET_RATE, "passed": rate >= TARGET_RATE,
            "train_s": round(train_s, 1),
            **{f"ms_per_image_{r}": round(float(np.median(ms[r])), 1) for r in runtimes},
            **{f"device_{r}": device[r] for r in runtimes},
        }
        if peak_gaps:
            report["max_peak_gap_onnx_vs_torch"] = round(max(peak_gaps), 5)
    for key, value in report.items():
        print(f"{key:>28}: {value}", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
