"""Heavy libraries load only when needed (issue #19): asking where features are computed and which
backbones have their weights here imports no torch (half a gigabyte of memory) on a machine with no
GPU driver and no torchvision weights, and gives the answers torch would give."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.features.backbones import _hub_has_files, hub_checkpoints_without_torch
from engine.runtime.edition import torch_available

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not torch_available(), reason="the CPU edition has no torch to compare with")
@pytest.mark.parametrize("variables", [{"TORCH_HOME": "th"}, {"XDG_CACHE_HOME": "xdg"}, {}])
def test_the_hub_folder_is_the_one_torch_names(tmp_path, monkeypatch, variables):
    import torch.hub

    for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, folder in variables.items():
        monkeypatch.setenv(name, str(tmp_path / folder))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # as in a process that never called set_dir
    assert hub_checkpoints_without_torch() == Path(torch.hub.get_dir()) / "checkpoints"


def test_an_empty_or_missing_hub_folder_has_no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert not _hub_has_files()
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    assert not _hub_has_files()
    (folder / "resnet18-f37072fd.pth").write_bytes(b"weights")
    assert _hub_has_files()


ASK = r"""
import json, sys
from engine.features.backbones import list_backbones
from engine.features.runners import device_name, gpu_driver_present
answer = {"device": device_name(), "backbones": [[s.name, s.family] for s in list_backbones(available_only=True)],
          "driver": gpu_driver_present(), "torch_imported": "torch" in sys.modules}
try:
    import torch
    answer["torch_cuda"] = torch.cuda.is_available()
except ImportError:
    answer["torch_cuda"] = False
print(json.dumps(answer))
"""


def test_asking_for_the_device_and_backbones_imports_torch_only_where_a_gpu_driver_is(tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "empty-torch-home")}
    env.pop("SORTLAB_RUNTIME", None)
    done = subprocess.run([sys.executable, "-c", ASK], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["torch_imported"] == answer["driver"]
    if not answer["driver"]:
        assert not answer["torch_cuda"]  # torch itself finds no GPU where no driver is
        assert "onnxruntime" in answer["device"]
    assert [family for _name, family in answer["backbones"]] == ["efficientnet_lite"] * len(answer["backbones"])
    assert "efficientnet_lite0" in [name for name, _family in answer["backbones"]]  # (no torchvision weights cached)


FIND_THE_ONNX_COPY = """
import sys
from engine.features import onnx_backend
from engine.features.backbones import get_backbone
spec = get_backbone()
path = onnx_backend.model_path(spec, spec.default_layer)
print("torch" in sys.modules, path.name)
"""


@pytest.mark.skipif(not torch_available(), reason="without torch only the shipped copies are used")
def test_finding_the_exported_onnx_copy_imports_no_torch():
    """Quick training looks up its ONNX copy of the backbone on every feature run: asking torch's
    version for that key must not import torch (a second-long stall of every thread)."""
    import importlib.metadata

    done = subprocess.run([sys.executable, "-c", FIND_THE_ONNX_COPY], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    imported, name = done.stdout.split()
    assert imported == "False"
    assert name.startswith(get_backbone_name()) and name.endswith(".onnx")
    assert importlib.metadata.version("torch")  # the key's torch version comes from here


def get_backbone_name() -> str:
    from engine.features.backbones import get_backbone

    return get_backbone().name
