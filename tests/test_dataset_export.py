"""Dataset export: folder per class with safe names, and dataset.csv with labels and predictions."""

from __future__ import annotations

import csv
import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from engine.ship.dataset_export import (
    CSV_COLUMNS,
    DatasetExportError,
    class_folder_names,
    export_dataset,
    safe_name,
)
from engine.runtime.jobs import JobContext
from storage import catalog
from storage.images import NewImage, add_images
from storage.models import ModelVersion, Prediction


def _jpeg(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _new_image(name: str, color, class_id, source="cam1") -> NewImage:
    data = _jpeg(color)
    return NewImage(
        content_hash=hashlib.sha256(data + name.encode()).hexdigest(), original_name=name,
        original_path=f"/photos/{name}", source=source, width=16, height=12, original_format="JPEG",
        data=data, thumbnail=data, class_id=class_id,
    )


def test_safe_name_blocks_traversal_and_reserved_names():
    for hostile in ("../evil", "..", ".", "a/../../b", "..\\..\\x", "/etc/passwd", "C:\\Windows", "", "   "):
        name = safe_name(hostile)
        assert name and "/" not in name and "\\" not in name and name not in (".", "..")
        assert ":" not in name
    assert safe_name("CON") == "_CON"
    assert safe_name("nul.txt") == "_nul.txt"
    assert safe_name("trailing dot.") == "trailing dot"
    assert safe_name("cats") == "cats"
    assert len(safe_name("x" * 500)) <= 80


def test_folder_names_are_unique_even_case_insensitively():
    folders = class_folder_names(["Cat", "cat", "a/b", "a_b", "unlabeled"])
    assert len({name.lower() for name in folders.values()}) == 5
    assert folders["Cat"] == "Cat"
    assert folders["cat"] == "cat_2"
    assert folders["unlabeled"] != "unlabeled"


def test_export_writes_folders_and_csv(project, tmp_path):
    red = catalog.add_class(project, "red")
    evil = catalog.add_class(project, "../evil")
    ids = add_images(project, [
        _new_image("r1.jpg", (255, 0, 0), red.id),
        _new_image("r2.jpg", (250, 5, 0), red.id, source="cam2"),
        _new_image("../../e1.jpg", (0, 0, 255), evil.id),
        _new_image("u1.jpg", (0, 255, 0), None),
    ])
    catalog.set_split(project, [ids[1]], "val")
    with project.writing() as session:
        model = ModelVersion(method="logreg", backbone="b", layer="l", class_names=["red", "../evil"],
                             class_ids=[red.id, evil.id], weights=b"", is_active=True)
        session.add(model)
        session.flush()
        session.add(Prediction(model_version_id=model.id, image_id=ids[0], class_index=0, class_id=red.id,
                               probability=0.9, margin=0.8, probabilities=np.array([0.9, 0.1], np.float32).tobytes()))

    out = tmp_path / "export"
    report = export_dataset(JobContext(), project, out)
    assert report.images == 3
    assert report.per_class == {"red": 2, "../evil": 1}
    # Nothing escaped the export folder.
    assert not (tmp_path / "evil").exists()
    assert not list(tmp_path.glob("*e1*"))
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert all(not part.startswith("..") for p in written for part in p.split("/"))
    with open(out / "dataset.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == 3
    by_label = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
        file_path = out / row["file"]
        assert file_path.is_file() and file_path.resolve().is_relative_to(out.resolve())
        assert Image.open(file_path).size == (16, 12)
    assert sorted(by_label) == ["../evil", "red"]
    first = next(r for r in rows if r["file"].startswith(f"red/{ids[0]}_"))
    assert first["prediction"] == "red" and float(first["probability"]) == pytest.approx(0.9)
    assert first["source"] == "cam1" and first["split"] == "train"
    second = next(r for r in rows if r["file"].startswith(f"red/{ids[1]}_"))
    assert second["split"] == "val" and second["prediction"] == "" and second["probability"] == ""
    assert not (out / "unlabeled").exists()


def test_export_can_include_unlabeled(project, tmp_path):
    red = catalog.add_class(project, "red")
    add_images(project, [_new_image("r1.jpg", (255, 0, 0), red.id), _new_image("u1.jpg", (0, 255, 0), None)])
    report = export_dataset(JobContext(), project, tmp_path / "export", include_unlabeled=True)
    assert report.images == 2
    assert len(list((tmp_path / "export" / "unlabeled").iterdir())) == 1


def test_export_refuses_a_non_empty_folder(project, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetExportError):
        export_dataset(JobContext(), project, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_spreadsheet_formulas_in_names_are_neutralized(project, tmp_path):
    """A class or source named like a formula is written as text (CSV injection), and its folder
    name starts with neither a formula character nor '-' (no accidental command-line option)."""
    hostile = catalog.add_class(project, "=HYPERLINK(\"http://x\")")
    minus = catalog.add_class(project, "-rf")
    add_images(project, [_new_image("a.jpg", (255, 0, 0), hostile.id, source="@cam"),
                         _new_image("b.jpg", (0, 0, 255), minus.id, source="+1")])
    report = export_dataset(JobContext(), project, tmp_path / "export")
    assert all(not folder.startswith(("=", "-", "+", "@")) for folder in report.folders.values())
    with open(tmp_path / "export" / "dataset.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["label"] for r in rows) == ["'-rf", "'=HYPERLINK(\"http://x\")"]
    assert sorted(r["source"] for r in rows) == ["'+1", "'@cam"]
    assert all((tmp_path / "export" / r["file"]).is_file() for r in rows)


def test_cancelled_export_keeps_what_it_wrote_and_ends_cancelled(project, tmp_path, monkeypatch):
    import engine.ship.dataset_export as dataset_export
    from engine.runtime.jobs import JobStatus, run_job

    monkeypatch.setattr(dataset_export, "BATCH", 2)
    red = catalog.add_class(project, "red")
    add_images(project, [_new_image(f"r{i}.jpg", (255, 10 * i, 0), red.id) for i in range(5)])
    partials = []
    context = JobContext(lambda fraction, message: context.cancel() if 0 < fraction < 1 else None, partials.append)

    outcome = run_job(export_dataset, context, project, tmp_path / "export")

    assert outcome.status is JobStatus.CANCELLED and outcome.result is None
    [report] = partials
    assert report.images == 2 and report.per_class == {"red": 2}
    with open(tmp_path / "export" / "dataset.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all((tmp_path / "export" / row["file"]).is_file() for row in rows)


@pytest.mark.gui
def test_export_dialog_says_how_many_images_a_cancelled_export_wrote(project, tmp_path, qtbot, monkeypatch):
    import threading

    import engine.ship.dataset_export as dataset_export
    from gui.export_dialog import ExportDialog
    from gui.runner import QtJobRunner

    monkeypatch.setattr(dataset_export, "BATCH", 1)
    red = catalog.add_class(project, "red")
    add_images(project, [_new_image(f"r{i}.jpg", (255, 10 * i, 0), red.id) for i in range(4)])
    second_batch, reads = threading.Event(), []
    real_read = dataset_export.read_image_bytes

    def read_waiting_on_the_second_batch(project_, ids):
        reads.append(ids)
        if len(reads) == 2:
            second_batch.wait(30)
        return real_read(project_, ids)

    monkeypatch.setattr(dataset_export, "read_image_bytes", read_waiting_on_the_second_batch)
    runner = QtJobRunner()
    dialog = ExportDialog(project, runner)
    qtbot.addWidget(dialog)
    assert dialog.tabs.currentIndex() == 1  # no model yet: the labeled-images tab
    dialog.dataset_target.edit.setText(str(tmp_path / "dataset"))
    dialog.export_button.click()
    qtbot.waitUntil(lambda: len(reads) == 2, timeout=10_000)
    with qtbot.waitSignal(runner.finished, timeout=10_000):
        dialog.cancel_button.click()  # cancels; the batch in progress still finishes
        second_batch.set()
    qtbot.waitUntil(lambda: dialog.last_outcome is not None, timeout=5_000)
    assert dialog.last_outcome.status == "cancelled"
    assert f"Export cancelled after 2 images (in {(tmp_path / 'dataset').resolve()})" in dialog.status.text()
    dialog.close()
    runner.shutdown()
