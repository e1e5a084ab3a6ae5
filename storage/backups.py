"""Backups a user can return to: daily copies of a project file, listed, pruned, restored.

Where: a folder beside the project, ``<name>.backups/``, holding ``<name> <UTC time>.<kind>.sortlab``
(each a complete project file that Sortlab can open); the copies made before a format upgrade stay
where ``storage.project.backup_path`` puts them (beside the project) and are listed too.

How: SQLite's online backup API, a few hundred pages per step with a short pause between steps, all
steps inside one read transaction: the copy is the project as it was when the backup began, and in
WAL mode label writes go on meanwhile without waiting for it. (Should the snapshot ever be lost, a
write between two steps makes SQLite start the copy again; after a few restarts the rest is copied
in one step.) The copy is written to ``*.partial`` and renamed
when complete, so a crash never leaves a half backup that looks whole.

Settings live in the project (``project_meta``): ``backups.daily`` ('on'/'off'), ``backups.keep``
(how many daily backups to keep) and ``backups.max_age_days``.

Team projects (PostgreSQL) have no file to copy: the server's own backups apply (``BackupsNotHere``).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from storage.errors import NotAProjectError, ProjectError
from storage.models import ProjectMeta
from storage.project import APP_MARKER, SUFFIX, Project, known_revisions

DAILY, BEFORE_RESTORE, BEFORE_UPGRADE, MANUAL = "daily", "before-restore", "before-upgrade", "manual"
KINDS = (DAILY, BEFORE_RESTORE, MANUAL)
DEFAULT_KEEP = 7
DEFAULT_MAX_AGE_DAYS = 30
PAGES_PER_STEP = 128  # 512 KiB with SQLite's default 4 KiB pages; with the pause, ~40 MB/s at most
PAUSE_S = 0.01  # between steps: the disk and the GIL go to label writes (benchmarks/backups.py)
MAX_RESTARTS = 3
STAMP = "%Y-%m-%d %H%M%S"
_NAME = re.compile(r"^(?P<stem>.+) (?P<stamp>\d{4}-\d\d-\d\d \d{6})Z\.(?P<kind>[a-z-]+)" + re.escape(SUFFIX) + "$")
_UPGRADE = re.compile(re.escape(SUFFIX) + r"\.before-upgrade-(?P<rev>[^.]+)\.bak$")


class BackupsNotHere(ProjectError):
    """A team project: its database server's own backups apply."""


class BackupStopped(Exception):
    """``make_backup``'s ``should_stop`` said stop; nothing was left behind."""


@dataclass(frozen=True)
class BackupSettings:
    daily: bool = True
    keep: int = DEFAULT_KEEP
    max_age_days: int = DEFAULT_MAX_AGE_DAYS


@dataclass(frozen=True)
class BackupInfo:
    """One backup file. ``made_at`` naive UTC; counts None when the file cannot be read."""

    path: Path
    kind: str
    made_at: dt.datetime
    size: int
    images: int | None = None
    labels: int | None = None
    revision: str | None = None
    problem: str = ""


def _file_of(project: Project | Path | str) -> Path:
    if isinstance(project, Project):
        if project.path is None or project.engine.dialect.name != "sqlite":
            raise BackupsNotHere(
                f"{project.name} is a team project in a database server: its server's own backups apply "
                "(ask whoever runs the server); Sortlab keeps backups of project files only.")
        return Path(project.path)
    return Path(project)


def backups_dir(project: Project | Path | str) -> Path:
    path = _file_of(project)
    return path.with_name(f"{path.stem}.backups")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


# -- settings -----------------------------------------------------------------------------------
def backup_settings(project: Project) -> BackupSettings:
    with project.session() as session:
        meta = dict(session.execute(select(ProjectMeta.key, ProjectMeta.value)
                                    .where(ProjectMeta.key.like("backups.%"))).all())
    defaults = BackupSettings()
    try:
        return BackupSettings(meta.get("backups.daily", "on") != "off",
                              max(1, int(meta.get("backups.keep", defaults.keep))),
                              max(1, int(meta.get("backups.max_age_days", defaults.max_age_days))))
    except ValueError:
        return defaults


def set_backup_settings(project: Project, settings: BackupSettings) -> None:
    if settings.keep < 1 or settings.max_age_days < 1:
        raise ProjectError("Keep at least one backup, for at least one day.")
    values = {"backups.daily": "on" if settings.daily else "off", "backups.keep": str(settings.keep),
              "backups.max_age_days": str(settings.max_age_days)}
    with project.writing() as session:
        for key, value in values.items():
            session.merge(ProjectMeta(key=key, value=value))


# -- making -------------------------------------------------------------------------------------
def _copy(source: sqlite3.Connection, target: Path, progress: Callable[[float], None] | None,
          should_stop: Callable[[], bool] | None, pages: int, pause: float) -> None:
    """Copy ``source`` into a new file ``target`` (paced, with a one-step finish after restarts)."""
    restarts = [0, None]  # restarts so far, pages left after the last step

    class _Restarting(Exception):
        pass

    def step(_status, remaining, total):
        if should_stop is not None and should_stop():
            raise BackupStopped()
        if restarts[1] is not None and remaining >= restarts[1]:  # no progress: SQLite started again
            restarts[0] += 1
            if restarts[0] >= MAX_RESTARTS:
                raise _Restarting()
        restarts[1] = remaining
        if progress is not None and total:
            progress(1 - remaining / total)
        if remaining:
            time.sleep(pause)  # the GIL is free and the disk idle for a moment: label writes go first

    destination = sqlite3.connect(str(target))
    try:
        try:
            source.backup(destination, pages=pages, progress=step)
        except _Restarting:
            source.backup(destination, pages=-1)
        destination.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        destination.close()


def make_backup(project: Project | Path | str, kind: str = DAILY, *,
                progress: Callable[[float], None] | None = None, should_stop: Callable[[], bool] | None = None,
                now: dt.datetime | None = None, pages: int = PAGES_PER_STEP, pause: float = PAUSE_S) -> BackupInfo:
    """Copy the project file into its backups folder (safe while the project is open and being
    labeled). ``progress(fraction)`` after each step; ``should_stop()`` True stops it (BackupStopped)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    path = _file_of(project)
    if not path.is_file():
        raise ProjectError(f"Project {path} does not exist.")
    folder = backups_dir(path)
    folder.mkdir(exist_ok=True)
    made_at = (now or _utcnow()).replace(microsecond=0)
    target = folder / f"{path.stem} {made_at.strftime(STAMP)}Z.{kind}{SUFFIX}"
    while target.exists():  # two backups in one second (a restore right after a daily backup)
        made_at += dt.timedelta(seconds=1)
        target = folder / f"{path.stem} {made_at.strftime(STAMP)}Z.{kind}{SUFFIX}"
    partial = target.with_name(target.name + ".partial")
    source = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    try:
        # One read transaction for the whole copy: every step reads the same snapshot, so writes
        # between steps neither restart the copy nor wait for it (WAL: readers never block writers).
        source.execute("BEGIN")
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()
        _copy(source, partial, progress, should_stop, pages, pause)
        source.execute("COMMIT")
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    return describe_backup(target)


# -- listing ------------------------------------------------------------------------------------
def describe_backup(path: Path, counts: bool = True) -> BackupInfo:
    """What a backup file holds: its kind, time, size and (with ``counts``) images and labels."""
    path = Path(path)
    match = _NAME.match(path.name)
    upgrade = _UPGRADE.search(path.name)
    if match:
        kind = match["kind"]
        made_at = dt.datetime.strptime(match["stamp"], STAMP)
    else:
        kind = BEFORE_UPGRADE if upgrade else MANUAL
        made_at = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).replace(tzinfo=None)
    info = BackupInfo(path, kind, made_at, path.stat().st_size)
    if not counts:
        return info
    try:
        images, labels, revision = _counts(path)
    except (sqlite3.DatabaseError, NotAProjectError) as exc:
        return BackupInfo(path, kind, made_at, info.size, problem=f"cannot be read ({exc})")
    return BackupInfo(path, kind, made_at, info.size, images, labels, revision)


def _read_only(path: Path) -> sqlite3.Connection:
    # immutable: a backup never changes, so no lock or -shm file is needed (the folder may be read-only)
    return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)


def _counts(path: Path) -> tuple[int, int, str | None]:
    connection = _read_only(path)
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"project_meta", "images", "labels", "alembic_version"} <= tables:
            raise NotAProjectError("not a Sortlab project")
        marker = connection.execute("SELECT value FROM project_meta WHERE key='app'").fetchone()
        if not marker or marker[0] != APP_MARKER:
            raise NotAProjectError("not a Sortlab project")
        images = connection.execute("SELECT count(*) FROM images").fetchone()[0]
        labels = connection.execute("SELECT count(*) FROM labels").fetchone()[0]
        revision = (connection.execute("SELECT version_num FROM alembic_version").fetchone() or [None])[0]
        return images, labels, revision
    finally:
        connection.close()


def list_backups(project: Project | Path | str, counts: bool = True) -> list[BackupInfo]:
    """Every backup of the project, newest first: daily and before-restore copies in its backups
    folder, and the copies made before format upgrades beside it."""
    path = _file_of(project)
    found = []
    folder = backups_dir(path)
    if folder.is_dir():
        found += [p for p in folder.iterdir() if p.name.endswith(SUFFIX) and p.is_file()]
    found += [p for p in path.parent.glob(f"{glob_escape(path.name)}.before-upgrade-*.bak") if p.is_file()]
    infos = [describe_backup(p, counts) for p in found]
    # (two made in the same second, e.g. a daily one and the one kept before a restore: the later file first)
    return sorted(infos, key=lambda info: (info.made_at, info.path.stat().st_mtime_ns), reverse=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def daily_backup_due(project: Project | Path | str, now: dt.datetime | None = None) -> bool:
    """True when no daily backup was made on this (local) day yet."""
    now = now or _utcnow()
    local_day = now.replace(tzinfo=dt.timezone.utc).astimezone().date()
    for info in list_backups(project, counts=False):
        if info.kind == DAILY:
            return info.made_at.replace(tzinfo=dt.timezone.utc).astimezone().date() != local_day
    return True


def prune_backups(project: Project | Path | str, keep: int = DEFAULT_KEEP, max_age_days: int = DEFAULT_MAX_AGE_DAYS,
                  now: dt.datetime | None = None) -> list[Path]:
    """Delete daily backups beyond the newest ``keep`` and those older than ``max_age_days`` (the
    newest one always stays). Other kinds are the user's to delete. Returns the deleted paths."""
    now = now or _utcnow()
    daily = [info for info in list_backups(project, counts=False) if info.kind == DAILY]
    doomed = [info.path for index, info in enumerate(daily)
              if index > 0 and (index >= keep or now - info.made_at > dt.timedelta(days=max_age_days))]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


# -- returning ----------------------------------------------------------------------------------
def check_backup(backup: Path | str) -> BackupInfo:
    """The backup's description, or a ProjectError saying why it cannot be restored."""
    backup = Path(backup)
    if not backup.is_file():
        raise ProjectError(f"Backup {backup} does not exist.")
    info = describe_backup(backup)
    if info.problem:
        raise NotAProjectError(f"{backup.name} {info.problem}.")
    if info.revision not in known_revisions():
        raise ProjectError(f"{backup.name} was made by a newer version of Sortlab; update Sortlab to use it.")
    connection = _read_only(backup)
    try:
        verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        connection.close()
    if verdict != "ok":
        raise NotAProjectError(f"{backup.name} is damaged ({verdict}).")
    return info


def restore_backup(project_path: Path | str, backup: Path | str) -> BackupInfo:
    """Replace the project's content with the backup's, after keeping the current content as a
    'before-restore' backup (returned). Close the project first; open it again afterwards (an older
    format is upgraded then, as for any older file)."""
    project_path, backup = Path(project_path), Path(backup)
    if not project_path.is_file():
        raise ProjectError(f"Project {project_path} does not exist.")
    if backup.resolve() == project_path.resolve():
        raise ProjectError("That is the project itself, not a backup of it.")
    check_backup(backup)
    kept = make_backup(project_path, BEFORE_RESTORE, pages=-1)
    source = _read_only(backup)
    destination = sqlite3.connect(str(project_path), timeout=30)
    try:
        source.backup(destination)  # through SQLite: its WAL and lock files stay consistent
    finally:
        destination.close()
        source.close()
    return kept


def copy_backup(backup: Path | str, target: Path | str) -> Path:
    """Copy a backup to a new project file (to open it side by side with the project)."""
    backup, target = Path(backup), Path(target)
    check_backup(backup)
    if target.exists():
        raise ProjectError(f"{target} already exists.")
    source = _read_only(backup)
    partial = target.with_name(target.name + ".partial")
    try:
        destination = sqlite3.connect(str(partial))
        try:
            source.backup(destination)
        finally:
            destination.close()
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    return target
