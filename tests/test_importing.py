"""Import: folders, labels from folders, sources, duplicates, normalization, batches and cancellation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from engine import importing
from engine.imaging import THUMBNAIL_SIDE, load_stored_image
from engine.importing import import_paths
from engine.jobs import JobContext
from storage import catalog
from storage.images import (
    NewImage,
    add_images,
    image_count,
    list_images,
    project_summary,
    read_image_bytes,
    read_thumbnails,
)
from storage.models import Image as ImageRow
from storage.models import Label


def write_jpeg(path: Path, size=(64, 48), seed=0, **save_options) -> Path:
    """A unique noisy JPEG (the seed makes the content, and so the hash, differ)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path, format="JPEG", **save_options)
    return path


def run_import(project, paths, **kwargs):
    return import_paths(JobContext(), project, [str(p) for p in paths], **kwargs)


def test_folders_are_walked_recursively_with_classes_from_parent_folders(project, tmp_path):
    root = tmp_path / "train"
    for seed in range(3):
        write_jpeg(root / "ants" / f"a{seed}.jpg", seed=seed)
    for seed in range(3, 5):
        write_jpeg(root / "bees" / "deeper" / f"b{seed}.jpg", seed=seed)
    (root / "ants" / "notes.txt").write_text("not an image")
    (root / "bees" / "Thumbs.db").write_bytes(b"\x00" * 10)
    (root / ".DS_Store").write_bytes(b"junk")
    write_jpeg(root / ".hidden" / "h.jpg", seed=99)

    report = run_import(project, [root], labels_from_folders=True)

    assert (report.imported, report.duplicates, report.skipped, report.failed) == (5, 0, 3, [])
    assert report.labeled == 5 and report.classes == {"ants": 3, "deeper": 2}
    summary = project_summary(project)
    assert summary.classes == {"ants": 3, "deeper": 2}
    # The class folder directly under the named folder does not become the source; "bees" does.
    assert summary.sources == {"train": 3, "bees": 2}
    with project.session() as session:
        assert set(session.scalars(select(Label.origin))) == {"import"}


def test_default_and_explicit_source_tags(project, tmp_path):
    photos = tmp_path / "photos"
    write_jpeg(photos / "cam1" / "day1" / "x.jpg", seed=1)
    write_jpeg(photos / "cam2" / "y.jpg", seed=2)
    write_jpeg(photos / "loose.jpg", seed=3)
    single = write_jpeg(tmp_path / "elsewhere" / "single.jpg", seed=4)
    run_import(project, [photos, single])
    assert project_summary(project).sources == {"cam1": 1, "cam2": 1, "elsewhere": 1, "photos": 1}

    write_jpeg(photos / "cam3" / "z.jpg", seed=5)
    run_import(project, [photos], source="field trip")
    assert project_summary(project).sources["field trip"] == 1


def test_identical_images_are_skipped_within_a_batch_and_on_reimport(project, tmp_path):
    original = write_jpeg(tmp_path / "in" / "one.jpg", seed=7)
    (tmp_path / "in" / "copy of one.jpg").write_bytes(original.read_bytes())
    write_jpeg(tmp_path / "in" / "two.jpg", seed=8)

    first = run_import(project, [tmp_path / "in"])
    assert (first.imported, first.duplicates) == (2, 1)
    again = run_import(project, [tmp_path / "in", original])
    assert (again.imported, again.duplicates, again.image_ids) == (0, 4, [])
    assert image_count(project) == 2


def test_big_images_are_downscaled_and_thumbnails_made(project, tmp_path):
    big = tmp_path / "vacation photos" / "Ærø strand 1.png"
    big.parent.mkdir()
    Image.new("RGB", (2000, 1000), (200, 30, 30)).save(big)
    report = run_import(project, [big])
    [info] = list_images(project)
    assert (info.width, info.height, info.original_format) == (1024, 512, "PNG")
    assert info.original_name == "Ærø strand 1.png" and info.original_path == str(big)
    stored = load_stored_image(read_image_bytes(project, report.image_ids)[info.id])
    assert stored.size == (1024, 512) and stored.mode == "RGB"
    assert Image.open(io.BytesIO(read_image_bytes(project, [info.id])[info.id])).format == "JPEG"
    thumbnail = Image.open(io.BytesIO(read_thumbnails(project, [info.id])[info.id]))
    assert thumbnail.format == "JPEG" and thumbnail.size == (THUMBNAIL_SIDE, THUMBNAIL_SIDE // 2)
    assert np.abs(np.asarray(thumbnail, dtype=int) - (200, 30, 30)).max() < 12


def test_small_baseline_jpeg_is_stored_unchanged_others_reencoded(project, tmp_path):
    baseline = write_jpeg(tmp_path / "baseline.jpg", seed=1, quality=80)
    progressive = write_jpeg(tmp_path / "progressive.jpg", seed=2, progressive=True)
    large = write_jpeg(tmp_path / "large.jpg", size=(1200, 900), seed=3)
    report = run_import(project, [baseline, progressive, large])
    stored = read_image_bytes(project, report.image_ids)
    by_name = {info.original_name: info for info in list_images(project)}
    assert stored[by_name["baseline.jpg"].id] == baseline.read_bytes()
    assert stored[by_name["progressive.jpg"].id] != progressive.read_bytes()
    assert (by_name["large.jpg"].width, by_name["large.jpg"].height) == (1024, 768)


def test_exif_rotated_jpeg_is_stored_upright(project, tmp_path):
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, :30] = (255, 0, 0)  # left half red
    pixels[:, 30:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)

    report = run_import(project, [path])
    [info] = list_images(project)
    assert (info.width, info.height) == (40, 60)
    upright = np.asarray(load_stored_image(read_image_bytes(project, report.image_ids)[info.id]), dtype=int)
    assert upright[5, 20, 0] > 200 and upright[5, 20, 2] < 60  # top is red (was left)
    assert upright[55, 20, 2] > 200 and upright[55, 20, 0] < 60  # bottom is blue


def test_progress_is_reported_between_batches(project, tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "BATCH_SIZE", 4)
    for seed in range(10):
        write_jpeg(tmp_path / "many" / f"{seed}.jpg", seed=seed)
    fractions = []
    report = import_paths(JobContext(lambda f, m: fractions.append(f)), project, [tmp_path / "many"])
    assert report.imported == 10
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert pytest.approx(0.4) in fractions and pytest.approx(0.8) in fractions


def test_cancelling_keeps_whole_batches_only(project, tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "BATCH_SIZE", 3)
    for seed in range(10):
        write_jpeg(tmp_path / "classes" / ("odd" if seed % 2 else "even") / f"{seed}.jpg", seed=seed)
    contexts = []

    def cancel_after_first_batch(fraction, message):
        if 0 < fraction < 1:
            contexts[0].cancel()

    context = JobContext(cancel_after_first_batch)
    contexts.append(context)

    report = import_paths(context, project, [tmp_path / "classes"], labels_from_folders=True)

    assert report.cancelled and report.imported == 3
    summary = project_summary(project)
    assert summary.images == 3 and summary.labeled == 3


def test_a_batch_that_fails_to_commit_leaves_no_part_of_it(project, tmp_path, monkeypatch):
    """Simulates a crash inside the second batch's transaction (label insert fails after the
    images were inserted): the project keeps exactly the first batch, every image labeled."""
    monkeypatch.setattr(importing, "BATCH_SIZE", 3)
    for seed in range(6):
        write_jpeg(tmp_path / "cls" / "ants" / f"{seed}.jpg", seed=seed)
    real_ensure = importing.ensure_classes
    calls = []

    def ensure_then_break(project_, names):
        calls.append(names)
        ids = real_ensure(project_, names)
        return ids if len(calls) == 1 else {name: 999_999 for name in ids}  # no such class

    monkeypatch.setattr(importing, "ensure_classes", ensure_then_break)
    with pytest.raises(Exception):
        import_paths(JobContext(), project, [tmp_path / "cls"], labels_from_folders=True)
    summary = project_summary(project)
    assert (summary.images, summary.labeled) == (3, 3)


def test_add_images_returns_existing_ids_for_known_hashes(project):
    def row(content_hash, class_id=None):
        return NewImage(content_hash, "a.jpg", "/a.jpg", "cam", 2, 2, "JPEG", b"d", b"t", class_id=class_id)

    ant = catalog.add_class(project, "ant")
    first = add_images(project, [row("h1", ant.id), row("h2")])
    second = add_images(project, [row("h2"), row("h3"), row("h3")])
    assert second[0] == first[1] and second[1] == second[2] and len(set(first + second)) == 3
    assert image_count(project) == 3
    with project.session() as session:
        assert session.scalar(select(ImageRow.source).where(ImageRow.id == first[0])) == "cam"
    assert [i.class_id for i in list_images(project, [first[0], first[1]])] == [ant.id, None]
