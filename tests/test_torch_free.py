"""The CPU edition's promise: the quick loop (demo, train, predict, export) works without PyTorch.

A child process makes ``import torch`` (and torchvision, triton, efficientnet_lite_pytorch) raise
ImportError, as in the packaged CPU edition, and finds features in shipped ONNX copies that this
process makes from torch first (engine.features.onnx_backend.ship). It never imports the engine.torch
package, which the CPU edition leaves out (packaging/sortlab.spec) and only it may import torch
(the import-linter contract in pyproject.toml). The composed export (engine.ship.onnx_compose) is also
checked directly against LinearPredictor.predict_proba.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from engine.models.classifiers import LinearPredictor
from tests.conftest import REPO_ROOT

BLOCK_TORCH = textwrap.dedent("""
    import sys

    class _NoTorch:
        '''Refuses torch and what comes with it, as in the CPU edition where it is not installed.'''

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "triton", "efficientnet_lite_pytorch"):
                raise ImportError(f"No module named {name!r} (blocked: CPU edition test)")
            return None

    sys.meta_path.insert(0, _NoTorch())
""")

QUICK_LOOP = textwrap.dedent("""
    import contextlib, io, json, sys
    from pathlib import Path

    import main
    from engine.images.demo import build_demo_project
    from engine.runtime.jobs import JobContext

    work = Path(sys.argv[1])
    project = work / "P.sortlab"
    build_demo_project(JobContext(), project, n_images=60, labeled_fraction=0.6)
    results = {}

    def cli(name, *args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main.run_cli(list(args))
        results[name] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}

    cli("train", "train", str(project))
    cli("svm", "train", str(project), "--method", "svm")
    cli("export", "export", str(project), str(work / "OUT"), "--json")
    cli("dataset", "dataset-export", str(project), str(work / "DS"))
    folder = sorted(p for p in (work / "DS").iterdir() if p.is_dir())[0]
    cli("predict", "predict", str(project), str(folder), "--csv")
    cli("finetune", "train", str(project), "--method", "finetune")
    cli("block6", "train", str(project), "--layer", "block6")
    cli("backbones", "backbones", "--json")
    results["folder"] = str(folder)
    results["torch_imported"] = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision")
                                       or m == "engine.torch" or m.startswith("engine.torch."))
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def shipped_models(tmp_path_factory):
    """A folder of shipped ONNX copies (pooled layer only: the default network's, and Lite0's, which other
    tests' projects use), made here with torch."""
    from engine.features import onnx_backend
    from engine.features.backbones import DEFAULT_BACKBONE, get_backbone

    folder = tmp_path_factory.mktemp("shipped")
    with pytest.MonkeyPatch.context() as patch:  # reuse the session's export (see test_features)
        patch.setenv("SORTLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sortlab-cache"))
        onnx_backend.ship(get_backbone("efficientnet_lite0"), "pooled", folder)
        path = onnx_backend.ship(get_backbone(DEFAULT_BACKBONE), "pooled", folder)
    assert path.parent == folder and path.stat().st_size > 1_000_000
    return folder


def test_quick_loop_runs_with_torch_unimportable(shipped_models, tmp_path):
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCK_TORCH)
    script = tmp_path / "quick_loop.py"
    script.write_text(QUICK_LOOP)
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": f"{tmp_path / 'blocker'}:{REPO_ROOT}",
        "SORTLAB_ONNX_MODELS": str(shipped_models),
        "SORTLAB_CACHE_DIR": str(tmp_path / "empty-cache"),  # nothing exported earlier may help
    }
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["torch_imported"] == []

    for step in ("train", "svm", "export", "dataset", "predict"):
        assert results[step]["code"] == 0, (step, results[step]["stderr"][-2000:])
        assert "Traceback" not in results[step]["stderr"]
    exported = json.loads(results["export"]["stdout"])
    check = exported["verification"]
    assert check["passed"] and check["agreement"] >= 0.995 and check["max_probability_difference"] < 1e-4
    assert {"model.onnx", "model.json", "predict.py", "README.md"} <= set(exported["files"])
    assert not (tmp_path / "empty-cache" / "onnx").exists(), "the shipped copy must be used, not a new export"

    rows = results["predict"]["stdout"].strip().splitlines()
    assert rows[0] == "path,class,probability" and len(rows) > 1
    # The bundle's own predict.py (onnxruntime, numpy, Pillow) gives the same classes.
    bundle = subprocess.run([sys.executable, "-I", str(tmp_path / "OUT" / "predict.py"), results["folder"], "--csv"],
                            capture_output=True, text=True, timeout=120)
    assert bundle.returncode == 0, bundle.stderr[-2000:]
    same = [row.split(",")[:2] for row in bundle.stdout.strip().splitlines()]
    assert sorted(same) == sorted(row.split(",")[:2] for row in rows)

    # The registry is plain data here: Lite networks ready, torchvision ones naming the full edition.
    assert results["backbones"]["code"] == 0, results["backbones"]["stderr"][-2000:]
    listed = {row["name"]: row for row in json.loads(results["backbones"]["stdout"])}
    assert listed["efficientnet_lite0"]["available"] and listed["efficientnet_lite0"]["reason"] == ""
    assert not listed["resnet18"]["available"] and "needs the full edition" in listed["resnet18"]["reason"]

    # What needs torch says so in one sentence, without a traceback.
    for step, words in (("finetune", "Thorough training"), ("block6", "block6 layer")):
        assert results[step]["code"] == 2
        assert words in results[step]["stderr"] and "needs the full edition" in results[step]["stderr"]
        assert "Traceback" not in results[step]["stderr"]


def test_the_no_torch_lint_contract_covers_every_engine_package_but_engine_torch():
    """A new engine sub-package falls under the contract that keeps torch in engine.torch (make lint)."""
    import tomllib

    contracts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    no_torch = next(c for c in contracts if "torch" in c.get("forbidden_modules", []))
    packages = {f"engine.{path.parent.name}" for path in (REPO_ROOT / "engine").glob("*/__init__.py")}
    assert "engine.torch" in packages and "engine.torch" not in no_torch["source_modules"]
    assert (packages - {"engine.torch"}) | {"gui", "cli", "storage"} <= set(no_torch["source_modules"])
    assert {"torch", "torchvision"} <= set(no_torch["forbidden_modules"])


def _fake_backbone(dim: int = 12) -> bytes:
    """A tiny graph with the feature extractor's interface: pixels (N, 3, 2, 2) -> features (N, 12)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["pixels"], ["features"], axis=1)], "fake",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 2, 2])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", dim])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("method, n_classes", [("logreg", 2), ("logreg", 3), ("svm", 2), ("svm", 4)])
def test_composed_network_computes_what_sortlab_computes(method, n_classes):
    import onnxruntime as ort

    from engine.models.classifiers import LinearSVMClassifier, LogisticClassifier
    from engine.ship.onnx_compose import compose

    rng = np.random.default_rng(n_classes)
    centers = rng.normal(0, 3, size=(n_classes, 12))
    y = np.repeat(np.arange(1, n_classes + 1) * 10, 12)
    X = (centers[(y // 10) - 1] + rng.normal(0, 2.5, size=(len(y), 12)) + 5).astype(np.float32)
    classifier = LogisticClassifier if method == "logreg" else LinearSVMClassifier
    predictor: LinearPredictor = classifier(C=0.5).fit(X, y).predictor_
    assert (predictor.calib_a is not None) == (method == "svm")

    session = ort.InferenceSession(compose(_fake_backbone(), predictor), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    got = session.run(None, {"images": X.reshape(-1, 3, 2, 2)})[0]
    expected = predictor.predict_proba(X)
    assert got.shape == expected.shape == (len(y), n_classes)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert np.array_equal(got.argmax(1), expected.argmax(1))


def test_compose_refuses_a_graph_that_is_not_a_feature_extractor():
    from engine.models.classifiers import LogisticClassifier
    from engine.ship.onnx_compose import compose

    X = np.random.default_rng(0).normal(size=(20, 5)).astype(np.float32)
    predictor = LogisticClassifier(C=1.0).fit(X, np.repeat([1, 2], 10)).predictor_
    with pytest.raises(ValueError, match="expects 5 features"):
        compose(_fake_backbone(12), predictor)


@pytest.fixture
def torch_not_installed():
    """``torch_available()`` answers as in the CPU edition, wherever it was imported, for one test."""
    import importlib.util

    from engine.runtime.edition import torch_available

    real_find_spec = importlib.util.find_spec
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(importlib.util, "find_spec",
                      lambda name, package=None: None if name == "torch" else real_find_spec(name, package))
        torch_available.cache_clear()
        yield
    torch_available.cache_clear()


@pytest.mark.gui
def test_cpu_edition_training_panel_offers_thorough_training_as_full_edition_only(qtbot, project, torch_not_installed):
    from gui.runner import QtJobRunner
    from gui.training_panel import BackboneChoice, TrainingPanel

    runner = QtJobRunner()
    try:
        panel = TrainingPanel(runner, project, train_fn=lambda *a, **k: None, device="cpu", history_fn=lambda p: ([], []),
                              backbones=[BackboneChoice("efficientnet_lite0", "EfficientNet-Lite0", ("pooled",), "pooled")])
        qtbot.addWidget(panel)
        thorough, quick = panel.method_buttons["finetune"], panel.method_buttons["logreg"]
        assert not thorough.isEnabled() and quick.isEnabled() and quick.isChecked()
        assert "full edition only" in thorough.text() and "needs the full edition" in thorough.toolTip()
        panel._update_buttons()  # e.g. after a training run: stays off
        assert not thorough.isEnabled() and quick.isEnabled()
    finally:
        runner.cancel_all()
        runner.shutdown()
