"""How good a model is: one dataclass, written by engine.models.evaluation and read everywhere.

The project stores it as JSON (``Metrics.to_json``) in the model version row; every reader turns that
back into a ``Metrics`` with ``Metrics.from_json`` and reads typed fields, never guessed keys.
A number that could not be measured is ``None`` (JSON null), never 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class SourceScore:
    accuracy: float
    n: int


@dataclass(frozen=True)
class ConfusionMatrix:
    """Rows are the true classes, columns the predicted ones, both in ``labels`` order."""

    labels: list[str]
    matrix: list[list[int]]


@dataclass(frozen=True)
class Metrics:
    """A model version's evaluation. ``evaluation`` says how it was judged ("holdout", "5-fold CV",
    "not evaluated"); ``n_val`` counts the images its numbers come from."""

    accuracy: float | None = None
    balanced_accuracy: float | None = None
    per_class: dict[str, ClassScores] = field(default_factory=dict)
    confusion_matrix: ConfusionMatrix | None = None
    top_3_accuracy: float | None = None
    top_5_accuracy: float | None = None
    per_source: dict[str, SourceScore] = field(default_factory=dict)
    evaluation: str = "not evaluated"
    evaluation_note: str = ""
    n_labeled: int = 0
    n_train: int = 0
    n_val: int = 0
    folds: int = 0
    best_epoch: int | None = None  # fine-tuning only
    stopped_early: bool | None = None  # fine-tuning only
    # Leak guard (linear methods; None where no near-duplicate check ran). Evaluated images ("val"): the
    # validation side, or every labeled image under cross-validation.
    n_val_with_twin_before_guard: int | None = None  # would have had a near-duplicate in training without it
    n_val_with_twin: int | None = None  # have a near-duplicate among the labeled images (kept on their side)
    accuracy_without_twins: float | None = None  # accuracy of the others; None when none has a twin
    # Ordered classes only (None otherwise): a prediction one level off counts as right; error in levels.
    within_one_accuracy: float | None = None
    mean_absolute_error_levels: float | None = None

    @property
    def evaluated(self) -> bool:
        return self.accuracy is not None

    @property
    def ordered(self) -> bool:
        """Judged as ordered classes (the ordinal scores are there)."""
        return self.within_one_accuracy is not None

    def with_counts(self, **counts: Any) -> Metrics:
        """A copy with bookkeeping fields (n_labeled, n_train, n_val, folds, evaluation, ...) set."""
        values = {**self.__dict__, **counts}
        return Metrics(**values)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (what the project stores and ``--json`` prints); empty optional parts left out."""
        data = asdict(self)
        for key in ("top_3_accuracy", "top_5_accuracy", "best_epoch", "stopped_early", "confusion_matrix",
                    "n_val_with_twin_before_guard", "n_val_with_twin", "accuracy_without_twins",
                    "within_one_accuracy", "mean_absolute_error_levels"):
            if data[key] is None:
                del data[key]
        for key in ("per_source", "evaluation_note"):
            if not data[key]:
                del data[key]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Metrics:
        """Read what ``to_json`` wrote (and what earlier versions of Sortlab wrote: the same keys)."""
        data = dict(data or {})
        confusion = data.get("confusion_matrix")
        return cls(
            accuracy=_float(data.get("accuracy")),
            balanced_accuracy=_float(data.get("balanced_accuracy")),
            per_class={str(k): ClassScores(float(v["precision"]), float(v["recall"]), float(v["f1"]), int(v["support"]))
                       for k, v in (data.get("per_class") or {}).items()},
            confusion_matrix=ConfusionMatrix(list(confusion["labels"]), [list(map(int, r)) for r in confusion["matrix"]])
            if confusion else None,
            top_3_accuracy=_float(data.get("top_3_accuracy")),
            top_5_accuracy=_float(data.get("top_5_accuracy")),
            per_source={str(k): SourceScore(float(v["accuracy"]), int(v["n"]))
                        for k, v in (data.get("per_source") or {}).items()},
            evaluation=str(data.get("evaluation") or "not evaluated"),
            evaluation_note=str(data.get("evaluation_note") or ""),
            n_labeled=int(data.get("n_labeled") or 0),
            n_train=int(data.get("n_train") or 0),
            n_val=int(data.get("n_val") or 0),
            folds=int(data.get("folds") or 0),
            best_epoch=data.get("best_epoch"),
            stopped_early=data.get("stopped_early"),
            n_val_with_twin_before_guard=_int(data.get("n_val_with_twin_before_guard")),
            n_val_with_twin=_int(data.get("n_val_with_twin")),
            accuracy_without_twins=_float(data.get("accuracy_without_twins")),
            within_one_accuracy=_float(data.get("within_one_accuracy")),
            mean_absolute_error_levels=_float(data.get("mean_absolute_error_levels")),
        )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
