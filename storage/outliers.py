"""The last outlier check's flags (images that looked like nothing else), kept so the grid's
"Outliers" filter (storage.browse.OUTLIERS) shows them without checking again."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select

from storage.chunks import in_list_chunks
from storage.models import Image, OutlierFlag
from storage.project import Project


@dataclass(frozen=True)
class StoredOutlier:
    image_id: int
    score: float
    reasons: tuple[str, ...]


def replace_outliers(project: Project, flagged: Iterable[tuple[int, float, Sequence[str]]]) -> int:
    """Replace the stored flags with a new check's (image id, score, reasons); returns how many were stored.
    Images deleted since the check are skipped."""
    flagged = list(flagged)
    with project.writing() as session:
        session.execute(delete(OutlierFlag))
        present: set[int] = set()
        for chunk in in_list_chunks([int(i) for i, _, _ in flagged]):
            present.update(session.scalars(select(Image.id).where(Image.id.in_(chunk))))
        rows = [OutlierFlag(image_id=int(i), score=float(s), reasons=list(r)) for i, s, r in flagged if int(i) in present]
        session.add_all(rows)
        return len(rows)


def stored_outliers(project: Project) -> list[StoredOutlier]:
    """The stored flags, most unusual first."""
    with project.session() as session:
        rows = session.execute(select(OutlierFlag.image_id, OutlierFlag.score, OutlierFlag.reasons)
                               .order_by(OutlierFlag.score.desc(), OutlierFlag.image_id)).all()
    return [StoredOutlier(int(i), float(s), tuple(r or ())) for i, s, r in rows]
