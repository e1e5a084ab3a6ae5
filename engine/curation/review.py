"""Review labels: which labeled images are most likely mislabeled, scored by models that never saw them.

A model trained on an image agrees with that image's label, right or wrong, so a labeling mistake
hides behind a confident suggestion. Here every labeled image gets out-of-fold probabilities
(stratified k-fold on the cached features, the active model's linear method and C), and images are
ranked by self-confidence, the out-of-fold probability of the label they were given: lowest first.
Measured on Lite0 features (benchmarks/label_noise.py, 10 % flipped labels, k = number flipped),
self-confidence held 97 % of random flips in the top k on caltech101-dev (normalized margin 92 %) and
77 % on hymenoptera; flips to the most confusable class favour the margin slightly (82 % against 80 %).

How many are worth a look is estimated the confident-learning way (Northcutt et al., 2021): an
image is counted when some other class is above that class's own confidence threshold (the mean
self-confidence of its images) and beats its given label there — the off-diagonal of the confident joint.

Two ways in: ``review_labels`` (the CLI's ``review``) cross-validates afresh; ``stored_review`` reads the
out-of-fold predictions training stores for every labeled image (engine.models.training), so the GUI
can rank the queue and say how many are worth a look right after a retrain, with no extra fitting. The
grid shows the same queue with one query (storage.browse.REVIEW, limited to ``suggested_count``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from engine.curation.project_features import load_project_features
from engine.models.classifiers import DEFAULT_C, CLASSIFIERS, NotEnoughLabelsError, make_classifier
from engine.models.evaluation import out_of_fold_probabilities
from engine.runtime.jobs import JobContext
from engine.models.metrics import Metrics
from storage.catalog import reviewed_image_ids
from storage.modelstore import active_model, get_model, out_of_fold_probabilities as stored_out_of_fold
from storage.project import Project
from storage.splits import labeled_images

REVIEW_FOLDS = 5
DEFAULT_REVIEW_METHOD = "logreg"
RANKINGS = ("self_confidence", "margin")


@dataclass(frozen=True)
class Suspect:
    """One labeled image in the review queue: its label, the out-of-fold suggestion, and how sure."""

    image_id: int
    label: int  # class id given by the user
    suggested: int  # class id the out-of-fold model prefers
    score: float  # out-of-fold probability of the given label (lower = more suspicious)
    suggested_probability: float


@dataclass
class LabelReview:
    """Out-of-fold probabilities of every reviewable labeled image, and the queue they give.

    ``probabilities[i, j]`` is image ``image_ids[i]``'s probability of class ``classes[j]`` from a model
    trained without it. Images of a class with a single labeled image cannot be checked (no other image
    of that class to learn it from): they are in ``unchecked``.
    """

    image_ids: np.ndarray  # int64
    labels: np.ndarray  # class id given, per image
    classes: np.ndarray  # class ids, the columns of ``probabilities``
    probabilities: np.ndarray  # (N, C) out-of-fold
    scores: np.ndarray  # lower = more likely mislabeled
    suggested_count: int
    unchecked: list[int]
    method: str
    C: float | None  # None: a network's stored predictions (no C)
    folds: int  # 0: stored predictions of a holdout-evaluated model (validation side, training side in parts)

    @property
    def suggested(self) -> np.ndarray:
        return self.classes[np.argmax(self.probabilities, axis=1)]

    def order(self) -> np.ndarray:
        """Rows, most suspicious first (ties in image-id order, so the queue is stable)."""
        return np.lexsort((self.image_ids, self.scores))

    def suspects(self, limit: int | None = None) -> list[Suspect]:
        rows = self.order()[:limit]
        suggested = self.suggested
        best = self.probabilities.max(axis=1)
        return [
            Suspect(int(self.image_ids[r]), int(self.labels[r]), int(suggested[r]), float(self.scores[r]),
                    float(best[r]))
            for r in rows
        ]


def label_columns(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Column index in ``classes`` of every label."""
    return np.searchsorted(classes, labels)


def label_quality(probabilities: np.ndarray, columns: np.ndarray, ranking: str = "self_confidence") -> np.ndarray:
    """Per image, how well the out-of-fold probabilities back its label (lower = more suspicious).

    'self_confidence': p(given label). 'margin': the normalized margin (p(given) - max other p + 1) / 2.
    """
    given = probabilities[np.arange(len(columns)), columns]
    if ranking == "self_confidence":
        return given
    if ranking == "margin":
        others = probabilities.copy()
        others[np.arange(len(columns)), columns] = -np.inf
        return (given - others.max(axis=1) + 1.0) / 2.0
    raise ValueError(f"Unknown ranking {ranking!r}; choose one of {', '.join(RANKINGS)}.")


def confident_issues(probabilities: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Images off the diagonal of the confident joint: another class clears its own threshold (the mean
    self-confidence of the images labeled with it) and is the likeliest of the classes that do."""
    n_classes = probabilities.shape[1]
    thresholds = np.array([
        probabilities[columns == j, j].mean() if np.any(columns == j) else np.inf for j in range(n_classes)
    ])
    confident = probabilities >= thresholds - 1e-12
    masked = np.where(confident, probabilities, -np.inf)
    best = np.argmax(masked, axis=1)
    has_any = confident.any(axis=1)
    return has_any & (best != columns)


def fold_count(counts: np.ndarray, n_images: int, folds: int = REVIEW_FOLDS) -> int:
    """k for k-fold: REVIEW_FOLDS, fewer when the largest class is smaller (StratifiedKFold's limit)."""
    return max(2, min(folds, int(counts.max()), n_images))


def out_of_fold_review(
    X: np.ndarray, labels: np.ndarray, *, method: str = DEFAULT_REVIEW_METHOD, C: float = DEFAULT_C,
    seed: int = 0, ranking: str = "self_confidence", context: JobContext | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(classes, out-of-fold probabilities, scores, folds) for labeled features ``X``.

    Every class needs at least two images (one to learn from while the other is held out)."""
    labels = np.asarray(labels, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    if classes.size < 2 or counts.min() < 2:
        raise NotEnoughLabelsError(
            "Reviewing labels needs at least two classes with two or more labeled images each.")
    folds = fold_count(counts, len(labels))

    def fit_fold(X_train: np.ndarray, y_train: np.ndarray):
        return make_classifier(method, C=C, random_state=seed).fit(X_train, y_train)

    with warnings.catch_warnings():  # classes smaller than k: StratifiedKFold warns, each fold still has them
        warnings.filterwarnings("ignore", message="The least populated class")
        proba = out_of_fold_probabilities(context or JobContext(), fit_fold, np.asarray(X), labels, folds, seed)
    return classes, proba, label_quality(proba, label_columns(labels, classes), ranking), folds


def review_settings(project: Project) -> tuple[str, float]:
    """(method, C) of the active model when it is a linear one with a chosen C; else logreg, DEFAULT_C."""
    model = active_model(project)
    if model is not None and model.method in CLASSIFIERS and "C" in model.params:
        return model.method, float(model.params["C"])
    return DEFAULT_REVIEW_METHOD, DEFAULT_C


def review_arrays(
    image_ids: np.ndarray, labels: np.ndarray, X: np.ndarray, *, method: str = DEFAULT_REVIEW_METHOD,
    C: float = DEFAULT_C, seed: int = 0, ranking: str = "self_confidence", context: JobContext | None = None,
) -> LabelReview:
    """The review of labeled images given as arrays (one row of ``X`` per image id and label)."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    checkable = np.isin(labels, classes[counts >= 2])
    kept_classes, proba, scores, folds = out_of_fold_review(
        np.asarray(X)[checkable], labels[checkable], method=method, C=C, seed=seed, ranking=ranking, context=context)
    columns = label_columns(labels[checkable], kept_classes)
    return LabelReview(
        image_ids[checkable], labels[checkable], kept_classes, proba, scores,
        int(confident_issues(proba, columns).sum()), image_ids[~checkable].tolist(), method, C, folds,
    )


def review_labels(
    context: JobContext, project: Project, backbone: str | None = None, layer: str | None = None, seed: int = 0,
) -> LabelReview:
    """A background job: extract missing features, then review every labeled image that has them."""
    features = load_project_features(context.subcontext(0.0, 0.5), project, backbone, layer)
    row_of = {int(i): r for r, i in enumerate(features.image_ids)}
    labeled = [img for img in labeled_images(project) if img.image_id in row_of]
    image_ids = np.array([img.image_id for img in labeled], dtype=np.int64)
    labels = np.array([img.class_id for img in labeled], dtype=np.int64)
    X = features.X[[row_of[int(i)] for i in image_ids]] if len(image_ids) else features.X[:0]
    method, C = review_settings(project)
    context.progress(0.5, f"Cross-validating {len(image_ids)} labeled images")
    review = review_arrays(image_ids, labels, X, method=method, C=C, seed=seed, context=context.subcontext(0.5, 1.0))
    context.progress(1.0, f"{review.suggested_count} labels worth a second look")
    return review


def stored_review(project: Project, version: int | None = None) -> LabelReview | None:
    """The review queue from a model version's stored out-of-fold predictions (the active one by default),
    without fitting anything; None before any training.

    Labels the user kept (storage.catalog.mark_reviewed) leave the queue, though they still set each
    class's confidence threshold. Labeled images the stored predictions cannot judge (labeled after that
    training, or of a class the model does not know) are in ``unchecked``."""
    info = active_model(project) if version is None else get_model(project, version)
    if info is None:
        return None
    ids, proba = stored_out_of_fold(project, info.version)
    label_of = {img.image_id: img.class_id for img in labeled_images(project)}
    order = np.argsort(info.class_ids, kind="stable")
    classes = np.asarray(info.class_ids, dtype=np.int64)[order]
    class_set = set(classes.tolist())
    known = np.array([label_of.get(int(i), -1) in class_set for i in ids], dtype=bool)
    ids = ids[known]
    proba = proba[known][:, order].astype(np.float64) if len(ids) else np.zeros((0, len(classes)))
    labels = np.array([label_of[int(i)] for i in ids], dtype=np.int64)
    columns = label_columns(labels, classes)
    issues = confident_issues(proba, columns) if len(ids) else np.zeros(0, dtype=bool)
    open_rows = ~np.isin(ids, list(reviewed_image_ids(project)))
    judged = set(ids.tolist())
    return LabelReview(
        ids[open_rows], labels[open_rows], classes, proba[open_rows], label_quality(proba, columns)[open_rows],
        int(np.sum(issues & open_rows)), sorted(i for i in label_of if i not in judged), info.method,
        float(info.params["C"]) if "C" in info.params else None, Metrics.from_json(info.metrics).folds,
    )
