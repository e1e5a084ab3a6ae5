"""Training jobs on cached (synthetic) features: evaluation choice, stored versions, predictions, runs."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.feature_projects import BACKBONE, LAYER, add_placeholder_images, make_feature_project

from engine.features.backbones import get_backbone
from engine.models.classifiers import LinearPredictor, NotEnoughLabelsError
from engine.models.metrics import Metrics
from engine.models.results import EpochResult
from engine.models.training import train_model, train_on_cached_features
from engine.runtime.jobs import JobCancelled, JobContext
from storage import catalog, modelstore
from storage.featurestore import ensure_feature_set, store_vectors
from storage.splits import labeled_images


def train(project, method="logreg", quick=None, context=None):
    return train_on_cached_features(context or JobContext(), project, method, BACKBONE, LAYER, seed=0, quick=quick)


def test_small_dataset_is_cross_validated_with_out_of_fold_predictions(project):
    fp = make_feature_project(project, [20, 15, 12], unlabeled=10)
    result = train(project)
    m = result.metrics
    assert (m.evaluation, m.folds, m.n_labeled) == ("5-fold CV", 5, 47)
    assert m.accuracy > 0.9 and m.balanced_accuracy > 0.9
    assert sum(v.support for v in m.per_class.values()) == 47
    assert set(m.per_source) == {"cam-a", "cam-b"}
    assert m.confusion_matrix.labels == ["c0", "c1", "c2"]
    assert Metrics.from_json(modelstore.active_model(project).metrics) == m  # what the project stores
    table = modelstore.predictions(project)
    assert set(table) == set(fp.image_ids)
    for image_id, class_id in zip(fp.image_ids, fp.class_ids):
        assert table[image_id].out_of_fold == (class_id is not None)
        p = table[image_id]
        assert 0 < p.margin <= p.probability <= 1
    assert modelstore.active_model(project).version == result.model_version


def test_large_dataset_uses_the_stored_holdout_split_and_scores_every_labeled_image_out_of_fold(project):
    fp = make_feature_project(project, [130, 120], unlabeled=20, dim=64)
    result = train(project)
    m = result.metrics
    assert m.evaluation == "holdout"
    assert m.n_train + m.n_val == 250 and 45 <= m.n_val <= 55
    assert sum(v.support for v in m.per_class.values()) == m.n_val
    val_side = {i.image_id for i in labeled_images(project) if i.split == "val"}
    assert len(val_side) == m.n_val
    table = modelstore.predictions(project)
    labeled = {i for i, c in zip(fp.image_ids, fp.class_ids) if c is not None}
    assert {i for i, p in table.items() if p.out_of_fold} == labeled  # training side too, not only validation
    assert (m.n_val_with_twin_before_guard, m.n_val_with_twin, m.accuracy_without_twins) == (0, 0, None)


def test_quick_retrain_after_one_label_change_reuses_C_and_activates_the_new_version(project):
    fp = make_feature_project(project, [40, 40, 40], unlabeled=30, spread=3.0)
    first = train(project, method="svm")  # a method that searches C
    assert first.params["quick"] is False and first.params["cv_results"]
    catalog.set_labels(project, fp.image_ids[:1], fp.class_by_name["c1"])
    second = train(project, method="svm")  # auto: barely changed labels -> quick
    assert second.params["quick"] is True and second.params["C"] == first.params["C"]
    assert not second.params["cv_results"]
    versions = modelstore.list_models(project)
    assert [(v.version, v.is_active) for v in versions] == [(first.model_version, False), (second.model_version, True)]
    assert len(modelstore.predictions(project, first.model_version)) == len(fp.image_ids)
    assert train(project, method="svm", quick=False).params["quick"] is False


def test_a_model_saved_before_unit_length_rows_still_predicts_and_is_not_reused_for_a_quick_retrain(project):
    """Models saved with standardized raw features (no ``unit_norm``) predict new images as they always did;
    the next training does not reuse their C (chosen for standardized features) but trains the new recipe."""
    from engine.models.classifiers import DEFAULT_C, LogisticClassifier
    from engine.models.predicting import refresh_if_model
    from storage.featurestore import load_vectors

    dim = get_backbone(BACKBONE).feature_dim(LAYER)  # the real size: refreshing extracts into a mismatched set
    fp = make_feature_project(project, [20, 20], dim=dim, spread=2.0)
    ids, X = load_vectors(project, BACKBONE, LAYER)
    assert ids.tolist() == fp.image_ids
    labeled = [i for i, c in enumerate(fp.class_ids) if c is not None]
    y = np.array([fp.class_ids[i] for i in labeled])
    old = LogisticClassifier(C=0.03, unit_length=False, standardize=True).fit(X[labeled], y).predictor_
    assert not old.scales_rows and "unit_norm" not in old.arrays()
    version = modelstore.save_model_version(project, modelstore.NewModel(
        "logreg", BACKBONE, LAYER, ["c0", "c1"], [int(c) for c in old.classes], old.to_bytes(),
        {"C": 0.03, "seed": 0, "quick": False, "n_features": dim, "cv_results": []}, {}, len(labeled)))
    new_ids = add_placeholder_images(project, 3, start=900)
    new_X = (fp.centers[[0, 1, 0]] + 0.1).astype(np.float32)
    store_vectors(project, ensure_feature_set(project, BACKBONE, LAYER, dim).id, new_ids, new_X)
    refresh_if_model(JobContext(), project)
    stored_ids, stored = modelstore.prediction_probabilities(project, version)
    stored = stored[np.isin(stored_ids, new_ids)]
    expected = LinearPredictor.from_bytes(modelstore.model_weights(project, version)).predict_proba(new_X)
    np.testing.assert_allclose(stored, expected, atol=1e-6)  # stored as float32
    np.testing.assert_array_equal(expected, old.predict_proba(new_X))  # loaded = saved, bit for bit
    by_formula = 1 / (1 + np.exp(-(((new_X - old.mean) / old.scale) @ old.coef[0] + old.intercept[0])))
    # standardize, project: no unit length (predicted as one float32 product: within 1e-6 of float64)
    np.testing.assert_allclose(expected[:, 1], by_formula, atol=1e-6)
    catalog.set_labels(project, fp.image_ids[:1], fp.class_by_name["c1"])  # a small change: quick if it could
    result = train(project)
    assert result.params["quick"] is False and result.params["C"] == DEFAULT_C
    assert LinearPredictor.from_bytes(modelstore.model_weights(project, result.model_version)).scales_rows


def test_svm_model_is_calibrated_and_stored_as_safetensors(project):
    make_feature_project(project, [25, 25])
    result = train(project, method="svm")
    assert result.metrics.accuracy > 0.9
    weights = modelstore.model_weights(project, result.model_version)
    predictor = LinearPredictor.from_bytes(weights)
    assert predictor.calib_a is not None and predictor.calib_a.shape == (1,)


def test_tiny_dataset_trains_but_is_not_evaluated(project):
    fp = make_feature_project(project, [1, 2, 1])
    result = train(project)
    assert result.metrics.evaluation == "not evaluated" and not result.metrics.evaluated
    assert "at least 2" in result.metrics.evaluation_note
    # The stored headline keys are there, as null, never missing (CLI `train --json` readers index them).
    stored = modelstore.active_model(project).metrics
    assert stored["accuracy"] is None and stored["balanced_accuracy"] is None
    table = modelstore.predictions(project)
    assert len(table) == 4
    # The two c1 images are scored by models that did not see them; an image alone in its class cannot be.
    assert {i for i, p in table.items() if p.out_of_fold} == set(fp.image_ids[1:3])


def test_cross_validation_chooses_C_inside_each_fold_unless_retraining_quickly(project, monkeypatch):
    from engine.models import training

    make_feature_project(project, [20, 20], dim=64)  # 64-d: no near-duplicates, so the folds are plain
    fold_models = []
    real = training.held_out_probabilities

    def spy(context, fit_fold, *args, **kwargs):
        def fit(Xf, yf):
            fold_models.append(fit_fold(Xf, yf))
            return fold_models[-1]
        return real(context, fit, *args, **kwargs)

    monkeypatch.setattr(training, "held_out_probabilities", spy)
    first = train(project, method="svm", quick=False)  # a method that searches C
    searched = [r["C"] for r in first.params["cv_results"]]
    assert first.metrics.folds == 5 and len(fold_models) == 5 and len(searched) > 1
    # nested: every fold ran its own search over every C, on its own training part only
    assert all([r["C"] for r in m.cv_results_] == searched for m in fold_models)
    fold_models.clear()
    train(project, method="svm", quick=True)  # a quick retrain keeps the previous C in every fold
    assert len(fold_models) == 5 and all(not m.cv_results_ and m.C_ == first.params["C"] for m in fold_models)


def test_two_per_class_is_cross_validated_with_two_folds(project):
    make_feature_project(project, [2, 2, 2], spread=0.3)
    assert train(project).metrics.folds == 2


def test_a_wrong_label_shows_the_right_class_as_suggestion_after_the_retrain(project):
    """The user files a c0 image under c1 and the automatic (quick) retrain runs: the image's stored
    suggestion comes from a model that never saw that label, so "Label disagrees" lists it with c0
    suggested, and the review queue puts it first."""
    from engine.curation.review import stored_review
    from storage import browse

    dim = get_backbone(BACKBONE).feature_dim(LAYER)  # the real size: train_model checks the feature cache
    fp = make_feature_project(project, [110, 110], unlabeled=10, dim=dim, spread=2.0)
    assert train_model(JobContext(), project, backbone=BACKBONE, layer=LAYER).metrics.evaluation == "holdout"
    sides = {img.image_id: img.split for img in labeled_images(project)}
    wrong = next(i for i, c in zip(fp.image_ids, fp.class_ids) if c == fp.class_by_name["c0"] and sides[i] == "train")
    catalog.set_labels(project, [wrong], fp.class_by_name["c1"])

    retrained = train_model(JobContext(), project, backbone=BACKBONE, layer=LAYER)
    assert retrained.params["quick"] is True
    version = modelstore.active_version(project)
    prediction = modelstore.predictions(project)[wrong]
    assert prediction.out_of_fold and prediction.class_name == "c0" and prediction.probability > 0.5
    disagrees = browse.filtered_image_ids(project, browse.GridQuery(kind=browse.DISAGREES), version)
    assert wrong in disagrees.tolist()
    queue = browse.GridQuery(kind=browse.REVIEW, sort=browse.RANKED, threshold=1.0, limit=3)
    assert browse.filtered_image_ids(project, queue, version).tolist()[0] == wrong
    review = stored_review(project)
    first = review.suspects()[0]
    assert (first.image_id, first.label, first.suggested) == (wrong, fp.class_by_name["c1"], fp.class_by_name["c0"])
    assert review.suggested_count >= 1 and review.unchecked == []


def test_user_errors_come_before_any_feature_extraction(project):
    with pytest.raises(NotEnoughLabelsError, match="No labeled images"):
        train_model(JobContext(), project)
    make_feature_project(project, [5])
    with pytest.raises(NotEnoughLabelsError, match="one class"):
        train_model(JobContext(), project)
    with pytest.raises(ValueError, match="Unknown training method"):
        train_model(JobContext(), project, method="magic")


def test_cancelled_training_stores_no_model_and_records_the_run(project):
    make_feature_project(project, [20, 20])
    context = JobContext()
    context.progress = lambda fraction, message="": context.cancel() if fraction > 0.2 else None
    with pytest.raises(JobCancelled):
        train(project, context=context)
    assert modelstore.list_models(project) == []
    assert [r.status for r in modelstore.list_training_runs(project)] == ["cancelled"]


def test_refreshing_keeps_out_of_fold_predictions_and_fills_new_images(project):
    make_feature_project(project, [15, 15], dim=8)
    result = train(project)
    before = modelstore.predictions(project)
    new_ids = add_placeholder_images(project, 3, start=500)
    ids, proba = modelstore.prediction_probabilities(project, result.model_version)
    fresh = np.tile(np.array([[0.25, 0.75]], dtype=np.float32), (len(ids) + 3, 1))
    all_ids = np.concatenate([ids, new_ids])
    stored = modelstore.store_predictions(project, result.model_version, modelstore.PredictionBatch(all_ids, fresh))
    after = modelstore.predictions(project)
    assert stored == 3 and set(after) == set(before) | set(new_ids)
    assert all(after[i] == before[i] for i in before)  # every labeled one was out-of-fold
    assert after[new_ids[0]].class_name == "c1" and after[new_ids[0]].margin == pytest.approx(0.5)


def test_refreshing_many_predictions_writes_short_transactions(project, monkeypatch):
    """A label written from the GUI must never wait for a whole refresh: rows go in chunks."""
    make_feature_project(project, [15, 15], dim=8)
    result = train(project)
    new_ids = add_placeholder_images(project, 7, start=500)
    monkeypatch.setattr(modelstore, "PREDICTION_CHUNK", 3)
    transactions = []
    real_writing = type(project).writing

    def counting_writing(self):
        transactions.append(1)
        return real_writing(self)

    monkeypatch.setattr(type(project), "writing", counting_writing)
    fresh = np.tile(np.array([[0.6, 0.4]], dtype=np.float32), (7, 1))
    stored = modelstore.store_predictions(project, result.model_version, modelstore.PredictionBatch(np.asarray(new_ids), fresh))
    assert stored == 7 and len(transactions) == 3  # 3 + 3 + 1 rows
    after = modelstore.predictions(project, result.model_version)
    assert all(after[i].class_name == "c0" and after[i].probability == pytest.approx(0.6) for i in new_ids)


def test_refresh_if_model_predicts_exactly_the_images_imported_after_training(project):
    from engine.models.predicting import RefreshOutcome, refresh_if_model

    assert refresh_if_model(JobContext(), project) is None  # no model yet: nothing to do
    dim = get_backbone(BACKBONE).feature_dim(LAYER)  # the real size: ensure_features empties a mismatched set
    fp = make_feature_project(project, [15, 15], dim=dim, spread=0.5)
    result = train(project)
    before = modelstore.predictions(project)
    new_ids = add_placeholder_images(project, 4, start=700)
    feature_set = ensure_feature_set(project, BACKBONE, LAYER, dim)
    store_vectors(project, feature_set.id, new_ids, fp.centers[[0, 1, 1, 0]].astype(np.float32))
    assert refresh_if_model(JobContext(), project) == RefreshOutcome(result.model_version, 4)
    after = modelstore.predictions(project)
    assert set(after) == set(before) | set(new_ids)
    assert [after[i].class_name for i in new_ids] == ["c0", "c1", "c1", "c0"]
    assert all(after[i] == before[i] for i in before)  # older predictions untouched
    assert refresh_if_model(JobContext(), project) == RefreshOutcome(result.model_version, 0)


def test_models_can_be_activated_and_missing_versions_are_clear_errors(project):
    make_feature_project(project, [10, 10])
    first, second = train(project), train(project, quick=False)
    modelstore.set_active_model(project, first.model_version)
    assert modelstore.active_model(project).version == first.model_version
    with pytest.raises(modelstore.NoModelError, match="no model version 99"):
        modelstore.set_active_model(project, 99)
    modelstore.delete_model(project, first.model_version)
    assert modelstore.active_model(project).version == second.model_version


def test_images_without_features_are_left_out_not_crashing(project):
    fp = make_feature_project(project, [10, 10], dim=8)
    extra = add_placeholder_images(project, 2, start=900)
    catalog.set_labels(project, extra, fp.class_by_name["c0"])
    result = train(project)
    assert result.n_labeled == 20
    feature_set = ensure_feature_set(project, BACKBONE, LAYER, 8)
    store_vectors(project, feature_set.id, extra, np.zeros((2, 8), dtype=np.float32))
    assert train(project).n_labeled == 22


# -- probe and fine-tuning loops (tiny stand-in network: fast on CPU) ---------------------------------

import io  # noqa: E402

import torch  # noqa: E402
from PIL import Image as PILImage  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from engine.torch import cached_tail, finetune  # noqa: E402


class TinyFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)])
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.pool(x).flatten(1)


def colour_loaders(n=32, batch=8):
    """Red-ish versus blue-ish 16 px images: learnable in a couple of epochs."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.rand(n, 3, 16, 16, generator=g) * 0.5
    x[y == 0, 0] += 0.5
    x[y == 1, 2] += 0.5
    data = TensorDataset(x, y)
    return DataLoader(data, batch_size=batch, shuffle=True, generator=g), DataLoader(data, batch_size=batch)


def recording_context():
    events = {"progress": [], "partial": []}
    context = JobContext(lambda f, m: events["progress"].append((f, m)), events["partial"].append)
    return context, events


def test_fine_tuning_trains_head_then_network_with_epoch_curves():
    network = finetune.ClassifierNetwork(TinyFeatures(), 8, 2)
    train_loader, val_loader = colour_loaders()
    context, events = recording_context()
    config = finetune.FineTuneConfig(head_epochs=3, full_epochs=2, head_lr=0.05, full_lr=0.01, patience=5)
    report = finetune.fit_network(context, network, train_loader, val_loader, config, fine_tune=True)
    epochs = events["partial"]
    assert all(isinstance(e, EpochResult) for e in epochs) and report.curves == epochs
    assert [e.epoch for e in epochs] == [1, 2, 3, 4, 5]
    assert [e.stage for e in epochs] == ["head"] * 3 + ["full"] * 2
    assert all(e.val_loss is not None and 0 <= e.val_acc <= 1 for e in epochs)
    assert len(events["progress"]) >= 5 * len(train_loader)  # moves every batch
    loss, accuracy, proba = finetune.evaluate(network, nn.CrossEntropyLoss(), val_loader, torch.device("cpu"), context)
    assert accuracy >= 0.9 and proba.shape == (32, 2)


def test_probe_keeps_the_frozen_backbone_untouched():
    network = finetune.ClassifierNetwork(TinyFeatures(), 8, 2)
    before = {k: v.clone() for k, v in network.features.state_dict().items()}
    train_loader, val_loader = colour_loaders()
    config = finetune.FineTuneConfig(head_epochs=2, head_lr=0.05)
    finetune.fit_network(JobContext(), network, train_loader, val_loader, config, fine_tune=False)
    after = network.features.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics


def test_early_stopping_keeps_the_best_epoch():
    network = finetune.ClassifierNetwork(TinyFeatures(), 8, 2)
    train_loader, val_loader = colour_loaders()
    config = finetune.FineTuneConfig(head_epochs=30, head_lr=5.0, patience=2)  # absurd lr: val loss degrades
    report = finetune.fit_network(JobContext(), network, train_loader, val_loader, config, fine_tune=False)
    assert report.stopped_early and len(report.curves) < 30
    best = min(report.curves, key=lambda e: e.val_loss)
    assert report.best_epoch == best.epoch
    val_loss, *_ = finetune.evaluate(network, nn.CrossEntropyLoss(label_smoothing=0.1), val_loader,
                                     torch.device("cpu"), JobContext())
    assert val_loss == pytest.approx(best.val_loss, rel=1e-4)


def test_epochs_without_validation_images_are_stored_without_validation_values():
    network = finetune.ClassifierNetwork(TinyFeatures(), 8, 2)
    train_loader, _ = colour_loaders()
    config = finetune.FineTuneConfig(head_epochs=2, head_lr=0.05)
    report = finetune.fit_network(JobContext(), network, train_loader, None, config, fine_tune=False)
    assert [(e.val_loss, e.val_acc) for e in report.curves] == [(None, None)] * 2
    row = report.curves[0].to_json()
    assert row["kind"] == "epoch" and set(row) == {"kind", "epoch", "stage", "train_loss", "train_acc"}


def test_cancelling_stops_within_a_batch():
    network = finetune.ClassifierNetwork(TinyFeatures(), 8, 2)
    train_loader, _ = colour_loaders()
    context = JobContext()
    context.progress = lambda fraction, message="": context.cancel()
    with pytest.raises(JobCancelled):
        finetune.fit_network(context, network, train_loader, None, finetune.FineTuneConfig(head_epochs=3),
                             fine_tune=False)


def test_layer_wise_learning_rates_shrink_towards_the_input():
    network = finetune.ClassifierNetwork(TinyFeatures(), 8, 2)
    groups = finetune.parameter_groups(network, 1e-3, 0.5, 0.0)
    lrs = [g["lr"] for g in groups]
    assert lrs[0] == 1e-3  # the head
    assert lrs[1:] == sorted(lrs[1:]) and lrs[1] < lrs[-1] < 1e-3
    assert len(groups) == 1 + 4  # stem conv, stem BatchNorm, block 0, block 1
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(network.parameters()))


def add_colour_images(project, colours: dict[str, tuple[int, int, int]], per_class: int, step: int) -> None:
    """``per_class`` labeled noisy JPEGs of each named colour, each a little brighter (``step``) than the last."""
    from storage.images import NewImage, add_images

    ids = catalog.ensure_classes(project, list(colours))
    rows = []
    for name, colour in colours.items():
        for i in range(per_class):
            data = jpeg(tuple(c + step * i for c in colour))
            rows.append(NewImage(f"{name}{i}", f"{name}{i}.jpg", f"/x/{name}{i}.jpg", "gen", 64, 64, "JPEG", data,
                                 data, ids[name]))
    add_images(project, rows)


def jpeg(colour, size=64) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(sum(colour))
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    PILImage.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_probe_and_finetune_on_lite0_store_models_that_predict_files(project, tmp_path, monkeypatch):
    from engine.models.predicting import predict_files, refresh_predictions
    from storage.images import NewImage, add_images, list_images

    colours = {"red": (220, 40, 40), "blue": (40, 40, 220)}
    add_colour_images(project, colours, per_class=6, step=3)
    monkeypatch.setattr(finetune, "DEFAULT_CONFIG",
                        finetune.FineTuneConfig(head_epochs=1, full_epochs=1, head_lr=0.01, batch_size=8))
    monkeypatch.setattr(cached_tail, "CACHED_TAIL_CONFIG",
                        finetune.FineTuneConfig(head_epochs=2, full_epochs=1, head_lr=0.01, batch_size=8))
    probe = train_model(JobContext(), project, method="probe")
    assert probe.metrics.n_labeled == 12 and len(modelstore.predictions(project)) == 12
    assert modelstore.list_training_runs(project)[-1].curves[0]["kind"] == "epoch"
    image_ids = [info.id for info in list_images(project)]
    unlabeled = [NewImage(f"new{i}", f"new{i}.jpg", f"/x/new{i}.jpg", "gen", 64, 64, "JPEG", jpeg(colour), jpeg(colour),
                          None) for i, colour in enumerate(colours.values())]
    add_images(project, unlabeled)  # predicted by the network itself after training (not from cached activations)
    new_ids = sorted({info.id for info in list_images(project)} - set(image_ids))
    # A validation image of each class, pinned: the leak guard moves their near-duplicates (every other
    # image here) to the validation side too, leaving nothing to train on; training goes on unevaluated.
    catalog.set_split(project, [image_ids[0], image_ids[6]], "val")
    streamed = []
    tuned = train_model(JobContext(on_partial=streamed.append), project, method="finetune")
    # On a CPU: the head, then the last stage on cached activations.
    assert [e["stage"] for e in modelstore.list_training_runs(project)[-1].curves] == ["head", "head", "full"]
    assert [e.stage for e in streamed] == ["head", "head", "full"]
    assert tuned.metrics.n_val == 0 and tuned.metrics.n_train == 12 and tuned.metrics.evaluation == "not evaluated"
    assert "cached activations" in modelstore.get_model(project, tuned.model_version).params["recipe"]
    for name, colour in colours.items():
        (tmp_path / f"{name}.jpg").write_bytes(jpeg(colour))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    files = [str(tmp_path / n) for n in ("red.jpg", "blue.jpg", "broken.jpg")]
    for version in (probe.model_version, tuned.model_version):
        result = predict_files(JobContext(), project, files, version)
        assert [r.path for r in result.predictions] == files[:2]
        assert [p for p, _ in result.failed] == files[2:]
        np.testing.assert_allclose([sum(r.probabilities) for r in result.predictions], 1.0, atol=1e-5)
        assert [r.class_name for r in result.predictions] == ["red", "blue"], f"version {version}"
        assert all(r.probability > 0.5 for r in result.predictions)
    stored = modelstore.predictions(project, tuned.model_version)
    assert len(stored) == 14 and [stored[i].class_name for i in new_ids] == ["red", "blue"]
    assert refresh_predictions(JobContext(), project, tuned.model_version) == sum(not p.out_of_fold for p in stored.values())
    refreshed = modelstore.predictions(project, tuned.model_version)
    for image_id, prediction in stored.items():  # reloaded safetensors weights predict what training did
        assert refreshed[image_id].probability == pytest.approx(prediction.probability, abs=1e-3)


def test_thorough_training_with_the_same_seed_gives_the_same_model_again(project, monkeypatch):
    """The model card records a training's seed: the same labels and seed must give the same network,
    the new head's random start included (it was drawn from whatever torch's generator held: Thorough's
    accuracy on caltech101-dev moved ~0.5 points per draw from one run to the next)."""
    from safetensors.numpy import load

    add_colour_images(project, {"red": (220, 40, 40), "blue": (40, 40, 220)}, per_class=4, step=5)
    monkeypatch.setattr(cached_tail, "CACHED_TAIL_CONFIG",
                        finetune.FineTuneConfig(head_epochs=2, full_epochs=1, head_lr=0.01, batch_size=4))

    def trained_weights(seed: int) -> dict[str, np.ndarray]:
        torch.manual_seed(1000 + seed * 7 + len(modelstore.list_models(project)))  # whatever came before
        version = train_model(JobContext(), project, method="finetune", seed=seed).model_version
        return load(modelstore.model_weights(project, version))

    first, again, other = trained_weights(seed=3), trained_weights(seed=3), trained_weights(seed=4)
    assert first.keys() == again.keys()
    for name in first:
        np.testing.assert_allclose(again[name], first[name], atol=1e-6, err_msg=name)
    assert not np.allclose(other["head.weight"], first["head.weight"], atol=1e-3)


def test_a_quick_retrain_scores_its_validation_images_as_a_fresh_training_does(project, monkeypatch):
    """A quick retrain's validation model starts from the last model, which was trained on the validation
    images too: stopped short of its own optimum, it would still remember their labels and report too
    good a score (engine.models.logistic_float32.TOL)."""
    from engine.models import recipes

    default_only = recipes.choose_recipe
    monkeypatch.setattr(recipes, "choose_recipe",  # both trainings at the default C
                        lambda *args, **kwargs: default_only(*args, **kwargs, candidates=recipes.QUICK_RECIPES[:1]))
    # 840 x 1280 features: the float32 solver (engine.models.classifiers.FLOAT32_FIT_FROM), with its
    # models fitted together. At scikit-learn's tolerance of 1e-4 the retrain scored 0.69-0.70 where the
    # fresh training scored 0.64, and its mean right answer was 0.52 against 0.46.
    fp = make_feature_project(project, [140] * 6, unlabeled=5, dim=1280, spread=27.0)
    train(project, quick=False)
    catalog.set_labels(project, fp.image_ids[-1:], fp.class_by_name["c0"])
    quick = train(project, quick=True)
    fresh = train(project, quick=False)
    assert quick.params["quick"] and not fresh.params["quick"] and quick.params["C"] == fresh.params["C"]
    assert 0.5 < fresh.metrics.accuracy < 0.95  # classes that overlap: there is something to remember
    labels = {i.image_id: i.class_id for i in labeled_images(project)}
    val = sorted(i.image_id for i in labeled_images(project) if i.split == "val")

    def right_answers(version) -> np.ndarray:
        """Each validation image's probability of its own label when that is the prediction, else 0."""
        table = modelstore.predictions(project, version)
        return np.array([table[i].probability if table[i].class_id == labels[i] else 0.0 for i in val])

    assert quick.metrics.accuracy == pytest.approx(fresh.metrics.accuracy, abs=4 / len(val))  # 1e-4: 8 to 10 more
    assert right_answers(quick.model_version).mean() == pytest.approx(right_answers(fresh.model_version).mean(),
                                                                       abs=0.02)
