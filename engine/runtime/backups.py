"""The daily backup as a job: copy the project file when today's copy is missing, then prune.

It runs beside labeling (the GUI gives it a runner of its own, so a long training job never delays
it and it never delays one): the copy is SQLite's online backup of a WAL-mode file, a read snapshot
that label writes do not wait for (``storage.backups``). Cancelling stops it between two steps and
leaves no partial file.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from engine.runtime.jobs import JobCancelled, JobContext
from storage import backups
from storage.project import Project


@dataclass(frozen=True)
class BackupRun:
    """What a backup job did: the backup it made (None: none was due, or backups are off, with
    ``reason``), and the old daily backups it deleted."""

    made: backups.BackupInfo | None
    pruned: list[Path] = field(default_factory=list)
    reason: str = ""


def backup_project(context: JobContext, project: Project, *, daily: bool = True,
                   now: dt.datetime | None = None) -> BackupRun:
    """With ``daily``: make today's daily backup if the project's settings keep them and none was made
    today, then prune. Without: make a backup now ('manual', never pruned)."""
    settings = backups.backup_settings(project)
    if daily and not settings.daily:
        return BackupRun(None, reason="Daily backups are off for this project.")
    if daily and not backups.daily_backup_due(project, now):
        return BackupRun(None, reason="Today's backup exists already.")
    context.progress(0.0, f"Backing up {project.name}…")
    try:
        made = backups.make_backup(
            project, backups.DAILY if daily else backups.MANUAL, now=now,
            progress=lambda fraction: context.progress(0.95 * fraction, f"Backing up {project.name}…"),
            should_stop=lambda: context.cancelled)
    except backups.BackupStopped:
        raise JobCancelled() from None
    pruned = backups.prune_backups(project, settings.keep, settings.max_age_days, now) if daily else []
    context.progress(1.0, f"Backed up {project.name}")
    return BackupRun(made, pruned)
