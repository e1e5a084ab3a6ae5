"""Backbones and preprocessing: weights load offline, normalisation is each network's own, and
Lite0's ImageNet head recognizes ants and bees (proof that weights and preprocessing are right)."""

from __future__ import annotations

import io
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from engine.features.backbones import DEFAULT_BACKBONE, BackboneUnavailable, get_backbone, list_backbones
from engine.features.preprocess import decode_for_model, preprocess_pil, resize_and_crop
from engine.torch.extractors import classifier_head, feature_extractor
from engine.torch.networks import install_weights_file, load_backbone

ANT, BEE = 310, 309


@pytest.fixture(scope="module")
def lite0():
    spec = get_backbone("efficientnet_lite0")  # the recorded ImageNet answers below are Lite0's
    return spec, load_backbone(spec)


@pytest.fixture
def isolated_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, and any attempt to download fails the test."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))

    def no_download(*args, **kwargs):
        raise AssertionError("Sortlab must never download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(urllib.request, "urlopen", no_download)
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(previous)


def test_registry_lists_default_first_with_bundled_lite_networks():
    specs = list_backbones()
    assert specs[0].name == DEFAULT_BACKBONE == "efficientnet_lite1"
    sizes = {spec.name: spec.input_size for spec in specs if spec.available}
    assert sizes["efficientnet_lite0"] == 224 and sizes["efficientnet_lite1"] == 240
    assert sizes["efficientnet_lite2"] == 260
    for spec in specs:
        assert spec.default_layer == spec.layers[0] == "pooled"
        assert len(spec.layers) >= 2, f"{spec.name} must offer an earlier block too"
        assert spec.resize_size > spec.input_size


def test_lite_normalization_is_tensorflow_style():
    spec = get_backbone("efficientnet_lite0")
    for value in (0, 127, 255):
        image = Image.new("RGB", (300, 260), (value, value, value))
        pixels = preprocess_pil(image, spec)
        assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32
        np.testing.assert_allclose(pixels, (value - 127) / 128, atol=1e-5)


def test_torchvision_networks_use_imagenet_mean_and_std():
    spec = get_backbone("resnet18")
    image = Image.new("RGB", (256, 256), (124, 116, 104))  # ImageNet mean in 0..255, rounded
    pixels = preprocess_pil(image, spec)
    expected = (np.array([124, 116, 104]) / 255 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(pixels[:, 0, 0], expected, atol=1e-4)
    assert abs(pixels).max() < 0.05


def test_resize_and_crop_matches_resize_then_center_crop():
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    spec = get_backbone("efficientnet_lite0")
    rng = np.random.default_rng(0)
    # 640x512 -> 320x256 puts the 224 crop on whole pixels, so both ways sample the same points.
    photo = Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).resize((640, 512))
    ours = np.asarray(resize_and_crop(photo, spec), dtype=np.float32)
    textbook = np.asarray(CenterCrop(224)(Resize(256, interpolation=InterpolationMode.BICUBIC)(photo)), np.float32)
    assert ours.shape == (224, 224, 3)
    assert np.abs(ours - textbook).mean() < 1.0
    shifted = np.asarray(photo.resize((320, 256), Image.Resampling.BICUBIC).crop((40, 16, 264, 240)), np.float32)
    assert np.abs(shifted - textbook).mean() > 5 * max(np.abs(ours - textbook).mean(), 0.1)


def test_decode_for_model_is_upright_and_large_enough():
    spec = get_backbone("efficientnet_lite0")
    image = Image.new("RGB", (1600, 1000), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, 800, 1000))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    decoded = decode_for_model(buffer.getvalue(), spec)
    assert decoded.mode == "RGB"
    assert decoded.height > decoded.width  # rotated upright
    assert min(decoded.size) >= spec.resize_size  # draft never decodes below what the crop needs
    assert min(decoded.size) < 1000  # but it did decode at a reduced scale


def test_feature_extractor_dims_and_head_reproduce_the_full_network(lite0):
    spec, model = lite0
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        for layer in spec.layer_specs:
            features = feature_extractor(model, layer.name)(x)
            assert features.shape == (2, layer.dim)
            assert torch.isfinite(features).all()
        pooled = feature_extractor(model)(x)
        np.testing.assert_allclose(classifier_head(model)(pooled).numpy(), model(x).numpy(), atol=1e-4)


def test_unknown_names_give_clear_errors():
    with pytest.raises(BackboneUnavailable, match="Unknown network 'alexnet'.*efficientnet_lite0"):
        get_backbone("alexnet")
    with pytest.raises(BackboneUnavailable, match="no feature layer 'fc9'.*pooled"):
        get_backbone("efficientnet_lite0").layer("fc9")


def test_torchvision_backbone_without_weights_is_unavailable_and_never_downloads(isolated_hub):
    spec = get_backbone("resnet18")
    assert not spec.available
    assert "resnet18-f37072fd.pth" in spec.unavailable_reason and "never downloads" in spec.unavailable_reason
    with pytest.raises(BackboneUnavailable, match="resnet18"):
        load_backbone(spec)


def test_user_picked_weights_file_makes_a_torchvision_backbone_available(isolated_hub, tmp_path):
    from torchvision.models import resnet18

    picked = tmp_path / "my-resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), picked)
    wrong = tmp_path / "not-resnet.pth"
    torch.save({"weight": torch.zeros(3)}, wrong)
    with pytest.raises(BackboneUnavailable, match="does not hold ResNet-18 weights"):
        install_weights_file("resnet18", wrong)

    installed = install_weights_file("resnet18", picked)
    assert installed.parent == isolated_hub and installed.name == "resnet18-f37072fd.pth"
    spec = get_backbone("resnet18")
    assert spec.available
    model = load_backbone(spec)
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        assert feature_extractor(model, "pooled")(x).shape == (1, 512)
        assert feature_extractor(model, "layer3")(x).shape == (1, 256)
        np.testing.assert_allclose(classifier_head(model)(feature_extractor(model)(x)), model(x), atol=1e-5)


def test_lite0_imagenet_head_recognizes_ants_and_bees(hymenoptera_dir, lite0, onnx_cache):
    """>= 80 % of the validation images must come out as ImageNet 'ant' or 'bee' (0.83-0.86 expected)."""
    from engine.features.extraction import features_for_files
    from engine.runtime.jobs import JobContext

    spec, model = lite0
    files = sorted(p for p in (hymenoptera_dir / "val").rglob("*.jpg"))
    assert len(files) > 100
    ok_paths, X, failed = features_for_files(JobContext(), files, spec.name, "pooled")
    assert not failed and len(ok_paths) == len(files)
    head = classifier_head(model)
    logits = X @ head.weight.detach().numpy().T + head.bias.detach().numpy()
    top1 = logits.argmax(axis=1)
    share = np.isin(top1, [ANT, BEE]).mean()
    assert share >= 0.80, f"only {share:.2f} of ants/bees images were called ant or bee"


def grid_image(side: int = 448) -> Image.Image:
    """Thin black lines on white every 40 px: a lattice."""
    image = Image.new("RGB", (side, side), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for i in range(0, side, 40):
        draw.line((i, 0, i, side), fill=0, width=3)
        draw.line((0, i, side, i), fill=0, width=3)
    return image


def ball_image(side: int = 448) -> Image.Image:
    """A yellow disc on a blue background."""
    image = Image.new("RGB", (side, side), (20, 120, 220))
    ImageDraw.Draw(image).ellipse((100, 100, 350, 350), fill=(250, 200, 0))
    return image


WINDOW_SCREEN, SHOJI, CROSSWORD, PING_PONG_BALL, BALLOON = 904, 789, 918, 722, 417


def imagenet_probabilities(model, spec, image: Image.Image) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(preprocess_pil(image, spec))[None]).softmax(1)[0].numpy()


def test_lite0_imagenet_head_names_generated_images_and_notices_wrong_preprocessing(lite0, onnx_cache):
    """Runs everywhere (no data): generated pictures get the ImageNet classes recorded with the shipped
    weights and Sortlab's preprocessing, and the recorded values are sensitive enough to catch the
    usual mistakes (torchvision's ImageNet normalization instead of the Lite one, BGR instead of RGB)."""
    import dataclasses

    from engine.features.backbones import IMAGENET_MEAN, IMAGENET_STD
    from engine.features.extraction import get_runner

    spec, model = lite0
    grid = imagenet_probabilities(model, spec, grid_image())
    assert np.argsort(-grid)[:3].tolist() == [WINDOW_SCREEN, SHOJI, CROSSWORD]  # a lattice
    ball = imagenet_probabilities(model, spec, ball_image())
    assert np.argsort(-ball)[:2].tolist() == [PING_PONG_BALL, BALLOON]
    assert ball[PING_PONG_BALL] == pytest.approx(0.189, abs=0.03)

    wrong_normalization = dataclasses.replace(spec, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert imagenet_probabilities(model, wrong_normalization, ball_image()).argmax() == BALLOON
    with torch.no_grad():
        bgr = torch.from_numpy(preprocess_pil(ball_image(), spec)[::-1].copy())[None]
        swapped = model(bgr).softmax(1)[0].numpy()
    assert abs(swapped[PING_PONG_BALL] - ball[PING_PONG_BALL]) > 0.05

    # The product path (the ONNX copy on the CPU, then the head on its features) agrees with torch.
    pixels = np.stack([preprocess_pil(image, spec) for image in (grid_image(), ball_image())])
    features = get_runner(spec.name, "pooled", runtime="onnx").run(pixels)
    head = classifier_head(model)
    logits = torch.from_numpy(features) @ head.weight.detach().T + head.bias.detach()
    np.testing.assert_allclose(logits.softmax(1).numpy(), np.stack([grid, ball]), atol=1e-3)


@pytest.mark.parametrize("name, size", [
    ("efficientnet_lite1", 240),
    # The same check at 260 px; its export takes ~10-20 s on 2 cores, so it runs with `make test-slow`.
    pytest.param("efficientnet_lite2", 260, marks=pytest.mark.slow),
])
def test_lite1_and_lite2_load_strictly_and_their_onnx_copies_agree_with_torch(name, size, onnx_cache):
    from engine.features import onnx_backend

    spec = get_backbone(name)
    assert (spec.input_size, spec.available) == (size, True)
    model = load_backbone(spec)  # strict=True: every weight in the wheel's file fits the network exactly
    assert not model.training
    pixels = np.stack([preprocess_pil(image, spec) for image in (grid_image(), ball_image())])
    assert pixels.shape == (2, 3, size, size)
    with torch.no_grad():
        expected = feature_extractor(model, "pooled")(torch.from_numpy(pixels)).numpy()
    path = onnx_backend.export(spec, "pooled", model)
    got = onnx_backend.OnnxFeatureRunner(path, threads=1).run(pixels)
    assert got.shape == expected.shape == (2, spec.feature_dim("pooled"))
    np.testing.assert_allclose(got, expected, atol=1e-3)
    # Its own ImageNet head still calls the lattice a lattice-like thing at its native size.
    top5 = np.argsort(-imagenet_probabilities(model, spec, grid_image()))[:5].tolist()
    assert {WINDOW_SCREEN, SHOJI, CROSSWORD} & set(top5)
