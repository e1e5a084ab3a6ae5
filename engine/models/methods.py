"""The training methods: one registry that the engine, the GUI, the CLI, export and the model card read.

Adding a method means writing its trainer and adding one ``TrainingMethod`` to ``METHODS`` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class MethodKind(str, Enum):
    """How a method's model predicts: a linear head on cached features, or a whole network on pixels."""

    LINEAR = "linear"  # predicts from cached feature vectors (LinearPredictor)
    NETWORK = "network"  # predicts from pixels through its own fine-tuned network


@dataclass(frozen=True)
class TrainingMethod:
    """Everything the rest of Sortlab needs to know about one way of training a model."""

    name: str  # stored in model versions and typed on the command line
    title: str  # shown to users ("Quick", "Thorough")
    choice: str  # the training panel's radio-button text; "" keeps it off the panel
    description: str  # the model card's words: "... uses <description>"
    kind: MethodKind
    needs_torch: bool  # trains in PyTorch (not in the CPU edition)
    exportable: bool  # export_bundle can ship it
    fine_tunes: bool  # trains the network's weights (minutes; "Thorough")
    trains_on_features: bool  # fits on cached feature vectors (seconds, retrained after each label)

    @property
    def predicts_from_features(self) -> bool:
        return self.kind is MethodKind.LINEAR


METHODS: dict[str, TrainingMethod] = {
    method.name: method
    for method in (
        TrainingMethod(
            "logreg", "Quick", "Quick — seconds, good with few labels",
            "a logistic-regression classifier", MethodKind.LINEAR,
            needs_torch=False, exportable=True, fine_tunes=False, trains_on_features=True,
        ),
        TrainingMethod(
            "ordinal", "Quick (ordered levels)", "",
            "an ordinal logistic-regression classifier for ordered classes (adjacent-category logits)",
            MethodKind.LINEAR, needs_torch=False, exportable=True, fine_tunes=False, trains_on_features=True,
        ),
        TrainingMethod(
            "svm", "Quick (SVM)", "", "a linear SVM classifier with calibrated probabilities", MethodKind.LINEAR,
            needs_torch=False, exportable=True, fine_tunes=False, trains_on_features=True,
        ),
        TrainingMethod(
            "probe", "Linear probe", "", "a linear classifier trained on the network's features (linear probe)",
            MethodKind.LINEAR, needs_torch=True, exportable=True, fine_tunes=False, trains_on_features=False,
        ),
        TrainingMethod(
            "finetune", "Thorough", "Thorough — fine-tune the network (minutes), best with more labels",
            "the network fine-tuned on these images", MethodKind.NETWORK,
            needs_torch=True, exportable=True, fine_tunes=True, trains_on_features=False,
        ),
    )
}
DEFAULT_METHOD = "logreg"


class UnknownMethod(ValueError):
    """A method name that is not in the registry (a typo on the command line, a newer project)."""


def get_method(name: str) -> TrainingMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethod(f"Unknown training method '{name}': choose one of {', '.join(METHODS)}.") from None


def method_title(name: str) -> str:
    """The user-facing title of a stored method name (an unknown name is shown as it is)."""
    method = METHODS.get(name)
    return method.title if method else name


def panel_methods() -> list[TrainingMethod]:
    """The methods the training panel offers, in registry order (the default first)."""
    return [m for m in METHODS.values() if m.choice]
