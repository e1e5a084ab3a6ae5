"""Import image files and folders into a project: batched, cancellable, duplicate-aware.

Files are read, hashed (SHA-256 of the file bytes) and normalized in a small thread pool
(Pillow releases the GIL while decoding), one batch ahead of the writer, while this job's own
thread commits each batch in ONE transaction. A cancelled or killed import therefore leaves
whole batches only, never half an image or an image without its folder label.

Folder rules:
- Folders are walked recursively in sorted order; hidden files and folders (name starting with
  '.') and files whose extension is not a readable image format (``.txt``, ``Thumbs.db``, no
  extension, ...) are skipped silently and counted in ``skipped``. A file named explicitly is
  always tried, and reported with a reason if it is not an image.
- ``labels_from_folders``: each file's immediate parent folder name becomes its class.
- ``source`` (when not given): one per import and folder, named so that it reads as a batch and
  never as a class: ``import 2026-12-01 21:40 (folder 'photos/cam1')``. The folder is the
  first-level sub-folder of the named folder that holds the file (``photos/cam1/2024/x.jpg`` ->
  ``photos/cam1``), the named folder itself for files directly in it, an explicitly named file's
  folder. With ``labels_from_folders`` the class folder never doubles as the source: the folder
  one level up is used (``train/ants/x.jpg`` -> ``train``). Users rename sources
  (``storage.images.rename_source``) to what they are: a camera, a day, a batch.
- Duplicates (same bytes as an image in the project) are skipped; with ``labels_from_folders`` an
  unlabeled duplicate gets its folder's label, and one labeled with another class keeps it and is
  reported in ``conflicts``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.images.imaging import (
    DEFAULT_MAX_SIDE,
    ImageDecodeError,
    NormalizedImage,
    has_image_extension,
    normalize_image,
    read_image_file,
)
from engine.runtime.jobs import JobCancelled, JobContext
from storage.catalog import ensure_classes, list_classes
from storage.images import NewImage, add_images, existing_hashes, label_known_images
from storage.project import Project

BATCH_SIZE = 64
DECODE_WORKERS = max(2, min(4, os.cpu_count() or 2))


@dataclass(frozen=True)
class FailedFile:
    path: str
    reason: str


@dataclass(frozen=True)
class LabelConflict:
    """A duplicate whose folder names another class than the label its image already has (kept)."""

    path: str
    label: str
    folder_label: str


@dataclass
class ImportReport:
    """What an import did. ``classes`` counts the labels this import set, per class name (on new
    images and, as ``labeled_duplicates``, on skipped duplicates that had no label yet)."""

    imported: int = 0
    duplicates: int = 0
    skipped: int = 0
    failed: list[FailedFile] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)
    labeled: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    labeled_duplicates: int = 0
    conflicts: list[LabelConflict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form (the CLI's ``import --json`` document)."""
        data = asdict(self)
        data["failed"] = [asdict(f) for f in self.failed]
        data["conflicts"] = [asdict(c) for c in self.conflicts]
        return data

    def summary(self) -> str:
        parts = [f"{self.imported} imported", f"{self.duplicates} duplicates", f"{self.skipped} skipped"]
        parts.append(f"{len(self.failed)} failed")
        text = ", ".join(parts)
        if self.labeled:
            text += f"; {self.labeled} labeled in {len(self.classes)} classes"
        if self.labeled_duplicates:
            text += f" ({self.labeled_duplicates} of them duplicates that had no label)"
        if self.conflicts:
            text += f"; {len(self.conflicts)} duplicates keep another label"
        return text


@dataclass(frozen=True)
class ImportItem:
    """One thing to import: a file on disk, or in-memory bytes (``data``, e.g. the demo)."""

    path: str
    source: str
    class_name: str | None = None
    data: bytes | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


@dataclass(frozen=True)
class _Prepared:
    item: ImportItem
    content_hash: str | None = None
    normalized: NormalizedImage | None = None  # None for a known duplicate or a failure
    reason: str | None = None


def _folder_name(absolute: Path) -> str:
    return absolute.name or str(absolute)


def batch_source(folder: str, imported_at: dt.datetime) -> str:
    """The source of the images one import brought from one folder: it reads as a batch, never as a
    class (a folder named "ants" becomes "import 2026-12-01 21:40 (folder 'train/ants')")."""
    return f"import {imported_at:%Y-%m-%d %H:%M} (folder '{folder}')"


def collect_items(
    paths: Iterable[str | os.PathLike], *, labels_from_folders: bool = False, source: str | None = None,
    imported_at: dt.datetime | None = None,
) -> tuple[list[ImportItem], int, list[FailedFile]]:
    """Expand files and folders into import items; returns (items, skipped count, unreadable folders).

    Without ``source``, each item's source is a ``batch_source`` stamped ``imported_at`` (now)."""
    when = imported_at or dt.datetime.now()
    items: list[ImportItem] = []
    failed: list[FailedFile] = []
    skipped = 0
    for raw in paths:
        root = Path(os.path.abspath(raw))
        if not root.is_dir():
            class_name = _folder_name(root.parent) if labels_from_folders else None
            source_folder = root.parent.parent if labels_from_folders else root.parent
            items.append(ImportItem(str(raw), source if source is not None
                                    else batch_source(_folder_name(source_folder), when), class_name))
            continue

        def on_walk_error(exc: OSError) -> None:
            failed.append(FailedFile(str(exc.filename), f"folder unreadable: {exc.strerror or exc}"))

        for dirpath, dirnames, filenames in os.walk(root, onerror=on_walk_error):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            folder = Path(dirpath)
            relative_parts = folder.relative_to(root).parts
            class_name = _folder_name(folder) if labels_from_folders else None
            source_folder = root / relative_parts[0] if relative_parts else root
            if labels_from_folders and source_folder == folder:
                source_folder = folder.parent
            if source_folder == root.parent:  # class labels from the named folder itself: its parent
                shown_source = _folder_name(source_folder)
            else:  # the named folder, or its sub-folder shown under the named folder's name
                shown_source = "/".join((_folder_name(root), *source_folder.relative_to(root).parts))
            item_source = source if source is not None else batch_source(shown_source, when)
            shown_folder = Path(raw) / folder.relative_to(root)
            for filename in sorted(filenames):
                if filename.startswith(".") or not has_image_extension(filename):
                    skipped += 1
                    continue
                items.append(ImportItem(str(shown_folder / filename), item_source, class_name))
    return items, skipped, failed


def _prepare(item: ImportItem, known_hashes: set[str], max_side: int) -> _Prepared:
    """Runs in the decoder pool: read, hash, and (unless already known) normalize one item."""
    try:
        data = item.data if item.data is not None else read_image_file(item.path)
        content_hash = hashlib.sha256(data).hexdigest()
        if content_hash in known_hashes:  # skip decoding what the project already has
            return _Prepared(item, content_hash)
        return _Prepared(item, content_hash, normalize_image(data, max_side))
    except ImageDecodeError as exc:
        return _Prepared(item, reason=exc.reason)
    except Exception as exc:  # never let one bad file stop the import
        return _Prepared(item, reason=f"cannot import ({exc.__class__.__name__}: {exc})")


def import_items(
    context: JobContext,
    project: Project,
    items: Sequence[ImportItem],
    *,
    max_side: int = DEFAULT_MAX_SIDE,
    label_origin: str = "import",
    report: ImportReport | None = None,
) -> ImportReport:
    """Import prepared items in batches; each batch is one write transaction.

    Cancelling stops after the batch being written: the report of what was committed so far is
    emitted as a partial result, then JobCancelled is raised (the committed batches stay)."""
    report = report or ImportReport()
    total = len(items)
    known_hashes = existing_hashes(project)
    label_counts: Counter[int] = Counter()
    batches = [items[start : start + BATCH_SIZE] for start in range(0, total, BATCH_SIZE)]
    done = 0
    cancelled = False
    with ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="sortlab-decode") as pool:

        def submit(batch: Sequence[ImportItem]) -> list[Future]:
            return [pool.submit(_prepare, item, known_hashes, max_side) for item in batch]

        upcoming = submit(batches[0]) if batches else []
        try:
            for index in range(len(batches)):
                current = upcoming
                # Decode the next batch while this one is written.
                upcoming = submit(batches[index + 1]) if index + 1 < len(batches) else []
                prepared = [future.result() for future in current]
                if context.cancelled:
                    cancelled = True
                    break
                _commit_batch(project, prepared, known_hashes, report, label_counts, label_origin)
                done += len(current)
                context.progress(done / total, f"Imported {report.imported} of {total} ({_counts_text(report)})")
        finally:  # on cancel or error, do not wait for a batch nobody will write
            for future in upcoming:
                future.cancel()
    if label_counts:
        names = {info.id: info.name for info in list_classes(project)}
        report.classes = {names.get(class_id, str(class_id)): count for class_id, count in sorted(label_counts.items())}
        report.labeled = sum(label_counts.values())
    if cancelled:
        context.progress(done / max(total, 1), f"Import cancelled: {report.summary()}")
        context.partial(report)
        raise JobCancelled()
    context.progress(1.0, f"Import finished: {report.summary()}")
    return report


def _counts_text(report: ImportReport) -> str:
    return f"{report.duplicates} duplicates, {len(report.failed)} failed"


def _commit_batch(
    project: Project,
    prepared: list[_Prepared],
    known_hashes: set[str],
    report: ImportReport,
    label_counts: Counter[int],
    label_origin: str,
) -> None:
    """Store a batch's new images with their labels in one transaction; then, in a second one, give
    its duplicates with a folder label that label where their image has none."""
    fresh: list[_Prepared] = []
    labeled_duplicates: list[_Prepared] = []
    for result in prepared:
        if result.reason is not None:
            report.failed.append(FailedFile(result.item.path, result.reason))
        elif result.content_hash in known_hashes:
            report.duplicates += 1
            if result.item.class_name is not None:
                labeled_duplicates.append(result)
        else:
            known_hashes.add(result.content_hash)
            fresh.append(result)
    class_names = {r.item.class_name for r in fresh + labeled_duplicates if r.item.class_name is not None}
    class_ids = ensure_classes(project, sorted(class_names)) if class_names else {}
    if fresh:
        _add_fresh(project, fresh, class_ids, report, label_counts, label_origin)
    if labeled_duplicates:  # after the new images: a copy within this batch finds its image labeled
        _label_duplicates(project, labeled_duplicates, class_ids, report, label_counts, label_origin)


def _add_fresh(project: Project, fresh: list[_Prepared], class_ids: dict[str, int], report: ImportReport,
               label_counts: Counter[int], label_origin: str) -> None:
    rows = []
    for result in fresh:
        item, normalized = result.item, result.normalized
        rows.append(
            NewImage(
                content_hash=result.content_hash,
                original_name=item.name,
                original_path=item.path if item.data is not None else os.path.abspath(item.path),
                source=item.source,
                width=normalized.width,
                height=normalized.height,
                original_format=normalized.original_format,
                data=normalized.data,
                thumbnail=normalized.thumbnail,
                class_id=class_ids.get(item.class_name) if item.class_name is not None else None,
                label_origin=label_origin,
            )
        )
    ids = add_images(project, rows)
    report.imported += len(ids)
    report.image_ids.extend(ids)
    label_counts.update(row.class_id for row in rows if row.class_id is not None)


def _label_duplicates(project: Project, duplicates: list[_Prepared], class_ids: dict[str, int],
                      report: ImportReport, label_counts: Counter[int], label_origin: str) -> None:
    """Unlabeled images get their duplicate's folder label (the first copy's, when copies disagree);
    each copy whose folder names another class than its image ends up with is a conflict."""
    wanted: dict[str, int] = {}
    for result in duplicates:
        wanted.setdefault(result.content_hash, class_ids[result.item.class_name])
    outcome = label_known_images(project, wanted, label_origin)
    report.labeled_duplicates += len(outcome.labeled)
    label_counts.update(wanted[content_hash] for content_hash in outcome.labeled)
    final = {content_hash: outcome.kept.get(content_hash, class_id) for content_hash, class_id in wanted.items()}
    clashing = [r for r in duplicates if final[r.content_hash] != class_ids[r.item.class_name]]
    if clashing:
        names = {info.id: info.name for info in list_classes(project)}
        report.conflicts.extend(LabelConflict(r.item.path, names.get(final[r.content_hash], "?"), r.item.class_name)
                                for r in clashing)


def import_paths(
    context: JobContext,
    project: Project,
    paths: Iterable[str | os.PathLike],
    *,
    labels_from_folders: bool = False,
    source: str | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
    imported_at: dt.datetime | None = None,
) -> ImportReport:
    """Import files and folders (recursively); returns what was imported, skipped and why files failed.
    Sources are named after the folders and ``imported_at`` (now) unless ``source`` names them all.

    Cancelling (``context.cancel()``) stops after the current batch: the report of what was
    committed is emitted as a partial result and JobCancelled is raised (see ``import_items``).
    """
    context.progress(0.0, "Looking for images...")
    items, skipped, failed = collect_items(paths, labels_from_folders=labels_from_folders, source=source,
                                           imported_at=imported_at)
    report = ImportReport(skipped=skipped, failed=failed)
    return import_items(context, project, items, max_side=max_side, report=report)
