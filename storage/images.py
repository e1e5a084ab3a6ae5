"""Image rows: adding imported images (with their import labels) and reading bytes back.

Every function opens its own short-lived session and returns plain data (bytes, dataclasses),
never ORM objects, so it is safe to call from any thread.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select, update

from storage.catalog import record_label_events
from storage.chunks import in_list_chunks
from storage.errors import ProjectError
from storage.models import Image, ImageClass, Label, utcnow
from storage.project import Project
from storage.trust_blobs import (
    MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MAX_THUMBNAIL_BYTES, MAX_THUMBNAIL_PIXELS, read_bounded_images,
)


@dataclass(frozen=True)
class NewImage:
    """An image ready to store: normalized JPEG bytes, thumbnail, and where it came from.

    ``class_id`` labels the image in the same transaction (origin ``label_origin``), so a
    folder-per-class import never leaves an image that lost its label.
    """

    content_hash: str
    original_name: str
    original_path: str
    source: str
    width: int
    height: int
    original_format: str
    data: bytes = field(repr=False)
    thumbnail: bytes = field(repr=False)
    class_id: int | None = None
    label_origin: str = "import"


@dataclass(frozen=True)
class ImageInfo:
    """What views and jobs need to know about an image, without its bytes."""

    id: int
    original_name: str
    original_path: str
    source: str
    width: int
    height: int
    original_format: str
    imported_at: dt.datetime
    class_id: int | None
    split: str
    split_pinned: bool


@dataclass(frozen=True)
class ProjectSummary:
    """Counts for `info` and the status bar. ``classes`` lists every class (in display order)."""

    images: int
    labeled: int
    unlabeled: int
    classes: dict[str, int]
    sources: dict[str, int]


def add_images(project: Project, rows: Sequence[NewImage]) -> list[int]:
    """Insert images and their labels in ONE write transaction; returns each row's image id.

    A row whose content hash is already in the project (or earlier in ``rows``) is not stored
    again: it gets the existing image's id, so callers can always map rows to images. Importers
    that must count duplicates check ``existing_hashes`` first.
    """
    rows = list(rows)
    if not rows:
        return []
    now = utcnow()
    with project.writing() as session:
        hashes = list({row.content_hash for row in rows})
        ids_by_hash: dict[str, int] = {}
        for chunk in in_list_chunks(hashes):
            ids_by_hash.update(
                session.execute(select(Image.content_hash, Image.id).where(Image.content_hash.in_(chunk))).all()
            )
        pending: dict[str, Image] = {}
        labels: list[tuple[Image, NewImage]] = []
        for row in rows:
            if row.content_hash in ids_by_hash or row.content_hash in pending:
                continue
            image = Image(
                content_hash=row.content_hash,
                original_name=row.original_name,
                original_path=row.original_path,
                source=row.source,
                width=row.width,
                height=row.height,
                original_format=row.original_format,
                imported_at=now,
                data=row.data,
                thumbnail=row.thumbnail,
            )
            pending[row.content_hash] = image
            if row.class_id is not None:
                labels.append((image, row))
        session.add_all(pending.values())
        session.flush()
        ids_by_hash.update((h, image.id) for h, image in pending.items())
        session.add_all(
            Label(image_id=image.id, class_id=row.class_id, origin=row.label_origin, labeled_at=now)
            for image, row in labels
        )
        for origin in {row.label_origin for _, row in labels}:
            record_label_events(session, project, ((image.id, None, row.class_id) for image, row in labels
                                                   if row.label_origin == origin), origin)
    return [ids_by_hash[row.content_hash] for row in rows]


@dataclass(frozen=True)
class KnownImageLabels:
    """What ``label_known_images`` did, by content hash: the images it labeled (hash -> image id),
    and those that keep the other label they already had (hash -> that class id)."""

    labeled: dict[str, int]
    kept: dict[str, int]


def label_known_images(project: Project, class_by_hash: dict[str, int], origin: str = "import") -> KnownImageLabels:
    """Label images already in the project (found by content hash) that have no label yet, in one
    transaction: a re-import with folder labels labels the duplicates it skips. An image labeled
    with another class keeps that label (the caller reports the conflict)."""
    labeled: dict[str, int] = {}
    kept: dict[str, int] = {}
    now = utcnow()
    with project.writing() as session:
        for chunk in in_list_chunks(list(class_by_hash)):
            rows = session.execute(
                select(Image.content_hash, Image.id, Label.class_id)
                .outerjoin(Label, Label.image_id == Image.id)
                .where(Image.content_hash.in_(chunk))
            ).all()
            for content_hash, image_id, class_id in rows:
                if class_id is None:
                    labeled[content_hash] = image_id
                elif class_id != class_by_hash[content_hash]:
                    kept[content_hash] = class_id
        session.add_all(
            Label(image_id=image_id, class_id=class_by_hash[content_hash], origin=origin, labeled_at=now)
            for content_hash, image_id in labeled.items()
        )
        record_label_events(session, project, ((image_id, None, class_by_hash[content_hash])
                                               for content_hash, image_id in labeled.items()), origin)
    return KnownImageLabels(labeled, kept)


def rename_source(project: Project, old: str, new: str) -> int:
    """Give every image of source ``old`` the source ``new`` (a source is a camera or a batch the
    user names); an existing ``new`` absorbs them. Returns how many images were renamed."""
    cleaned = " ".join(str(new).split())
    if not cleaned:
        raise ProjectError("A source name cannot be empty.")
    if len(cleaned) > 255:
        raise ProjectError("A source name can have at most 255 characters.")
    with project.writing() as session:
        renamed = session.execute(update(Image).where(Image.source == old).values(source=cleaned)).rowcount
    if not renamed:
        raise ProjectError(f"No source named '{old}'.")
    return renamed


def existing_hashes(project: Project, hashes: Iterable[str] | None = None) -> set[str]:
    """Content hashes already stored: all of them, or those among ``hashes``."""
    with project.session() as session:
        if hashes is None:
            return set(session.scalars(select(Image.content_hash)))
        found: set[str] = set()
        for chunk in in_list_chunks(set(hashes)):
            found.update(session.scalars(select(Image.content_hash).where(Image.content_hash.in_(chunk))))
        return found


def image_count(project: Project) -> int:
    with project.session() as session:
        return session.scalar(select(func.count()).select_from(Image)) or 0


def remove_images(project: Project, ids: Iterable[int]) -> int:
    """Delete images from the project (their labels, features and predictions go with them, by the
    schema's cascades) in one write transaction; returns how many were there."""
    removed = 0
    with project.writing() as session:
        for chunk in in_list_chunks(sorted({int(i) for i in ids})):
            removed += session.execute(delete(Image).where(Image.id.in_(chunk))).rowcount or 0
    return removed


def image_ids(project: Project) -> list[int]:
    """All image ids in import order."""
    with project.session() as session:
        return list(session.scalars(select(Image.id).order_by(Image.id)))


def list_images(project: Project, ids: Iterable[int] | None = None) -> list[ImageInfo]:
    """Image facts (no bytes) in import order, for all images or the given ids."""
    query = select(Image, Label.class_id).outerjoin(Label, Label.image_id == Image.id).order_by(Image.id)
    with project.session() as session:
        if ids is None:
            results = session.execute(query).all()
        else:
            results = []
            for chunk in in_list_chunks(ids):
                results.extend(session.execute(query.where(Image.id.in_(chunk))).all())
            results.sort(key=lambda pair: pair[0].id)
        return [
            ImageInfo(
                image.id, image.original_name, image.original_path, image.source, image.width, image.height,
                image.original_format, image.imported_at, class_id, image.split, image.split_pinned,
            )
            for image, class_id in results
        ]


def read_image_bytes(project: Project, image_ids: Iterable[int]) -> dict[int, bytes]:
    """Normalized JPEG bytes (RGB, max side bounded) by image id; unknown ids are left out, and so are
    values over the size limit or unreadable (recorded in ``storage.trust_blobs.refusals``)."""
    return read_bounded_images(project, Image.data, image_ids, MAX_IMAGE_BYTES, "image", MAX_IMAGE_PIXELS)


def read_thumbnails(project: Project, image_ids: Iterable[int]) -> dict[int, bytes]:
    """Thumbnail JPEG bytes by image id; unknown, oversized and unreadable ones are left out."""
    return read_bounded_images(project, Image.thumbnail, image_ids, MAX_THUMBNAIL_BYTES, "thumbnail",
                               MAX_THUMBNAIL_PIXELS)


def project_summary(project: Project) -> ProjectSummary:
    with project.session() as session:
        images = session.scalar(select(func.count()).select_from(Image)) or 0
        labeled = session.scalar(select(func.count()).select_from(Label)) or 0
        class_rows = session.execute(
            select(ImageClass.name, func.count(Label.image_id))
            .outerjoin(Label, Label.class_id == ImageClass.id)
            .group_by(ImageClass.id)
            .order_by(ImageClass.position, ImageClass.id)
        ).tuples()
        classes = {name: count for name, count in class_rows}
        source_rows = session.execute(
            select(Image.source, func.count()).group_by(Image.source).order_by(Image.source)
        ).tuples()
        sources = {name: count for name, count in source_rows}
    return ProjectSummary(images, labeled, images - labeled, classes, sources)
