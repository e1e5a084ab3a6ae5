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
- ``source`` (when not given): the first-level sub-folder of the named folder that holds the
  file (``photos/cam1/2024/x.jpg`` -> ``cam1``); the named folder's own name for files directly
  in it; an explicitly named file's folder name. With ``labels_from_folders`` the class folder
  never doubles as the source: the folder one level up is used (``train/ants/x.jpg`` -> ``train``).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.imaging import (
    DEFAULT_MAX_SIDE,
    ImageDecodeError,
    NormalizedImage,
    has_image_extension,
    normalize_image,
    read_image_file,
)
from engine.jobs import JobContext
from storage.catalog import ensure_classes, list_classes
from storage.images import NewImage, add_images, existing_hashes
from storage.project import Project

BATCH_SIZE = 64
DECODE_WORKERS = max(2, min(4, os.cpu_count() or 2))


@dataclass(frozen=True)
class FailedFile:
    path: str
    reason: str


@dataclass
class ImportReport:
    """What an import did. ``classes`` counts the labels this import set, per class name."""

    imported: int = 0
    duplicates: int = 0
    skipped: int = 0
    failed: list[FailedFile] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)
    cancelled: bool = False
    labeled: int = 0
    classes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready form (the CLI's ``import --json`` document)."""
        data = asdict(self)
        data["failed"] = [asdict(f) for f in self.failed]
        return data

    def summary(self) -> str:
        parts = [f"{self.imported} imported", f"{self.duplicates} duplicates", f"{self.skipped} skipped"]
        parts.append(f"{len(self.failed)} failed")
        text = ", ".join(parts)
        if self.labeled:
            text += f"; {self.labeled} labeled in {len(self.classes)} classes"
        return text + (" (cancelled)" if self.cancelled else "")


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


def collect_items(
    paths: Iterable[str | os.PathLike], *, labels_from_folders: bool = False, source: str | None = None
) -> tuple[list[ImportItem], int, list[FailedFile]]:
    """Expand files and folders into import items; returns (items, skipped count, unreadable folders)."""
    items: list[ImportItem] = []
    failed: list[FailedFile] = []
    skipped = 0
    for raw in paths:
        root = Path(os.path.abspath(raw))
        if not root.is_dir():
            class_name = _folder_name(root.parent) if labels_from_folders else None
            source_folder = root.parent.parent if labels_from_folders else root.parent
            items.append(ImportItem(str(raw), source if source is not None else _folder_name(source_folder),
                                    class_name))
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
            item_source = source if source is not None else _folder_name(source_folder)
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
    """Import prepared items in batches; each batch is one write transaction."""
    report = report or ImportReport()
    total = len(items)
    known_hashes = existing_hashes(project)
    label_counts: Counter[int] = Counter()
    batches = [items[start : start + BATCH_SIZE] for start in range(0, total, BATCH_SIZE)]
    done = 0
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
                    report.cancelled = True
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
    if report.cancelled:
        context.progress(done / max(total, 1), f"Import cancelled: {report.summary()}")
    else:
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
    fresh: list[_Prepared] = []
    for result in prepared:
        if result.reason is not None:
            report.failed.append(FailedFile(result.item.path, result.reason))
        elif result.content_hash in known_hashes:
            report.duplicates += 1
        else:
            known_hashes.add(result.content_hash)
            fresh.append(result)
    if not fresh:
        return
    class_names = {r.item.class_name for r in fresh if r.item.class_name is not None}
    class_ids = ensure_classes(project, sorted(class_names)) if class_names else {}
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


def import_paths(
    context: JobContext,
    project: Project,
    paths: Iterable[str | os.PathLike],
    *,
    labels_from_folders: bool = False,
    source: str | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
) -> ImportReport:
    """Import files and folders (recursively); returns what was imported, skipped and why files failed.

    Cancelling (``context.cancel()``) stops after the current batch and returns a report with
    ``cancelled=True``; everything in it is committed.
    """
    context.progress(0.0, "Looking for images...")
    items, skipped, failed = collect_items(paths, labels_from_folders=labels_from_folders, source=source)
    report = ImportReport(skipped=skipped, failed=failed)
    return import_items(context, project, items, max_side=max_side, report=report)
