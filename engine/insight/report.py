"""The model report's numbers: how well one model version's predictions agree with your labels, and
which images fall in each cell of the confusion matrix. Every number comes from sklearn.metrics and
is handed over as the typed ``Metrics`` the rest of Sortlab reads. No Qt here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from engine.insight.projection import align, point_attributes, prediction_arrays
from engine.models.metrics import ClassScores, ConfusionMatrix, Metrics, SourceScore
from engine.models.ordinal_metrics import ordinal_scores
from engine.runtime.first_imports import heavy_imports
from engine.runtime.jobs import JobContext
from storage.catalog import list_classes
from storage.class_order import class_levels
from storage.modelstore import NoModelError, get_model
from storage.project import Project
from storage.team_agreement import AgreementReport, shared_agreement


@dataclass(frozen=True)
class Report:
    """One version's report. ``metrics`` holds its numbers (``n_val``: the images judged; a precision
    is NaN for a class never predicted, a recall NaN for a class with no images);
    ``cell_images[(true, predicted)]`` lists the image ids of each confusion-matrix cell, by
    position in ``class_names``; ``basis`` says in words which images were judged; ``agreement``
    how far the people who labeled the same images agree (None: nobody did)."""

    class_ids: list[int]
    class_names: list[str]
    metrics: Metrics
    cell_images: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    basis: str = ""
    agreement: AgreementReport | None = None  # between labelers, where two labeled the same images

    @property
    def n(self) -> int:
        return self.metrics.n_val

    @property
    def confusion(self) -> np.ndarray:
        """[true, predicted] counts, rows and columns in ``class_names`` order."""
        k = len(self.class_names)
        matrix = self.metrics.confusion_matrix
        return np.asarray(matrix.matrix, dtype=np.int64).reshape(k, k) if matrix else np.zeros((k, k), np.int64)


def build_report(
    image_ids: Sequence[int], y_true: Sequence[int], y_pred: Sequence[int],
    class_ids: Sequence[int], class_names: Sequence[str],
    sources: Sequence[str] | None = None, basis: str = "", levels: Sequence[int] | None = None,
) -> Report:
    """Metrics over the images that have both a true and a predicted class among ``class_ids``
    (ordered classes, ``levels`` from lowest to highest: with the ordinal scores too)."""
    # Imported here: the window imports this module at start-up, and scikit-learn takes a second
    # to import (the training panel's warm-up job imports it in the background meanwhile, so
    # one thread at a time).
    with heavy_imports():
        from sklearn.metrics import (
            accuracy_score,
            balanced_accuracy_score,
            confusion_matrix,
            precision_recall_fscore_support,
        )

    image_ids = np.asarray(image_ids, dtype=np.int64)
    positions = np.arange(len(class_ids))
    keys = np.asarray(list(class_ids), dtype=np.int64)
    t = align(keys, positions, np.asarray(y_true, dtype=np.int64), -1)
    p = align(keys, positions, np.asarray(y_pred, dtype=np.int64), -1)
    keep = (t >= 0) & (p >= 0)
    image_ids, t, p = image_ids[keep], t[keep], p[keep]
    names = [str(name) for name in class_names]
    if not len(t):
        return Report(list(map(int, class_ids)), names, Metrics(), {}, basis)
    precision, recall, f1, support = precision_recall_fscore_support(t, p, labels=positions, zero_division=np.nan)
    with warnings.catch_warnings():  # a class predicted but never true is not an error here
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = balanced_accuracy_score(t, p)
    per_source = {}
    if sources is not None:
        source_arr = np.asarray(list(sources), dtype=object)[keep]
        for name in sorted(set(source_arr.tolist())):
            mask = source_arr == name
            per_source[str(name)] = SourceScore(float(accuracy_score(t[mask], p[mask])), int(mask.sum()))
    matrix = confusion_matrix(t, p, labels=positions)
    ordinal = ordinal_scores(matrix, list(class_ids), names, levels)[0] if levels is not None else {}
    metrics = Metrics(
        accuracy=float(accuracy_score(t, p)),
        balanced_accuracy=float(balanced),
        per_class={name: ClassScores(float(pr), float(rc), float(f), int(s))
                   for name, pr, rc, f, s in zip(names, precision, recall, f1, support)},
        confusion_matrix=ConfusionMatrix(names, matrix.tolist()),
        per_source=per_source,
        n_val=int(len(t)),
        **ordinal,
    )
    return Report(list(map(int, class_ids)), names, metrics, _cell_images(image_ids, t, p, len(names)), basis)


def _cell_images(image_ids: np.ndarray, t: np.ndarray, p: np.ndarray, k: int) -> dict[tuple[int, int], list[int]]:
    """The image ids of each (true, predicted) cell, sorted, in one lexsort (quick at 100k images)."""
    order = np.lexsort((image_ids, p, t))
    keys = t[order] * max(k, 1) + p[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(order)]
    return {(int(t[order[s]]), int(p[order[s]])): image_ids[order[s:e]].tolist() for s, e in zip(starts, ends)}


def project_report(project: Project, version: int | None = None) -> Report | None:
    """The report of one model version (the active one by default) from the project's predictions;
    None when that version has no predictions (an empty report with the labelers' agreement when
    two people labeled the same images).

    Honest numbers first: cross-validated (out-of-fold) predictions of labeled images when the
    store has them, else the labeled validation images, else all labeled images (optimistic).
    It reads every prediction: the window runs it as a background job (``report_job``)."""
    ids, predicted, out_of_fold = prediction_arrays(project, version)
    if not len(ids):  # no model yet: only the labelers' agreement, if any
        agreement = shared_agreement(project)
        return None if agreement is None else Report([], [], Metrics(), agreement=agreement)
    attributes = point_attributes(project, ids)
    labeled = attributes.class_ids >= 0
    if (labeled & out_of_fold).any():
        use = labeled & out_of_fold
        basis = "each labeled image judged by a model that did not learn from it: cross-validation"
    elif (labeled & (attributes.splits == 1)).any():
        use, basis = labeled & (attributes.splits == 1), "your labeled images held back for testing: validation images"
    else:
        use, basis = labeled, "all labeled images, including the ones it learned from, so this is optimistic"
    classes = list_classes(project)
    sources = [attributes.source_names[c] or "(no source)" for c in attributes.source_codes[use]]
    report = build_report(ids[use], attributes.class_ids[use], predicted[use], [c.id for c in classes],
                          [c.name for c in classes], sources, basis, class_levels(project))
    return replace(_with_twin_figures(project, version, report), agreement=shared_agreement(project))


def _with_twin_figures(project: Project, version: int | None, report: Report) -> Report:
    """The leak guard's figures come from training (which groups straddled the split), not from the stored
    predictions: copied from the version's own metrics so the report can say them."""
    try:
        stored = Metrics.from_json(get_model(project, version).metrics)
    except NoModelError:
        return report
    twins = {name: getattr(stored, name) for name in
             ("n_val_with_twin_before_guard", "n_val_with_twin", "accuracy_without_twins")}
    return replace(report, metrics=replace(report.metrics, **twins))


ReportFn = Callable[[Project, int | None], Report | None]


def report_job(context: JobContext, report_fn: ReportFn, project: Project, version: int | None) -> Report | None:
    """Background job body: the report of one version (plain data back to the GUI thread)."""
    context.check_cancelled()
    return report_fn(project, version)
