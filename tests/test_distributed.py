"""Fine-tuning under torchrun (engine.torch.distributed_training): two CPU ranks on gloo finish, store
exactly one model version with its curves, end with identical parameters, never leave the shard
folder behind, and learn as well as one process with the same seed and epochs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("torch")

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKBONE, LAYER = "efficientnet_lite0", "block5"  # the smallest network Sortlab fine-tunes
CONFIG = {"head_epochs": 1, "full_epochs": 1, "batch_size": 4}


def _make_project(root: Path, per_class: int) -> Path:
    from engine.images.importing import import_paths
    from engine.runtime.jobs import JobContext
    from storage.project import create_project

    rng = np.random.default_rng(0)
    for name, color, shape in (("red circle", (220, 30, 30), "circle"), ("blue square", (30, 60, 220), "square")):
        (root / "img" / name).mkdir(parents=True)
        for index in range(per_class):
            image = Image.new("RGB", (int(rng.integers(50, 90)), int(rng.integers(50, 90))), (235, 235, 230))
            side = min(image.size) // 2
            x, y = int(rng.integers(0, image.width - side)), int(rng.integers(0, image.height - side))
            draw = ImageDraw.Draw(image)
            (draw.ellipse if shape == "circle" else draw.rectangle)([x, y, x + side, y + side], fill=color)
            image.save(root / "img" / name / f"{index}.png")
    with create_project(root / "shapes.sortlab") as project:
        assert import_paths(JobContext(), project, [root / "img"], labels_from_folders=True).imported == 2 * per_class
    return root


@pytest.fixture(scope="module")
def shapes_project(tmp_path_factory):
    return _make_project(tmp_path_factory.mktemp("ddp"), 8)


def _torchrun(project: Path, shards: Path, config: dict = CONFIG) -> subprocess.CompletedProcess:
    env = dict(os.environ, SORTLAB_FINETUNE_CONFIG=json.dumps(config), SORTLAB_SHARD_DIR=str(shards),
               OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO_ROOT / "main.py"), "train", str(project), "--method", "finetune", "--backbone", BACKBONE,
               "--layer", LAYER, "--seed", "3", "--json"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def torchrun_result(shapes_project, tmp_path_factory):
    """The project after `torchrun --standalone --nproc_per_node=2 main.py train ... --method finetune`."""
    import shutil

    folder = tmp_path_factory.mktemp("ddp-run")
    project = folder / "ddp.sortlab"
    shutil.copyfile(shapes_project / "shapes.sortlab", project)
    shards = folder / "shards"
    run = _torchrun(project, shards)
    assert run.returncode == 0, run.stderr[-4000:]
    return project, shards, json.loads(run.stdout)  # rank 0 alone prints


@pytest.mark.timeout(600)  # a short training of a real network by two processes on a shared 2-core machine
def test_torchrun_fine_tunes_on_two_cpu_ranks_and_stores_one_version(torchrun_result):
    from storage.modelstore import list_models, list_training_runs
    from storage.project import open_project

    project, shards, report = torchrun_result
    assert report["world_size"] == 2 and report["params"]["backend"] == "gloo"
    assert report["params"]["parameters_identical_across_ranks"] is True
    assert not shards.exists()  # the exported images are gone
    with open_project(project) as opened:
        models = list_models(opened)
        runs = list_training_runs(opened)
    assert len(models) == 1 and models[0].is_active and models[0].method == "finetune"
    assert models[0].version == report["model"]
    assert [r.status for r in runs] == ["done"]
    assert [row["epoch"] for row in runs[0].curves] == [1, 2]  # one head epoch, one full epoch
    assert all("val_loss" in row for row in runs[0].curves)  # validation summed over both ranks


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_torchrun_accuracy_is_within_noise_of_one_process(tmp_path):
    """On 40 pictures with a few epochs, so that both runs learn and the comparison means something."""
    import shutil
    from dataclasses import replace

    from engine.runtime.jobs import JobContext
    from engine.torch.finetune import DEFAULT_CONFIG
    from engine.torch.network_training import train_network
    from storage.project import open_project

    root = _make_project(tmp_path / "data", 20)
    config = {"head_epochs": 4, "full_epochs": 1, "batch_size": 4}
    project = tmp_path / "ddp.sortlab"
    shutil.copyfile(root / "shapes.sortlab", project)
    run = _torchrun(project, tmp_path / "shards", config)
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout)
    single = tmp_path / "single.sortlab"
    shutil.copyfile(root / "shapes.sortlab", single)
    with open_project(single) as opened:
        result = train_network(JobContext(), opened, "finetune", BACKBONE, LAYER, seed=3,
                               config=replace(DEFAULT_CONFIG, **config))
    n_val = report["metrics"]["n_val"]
    assert n_val == result.metrics.n_val and n_val >= 6  # the same split, so the same validation images
    # Within noise: two binomial standard errors of an accuracy measured on n_val images.
    noise = 2 * math.sqrt(0.25 / n_val)
    assert abs(report["metrics"]["accuracy"] - result.metrics.accuracy) <= noise, (
        f"torchrun {report['metrics']['accuracy']:.3f} vs one process {result.metrics.accuracy:.3f} on {n_val} images")
