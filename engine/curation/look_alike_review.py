"""What the user decides about a group of look-alike images (engine.curation.duplicates): keep one and
remove the others from the project, or keep them all (they are different pictures). A group kept whole
is not shown again unless a new image joins it."""

from __future__ import annotations

from collections.abc import Sequence

from engine.curation.duplicates import DuplicateGroup
from storage.images import remove_images
from storage.look_alikes import keep_group, kept_groups
from storage.project import Project


def groups_to_review(project: Project, groups: Sequence[DuplicateGroup]) -> list[DuplicateGroup]:
    """The groups the user has not kept whole (a kept group that gained an image is shown again)."""
    kept = kept_groups(project)
    return [g for g in groups if not any(set(g.image_ids) <= k for k in kept)]


def keep_only(project: Project, group: Sequence[int], keep_id: int) -> list[int]:
    """Remove every image of ``group`` but ``keep_id`` from the project; returns the removed ids."""
    others = sorted(int(i) for i in group if int(i) != int(keep_id))
    if int(keep_id) not in {int(i) for i in group}:
        raise ValueError("The image to keep is not in this group.")
    remove_images(project, others)
    return others


def keep_all(project: Project, group: Sequence[int]) -> None:
    """These look-alikes are different pictures: keep them all, and stop listing the group."""
    keep_group(project, group)
