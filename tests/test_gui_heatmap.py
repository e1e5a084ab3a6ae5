"""The viewer's "Where the model looks" (issue #16): the toggle needs a model, H turns it on, the heat
map is painted once the job has finished, another class asks again, and a result for an image the
viewer has already left is dropped.

Windows come from gui.app.create_main_window (test_gui_workspace's fixtures). explain_image, the
engine's entry point, is faked where the viewer calls it: it returns a real Explanation whose heat
peaks in a known cell, and can hold a job back until the test lets it finish."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PySide6.QtCore import Qt
from test_gui_workspace import add_model, labeled_window, press, trainer, window  # noqa: F401  (fixtures)

from engine.insight.explain import ExplainError, Explanation

pytestmark = pytest.mark.gui

WIDTH, HEIGHT = 40, 30  # test_gui_workspace.add_rows's pictures
GATE_TIMEOUT_S = 30


def hot_cell(image_id: int, class_name: str) -> tuple[int, int]:
    """(row, column) of the 4 x 4 map where the fake's evidence sits: a corner per image parity and class."""
    return (0 if image_id % 2 else 3), (0 if class_name == "cats" else 3)


class FakeExplainer:
    """explain_image without a network. ``gates[image_id]`` (an Event), when present, holds that
    image's job until it is set."""

    def __init__(self):
        self.calls: list[tuple[int, str | None]] = []
        self.gates: dict[int, threading.Event] = {}
        self.error: str | None = None

    def __call__(self, context, project, image, class_name=None, model_version=None, runtime=None) -> Explanation:
        self.calls.append((image, class_name))
        gate = self.gates.get(image)
        if gate is not None:
            assert gate.wait(GATE_TIMEOUT_S)
        if self.error is not None:
            raise ExplainError(self.error)
        names = ["cats", "dogs"]
        index = names.index(class_name) if class_name is not None else 0  # the model says cats
        heat = np.zeros((4, 4))
        heat[hot_cell(image, names[index])] = 1.0
        return Explanation(model_version=model_version, class_names=names, class_index=index,
                           probabilities=np.array([0.9, 0.1]), heat=heat, image_size=(WIDTH, HEIGHT),
                           crop=(0.0, 0.0, float(WIDTH), float(HEIGHT)), device="cpu")


@pytest.fixture
def explainer(monkeypatch) -> FakeExplainer:
    fake = FakeExplainer()
    monkeypatch.setattr("gui.viewer.explain_image", fake)
    return fake


@pytest.fixture
def model_window(labeled_window):  # noqa: F811
    """labeled_window with an active model that suggests cats (90%) for every image."""
    window = labeled_window
    cats, dogs = window.cats.id, window.dogs.id
    add_model(window.project, {i: (cats, 0.9) for i in window.test_ids}, [cats, dogs])
    window.refresh_predictions_view()
    return window


def shown_color(viewer, fx: float, fy: float):
    """The colour the viewer shows at fractions (fx, fy) of the picture."""
    image = viewer.image_label.pixmap().toImage()
    return image.pixelColor(min(image.width() - 1, int(fx * image.width())),
                            min(image.height() - 1, int(fy * image.height())))


def plain_color(viewer, fx: float, fy: float):
    image = viewer._pixmap.toImage()
    return image.pixelColor(int(fx * WIDTH), int(fy * HEIGHT))


def wait_for_heat(qtbot, viewer, class_name: str) -> Explanation:
    qtbot.waitUntil(lambda: viewer.explanation is not None and viewer.explanation.class_name == class_name,
                    timeout=10_000)
    return viewer.explanation


def test_without_a_model_the_toggle_is_off_and_says_to_train_first(labeled_window, explainer, qtbot):  # noqa: F811
    viewer = labeled_window.open_viewer(0)
    toggle = viewer.heat.toggle
    assert not toggle.isEnabled() and toggle.toolTip() == "Train a model first"
    press(qtbot, viewer, Qt.Key.Key_H)
    assert not toggle.isChecked() and explainer.calls == [] and viewer.explanation is None
    viewer.close()


def test_h_shows_the_heat_map_and_another_class_asks_again(model_window, explainer, qtbot):
    window = model_window
    viewer = window.open_viewer(0)
    image_id = viewer.image_id
    choice = viewer.heat.class_choice
    assert viewer.heat.toggle.isEnabled()
    assert [choice.itemText(i) for i in range(choice.count())] == ["Explain: cats", "Explain: dogs"]

    with qtbot.waitSignal(window.runner.finished, timeout=10_000,
                          check_params_cb=lambda name, _outcome: name == "explain"):
        press(qtbot, viewer, Qt.Key.Key_H)
    explanation = wait_for_heat(qtbot, viewer, "cats")
    assert explainer.calls == [(image_id, None)]  # the predicted class: explain_image picks it
    assert viewer.heat.caption.text() == "Red: what made the model say cats (90%)"
    peak = explanation.peak
    np.testing.assert_allclose(peak, [(hot_cell(image_id, "cats")[1] + 0.5) / 4,
                                      (hot_cell(image_id, "cats")[0] + 0.5) / 4], atol=1e-9)
    assert shown_color(viewer, *peak) != plain_color(viewer, *peak)  # painted where the model looks

    choice.setCurrentIndex(1)
    choice.activated.emit(1)  # what a user's pick in the list sends
    explanation = wait_for_heat(qtbot, viewer, "dogs")
    assert explainer.calls[-1] == (image_id, "dogs")
    assert viewer.heat.caption.text() == "Red: what speaks for dogs (10%); the model says cats"
    assert explanation.peak != peak

    press(qtbot, viewer, Qt.Key.Key_H)  # off: the plain picture again
    assert viewer.explanation is None and viewer.heat.caption.text() == ""
    plain = viewer._pixmap.scaled(viewer.image_label.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                  Qt.TransformationMode.SmoothTransformation)
    assert viewer.image_label.pixmap().toImage() == plain.toImage()
    viewer.close()


def test_moving_on_drops_the_heat_map_of_the_image_left_behind(model_window, explainer, qtbot):
    window = model_window
    viewer = window.open_viewer(0)
    first, second = window.grid_model.image_id(0), window.grid_model.image_id(1)
    explainer.gates = {first: threading.Event(), second: threading.Event()}
    ended: list[str] = []
    window.runner.finished.connect(lambda name, outcome: ended.append(name) if name == "explain" else None)

    press(qtbot, viewer, Qt.Key.Key_H)
    qtbot.waitUntil(lambda: explainer.calls == [(first, None)])  # the first image's job is running
    press(qtbot, viewer, Qt.Key.Key_Right)
    assert viewer.image_id == second and viewer.heat.caption.text() == "Looking…"

    explainer.gates[first].set()
    qtbot.waitUntil(lambda: ended == ["explain"], timeout=10_000)
    assert viewer.explanation is None and viewer.heat.caption.text() == "Looking…"  # stale: dropped

    explainer.gates[second].set()
    qtbot.waitUntil(lambda: ended == ["explain", "explain"], timeout=10_000)
    explanation = wait_for_heat(qtbot, viewer, "cats")
    assert explainer.calls == [(first, None), (second, None)]
    np.testing.assert_allclose(explanation.peak, [(hot_cell(second, "cats")[1] + 0.5) / 4,
                                                  (hot_cell(second, "cats")[0] + 0.5) / 4], atol=1e-9)
    viewer.close()


def test_a_failed_heat_map_says_why_in_one_line(model_window, explainer, qtbot):
    explainer.error = "Model version 1 has no class 'birds'; choose one of: cats, dogs."
    viewer = model_window.open_viewer(0)
    press(qtbot, viewer, Qt.Key.Key_H)
    qtbot.waitUntil(lambda: "birds" in viewer.heat.caption.text(), timeout=10_000)
    assert viewer.heat.caption.text() == explainer.error
    assert viewer.explanation is None
    viewer.close()
