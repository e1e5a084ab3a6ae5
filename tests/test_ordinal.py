"""Ordered classes (fill levels): the ordinal scores on a known case, the ordinal head on a small
synthetic ordered problem, training an ordered project, and the CLI's --ordered / order."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.cli import cli, cli_json
from helpers.feature_projects import BACKBONE, LAYER, add_placeholder_images

from engine.features.backbones import get_backbone
from engine.models.classifiers import LinearPredictor, make_classifier
from engine.models.evaluation import classification_metrics
from engine.models.metrics import Metrics
from engine.models.ordinal import ClassOrderError, OrdinalLogisticClassifier, make_feature_classifier
from engine.models.training import train_model
from engine.runtime.jobs import JobContext
from storage import catalog, modelstore
from storage.class_order import class_levels, classes_ordered, set_classes_ordered
from storage.featurestore import ensure_feature_set, store_vectors


def test_ordinal_scores_on_a_tiny_known_case():
    # Class ids 7 < 3 < 5 (levels 0, 1, 2); columns of proba follow the ids 3, 5, 7.
    classes = [3, 5, 7]
    truth = np.array([7, 7, 3, 3, 5, 5])
    predicted = np.array([7, 3, 3, 5, 5, 7])  # right, 1 off, right, 1 off, right, 2 off
    proba = np.eye(3)[[classes.index(c) for c in predicted]]
    m = classification_metrics(truth, proba, classes, ["half", "full", "empty"], levels=[7, 3, 5])
    assert m.accuracy == pytest.approx(3 / 6)
    assert m.within_one_accuracy == pytest.approx(5 / 6)
    assert m.mean_absolute_error_levels == pytest.approx((0 + 1 + 0 + 1 + 0 + 2) / 6)
    assert m.confusion_matrix.labels == ["empty", "half", "full"]  # drawn in level order
    assert m.confusion_matrix.matrix == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    assert m.ordered and Metrics.from_json(m.to_json()) == m
    plain = classification_metrics(truth, proba, classes, ["half", "full", "empty"])
    assert not plain.ordered and "within_one_accuracy" not in plain.to_json()


def test_a_level_without_labels_still_counts_in_the_distance():
    proba = np.array([[0.0, 1.0], [1.0, 0.0]])  # empty called full, full called empty
    m = classification_metrics(np.array([1, 2]), proba, [1, 2], ["empty", "full"], levels=[1, 9, 2])
    assert (m.within_one_accuracy, m.mean_absolute_error_levels) == (0.0, 2.0)


def ordered_problem(n: int, seed: int, levels: int = 5, dim: int = 40):
    """Features that move along one direction with a hidden fill level, plus noise in every direction."""
    rng = np.random.default_rng(seed)
    fill = rng.uniform(0, levels, n)
    direction = rng.normal(size=dim)
    X = rng.normal(scale=2.0, size=(n, dim)) + np.outer(fill, direction) + 4.0
    return X.astype(np.float32), np.minimum(fill.astype(int), levels - 1)


def test_the_ordinal_head_learns_an_ordered_problem_and_is_a_linear_predictor():
    ids = np.array([40, 10, 30, 20, 50])  # class ids deliberately not in level order
    X, level = ordered_problem(500, seed=1)
    y = ids[level]
    model = OrdinalLogisticClassifier(levels=ids.tolist(), random_state=0).fit(X[:350], y[:350])
    assert model.classes_.tolist() == [10, 20, 30, 40, 50]
    proba = model.predict_proba(X[350:])
    m = classification_metrics(y[350:], proba, model.classes_, [str(c) for c in model.classes_], levels=ids.tolist())
    assert m.within_one_accuracy > 0.95 and m.mean_absolute_error_levels < 0.5
    # Unimodal over the levels: the probabilities rise to the predicted level and fall after it.
    by_level = model.predict_level_proba(X[350:])
    peak = np.argmax(by_level, axis=1)
    for row, top in zip(by_level, peak):
        assert np.all(np.diff(row[: top + 1]) >= -1e-12) and np.all(np.diff(row[top:]) <= 1e-12)
    # The saved arrays predict the same (export and the app load these).
    loaded = LinearPredictor.from_bytes(model.to_bytes())
    np.testing.assert_allclose(loaded.predict_proba(X[350:]), proba, atol=1e-12)
    assert loaded.coef.shape == (5, X.shape[1])


def test_the_ordinal_head_is_at_least_as_good_as_plain_logistic_regression_on_levels():
    ids = np.arange(5)
    errors = {"ordinal": [], "plain": []}
    for seed in range(3):
        X, y = ordered_problem(300, seed=seed)
        for name, model in (("ordinal", make_feature_classifier("ordinal", ids, random_state=seed)),
                            ("plain", make_classifier("logreg", random_state=seed))):
            model.fit(X[:150], y[:150])
            errors[name].append(np.abs(model.predict(X[150:]) - y[150:]).mean())
    assert np.mean(errors["ordinal"]) <= np.mean(errors["plain"]) + 0.02


def test_warm_start_reaches_the_same_model():
    X, y = ordered_problem(300, seed=4)
    cold = OrdinalLogisticClassifier(levels=list(range(5))).fit(X, y)
    warm = OrdinalLogisticClassifier(levels=list(range(5)), warm_start_from=cold.predictor_).fit(X, y)
    assert warm.n_iter_ < cold.n_iter_
    np.testing.assert_allclose(warm.predict_proba(X), cold.predict_proba(X), atol=1e-3)


def test_the_ordinal_method_without_an_order_says_so():
    with pytest.raises(ClassOrderError, match="ordered"):
        make_feature_classifier("ordinal", None)


def ordered_feature_project(project, per_level: int = 30, levels=("empty", "half", "full")):
    rng = np.random.default_rng(0)
    by_name = catalog.ensure_classes(project, list(levels)[::-1])  # created in reverse: ids do not follow levels
    catalog.reorder_classes(project, [by_name[name] for name in levels])
    truth = np.repeat(np.arange(len(levels)), per_level)
    ids = add_placeholder_images(project, len(truth))
    for k, name in enumerate(levels):
        catalog.set_labels(project, [i for i, t in zip(ids, truth) if t == k], by_name[name], origin="import")
    dim = get_backbone(BACKBONE).feature_dim(LAYER)  # the real size: train_model checks the feature cache
    direction = rng.normal(size=dim)
    X = (rng.normal(size=(len(truth), dim)) + 0.3 * np.outer(truth, direction)).astype(np.float32)
    store_vectors(project, ensure_feature_set(project, BACKBONE, LAYER, dim).id, ids, X)
    return by_name


def test_an_ordered_project_trains_the_ordinal_head_and_reports_the_ordinal_scores(project):
    by_name = ordered_feature_project(project)
    assert not classes_ordered(project) and class_levels(project) is None
    plain = train_model(JobContext(), project, backbone=BACKBONE, layer=LAYER)
    assert plain.method == "logreg" and not plain.metrics.ordered
    set_classes_ordered(project, True)
    assert class_levels(project) == [by_name["empty"], by_name["half"], by_name["full"]]
    result = train_model(JobContext(), project, backbone=BACKBONE, layer=LAYER)
    assert result.method == "ordinal"
    m = Metrics.from_json(modelstore.active_model(project).metrics)
    assert m.ordered and m.within_one_accuracy >= m.accuracy and m.mean_absolute_error_levels is not None
    assert m.confusion_matrix.labels == ["empty", "half", "full"]
    asked = train_model(JobContext(), project, method="logreg", backbone=BACKBONE, layer=LAYER)
    assert asked.method == "ordinal"  # "Quick" on ordered classes is the ordinal head
    set_classes_ordered(project, False)
    assert not classes_ordered(project)


def test_cli_marks_classes_ordered_sets_the_order_and_train_reports_levels(project, capsys):
    ordered_feature_project(project, per_level=10)
    path = project.path
    listed = cli_json(capsys, "classes", path, "--ordered")
    assert listed["ordered"] is True and [c["name"] for c in listed["classes"]] == ["empty", "half", "full"]
    reordered = cli_json(capsys, "classes", path, "order", "full", "half", "empty")
    assert [c["name"] for c in reordered["classes"]] == ["full", "half", "empty"]
    cli_json(capsys, "classes", path, "order", "empty", "half", "full")
    trained = cli_json(capsys, "train", path)
    assert trained["method"] == "ordinal"
    assert {"within_one_accuracy", "mean_absolute_error_levels"} <= set(trained["metrics"])
    code, _, err = cli(capsys, "classes", path, "order", "empty", "full")
    assert code == 2 and "every class" in err
    assert cli_json(capsys, "classes", path, "--unordered")["ordered"] is False


def test_the_class_list_checkbox_marks_the_classes_ordered_in_list_order(project, qtbot):
    from gui.classes_panel import ClassesPanel

    panel = ClassesPanel()
    qtbot.addWidget(panel)
    panel.set_project(project)
    assert not panel.ordered.isEnabled()  # one class or none: nothing to order
    by_name = catalog.ensure_classes(project, ["full", "empty", "half"])
    panel.refresh()
    assert panel.ordered.isEnabled() and not panel.ordered.isChecked()
    with qtbot.waitSignal(panel.classes_changed):
        panel.ordered.setChecked(True)
    assert classes_ordered(project)
    panel.select_class(by_name["full"])
    panel.move_current(1)
    panel.move_current(1)  # full goes to the bottom: the highest level
    assert class_levels(project) == [by_name["empty"], by_name["half"], by_name["full"]]
    set_classes_ordered(project, False)  # changed elsewhere (the CLI): the box follows on refresh
    panel.refresh()
    assert not panel.ordered.isChecked()


@pytest.mark.parametrize("n_levels", [2, 4])
def test_the_exported_onnx_head_computes_what_the_ordinal_head_computes(n_levels):
    """Export (engine.ship.onnx_compose) needs nothing new: the ordinal head is a LinearPredictor."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from engine.ship.onnx_compose import compose

    X, level = ordered_problem(120, seed=2, levels=n_levels, dim=12)
    predictor = OrdinalLogisticClassifier(levels=list(range(n_levels))[::-1]).fit(X, level).predictor_
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["pixels"], ["features"], axis=1)], "stand_in",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 2, 2])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 12])],
    )
    backbone = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    session = ort.InferenceSession(compose(backbone, predictor), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": X.reshape(-1, 3, 2, 2)})[0]
    np.testing.assert_allclose(got, predictor.predict_proba(X), atol=2e-5)


def test_the_model_card_states_the_ordinal_scores():
    from engine.ship.model_card import _quality_lines

    proba = np.eye(3)[[0, 1, 2, 2]]
    m = classification_metrics(np.array([1, 2, 3, 1]), proba, [1, 2, 3], ["low", "mid", "high"], levels=[1, 2, 3])
    text = "\n".join(_quality_lines(m))
    assert "ordered levels (low < mid < high)" in text and "off by 0.50 levels" in text
    assert "ordered levels" not in "\n".join(_quality_lines(classification_metrics(
        np.array([1, 2]), np.eye(2), [1, 2], ["a", "b"])))


def test_the_model_report_adds_the_ordinal_scores_for_ordered_classes():
    from engine.insight.report import build_report

    args = ([11, 12, 13, 14], [1, 2, 3, 1], [1, 3, 3, 3], [1, 2, 3], ["low", "mid", "high"])
    ordered = build_report(*args, levels=[1, 2, 3]).metrics
    assert ordered.within_one_accuracy == pytest.approx(3 / 4)
    assert ordered.mean_absolute_error_levels == pytest.approx((0 + 1 + 0 + 2) / 4)
    assert not build_report(*args).metrics.ordered


def test_heat_maps_of_the_ordinal_head_show_evidence_for_the_lowest_level_too():
    from engine.insight.explain import linear_evidence

    X, level = ordered_problem(200, seed=3, dim=12)
    predictor = OrdinalLogisticClassifier(levels=list(range(5))).fit(X, level).predictor_
    weights = linear_evidence(predictor).weights
    assert np.abs(weights[0]).max() > 0  # "empty": the evidence against fuller levels, not a blank map
    np.testing.assert_allclose(weights[0], -weights[4], atol=1e-9)
    plain = make_classifier("logreg").fit(X, level).predictor_  # already centred by its penalty
    np.testing.assert_allclose(linear_evidence(plain).weights, plain.coef / plain.scale, atol=1e-3)
