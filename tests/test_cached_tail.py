"""Thorough on a CPU (engine.torch.cached_tail): the last stage and the head trained on cached body
activations of a real EfficientNet-Lite0, the body left exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")

from PIL import Image  # noqa: E402

from engine.features.backbones import get_backbone  # noqa: E402
from engine.runtime.jobs import JobCancelled, JobContext  # noqa: E402
from engine.torch import cached_tail, finetune  # noqa: E402

BACKBONE = "efficientnet_lite0"
SMALL = finetune.FineTuneConfig(head_epochs=8, full_epochs=2, head_lr=0.01, full_lr=1e-4, batch_size=4, patience=20)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)  # the new head's initial weights


@pytest.fixture(scope="module")
def spec():
    try:
        get_backbone(BACKBONE).require_weights()
    except Exception as exc:
        pytest.skip(f"no Lite0 weights: {exc}")
    return get_backbone(BACKBONE)


def pictures(n_per_class: int, seed: int = 0) -> tuple[list[Image.Image], list[int]]:
    """Red-ish and blue-ish noisy 96 px pictures with a bright square somewhere (left in class 0)."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for target, colour in enumerate(((200, 60, 50), (50, 70, 200))):
        for _ in range(n_per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (96, 96, 3)), 0, 255).astype(np.uint8)
            images.append(Image.fromarray(pixels))
            targets.append(target)
    return images, targets


def body_state(network) -> dict:
    tail = set(cached_tail.trainable_state(network))
    return {k: v.clone() for k, v in network.state_dict().items() if k not in tail}


def test_body_then_finish_is_the_network(spec):
    network = finetune.build_network(BACKBONE, "pooled", 2).eval()
    features = network.features
    x = torch.randn(2, 3, spec.input_size, spec.input_size)
    with torch.no_grad():
        whole = features(x)
        split = features.finish(features.body(x, features.last_stage_start), features.last_stage_start)
    assert features.last_stage_start == len(features.blocks) - 1  # Lite0's last stage is one block
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-4)


def test_the_frozen_body_runs_in_onnxruntime_with_the_activations_torch_computes(spec):
    from engine.torch.body_runner import BodyRunner

    network = finetune.build_network(BACKBONE, "pooled", 3).eval()
    features = network.features
    body = BodyRunner(features, spec, features.last_stage_start)
    assert body.onnx is not None, body.why_torch
    x = torch.randn(3, 3, spec.input_size, spec.input_size)
    with torch.no_grad():
        expected = features.body(x, features.last_stage_start)
        torch.testing.assert_close(body(x), expected, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(cached_tail.whole_network(network, body)(x), network(x), rtol=1e-3, atol=1e-3)


def test_a_body_that_cannot_be_exported_runs_in_torch(spec, monkeypatch, caplog):
    from engine.torch import body_runner

    def broken_export(*args, **kwargs):
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(body_runner, "to_onnx", broken_export)
    network = finetune.build_network(BACKBONE, "pooled", 2).eval()
    features = network.features
    body = body_runner.BodyRunner(features, spec, features.last_stage_start)
    assert body.onnx is None and body.why_torch == "exporter broke" and "exporter broke" in caplog.text
    x = torch.randn(2, 3, spec.input_size, spec.input_size)
    with torch.no_grad():
        assert torch.equal(body(x), features.body(x, features.last_stage_start))


def test_cached_views_hold_the_image_and_its_mirror_image(spec):
    network = finetune.build_network(BACKBONE, "pooled", 2)
    images, targets = pictures(3)
    events = []
    cached = cached_tail.cache_body(JobContext(lambda f, m: events.append(f)), network, spec, images, targets,
                                    batch_size=4)
    assert cached.activations.dtype == torch.float16 and cached.activations.shape[:2] == (2, 6)
    assert cached.targets.tolist() == targets and events[-1] == pytest.approx(1.0)
    assert not torch.equal(cached.activations[0], cached.activations[1])
    mirrored = cached_tail.cache_body(JobContext(), network, spec, [images[0].transpose(Image.FLIP_LEFT_RIGHT)], [0])
    torch.testing.assert_close(mirrored.activations[0, 0].float(), cached.activations[1, 0].float(),
                               rtol=1e-2, atol=1e-2)


def test_fitting_trains_the_last_stage_and_head_and_leaves_the_body(spec):
    network = finetune.build_network(BACKBONE, "pooled", 2)
    images, targets = pictures(6)
    cached = cached_tail.cache_body(JobContext(), network, spec, images, targets)
    body, tail = body_state(network), cached_tail.trainable_state(network)
    partials = []
    train, val = cached.subset(np.r_[0:4, 6:10]), cached.subset(np.r_[4:6, 10:12])
    report = cached_tail.fit_cached_tail(JobContext(on_partial=partials.append), network, train, val, SMALL)
    assert [e.stage for e in report.curves] == ["head"] * 8 + ["full"] * 2 and partials == report.curves
    assert report.best_epoch == 10  # the last stage's last epoch: it classifies no worse than the head
    for key, value in body_state(network).items():
        assert torch.equal(value, body[key]), key
    changed = [k for k, v in cached_tail.trainable_state(network).items() if not torch.equal(v, tail[k])]
    assert any(k.startswith("head.") for k in changed)
    assert any(k.startswith("features.blocks.") for k in changed)
    assert any(k.startswith("features.conv_head.") for k in changed)
    proba = cached_tail.cached_probabilities(network, cached)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert (proba.argmax(axis=1) == np.array(targets)).mean() >= 0.9
    with torch.no_grad():  # the cached path predicts what the whole network predicts from pixels
        from engine.torch.image_data import eval_transform

        pixels = torch.stack([eval_transform(spec)(image) for image in images])
        direct = torch.softmax(network.eval()(pixels), dim=1).numpy()
    np.testing.assert_allclose(proba, direct, atol=2e-2)


def test_without_validation_every_epoch_runs_and_the_last_is_kept(spec):
    network = finetune.build_network(BACKBONE, "pooled", 2)
    images, targets = pictures(3)
    cached = cached_tail.cache_body(JobContext(), network, spec, images, targets)
    report = cached_tail.fit_cached_tail(JobContext(), network, cached, None, SMALL)
    assert [e.stage for e in report.curves] == ["head"] * 8 + ["full"] * 2 and report.curves[0].val_loss is None
    assert report.best_epoch == 10 and not report.stopped_early
    head_only = finetune.build_network(BACKBONE, "pooled", 2)
    report = cached_tail.fit_cached_tail(JobContext(), head_only, cached, None, SMALL, last_stage=False)
    assert [e.stage for e in report.curves] == ["head"] * 8 and report.best_epoch == 8


def test_cancelling_stops_within_a_batch(spec):
    network = finetune.build_network(BACKBONE, "pooled", 2)
    images, targets = pictures(4)
    cached = cached_tail.cache_body(JobContext(), network, spec, images, targets)
    context = JobContext()
    batches = []

    def progress(fraction, message=""):
        batches.append(fraction)
        if len(batches) == 2:
            context.cancel()

    context.progress = progress
    with pytest.raises(JobCancelled):
        cached_tail.fit_cached_tail(context, network, cached, None, SMALL)
    assert len(batches) == 2


def test_with_validation_every_epoch_still_runs_and_the_last_stage_ends_as_its_last_epoch(spec):
    network = finetune.build_network(BACKBONE, "pooled", 2)
    images, targets = pictures(6)
    cached = cached_tail.cache_body(JobContext(), network, spec, images, targets)
    noisy = finetune.FineTuneConfig(head_epochs=6, full_epochs=3, head_lr=50.0, full_lr=1e-4, batch_size=4,
                                    patience=2)  # the head's validation loss degrades at once: no early stop
    val = cached.subset(np.r_[4:6, 10:12])
    report = cached_tail.fit_cached_tail(JobContext(), network, cached.subset(np.r_[0:4, 6:10]), val, noisy)
    assert [e.stage for e in report.curves] == ["head"] * 6 + ["full"] * 3 and not report.stopped_early
    last = report.curves[-1]
    assert report.best_epoch == 9 and last.val_loss is not None
    proba = cached_tail.cached_probabilities(network, val)
    assert (proba.argmax(axis=1) == val.targets.numpy()).mean() == pytest.approx(last.val_acc)


def test_a_last_stage_that_classifies_worse_than_the_head_is_dropped(spec):
    network = finetune.build_network(BACKBONE, "pooled", 2)
    images, targets = pictures(6)
    cached = cached_tail.cache_body(JobContext(), network, spec, images, targets)
    wild = finetune.FineTuneConfig(head_epochs=8, full_epochs=2, head_lr=0.01, full_lr=0.5, batch_size=4,
                                   patience=20)  # the last stage's learning rate wrecks it
    train, val = cached.subset(np.r_[0:4, 6:10]), cached.subset(np.r_[4:6, 10:12])
    report = cached_tail.fit_cached_tail(JobContext(), network, train, val, wild)
    head_end = [e for e in report.curves if e.stage == "head"][-1]
    assert report.curves[-1].stage == "full" and report.curves[-1].val_acc < head_end.val_acc - cached_tail.WORSE_BY
    assert report.best_epoch == head_end.epoch
    proba = cached_tail.cached_probabilities(network, cached.subset(np.r_[4:6, 10:12]))
    assert (proba.argmax(axis=1) == val.targets.numpy()).mean() == pytest.approx(head_end.val_acc)


def test_the_job_step_judges_on_validation_images_then_learns_again_from_every_labeled_image(spec, monkeypatch):
    from types import SimpleNamespace

    from engine.torch.network_training import fine_tune_cached_tail

    images, targets = pictures(6)
    rows = [SimpleNamespace(image_id=100 + i, class_id=7 + t) for i, t in enumerate(targets)]
    train, val = rows[0:4] + rows[6:10], rows[4:6] + rows[10:12]
    fits = []
    real_fit = cached_tail.fit_cached_tail
    monkeypatch.setattr(cached_tail, "fit_cached_tail",
                        lambda context, network, train_part, val_part, *args, **kwargs:
                        fits.append((len(train_part), val_part, kwargs.get("last_stage", True)))
                        or real_fit(context, network, train_part, val_part, *args, **kwargs))
    network = finetune.build_network(BACKBONE, "pooled", 2)
    streamed = []
    report, val_proba, predicted = fine_tune_cached_tail(
        JobContext(on_partial=streamed.append), network, spec, {row.image_id: image for row, image in zip(rows, images)},
        train, val, {7: 0, 8: 1}, SMALL, seed=0)
    kept_last_stage = report.curves[report.best_epoch - 1].stage == "full"
    assert [(n, v is None, e) for n, v, e in fits] == [(8, False, True), (12, True, kept_last_stage)]
    assert streamed == report.curves  # the refit is not charted
    assert val_proba.shape == (4, 2) and (val_proba.argmax(axis=1) == [0, 0, 1, 1]).all()
    assert sorted(predicted) == [row.image_id for row in rows]
    assert all(predicted[row.image_id].argmax() == row.class_id - 7 for row in rows)
