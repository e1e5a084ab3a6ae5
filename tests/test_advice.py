"""How many more labels: no advice below the minimum, the power-law fit recovers a known curve, the
advice solves it for 5 more points, ``train --json`` carries it, and the GUI view draws it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

import main
from engine.insight.advice import (
    MIN_PER_CLASS,
    PLUS_POINTS,
    Advice,
    ClassAdvice,
    LearningCurve,
    advise,
    fit_power_law,
    learning_advice,
    power_law,
)
from engine.runtime.jobs import JobContext
from helpers.cli import cli_json

TRUE_LAW = (0.92, 0.6, 0.55)  # a, b, c of acc(n) = a - b * n^(-c)
SIZES = np.repeat([4.0, 8.0, 16.0, 24.0, 32.0], 2)


def blobs(per_class: dict[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes in 20 dimensions (so that accuracy grows with the labels)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 0.8, (max(per_class) + 1, 20))
    X = np.concatenate([centres[c] + rng.normal(0, 1, (n, 20)) for c, n in per_class.items()])
    y = np.concatenate([np.full(n, c) for c, n in per_class.items()]).astype(np.int64)
    return X.astype(np.float32), y


def test_no_advice_below_the_minimum_labels_per_class():
    X, y = blobs({0: MIN_PER_CLASS - 1, 1: MIN_PER_CLASS - 1, 2: MIN_PER_CLASS - 1})
    advice = learning_advice(JobContext(), X, y, {0: "glass", 1: "paper", 2: "metal"})
    assert [row["more_for_plus_5_points"] for row in advice.to_json()] == [None, None, None]
    assert [row["accuracy"] for row in advice.to_json()] == [None, None, None]
    assert all(f"at least {MIN_PER_CLASS}" in c.reason for c in advice.classes)
    assert advice.overall.more_for_plus_5_points is None and advice.overall.reason
    assert all(c.curve is None for c in advice.classes)


def test_a_class_below_the_minimum_gets_none_while_the_others_get_advice():
    X, y = blobs({0: 40, 1: 40, 2: MIN_PER_CLASS - 2})
    advice = learning_advice(JobContext(), X, y, {0: "glass", 1: "paper", 2: "metal"})
    by_name = {c.name: c for c in advice.classes}
    assert by_name["metal"].accuracy is None and by_name["metal"].more_for_plus_5_points is None
    assert "only 3 labeled" in by_name["metal"].sentence()
    for name in ("glass", "paper"):
        assert by_name[name].accuracy is not None and 0.0 <= by_name[name].accuracy <= 1.0
        assert by_name[name].curve is not None
    assert advice.overall.more_for_plus_5_points is None  # overall needs every class at the minimum
    assert len(advice.sentences()) == 4


def test_the_fit_recovers_a_known_power_law():
    rng = np.random.default_rng(1)
    accuracies = power_law(SIZES, *TRUE_LAW) + rng.normal(0, 0.002, SIZES.size)
    a, b, c = fit_power_law(SIZES, accuracies)
    np.testing.assert_allclose((a, b, c), TRUE_LAW, atol=0.05)  # noise of 0.2 points on 10 points
    np.testing.assert_allclose(power_law(64.0, a, b, c), power_law(64.0, *TRUE_LAW), atol=0.01)


def test_advice_solves_the_curve_for_five_more_points():
    accuracies = power_law(SIZES, *TRUE_LAW)
    current = 32.0
    advice = advise("glass", 32, current, SIZES, accuracies, float(power_law(current, *TRUE_LAW)))
    a, b, c = TRUE_LAW
    expected = (b / (a - power_law(current, *TRUE_LAW) - PLUS_POINTS)) ** (1 / c) - current
    assert advice.more_for_plus_5_points == pytest.approx(math.ceil(expected), abs=2)
    low, high = advice.more_range
    assert low <= advice.more_for_plus_5_points <= high
    assert f"About {advice.more_for_plus_5_points} more images of glass" in advice.sentence()


def test_a_flat_curve_is_saturated():
    accuracies = np.full(SIZES.size, 0.97) + np.tile([0.002, -0.002], SIZES.size // 2)
    advice = advise("paper", 32, 32.0, SIZES, accuracies, 0.97)
    assert advice.saturated and advice.more_for_plus_5_points is None
    assert "paper is saturated" in advice.sentence()


def write_photo(path, colour, seed: int):
    rng = np.random.default_rng(seed)
    pixels = np.array(colour, dtype=np.float64) + rng.normal(0, 30, (64, 64, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=92)


def test_train_json_has_advice_rows_with_nulls_below_the_minimum(tmp_path, capsys, onnx_cache):
    """Three images per class: the rows are there, one per class, and say they cannot tell."""
    for name, colour in {"red": (200, 40, 40), "blue": (40, 50, 200)}.items():
        for i in range(3):
            write_photo(tmp_path / "photos" / name / f"{name}{i}.jpg", colour, seed=10 * len(name) + i)
    project = tmp_path / "few.sortlab"
    assert main.main(["import", str(project), str(tmp_path / "photos"), "--labels-from-folders"]) == 0
    result = cli_json(capsys, "train", project)
    rows = sorted(result["advice"], key=lambda row: row["class"])
    assert [set(row) for row in rows] == [{"class", "labeled", "accuracy", "more_for_plus_5_points"}] * 2
    assert [(row["class"], row["labeled"], row["accuracy"], row["more_for_plus_5_points"]) for row in rows] == [
        ("blue", 3, None, None), ("red", 3, None, None)]


def test_the_advice_view_shows_the_sentences_and_the_curve(qtbot):
    from gui.advice_view import NO_ADVICE_TEXT, AdviceView

    accuracies = tuple(float(v) for v in power_law(SIZES, *TRUE_LAW))
    curve = LearningCurve(tuple(float(s) for s in SIZES), accuracies, *TRUE_LAW)
    glass = ClassAdvice("glass", 40, 0.71, 40, (20, 90), curve=curve)
    paper = ClassAdvice("paper", 40, 0.97, saturated=True, curve=curve)
    overall = ClassAdvice(None, 80, 0.84, 70, (40, None), curve=curve)
    view = AdviceView()
    qtbot.addWidget(view)
    view.resize(420, 360)
    view.show()
    qtbot.waitExposed(view)
    assert view.sentences.text() == NO_ADVICE_TEXT and not view.plot.isVisible()

    view.set_advice(Advice([glass, paper], overall))
    text = view.sentences.text()
    assert "About 40 more images of glass (somewhere between 20 and 90)" in text and "from 71 % to about 76 %" in text
    assert "paper is saturated" in text and "(at least 40)" in text
    assert [view.choice.itemText(i) for i in range(view.choice.count())] == ["whole model", "glass", "paper"]
    xs, ys = view.fitted.getData()
    np.testing.assert_allclose(ys, 100 * power_law(xs, *TRUE_LAW), rtol=1e-9)
    assert xs.max() == pytest.approx(160.0)  # drawn on to twice the whole model's 80 labels
    view.choice.setCurrentIndex(1)
    assert view.today.value() == 40 and view.fitted.getData()[0].max() == pytest.approx(80.0)
    assert not view.grab().isNull()


def test_the_training_panel_shows_advice_computed_in_the_background_for_the_current_project(qtbot):
    """refresh() runs the advice job on the view's own worker and shows its sentences; a result that
    arrives for a project no longer on screen is dropped; no project clears it."""
    import threading

    from gui.advice_view import NO_ADVICE_TEXT, AdviceView
    from gui.runner import QtJobRunner
    from gui.training_panel import TrainingPanel

    release = threading.Event()
    overall = ClassAdvice(None, 80, 0.84, 70, (40, None))

    def fake_advice(context, project):
        if project == "old":
            release.wait(10)
        return Advice([ClassAdvice(f"{project}-class", 40, reason="only 4 labeled; label at least 5 to get advice.")],
                      overall)

    runner = QtJobRunner()
    panel = TrainingPanel(runner, None, backbones=[], device="CPU")
    panel.advice.shutdown()
    panel.advice = advice = AdviceView(advice_fn=fake_advice)
    qtbot.addWidget(panel)
    qtbot.addWidget(advice)
    assert panel.findChild(AdviceView) is not None  # docked in the training panel
    advice.refresh("old")
    advice.refresh("new")  # the old job is still running: its advice must not show
    release.set()
    qtbot.waitUntil(lambda: "new-class" in advice.sentences.text(), timeout=10_000)
    assert "About 70 more labeled images overall" in advice.sentences.text()
    assert not advice.choice.isVisibleTo(advice)  # no curve to choose from
    advice.refresh(None)
    assert advice.sentences.text() == NO_ADVICE_TEXT
    advice.shutdown()
    runner.shutdown()
