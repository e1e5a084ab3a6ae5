"""Agreement between labelers of a team project: where two people labeled the same image (the label
history keeps each person's label even after a teammate changed it), Cohen's kappa for each pair of
people and the images they disagree on.

Each person's label of an image is the class of their last change to it (a removal withdraws it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations

from sqlalchemy import func, select

from storage.models import ImageClass
from storage.models import LabelEvent as LabelEventRow
from storage.project import Project


@dataclass(frozen=True)
class PairAgreement:
    first: str
    second: str
    overlap: int  # images both labeled
    agreed: int
    kappa: float | None  # None when undefined (fewer than 2 images, or both always chose one class)
    disputed: list[int] = field(default_factory=list)  # image ids where they differ


@dataclass(frozen=True)
class AgreementReport:
    pairs: list[PairAgreement]
    disputed: dict[int, dict[str, str]]  # image id -> {person: class name} where people differ

    def to_dict(self) -> dict:
        return {"pairs": [{"first": p.first, "second": p.second, "overlap": p.overlap, "agreed": p.agreed,
                           "kappa": p.kappa, "disputed": p.disputed} for p in self.pairs],
                "disputed": {str(k): v for k, v in self.disputed.items()}}


def labels_by_person(project: Project) -> dict[str, dict[int, int]]:
    """{person: {image_id: class_id}}: each person's standing label of each image they labeled."""
    latest: dict[str, dict[int, int | None]] = defaultdict(dict)
    with project.session() as session:
        rows = session.execute(select(LabelEventRow.actor, LabelEventRow.image_id, LabelEventRow.class_id)
                               .order_by(LabelEventRow.at, LabelEventRow.id)).all()
    for actor, image_id, class_id in rows:
        latest[actor or "?"][image_id] = class_id
    return {actor: {i: c for i, c in images.items() if c is not None} for actor, images in latest.items()}


def agreement(project: Project) -> AgreementReport:
    from sklearn.metrics import cohen_kappa_score

    people = labels_by_person(project)
    with project.session() as session:
        names = dict(session.execute(select(ImageClass.id, ImageClass.name)).all())
    pairs, disputed = [], defaultdict(dict)
    for first, second in combinations(sorted(people), 2):
        shared = sorted(set(people[first]) & set(people[second]))
        if not shared:
            continue
        a = [people[first][i] for i in shared]
        b = [people[second][i] for i in shared]
        differ = [i for i, x, y in zip(shared, a, b) if x != y]
        kappa = None
        if len(shared) >= 2 and len(set(a) | set(b)) >= 2:
            kappa = float(cohen_kappa_score(a, b))
            kappa = None if math.isnan(kappa) else kappa
        pairs.append(PairAgreement(first, second, len(shared), len(shared) - len(differ), kappa, differ))
        for image_id in differ:
            disputed[image_id][first] = names.get(people[first][image_id], f"class {people[first][image_id]}")
            disputed[image_id][second] = names.get(people[second][image_id], f"class {people[second][image_id]}")
    return AgreementReport(pairs, dict(sorted(disputed.items())))


def labeler_count(project: Project) -> int:
    """How many people the label history names (a cheap check before reading all of it)."""
    with project.session() as session:
        return int(session.scalar(select(func.count(func.distinct(LabelEventRow.actor)))) or 0)


def shared_agreement(project: Project) -> AgreementReport | None:
    """``agreement`` where at least two people labeled the same images, else None (one labeler, or
    people who never labeled the same image)."""
    if labeler_count(project) < 2:
        return None
    report = agreement(project)
    return report if report.pairs else None
