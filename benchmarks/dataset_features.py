"""Deep features of a folder-per-class data set (``../shared/data/...``), cached for the benchmarks.

Accuracy benchmarks (active learning, label noise, learning curves) simulate a user on real images:
the features are Sortlab's own (``engine.features.extraction.features_for_files``), computed once
and cached as .npz under the user cache folder (never in the repository), keyed by data set, backbone
and layer. ``python benchmarks/dataset_features.py caltech101-dev`` warms the cache.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class LabeledSet:
    """Every readable image of a data set: its path, its true class index, its feature vector."""

    name: str
    paths: list[str]
    y: np.ndarray  # int64 class index per image
    class_names: list[str]
    X: np.ndarray  # float32 (N, D)


DIGITS_DEMO = "digits-demo"


def dataset_dir(name: str) -> Path | None:
    if name == DIGITS_DEMO:
        return _digits_demo_dir()
    folder = SHARED_DATA / name
    return folder if folder.is_dir() else None


def _digits_demo_dir() -> Path:
    """Every scikit-learn digit rendered as the demo project renders it (engine.images.demo), written once
    as PNG files, folder per class, under the cache folder."""
    from sklearn.datasets import load_digits

    from engine.images.demo import demo_items

    folder = cache_dir() / "datasets" / DIGITS_DEMO
    done = folder / ".complete"
    if not done.exists():
        for item in demo_items(n_images=len(load_digits().target), labeled_fraction=1.0):
            target = folder / str(item.class_name) / Path(item.path).name.replace("digit-", f"{item.source}-")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item.data)
        done.touch()
    return folder


def _class_files(root: Path) -> list[tuple[str, str]]:
    """(path, class) for every image under root/<class>/..., or root/<split>/<class>/... (hymenoptera)."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if subdirs and {p.name for p in subdirs} <= {"train", "val", "test"}:
        return [item for split in subdirs for item in _class_files(split)]
    return [(str(f), cls.name) for cls in subdirs for f in sorted(cls.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    folder = Path(user_cache_dir("sortlab")) / "benchmark-features"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


VIEWS = (None, "flip")


class _MirroredRunner:
    """A loaded feature runner fed the mirror image of every network input (left-right flip of the
    preprocessed pixels): the features of the test-time view, through the engine's own pipeline."""

    def __init__(self, runner):
        self._runner = runner
        self.spec, self.batch_size = runner.spec, runner.batch_size
        self.parallel_calls = getattr(runner, "parallel_calls", 1)

    def run_one(self, batch: np.ndarray) -> np.ndarray:
        return self._runner.run_one(np.ascontiguousarray(batch[..., ::-1]))

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._runner.run(np.ascontiguousarray(batch[..., ::-1]))


def _extract(paths: list[str], backbone: str, layer: str | None, views: str | None):
    from engine.features.extraction import _pipeline, features_for_files, get_runner
    from engine.images.imaging import ImageDecodeError, read_image_file
    from engine.runtime.jobs import JobContext

    def report(fraction: float, message: str) -> None:
        print(f"\r{message} {fraction:5.1%}", end="", file=sys.stderr, flush=True)

    if views is None:
        return features_for_files(JobContext(report), paths, backbone, layer)

    def load(batch):
        found = {}
        for path in batch:
            try:
                found[path] = read_image_file(path)
            except ImageDecodeError as exc:
                found[path] = exc
        return found

    ok_paths, chunks = [], []

    def consume(batch_paths, vectors):
        ok_paths.extend(batch_paths)
        chunks.append(np.asarray(vectors, dtype=np.float32))

    runner = _MirroredRunner(get_runner(backbone, layer))
    failed = _pipeline(JobContext(report), runner, paths, load, consume, f"Mirrored {backbone} features")
    return ok_paths, np.concatenate(chunks), failed


def load_labeled_set(name: str, backbone: str = "efficientnet_lite0", layer: str | None = None,
                     views: str | None = None) -> LabeledSet | None:
    """The data set's features (computed and cached on first use); None when the data set is absent.

    ``views="flip"``: the features of each image's mirror image instead (rows in the same order)."""
    if views not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}")
    root = dataset_dir(name)
    if root is None:
        return None
    files = _class_files(root)
    key = hashlib.sha256("\n".join(p for p, _ in files).encode()).hexdigest()[:12]
    suffix = f"-{views}" if views else ""
    cached = cache_dir() / f"{name}-{backbone}-{layer or 'default'}{suffix}-{key}.npz"
    if cached.exists():
        data = np.load(cached, allow_pickle=False)
        paths, X = data["paths"].tolist(), data["X"]
    else:
        paths, X, failed = _extract([p for p, _ in files], backbone, layer, views)
        print(f"\n{len(paths)} images, {len(failed)} unreadable", file=sys.stderr)
        np.savez(cached, paths=np.array(paths), X=X)
    class_of = dict(files)
    class_names = sorted({class_of[p] for p in paths})
    index = {c: i for i, c in enumerate(class_names)}
    y = np.array([index[class_of[p]] for p in paths], dtype=np.int64)
    return LabeledSet(name, paths, y, class_names, np.asarray(X, dtype=np.float32))


if __name__ == "__main__":
    for dataset in sys.argv[1:] or ["hymenoptera", "caltech101-dev"]:
        loaded = load_labeled_set(dataset)
        print(dataset, None if loaded is None else loaded.X.shape)
