"""Untrusted files: projects, weights files and export bundles crafted to run code do nothing harmful.

Every payload below, if unpickled, writes a marker file; a control test proves each payload is live
(plain ``pickle.loads`` does create the marker), so "no marker" really means "never unpickled".
"""

from __future__ import annotations

import io
import json
import pickle
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.proof import REPO_ROOT

PREDICT_SCRIPT = REPO_ROOT / "engine" / "ship" / "bundle_template" / "predict.py"
SQL_NAMES = [
    "x'); DROP TABLE labels; --",
    'ant"; DELETE FROM images WHERE "1"="1',
    "bee' OR '1'='1",
    "Robert'); DROP TABLE classes;--",
    "%_\\ ; SELECT * FROM sqlite_master",
]
TABLES = {"images", "classes", "labels", "feature_sets", "features", "model_versions", "training_runs",
          "predictions", "project_meta", "alembic_version"}


class _Payload:
    """Unpickling this runs exec(), which writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _pickle_payloads(marker: Path) -> dict[str, bytes]:
    import torch

    buffer = io.BytesIO()
    torch.save({"state_dict": _Payload(marker)}, buffer)  # torch's zip format, payload in data.pkl
    return {
        "raw-pickle": pickle.dumps(_Payload(marker), protocol=2),
        "pickle-protocol-4": pickle.dumps({"weight": _Payload(marker)}, protocol=4),
        "torch-zip": buffer.getvalue(),
    }


def _assert_clear(message: str) -> None:
    assert message.strip()
    assert "\n" not in message and "\x1b" not in message, message
    assert "weights_only" not in message, "never advise the user to turn off safe loading"
    assert len(message) < 400, message


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a payload ran: the marker file exists"


def test_payloads_are_live_so_no_marker_means_never_unpickled(tmp_path):
    import torch

    for name, blob in _pickle_payloads(tmp_path / "control").items():
        control = tmp_path / "control"
        if name == "torch-zip":
            torch.load(io.BytesIO(blob), weights_only=False)  # the unsafe way, on purpose
        else:
            pickle.loads(blob)
        assert control.exists(), name
        control.unlink()


# --- weights files the user picks, or finds in the torch hub cache ------------------------------


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    import torch

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_pickle_weights_file_picked_by_the_user_is_refused_safely(tmp_path, marker, hub_dir):
    from engine.features.backbones import BackboneUnavailable
    from engine.torch.networks import install_weights_file

    for name, blob in _pickle_payloads(marker).items():
        source = tmp_path / f"{name}.pth"
        source.write_bytes(blob)
        with pytest.raises(BackboneUnavailable):
            install_weights_file("resnet18", source)
        assert not marker.exists(), name
    installed = list((hub_dir / "checkpoints").glob("*.pth")) if (hub_dir / "checkpoints").exists() else []
    assert installed == [], "a refused file must not be installed"


def test_pickle_in_the_hub_cache_is_refused_safely(marker, hub_dir):
    from engine.features.backbones import BackboneUnavailable, get_backbone
    from engine.torch.networks import load_backbone

    spec = get_backbone("resnet18")
    (hub_dir / "checkpoints").mkdir(parents=True)
    for name, blob in _pickle_payloads(marker).items():
        for file_name in ("resnet18-f37072fd.pth",):
            (hub_dir / "checkpoints" / file_name).write_bytes(blob)
        assert spec.available
        with pytest.raises(BackboneUnavailable):
            load_backbone(spec)
        assert not marker.exists(), name


def test_refused_weights_file_message_is_one_clear_line(tmp_path, marker, hub_dir):
    from engine.features.backbones import BackboneUnavailable
    from engine.torch.networks import install_weights_file

    for name, blob in _pickle_payloads(marker).items():
        source = tmp_path / f"{name}.pth"
        source.write_bytes(blob)
        with pytest.raises(BackboneUnavailable) as caught:
            install_weights_file("resnet18", source)
        _assert_clear(str(caught.value))


# --- a project whose model_versions.weights holds a pickle ---------------------------------------


def _image_row_project(path: Path):
    from storage import catalog
    from storage.images import NewImage, add_images
    from storage.project import create_project

    project = create_project(path)
    ant = catalog.add_class(project, "ant").id
    bee = catalog.add_class(project, "bee").id
    rows = []
    rng = np.random.default_rng(0)
    for index in range(6):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        rows.append(NewImage(f"hash{index}", f"{index}.jpg", f"/x/{index}.jpg", "cam", 32, 32, "JPEG",
                             buffer.getvalue(), buffer.getvalue(), ant if index % 2 else bee))
    add_images(project, rows)
    return project, [ant, bee]


def _poison_model(project, class_ids, weights: bytes) -> int:
    from storage.modelstore import NewModel, save_model_version

    return save_model_version(project, NewModel(
        method="logreg", backbone="efficientnet_lite0", layer="pooled", class_names=["bee", "ant"],
        class_ids=class_ids[::-1], weights=weights,
    ))


def test_pickle_in_stored_model_weights_is_refused_by_prediction(tmp_path, marker):
    import engine.models.predicting as predicting
    from engine.runtime.jobs import JobContext, run_job

    project, class_ids = _image_row_project(tmp_path / "evil.sortlab")
    try:
        for name, blob in _pickle_payloads(marker).items():
            version = _poison_model(project, class_ids, blob)
            outcome = run_job(predicting.refresh_predictions, JobContext(), project, version)
            assert outcome.status == "failed", f"{name}: poisoned weights were accepted"
            _assert_clear(outcome.error)
            assert not marker.exists(), name
            image = tmp_path / "probe.png"
            Image.new("RGB", (40, 40), "red").save(image)
            outcome = run_job(predicting.predict_files, JobContext(), project, [image], version)
            assert outcome.status == "failed", f"{name}: poisoned weights predicted files"
            _assert_clear(outcome.error)
            assert not marker.exists(), name
    finally:
        project.close()


# --- export bundles (zip) read by the bundled predict.py ----------------------------------------


def _bundle_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return path


def _load_predict_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sortlab_bundle_predict", PREDICT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A model.json that passes predict.py's checks, so a poisoned model.onnx really reaches onnxruntime.
MODEL_JSON = json.dumps({"classes": ["ant", "bee"], "preprocessing": {
    "input_size": [224, 224], "resize": "shorter_side_then_center_crop", "resize_shorter_side": 256,
    "interpolation": "bilinear", "color_order": "RGB", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
}}).encode()


@pytest.mark.parametrize("evil_name", [
    "../model.json", "../../../tmp/sortlab-escape/model.onnx", "/abs/model.onnx", "a/../../model.json",
    "bundle/../../escaped.txt", "C:/model.json", "..\\model.json",
])
def test_bundle_zip_with_escaping_member_names_is_refused(tmp_path, evil_name):
    predict = _load_predict_module()
    bundle = _bundle_zip(tmp_path / "evil.zip", {"model.onnx": b"x", "model.json": MODEL_JSON, evil_name: b"evil"})
    before = set(tmp_path.parent.rglob("*"))
    with pytest.raises(predict.BundleError, match="Unsafe file name"):
        predict.read_bundle(bundle)
    assert set(tmp_path.parent.rglob("*")) == before, "reading a bundle must not write files"


def test_predict_script_refuses_an_escaping_bundle_with_a_clear_error(tmp_path):
    bundle = _bundle_zip(tmp_path / "evil.zip", {"model.onnx": b"x", "model.json": MODEL_JSON,
                                                 "../../escaped.txt": b"evil"})
    before = set(tmp_path.parent.rglob("*"))
    result = subprocess.run([sys.executable, str(PREDICT_SCRIPT), "--bundle", str(bundle), str(tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert result.returncode == 2, result
    assert "Unsafe file name" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert set(tmp_path.parent.rglob("*")) == before, "reading a bundle must not write files"


def _run_predict_on_pickle_bundles(tmp_path, marker):
    image = tmp_path / "photo.png"
    Image.new("RGB", (50, 40), "blue").save(image)
    results = {}
    for name, blob in _pickle_payloads(marker).items():
        bundle = _bundle_zip(tmp_path / f"{name}.zip", {"model.onnx": blob, "model.json": MODEL_JSON})
        results[name] = subprocess.run([sys.executable, str(PREDICT_SCRIPT), "--bundle", str(bundle), str(image)],
                                       capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
        assert not marker.exists(), name
        assert results[name].returncode != 0, f"{name}: a pickle was accepted as a model"
    return results


def test_bundle_with_a_pickle_as_its_model_runs_nothing(tmp_path, marker):
    _run_predict_on_pickle_bundles(tmp_path, marker)


def test_bundle_with_a_pickle_as_its_model_fails_with_a_clear_error(tmp_path, marker):
    for name, result in _run_predict_on_pickle_bundles(tmp_path, marker).items():
        assert result.returncode == 2, (name, result.stderr[-500:])
        assert "predict.py: error:" in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert "model.onnx is not a valid ONNX model" in result.stderr, "the payload must reach onnxruntime"


# --- SQL in names ------------------------------------------------------------------------------------


def _tables(db_path: Path) -> set[str]:
    connection = sqlite3.connect(str(db_path))
    try:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return names
    finally:
        connection.close()


def test_sql_in_class_names_is_stored_and_shown_verbatim(project):
    from storage import catalog
    from storage.images import project_summary

    tables_before = _tables(project.path)
    assert TABLES <= tables_before
    created = [catalog.add_class(project, name) for name in SQL_NAMES]
    assert [c.name for c in catalog.list_classes(project)] == SQL_NAMES
    assert catalog.find_class(project, SQL_NAMES[0]).id == created[0].id
    catalog.rename_class(project, created[1].id, SQL_NAMES[1] + " renamed")
    assert catalog.find_class(project, SQL_NAMES[1] + " renamed").id == created[1].id
    assert list(project_summary(project).classes) == [SQL_NAMES[0], SQL_NAMES[1] + " renamed", *SQL_NAMES[2:]]
    assert _tables(project.path) == tables_before


def test_sql_in_folder_names_imports_verbatim_classes(project, tmp_path):
    from engine.images.importing import import_paths
    from engine.runtime.jobs import JobContext
    from storage import catalog
    from storage.images import image_count

    folder_names = [name.replace("/", "_").replace("\\", "_") for name in SQL_NAMES]
    rng = np.random.default_rng(1)
    for index, name in enumerate(folder_names):
        (tmp_path / "root" / name).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "root" / name / f"{index}.png")
    report = import_paths(JobContext(), project, [tmp_path / "root"], labels_from_folders=True)
    assert report.imported == len(folder_names) and not report.failed
    assert sorted(c.name for c in catalog.list_classes(project)) == sorted(" ".join(n.split()) for n in folder_names)
    assert image_count(project) == len(folder_names)
    assert TABLES <= _tables(project.path)


def test_dataset_export_of_hostile_class_names_stays_inside_the_folder(project, tmp_path):
    import engine.ship.dataset_export as export
    from engine.runtime.jobs import JobContext
    from storage import catalog
    from storage.images import NewImage, add_images

    hostile = ["../../escaped", "/etc/cron.d/evil", "..", "CON", "a/../../b", *SQL_NAMES]
    rows = []
    rng = np.random.default_rng(2)
    for index, name in enumerate(hostile):
        class_id = catalog.add_class(project, name).id
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        rows.append(NewImage(f"h{index}", f"../../{index}.jpg", f"/x/{index}.jpg", "cam", 16, 16, "JPEG",
                             buffer.getvalue(), buffer.getvalue(), class_id))
    add_images(project, rows)
    out = tmp_path / "deep" / "out"
    before = {p for p in tmp_path.rglob("*") if not p.is_relative_to(out)}
    export.export_dataset(JobContext(), project, out)
    after = {p for p in tmp_path.rglob("*") if not p.is_relative_to(out)}
    assert after - before == {tmp_path / "deep"}, "the export wrote outside its folder"
    written = [p for p in out.rglob("*.jpg")]
    assert len(written) == len(hostile)
    assert all(p.resolve().is_relative_to(out.resolve()) for p in written)
    csv_labels = (out / "dataset.csv").read_text(encoding="utf-8")
    for name in SQL_NAMES:
        assert name.replace('"', '""') in csv_labels, "labels are written verbatim in the CSV"


# --- engine.ship.export: poisoned weights -------------------------------------------------------------


def test_export_of_a_model_whose_weights_are_a_pickle_runs_nothing(tmp_path, marker):
    import engine.ship.export as export
    from engine.runtime.jobs import JobContext, run_job

    project, class_ids = _image_row_project(tmp_path / "evil.sortlab")
    try:
        payloads = _pickle_payloads(marker)
        version = _poison_model(project, class_ids, payloads["raw-pickle"])
        outcome = run_job(export.export_bundle, JobContext(), project, tmp_path / "out", model_version=version)
        assert outcome.status == "failed", "poisoned weights were exported"
        assert outcome.error.strip() and "\n" not in outcome.error
        assert not marker.exists()
        assert not list(tmp_path.glob("out*/model.onnx")), "nothing may be exported from poisoned weights"
    finally:
        project.close()


def test_stored_weights_that_are_a_pickle_never_unpickle(marker):
    from engine.models.classifiers import LinearPredictor

    for name, blob in _pickle_payloads(marker).items():
        with pytest.raises(Exception):
            LinearPredictor.from_bytes(blob)
        assert not marker.exists(), name


def test_stored_weights_that_are_not_safetensors_give_a_value_error(marker):
    from engine.models.classifiers import LinearPredictor

    for name, blob in {**_pickle_payloads(marker), "empty": b"", "junk": b"\xff" * 64}.items():
        with pytest.raises(ValueError):
            LinearPredictor.from_bytes(blob)
