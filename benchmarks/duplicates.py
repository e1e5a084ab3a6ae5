"""Near-duplicate finding: recall of planted copies, false pairs among distinct photos, and speed.

Quality: for each of three seeds, 5 % of the hymenoptera images (``../shared/data/hymenoptera``) get
four modified copies each (resized to half, recompressed as JPEG quality 35, cropped 6 % a side,
brightened 30 %), written with Pillow to a temporary folder and run through Sortlab's own feature
extraction (engine.features.extraction.features_for_files, Lite0). ``find_duplicates`` then runs on
originals + copies at several thresholds: recall = planted (original, copy) pairs that end in one
group; false pairs = original images grouped with another original (distinct photos), as a share of
the originals. Targets at the default threshold (LOOK_ALIKE): recall >= 0.95, false pairs <= 1 %.
For context, the share of caltech101-dev images grouped at each threshold (no ground truth there:
Caltech holds real duplicates, e.g. Faces and Faces_easy, and many re-shots).

Speed: ``find_duplicates`` on 10k and 100k synthetic 1280-d vectors (Lite0's size) with planted
copies; the exact tiled computation costs N^2 D / 2 multiply-adds. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset_features import load_labeled_set  # noqa: E402
from engine.curation.duplicates import LOOK_ALIKE, SAME_PHOTO, find_duplicates, nearest_neighbours  # noqa: E402
from engine.features.extraction import features_for_files  # noqa: E402
from engine.runtime.jobs import JobContext  # noqa: E402

PLANT_FRACTION = 0.05
THRESHOLDS = tuple(sorted({0.85, 0.86, 0.87, 0.88, 0.90, 0.92, LOOK_ALIKE, SAME_PHOTO}))
TARGET_RECALL = 0.95
TARGET_FALSE_SHARE = 0.01


def _resized(image: Image.Image) -> Image.Image:
    return image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.LANCZOS)


def _cropped(image: Image.Image) -> Image.Image:
    dx, dy = int(image.width * 0.06), int(image.height * 0.06)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def _brightened(image: Image.Image) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(1.3)


MODIFICATIONS = {"resized": _resized, "recompressed": lambda image: image, "cropped": _cropped,
                 "brightened": _brightened}


def plant_copies(paths: list[str], folder: Path, seed: int) -> list[tuple[int, str, str]]:
    """(original row, modification, copy path) for four modified copies of 5 % of the images."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=max(1, int(round(PLANT_FRACTION * len(paths)))), replace=False)
    planted = []
    for row in sorted(chosen.tolist()):
        with Image.open(paths[row]) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        for name, modify in MODIFICATIONS.items():
            target = folder / f"{seed}-{row}-{name}.jpg"
            modify(image).save(target, quality=35 if name == "recompressed" else 90)
            planted.append((row, name, str(target)))
    return planted


def quality_report(seeds: int) -> dict | None:
    data = load_labeled_set("hymenoptera")
    if data is None:
        print("hymenoptera: not in ../shared/data, quality part skipped")
        return None
    with tempfile.TemporaryDirectory() as folder:
        planted = [item for seed in range(seeds) for item in plant_copies(data.paths, Path(folder), seed)]
        copy_paths, copy_X, failed = features_for_files(JobContext(), [p for _, _, p in planted])
    if failed:
        raise RuntimeError(f"copies could not be read: {failed}")
    originals = len(data.paths)
    by_path = {p: i for i, p in enumerate(copy_paths)}
    X = np.vstack([data.X, copy_X])
    pairs = [(row, originals + by_path[path], name) for row, name, path in planted]
    _, nearest = nearest_neighbours(data.X, k=1)
    copy_sims = {name: [] for name in MODIFICATIONS}
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    for a, b, name in pairs:
        copy_sims[name].append(float(unit[a] @ unit[b]))
    sweep = {}
    for threshold in THRESHOLDS:
        groups = find_duplicates(np.arange(len(X)), X, threshold)
        group_of = {i: g for g, group in enumerate(groups) for i in group.image_ids}
        found = {name: 0 for name in MODIFICATIONS}
        for a, b, name in pairs:
            found[name] += a in group_of and group_of.get(b) == group_of[a]
        distinct_in_groups = {i for group in groups for i in group.image_ids if i < originals
                              if sum(j < originals for j in group.image_ids) > 1}
        sweep[f"{threshold:.2f}"] = {
            "recall": round(sum(found.values()) / len(pairs), 4),
            "recall_by_modification": {n: round(f / len(copy_sims[n]), 4) for n, f in found.items()},
            "false_pair_images": len(distinct_in_groups),
            "false_pair_share": round(len(distinct_in_groups) / originals, 4),
        }
        print(f"threshold {threshold:.2f}: recall {sweep[f'{threshold:.2f}']['recall']:.3f} "
              f"{sweep[f'{threshold:.2f}']['recall_by_modification']}, distinct images paired "
              f"{len(distinct_in_groups)} ({len(distinct_in_groups) / originals:.2%})", flush=True)
    at_default = sweep[f"{LOOK_ALIKE:.2f}"]
    caltech = load_labeled_set("caltech101-dev")
    if caltech is not None:
        for threshold in THRESHOLDS:
            grouped = sum(len(g.image_ids) for g in find_duplicates(np.arange(len(caltech.y)), caltech.X, threshold))
            sweep[f"{threshold:.2f}"]["caltech_grouped_share"] = round(grouped / len(caltech.y), 4)
    return {
        "images": originals, "planted_pairs": len(pairs),
        "copy_similarity_min": {n: round(min(s), 4) for n, s in copy_sims.items()},
        "copy_similarity_median": {n: round(float(np.median(s)), 4) for n, s in copy_sims.items()},
        "distinct_nearest_similarity": {"median": round(float(np.median(nearest)), 4),
                                        "p99": round(float(np.quantile(nearest, 0.99)), 4),
                                        "max": round(float(nearest.max()), 4)},
        "sweep": sweep, "threshold": LOOK_ALIKE,
        "meets_targets": at_default["recall"] >= TARGET_RECALL and at_default["false_pair_share"] <= TARGET_FALSE_SHARE,
    }


def synthetic_vectors(n: int, dim: int = 1280, seed: int = 0) -> np.ndarray:
    """Rectified Gaussian vectors (like pooled ReLU features); 1 % of rows are noisy copies of others."""
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.normal(size=(n, dim)).astype(np.float32), 0)
    copies = rng.choice(n, size=n // 100, replace=False)
    X[copies] = X[(copies + 1) % n] + rng.normal(scale=0.05, size=(len(copies), dim)).astype(np.float32)
    return X


def timing(n: int) -> dict:
    X = synthetic_vectors(n)
    started = time.perf_counter()
    groups = find_duplicates(np.arange(n), X, LOOK_ALIKE)
    seconds = time.perf_counter() - started
    print(f"{n} vectors: {seconds:.1f} s, {len(groups)} groups", flush=True)
    return {"images": n, "seconds": round(seconds, 2), "groups": len(groups)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--plant-seeds", type=int, default=3)
    args = parser.parse_args()
    report = {"benchmark": "duplicates", "quality": quality_report(args.plant_seeds),
              "timing": [timing(n) for n in args.sizes]}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
