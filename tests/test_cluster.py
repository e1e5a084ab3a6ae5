"""Predicting and extracting on a Dask cluster (engine.cluster, ``--cluster``): the same rows as local
prediction, every row once when a worker dies mid-run, unreadable files reported, cancel stops the
cluster work. The workers cannot import Sortlab (a preload hides it): code and model travel with the work."""

from __future__ import annotations

import csv
import io
import os
import signal
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("distributed")

from engine.cluster.predict import predict_files_on_cluster  # noqa: E402
from engine.cluster.session import ClusterConnection, ClusterError, ClusterSpec  # noqa: E402
from engine.models.predicting import predict_files  # noqa: E402
from engine.runtime.jobs import JobCancelled, JobContext  # noqa: E402
from helpers.cli import cli  # noqa: E402

NO_SORTLAB = textwrap.dedent('''
    import sys
    for name in ("engine", "storage", "cli", "gui", "main"):
        sys.modules[name] = None  # any import of Sortlab on the worker fails
''')


def _picture(path: Path, color, shape: str, rng: np.random.Generator) -> None:
    image = Image.new("RGB", (int(rng.integers(50, 90)), int(rng.integers(50, 90))), (235, 235, 230))
    side = min(image.size) // 2
    x, y = int(rng.integers(0, image.width - side)), int(rng.integers(0, image.height - side))
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)([x, y, x + side, y + side], fill=color)
    image.save(path)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A project with a logistic-regression model on 12 small pictures, and a folder of 11 new ones
    (one of them not an image)."""
    from engine.images.importing import import_paths
    from engine.models.training import train_model
    from storage.project import create_project

    root = tmp_path_factory.mktemp("cluster")
    rng = np.random.default_rng(3)
    for name, color, shape in (("red circle", (220, 30, 30), "circle"), ("blue square", (30, 60, 220), "square")):
        (root / "train" / name).mkdir(parents=True)
        for index in range(6):
            _picture(root / "train" / name / f"{index}.png", color, shape, rng)
    (root / "new").mkdir()
    for index in range(10):
        color = (int(rng.integers(20, 230)), 50, int(rng.integers(20, 230)))
        _picture(root / "new" / f"{index:02d}.{'jpg' if index % 2 else 'png'}", color,
                 "circle" if index % 3 else "square", rng)
    (root / "new" / "04_broken.jpg").write_bytes(b"not a picture at all")
    with create_project(root / "shapes.sortlab") as project:
        import_paths(JobContext(), project, [root / "train"], labels_from_folders=True)
        train_model(JobContext(), project, "logreg")
    return root


@pytest.fixture(scope="module")
def connection(tmp_path_factory):
    """Two single-threaded worker processes that cannot import Sortlab."""
    preload = tmp_path_factory.mktemp("preload") / "no_sortlab.py"
    preload.write_text(NO_SORTLAB)
    with ClusterConnection(ClusterSpec.parse("local:2"), preload=[str(preload)]) as opened:
        yield opened


def _local(root: Path):
    from storage.project import open_project

    with open_project(root / "shapes.sortlab") as project:
        return predict_files(JobContext(), project, [root / "new"])


def _on_cluster(root: Path, connection, on_chunk=None, context=None, chunk_size=4):
    from storage.project import open_project

    rows, failed = [], []

    def on_rows(chunk_rows, chunk_failed):
        rows.extend(chunk_rows)
        failed.extend(chunk_failed)
        if on_chunk is not None:
            on_chunk(len(rows) + len(failed))

    with open_project(root / "shapes.sortlab") as project:
        report = predict_files_on_cluster(context or JobContext(), project, [root / "new"], connection, on_rows,
                                          chunk_size=chunk_size)
    return report, rows, failed


def _same_rows(cluster_rows, local_rows) -> None:
    assert [(r.path, r.class_name) for r in cluster_rows] == [(r.path, r.class_name) for r in local_rows]
    np.testing.assert_allclose([r.probabilities for r in cluster_rows], [r.probabilities for r in local_rows],
                               atol=1e-5, rtol=0)


def test_cli_predict_on_the_cluster_writes_the_rows_local_prediction_gives(shapes, connection, tmp_path, capsys):
    out = tmp_path / "out.csv"
    code, _stdout, stderr = cli(capsys, "predict", shapes / "shapes.sortlab", shapes / "new", "--csv", out,
                                "--cluster", connection.client.scheduler.address)
    assert code == 0, stderr
    assert "04_broken.jpg" in stderr and "not an image" in stderr  # reported, not fatal
    code, local_csv, _ = cli(capsys, "predict", shapes / "shapes.sortlab", shapes / "new", "--csv")
    cluster_rows = list(csv.reader(io.StringIO(out.read_text())))
    local_rows = list(csv.reader(io.StringIO(local_csv)))
    assert cluster_rows[0] == local_rows[0] == ["path", "class", "probability"]
    assert len(cluster_rows) == 11  # header + 10 readable pictures
    assert [r[:2] for r in cluster_rows] == [r[:2] for r in local_rows]
    np.testing.assert_allclose([float(r[2]) for r in cluster_rows[1:]], [float(r[2]) for r in local_rows[1:]],
                               atol=1.1e-5, rtol=0)


def test_cluster_rows_match_local_probabilities_and_failures(shapes, connection):
    local = _local(shapes)
    report, rows, failed = _on_cluster(shapes, connection)
    _same_rows(rows, local.predictions)
    assert failed == local.failed and len(failed) == 1
    assert report.predicted == 10 and len(report.workers) == 2  # both workers got chunks


def test_a_worker_killed_mid_run_still_yields_every_row_once(shapes, connection):
    local = _local(shapes)
    pids = connection.client.run(os.getpid)
    killed = []

    def kill_one(done: int) -> None:
        if not killed:  # after the first chunk: the others are queued or running on both workers
            address, pid = next(iter(pids.items()))
            os.kill(pid, signal.SIGKILL)
            killed.append(address)

    report, rows, failed = _on_cluster(shapes, connection, on_chunk=kill_one, chunk_size=1)
    assert killed
    _same_rows(rows, local.predictions)
    assert len({r.path for r in rows}) == len(rows) == 10 and len(failed) == 1
    connection.client.wait_for_workers(2, timeout=120)  # the nanny restarts the killed worker


def test_cancel_stops_the_cluster_work(shapes, connection):
    context = JobContext()
    seen = []

    def cancel(done: int) -> None:
        seen.append(done)
        context.cancel()

    with pytest.raises(JobCancelled):
        _on_cluster(shapes, connection, on_chunk=cancel, context=context, chunk_size=1)
    assert len(seen) == 1
    deadline = time.monotonic() + 60  # the scheduler drops the cancelled chunks: nothing left running
    while any(connection.client.processing().values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(connection.client.processing().values())


def test_extract_on_the_cluster_stores_the_vectors_local_extraction_stores(shapes, connection, tmp_path, capsys):
    import shutil

    from storage.featurestore import delete_feature_set, load_vectors
    from storage.modelstore import active_model
    from storage.project import open_project

    copy = tmp_path / "copy.sortlab"
    shutil.copyfile(shapes / "shapes.sortlab", copy)
    with open_project(copy) as project:
        info = active_model(project)
        local_ids, local_vectors = load_vectors(project, info.backbone, info.layer)
        assert delete_feature_set(project, info.backbone, info.layer)
    code, stdout, stderr = cli(capsys, "extract", copy, "--cluster", connection.client.scheduler.address, "--json")
    assert code == 0, stderr
    assert '"extracted": 12' in stdout
    with open_project(copy) as project:
        ids, vectors = load_vectors(project, info.backbone, info.layer)
    assert list(ids) == list(local_ids)
    np.testing.assert_allclose(vectors, local_vectors, atol=1e-5, rtol=0)


@pytest.mark.parametrize("text", ["local:0", "somewhere", "http//x"])
def test_a_cluster_address_that_is_neither_local_nor_a_scheduler_is_one_clear_error(text):
    with pytest.raises(ClusterError):
        ClusterSpec.parse(text)


def test_cluster_addresses_parse():
    assert ClusterSpec.parse("local") == ClusterSpec(None, None)
    assert ClusterSpec.parse("local:3") == ClusterSpec(None, 3)
    assert ClusterSpec.parse("10.0.0.5:8786") == ClusterSpec("tcp://10.0.0.5:8786", None)
    assert ClusterSpec.parse("tcp://head:8786") == ClusterSpec("tcp://head:8786", None)


def test_an_unreachable_scheduler_is_one_clear_error():
    with pytest.raises(ClusterError, match="Cannot reach the Dask scheduler"):
        ClusterConnection(ClusterSpec.parse("tcp://127.0.0.1:9"), timeout=2)


def test_without_the_cluster_extra_cluster_commands_say_how_to_install_it(monkeypatch, capsys, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # as where `sortlab[cluster]` is not installed
    for args in (["predict", tmp_path / "p.sortlab", tmp_path, "--csv", tmp_path / "o.csv", "--cluster", "local"],
                 ["extract", tmp_path / "p.sortlab", "--cluster", "local"]):
        code, _out, err = cli(capsys, *args)
        assert code == 2 and 'pip install "sortlab[cluster]"' in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
