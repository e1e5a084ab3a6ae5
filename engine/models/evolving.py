"""Automatic retrains keep ONE evolving model version instead of a new row per label change.

While the user labels, quick training reruns by itself every few seconds. Each rerun is stored as a
new version (with its predictions, in one write) and the evolving version it replaces is pruned;
the accuracy points of the pruned versions travel along in the new version's ``params["history"]``
(``[n_labeled, accuracy]`` pairs, one per labeled count), so the accuracy-vs-labels chart loses
nothing. A version is *kept* (never pruned) when

- the user trained on purpose (pressed Start, or the CLI's ``train``),
- it was exported (``keep_version``),
- or its accuracy moved by ``ACCURACY_STEP`` or more from the newest kept version.

The first model of a project is kept too, so there is always a version to compare with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.models.metrics import Metrics
from storage.modelstore import ModelInfo, delete_model, get_model, update_model_params
from storage.project import Project

# Accuracy (0..1) an automatic retrain must gain or lose against the newest kept version to be kept itself.
ACCURACY_STEP = 0.03
AUTOMATIC = "automatic"
KEPT = "kept"
HISTORY = "history"


def is_evolving(info: ModelInfo) -> bool:
    """An automatic retrain nobody kept: the next version replaces it."""
    return bool(info.params.get(AUTOMATIC)) and not info.params.get(KEPT)


def history_points(info: ModelInfo) -> list[tuple[int, float]]:
    """The accuracy points of the automatic versions this one replaced, oldest first."""
    return [(int(n), float(a)) for n, a in info.params.get(HISTORY, [])]


@dataclass(frozen=True)
class VersionPlan:
    """What to store with a new version and which evolving versions to prune after it is stored."""

    params: dict = field(default_factory=dict)  # merged into the new version's params
    prune: tuple[int, ...] = ()


def _one_point_per_count(points: Sequence[tuple[int, float]]) -> list[list[float]]:
    """Consecutive points at the same labeled count (a label changed, none added) keep the newest."""
    kept: list[list[float]] = []
    for n, accuracy in points:
        if kept and kept[-1][0] == n:
            kept[-1] = [n, accuracy]
        else:
            kept.append([n, accuracy])
    return kept


def plan_version(versions: Sequence[ModelInfo], automatic: bool, accuracy: float | None) -> VersionPlan:
    """How to store a new version trained ``automatic``-ally (or on purpose) with this ``accuracy``,
    given the project's versions (oldest first)."""
    evolving = [v for v in versions if is_evolving(v)]
    points: list[tuple[int, float]] = []
    for version in evolving:
        points.extend(history_points(version))
        measured = Metrics.from_json(version.metrics).accuracy
        if measured is not None:
            points.append((version.n_labeled, float(measured)))
    kept_versions = [v for v in versions if not is_evolving(v)]
    if not automatic or not kept_versions:
        kept = True
    else:
        reference = Metrics.from_json(kept_versions[-1].metrics).accuracy
        kept = (accuracy is not None and reference is not None and abs(accuracy - reference) >= ACCURACY_STEP)
    params = {AUTOMATIC: bool(automatic), KEPT: kept, HISTORY: _one_point_per_count(points)}
    return VersionPlan(params, tuple(v.version for v in evolving))


def prune(project: Project, plan: VersionPlan) -> None:
    """Delete the evolving versions the new one replaced (their predictions go with them)."""
    for version in plan.prune:
        delete_model(project, version)


def keep_version(project: Project, version: int) -> None:
    """Keep a version for good (it was exported): automatic retrains no longer replace it."""
    info = get_model(project, version)
    if is_evolving(info):
        update_model_params(project, version, {KEPT: True})
