"""The training images of a distributed fine-tuning run, exported once by rank 0 so that the other ranks
never open the project: a temporary folder holding each labeled image's stored bytes as a file and a
``manifest.json`` (classes, which image is on which side, its class index). Every rank reads the
folder read-only after a barrier.

The folder is ``SORTLAB_SHARD_DIR`` when set (on several machines: a folder they all see), else one
named after torchrun's run id in the temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SHARD_ENV = "SORTLAB_SHARD_DIR"
MANIFEST = "manifest.json"


@dataclass
class ShardEntry:
    image_id: int
    target: int  # index into ``TrainingShards.classes``
    class_id: int
    source: str


@dataclass
class TrainingShards:
    """What every rank trains on: the manifest of an exported shard folder."""

    folder: Path
    classes: list[int]
    class_names: list[str]
    train: list[ShardEntry]
    val: list[ShardEntry]  # empty when not every class has a validation image
    run_id: int = 0
    error: str = ""
    extra: dict = field(default_factory=dict)

    def image_bytes(self, image_id: int) -> bytes:
        return (self.folder / "images" / f"{image_id}.img").read_bytes()


def shard_folder() -> Path:
    override = os.environ.get(SHARD_ENV)
    if override:
        return Path(override)
    run = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT") or str(os.getppid())
    return Path(tempfile.gettempdir()) / f"sortlab-ddp-{run}"


def export_shards(project, folder: Path, run_id: int) -> TrainingShards:
    """Rank 0: split the labeled images (train / validation, as single-process fine-tuning does) and
    write their stored bytes and the manifest to ``folder`` (made anew)."""
    from engine.models.evaluation import assign_splits
    from storage.catalog import list_classes
    from storage.images import read_image_bytes
    from storage.splits import labeled_images

    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True)
    sides = assign_splits(project)
    labeled = labeled_images(project)
    classes = sorted({img.class_id for img in labeled})
    names = {c.id: c.name for c in list_classes(project)}
    index_of = {c: i for i, c in enumerate(classes)}
    stored = read_image_bytes(project, [img.image_id for img in labeled])
    for image_id, data in stored.items():
        (folder / "images" / f"{image_id}.img").write_bytes(data)
    labeled = [img for img in labeled if img.image_id in stored]
    entries = {img.image_id: ShardEntry(img.image_id, index_of[img.class_id], img.class_id, img.source) for img in labeled}
    val = [entries[img.image_id] for img in labeled if sides.get(img.image_id) == "val"]
    has_val = {e.class_id for e in val} == set(index_of)
    train = [entries[img.image_id] for img in labeled if not has_val or sides.get(img.image_id) != "val"]
    shards = TrainingShards(folder, classes, [names.get(c, str(c)) for c in classes], train, val if has_val else [],
                            run_id)
    write_manifest(shards)
    return shards


def write_manifest(shards: TrainingShards) -> None:
    data = {"classes": shards.classes, "class_names": shards.class_names, "run_id": shards.run_id,
            "error": shards.error,
            "train": [vars(e) for e in shards.train], "val": [vars(e) for e in shards.val]}
    shards.folder.mkdir(parents=True, exist_ok=True)
    temporary = shards.folder / f".{MANIFEST}.partial"
    temporary.write_text(json.dumps(data), encoding="utf-8")
    os.replace(temporary, shards.folder / MANIFEST)


def read_manifest(folder: Path) -> TrainingShards:
    data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    return TrainingShards(folder, list(data["classes"]), list(data["class_names"]),
                          [ShardEntry(**e) for e in data["train"]], [ShardEntry(**e) for e in data["val"]],
                          int(data["run_id"]), data.get("error", ""))


def class_array(shards: TrainingShards) -> np.ndarray:
    return np.asarray(shards.classes, dtype=np.int64)
