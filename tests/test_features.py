"""Feature extraction: ONNX equals torch, only missing images are processed, cancel resumes,
broken images are reported, vectors round-trip through the project, and the `extract` CLI."""

from __future__ import annotations

import hashlib
import io
import json
import threading

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine.features import onnx_backend
from engine.features.backbones import DEFAULT_BACKBONE, get_backbone
from engine.features.extraction import device_name, ensure_features, features_for_files, get_runner, load_features
from engine.runtime.jobs import JobCancelled, JobContext
from storage.featurestore import (
    delete_feature_set,
    ensure_feature_set,
    find_feature_set,
    load_vectors,
    missing_image_ids,
    store_vectors,
)
from storage.images import NewImage, add_images

LITE0 = "efficientnet_lite0"


@pytest.fixture(scope="module", autouse=True)
def _shared_onnx_cache(onnx_cache):
    """Every test here uses the session-wide ONNX cache (conftest.onnx_cache)."""
    return onnx_cache


def photo_bytes(seed: int, size=(320, 240)) -> bytes:
    """A small, unique, photo-like JPEG: smooth color field plus shapes."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, size[0] - 60)), int(rng.integers(0, size[1] - 60))
        draw.ellipse((x0, y0, x0 + 50, y0 + 40), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def new_image(data: bytes, name: str) -> NewImage:
    image = Image.open(io.BytesIO(data))
    return NewImage(hashlib.sha256(data).hexdigest(), name, f"/photos/{name}", "test", image.width,
                    image.height, "JPEG", data, data)


def add_photos(project, seeds) -> list[int]:
    return add_images(project, [new_image(photo_bytes(seed), f"p{seed}.jpg") for seed in seeds])


def synthetic_batch(count: int, seed: int = 0) -> np.ndarray:
    spec = get_backbone(LITE0)
    from engine.features.preprocess import preprocess_bytes

    return np.stack([preprocess_bytes(photo_bytes(seed + i), spec) for i in range(count)])


def test_onnx_copy_matches_torch_and_is_cached_on_disk(onnx_cache):
    batch = synthetic_batch(3)
    onnx_runner = get_runner(LITE0, "pooled", runtime="onnx")
    torch_runner = get_runner(LITE0, "pooled", runtime="torch")
    fast, reference = onnx_runner.run(batch), torch_runner.run(batch)
    assert fast.shape == reference.shape == (3, 1280)
    assert np.isfinite(fast).all() and fast.std() > 0.01
    np.testing.assert_allclose(fast, reference, atol=1e-3)
    assert "onnxruntime" in onnx_runner.device and "PyTorch" in torch_runner.device
    # The explain tests may have added the heat-map variant ("-map1") of the same network: not a copy.
    cached = [p for p in (onnx_cache / "onnx").glob("efficientnet_lite0-pooled-*.onnx") if "-map" not in p.stem]
    assert cached == [onnx_runner.path]
    assert not list((onnx_cache / "onnx").glob(".*")), "no temporary files may be left behind"
    # A second export request reuses the verified file instead of exporting again.
    before = onnx_runner.path.stat().st_mtime_ns
    assert onnx_backend.export(get_backbone(LITE0), "pooled") == onnx_runner.path
    assert onnx_runner.path.stat().st_mtime_ns == before


def test_onnx_runner_splitting_a_batch_over_cores_gives_the_single_call_result():
    runner = get_runner(LITE0, "pooled", runtime="onnx")
    batch = synthetic_batch(5, seed=40)
    whole = runner.run_one(batch)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "parallel_calls", 3)  # chunks of 2, 2 and 1 run at once
        split = runner.run(batch)
    np.testing.assert_allclose(split, whole, atol=1e-5)
    np.testing.assert_allclose(runner.run_one(batch[3:4]), whole[3:4], atol=1e-5)


@pytest.mark.parametrize("count, size, workers", [(0, 8, 2), (5, 8, 2), (17, 8, 2), (398, 8, 2), (40, 32, 1), (9, 2, 4)])
def test_batch_plan_covers_every_key_once_in_order_and_shrinks_at_the_end(count, size, workers):
    from engine.features.extraction import _plan_batches

    batches = _plan_batches(list(range(count)), size, workers)
    assert [key for batch in batches for key in batch] == list(range(count))
    assert all(0 < len(batch) <= size for batch in batches)
    if workers > 1 and count > size * workers:
        # the last batches are small, so no worker runs a full batch alone at the end
        assert len(batches[-1]) <= -(-size // 2) and len(batches[-workers]) < size


def test_ensure_features_extracts_only_missing_images(project):
    first_ids = add_photos(project, range(5))
    progress: list[float] = []
    info = ensure_features(JobContext(lambda f, m: progress.append(f)), project, LITE0, batch_size=2)
    assert (info.extracted, info.cached, info.images, info.dim) == (5, 0, 5, 1280)
    assert progress[-1] == 1.0 and len(progress) >= 3  # per batch
    ids, X = load_features(project, LITE0)
    assert ids.tolist() == first_ids and X.shape == (5, 1280) and X.dtype == np.float32
    assert np.isfinite(X).all()

    again = ensure_features(JobContext(), project, LITE0)
    assert (again.extracted, again.cached) == (0, 5)

    more_ids = add_photos(project, range(5, 7))
    third = ensure_features(JobContext(), project, LITE0)
    assert (third.extracted, third.cached, third.images) == (2, 5, 7)
    ids_after, X_after = load_features(project, LITE0)
    assert ids_after.tolist() == first_ids + more_ids
    np.testing.assert_array_equal(X_after[:5], X)  # old vectors untouched


def test_stored_features_equal_features_of_the_same_files(project, tmp_path):
    seeds = [11, 12, 13]
    image_ids = add_photos(project, seeds)
    paths = []
    for seed in seeds:
        path = tmp_path / f"p{seed}.jpg"
        path.write_bytes(photo_bytes(seed))
        paths.append(path)
    ensure_features(JobContext(), project, LITE0, "block6")
    ids, stored = load_features(project, LITE0, "block6")
    ok_paths, X, failed = features_for_files(JobContext(), paths, LITE0, "block6")
    assert ids.tolist() == image_ids and not failed and ok_paths == [str(p) for p in paths]
    assert X.shape == (3, 192)
    np.testing.assert_allclose(X, stored, atol=1e-5)


def test_cancelled_run_keeps_finished_batches_and_resumes(project):
    add_photos(project, range(20, 26))
    stop = threading.Event()
    context = JobContext(lambda fraction, message: stop.set() if 0 < fraction < 1 else None, cancel_event=stop)
    with pytest.raises(JobCancelled):
        ensure_features(context, project, LITE0, batch_size=2)
    ids, _ = load_features(project, LITE0)
    assert len(ids) == 2  # exactly the first batch was committed
    resumed = ensure_features(JobContext(), project, LITE0, batch_size=2)
    assert (resumed.extracted, resumed.cached, resumed.images) == (4, 2, 6)


def test_a_failed_write_is_reported_once_not_retried(project, monkeypatch):
    """A write that fails (e.g. a full disk) ends the job with that error; the clean-up save in
    ensure_features must not try the same vectors again and replace it with a second error."""
    from engine.features import extraction

    add_photos(project, range(40, 43))
    calls = []

    def failing_store(*args):
        calls.append(len(args[2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(extraction, "store_vectors", failing_store)
    monkeypatch.setattr(extraction, "STORE_AT_LEAST", 2)  # the write fails inside the pipeline
    with pytest.raises(OSError) as raised:
        ensure_features(JobContext(), project, LITE0, batch_size=2)
    assert raised.value.__context__ is None  # the original error, not one raised while handling it
    assert calls == [2]  # the first batch's vectors, tried once


def test_torch_path_gives_the_same_features_as_onnx(project):
    add_photos(project, range(30, 33))
    ensure_features(JobContext(), project, LITE0, runtime="onnx")
    _, onnx_X = load_features(project, LITE0)
    delete_feature_set(project, LITE0, "pooled")
    info = ensure_features(JobContext(), project, LITE0, runtime="torch")
    assert "PyTorch" in info.device and info.extracted == 3
    _, torch_X = load_features(project, LITE0)
    np.testing.assert_allclose(torch_X, onnx_X, atol=1e-3)


def test_broken_stored_image_is_reported_and_the_rest_extracted(project):
    good = add_photos(project, [40, 41])
    broken = add_images(project, [new_image(photo_bytes(42), "cut.jpg")])[0]
    with project.writing() as session:
        from storage.models import Image as ImageRow

        session.get(ImageRow, broken).data = photo_bytes(42)[:300]
    info = ensure_features(JobContext(), project, LITE0)
    assert info.extracted == 2 and [image_id for image_id, _ in info.failed] == [broken]
    assert "truncated" in info.failed[0][1] or "decode" in info.failed[0][1]
    ids, _ = load_features(project, LITE0)
    assert ids.tolist() == good


def test_features_for_files_reports_unreadable_files(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(photo_bytes(50))
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    missing = tmp_path / "gone.jpg"
    ok_paths, X, failed = features_for_files(JobContext(), [text, good, missing], LITE0)
    assert ok_paths == [str(good)] and X.shape == (1, 1280)
    reasons = dict(failed)
    assert set(reasons) == {str(text), str(missing)}
    assert "not an image" in reasons[str(text)] and "not found" in reasons[str(missing)]


def test_featurestore_subsets_dimension_changes_and_deleted_images(project):
    ids = add_photos(project, [60, 61, 62])
    feature_set = ensure_feature_set(project, "net", "layer", 4)
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert store_vectors(project, feature_set.id, ids, vectors) == 3
    got_ids, got = load_vectors(project, "net", "layer", [ids[2], ids[0]])
    assert got_ids.tolist() == [ids[0], ids[2]]
    np.testing.assert_array_equal(got, vectors[[0, 2]])
    assert missing_image_ids(project, feature_set.id) == []
    with pytest.raises(ValueError):
        store_vectors(project, feature_set.id, ids[:1], np.zeros((1, 5), np.float32))
    # A vanished image is skipped, not a failed batch.
    assert store_vectors(project, feature_set.id, [ids[0], 999_999], np.ones((2, 4), np.float32)) == 1
    # The network changed shape: old vectors are dropped instead of mixed in.
    resized = ensure_feature_set(project, "net", "layer", 8)
    assert resized.id == feature_set.id and resized.dim == 8 and resized.vectors == 0
    assert find_feature_set(project, "net", "layer").vectors == 0
    empty_ids, empty = load_vectors(project, "other", "layer")
    assert empty_ids.shape == (0,) and empty.shape[0] == 0


def test_device_name_says_what_computes():
    assert "onnxruntime" in device_name("onnx")
    assert "PyTorch" in device_name("torch")


def test_extract_cli_json_and_errors(tmp_path, capsys):
    from main import run_cli
    from storage.project import create_project

    path = tmp_path / "cli.sortlab"
    with create_project(path) as project:
        add_photos(project, [70, 71])
    assert run_cli(["extract", str(path), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["extracted"] == 2 and first["cached"] == 0 and first["dim"] == 1280
    assert first["backbone"] == DEFAULT_BACKBONE and first["layer"] == "pooled" and "device" in first
    assert run_cli(["extract", str(path), "--layer", "block5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dim"] == 112
    assert run_cli(["extract", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cached"] == 2

    assert run_cli(["extract", str(path), "--layer", "fc9"]) == 2
    assert "no feature layer 'fc9'" in capsys.readouterr().err
    assert run_cli(["extract", str(path), "--backbone", "alexnet"]) == 2
    assert "Unknown network" in capsys.readouterr().err
    assert run_cli(["backbones", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["name"] == DEFAULT_BACKBONE and listed[0]["available"]
