"""Model export: one ONNX network, a standalone predict.py that matches Sortlab, a loud export check,
and zips that cannot write outside their folder."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine.features.backbones import DEFAULT_BACKBONE, get_backbone
from engine.models.classifiers import LinearSVMClassifier, LogisticClassifier

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "engine" / "ship" / "bundle_template" / "predict.py"
STANDALONE_PACKAGES = ("onnxruntime", "numpy", "numpy.libs", "PIL", "pillow.libs")


# ------------------------------------------------------------------------------------ helpers


def _shape_image(path: Path, color, shape: str, rng: np.random.Generator, mode: str = "RGB") -> Path:
    width, height = int(rng.integers(90, 170)), int(rng.integers(90, 170))
    background = tuple(int(v) for v in rng.integers(200, 256, 3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    side = int(min(width, height) * rng.uniform(0.5, 0.8))
    x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
    (draw.ellipse if shape == "circle" else draw.rectangle)([x, y, x + side, y + side], fill=color)
    if mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(Image.new("L", image.size, 255).point(lambda v: v if rng.random() > 0.3 else 0))
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return path


def _make_training_folders(root: Path) -> None:
    rng = np.random.default_rng(0)
    for name, color, shape in (("red circle", (220, 30, 30), "circle"), ("blue square", (30, 60, 220), "square")):
        (root / name).mkdir(parents=True)
        for index in range(14):
            suffix = "jpg" if index % 2 else "png"
            _shape_image(root / name / f"{index:02d}.{suffix}", color, shape, rng)


def _make_prediction_files(root: Path) -> list[Path]:
    """Clear, ambiguous and awkward files (EXIF-rotated, transparent, grayscale, 16-bit, not an image)."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    files = [
        _shape_image(root / "red.jpg", (220, 30, 30), "circle", rng),
        _shape_image(root / "blue.png", (30, 60, 220), "square", rng),
        _shape_image(root / "purple_circle.png", (140, 40, 150), "circle", rng),
        _shape_image(root / "purple_square.jpg", (120, 50, 170), "square", rng),
        _shape_image(root / "red_square.png", (220, 30, 30), "square", rng),
        _shape_image(root / "transparent.png", (220, 30, 30), "circle", rng, mode="RGBA"),
        _shape_image(root / "gray.png", (30, 60, 220), "square", rng, mode="L"),
    ]
    rotated = Image.new("RGB", (160, 90), (240, 240, 240))
    ImageDraw.Draw(rotated).rectangle([0, 0, 80, 90], fill=(30, 60, 220))
    ImageDraw.Draw(rotated).ellipse([90, 10, 150, 70], fill=(220, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rotated.save(root / "rotated.jpg", exif=exif.tobytes())
    files.append(root / "rotated.jpg")
    large = Image.new("RGB", (820, 640), (235, 235, 225))  # big enough for JPEG draft (DCT) scaling
    ImageDraw.Draw(large).ellipse([200, 120, 620, 540], fill=(150, 40, 140))
    large.save(root / "large.jpg", quality=92)
    files.append(root / "large.jpg")
    wide = (np.linspace(0, 65535, 120 * 100).reshape(100, 120)).astype(np.uint16)
    Image.fromarray(wide).save(root / "sixteen_bit.png")
    files.append(root / "sixteen_bit.png")
    (root / "notes.jpg").write_bytes(b"this is not an image")
    files.append(root / "notes.jpg")
    return files


def _standalone_python(tmp_path: Path) -> list[str]:
    """A command prefix for a Python that can import only onnxruntime, numpy and Pillow."""
    site = Path(sysconfig.get_paths()["purelib"])
    isolated = tmp_path / "only_three_packages"
    isolated.mkdir(exist_ok=True)
    for name in STANDALONE_PACKAGES:
        if (site / name).exists() and not (isolated / name).exists():
            (isolated / name).symlink_to(site / name)
    bootstrap = (
        "import runpy, sys; sys.path[:0] = [sys.argv.pop(1)]; script = sys.argv[1]; sys.argv = sys.argv[1:]; "
        "runpy.run_path(script, run_name='__main__')"
    )
    return [sys.executable, "-I", "-S", "-c", bootstrap, str(isolated)]


def _run_standalone(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_standalone_python(tmp_path) + list(args), capture_output=True, text=True, timeout=120)


def _csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def _sortlab_cli(args: list[str], capsys) -> tuple[int, str, str]:
    from main import run_cli

    capsys.readouterr()
    code = run_cli(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _load_template():
    spec = importlib.util.spec_from_file_location("bundle_predict", TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------ the head


HEADS = [(LogisticClassifier, 2), (LogisticClassifier, 3), (LinearSVMClassifier, 2), (LinearSVMClassifier, 4)]
# Every way a head can see its features: unit-length rows as they are, unit-length rows standardized,
# and (models saved before unit length existed) the raw features standardized.
NORMALIZATIONS = [dict(unit_length=True, standardize=False), dict(unit_length=True, standardize=True),
                  dict(unit_length=False, standardize=True)]


def _head_data(n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n_classes)
    centers = rng.normal(0, 3, size=(n_classes, 12))
    y = np.repeat(np.arange(1, n_classes + 1) * 10, 12)
    X = (centers[(y // 10) - 1] + rng.normal(0, 2.5, size=(len(y), 12)) + 5).astype(np.float32)
    return X, y


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("classifier, n_classes", HEADS)
def test_torch_head_computes_what_sortlab_computes(classifier, n_classes, normalization):
    import torch

    from engine.torch.torch_export import LinearProbabilityHead

    X, y = _head_data(n_classes)
    predictor = classifier(C=0.5, **normalization).fit(X, y).predictor_
    assert predictor.scales_rows == normalization["unit_length"]
    head = LinearProbabilityHead(predictor).eval()
    with torch.no_grad():
        got = head(torch.from_numpy(X)).numpy()
    expected = predictor.predict_proba(X)
    assert got.shape == expected.shape == (len(y), n_classes)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert np.array_equal(got.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("classifier, n_classes", HEADS)
def test_composed_onnx_head_computes_what_sortlab_computes(classifier, n_classes, normalization):
    """The torch-free export (onnx_compose) on a stand-in feature graph that passes the pixels through."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from engine.ship.onnx_compose import compose

    X, y = _head_data(n_classes)
    predictor = classifier(C=0.5, **normalization).fit(X, y).predictor_
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["pixels"], ["features"], axis=1)], "stand_in",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 2, 2])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 12])],
    )
    backbone = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    session = ort.InferenceSession(compose(backbone, predictor), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": X.reshape(-1, 3, 2, 2)})[0]
    expected = predictor.predict_proba(X)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert np.array_equal(got.argmax(1), expected.argmax(1))


# ------------------------------------------------------------------------------------ zip safety


def _evil_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("bundle/model.json", json.dumps({"classes": ["a"]}))
        archive.writestr("bundle/model.onnx", b"not a model")
        archive.writestr("../evil", b"escaped")
        archive.writestr("bundle/../../evil2", b"escaped")
    return path


def test_crafted_zip_member_names_are_refused_by_the_bundled_predict_script():
    """Sortlab itself never reads zips; the bundle's predict.py does (``--bundle x.zip``)."""
    module = _load_template()
    for name in ("/etc/passwd", "C:/x", "a\\..\\b", "a/./../../b", "../evil", "bundle/../../evil2", ""):
        with pytest.raises(module.BundleError, match="Unsafe file name"):
            module.check_member_name(name)
    assert module.check_member_name("bundle/model.onnx") == "bundle/model.onnx"


def test_standalone_predict_refuses_a_crafted_zip(tmp_path):
    evil = _evil_zip(tmp_path / "evil.zip")
    module = _load_template()
    with pytest.raises(module.BundleError):
        module.read_bundle(evil)
    run = _run_standalone(tmp_path, str(TEMPLATE), "--bundle", str(evil), str(tmp_path))
    assert run.returncode == 2
    assert "Unsafe file name" in run.stderr
    assert not (tmp_path.parent / "evil").exists()


def test_standalone_python_cannot_import_torch(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import importlib.util, onnxruntime, numpy, PIL\n"
        "print([m for m in ('torch', 'sklearn', 'scipy', 'engine', 'storage', 'sqlalchemy') "
        "if importlib.util.find_spec(m) is not None])\n"
    )
    run = _run_standalone(tmp_path, str(probe))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project of 28 generated images in two classes with a trained logistic-regression model."""
    from engine.images.importing import import_paths
    from engine.runtime.jobs import JobContext
    from engine.models.training import train_model
    from storage.project import create_project

    root = tmp_path_factory.mktemp("export")
    previous = os.environ.get("SORTLAB_CACHE_DIR")
    os.environ["SORTLAB_CACHE_DIR"] = str(root / "cache")
    _make_training_folders(root / "images")
    project = create_project(root / "shapes.sortlab")
    report = import_paths(JobContext(), project, [root / "images"], labels_from_folders=True)
    assert report.imported == 28
    result = train_model(JobContext(), project, "logreg")
    project.close()
    yield root, root / "shapes.sortlab", result
    if previous is None:
        os.environ.pop("SORTLAB_CACHE_DIR", None)
    else:
        os.environ["SORTLAB_CACHE_DIR"] = previous


def test_exported_bundle_reproduces_sortlab_predictions(trained, tmp_path, capsys):
    root, project_path, result = trained
    out = tmp_path / "bundle"
    code, stdout, stderr = _sortlab_cli(["export", str(project_path), str(out), "--json"], capsys)
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["verification"]["passed"] and report["verification"]["compared"] > 0
    assert report["verification"]["agreement"] >= 0.995
    # Legitimate exports differ from Sortlab by float32 rounding only, far below the 1e-3 allowed.
    assert report["verification"]["max_probability_difference"] < 1e-4
    assert {"model.onnx", "model.json", "predict.py", "README.md", "linear_head.npz"} <= set(os.listdir(out))

    from storage.project import app_version as sortlab_version
    from storage.modelstore import get_model
    from storage.project import open_project

    with open_project(project_path) as project:
        info = get_model(project, result.model_version)
    description = json.loads((out / "model.json").read_text())
    # Output column i is class i of the model version, exactly (import creates classes in folder order).
    assert description["classes"] == list(info.class_names) == ["blue square", "red circle"]
    assert description["model_version"] == result.model_version
    assert description["training"]["method"] == "logreg"
    assert description["sortlab_version"] == sortlab_version() and description["sortlab_version"]
    assert description["backbone"]["name"] == info.backbone and description["backbone"]["layer"] == info.layer
    prep = description["preprocessing"]
    spec = get_backbone(info.backbone)  # the default network: Lite1, 240 px crops of 272 px
    assert info.backbone == DEFAULT_BACKBONE and (spec.input_size, spec.resize_size) == (240, 272)
    assert prep["input_size"] == [240, 240] and prep["resize_shorter_side"] == 272
    assert prep["color_order"] == "RGB" and prep["exif_transpose"] is True
    assert description["metrics"]["accuracy"] == result.metrics.accuracy
    per_class = description["metrics"]["per_class"]
    assert set(per_class) == {"red circle", "blue square"}
    assert all({"precision", "recall", "f1"} <= set(numbers) for numbers in per_class.values())
    card = (out / "README.md").read_text()
    assert "red circle" in card and "blue square" in card and "python predict.py" in card
    assert f"**{result.metrics.accuracy * 100:.1f}%**" in card
    # The recipe Quick used, and why (28 labeled images: too few to compare recipes, engine.models.recipes).
    assert f"then {info.params['recipe']}." in card and info.params["recipe"].startswith("logistic regression")
    assert f"- Why this recipe: {info.params['recipe_reason']}" in card and "the default" in info.params["recipe_reason"]
    assert "on 28 labeled images" in card
    assert "| Class | Labeled images | Precision | Recall | F1 |" in card
    for name in ("red circle", "blue square"):
        recall = f"{per_class[name]['recall'] * 100:.1f}%"
        assert any(line.startswith(f"| {name} | 14 | ") and recall in line for line in card.splitlines()), card
    head = np.load(out / "linear_head.npz", allow_pickle=False)
    assert head["weight"].shape == (1, 1280) and list(head["classes"]) == description["classes"]

    files = _make_prediction_files(tmp_path / "incoming")
    code, sortlab_csv, stderr = _sortlab_cli(["predict", str(project_path), str(tmp_path / "incoming"), "--csv"],
                                             capsys)
    sortlab_rows = _csv_rows(sortlab_csv)
    standalone = _run_standalone(tmp_path, str(out / "predict.py"), str(tmp_path / "incoming"), "--csv")
    assert standalone.returncode == 0, standalone.stderr
    exported_rows = _csv_rows(standalone.stdout)

    assert exported_rows[0] == sortlab_rows[0] == ["path", "class", "probability"]
    assert len(sortlab_rows) - 1 == len(files) - 1  # every image but the fake one
    assert [r[0] for r in exported_rows[1:]] == [r[0] for r in sortlab_rows[1:]]
    assert [r[1] for r in exported_rows[1:]] == [r[1] for r in sortlab_rows[1:]]
    probabilities = np.array([[float(a[2]), float(b[2])] for a, b in zip(exported_rows[1:], sortlab_rows[1:])])
    np.testing.assert_allclose(probabilities[:, 0], probabilities[:, 1], atol=1e-4)
    assert "notes.jpg" in standalone.stderr
    # The ambiguous files are not all trivially certain: the probabilities carry information.
    assert probabilities[:, 1].min() < 0.99

    zipped = tmp_path / "bundle_zip"
    code, stdout, stderr = _sortlab_cli(["export", str(project_path), str(zipped), "--zip"], capsys)
    assert code == 0, stderr
    zip_path = tmp_path / "bundle_zip.zip"
    assert zip_path.is_file() and not zipped.exists()
    from_zip = _run_standalone(tmp_path, str(TEMPLATE), "--bundle", str(zip_path), str(files[0]), "--csv")
    assert from_zip.returncode == 0, from_zip.stderr
    assert _csv_rows(from_zip.stdout)[1] == next(row for row in exported_rows if row[0] == str(files[0]))


def test_export_that_disagrees_with_sortlab_fails_loudly(trained, tmp_path, capsys, monkeypatch):
    import torch

    import engine.ship.export as export_module

    real_build = export_module.build_network

    class SwapClasses(torch.nn.Module):
        def forward(self, probabilities):
            return probabilities.flip(1)

    def broken_build(project, info):
        return torch.nn.Sequential(real_build(project, info), SwapClasses()).eval()

    monkeypatch.setattr(export_module, "build_network", broken_build)
    _root, project_path, _result = trained
    out = tmp_path / "broken"
    code, stdout, stderr = _sortlab_cli(["export", str(project_path), str(out)], capsys)
    assert code == 3
    assert "Export check failed" in stderr and "99.5%" in stderr
    assert not out.exists()
    failed = tmp_path / "broken-FAILED"
    assert (failed / "EXPORT_FAILED.txt").read_text().startswith("This export FAILED")


def test_the_dialog_tells_a_failed_export_check_in_plain_words(trained, tmp_path, qtbot, monkeypatch):
    import torch

    import engine.ship.export as export_module
    from gui.export_dialog import ExportDialog
    from gui.runner import QtJobRunner
    from storage.project import open_project

    real_build = export_module.build_network

    class SwapClasses(torch.nn.Module):
        def forward(self, probabilities):
            return probabilities.flip(1)

    monkeypatch.setattr(export_module, "build_network",
                        lambda project, info: torch.nn.Sequential(real_build(project, info), SwapClasses()).eval())
    _root, project_path, _result = trained
    runner = QtJobRunner()
    with open_project(project_path) as project:
        dialog = ExportDialog(project, runner)
        qtbot.addWidget(dialog)
        dialog.model_target.edit.setText(str(tmp_path / "broken"))
        with qtbot.waitSignal(runner.finished, timeout=120_000):
            dialog.export_button.click()
        qtbot.waitUntil(lambda: dialog.last_outcome is not None, timeout=5_000)
        assert dialog.last_outcome.status == "failed"
        text = dialog.status.text()
        assert text.startswith("Export stopped: the exported model did not give the same answers as Sortlab")
        assert "ONNX" not in text and "99.5" not in text and str(tmp_path / "broken-FAILED") in text
        assert "Export check failed" in dialog.status.toolTip() and "99.5%" in dialog.status.toolTip()
        dialog.close()
    runner.shutdown()


def test_export_into_a_folder_that_does_not_exist_makes_it_and_says_so(trained, tmp_path, capsys):
    _root, project_path, _result = trained
    out = tmp_path / "exports" / "today" / "bundle"
    code, stdout, stderr = _sortlab_cli(["export", str(project_path), str(out)], capsys)
    assert code == 0, stderr
    assert f"Created the folder {tmp_path / 'exports'} (it did not exist)." in stdout
    assert (out / "model.onnx").is_file()
    code, stdout, stderr = _sortlab_cli(["export", str(project_path), str(tmp_path / "exports" / "again"), "--json"],
                                        capsys)
    assert code == 0 and json.loads(stdout)["created_folder"] is None  # the folder exists now: nothing made
    (tmp_path / "a file").write_text("not a folder")
    code, _stdout, stderr = _sortlab_cli(["export", str(project_path), str(tmp_path / "a file" / "bundle")], capsys)
    assert code == 2 and "is a file, not a folder" in stderr


def test_export_refuses_existing_folder_and_missing_model(trained, tmp_path, capsys, project):
    _root, project_path, _result = trained
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    code, _out, stderr = _sortlab_cli(["export", str(project_path), str(tmp_path / "taken")], capsys)
    assert code == 2 and "not an empty folder" in stderr
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"
    code, _out, stderr = _sortlab_cli(["export", str(project.path), str(tmp_path / "new")], capsys)
    assert code == 2 and "no trained model" in stderr.lower()


def test_export_of_a_method_sortlab_does_not_know_fails_before_building(project, tmp_path, capsys):
    """A version trained by a newer Sortlab with a method missing from the registry: one clear line."""
    from storage import catalog
    from storage.modelstore import NewModel, save_model_version

    ids = [catalog.add_class(project, name).id for name in ("a", "b")]
    version = save_model_version(project, NewModel("mystery", "efficientnet_lite0", "pooled", ["a", "b"], ids, b""))
    code, out, stderr = _sortlab_cli(["export", str(project.path), str(tmp_path / "out"), "--model", str(version)],
                                     capsys)
    assert code == 2 and out == ""
    assert f"Cannot export model version {version}: Unknown training method 'mystery'" in stderr
    assert not (tmp_path / "out").exists()


def _start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "main.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def test_predict_watch_predicts_drops_like_predict_csv_and_stops_on_ctrl_c(trained, tmp_path, capsys, monkeypatch):
    """`predict P --watch drops --csv out.csv` run from tmp_path: rows use the relative folder as
    given, exactly like `predict P drops --csv`, and SIGINT ends it with status 0 and a complete CSV."""
    import signal
    import time

    _root, project_path, _result = trained
    files = _make_prediction_files(tmp_path / "drops")
    out_csv = tmp_path / "watch.csv"
    child = _start_cli(["predict", str(project_path), "--watch", "drops", "--csv", "watch.csv", "--interval", "0.2"],
                       cwd=tmp_path)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if out_csv.exists() and len(out_csv.read_text().splitlines()) >= len(files):  # header + all images
                break
            assert child.poll() is None, child.communicate()[1]
            time.sleep(0.2)
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, stderr
    assert "Interrupted (Ctrl+C)" in stdout and "Traceback" not in stderr
    watched = sorted(_csv_rows(out_csv.read_text())[1:])
    assert len(watched) == len(files) - 1 and all(row[0].startswith("drops" + os.sep) for row in watched)
    monkeypatch.chdir(tmp_path)
    code, predicted_csv, _err = _sortlab_cli(["predict", str(project_path), "drops", "--csv"], capsys)
    assert watched == sorted(_csv_rows(predicted_csv)[1:])
    assert "notes.jpg" in stderr


def test_watch_alias_stops_cleanly_on_sigterm(trained, tmp_path):
    import signal

    _root, project_path, _result = trained
    (tmp_path / "empty").mkdir()
    child = _start_cli(["watch", str(project_path), "empty", "--csv", "out.csv", "--interval", "0.2"], cwd=tmp_path)
    try:
        assert child.stderr.readline().startswith("Watching empty with model version")
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, stderr
    assert "Stopped (SIGTERM): 0 images predicted" in stdout
    assert (tmp_path / "out.csv").read_text() == "path,class,probability\n"


def test_fine_tuned_network_exports_and_matches_sortlab(trained, tmp_path, capsys):
    import torch
    from safetensors.torch import save as save_state

    from engine.torch.finetune import build_network
    from storage.modelstore import NewModel, list_models, save_model_version
    from storage.project import open_project

    _root, project_path, _result = trained
    torch.manual_seed(0)
    network = build_network("efficientnet_lite0", "pooled", 2)
    with torch.no_grad():
        network.head.weight.mul_(40.0)
    weights = save_state({k: v.contiguous() for k, v in network.state_dict().items()})
    with open_project(project_path) as project:
        active = next(m for m in list_models(project) if m.is_active)
        version = save_model_version(
            project, NewModel("finetune", "efficientnet_lite0", "pooled", active.class_names, active.class_ids,
                              weights, {"epochs": 0}, {"accuracy": 0.5}, 28),
            activate=False,
        )
    out = tmp_path / "finetuned"
    code, stdout, stderr = _sortlab_cli(["export", str(project_path), str(out), "--model", str(version), "--json"],
                                        capsys)
    assert code == 0, stderr
    verification = json.loads(stdout)["verification"]
    assert verification["passed"] and verification["max_probability_difference"] < 1e-3
    description = json.loads((out / "model.json").read_text())
    assert description["training"]["method"] == "finetune"
    assert description["preprocessing"]["jpeg_draft"] is False
    assert not (out / "linear_head.npz").exists()

    _make_prediction_files(tmp_path / "incoming")
    _code, sortlab_csv, _err = _sortlab_cli(
        ["predict", str(project_path), str(tmp_path / "incoming"), "--model", str(version), "--csv"], capsys)
    standalone = _run_standalone(tmp_path, str(out / "predict.py"), str(tmp_path / "incoming"), "--csv")
    assert standalone.returncode == 0, standalone.stderr
    sortlab_rows, exported_rows = _csv_rows(sortlab_csv), _csv_rows(standalone.stdout)
    assert [r[:2] for r in exported_rows] == [r[:2] for r in sortlab_rows]
    np.testing.assert_allclose([float(r[2]) for r in exported_rows[1:]], [float(r[2]) for r in sortlab_rows[1:]],
                               atol=1e-4)


@pytest.mark.gui
def test_export_dialog_exports_a_verified_bundle(trained, tmp_path, qtbot):
    from gui.export_dialog import ExportDialog
    from gui.runner import QtJobRunner
    from storage.project import open_project

    _root, project_path, _result = trained
    runner = QtJobRunner()
    with open_project(project_path) as project:
        dialog = ExportDialog(project, runner)
        qtbot.addWidget(dialog)
        assert dialog.model_combo.count() >= 1 and "in use" in dialog.model_combo.currentText()
        dialog.model_target.edit.setText(str(tmp_path / "from_dialog"))
        dialog.zip_check.setChecked(True)
        with qtbot.waitSignal(runner.finished, timeout=120_000):
            dialog.export_button.click()
        qtbot.waitUntil(lambda: dialog.last_outcome is not None, timeout=5_000)
        assert dialog.last_outcome.status == "done", dialog.last_outcome.error
        assert "the same answer as Sortlab" in dialog.status.text() and "ONNX agrees" in dialog.status.toolTip()
        zipped = tmp_path / "from_dialog.zip"
        assert str(zipped) in dialog.status.text() and not (tmp_path / "from_dialog").exists()
        with zipfile.ZipFile(zipped) as archive:
            assert {"from_dialog/model.onnx", "from_dialog/model.json", "from_dialog/predict.py",
                    "from_dialog/README.md"} <= set(archive.namelist())

        dialog.tabs.setCurrentIndex(1)
        dialog.dataset_target.edit.setText(str(tmp_path / "dataset"))
        with qtbot.waitSignal(runner.finished, timeout=60_000):
            dialog.export_button.click()
        qtbot.waitUntil(lambda: "Saved 28 images" in dialog.status.text(), timeout=5_000)
        assert (tmp_path / "dataset" / "dataset.csv").is_file()
        dialog.close()
    runner.shutdown()


def test_no_code_path_unpickles():
    """Opening a project or bundle from someone else must never run code: no pickle, safe torch.load."""
    import re

    offenders = []
    # Dask's own wire protocol between the user's client and the user's workers is pickle; engine/cluster
    # uses cloudpickle only to send its preprocessing code by value to them, never to read a file.
    dask_transport = REPO_ROOT / "engine" / "cluster"
    folders = ("engine", "storage", "cli", "gui")
    sources = [REPO_ROOT / "main.py", *(p for d in folders for p in (REPO_ROOT / d).rglob("*.py"))]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for pattern in (r"^\s*(import|from)\s+(c?pickle|dill|joblib|cloudpickle)\b", r"allow_pickle\s*=\s*True",
                        r"\.load_state_dict_from_url\("):
            if dask_transport in path.parents and "cloudpickle" in pattern:
                text_checked = re.sub(r"^\s*import cloudpickle\s*$", "", text, flags=re.MULTILINE)
            else:
                text_checked = text
            if re.search(pattern, text_checked, flags=re.MULTILINE):
                offenders.append(f"{path.relative_to(REPO_ROOT)}: {pattern}")
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in call.group(1):
                offenders.append(f"{path.relative_to(REPO_ROOT)}: {call.group(0)}")
    assert len(sources) > 20
    assert offenders == []


# ------------------------------------------------------------------------------------ hardening


def test_verification_thresholds():
    from engine.ship.verify import MAX_PROBABILITY_DIFFERENCE, MIN_AGREEMENT, VerificationResult

    assert MIN_AGREEMENT == 0.995
    assert VerificationResult(200, 199, 1e-6, "validation").passed  # 99.5% passes
    below = VerificationResult(200, 198, 1e-6, "validation")  # 99.0% fails
    assert not below.passed and "99.5% agreement" in below.failure_reason()
    drift = VerificationResult(200, 200, 2 * MAX_PROBABILITY_DIFFERENCE, "validation")
    assert not drift.passed and "differ by at most" in drift.failure_reason()
    assert not VerificationResult(10, 10, float("nan"), "validation").passed
    assert not VerificationResult(0, 0, 0.0, "no").passed
    assert VerificationResult(10, 10, 0.0, "validation").failure_reason() is None


def test_export_with_shifted_probabilities_fails_even_when_top_classes_agree(trained, tmp_path, capsys, monkeypatch):
    """A deliberately broken network: same top class everywhere, probabilities pulled 5% toward
    uniform. Top-1 agreement is 100%, so only the probability check can catch it."""
    import torch

    import engine.ship.export as export_module

    real_build = export_module.build_network

    class TowardUniform(torch.nn.Module):
        def forward(self, probabilities):
            return probabilities * 0.9 + 0.05

    monkeypatch.setattr(export_module, "build_network",
                        lambda project, info: torch.nn.Sequential(real_build(project, info), TowardUniform()).eval())
    _root, project_path, _result = trained
    code, stdout, stderr = _sortlab_cli(["export", str(project_path), str(tmp_path / "shifted"), "--json"], capsys)
    assert code == 3, stderr
    verification = json.loads(stdout)["verification"]
    assert verification["agreement"] == 1.0 and verification["max_probability_difference"] > 0.01
    assert "probabilities may differ by at most" in stderr
    assert (tmp_path / "shifted-FAILED" / "EXPORT_FAILED.txt").is_file() and not (tmp_path / "shifted").exists()


def test_export_on_a_full_disk_prints_one_line_and_leaves_nothing_half_written(trained, tmp_path, capsys,
                                                                                monkeypatch):
    import errno

    import engine.ship.export as export_module

    def disk_full(source, target, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(export_module.shutil, "copyfile", disk_full)
    _root, project_path, _result = trained
    code, stdout, stderr = _sortlab_cli(["export", str(project_path), str(tmp_path / "out")], capsys)
    assert code == 1 and stdout == ""
    errors = [line for line in stderr.splitlines() if not line.startswith("[")]  # progress lines start with [
    assert len(errors) == 1 and errors[0].startswith("sortlab: error: ") and "disk is full" in errors[0], stderr
    assert "Traceback" not in stderr
    assert sorted(os.listdir(tmp_path)) == [], "no half-written bundle may stay behind"


def _zip_with(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_zip_member_names_with_colons_are_refused(tmp_path):
    module = _load_template()
    for name in ("C:evil", "bundle/model.json:stream", "a:b/model.onnx"):
        with pytest.raises(module.BundleError, match="Unsafe"):
            module.check_member_name(name)
    evil = _zip_with(tmp_path / "colon.zip", {"b/model.json": b"{}", "b/model.onnx": b"x", "b/x:y": b"z"})
    with pytest.raises(module.BundleError, match="Unsafe"):
        module.read_bundle(evil)


def test_zip_bombs_are_refused_before_inflating(tmp_path):
    """Caps on declared member sizes (lowered here so the test needs no gigabyte of zeros)."""
    bomb = _zip_with(tmp_path / "bomb.zip", {"b/model.json": b"{}", "b/model.onnx": b"\0" * 200_000})
    assert bomb.stat().st_size < 5_000
    module = _load_template()
    module.MAX_MEMBER_BYTES["model.onnx"] = 100_000
    with pytest.raises(module.BundleError, match="too large"):
        module.read_bundle(bomb)


@pytest.mark.parametrize("config, problem", [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"preprocessing": {}}', "'classes'"),
    (b'{"classes": ["a", "b"]}', "'preprocessing' is missing"),
    (b'{"classes": ["a"], "preprocessing": {"resize": "stretch", "mean": [0, 0], "std": [1, 1, 0]}}',
     "unknown 'resize' policy"),
    (b'{"classes": ["a"], "preprocessing": {"interpolation": ["bilinear"], "input_size": 224}}',
     "unknown 'interpolation'"),
])
def test_standalone_predict_checks_model_json_up_front(tmp_path, config, problem):
    module = _load_template()
    with pytest.raises(module.BundleError, match=problem):
        module.Predictor({"model.json": config, "model.onnx": b""})
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.json").write_bytes(config)
    (bundle / "model.onnx").write_bytes(b"")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    run = _run_standalone(tmp_path, str(TEMPLATE), "--bundle", str(bundle), str(tmp_path / "x.png"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("predict.py: error: model.json") and run.stderr.count("\n") == 1
