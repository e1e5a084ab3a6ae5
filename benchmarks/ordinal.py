"""Ordered classes: does the ordinal head beat plain logistic regression on fill levels?

A generated data set (Pillow + numpy, no download): a container seen from above, filled 0 / 25 / 50 /
75 / 100 % with clutter of varied colours, shapes and textures (solid, stripes, checks, noise), under
varied lighting (brightness, colour cast, a light gradient, a rim shadow) and camera angle (rotation
and a perspective tilt), on varied floors. The fill shows as it does from a camera over a bin: the
fuller the bin, the larger (closer) the clutter surface and its pieces, and the more of the floor of
the bin they cover; each image's true fill is jittered around its level, so neighbouring levels look
alike at the edges. The images are written once under the user cache folder, their features (the
default backbone, through engine.features.extraction.features_for_files) cached as .npz.

For several seeds and training sizes (labeled images per level), a stratified draw trains the ordinal
head (engine.models.ordinal, the default for ordered projects) and plain multinomial logistic
regression (engine.models.classifiers 'logreg'), each with the app's defaults, and scores every image
not drawn: exact accuracy, within-one-level accuracy, mean absolute error in levels
(engine.models.evaluation.classification_metrics with the level order). Last line: JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset_features import cache_dir  # noqa: E402
from engine.features.backbones import DEFAULT_BACKBONE, DEFAULT_LAYER  # noqa: E402
from engine.models.classifiers import make_classifier  # noqa: E402
from engine.models.evaluation import classification_metrics  # noqa: E402
from engine.models.ordinal import make_feature_classifier  # noqa: E402

LEVELS = ("empty", "quarter", "half", "three-quarters", "full")
FILL = (0.0, 0.25, 0.5, 0.75, 1.0)
PER_LEVEL = 100
SIZE = 320
GENERATOR_VERSION = "1"
TRAIN_PER_LEVEL = (10, 30, 60)
JITTER = 0.09  # true fill = level +- this


def _texture(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A clutter piece's surface: solid, stripes, checks or noise, in one or two random colours."""
    a = rng.integers(0, 256, 3)
    b = rng.integers(0, 256, 3)
    kind = rng.integers(0, 4)
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == 0:
        mask = np.zeros((h, w), bool)
    elif kind == 1:
        period = rng.integers(4, 14)
        angle = rng.uniform(0, np.pi)
        mask = ((xx * np.cos(angle) + yy * np.sin(angle)) // period) % 2 == 0
    elif kind == 2:
        period = rng.integers(4, 12)
        mask = ((xx // period) + (yy // period)) % 2 == 0
    else:
        mask = rng.random((h, w)) < 0.5
    pixels = np.where(mask[..., None], a, b).astype(np.float64)
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _piece_mask(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """An ellipse, a box, or a random polygon (crumpled paper, a can, a bag)."""
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    kind = rng.integers(0, 3)
    if kind == 0:
        draw.ellipse((0, 0, w - 1, h - 1), fill=255)
    elif kind == 1:
        draw.rounded_rectangle((0, 0, w - 1, h - 1), radius=int(min(w, h) * rng.uniform(0, 0.3)), fill=255)
    else:
        n = rng.integers(5, 10)
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.5, 1.0, n)
        points = [(w / 2 * (1 + r * np.cos(t)), h / 2 * (1 + r * np.sin(t))) for r, t in zip(radii, angles)]
        draw.polygon(points, fill=255)
    return mask


def render(fill: float, rng: np.random.Generator) -> Image.Image:
    """One view from above of a container filled to ``fill`` (0..1)."""
    floor = _texture(rng, SIZE, SIZE).filter(ImageFilter.GaussianBlur(rng.uniform(1, 4)))
    scene = floor.copy()
    draw = ImageDraw.Draw(scene)
    margin = int(SIZE * rng.uniform(0.08, 0.16))
    box = (margin, margin, SIZE - margin, SIZE - margin)
    round_bin = rng.random() < 0.4
    rim = tuple(int(v) for v in rng.integers(20, 230, 3))
    inside = tuple(int(v * rng.uniform(0.25, 0.6)) for v in rim)
    shape = draw.ellipse if round_bin else (lambda b, **kw: draw.rounded_rectangle(b, radius=18, **kw))
    shape(box, fill=rim)
    rim_width = int(SIZE * 0.03)
    inner = (box[0] + rim_width, box[1] + rim_width, box[2] - rim_width, box[3] - rim_width)
    shape(inner, fill=inside)
    # The bin's floor seen through the opening shrinks with depth; the clutter surface rises with the fill.
    centre = np.array([(inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2])
    half = (inner[2] - inner[0]) / 2
    bottom_scale = 0.55
    surface_scale = bottom_scale + (1 - bottom_scale) * fill
    bottom = (*(centre - half * bottom_scale), *(centre + half * bottom_scale))
    bottom_shade = tuple(int(v * 0.6) for v in inside)
    shape(tuple(int(v) for v in bottom), fill=bottom_shade)
    clip = Image.new("L", (SIZE, SIZE), 0)
    clip_draw = ImageDraw.Draw(clip)
    (clip_draw.ellipse if round_bin else (lambda b, **kw: clip_draw.rounded_rectangle(b, radius=18, **kw)))(inner, fill=255)
    if fill > 0:
        pieces = int(6 + 70 * fill * rng.uniform(0.8, 1.2))
        radius = half * surface_scale
        piece_size = 0.18 * half * (0.6 + 0.8 * fill)
        layer = Image.new("RGB", (SIZE, SIZE))
        layer_mask = Image.new("L", (SIZE, SIZE), 0)
        for _ in range(pieces):
            w = max(4, int(piece_size * rng.uniform(0.5, 1.6)))
            h = max(4, int(piece_size * rng.uniform(0.5, 1.6)))
            x, y = centre + rng.uniform(-radius, radius, 2) - (w / 2, h / 2)
            mask = _piece_mask(rng, w, h)
            layer.paste(_texture(rng, w, h), (int(x), int(y)), mask)
            layer_mask.paste(255, (int(x), int(y)), mask)
        scene.paste(layer, (0, 0), Image.composite(layer_mask, Image.new("L", (SIZE, SIZE), 0), clip))
    # Lighting: brightness, colour cast, a linear gradient, a shadow under one side of the rim.
    pixels = np.asarray(scene, dtype=np.float64)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1 + rng.uniform(0, 0.5) * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
    shadow_side = rng.uniform(0, 2 * np.pi)
    distance = (xx - 0.5) * np.cos(shadow_side) + (yy - 0.5) * np.sin(shadow_side)
    shadow = 1 - rng.uniform(0, 0.35) * (distance > 0.25) * (np.asarray(clip) > 0)
    pixels *= (rng.uniform(0.55, 1.3) * rng.uniform(0.85, 1.15, 3))[None, None, :]
    pixels *= (gradient * shadow)[..., None]
    pixels += rng.normal(0, rng.uniform(2, 10), pixels.shape)
    scene = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    # Camera: rotation and a perspective tilt.
    scene = scene.rotate(rng.uniform(0, 360), resample=Image.Resampling.BILINEAR, fillcolor=tuple(floor.getpixel((2, 2))))
    tilt = rng.uniform(-0.0008, 0.0008, 2)
    coefficients = (1 + rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08), 0, rng.uniform(-0.08, 0.08),
                    1 + rng.uniform(-0.08, 0.08), 0, *tilt)
    scene = scene.transform((SIZE, SIZE), Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BILINEAR,
                            fillcolor=tuple(floor.getpixel((2, 2))))
    return scene


def generate(folder: Path, per_level: int) -> list[tuple[str, int]]:
    """(path, level) of every image, written once."""
    done = folder / ".complete"
    items = []
    for level, (name, fill) in enumerate(zip(LEVELS, FILL)):
        for i in range(per_level):
            items.append((str(folder / f"{level}-{name}" / f"{i:04d}.jpg"), level, fill))
    if not done.exists():
        for k, (path, level, fill) in enumerate(items):
            rng = np.random.default_rng(1000 * level + int(path[-8:-4]))
            true_fill = float(np.clip(fill + rng.uniform(-JITTER, JITTER), 0, 1)) if level else float(rng.uniform(0, 0.04))
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            render(true_fill, rng).save(path, quality=90)
            print(f"\rGenerating images {k + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        done.touch()
    return [(p, level) for p, level, _ in items]


def features(items: list[tuple[str, int]], backbone: str, layer: str) -> tuple[np.ndarray, np.ndarray]:
    from engine.features.extraction import features_for_files
    from engine.runtime.jobs import JobContext

    key = hashlib.sha256(("\n".join(p for p, _ in items) + GENERATOR_VERSION).encode()).hexdigest()[:12]
    cached = cache_dir() / f"fill-levels-{backbone}-{layer}-{key}.npz"
    level_of = dict(items)
    if cached.exists():
        data = np.load(cached, allow_pickle=False)
        paths, X = data["paths"].tolist(), data["X"]
    else:
        def report(fraction: float, message: str) -> None:
            print(f"\r{message} {fraction:5.1%}", end="", file=sys.stderr, flush=True)

        paths, X, failed = features_for_files(JobContext(report), [p for p, _ in items], backbone, layer)
        if failed:
            raise SystemExit(f"{len(failed)} generated images could not be read")
        np.savez(cached, paths=np.array(paths), X=X)
        print(file=sys.stderr)
    return np.asarray(X, dtype=np.float32), np.array([level_of[p] for p in paths], dtype=np.int64)


def score(model, X_train, y_train, X_test, y_test) -> dict:
    model.fit(X_train, y_train)
    levels = list(range(len(LEVELS)))
    m = classification_metrics(y_test, model.predict_proba(X_test), model.classes_, list(LEVELS), levels=levels)
    return {"accuracy": m.accuracy, "within_one": m.within_one_accuracy, "mae_levels": m.mean_absolute_error_levels}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--per-level", type=int, default=PER_LEVEL, help="generated images per fill level")
    parser.add_argument("--sample", type=Path, help="also save a contact sheet of generated images here (PNG)")
    args = parser.parse_args()
    started = time.perf_counter()
    folder = cache_dir() / "datasets" / f"fill-levels-v{GENERATOR_VERSION}-{args.per_level}"
    items = generate(folder, args.per_level)
    if args.sample:
        sheet = Image.new("RGB", (5 * 128, 4 * 128))
        for level in range(len(LEVELS)):
            for row in range(4):
                path = items[level * args.per_level + row][0]
                sheet.paste(Image.open(path).resize((128, 128)), (level * 128, row * 128))
        sheet.save(args.sample)
    generated = time.perf_counter()
    X, y = features(items, DEFAULT_BACKBONE, DEFAULT_LAYER)
    extracted = time.perf_counter()
    report = {"benchmark": "ordinal", "images": int(len(y)), "levels": list(LEVELS), "backbone": DEFAULT_BACKBONE,
              "layer": DEFAULT_LAYER, "seeds": args.seeds, "train_per_level": {}}
    for n in TRAIN_PER_LEVEL:
        if n >= args.per_level:
            continue
        runs: dict[str, list[dict]] = {"ordinal": [], "plain": []}
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            train = np.concatenate([rng.permutation(np.flatnonzero(y == k))[:n] for k in range(len(LEVELS))])
            test = np.setdiff1d(np.arange(len(y)), train)
            runs["ordinal"].append(score(make_feature_classifier("ordinal", list(range(len(LEVELS))), random_state=seed),
                                         X[train], y[train], X[test], y[test]))
            runs["plain"].append(score(make_classifier("logreg", random_state=seed), X[train], y[train], X[test], y[test]))
        summary = {}
        for name, rows in runs.items():
            summary[name] = {key: {"mean": round(statistics.mean(r[key] for r in rows), 4),
                                   "sd": round(statistics.stdev(r[key] for r in rows), 4)}
                             for key in ("accuracy", "within_one", "mae_levels")}
            print(f"{n} per level, {name:8s}: " + ", ".join(
                f"{key} {v['mean']:.3f} ± {v['sd']:.3f}" for key, v in summary[name].items()), flush=True)
        report["train_per_level"][str(n)] = summary
    report["timings_s"] = {"generate": round(generated - started, 1), "features": round(extracted - generated, 1),
                           "models": round(time.perf_counter() - extracted, 1)}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
