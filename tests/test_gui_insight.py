"""Training panel, curves, model report and embedding map, driven offscreen.

Fakes stand only at the engine boundary (the training and layout jobs) and return the engine's
real typed results; model versions, predictions and labels are real rows in a real project."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyqtgraph as pg
import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from engine.insight.history import model_history
from engine.insight.map_geometry import normalize_layout, points_in_polygon
from engine.features.backbones import DEFAULT_BACKBONE, DEFAULT_LAYER, get_backbone
from engine.insight.options import BackboneChoice, TrainingOptions
from engine.insight.projection import MapLayout
from engine.insight.report import build_report
from engine.models.metrics import Metrics
from engine.models.results import EpochResult, TrainResult
from engine.runtime.jobs import JobCancelled, JobOutcome, JobStatus
from gui.embedding_view import EmbeddingView
from gui.map_scatter import RecordPool, fill_scatter, move_scatter
from gui.model_report import ModelReport
from gui.runner import QtJobRunner
from gui.training_panel import TrainingPanel
from gui.training_status import TimeLeftEstimator, done_text, format_seconds, time_left_words
from storage.catalog import add_class, label_states, set_labels
from storage.modelstore import NewModel, PredictionBatch, active_model, save_model_version

pytestmark = pytest.mark.gui
BACKBONES = [BackboneChoice("efficientnet_lite0", "EfficientNet-Lite0", ("pooled", "block6"), "pooled")]


@pytest.fixture
def runner(qtbot):
    qt_runner = QtJobRunner()
    yield qt_runner
    qt_runner.cancel_all()
    qt_runner.shutdown()


def add_images(project, n, sources=("phone", "camera")):
    from storage.models import Image

    with project.writing() as session:
        for i in range(n):
            session.add(Image(id=i + 1, content_hash=f"h{i}", original_name=f"{i}.png", original_path=f"/x/{i}.png",
                              source=sources[i % len(sources)], width=4, height=4, original_format="PNG",
                              data=b"", thumbnail=b""))
    return list(range(1, n + 1))


def save_version(project, classes, predicted: dict[int, int], *, accuracy: float | None = None, n_labeled: int = 0,
                 active: bool = True, out_of_fold=(), params: dict | None = None, **more_metrics) -> int:
    """A stored model version whose prediction for each image is ``predicted[image_id]`` (a class id)."""
    class_ids = [c.id for c in classes]
    ids = np.asarray(sorted(predicted), dtype=np.int64)
    proba = np.full((len(ids), len(class_ids)), 0.1 / max(len(class_ids) - 1, 1), dtype=np.float32)
    proba[np.arange(len(ids)), [class_ids.index(predicted[i]) for i in ids]] = 0.9
    metrics = Metrics(accuracy=accuracy, evaluation="holdout" if accuracy is not None else "not evaluated",
                      n_labeled=n_labeled, **more_metrics)
    # The default network's features: those make_feature_project caches, so the map can draw the model.
    model = NewModel(method="logreg", backbone=DEFAULT_BACKBONE, layer=DEFAULT_LAYER,
                     class_names=[c.name for c in classes], class_ids=class_ids, weights=b"",
                     metrics=metrics.to_json(), n_labeled=n_labeled, params=params or {})
    oof = np.isin(ids, list(out_of_fold))
    return save_model_version(project, model, PredictionBatch(ids, proba, oof), activate=active)


def train_result(version: int = 1, accuracy: float | None = 0.9, method: str = "logreg",
                 params: dict | None = None) -> TrainResult:
    """What engine.models.training.train_model returns."""
    return TrainResult(model_version=version, method=method, backbone="efficientnet_lite0", layer="pooled",
                       metrics=Metrics(accuracy=accuracy, evaluation="5-fold CV", n_labeled=20, n_val=20, folds=5),
                       n_labeled=20, training_run=version, params=params or {})


def make_panel(qtbot, runner, project, train_fn, **kwargs):
    panel = TrainingPanel(runner, project, train_fn=train_fn, **{"backbones": BACKBONES, "device": "cpu", **kwargs})
    qtbot.addWidget(panel)
    return panel


# -- training panel -----------------------------------------------------------------------------
def slow_fake_training(context, project, method, backbone, layer):
    for step in range(400):
        context.check_cancelled()
        context.progress(step / 400, f"Extracting features ({step}/400)")
        time.sleep(0.01)  # the job's own pace: a slow extraction
    return train_result()


def test_nothing_to_start_before_a_project_is_open(qtbot, runner, project):
    panel = make_panel(qtbot, runner, None, slow_fake_training)
    assert not panel.start_button.isEnabled()
    assert panel.start() is False
    panel.set_project(project)
    assert panel.start_button.isEnabled()


def test_methods_come_from_the_registry(qtbot, runner, project):
    from engine.models.methods import panel_methods

    panel = make_panel(qtbot, runner, project, slow_fake_training)
    assert list(panel.method_buttons) == [m.name for m in panel_methods()]
    assert panel.method.name == "logreg" and panel.method_buttons["logreg"].isChecked()
    assert panel.method_buttons["finetune"].text().startswith("Thorough")


def test_start_then_cancel_from_the_panel(qtbot, runner, project):
    calls = []

    def train(context, project_arg, method, backbone, layer):
        calls.append((method, backbone, layer))
        return slow_fake_training(context, project_arg, method, backbone, layer)

    panel = make_panel(qtbot, runner, project, train)
    assert panel.start_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert not panel.options.advanced.isVisibleTo(panel)
    with qtbot.waitSignal(panel.training_started, timeout=2000) as started:
        qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
    assert started.args == ["logreg"]
    assert panel.is_running and panel.cancel_button.isEnabled() and not panel.start_button.isEnabled()
    qtbot.waitUntil(lambda: panel.status.progress_bar.value() > 0, timeout=5000)
    assert "Extracting features" in panel.status.step_label.text()
    with qtbot.waitSignal(panel.training_finished, timeout=5000) as finished:
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    assert finished.args[0].status is JobStatus.CANCELLED
    assert calls == [("logreg", "efficientnet_lite0", "pooled")]
    assert not panel.is_running and panel.start_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert "cancelled" in panel.status.step_label.text().lower()


def test_cancelling_thorough_goes_back_to_quick_and_says_so(qtbot, runner, project):
    """While Thorough is chosen nothing retrains by itself, and the panel says so; a cancelled
    Thorough run goes back to Quick, which retrains by itself again."""
    panel = make_panel(qtbot, runner, project, slow_fake_training)
    panel.show()
    note = panel.options.auto_retrain_note
    assert not note.isVisible() and panel.auto_retrain.isEnabled()
    panel.set_method("finetune")
    assert note.isVisible() and "nothing retrains by itself" in note.text()
    assert not panel.auto_retrain.isEnabled() and not panel._retrains_by_itself()
    assert panel.curves.showing_empty_text() and "Press Start training" in panel.curves.empty_text.text()

    with qtbot.waitSignal(panel.training_started, timeout=2000):
        assert panel.start()
    qtbot.waitUntil(lambda: panel.status.progress_bar.value() > 0, timeout=5000)
    with qtbot.waitSignal(panel.training_finished, timeout=5000) as finished:
        panel.cancel()
    assert finished.args[0].status is JobStatus.CANCELLED
    assert panel.method.name == "logreg" and panel.method_buttons["logreg"].isChecked()
    assert panel._retrains_by_itself() and not note.isVisible()
    assert panel.status.step_label.text() == (
        "Thorough training cancelled; the previous model is still in use. "
        "Back to Quick: it retrains by itself as you label.")


def test_the_panel_forgets_a_closed_project_and_an_old_failure(qtbot, runner, project, tmp_path):
    """Another project (or none): no version, accuracy, chart point nor red failure of the last one
    stays; a failure that new images or labels may have fixed goes away when they arrive."""
    from storage.project import create_project

    add_images(project, 4)
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    save_version(project, [ants, bees], {1: ants.id}, accuracy=0.75, n_labeled=12)
    panel = make_panel(qtbot, runner, project, lambda *a, **k: train_result(version=2, accuracy=0.8),
                       history_fn=model_history)
    with qtbot.waitSignal(panel.training_finished, timeout=5000):
        assert panel.start()
    assert "Model version 2 ready" in panel.status.step_label.text()
    assert len(panel.curves.history_curve.getData()[0]) == 1 and not panel.curves.showing_empty_text()

    panel.set_project(None)
    assert panel.status.step_label.text() == "Ready." and panel.status.progress_bar.value() == 0
    x, _y = panel.curves.history_curve.getData()
    assert x is None or len(x) == 0
    assert panel.curves.showing_empty_text() and panel.curves.caption.text() == ""
    assert panel.curves.empty_text.text().startswith("Open or create a project")

    empty = create_project(tmp_path / "empty.sortlab")
    try:
        def no_labels(context, project_arg, method, backbone, layer):
            raise ValueError("No labeled images yet: label a few images of each class first.")

        panel._train_fn = no_labels
        panel.set_project(empty)
        assert panel.curves.showing_empty_text() and "Label a few images" in panel.curves.empty_text.text()
        with qtbot.waitSignal(panel.training_finished, timeout=5000):
            assert panel.start()
        label = panel.status.step_label
        assert label.text().startswith("Training failed: No labeled images yet") and "b00020" in label.styleSheet()
        panel.project_content_changed()  # images or labels arrived (an import, a label)
        assert label.text() == "Ready." and label.styleSheet() == ""
    finally:
        empty.close()


def test_a_failed_check_for_a_gpu_says_so_in_words(qtbot, runner, project, monkeypatch):
    import gui.training_panel

    def broken(context, want_device, want_backbones):
        raise ImportError("cannot import name 'Affinities' from partially initialized module 'openTSNE.affinity'",
                          name="openTSNE.affinity")

    monkeypatch.setattr(gui.training_panel, "training_options_job", broken)
    panel = TrainingPanel(runner, project, train_fn=slow_fake_training)
    qtbot.addWidget(panel)
    assert not runner.busy  # nothing heavy until asked (the window asks once it is on screen)
    with qtbot.waitSignal(runner.finished, timeout=5000):
        panel.find_options()
    device = panel.status.device_label
    assert device.text().startswith("Could not check for a GPU. Training still works")
    assert "Affinities" not in device.text() and "openTSNE" in device.toolTip()
    assert panel.options.backbone_combo.count() == 1  # the default network stays offered
    panel.find_options()
    assert not runner.busy  # asked once only


def test_epoch_partials_reach_the_curves(qtbot, runner, project):
    # What engine.torch.finetune streams, one per epoch.
    epochs = [EpochResult(e, "full", train_loss=1.0 / e, train_acc=0.5 + e / 10, val_loss=1.2 / e, val_acc=0.4 + e / 10)
              for e in (1, 2, 3)]

    def fine_tune(context, project_arg, method, backbone, layer):
        for epoch in epochs:
            context.partial(epoch)
            context.progress(epoch.epoch / 3, f"Epoch {epoch.epoch} of 3")
        return train_result(accuracy=0.7, method=method)

    panel = make_panel(qtbot, runner, project, fine_tune)
    panel.set_method("finetune")
    with qtbot.waitSignal(panel.training_finished, timeout=5000) as finished:
        assert panel.start()
    assert finished.args[0].status is JobStatus.DONE
    np.testing.assert_allclose(panel.curves.epoch_data("val_acc"), [0.5, 0.6, 0.7])
    np.testing.assert_allclose(panel.curves.epoch_data("train_loss"), [1.0, 0.5, 1 / 3])
    x, y = panel.curves.acc_curves["val_acc"].getData()
    np.testing.assert_allclose(x, [1, 2, 3])
    np.testing.assert_allclose(y, [50, 60, 70])  # fractions are shown as percentages
    assert panel.curves.showing_epochs()
    assert panel.status.step_label.text() == done_text(finished.args[0].result, finished.args[0].seconds)
    assert "ready (took" in panel.status.step_label.text() and "70.0%" in panel.status.step_label.text()


def test_fine_tune_chart_reads_plainly(qtbot, runner, project):
    """Whole epochs on the x axis, plain loss numbers (no "x0.001" prefix), the legend beside the
    plots instead of over the points, and none of pyqtgraph's own buttons."""
    panel = make_panel(qtbot, runner, project, slow_fake_training)
    panel.resize(700, 500)
    panel.show()
    qtbot.waitExposed(panel)
    curves = panel.curves
    curves.start_run()
    for epoch in range(1, 4):  # small losses: pyqtgraph would rescale the axis by 1e-3
        curves.add_epoch(EpochResult(epoch, "full", train_loss=0.004 / epoch, train_acc=0.9, val_loss=0.005 / epoch,
                                     val_acc=0.85))
    QApplication.processEvents()
    for plot in (curves.loss_plot, curves.acc_plot):
        item = plot.getPlotItem()
        assert item.legend is None and not item.autoBtn.isVisible()
        left, bottom = item.getAxis("left"), item.getAxis("bottom")
        assert not left.autoSIPrefix and left.scale == 1.0 and "0.001" not in left.labelString()
        for lo, hi in ((0.5, 3.5), (0.5, 1.5), (0.0, 40.0)):
            ticks = [v for _spacing, values in bottom.tickValues(lo, hi, 300) for v in values]
            assert ticks and all(float(v).is_integer() for v in ticks), (lo, hi, ticks)
    assert "training images" in curves.epoch_legend.text() and "validation images" in curves.epoch_legend.text()
    assert curves.epoch_legend.isVisible()
    loss_range = curves.loss_plot.getPlotItem().getViewBox().viewRange()[0]
    assert loss_range[0] <= 1 and loss_range[1] >= 3


def test_quick_history_curve_and_automatic_retraining(qtbot, runner, project, monkeypatch):
    import gui.training_panel

    ids = add_images(project, 4)
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    for n_labeled, accuracy in ((10, 0.6), (40, 0.9), (25, 0.8), (30, None)):  # the last was not evaluated
        save_version(project, [ants, bees], {1: ants.id}, accuracy=accuracy, n_labeled=n_labeled)
    set_labels(project, ids[:2], ants.id)  # one class only: training cannot succeed yet
    runs, automatic_runs = [], []

    def quick(context, project_arg, method, backbone, layer, automatic=False):
        runs.append(method)
        automatic_runs.append(automatic)
        return train_result(version=5, params={"automatic": automatic, "kept": False})

    monkeypatch.setattr(gui.training_panel, "AUTO_RETRAIN_DELAY_MS", 20)
    panel = make_panel(qtbot, runner, project, quick)
    x, y = panel.curves.history_curve.getData()
    np.testing.assert_allclose(x, [10, 25, 40])
    np.testing.assert_allclose(y, [60, 80, 90])
    with qtbot.waitSignal(panel._retrain_timer.timeout, timeout=2000):
        panel.labels_changed([1])
    assert runs == [] and not panel.is_running  # not started, so no "Only one class" error either
    assert "failed" not in panel.status.step_label.text().lower()

    set_labels(project, ids[2:], bees.id)
    with qtbot.waitSignal(panel.training_finished, timeout=5000):
        for _ in range(5):  # a burst of labeling: one retraining
            panel.labels_changed([3])
    assert runs == ["logreg"]
    assert automatic_runs == [True]  # stored as the evolving version (engine.models.evolving)
    assert panel.status.step_label.text().startswith("Model updated with your latest labels")
    assert not panel._retrain_timer.isActive() and not panel.is_running  # and no second one on its way
    panel.auto_retrain.setChecked(False)
    panel.labels_changed([2])
    assert not panel._retrain_timer.isActive() and runs == ["logreg"]


def test_labels_during_a_run_retrain_once_it_ends(qtbot, runner, project, monkeypatch):
    import gui.training_panel

    ids = add_images(project, 4)
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    set_labels(project, ids[:2], ants.id)
    set_labels(project, ids[2:], bees.id)
    release, runs = threading.Event(), []

    def quick(context, project_arg, method, backbone, layer, automatic=False):
        runs.append(method)
        release.wait(5)
        return train_result(version=len(runs))

    monkeypatch.setattr(gui.training_panel, "AUTO_RETRAIN_DELAY_MS", 20)
    panel = make_panel(qtbot, runner, project, quick)
    assert panel.start()
    panel.labels_changed([1])  # while the first run goes on
    assert not panel._retrain_timer.isActive()
    with qtbot.waitSignal(panel.training_finished, timeout=5000):
        release.set()
    with qtbot.waitSignal(panel.training_finished, timeout=5000):
        pass  # the rerun the labels asked for
    assert runs == ["logreg", "logreg"]
    assert panel.status.step_label.text().startswith("Model version 2 ready")


def test_automatic_failure_is_quiet_but_start_button_failure_is_clear(qtbot, runner, project, monkeypatch):
    import gui.training_panel

    ids = add_images(project, 4)
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    set_labels(project, ids[:2], ants.id)
    set_labels(project, ids[2:], bees.id)

    def refuses(context, project_arg, method, backbone, layer, automatic=False):
        raise ValueError("Every class needs at least 2 labeled images.")

    monkeypatch.setattr(gui.training_panel, "AUTO_RETRAIN_DELAY_MS", 10)
    panel = make_panel(qtbot, runner, project, refuses)
    with qtbot.waitSignal(panel.training_finished, timeout=5000) as finished:
        panel.labels_changed([1])
    assert finished.args[0].status is JobStatus.FAILED
    label = panel.status.step_label
    assert "Training failed" not in label.text() and "b00020" not in label.styleSheet()
    assert "previous model is still in use" in label.text()

    with qtbot.waitSignal(panel.training_finished, timeout=5000):
        qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
    assert label.text() == "Training failed: Every class needs at least 2 labeled images."
    assert "b00020" in label.styleSheet()


def test_progress_shows_the_step_and_time_left(qtbot, runner, project):
    release = threading.Event()

    def waits(context, project_arg, method, backbone, layer, automatic=False):
        release.wait(5)
        return train_result(accuracy=0.8)

    panel = make_panel(qtbot, runner, project, waits)
    now = [100.0]
    panel.status.estimator = TimeLeftEstimator(clock=lambda: now[0])
    assert panel.start()
    step, bar = panel.status.step_label, panel.status.progress_bar
    runner.progress.emit("train", 0.0, "Extracting features: 0 of 800 images")
    assert step.text() == "Now: Extracting features: 0 of 800 images"  # no pace yet: no guess
    now[0] = 160.0
    runner.progress.emit("train", 0.57, "Extracting features: 656 of 800 images")
    # The bar is the whole run and says so; the step's own count runs ahead of it.
    assert bar.value() == 570 and bar.text() == "57% of the whole run"
    assert step.text() == "Now: Extracting features: 656 of 800 images. In all, less than a minute left."
    runner.progress.emit("other-job", 0.9, "Importing")
    assert "Importing" not in step.text()
    with qtbot.waitSignal(panel.training_finished, timeout=5000):
        release.set()
    assert step.text().endswith("Right on 80.0% of the images it was tested on.")
    assert bar.value() == bar.maximum()


def test_device_and_backbones_come_from_the_options_job(qtbot, runner, project):
    panel = make_panel(qtbot, runner, project, slow_fake_training)
    device = panel.status.device_label
    assert device.text().startswith("No GPU found: training uses the processor")
    panel._options_known(JobOutcome(JobStatus.DONE, TrainingOptions(device="GPU: NVIDIA GeForce RTX 4090 (PyTorch CUDA)")))
    assert device.text() == "GPU in use: NVIDIA GeForce RTX 4090 (PyTorch CUDA)"
    resnet = BackboneChoice("resnet50", "ResNet-50", ("pooled", "layer3"), "pooled")
    panel._options_known(JobOutcome(JobStatus.DONE, TrainingOptions(device="CPU, 8 threads (onnxruntime)",
                                                                    backbones=[*BACKBONES, resnet])))
    assert device.text().startswith("No GPU found") and "onnxruntime" not in device.text()
    assert device.toolTip() == "CPU, 8 threads (onnxruntime)"  # the technical words in the tooltip
    combo = panel.options.backbone_combo
    assert [combo.itemData(i) for i in range(combo.count())] == ["efficientnet_lite0", "resnet50"]
    combo.setCurrentIndex(1)
    assert panel.backbone == "resnet50" and panel.layer == "pooled"
    gpu_panel = make_panel(qtbot, runner, project, slow_fake_training, device="cuda:0")
    assert gpu_panel.status.device_label.text() == "GPU in use: cuda:0"


def test_time_left_is_smoothed_and_said_in_round_words():
    """A steady pace gives the plain estimate; one slow stretch moves it a little, not by minutes;
    a new run starts over. The words round the seconds so the line does not tick like a clock."""
    now = [0.0]
    estimator = TimeLeftEstimator(smoothing_s=20, clock=lambda: now[0])
    assert estimator.update(0.0) is None
    for second in range(1, 61):  # 1% a second
        now[0] = float(second)
        left = estimator.update(second / 100)
    assert left == pytest.approx(40.0, rel=1e-9)
    steady = left
    now[0] = 70.0  # ten seconds without progress (a validation pass)
    slowed = estimator.update(0.60)
    now[0] = 71.0
    recovered = estimator.update(0.61)
    assert slowed > steady and slowed - steady < 60  # the estimate grows, but not by minutes
    assert recovered < slowed
    now[0] = 72.0
    assert estimator.update(0.05) is None  # a new run: its pace is not known yet

    assert [time_left_words(s) for s in (5, 45, 80, 170, 185, 3 * 3600 + 1000)] == [
        "a few seconds left", "less than a minute left", "about a minute left", "about 3 minutes left",
        "about 3 minutes left", "about 3 hours 20 minutes left"]
    assert format_seconds(0.4) == "under a second" and format_seconds(75) == "1 min 15 s"


# -- model history and report -------------------------------------------------------------------
def test_model_history_reads_the_typed_metrics_of_every_evaluated_version(project):
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    add_images(project, 1)
    for n_labeled, accuracy in ((8, 0.5), (12, None), (20, 0.75)):
        save_version(project, [ants, bees], {1: ants.id}, accuracy=accuracy, n_labeled=n_labeled)
    assert model_history(project) == ([8, 20], [0.5, 0.75])


def test_build_report_agrees_with_sklearn():
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

    y_true, y_pred = [10, 10, 10, 20, 20, 30], [10, 20, 10, 20, 20, 10]
    report = build_report([1, 2, 3, 4, 5, 6], y_true, y_pred, [10, 20, 30], ["a", "b", "c"],
                          ["s1", "s1", "s2", "s2", "s2", "s1"], basis="test")
    metrics = report.metrics
    assert report.n == 6 and metrics.accuracy == pytest.approx(4 / 6)
    assert metrics.balanced_accuracy == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert report.confusion.tolist() == confusion_matrix(y_true, y_pred, labels=[10, 20, 30]).tolist()
    precision, recall, _f1, support = precision_recall_fscore_support(y_true, y_pred, labels=[10, 20, 30],
                                                                      zero_division=np.nan)
    np.testing.assert_allclose([metrics.per_class[n].recall for n in "abc"], recall, atol=1e-12)
    np.testing.assert_allclose([metrics.per_class[n].precision for n in "abc"], precision, atol=1e-12)
    assert np.isnan(metrics.per_class["c"].precision)  # never predicted: shown as a dash, not 0%
    assert [metrics.per_class[n].support for n in "abc"] == support.tolist()
    assert report.cell_images[(0, 1)] == [2] and report.cell_images[(2, 0)] == [6]
    assert {k: (v.accuracy, v.n) for k, v in metrics.per_source.items()} == {"s1": (pytest.approx(1 / 3), 3),
                                                                            "s2": (1.0, 3)}


def test_report_of_the_stored_predictions_and_clicking_a_cell(qtbot, project):
    ids = add_images(project, 12)
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    set_labels(project, ids[:6], ants.id)
    set_labels(project, ids[6:10], bees.id)  # 11 and 12 stay unlabeled
    older = save_version(project, [ants, bees], {i: ants.id for i in ids}, accuracy=0.7, n_labeled=8)
    newer = save_version(project, [ants, bees], {i: ants.id if i in (1, 2, 3, 4, 7, 11) else bees.id for i in ids},
                         accuracy=0.8, n_labeled=10)
    widget = ModelReport(project)
    qtbot.addWidget(widget)
    widget.resize(700, 700)
    widget.show()
    assert widget.selected_version() == newer  # the active one is shown
    assert [widget.versions_table.item(1, c).text() for c in range(6)] == [
        str(newer), "✓", "80.0%", "10", "Quick", get_backbone(DEFAULT_BACKBONE).title]
    report = widget.report
    assert report.n == 10 and report.metrics.accuracy == pytest.approx(7 / 10)
    assert report.basis.startswith("all labeled images")
    matrix = widget.view.matrix
    assert matrix.item(1, 0).text() == "1"

    rect = matrix.visualItemRect(matrix.item(0, 1))  # true ants, said bees
    with qtbot.waitSignal(widget.show_images, timeout=2000) as shown:
        qtbot.mouseClick(matrix.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert shown.args == [[5, 6], "ants taken for bees"]
    rect = matrix.visualItemRect(matrix.item(1, 0))
    with qtbot.waitSignal(widget.show_images, timeout=2000) as shown:
        qtbot.mouseClick(matrix.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert shown.args[0] == [7]

    widget.versions_table.selectRow(0)
    assert widget.report_version == older and widget.report.metrics.accuracy == pytest.approx(6 / 10)
    assert widget.activate_button.isEnabled()
    with qtbot.waitSignal(widget.active_changed, timeout=2000) as changed:
        qtbot.mouseClick(widget.activate_button, Qt.MouseButton.LeftButton)
    assert changed.args == [older] and active_model(project).version == older
    assert widget.selected_version() == older and not widget.activate_button.isEnabled()


def test_the_report_marks_the_evolving_version_and_the_chart_keeps_the_points_it_replaced(qtbot, project, runner):
    """Automatic retrains keep one evolving version (engine.models.evolving): the report says it is
    "updating", and the accuracy chart still shows the automatic retrains it replaced."""
    from gui.model_report import EVOLVING_TIP

    add_images(project, 4)
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    save_version(project, [ants, bees], {1: ants.id}, accuracy=0.5, n_labeled=4)
    save_version(project, [ants, bees], {1: bees.id}, accuracy=0.55, n_labeled=7,
                 params={"automatic": True, "kept": False, "history": [[5, 0.52], [6, 0.54]]})
    widget = ModelReport(project)
    qtbot.addWidget(widget)
    cells = [widget.versions_table.item(row, 0) for row in range(2)]
    assert [c.text() for c in cells] == ["1", "2 · updating"] and cells[1].toolTip() == EVOLVING_TIP
    panel = make_panel(qtbot, runner, project, slow_fake_training)
    x, y = panel.curves.history_curve.getData()
    np.testing.assert_allclose(x, [4, 5, 6, 7])
    np.testing.assert_allclose(y, [50, 52, 54, 55])


def test_the_report_opens_on_the_version_in_use_and_follows_it(qtbot, project, tmp_path):
    """Opened on the version in use (not version 1); a new version in use is shown at once; a
    version the user picked stays while only the labels change; another project opens on its own."""
    from storage.modelstore import set_active_model
    from storage.project import create_project

    add_images(project, 4)
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    first = save_version(project, [ants, bees], {1: ants.id}, accuracy=0.5, n_labeled=4)
    second = save_version(project, [ants, bees], {1: bees.id}, accuracy=0.7, n_labeled=6)
    save_version(project, [ants, bees], {1: ants.id}, accuracy=0.6, n_labeled=8, active=False)
    set_active_model(project, second)
    widget = ModelReport(None)
    qtbot.addWidget(widget)
    widget.set_project(project)
    assert widget.selected_version() == second and widget.report_version == second

    widget.versions_table.selectRow(0)  # the user looks at version 1
    widget.refresh()  # labels changed: the same version stays on screen
    assert widget.selected_version() == first
    newest = save_version(project, [ants, bees], {1: ants.id}, accuracy=0.9, n_labeled=9)  # a training
    widget.refresh()
    assert widget.selected_version() == newest and widget.report_version == newest
    assert widget.versions_table.item(3, 1).text() == "✓"

    other = create_project(tmp_path / "other.sortlab")
    try:
        add_images(other, 2)
        cats, dogs = add_class(other, "cats"), add_class(other, "dogs")
        save_version(other, [cats, dogs], {1: cats.id}, n_labeled=2)
        in_use = save_version(other, [cats, dogs], {1: dogs.id}, n_labeled=2)
        widget.versions_table.selectRow(0)
        widget.set_project(other)
        assert widget.selected_version() == in_use
        widget.set_project(None)
        assert widget.versions_table.rowCount() == 0 and widget.report_version is None
        assert widget.view.summary.text().startswith("Open or create a project")
    finally:
        other.close()


def test_report_prefers_cross_validated_predictions(project):
    from engine.insight.report import project_report

    ids = add_images(project, 6)
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    set_labels(project, ids[:3], ants.id)
    set_labels(project, ids[3:], bees.id)
    version = save_version(project, [ants, bees], {i: ants.id for i in ids}, out_of_fold=[1, 4])
    report = project_report(project, version)
    assert report.n == 2 and report.basis.endswith("cross-validation")
    assert report.metrics.accuracy == pytest.approx(0.5)


def test_the_report_says_what_the_leak_guard_did(qtbot, project):
    """The training's near-duplicate figures reach the report's summary in words (issue 14)."""
    from engine.insight.report import project_report
    from gui.report_view import ReportView

    ids = add_images(project, 6)
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    set_labels(project, ids[:3], ants.id)
    set_labels(project, ids[3:], bees.id)
    version = save_version(project, [ants, bees], {i: ants.id for i in ids}, out_of_fold=ids,
                           n_val_with_twin_before_guard=2, n_val_with_twin=3, accuracy_without_twins=0.75)
    report = project_report(project, version)
    assert report.metrics.n_val_with_twin_before_guard == 2 and report.metrics.accuracy_without_twins == 0.75
    view = ReportView()
    qtbot.addWidget(view)
    view.show_report(report, version)
    text = view.summary.text()
    assert "2 tested images would have had a look-alike among the images it learned from" in text
    assert "without any look-alike it is right on <b>75" in text and "(3 with one left out)" in text

    plain = save_version(project, [ants, bees], {i: ants.id for i in ids}, out_of_fold=ids)
    view.show_report(project_report(project, plain), plain)
    assert "look-alike" not in view.summary.text()


def test_report_is_computed_in_the_background_and_late_reports_are_dropped(qtbot, runner, project):
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    add_images(project, 1)
    for version in (1, 2):
        save_version(project, [ants, bees], {1: ants.id}, accuracy=0.5, n_labeled=4)
    started, release = threading.Event(), threading.Event()
    threads, computed = set(), []

    def report_fn(project_arg, version):
        threads.add(threading.get_ident())
        if version == 1:
            started.set()
            release.wait(5)  # the slow report of version 1
        computed.append(version)
        return build_report([1, 2], [10, 20], [10, 10 if version == 1 else 20], [10, 20], ["a", "b"], basis=f"v{version}")

    widget = ModelReport(project, report_fn=report_fn, runner=runner)
    qtbot.addWidget(widget)
    shown = []
    widget.report_shown.connect(shown.append)
    qtbot.waitUntil(lambda: shown == [2], timeout=5000)
    assert threading.get_ident() not in threads  # never on the GUI thread
    assert widget.report.metrics.accuracy == 1.0
    widget.versions_table.selectRow(0)  # version 1: slow
    assert "Computing the report of version 1" in widget.view.summary.text()
    assert started.wait(5)
    with qtbot.waitSignal(widget.report_shown, timeout=5000):
        widget.versions_table.selectRow(1)  # the user moves on before it arrives
        release.set()
    assert computed == [2, 1, 2] and shown == [2, 2]  # version 1's late report was dropped
    assert widget.report_version == 2 and widget.report.basis == "v2"
    with qtbot.waitSignal(widget.report_shown, timeout=5000):
        widget.refresh()  # new labels: the same version's report is computed again
    assert computed == [2, 1, 2, 2]


def test_a_failed_report_says_why(qtbot, runner, project):
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    add_images(project, 1)
    save_version(project, [ants, bees], {1: ants.id})

    def broken(project_arg, version):
        raise OSError("disk I/O error")

    widget = ModelReport(project, report_fn=broken, runner=runner)
    qtbot.addWidget(widget)
    qtbot.waitUntil(lambda: "could not be computed" in widget.view.summary.text(), timeout=5000)
    assert widget.view.summary.text() == ("The report of version 1 could not be computed. Select the version "
                                          "again to retry.")
    assert widget.view.summary.toolTip() == "disk I/O error"  # the details, for a bug report


# -- embedding map ------------------------------------------------------------------------------
def test_points_in_polygon_matches_geometry():
    rng = np.random.default_rng(0)
    points = rng.uniform(-2, 2, (5000, 2))
    square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    np.testing.assert_array_equal(points_in_polygon(points, square), np.all(np.abs(points) < 1, axis=1))
    angles = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    circle = np.c_[np.cos(angles), np.sin(angles)] * 1.5
    radius = np.hypot(points[:, 0], points[:, 1])
    clear = np.abs(radius - 1.5) > 0.01
    np.testing.assert_array_equal(points_in_polygon(points, circle)[clear], (radius < 1.5)[clear])
    assert normalize_layout(points * 1000 + 5).max() <= 1.6


def test_points_in_polygon_agrees_with_the_plain_even_odd_rule():
    """The y-sorted implementation against the textbook per-edge loop over every point, on random
    polygons (self-intersecting ones, horizontal edges, points on vertex heights included)."""
    def plain(points, polygon):
        x, y = points[:, 0], points[:, 1]
        inside = np.zeros(len(points), bool)
        xj, yj = polygon[-1]
        for xi, yi in polygon:
            if yi != yj:
                inside ^= ((yi > y) != (yj > y)) & (x < (xj - xi) * (y - yi) / (yj - yi) + xi)
            xj, yj = xi, yi
        return inside

    rng = np.random.default_rng(1)
    for _ in range(40):
        points = rng.uniform(-2, 2, (2000, 2))
        points[:100] = np.round(points[:100], 1)
        polygon = rng.uniform(-2, 2, (int(rng.integers(3, 40)), 2))
        polygon[::3] = np.round(polygon[::3], 1)
        np.testing.assert_array_equal(points_in_polygon(points, polygon), plain(points, polygon))


def drag(widget, points):
    """Left-drag through the given widget positions with real mouse events. pyqtgraph drops move
    events closer together than its mouse rate limit, so the limit is lifted meanwhile."""
    def send(kind, pos, button, buttons):
        event = QMouseEvent(kind, QPointF(pos), QPointF(widget.mapToGlobal(pos)), button, buttons,
                            Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(widget, event)

    left = Qt.MouseButton.LeftButton
    rate_limit = pg.getConfigOption("mouseRateLimit")
    pg.setConfigOptions(mouseRateLimit=-1)
    try:
        send(QEvent.Type.MouseButtonPress, points[0], left, left)
        for point in points[1:]:
            send(QEvent.Type.MouseMove, point, Qt.MouseButton.NoButton, left)
        send(QEvent.Type.MouseButtonRelease, points[-1], left, Qt.MouseButton.NoButton)
    finally:
        pg.setConfigOptions(mouseRateLimit=rate_limit)


def map_position(view, x, y) -> QPoint:
    """Where map coordinates (x, y) are drawn, in the plot viewport's pixels."""
    point = view.plot.mapFromScene(view.viewbox.mapViewToScene(QPointF(float(x), float(y))))
    return QPoint(point.x(), point.y())


def wait_until_laid_out(qtbot, view, timeout: int = 5000):
    """Until the fitted map fills most of its viewport (the view's layout has settled)."""
    def filled() -> bool:
        corners = [map_position(view, *view.coords.min(axis=0)), map_position(view, *view.coords.max(axis=0))]
        size = view.plot.viewport().size()
        return (abs(corners[1].x() - corners[0].x()) > 0.8 * size.width()
                and abs(corners[1].y() - corners[0].y()) > 0.8 * size.height())

    qtbot.waitUntil(filled, timeout=timeout)


def lasso_around(view, coords):
    """Drag a lasso just around these map coordinates."""
    pad = 0.03 * (view.coords.max(axis=0) - view.coords.min(axis=0))
    lo, hi = coords.min(axis=0) - pad, coords.max(axis=0) + pad
    path = [map_position(view, lo[0], lo[1]), map_position(view, hi[0], lo[1]), map_position(view, hi[0], hi[1]),
            map_position(view, lo[0], hi[1]), map_position(view, lo[0], lo[1] + pad[1])]
    drag(view.plot.viewport(), path)


def test_lasso_labels_several_images_as_one_undoable_step(qtbot, project):
    from gui.labeling import SetLabelCommand

    ids = add_images(project, 40)
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    set_labels(project, [1, 2], bees.id)
    changed = []
    view = EmbeddingView(None, project)
    view.labels_changed.connect(changed.append)
    qtbot.addWidget(view)
    view.resize(600, 500)
    view.show()
    qtbot.waitExposed(view)
    # points 1..20 on the left half, 21..40 on the right half
    coords = np.array([[-1 + 0.1 * (i % 5), -1 + 0.5 * (i // 5)] for i in range(20)]
                      + [[0.6 + 0.1 * (i % 5), -1 + 0.5 * (i // 5)] for i in range(20)], float)
    view.set_layout(ids, coords)
    assert view.class_ids[:2].tolist() == [bees.id, bees.id]
    wait_until_laid_out(qtbot, view)
    with qtbot.waitSignal(view.images_selected, timeout=2000):
        lasso_around(view, view.coords[:20])
    assert sorted(view.selected_ids) == ids[:20]

    qtbot.keyClick(view.plot, "1")  # shortcut 1 = ants
    assert view.undo_stack.count() == 1
    assert isinstance(view.undo_stack.command(0), SetLabelCommand)  # the grid's own label command
    states = {s.image_id: s.class_id for s in label_states(project, ids)}
    assert all(states[i] == ants.id for i in ids[:20]) and all(states[i] is None for i in ids[20:])
    assert (view.class_ids[:20] == ants.id).all()
    assert changed and sorted(changed[-1]) == ids[:20]

    view.undo_stack.undo()
    states = {s.image_id: s.class_id for s in label_states(project, ids)}
    assert states[1] == bees.id and states[2] == bees.id
    assert all(states[i] is None for i in ids[2:])
    view.undo_stack.redo()
    assert label_states(project, [5])[0].class_id == ants.id


def test_embedding_partials_move_points_and_colors(qtbot, runner, project):
    ids = add_images(project, 30)
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    set_labels(project, ids[:10], ants.id)
    save_version(project, [ants, bees], {i: ants.id for i in ids[:25]})
    rng = np.random.default_rng(0)
    layouts = [rng.normal(size=(30, 2)) for _ in range(3)]

    def fake_embedding(context, project_arg, backbone, layer):
        """What engine.insight.projection.embedding_job streams: PCA, then t-SNE steps."""
        image_ids = np.array(ids)
        context.partial(MapLayout(image_ids, layouts[0], "pca"))
        for i, layout in enumerate(layouts[1:], 1):
            context.partial(MapLayout(image_ids, layout, "tsne", iteration=25 * i, total_iterations=50))
        return MapLayout(image_ids, layouts[-1], "tsne")

    view = EmbeddingView(runner, project)
    qtbot.addWidget(view)
    view.resize(500, 400)
    seen = []
    runner.partial.connect(lambda name, result: seen.append(view.coords.copy()))
    with qtbot.waitSignal(runner.finished, timeout=5000):
        assert view.compute("efficientnet_lite0", None, job=fake_embedding)
    # Each partial moved the points as it arrived: the PCA layout first, then each t-SNE step.
    assert len(seen) == 3
    for coords, layout in zip(seen, layouts):
        np.testing.assert_allclose(coords, normalize_layout(layout), rtol=1e-5)
    assert not np.allclose(seen[0], seen[1]) and not np.allclose(seen[1], seen[2])
    np.testing.assert_allclose(view.coords, normalize_layout(layouts[-1]), rtol=1e-5)
    assert view.method == "tsne" and view.status.text() == "30 images, similar ones close together (t-SNE)."
    groups = view.plot.groups
    assert sorted(len(idx) for idx, _item in groups) == [10, 20]  # labeled ants, unlabeled
    view.set_color_mode("prediction")
    assert sorted(len(idx) for idx, _item in view.plot.groups) == [5, 10, 15]  # ants labeled / predicted-only / none
    view.set_color_mode("source")
    assert sorted(len(idx) for idx, _item in view.plot.groups) == [5, 5, 10, 10]
    assert view.toolbar.color_combo.currentData() == "source"
    assert not view.compute("efficientnet_lite0", None, job=fake_embedding)  # same images: recolor only


def test_stale_map_partials_are_ignored_and_project_change_cancels(qtbot, runner, project, tmp_path):
    """A partial still queued from a replaced map job never reaches the view; changing project
    cancels the running map job."""
    from storage.project import create_project

    ids = np.array(add_images(project, 6))
    old_layout, new_layout = np.c_[np.arange(6.0), np.zeros(6)], np.c_[np.zeros(6), np.arange(6.0) ** 2]
    sent, stopped = threading.Event(), threading.Event()

    def run_until_cancelled(context):
        while True:  # a long t-SNE, stopped only by cancelling
            try:
                context.check_cancelled()
            except JobCancelled:
                stopped.set()
                raise
            time.sleep(0.005)

    def old_job(context, project_arg, backbone, layer):
        context.partial(MapLayout(ids, old_layout, "pca"))
        sent.set()
        run_until_cancelled(context)

    def new_job(context, project_arg, backbone, layer):
        context.partial(MapLayout(ids, new_layout, "pca"))
        run_until_cancelled(context)

    view = EmbeddingView(runner, project)
    qtbot.addWidget(view)
    layouts = []
    view.jobs.layout_streamed.connect(lambda layout: layouts.append(layout.coords))
    assert view.compute("efficientnet_lite0", None, job=old_job)
    assert sent.wait(5)  # its partial is queued for the GUI thread, not yet delivered
    assert view.compute("efficientnet_lite0", None, force=True, job=new_job)
    assert stopped.wait(5)  # the old job was cancelled
    stopped.clear()
    # Partials arrive in the order they were sent: once the new one is here, the old one was dropped.
    qtbot.waitUntil(lambda: len(layouts) >= 1, timeout=5000)
    assert len(layouts) == 1 and np.array_equal(layouts[0], new_layout)
    np.testing.assert_allclose(view.coords, normalize_layout(new_layout), rtol=1e-6)

    other = create_project(tmp_path / "other.sortlab")
    try:
        with qtbot.waitSignal(runner.finished, timeout=5000) as finished:
            view.set_project(other)
        assert finished.args[1].status is JobStatus.CANCELLED and stopped.is_set()
        assert len(view.image_ids) == 0 and not view.showing_points
        assert view.empty_text.text().startswith("No map yet") and view.status.text() == ""
    finally:
        other.close()


def test_map_colors_are_read_in_the_background(qtbot, project):
    """With a reader runner, labels and predictions are read off the GUI thread; a burst of
    requests while one read is in flight ends with exactly one more read, of the latest labels."""
    ids = add_images(project, 20)
    ants = add_class(project, "ants")
    reader = QtJobRunner()
    reads = []
    try:
        view = EmbeddingView(None, project, reader=reader)
        qtbot.addWidget(view)
        reader.finished.connect(lambda name, outcome: reads.append(name))
        view.set_layout(ids, np.random.default_rng(0).normal(size=(20, 2)))
        assert (view.class_ids == -1).all()  # nothing read on the GUI thread
        qtbot.waitUntil(lambda: reads == ["map-colors"], timeout=5000)
        set_labels(project, ids[:5], ants.id)
        for _ in range(5):
            view.refresh_attributes()
        set_labels(project, ids[5:8], ants.id)
        qtbot.waitUntil(lambda: len(reads) == 3, timeout=5000)
        assert not reader.busy  # the first, then the burst as one read and one follow-up: no fourth
        assert (view.class_ids[:8] == ants.id).all()
        assert (view.class_ids[8:] == -1).all()
    finally:
        reader.shutdown()


def test_hover_shows_the_image_and_what_the_model_says(qtbot, project):
    """The card names the file (a long name elided in the middle, the card inside the map) and says
    the label and the model's answer in words."""
    from storage.models import Image

    ids = add_images(project, 3)
    long_name = "holiday-2025-camera-one-" + "very-long-part-" * 8 + "IMG_0042.jpg"
    with project.writing() as session:
        session.get(Image, 3).original_name = long_name
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    set_labels(project, [1], ants.id)
    save_version(project, [ants, bees], {1: ants.id, 2: bees.id})
    view = EmbeddingView(None, project)
    qtbot.addWidget(view)
    view.resize(320, 300)
    view.show()
    qtbot.waitExposed(view)
    view.set_layout(ids, np.array([[0, 0], [1, 1], [2, 0]], float))
    wait_until_laid_out(qtbot, view)
    hover, card = view.hover, view.hover.card
    for index, name, caption in ((0, "0.png", "labeled ants · the model says ants"),
                                 (1, "1.png", "not labeled · the model says bees"), (2, None, "not labeled")):
        hover.scene_pos = view.viewbox.mapViewToScene(QPointF(*map(float, view.coords[index])))
        hover.update()
        assert hover.index == index and card.caption.text() == caption and card.isVisible()
        assert "#" not in card.name.text()
        if name is not None:
            assert card.name.text() == name
    shown = card.name.text()  # elided in the middle: the start and the extension stay
    assert "…" in shown and shown.startswith("holiday-") and shown.endswith("0042.jpg")
    assert card.name.toolTip() == long_name
    assert view.rect().contains(card.geometry())  # the card stays inside the map
    far = view.coords.mean(axis=0) + [0.0, 0.4 * np.ptp(view.coords[:, 1])]
    hover.scene_pos = view.viewbox.mapViewToScene(QPointF(*map(float, far)))
    hover.update()
    assert hover.index == -1 and not hover.card.isVisible()


def test_fast_scatter_fill_gives_the_points_setdata_would(qtbot):
    """fill_scatter (one record resolved, copied or taken from a pool) and move_scatter give
    pyqtgraph exactly the point records that setData builds one by one."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=500), rng.normal(size=500)

    def item(color):
        return pg.ScatterPlotItem(pxMode=True, size=6, symbol="o", pen=pg.mkPen("#000000"), brush=pg.mkBrush(color))

    reference = item("#ff0000")
    reference.setData(x=x, y=y)
    pool = RecordPool()
    other = item("#00ff00")
    fill_scatter(other, x[:100], y[:100], pool, 0)  # another style in the same pool
    for fast in (item("#ff0000"), item("#ff0000")):
        fill_scatter(fast, x, y, pool, 100)
        for field in ("x", "y", "size", "visible", "sourceRect"):
            np.testing.assert_array_equal(fast.data[field], reference.data[field])
        assert fast.boundingRect() == reference.boundingRect()
    plain = item("#ff0000")
    fill_scatter(plain, x, y)
    np.testing.assert_array_equal(plain.data["sourceRect"], reference.data["sourceRect"])
    np.testing.assert_array_equal(other.getData()[0], x[:100])  # its slice was left alone

    move_scatter(plain, y, x)
    np.testing.assert_array_equal(plain.getData()[0], y)
    fill_scatter(plain, x[:3], y[:3])
    assert len(plain.data) == 3


def test_map_groups_hold_exactly_their_points(qtbot):
    from storage.catalog import ClassInfo

    view = EmbeddingView(None, None)
    qtbot.addWidget(view)
    ids = np.arange(1, 41)
    coords = np.random.default_rng(2).normal(size=(40, 2))
    view.set_layout(ids, coords)
    classes = [ClassInfo(1, "ants", "#ff0000", 0, "1"), ClassInfo(2, "bees", "#0000ff", 1, "2")]
    labels = np.where(ids % 3 == 0, 1, np.where(ids % 3 == 1, 2, -1))
    for _ in range(2):  # recoloring reuses the shared point records
        view.set_attributes(labels, predicted=np.where(ids < 20, 1, 2), classes=classes)
        for mode in ("label", "prediction", "source"):
            view.set_color_mode(mode)
            seen = np.concatenate([idx for idx, _item in view.plot.groups])
            assert sorted(seen.tolist()) == list(range(40))
            for idx, scatter in view.plot.groups:
                np.testing.assert_allclose(np.column_stack(scatter.getData()), view.coords[idx].astype(float))
        labels = -labels
    view.set_layout(np.zeros(0, np.int64), np.zeros((0, 2)))
    assert view.plot.groups == [] and view.legend.text() == ""


def test_large_maps_cache_their_drawing_and_make_room_for_it(qtbot):
    from PySide6.QtGui import QPixmapCache
    from PySide6.QtWidgets import QGraphicsItem

    from gui.map_canvas import CACHE_FROM_POINTS

    view = EmbeddingView(None, None)
    qtbot.addWidget(view)
    view.resize(500, 400)
    view.show()
    rng = np.random.default_rng(0)
    view.set_layout(np.arange(1, 101), rng.normal(size=(100, 2)))
    assert all(item.cacheMode() == QGraphicsItem.CacheMode.NoCache for _idx, item in view.plot.groups)
    n = CACHE_FROM_POINTS
    before = QPixmapCache.cacheLimit()
    try:
        QPixmapCache.setCacheLimit(1)  # as if tiny: the map must raise it
        view.set_layout(np.arange(1, n + 1), rng.normal(size=(n, 2)))
        cached = QGraphicsItem.CacheMode.DeviceCoordinateCache
        assert all(item.cacheMode() == cached for _idx, item in view.plot.groups)
        assert view.plot.selection_item.cacheMode() == cached
        size = view.plot.viewport().size()
        assert QPixmapCache.cacheLimit() * 1024 >= size.width() * size.height() * 4 * (len(view.plot.groups) + 1)
    finally:
        QPixmapCache.setCacheLimit(max(before, QPixmapCache.cacheLimit()))


def test_map_view_follows_the_layout_until_the_user_pans(qtbot):
    """A map computed in a hidden tab, or moved by t-SNE, stays in view; a user's pan or zoom wins."""
    view = EmbeddingView(None, None)
    qtbot.addWidget(view)
    ids = np.arange(1, 201)
    rng = np.random.default_rng(3)
    view.set_layout(ids, rng.normal(size=(200, 2)))
    view.resize(600, 400)
    view.show()
    qtbot.waitExposed(view)

    def points_in_view() -> bool:
        (x0, x1), (y0, y1) = view.viewbox.viewRange()
        x, y = view.coords[:, 0], view.coords[:, 1]
        return bool(np.all((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)))

    view.viewbox.setRange(xRange=(5, 6), yRange=(5, 6), padding=0)  # as if fitted elsewhere
    view.resize(700, 450)
    qtbot.waitUntil(points_in_view, timeout=2000)
    view.set_layout(ids, rng.normal(size=(200, 2)) * [3.0, 0.3] + [2.0, 0.0])  # a t-SNE step
    assert points_in_view()

    view.viewbox.sigRangeChangedManually.emit([True, True])  # the user zoomed in
    view.viewbox.setRange(xRange=(0, 0.1), yRange=(0, 0.1), padding=0)
    view.set_layout(ids, rng.normal(size=(200, 2)))
    assert not points_in_view(), "the user's zoom is kept"
    qtbot.mouseClick(view.toolbar.fit_button, Qt.MouseButton.LeftButton)
    assert points_in_view()


def test_the_map_says_what_will_appear_and_failures_in_plain_words(qtbot, runner, project):
    """No project, no features, a failed layout: a sentence instead of a blank square (and never a
    Python message on screen); points replace the sentence; no stray "A" button on the map."""
    from gui.embedding_view import FAILED_TEXT

    view = EmbeddingView(runner, None)
    qtbot.addWidget(view)
    view.resize(400, 300)
    view.show()
    qtbot.waitExposed(view)
    assert not view.showing_points and view.empty_text.text().startswith("Open or create a project")
    view.set_project(project)
    assert not view.showing_points and view.empty_text.text().startswith("No map yet. Label a few images")

    def broken(context, project_arg, backbone, layer):
        raise ImportError("cannot import name 'Affinities' from partially initialized module 'openTSNE.affinity'",
                          name="openTSNE.affinity")

    with qtbot.waitSignal(view.jobs.layout_finished, timeout=5000):
        assert view.compute("efficientnet_lite0", None, job=broken)
    assert view.empty_text.text() == FAILED_TEXT and view.status.text() == ""  # said once
    assert "openTSNE" in view.empty_text.toolTip() and "Affinities" not in view.empty_text.toolTip()

    ids = add_images(project, 4)
    view.set_layout(ids, np.random.default_rng(0).normal(size=(4, 2)))
    assert view.showing_points
    item = view.plot.getPlotItem()
    item.mouseHovering = True  # as when the mouse is over the map, zoomed in by hand
    view.viewbox.setRange(xRange=(0, 0.1), yRange=(0, 0.1))
    item.updateButtons()
    assert item.buttonsHidden and not item.autoBtn.isVisible()


def test_map_tools_switch_what_a_drag_does(qtbot):
    view = EmbeddingView(None, None)
    qtbot.addWidget(view)
    assert view.viewbox.tool == "lasso"
    qtbot.mouseClick(view.toolbar.tool_buttons["rect"], Qt.MouseButton.LeftButton)
    assert view.viewbox.tool == "rect"
    view.set_tool("move")
    assert view.viewbox.tool == "move" and view.toolbar.tool_buttons["move"].isChecked()


def test_a_finished_run_says_its_recipe_and_why_unless_it_retrained_by_itself():
    from engine.models.metrics import Metrics
    from engine.models.results import TrainResult

    params = {"recipe": "logistic regression on unit-length features, C = 3",
              "recipe_reason": "chosen: 91.0% against the default's 89.5%"}
    result = TrainResult(4, "logreg", "efficientnet_lite1", "pooled", Metrics(accuracy=0.9), 300, 1, params)
    text = done_text(result, 2.0)
    assert text.endswith("Recipe: logistic regression on unit-length features, C = 3 "
                         "(chosen: 91.0% against the default's 89.5%).")
    automatic = TrainResult(5, "logreg", "efficientnet_lite1", "pooled", Metrics(accuracy=0.9), 301, 2,
                            params | {"automatic": True})
    assert "Recipe" not in done_text(automatic, 0.5)
