"""Bad-input fuzzing (Hypothesis): mutated image bytes into import and into feature extraction.

Each example takes a small valid PNG, GIF, BMP, JPEG, WEBP or TIFF and damages it: truncation,
random byte flips, another format's header, or huge declared dimensions written into the header
(with a valid CRC for PNG, so the decoder believes it). The file is imported with
``engine.images.importing.import_paths``; the outcome must be exactly one of imported / duplicate /
failed-with-a-reason, within the time bound (the Hypothesis deadline of the suite's profile in
conftest.py), and every image row in the project must be whole afterwards (no half-written row).
The same kind of files go through ``engine.features.extraction.features_for_files``, through
``engine.models.predicting.predict_files`` with a trained model, and through an export bundle's
standalone ``predict.py`` (``Predictor.predict_paths``).

Examples (normal suite / ``make test-slow``): import 60 / 2000, feature extraction 20 / 150 lists of
1-3 files, prediction 10 / 120 lists of 1-4 files, bundle predict.py 25 / 300 lists of 1-4 files.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers.proof import incomplete_image_rows, max_image_id, report_counts

HUGE_VALUES = [0, 1, 9000, 20_000, 46_341, 65_535, 2**16, 2**24, 2**31 - 1]


def _seed_images() -> dict[str, bytes]:
    rng = np.random.default_rng(12345)
    pixels = rng.integers(0, 256, size=(20, 28, 3), dtype=np.uint8)
    picture = Image.fromarray(pixels, "RGB")
    seeds = {}
    for fmt, image, options in [
        ("PNG", picture, {}),
        ("PNG", picture.convert("RGBA"), {}),
        ("GIF", picture.convert("P"), {}),
        ("BMP", picture, {}),
        ("JPEG", picture, {"quality": 80}),
        ("JPEG", picture, {"progressive": True}),
        ("WEBP", picture, {}),
        ("TIFF", picture, {}),
    ]:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        seeds[f"{fmt.lower()}-{image.mode}-{len(seeds)}"] = buffer.getvalue()
    return seeds


SEEDS = _seed_images()
MAGICS = [b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"\xff\xd8\xff\xe0", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00",
          b"%PDF-1.4", b"PK\x03\x04", b"\x00\x00\x00\x00"]


def _set_png_size(data: bytes, width: int, height: int) -> bytes:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return data
    header = bytearray(data)
    header[16:24] = struct.pack(">II", width, height)
    header[29:33] = struct.pack(">I", zlib.crc32(bytes(header[12:29])) & 0xFFFFFFFF)
    return bytes(header)


def _set_gif_size(data: bytes, width: int, height: int) -> bytes:
    if data[:3] != b"GIF" or len(data) < 13:
        return data
    width, height = min(width, 0xFFFF), min(height, 0xFFFF)
    out = bytearray(data)
    out[6:10] = struct.pack("<HH", width, height)
    position = 13 + (3 * 2 ** ((out[10] & 7) + 1) if out[10] & 0x80 else 0)
    while position < len(out) and out[position] == 0x21:  # skip extension blocks
        position += 2
        while position < len(out) and out[position]:
            position += out[position] + 1
        position += 1
    if position + 9 <= len(out) and out[position] == 0x2C:
        out[position + 5 : position + 9] = struct.pack("<HH", width, height)
    return bytes(out)


def _set_bmp_size(data: bytes, width: int, height: int) -> bytes:
    if data[:2] != b"BM" or len(data) < 26:
        return data
    out = bytearray(data)
    out[18:26] = struct.pack("<ii", min(width, 2**31 - 1), -min(height, 2**31 - 1) if height % 2 else min(height, 2**31 - 1))
    return bytes(out)


def _set_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        position = out.find(marker)
        if position > 0 and position + 9 <= len(out):
            out[position + 5 : position + 9] = struct.pack(">HH", min(height, 0xFFFF), min(width, 0xFFFF))
            return bytes(out)
    return data


def _huge(data: bytes, width: int, height: int) -> bytes:
    for setter in (_set_png_size, _set_gif_size, _set_bmp_size, _set_jpeg_size):
        changed = setter(data, width, height)
        if changed != data:
            return changed
    return data


@st.composite
def damaged_images(draw):
    """(kind of damage, seed name, bytes)."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = SEEDS[name]
    kind = draw(st.sampled_from(["truncate", "flip", "header", "huge", "huge+truncate", "huge+flip", "mixed"]))
    if "huge" in kind:
        data = _huge(data, draw(st.sampled_from(HUGE_VALUES)), draw(st.sampled_from(HUGE_VALUES)))
    if kind in ("truncate", "huge+truncate", "mixed"):
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if kind in ("flip", "huge+flip", "mixed") and data:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 12))):
            position = draw(st.integers(0, len(out) - 1))
            out[position] = draw(st.integers(0, 255))
        data = bytes(out)
    if kind == "header":
        magic = draw(st.sampled_from(MAGICS))
        data = magic + data[len(magic) :] if draw(st.booleans()) else magic + data
    return kind, name, data


def _reason_bucket(reason: str) -> str:
    return reason.split("(")[0].split(":")[0].strip() or "empty reason"


def _extension(name: str, kind: str) -> str:
    return {"png": ".png", "gif": ".gif", "bmp": ".bmp", "jpeg": ".jpg", "webp": ".webp", "tiff": ".tif"}[
        name.split("-")[0]
    ]


def _import_fuzz(tmp_path: Path, request, max_examples: int, label: str) -> None:
    from engine.images.importing import import_paths
    from engine.runtime.jobs import JobContext
    from storage.project import create_project

    project = create_project(tmp_path / "fuzz.sortlab")
    counts: Counter = Counter()
    folder = tmp_path / "files"
    folder.mkdir()
    checked = {"up_to": 0}

    @settings(max_examples=max_examples)
    @given(damaged_images())
    def one(example):
        kind, name, data = example
        counts["examples"] += 1
        counts[f"damage:{kind}"] += 1
        path = folder / f"example{counts['examples']}{_extension(name, kind)}"
        path.write_bytes(data)
        report = import_paths(JobContext(), project, [path])
        outcomes = report.imported + report.duplicates + len(report.failed)
        assert outcomes == 1, f"one file must give exactly one outcome, got {report}"
        if report.failed:
            failure = report.failed[0]
            assert failure.path == str(path)
            assert isinstance(failure.reason, str) and failure.reason.strip(), "a failure needs a reason"
            assert "Traceback" not in failure.reason
            counts[f"failed:{_reason_bucket(failure.reason)}"] += 1
        elif report.imported:
            counts["imported"] += 1
        else:
            counts["duplicate"] += 1
        problems = incomplete_image_rows(project.path, after_id=checked["up_to"])
        assert not problems, problems
        checked["up_to"] = max_image_id(project.path)

    try:
        one()
    finally:
        project.close()
    report_counts(request, f"fuzz import ({label})", dict(counts))
    assert counts["examples"] >= min(max_examples, 20)
    # The fuzzer must exercise both sides, or it proves little.
    assert any(key.startswith("failed:") for key in counts), counts


def test_fuzzed_images_import_or_fail_per_file(tmp_path, request):
    _import_fuzz(tmp_path, request, max_examples=60, label="normal")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fuzzed_images_import_or_fail_per_file_long(tmp_path, request):
    _import_fuzz(tmp_path, request, max_examples=2000, label="slow")


def test_huge_declared_dimensions_are_refused_quickly(project, tmp_path):
    """A 2^31 x 2^31 PNG header (valid CRC) must be refused as a bomb, not allocated."""
    from engine.images.importing import import_paths
    from engine.runtime.jobs import JobContext

    paths = []
    for fmt, data in [("png", _set_png_size(SEEDS["png-RGB-0"], 2**31 - 1, 2**31 - 1)),
                      ("gif", _set_gif_size(SEEDS["gif-P-2"], 65_535, 65_535)),
                      ("bmp", _set_bmp_size(SEEDS["bmp-RGB-3"], 2**30, 2**30)),
                      ("jpg", _set_jpeg_size(SEEDS["jpeg-RGB-4"], 65_535, 65_535))]:
        path = tmp_path / f"huge.{fmt}"
        path.write_bytes(data)
        paths.append(path)
    report = import_paths(JobContext(), project, paths)
    assert report.imported == 0
    assert len(report.failed) == 4, report
    reasons = {Path(f.path).suffix: f.reason for f in report.failed}
    assert "bomb" in reasons[".png"] or "large" in reasons[".png"], reasons
    assert all(reason.strip() for reason in reasons.values())


# --- feature extraction / prediction of files ---------------------------------------------------


def _write_examples(folder: Path, prefix: str, examples, counts: Counter) -> list[Path]:
    """Write one Hypothesis example's damaged images to uniquely named files (counted in ``counts``)."""
    paths = []
    for kind, name, data in examples:
        counts["files"] += 1
        path = folder / f"{prefix}{counts['files']}{_extension(name, kind)}"
        path.write_bytes(data)
        paths.append(path)
    return paths


def _features_fuzz(tmp_path: Path, request, max_examples: int, label: str) -> None:
    import engine.features.extraction as features
    from engine.features.backbones import DEFAULT_BACKBONE
    from engine.runtime.jobs import JobContext

    counts: Counter = Counter()
    folder = tmp_path / "files"
    folder.mkdir()
    # Warm the backbone once, outside the timed examples.
    good = folder / "good.png"
    good.write_bytes(SEEDS["png-RGB-0"])
    ok, X, failed = features.features_for_files(JobContext(), [good], DEFAULT_BACKBONE, None)
    assert [str(p) for p in ok] == [str(good)] and not failed

    @settings(max_examples=max_examples)
    @given(st.lists(damaged_images(), min_size=1, max_size=3))
    def one(examples):
        paths = _write_examples(folder, "f", examples, counts)
        ok_paths, X, failed = features.features_for_files(JobContext(), paths, DEFAULT_BACKBONE, None)
        ok_set = {str(p) for p in ok_paths}
        failed_set = {str(p) for p, _ in failed}
        assert ok_set | failed_set == {str(p) for p in paths} and not ok_set & failed_set
        assert X.shape[0] == len(ok_paths) and np.isfinite(X).all()
        for _, reason in failed:
            assert isinstance(reason, str) and reason.strip()
            counts[f"failed:{_reason_bucket(reason)}"] += 1
        counts["ok"] += len(ok_paths)

    one()
    report_counts(request, f"fuzz features ({label})", dict(counts))
    assert any(key.startswith("failed:") for key in counts), counts


def test_fuzzed_images_into_feature_extraction(tmp_path, request):
    _features_fuzz(tmp_path, request, max_examples=20, label="normal")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fuzzed_images_into_feature_extraction_long(tmp_path, request):
    _features_fuzz(tmp_path, request, max_examples=150, label="slow")


def _trained_project(tmp_path: Path):
    """A small project with a trained logreg model (two classes of distinct colours)."""
    from engine.images.importing import import_paths
    from engine.runtime.jobs import JobContext
    from engine.models.training import train_model
    from storage.project import create_project

    rng = np.random.default_rng(3)
    for class_index, (name, colour) in enumerate([("red", (200, 30, 30)), ("blue", (30, 30, 200))]):
        folder = tmp_path / "train" / name
        folder.mkdir(parents=True)
        for index in range(8):
            pixels = np.clip(rng.normal(colour, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.png")
    project = create_project(tmp_path / "trained.sortlab")
    report = import_paths(JobContext(), project, [tmp_path / "train"], labels_from_folders=True)
    assert report.imported == 16
    result = train_model(JobContext(), project, method="logreg")
    return project, result.model_version


def _predict_fuzz(tmp_path: Path, request, max_examples: int, label: str) -> None:
    import engine.models.predicting as predicting
    from engine.runtime.jobs import JobContext

    project, version = _trained_project(tmp_path)
    counts: Counter = Counter()
    folder = tmp_path / "files"
    folder.mkdir()

    @settings(max_examples=max_examples)
    @given(st.lists(damaged_images(), min_size=1, max_size=4))
    def one(examples):
        paths = [str(path) for path in _write_examples(folder, "p", examples, counts)]
        result = predicting.predict_files(JobContext(), project, paths, version)
        predicted = [p.path for p in result.predictions]
        failed = [p for p, _ in result.failed]
        assert sorted(predicted + failed) == sorted(paths), "each file: one prediction or one failure"
        for row in result.predictions:
            assert row.class_name in ("red", "blue") and 0.0 <= row.probability <= 1.0
            assert np.isclose(sum(row.probabilities), 1.0, atol=1e-3)
        for _, reason in result.failed:
            assert reason.strip()
            counts[f"failed:{_reason_bucket(reason)}"] += 1
        counts["predicted"] += len(predicted)

    try:
        one()
    finally:
        project.close()
    report_counts(request, f"fuzz predict_files ({label})", dict(counts))
    assert any(key.startswith("failed:") for key in counts), counts


def test_fuzzed_images_into_prediction(tmp_path, request):
    _predict_fuzz(tmp_path, request, max_examples=10, label="normal")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fuzzed_images_into_prediction_long(tmp_path, request):
    _predict_fuzz(tmp_path, request, max_examples=120, label="slow")


# --- the export bundle's standalone predict.py ---------------------------------------------------


def _tiny_bundle() -> dict[str, bytes]:
    """model.json with Sortlab's real preprocessing, and a tiny ONNX network with the bundle's input and
    output (mean colour per channel -> softmax over 3 classes): decoding is what is fuzzed here."""
    import json

    import onnx
    from onnx import TensorProto, helper

    from engine.features.backbones import DEFAULT_BACKBONE, get_backbone
    from engine.ship.model_card import preprocessing_description
    from engine.ship.network import INPUT_NAME, OUTPUT_NAME

    side = get_backbone(DEFAULT_BACKBONE).input_size
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", [INPUT_NAME], ["mean"], axes=[2, 3], keepdims=0),
         helper.make_node("Softmax", ["mean"], [OUTPUT_NAME], axis=1)],
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, side, side])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    config = {"classes": ["red", "green", "blue"], "preprocessing": preprocessing_description(DEFAULT_BACKBONE)}
    return {"model.onnx": model.SerializeToString(), "model.json": json.dumps(config).encode()}


def _bundle_predict_fuzz(tmp_path: Path, request, max_examples: int, label: str) -> None:
    import importlib.util

    from helpers.proof import REPO_ROOT

    spec = importlib.util.spec_from_file_location("bundle_predict_fuzz",
                                                  REPO_ROOT / "engine" / "ship" / "bundle_template" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    predictor = module.Predictor(_tiny_bundle())
    counts: Counter = Counter()
    folder = tmp_path / "files"
    folder.mkdir()
    good = folder / "good.png"
    good.write_bytes(SEEDS["png-RGB-0"])
    assert next(predictor.predict_paths([str(good)]))[3] is None

    @settings(max_examples=max_examples)
    @given(st.lists(damaged_images(), min_size=1, max_size=4))
    def one(examples):
        # A good picture rides along in each batch: damaged files must not cost it its answer.
        paths = [str(path) for path in _write_examples(folder, "b", examples, counts)] + [str(good)]
        results = list(predictor.predict_paths(paths))
        assert results[-1][3] is None, results[-1]
        assert [r[0] for r in results] == paths, "each file: exactly one result, in order"
        for _path, class_name, probability, reason in results:
            if reason is None:
                assert class_name in predictor.classes and 0.0 <= probability <= 1.0
                counts["predicted"] += 1
            else:
                assert class_name is None and isinstance(reason, str) and reason.strip()
                counts[f"failed:{_reason_bucket(reason)}"] += 1

    one()
    report_counts(request, f"fuzz bundle predict.py ({label})", dict(counts))
    assert counts["predicted"] > 0 and any(key.startswith("failed:") for key in counts), counts


def test_fuzzed_images_into_bundle_predict_script(tmp_path, request):
    _bundle_predict_fuzz(tmp_path, request, max_examples=25, label="normal")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fuzzed_images_into_bundle_predict_script_long(tmp_path, request):
    _bundle_predict_fuzz(tmp_path, request, max_examples=300, label="slow")
