"""Import: folders, labels from folders, sources, duplicates, normalization, batches and cancellation."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from engine.images import importing
from engine.images.imaging import THUMBNAIL_SIDE, load_stored_image
from engine.images.importing import LabelConflict, batch_source, import_paths
from engine.runtime.jobs import JobCancelled, JobContext, JobStatus, run_job
from storage import catalog
from storage.images import (
    NewImage,
    add_images,
    image_count,
    list_images,
    project_summary,
    read_image_bytes,
    read_thumbnails,
    rename_source,
)
from storage.errors import ProjectError
from storage.models import Image as ImageRow
from storage.models import Label


def write_jpeg(path: Path, size=(64, 48), seed=0, **save_options) -> Path:
    """A unique noisy JPEG (the seed makes the content, and so the hash, differ)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path, format="JPEG", **save_options)
    return path


IMPORTED_AT = dt.datetime(2026, 12, 1, 21, 40)


def run_import(project, paths, **kwargs):
    return import_paths(JobContext(), project, [str(p) for p in paths], imported_at=IMPORTED_AT, **kwargs)


def batch(folder: str) -> str:
    return f"import 2026-12-01 21:40 (folder '{folder}')"


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
    assert summary.sources == {batch("train"): 3, batch("train/bees"): 2}
    with project.session() as session:
        assert set(session.scalars(select(Label.origin))) == {"import"}


def test_default_and_explicit_source_tags(project, tmp_path):
    photos = tmp_path / "photos"
    write_jpeg(photos / "cam1" / "day1" / "x.jpg", seed=1)
    write_jpeg(photos / "cam2" / "y.jpg", seed=2)
    write_jpeg(photos / "loose.jpg", seed=3)
    single = write_jpeg(tmp_path / "elsewhere" / "single.jpg", seed=4)
    run_import(project, [photos, single])
    assert project_summary(project).sources == {batch("photos/cam1"): 1, batch("photos/cam2"): 1,
                                                batch("elsewhere"): 1, batch("photos"): 1}
    assert batch_source("photos", IMPORTED_AT) == batch("photos")

    write_jpeg(photos / "cam3" / "z.jpg", seed=5)
    run_import(project, [photos], source="field trip")
    assert project_summary(project).sources["field trip"] == 1


def test_sources_read_as_imports_not_classes_and_can_be_renamed(project, tmp_path):
    """A folder of ants and bees imported without folder labels: the sources say which import and
    folder they came from (never a bare "ants"), and the user names them what they are."""
    for seed in range(2):
        write_jpeg(tmp_path / "train" / "ants" / f"a{seed}.jpg", seed=seed)
    write_jpeg(tmp_path / "train" / "bees" / "b.jpg", seed=5)
    import_paths(JobContext(), project, [str(tmp_path / "train")])  # stamped with the time of the import
    sources = project_summary(project).sources
    class_names = {c.name for c in catalog.list_classes(project)} | {"ants", "bees"}
    assert len(sources) == 2 and not set(sources) & class_names
    assert all(name.startswith("import ") and "(folder 'train/" in name for name in sources)

    ants_source = next(name for name in sources if "ants" in name)
    assert rename_source(project, ants_source, "  microscope   2 ") == 2
    assert project_summary(project).sources["microscope 2"] == 2
    bees_source = next(name for name in project_summary(project).sources if "bees" in name)
    assert rename_source(project, bees_source, "microscope 2") == 1  # an existing name: they become one
    assert project_summary(project).sources == {"microscope 2": 3}
    with pytest.raises(ProjectError, match="No source named 'gone'"):
        rename_source(project, "gone", "x")
    with pytest.raises(ProjectError, match="cannot be empty"):
        rename_source(project, "microscope 2", "   ")


def test_reimporting_with_folder_labels_labels_the_duplicates_and_reports_conflicts(project, tmp_path):
    train = tmp_path / "train"
    for seed in range(3):
        write_jpeg(train / "ants" / f"a{seed}.jpg", seed=seed)
    for seed in range(3, 5):
        write_jpeg(train / "bees" / f"b{seed}.jpg", seed=seed)
    first = run_import(project, [train])
    assert (first.imported, first.labeled) == (5, 0)
    bees = catalog.add_class(project, "bees")
    by_name = {info.original_name: info.id for info in list_images(project)}
    catalog.set_labels(project, [by_name["a0.jpg"]], bees.id)  # the user labeled one ant "bees"
    catalog.set_labels(project, [by_name["b3.jpg"]], bees.id)  # and one bee rightly

    again = run_import(project, [train], labels_from_folders=True)

    assert (again.imported, again.duplicates) == (0, 5)
    assert again.labeled_duplicates == 3 and again.labeled == 3 and again.classes == {"ants": 2, "bees": 1}
    assert again.conflicts == [LabelConflict(str(train / "ants" / "a0.jpg"), "bees", "ants")]
    assert "3 labeled in 2 classes (3 of them duplicates that had no label)" in again.summary()
    assert "1 duplicates keep another label" in again.summary()
    assert again.to_dict()["conflicts"] == [{"path": str(train / "ants" / "a0.jpg"), "label": "bees",
                                             "folder_label": "ants"}]
    labels = {info.original_name: info.class_id for info in list_images(project)}
    ants = catalog.find_class(project, "ants")
    assert labels == {"a0.jpg": bees.id, "a1.jpg": ants.id, "a2.jpg": ants.id, "b3.jpg": bees.id, "b4.jpg": bees.id}
    with project.session() as session:
        origins = dict(session.execute(select(Label.image_id, Label.origin)).all())
    assert origins[by_name["a1.jpg"]] == "import" and origins[by_name["b3.jpg"]] == "manual"

    third = run_import(project, [train], labels_from_folders=True)  # nothing left to label
    assert (third.labeled_duplicates, third.labeled, len(third.conflicts)) == (0, 0, 1)


def test_copies_in_two_class_folders_are_a_conflict_within_one_import(project, tmp_path):
    original = write_jpeg(tmp_path / "sorted" / "ants" / "x.jpg", seed=1)
    (tmp_path / "sorted" / "bees").mkdir()
    (tmp_path / "sorted" / "bees" / "x.jpg").write_bytes(original.read_bytes())
    report = run_import(project, [tmp_path / "sorted"], labels_from_folders=True)
    assert (report.imported, report.duplicates, report.labeled_duplicates) == (1, 1, 0)
    assert report.conflicts == [LabelConflict(str(tmp_path / "sorted" / "bees" / "x.jpg"), "ants", "bees")]


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
    """A cancelled import ends CANCELLED (JobCancelled), never DONE, and hands over what it committed
    as its partial result."""
    monkeypatch.setattr(importing, "BATCH_SIZE", 3)
    for seed in range(10):
        write_jpeg(tmp_path / "classes" / ("odd" if seed % 2 else "even") / f"{seed}.jpg", seed=seed)
    contexts, partials = [], []

    def cancel_after_first_batch(fraction, message):
        if 0 < fraction < 1:
            contexts[0].cancel()

    context = JobContext(cancel_after_first_batch, partials.append)
    contexts.append(context)

    outcome = run_job(import_paths, context, project, [tmp_path / "classes"], labels_from_folders=True)

    assert outcome.status is JobStatus.CANCELLED and outcome.result is None
    [report] = partials
    assert report.imported == 3 and report.labeled == 3 and sum(report.classes.values()) == 3
    summary = project_summary(project)
    assert summary.images == 3 and summary.labeled == 3
    with pytest.raises(JobCancelled):  # called directly, the job raises
        import_paths(context, project, [tmp_path / "classes"], labels_from_folders=True)


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


@pytest.mark.gui
def test_import_dialog_reports_what_a_cancelled_import_kept(project, tmp_path, qtbot, monkeypatch):
    import threading

    from gui.import_dialog import ImportDialog
    from gui.runner import QtJobRunner

    monkeypatch.setattr(importing, "BATCH_SIZE", 2)
    for seed in range(6):
        write_jpeg(tmp_path / "many" / f"{seed}.jpg", seed=seed)
    second_batch, commits = threading.Event(), []
    real_commit = importing._commit_batch

    def commit_waiting_on_the_second_batch(*args):
        commits.append(1)
        if len(commits) == 2:
            second_batch.wait(30)
        real_commit(*args)

    monkeypatch.setattr(importing, "_commit_batch", commit_waiting_on_the_second_batch)
    runner = QtJobRunner()
    dialog = ImportDialog(project, runner, [str(tmp_path / "many")])
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.finished_import, timeout=20_000) as finished:
        assert dialog.start()
        qtbot.waitUntil(lambda: len(commits) == 2, timeout=10_000)
        dialog.cancel()  # the batch being written still commits
        second_batch.set()
    report = finished.args[0]
    assert report is dialog.report and report.imported == 4
    assert "Cancelled." in dialog.status.text() and "4 images imported" in dialog.status.text()
    assert image_count(project) == 4
    runner.shutdown()
