"""Training panel, curves, model report and embedding map, driven offscreen with fake jobs."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from gui.embedding_view import EmbeddingView, RecordPool, fill_scatter, move_scatter, normalize_layout, points_in_polygon
from gui.model_report import ModelReport, build_report, project_report
from gui.runner import QtJobRunner
from gui.training_panel import BackboneChoice, TimeLeftEstimator, TrainingPanel

pytestmark = pytest.mark.gui
BACKBONES = [BackboneChoice("efficientnet_lite0", "EfficientNet-Lite0", ("head", "block6"), "head")]


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


def make_panel(qtbot, runner, project, train_fn, **kwargs):
    panel = TrainingPanel(runner, project, train_fn=train_fn, backbones=BACKBONES, device="cpu",
                          history_fn=kwargs.pop("history_fn", lambda p: ([], [])), **kwargs)
    qtbot.addWidget(panel)
    return panel


# -- training panel -----------------------------------------------------------------------------
def slow_fake_training(context, project, method, backbone, layer):
    for step in range(400):
        context.check_cancelled()
        context.progress(step / 400, f"Extracting features ({step}/400)")
        time.sleep(0.01)
    return {"metrics": {"val_acc": 0.9}}


def test_nothing_to_start_before_a_project_is_open(qtbot, runner, project):
    panel = make_panel(qtbot, runner, None, slow_fake_training)
    assert not panel.start_button.isEnabled()
    assert panel.start() is False
    panel.set_project(project)
    assert panel.start_button.isEnabled()


def test_start_then_cancel_from_the_panel(qtbot, runner, project):
    calls = []

    def train(context, project_arg, method, backbone, layer):
        calls.append((method, backbone, layer))
        return slow_fake_training(context, project_arg, method, backbone, layer)

    panel = make_panel(qtbot, runner, project, train)
    assert panel.start_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert not panel.advanced.isVisibleTo(panel)
    qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
    assert panel.is_running and panel.cancel_button.isEnabled() and not panel.start_button.isEnabled()
    qtbot.waitUntil(lambda: panel.progress_bar.value() > 0, timeout=5000)
    assert "Extracting features" in panel.step_label.text()
    with qtbot.waitSignal(panel.training_finished, timeout=5000) as finished:
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    assert finished.args[0].status == "cancelled"
    assert calls == [("logreg", "efficientnet_lite0", "head")]
    assert not panel.is_running and panel.start_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert "cancelled" in panel.step_label.text().lower()


def test_epoch_partials_reach_the_curves(qtbot, runner, project):
    epochs = [{"kind": "epoch", "epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + e / 10,
               "val_loss": 1.2 / e, "val_acc": 0.4 + e / 10} for e in (1, 2, 3)]

    def fine_tune(context, project_arg, method, backbone, layer):
        for epoch in epochs:
            context.partial(epoch)
            context.progress(epoch["epoch"] / 3, f"Epoch {epoch['epoch']} of 3")
        return {"metrics": {"val_acc": 0.7}}

    panel = make_panel(qtbot, runner, project, fine_tune)
    panel.set_method("finetune")
    with qtbot.waitSignal(panel.training_finished, timeout=5000) as finished:
        assert panel.start()
    assert finished.args[0].status == "done"
    np.testing.assert_allclose(panel.curves.epoch_data("val_acc"), [0.5, 0.6, 0.7])
    np.testing.assert_allclose(panel.curves.epoch_data("train_loss"), [1.0, 0.5, 1 / 3])
    x, y = panel.curves.acc_curves["val_acc"].getData()
    np.testing.assert_allclose(x, [1, 2, 3])
    np.testing.assert_allclose(y, [50, 60, 70])  # fractions are shown as percentages
    assert panel.curves.stack.currentIndex() == 0
    assert "70.0%" in panel.step_label.text()


def test_quick_history_curve_and_automatic_retraining(qtbot, runner, project):
    from storage.catalog import add_class, set_labels

    ids = add_images(project, 4)
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    set_labels(project, ids[:2], ants.id)  # one class only: training cannot succeed yet
    history = ([10, 40, 25], [0.6, 0.9, 0.8])
    runs = []

    def quick(context, project_arg, method, backbone, layer):
        runs.append(method)
        return {"metrics": {"val_acc": 0.9}}

    panel = make_panel(qtbot, runner, project, quick, history_fn=lambda p: history)
    x, y = panel.curves.history_curve.getData()
    np.testing.assert_allclose(x, [10, 25, 40])
    np.testing.assert_allclose(y, [60, 80, 90])
    panel._retrain_timer.setInterval(50)
    panel.labels_changed([1])
    qtbot.wait(300)
    assert runs == [] and not panel.is_running  # not started, so no "Only one class" error either
    assert "failed" not in panel.step_label.text().lower()

    set_labels(project, ids[2:], bees.id)
    for _ in range(5):  # a burst of labeling: one retraining
        panel.labels_changed([3])
    with qtbot.waitSignal(panel.training_finished, timeout=5000):
        pass
    qtbot.wait(200)
    assert runs == ["logreg"]
    panel.auto_retrain.setChecked(False)
    panel.labels_changed([2])
    qtbot.wait(200)
    assert runs == ["logreg"]


def test_automatic_failure_is_quiet_but_start_button_failure_is_clear(qtbot, runner, project):
    def refuses(context, project_arg, method, backbone, layer):
        raise ValueError("Only one class has labeled images: label images of at least two classes.")

    panel = make_panel(qtbot, runner, project, refuses, can_train_fn=lambda p: True)
    panel._retrain_timer.setInterval(10)
    with qtbot.waitSignal(panel.training_finished, timeout=5000) as finished:
        panel.labels_changed([1])
    assert finished.args[0].status == "failed"
    assert "Training failed" not in panel.step_label.text()
    assert "b00020" not in panel.step_label.styleSheet()
    assert "previous model is still in use" in panel.step_label.text()

    with qtbot.waitSignal(panel.training_finished, timeout=5000):
        qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
    assert panel.step_label.text().startswith("Training failed: Only one class")
    assert "b00020" in panel.step_label.styleSheet()
    with qtbot.waitSignal(panel.training_finished, timeout=5000):
        panel.start()
    assert panel.step_label.text().startswith("Training failed")


def test_progress_shows_the_step_and_time_left(qtbot, runner, project):
    import threading

    release = threading.Event()

    def waits(context, project_arg, method, backbone, layer):
        release.wait(5)
        return {"metrics": {"val_acc": 0.8}}

    panel = make_panel(qtbot, runner, project, waits)
    now = [100.0]
    panel._estimator = TimeLeftEstimator(window_s=10, clock=lambda: now[0])
    assert panel.start()
    runner.progress.emit("train", 0.0, "Extracting features (0/500)")
    assert panel.step_label.text() == "Extracting features (0/500)"  # no rate yet: no guess
    now[0] = 104.0
    runner.progress.emit("train", 0.2, "Extracting features (100/500)")
    assert panel.progress_bar.value() == 200
    assert panel.step_label.text() == "Extracting features (100/500) — about 16 s left"
    now[0] = 184.0
    runner.progress.emit("train", 0.6, "Extracting features (300/500)")
    # the first sample fell out of the 10 s window: 0.4 to go at the recent rate of 0.4 per 80 s
    assert panel.step_label.text() == "Extracting features (300/500) — about 1 min 20 s left"
    runner.progress.emit("other-job", 0.9, "Importing")
    assert "Importing" not in panel.step_label.text()
    with qtbot.waitSignal(panel.training_finished, timeout=5000):
        release.set()
    assert "80.0%" in panel.step_label.text()


def test_device_label_says_whether_a_gpu_is_used(qtbot, runner, project):
    from engine.jobs import JobOutcome

    panel = make_panel(qtbot, runner, project, slow_fake_training)
    assert panel.device_label.text().startswith("No GPU found: training uses the processor")
    panel._options_known(JobOutcome("done", {"device": "GPU: NVIDIA GeForce RTX 4090 (PyTorch CUDA)"}))
    assert panel.device_label.text() == "GPU in use: NVIDIA GeForce RTX 4090 (PyTorch CUDA)"
    panel._options_known(JobOutcome("done", {"device": "CPU, 8 threads (onnxruntime)"}))
    assert panel.device_label.text().startswith("No GPU found") and "8 threads" in panel.device_label.text()
    gpu_panel = TrainingPanel(runner, project, train_fn=slow_fake_training, backbones=BACKBONES,
                              device="cuda:0", history_fn=lambda p: ([], []))
    qtbot.addWidget(gpu_panel)
    assert gpu_panel.device_label.text() == "GPU in use: cuda:0"


def test_time_left_follows_the_recent_rate():
    now = [0.0]
    estimator = TimeLeftEstimator(window_s=10, clock=lambda: now[0])
    assert estimator.update(0.0) is None
    now[0] = 2.0
    assert estimator.update(0.1) == pytest.approx(18.0)
    now[0] = 4.0
    assert estimator.update(0.2) == pytest.approx(16.0)
    now[0] = 5.0
    assert estimator.update(0.05) is None  # a new step restarted the bar


# -- model report -------------------------------------------------------------------------------
@dataclass
class FakeModel:
    version: int
    created_at: object
    method: str
    backbone: str
    metrics: dict
    n_labeled: int
    is_active: bool


@dataclass
class FakePrediction:
    class_id: int
    probability: float = 0.9


def test_build_report_metrics():
    report = build_report([1, 2, 3, 4, 5, 6], [10, 10, 10, 20, 20, 30], [10, 20, 10, 20, 20, 10],
                          [10, 20, 30], ["a", "b", "c"], ["s1", "s1", "s2", "s2", "s2", "s1"])
    assert report.accuracy == pytest.approx(4 / 6)
    assert report.balanced_accuracy == pytest.approx((2 / 3 + 1 + 0) / 3)
    np.testing.assert_allclose(report.recall, [2 / 3, 1, 0])
    np.testing.assert_allclose(report.precision[:2], [2 / 3, 2 / 3])
    assert report.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report.cell_images[(0, 1)] == [2] and report.cell_images[(2, 0)] == [6]
    assert report.sources == [("s1", pytest.approx(1 / 3), 3), ("s2", 1.0, 3)]


def test_confusion_cell_click_shows_exactly_those_images(qtbot, project):
    import datetime as dt

    from storage.catalog import add_class, set_labels

    ids = add_images(project, 12)
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    set_labels(project, ids[:6], ants.id)
    set_labels(project, ids[6:10], bees.id)  # 11 and 12 stay unlabeled
    predicted = {i: FakePrediction(ants.id if i in (1, 2, 3, 4, 7, 11) else bees.id) for i in ids}
    models = [FakeModel(1, dt.datetime(2024, 5, 1, 9, 30), "logreg", "efficientnet_lite0", {"val_acc": 0.7}, 8, False),
              FakeModel(2, dt.datetime(2024, 5, 2, 9, 30), "logreg", "efficientnet_lite0", {"val_acc": 0.8}, 10, True)]
    activated = []
    report_widget = ModelReport(
        project, list_models_fn=lambda p: models, set_active_fn=lambda p, v: activated.append(v),
        report_fn=lambda p, v: project_report(p, v, predictions_fn=lambda p2, v2: predicted),
    )
    qtbot.addWidget(report_widget)
    report_widget.resize(700, 700)
    report_widget.show()
    assert report_widget.selected_version() == 2  # the active one is shown
    report = report_widget.report
    assert report.n == 10 and report.accuracy == pytest.approx(7 / 10)
    assert report_widget.matrix.item(1, 0).text() == "1"

    matrix = report_widget.matrix
    rect = matrix.visualItemRect(matrix.item(0, 1))  # true ants, said bees
    with qtbot.waitSignal(report_widget.show_images, timeout=2000) as shown:
        qtbot.mouseClick(matrix.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert shown.args[0] == [5, 6]
    assert "ants taken for bees" in shown.args[1]
    rect = matrix.visualItemRect(matrix.item(1, 0))
    with qtbot.waitSignal(report_widget.show_images, timeout=2000) as shown:
        qtbot.mouseClick(matrix.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert shown.args[0] == [7]

    report_widget.versions_table.selectRow(0)
    assert report_widget.activate_button.isEnabled()
    with qtbot.waitSignal(report_widget.active_changed, timeout=2000):
        qtbot.mouseClick(report_widget.activate_button, Qt.MouseButton.LeftButton)
    assert activated == [1]


def test_report_is_computed_in_the_background_and_late_reports_are_dropped(qtbot, runner, project):
    import datetime as dt
    import threading

    models = [FakeModel(v, dt.datetime(2024, 5, v), "logreg", "b", {"val_acc": 0.5}, 4, v == 2) for v in (1, 2)]
    release = threading.Event()
    threads, computed = set(), []

    def report_fn(project_arg, version):
        threads.add(threading.get_ident())
        if version == 1:
            release.wait(5)  # the slow report of version 1
        computed.append(version)
        return build_report([1, 2], [10, 20], [10, 10 if version == 1 else 20], [10, 20], ["a", "b"], basis=f"v{version}")

    widget = ModelReport(project, list_models_fn=lambda p: models, report_fn=report_fn, runner=runner)
    qtbot.addWidget(widget)
    qtbot.waitUntil(lambda: widget.report_version == 2, timeout=5000)
    assert threading.get_ident() not in threads  # never on the GUI thread
    assert widget.report.accuracy == 1.0
    widget.versions_table.selectRow(0)  # version 1: slow
    assert "Computing the report of version 1" in widget.summary.text()
    widget.versions_table.selectRow(1)  # the user moves on before it arrives
    with qtbot.waitSignal(runner.finished, timeout=5000):
        release.set()
    qtbot.waitUntil(lambda: computed.count(2) == 2, timeout=5000)
    qtbot.wait(50)
    assert widget.report_version == 2 and widget.report.basis == "v2"  # version 1's late report was dropped
    widget.refresh()  # new labels: the same version's report is computed again
    qtbot.waitUntil(lambda: computed.count(2) == 3, timeout=5000)


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
    """Left-drag through the given widget positions with real mouse events."""
    def send(kind, pos, button, buttons):
        event = QMouseEvent(kind, QPointF(pos), QPointF(widget.mapToGlobal(pos)), button, buttons,
                            Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(widget, event)

    left = Qt.MouseButton.LeftButton
    send(QEvent.Type.MouseButtonPress, points[0], left, left)
    for point in points[1:]:
        QTest.qWait(25)  # pyqtgraph drops move events that come faster than its rate limit
        send(QEvent.Type.MouseMove, point, Qt.MouseButton.NoButton, left)
    send(QEvent.Type.MouseButtonRelease, points[-1], left, Qt.MouseButton.NoButton)


def test_lasso_labels_several_images_as_one_undoable_step(qtbot, project):
    from storage.catalog import add_class, label_states, set_labels

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
    vb = view.viewbox
    qtbot.wait(50)  # let the view apply its new range before mapping map coordinates to pixels

    def to_widget(x, y):
        return view.plot.mapFromScene(vb.mapViewToScene(QPointF(float(x), float(y))))

    left = normalize_layout(coords)[:20]
    pad = np.array([0.02, 0.02])  # inside the view's own 5% margin
    lo, hi = left.min(axis=0) - pad, left.max(axis=0) + pad
    path = [to_widget(lo[0], lo[1]), to_widget(hi[0], lo[1]), to_widget(hi[0], hi[1]), to_widget(lo[0], hi[1]),
            to_widget(lo[0], lo[1] + pad[1])]
    drag(view.plot.viewport(), [QPoint(p.x(), p.y()) for p in path])
    assert sorted(view.selected_ids) == ids[:20]

    qtbot.keyClick(view.plot, "1")  # shortcut 1 = ants
    assert view.undo_stack.count() == 1
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
    from storage.catalog import add_class, set_labels

    ids = add_images(project, 30)
    ants = add_class(project, "ants")
    set_labels(project, ids[:10], ants.id)
    rng = np.random.default_rng(0)
    layouts = [rng.normal(size=(30, 2)) for _ in range(3)]

    def fake_embedding(context, project_arg, backbone, layer):
        context.partial({"kind": "embedding", "coords": layouts[0], "iteration": 0, "method": "pca", "image_ids": np.array(ids)})
        for i, layout in enumerate(layouts[1:], 1):
            context.partial({"kind": "embedding", "coords": layout, "iteration": 25 * i, "method": "tsne",
                             "image_ids": np.array(ids), "total_iterations": 50})
        return {"image_ids": np.array(ids), "coords": layouts[-1], "method": "tsne"}

    view = EmbeddingView(runner, project, predictions_fn=lambda p: {i: FakePrediction(ants.id) for i in ids[:25]})
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
    assert view.method == "tsne"
    sizes = {len(idx) for idx, _item in view._groups}
    assert sizes == {10, 20}  # labeled ants, unlabeled
    view.set_color_mode("prediction")
    assert sorted(len(idx) for idx, _item in view._groups) == [5, 10, 15]  # ants labeled / predicted-only / none
    view.set_color_mode("source")
    assert sorted(len(idx) for idx, _item in view._groups) == [5, 5, 10, 10]
    assert not view.compute("efficientnet_lite0", None, job=fake_embedding)  # same images: recolor only


def test_stale_map_partials_are_ignored_and_project_change_cancels(qtbot, runner, project, tmp_path):
    """A partial still queued from a replaced map job never reaches the view; changing project
    cancels the running map job."""
    import threading

    from storage.project import create_project

    ids = np.array(add_images(project, 6))
    old_layout, new_layout = np.c_[np.arange(6.0), np.zeros(6)], np.c_[np.zeros(6), np.arange(6.0) ** 2]
    sent, stopped = threading.Event(), threading.Event()

    def run_until_cancelled(context):
        while True:  # a long t-SNE, stopped only by cancelling
            try:
                context.check_cancelled()
            except Exception:
                stopped.set()
                raise
            time.sleep(0.005)

    def old_job(context, project_arg, backbone, layer):
        context.partial({"kind": "embedding", "coords": old_layout, "iteration": 0, "method": "pca", "image_ids": ids})
        sent.set()
        run_until_cancelled(context)

    def new_job(context, project_arg, backbone, layer):
        context.partial({"kind": "embedding", "coords": new_layout, "iteration": 0, "method": "pca", "image_ids": ids})
        run_until_cancelled(context)

    view = EmbeddingView(runner, project)
    qtbot.addWidget(view)
    layouts = []
    original = view.set_layout
    view.set_layout = lambda image_ids, coords, *args, **kwargs: (layouts.append(np.asarray(coords)),
                                                                  original(image_ids, coords, *args, **kwargs))
    assert view.compute("efficientnet_lite0", None, job=old_job)
    assert sent.wait(5)  # its partial is queued for the GUI thread, not yet delivered
    assert view.compute("efficientnet_lite0", None, force=True, job=new_job)
    assert stopped.wait(5)  # the old job was cancelled
    stopped.clear()
    qtbot.waitUntil(lambda: len(layouts) >= 1, timeout=5000)
    qtbot.wait(100)
    assert len(layouts) == 1 and np.array_equal(layouts[0], new_layout)  # the old partial was dropped
    assert len(view.image_ids) == 6

    other = create_project(tmp_path / "other.sortlab")
    try:
        with qtbot.waitSignal(runner.finished, timeout=5000) as finished:
            view.set_project(other)
        assert finished.args[1].status == "cancelled" and stopped.is_set()
        assert len(view.image_ids) == 0 and "No map yet" in view.status.text()
    finally:
        other.close()


def test_map_colors_are_read_in_the_background(qtbot, runner, project):
    """With a reader runner, labels and predictions are read off the GUI thread; a burst of
    requests while one read is in flight ends with exactly one more read, of the latest labels."""
    from storage.catalog import add_class, set_labels

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
        qtbot.wait(100)
        assert reads == ["map-colors"] * 3  # the first, then the burst as one read and one follow-up
        assert (view.class_ids[:8] == ants.id).all()
        assert (view.class_ids[8:] == -1).all()
    finally:
        reader.shutdown()


def test_fast_scatter_fill_gives_the_points_setdata_would(qtbot):
    """fill_scatter (one record resolved, copied or taken from a pool) and move_scatter give
    pyqtgraph exactly the point records that setData builds one by one."""
    import pyqtgraph as pg

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
            seen = np.concatenate([idx for idx, _item in view._groups])
            assert sorted(seen.tolist()) == list(range(40))
            for idx, scatter in view._groups:
                np.testing.assert_allclose(np.column_stack(scatter.getData()), view.coords[idx].astype(float))
        labels = -labels


def test_large_maps_cache_their_drawing_and_make_room_for_it(qtbot):
    from PySide6.QtGui import QPixmapCache
    from PySide6.QtWidgets import QGraphicsItem

    from gui import embedding_view

    view = EmbeddingView(None, None)
    qtbot.addWidget(view)
    view.resize(500, 400)
    view.show()
    rng = np.random.default_rng(0)
    view.set_layout(np.arange(1, 101), rng.normal(size=(100, 2)))
    assert all(item.cacheMode() == QGraphicsItem.CacheMode.NoCache for _idx, item in view._groups)
    n = embedding_view.CACHE_FROM_POINTS
    before = QPixmapCache.cacheLimit()
    try:
        QPixmapCache.setCacheLimit(1)  # as if tiny: the map must raise it
        view.set_layout(np.arange(1, n + 1), rng.normal(size=(n, 2)))
        cached = QGraphicsItem.CacheMode.DeviceCoordinateCache
        assert all(item.cacheMode() == cached for _idx, item in view._groups)
        assert view.selection_item.cacheMode() == cached
        size = view.plot.viewport().size()
        assert QPixmapCache.cacheLimit() * 1024 >= size.width() * size.height() * 4 * (len(view._groups) + 1)
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
    view.fit()
    assert points_in_view()
