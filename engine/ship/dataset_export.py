"""Export the labeled images as a folder per class plus ``dataset.csv``.

Layout of ``OUT_DIR``::

    dataset.csv                 file,label,source,split,prediction,probability
    <class>/<id>_<name>.jpg     one folder per class (names made safe for every file system)
    unlabeled/...               only with include_unlabeled

Class and file names come from users (or from someone else's project), so they are sanitized:
no path separators, no ``..``, no characters or names Windows refuses, no collisions on
case-insensitive file systems; every written path is checked to lie inside ``OUT_DIR``. CSV cells
that a spreadsheet would run as a formula (starting with = + - @) get a leading apostrophe.
Stored images are JPEG, so files are written byte for byte as Sortlab holds them.
"""

from __future__ import annotations

import csv
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from engine.runtime.jobs import JobCancelled, JobContext
from storage import catalog
from storage.errors import ProjectError
from storage.images import list_images, read_image_bytes
from storage.modelstore import active_model, predictions
from storage.project import Project

CSV_NAME = "dataset.csv"
CSV_COLUMNS = ("file", "label", "source", "split", "prediction", "probability")
UNLABELED_FOLDER = "unlabeled"
MAX_NAME_LENGTH = 80
BATCH = 64
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_UNSAFE_CHARACTERS = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class DatasetExportError(ProjectError):
    """The dataset cannot be exported; the message says why."""


@dataclass
class DatasetExportReport:
    """What was written. A cancelled export emits this (counting what it wrote) as a partial result."""

    out_dir: str
    images: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    folders: dict[str, str] = field(default_factory=dict)  # class name -> folder name
    prediction_model: int | None = None


def safe_name(name: str, fallback: str = "class") -> str:
    """A file or folder name that is valid on Linux, macOS and Windows and cannot leave its folder."""
    text = unicodedata.normalize("NFC", str(name))
    text = _UNSAFE_CHARACTERS.sub("_", text)
    text = text.strip().strip(". ")  # no hidden (leading dot) or Windows-invalid (trailing dot) names
    text = re.sub(r"_+", "_", text)
    if set(text) <= {".", "_", " "}:
        text = ""
    if not text:
        text = fallback
    if text.split(".")[0].lower() in _WINDOWS_RESERVED or text.startswith(_FORMULA_STARTS):
        text = f"_{text}"  # reserved on Windows, or read as a formula / command-line option
    return text[:MAX_NAME_LENGTH].rstrip(". ") or fallback


def class_folder_names(class_names: list[str]) -> dict[str, str]:
    """Safe, unique (also case-insensitively) folder names, in the order given."""
    taken: set[str] = {UNLABELED_FOLDER}
    folders: dict[str, str] = {}
    for name in class_names:
        base = safe_name(name)
        candidate, number = base, 2
        while candidate.lower() in taken:
            candidate = f"{base}_{number}"
            number += 1
        taken.add(candidate.lower())
        folders[name] = candidate
    return folders


def csv_safe(text: str) -> str:
    """A cell that a spreadsheet will not run as a formula (CSV injection): text starting with
    = + - @ (or a tab/CR) gets a leading apostrophe, which spreadsheets show as plain text."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _inside(root: Path, path: Path) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise DatasetExportError(f"Refusing to write outside the export folder: {path}")
    return resolved


def _active_predictions(project: Project) -> tuple[int | None, dict[int, tuple[str, float]]]:
    """The active model's version and its (class name, probability) per image id."""
    model = active_model(project)
    if model is None:
        return None, {}
    by_image = predictions(project, model.version)
    return model.version, {image_id: (p.class_name, p.probability) for image_id, p in by_image.items()}


def export_dataset(
    context: JobContext,
    project: Project,
    out_dir: str | os.PathLike,
    *,
    include_unlabeled: bool = False,
) -> DatasetExportReport:
    """Write the labeled images (and optionally the unlabeled ones) and ``dataset.csv`` to ``out_dir``.

    Cancelling stops after the batch in progress: what was written stays (``dataset.csv`` lists it),
    the report so far is emitted as a partial result, and JobCancelled is raised."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetExportError(f"{out} already exists and is not an empty folder; choose a new folder.")
    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()

    classes = catalog.list_classes(project)
    class_name_by_id = {c.id: c.name for c in classes}
    folders = class_folder_names([c.name for c in classes])
    model_version, predicted_by_image = _active_predictions(project)
    images = [
        info for info in list_images(project) if info.class_id is not None or include_unlabeled
    ]
    report = DatasetExportReport(str(root), folders=folders, prediction_model=model_version)
    report.per_class = {c.name: 0 for c in classes}
    cancelled = False
    with open(root / CSV_NAME, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for start in range(0, len(images), BATCH):
            if context.cancelled:
                cancelled = True
                break
            batch = images[start : start + BATCH]
            data = read_image_bytes(project, [info.id for info in batch])
            for info in batch:
                label = class_name_by_id.get(info.class_id, "") if info.class_id is not None else ""
                folder = folders[label] if label else UNLABELED_FOLDER
                stem = safe_name(Path(info.original_name).stem, fallback="image")
                relative = f"{folder}/{info.id}_{stem}.jpg"
                target = _inside(root, root / folder / f"{info.id}_{stem}.jpg")
                target.parent.mkdir(exist_ok=True)
                target.write_bytes(data[info.id])
                predicted, probability = predicted_by_image.get(info.id, ("", None))
                writer.writerow(
                    (relative, csv_safe(label), csv_safe(info.source or ""), info.split,
                     csv_safe(predicted), "" if probability is None else f"{probability:.6f}")
                )
                report.images += 1
                if label:
                    report.per_class[label] += 1
            context.progress((start + len(batch)) / max(len(images), 1), f"Exported {report.images} images")
    if cancelled:
        context.partial(report)
        raise JobCancelled()
    context.progress(1.0, f"Exported {report.images} images to {root}")
    return report
