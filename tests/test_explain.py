"""Where the model looks: class activation maps on onnxruntime and torch, the CLI, and the drawing.

The model under test is built so its evidence is known: a linear head whose weights select the
EfficientNet-Lite0 channels that a textured patch switches on (chosen on other images, patch
elsewhere), so the heat must peak on the patch, in whichever corner of a new image it sits.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine.features.backbones import get_backbone
from engine.features.onnx_cam import OnnxCamUnavailable, pooled_map_name
from engine.features.preprocess import preprocess_batch
from engine.insight.explain import backbone_map_runner, class_heat, explain_image, forget_cam_runners, linear_evidence
from engine.insight.heatmap import blend_heat, heat_over_image
from engine.models.classifiers import LinearPredictor
from engine.runtime.edition import torch_available
from engine.runtime.jobs import JobContext
from helpers.cli import cli, cli_json
from storage.catalog import ensure_classes
from storage.modelstore import NewModel, save_model_version
from tests.conftest import REPO_ROOT
from tests.test_torch_free import BLOCK_TORCH, shipped_models  # noqa: F401 (a fixture)

BACKBONE, LAYER = "efficientnet_lite0", "pooled"
SIZE, SIDE = 256, 80  # image and patch sides, in pixels
CORNERS = {"top-left": (24, 24), "top-right": (152, 24), "bottom-left": (24, 152), "bottom-right": (152, 152)}
needs_torch = pytest.mark.skipif(not torch_available(), reason="PyTorch is not installed (CPU edition)")


@pytest.fixture(scope="module", autouse=True)
def _shared_onnx_cache(onnx_cache):
    """The session's ONNX cache (conftest.onnx_cache); map runners loaded from it are dropped after."""
    yield onnx_cache
    forget_cam_runners()


def background(seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.uniform(90, 170, size=3) + rng.normal(0, 12, size=(size[1], size[0], 1)), 0, 255)


def with_patch(pixels: np.ndarray, at: tuple[int, int]) -> Image.Image:
    """A red and yellow checkerboard of SIDE pixels with its top-left corner at ``at``."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    board = np.where((((yy // 8) + (xx // 8)) % 2)[..., None] == 1, [220, 30, 30], [250, 230, 40])
    out = pixels.copy()
    out[at[1]:at[1] + SIDE, at[0]:at[0] + SIDE] = board
    return Image.fromarray(out.astype(np.uint8))


@pytest.fixture(scope="module")
def patch_predictor() -> LinearPredictor:
    """'patch' vs 'plain' from the 32 channels the patch raises most (six backgrounds with and without it)."""
    rng = np.random.default_rng(0)
    plain, patched = [], []
    for seed in range(100, 106):
        pixels = background(seed)
        plain.append(Image.fromarray(pixels.astype(np.uint8)))
        patched.append(with_patch(pixels, tuple(int(v) for v in rng.integers(16, 240 - SIDE, size=2))))
    batch = preprocess_batch(plain + patched, get_backbone(BACKBONE))
    features, _ = backbone_map_runner(BACKBONE, LAYER, "onnx").run(batch)
    plain_mean, patch_mean = features[:6].mean(0), features[6:].mean(0)
    coef = np.zeros((1, features.shape[1]))
    coef[0, np.argsort(patch_mean - plain_mean)[-32:]] = 1.0
    threshold = coef @ (0.7 * plain_mean + 0.3 * patch_mean)
    return LinearPredictor(np.array([0, 1]), np.zeros(features.shape[1]), np.ones(features.shape[1]), coef, -threshold)


def store_model(project, method: str, weights: bytes) -> int:
    ids = ensure_classes(project, ["plain", "patch"])
    return save_model_version(project, NewModel(method, BACKBONE, LAYER, ["plain", "patch"],
                                                [ids["plain"], ids["patch"]], weights))


@pytest.fixture
def patch_project(project, patch_predictor):
    store_model(project, "logreg", patch_predictor.to_bytes())
    return project


def inside_patch(peak: tuple[float, float], at: tuple[int, int], size: tuple[int, int] = (SIZE, SIZE)) -> bool:
    x, y = peak[0] * size[0], peak[1] * size[1]
    return at[0] <= x <= at[0] + SIDE and at[1] <= y <= at[1] + SIDE


@pytest.mark.parametrize("corner", list(CORNERS))
def test_the_peak_falls_on_the_corner_that_holds_the_evidence(patch_project, corner):
    at = CORNERS[corner]
    explanation = explain_image(JobContext(), patch_project, with_patch(background(7), at), "patch", runtime="onnx")
    assert explanation.class_name == "patch"
    assert inside_patch(explanation.peak, at), (corner, explanation.peak)
    # The map is brighter on the patch than anywhere on the far side of the image.
    heat = explanation.relative_heat()
    h, w = heat.shape
    rows = slice(0, h // 2) if at[1] < SIZE // 2 else slice(h - h // 2, h)
    far_rows = slice(h - h // 2, h) if at[1] < SIZE // 2 else slice(0, h // 2)
    cols = slice(0, w // 2) if at[0] < SIZE // 2 else slice(w - w // 2, w)
    assert heat[rows, cols].max() == 1.0 and heat[far_rows, :].max() < 0.5


def test_an_image_without_the_evidence_has_a_lower_probability(patch_project):
    plain = explain_image(JobContext(), patch_project, Image.fromarray(background(8).astype(np.uint8)), "patch",
                          runtime="onnx")
    patched = explain_image(JobContext(), patch_project, with_patch(background(8), CORNERS["top-left"]), "patch",
                            runtime="onnx")
    assert plain.probability < 0.5 < patched.probability


@needs_torch
def test_onnxruntime_and_torch_give_the_same_map(patch_project):
    image = with_patch(background(9), CORNERS["bottom-left"])
    onnx = explain_image(JobContext(), patch_project, image, "patch", runtime="onnx")
    torch_ = explain_image(JobContext(), patch_project, image, "patch", runtime="torch")
    from engine.torch.feature_runner import cuda_available

    assert "onnxruntime" in onnx.device and "PyTorch" in torch_.device
    # Two runtimes sum in different orders: on a CPU they agree to float32 rounding (1e-3 of the map's
    # range); on a GPU cuDNN may convolve in TF32 (10-bit mantissa), so 2e-2 there.
    tolerance = 2e-2 if cuda_available() else 1e-3
    np.testing.assert_allclose(onnx.heat, torch_.heat, rtol=tolerance, atol=tolerance * np.abs(torch_.heat).max())
    np.testing.assert_allclose(onnx.probabilities, torch_.probabilities, atol=tolerance / 10)
    np.testing.assert_allclose(onnx.peak, torch_.peak, atol=tolerance)


def test_onnx_maps_average_to_the_features_they_come_with():
    runner = backbone_map_runner(BACKBONE, LAYER, "onnx")
    features, maps = runner.run(preprocess_batch([with_patch(background(10), (60, 90))], get_backbone(BACKBONE)))
    assert maps.shape[:2] == features.shape and maps.shape[2:] == (7, 7)
    np.testing.assert_allclose(maps.mean(axis=(2, 3)), features, rtol=1e-4, atol=1e-5)


@needs_torch
@pytest.mark.parametrize("backbone,layer", [("efficientnet_lite0", "pooled"), ("efficientnet_lite0", "block6"),
                                            ("resnet18", "pooled"), ("convnext_tiny", "pooled")])
def test_torch_maps_average_to_the_extractor_features(backbone, layer):
    """Random weights suffice: the map must be what the extractor pools (ConvNeXt's LayerNorm folded in)."""
    import torch

    from engine.torch.cam import FeatureMaps
    from engine.torch.extractors import feature_extractor
    from engine.torch.networks import build_backbone

    torch.manual_seed(0)
    extractor = feature_extractor(build_backbone(get_backbone(backbone)).eval(), layer, backbone).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        maps, features = FeatureMaps(extractor)(x)
        expected = extractor(x)
    np.testing.assert_allclose(features.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    bias = 0.0 if backbone != "convnext_tiny" else extractor.post.bias.detach().numpy()
    np.testing.assert_allclose(maps.mean(dim=(2, 3)).numpy() + bias, expected.numpy(), rtol=1e-4, atol=1e-4)


def _graph(nodes, output_shape):
    from onnx import TensorProto, helper

    return helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 4, 5, 5])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, output_shape)],
        [helper.make_tensor("axes", TensorProto.INT64, [2], [-2, -1])],
    ))


def test_the_pooling_input_is_found_behind_shape_only_nodes():
    from onnx import helper

    relu = helper.make_node("Relu", ["pixels"], ["map"])
    global_pool = _graph([relu, helper.make_node("GlobalAveragePool", ["map"], ["pooled"]),
                          helper.make_node("Flatten", ["pooled"], ["features"])], [1, 4])
    reduce_mean = _graph([relu, helper.make_node("ReduceMean", ["map", "axes"], ["features"], keepdims=0)], [1, 4])
    assert pooled_map_name(global_pool, "features") == "map"
    assert pooled_map_name(reduce_mean, "features") == "map"
    max_pool = _graph([relu, helper.make_node("GlobalMaxPool", ["map"], ["pooled"]),
                       helper.make_node("Flatten", ["pooled"], ["features"])], [1, 4])
    with pytest.raises(OnnxCamUnavailable):
        pooled_map_name(max_pool, "features")


def test_a_linear_head_spreads_its_decision_over_the_map():
    """mean over positions of heat_c == the class's decision value less its intercept and offset (softmax
    heads: centred over the classes, which leaves the probabilities as they are)."""
    rng = np.random.default_rng(3)
    maps = rng.uniform(0, 6, size=(12, 4, 5))
    for n_scores in (1, 3):
        predictor = LinearPredictor(np.arange(max(2, n_scores)), rng.normal(size=12), rng.uniform(0.5, 2, 12),
                                    rng.normal(size=(n_scores, 12)), rng.normal(size=n_scores))
        decision = predictor.decision_function(maps.mean(axis=(1, 2))[None])[0]
        offset = (predictor.coef / predictor.scale) @ predictor.mean
        evidence = linear_evidence(predictor)
        for c in range(max(2, n_scores)):
            row = 0 if n_scores == 1 else c
            sign = (1 if c == 1 else -1) if n_scores == 1 else 1
            linear = decision - predictor.intercept + offset
            expected = sign * linear[row] if n_scores == 1 else linear[row] - linear.mean()
            # (decision_function multiplies the features in float32: within 1e-5 of float64 here)
            np.testing.assert_allclose(class_heat(evidence, c, maps).mean(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("calib_a", [-2.0, 2.0])
def test_calibrated_evidence_points_where_the_probability_rises(calib_a):
    rng = np.random.default_rng(4)
    predictor = LinearPredictor(np.array([0, 1]), np.zeros(6), np.ones(6), rng.normal(size=(1, 6)), np.zeros(1),
                                np.array([calib_a]), np.array([0.1]))
    evidence = linear_evidence(predictor)
    features = rng.uniform(0, 1, size=(1, 6))
    for c in (0, 1):
        more = features + 0.05 * evidence.weights[c]
        assert predictor.predict_proba(more)[0, c] > predictor.predict_proba(features)[0, c]


@needs_torch
def test_a_fine_tuned_network_is_explained_through_its_own_head(project, patch_predictor, tmp_path):
    import torch
    from safetensors.torch import save

    from engine.models.predicting import predict_files
    from engine.torch.finetune import build_network

    network = build_network(BACKBONE, LAYER, 2)
    with torch.no_grad():
        network.head.weight.copy_(torch.from_numpy(np.vstack([-patch_predictor.coef[0], patch_predictor.coef[0]])))
        network.head.bias.copy_(torch.from_numpy(np.array([-1.0, 1.0]) * patch_predictor.intercept[0]))
    store_model(project, "finetune", save({k: v.contiguous() for k, v in network.state_dict().items()}))
    path = tmp_path / "corner.png"
    with_patch(background(11), CORNERS["top-right"]).save(path)
    explanation = explain_image(JobContext(), project, path, "patch")
    assert "PyTorch" in explanation.device
    assert inside_patch(explanation.peak, CORNERS["top-right"])
    predicted = predict_files(JobContext(), project, [path]).predictions[0]
    np.testing.assert_allclose(explanation.probabilities, predicted.probabilities, atol=1e-5)


def test_cli_explain_prints_class_probability_and_peak_and_writes_the_heat_map(patch_project, tmp_path, capsys):
    image_path, out = tmp_path / "corner.png", tmp_path / "heat.png"
    with_patch(background(12), CORNERS["bottom-right"]).save(image_path)
    data = cli_json(capsys, "explain", patch_project.path, image_path, "--class", "patch", "--out", out)
    assert {"class", "probability", "peak"} <= set(data)
    assert data["class"] == "patch" and 0.0 <= data["probability"] <= 1.0
    assert set(data["peak"]) == {"x", "y"} and inside_patch((data["peak"]["x"], data["peak"]["y"]),
                                                             CORNERS["bottom-right"])
    with Image.open(out) as written:
        assert written.size == (SIZE, SIZE)
    default = cli_json(capsys, "explain", patch_project.path, image_path)
    assert default["class"] in ("plain", "patch") and isinstance(default["probability"], float)


def test_cli_explain_takes_a_project_image_id(patch_project, tmp_path, capsys):
    from engine.images.importing import import_paths

    image_path = tmp_path / "corner.png"
    with_patch(background(13), CORNERS["top-left"]).save(image_path)
    [image_id] = import_paths(JobContext(), patch_project, [image_path]).image_ids
    by_id = cli_json(capsys, "explain", patch_project.path, image_id, "--class", "patch")
    by_file = cli_json(capsys, "explain", patch_project.path, image_path, "--class", "patch")
    # The project stores a re-encoded copy: the same place, give or take compression.
    np.testing.assert_allclose([by_id["peak"]["x"], by_id["peak"]["y"]],
                               [by_file["peak"]["x"], by_file["peak"]["y"]], atol=0.05)


def test_cli_explain_names_the_choices_for_an_unknown_class(patch_project, tmp_path, capsys):
    image_path = tmp_path / "corner.png"
    with_patch(background(14), CORNERS["top-left"]).save(image_path)
    code, out, err = cli(capsys, "explain", patch_project.path, image_path, "--class", "wasp", "--json")
    assert code == 2 and out == ""
    assert "wasp" in err and "plain, patch" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "explain", patch_project.path, tmp_path / "missing.png")
    assert code == 2 and "missing.png" in err


def test_the_cpu_edition_explains_with_onnxruntime_alone(patch_project, shipped_models, tmp_path, capsys,
                                                         monkeypatch):
    """Without torch the map comes from the shipped ONNX copy, with its pooling split off here."""
    monkeypatch.setenv("SORTLAB_RUNTIME", "onnx")  # this side too, even where a GPU would choose torch
    image_path = tmp_path / "corner.png"
    with_patch(background(16), CORNERS["bottom-left"]).save(image_path)
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": f"{tmp_path / 'blocker'}:{REPO_ROOT}",
           "SORTLAB_ONNX_MODELS": str(shipped_models), "SORTLAB_CACHE_DIR": str(tmp_path / "empty-cache")}
    script = ("import sys, main; code = main.run_cli(sys.argv[1:]); "
              "assert not [m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith('engine.torch')]; "
              "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, "explain", str(patch_project.path), str(image_path),
                           "--class", "patch", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    alone = json.loads(done.stdout)
    here = cli_json(capsys, "explain", patch_project.path, image_path, "--class", "patch")
    assert inside_patch((alone["peak"]["x"], alone["peak"]["y"]), CORNERS["bottom-left"])
    # The same ONNX graph on the same pixels: equal up to float32 rounding of a thread-count change.
    np.testing.assert_allclose([alone["peak"]["x"], alone["peak"]["y"], alone["probability"]],
                               [here["peak"]["x"], here["peak"]["y"], here["probability"]], atol=1e-5)


@pytest.fixture
def wide_explanation(patch_project):
    """A 400 x 256 picture: the network sees its central 224 x 224 crop only."""
    image = with_patch(background(15, (400, SIZE)), (170, 40))
    return image, explain_image(JobContext(), patch_project, image, "patch", runtime="onnx")


def test_the_heat_is_drawn_over_the_crop_only(wide_explanation):
    image, explanation = wide_explanation
    heat = heat_over_image(explanation, *image.size)
    left = int(explanation.crop[0])
    assert heat.shape == (SIZE, 400) and heat[:, :left - 1].max() == 0.0 and heat.max() > 0.9
    peak_x, peak_y = (int(v * s) for v, s in zip(explanation.peak, image.size))
    assert heat[peak_y, peak_x] > 0.8
    blended = np.asarray(blend_heat(image, explanation))
    original = np.asarray(image)
    assert np.array_equal(blended[:, :left - 1], original[:, :left - 1])
    assert not np.array_equal(blended[peak_y, peak_x], original[peak_y, peak_x])


def test_the_viewer_overlay_paints_the_heat_where_the_model_looks(qapp, wide_explanation):
    from PySide6.QtGui import QImage, QPixmap

    from gui.heatmap_overlay import heat_caption, with_heat_map

    image, explanation = wide_explanation
    shown = image.resize((200, 128))  # the viewer paints on the pixmap at whatever size it holds
    pixmap = QPixmap.fromImage(QImage(shown.tobytes(), 200, 128, 600, QImage.Format.Format_RGB888).copy())
    painted = with_heat_map(pixmap, explanation).toImage()
    before = pixmap.toImage()
    peak_x, peak_y = (int(v * s) for v, s in zip(explanation.peak, (200, 128)))
    assert painted.pixelColor(peak_x, peak_y) != before.pixelColor(peak_x, peak_y)
    assert painted.pixelColor(2, 64) == before.pixelColor(2, 64)  # left of the crop: untouched
    assert "patch" in heat_caption(explanation)
    assert json.dumps(explanation.to_json())  # plain data for the hover card and the CLI
