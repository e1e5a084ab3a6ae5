"""CLI: backups (list, make one now, settings), restore, labels-as-of.

``backups PROJECT`` lists a project file's backups (newest first, numbered); ``restore PROJECT N|FILE``
puts one back (the current content is kept as a backup first); ``labels-as-of PROJECT WHEN`` shows
what the labels were at a time and, with ``--apply``, goes back to them.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections import Counter
from pathlib import Path

from cli.common import CancelOnSignals, CliError, CommandResult, add_json_flag, open_existing_project
from cli.common import stderr_progress_context
from engine.runtime.backups import backup_project
from engine.runtime.jobs import JobCancelled
from storage import backups, catalog
from storage.backends import is_database_url
from storage.label_history import apply_labels_as_of, plan_labels_as_of


def register(subparsers) -> None:
    """Adds backups, restore and labels-as-of."""
    listing = subparsers.add_parser(
        "backups", help="list a project's backups, make one now, or change the daily backups",
        description="List the backups of a project file, newest first (daily copies, copies kept before "
        "a restore or a format upgrade). Sortlab makes one a day while the project is open in the app; "
        "team projects (PostgreSQL) rely on the database server's own backups.")
    listing.add_argument("project")
    listing.add_argument("--now", action="store_true", help="make a backup now (kept until you delete it)")
    listing.add_argument("--daily", choices=("on", "off"), help="keep daily backups automatically (default on)")
    listing.add_argument("--keep", type=int, metavar="N", help="how many daily backups to keep (default 7)")
    listing.add_argument("--max-age-days", type=int, metavar="DAYS",
                         help="delete daily backups older than this (default 30; the newest always stays)")
    add_json_flag(listing)
    listing.set_defaults(handler=run_backups)

    restore = subparsers.add_parser(
        "restore", help="replace a project's content with one of its backups",
        description="Replace the project's content with a backup (a number from `backups PROJECT`, 1 = "
        "newest, or a backup file). The current content is kept as a 'before-restore' backup first, "
        "so a restore can itself be undone by restoring that one.")
    restore.add_argument("project")
    restore.add_argument("backup", metavar="BACKUP", help="number in the `backups` list, or a backup file")
    add_json_flag(restore)
    restore.set_defaults(handler=run_restore)

    as_of = subparsers.add_parser(
        "labels-as-of", help="the labels as they were at a time; --apply goes back to them",
        description="Show which labels differ from those the images had at WHEN (local time, e.g. "
        "'2026-12-01 14:00', or ISO 8601 with an offset), from the label history. With --apply, give "
        "the images those labels again (recorded in the history, so it can be undone the same way).")
    as_of.add_argument("project")
    as_of.add_argument("when", metavar="WHEN")
    as_of.add_argument("--images", type=int, nargs="+", metavar="ID", help="only these images (default: all)")
    as_of.add_argument("--apply", action="store_true", help="change the labels (default: only show)")
    add_json_flag(as_of)
    as_of.set_defaults(handler=run_labels_as_of)


def _file_project(target: str) -> Path:
    if is_database_url(target):
        raise CliError("A team project lives in a database server: its server's own backups apply.")
    path = Path(target)
    if not path.is_file():
        raise CliError(f"Project {target} does not exist.")
    return path


def _local(when: dt.datetime) -> str:
    return when.replace(tzinfo=dt.timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _backup_data(number: int, info: backups.BackupInfo) -> dict:
    return {"number": number, "path": str(info.path), "kind": info.kind, "made_at_utc": info.made_at.isoformat(),
            "made_at_local": _local(info.made_at), "size": info.size, "images": info.images,
            "labels": info.labels, "problem": info.problem}


def run_backups(args: argparse.Namespace) -> CommandResult:
    _file_project(args.project)
    messages = []
    with open_existing_project(args.project) as project:
        if args.daily or args.keep is not None or args.max_age_days is not None:
            current = backups.backup_settings(project)
            settings = backups.BackupSettings(
                current.daily if args.daily is None else args.daily == "on",
                current.keep if args.keep is None else args.keep,
                current.max_age_days if args.max_age_days is None else args.max_age_days)
            backups.set_backup_settings(project, settings)
        if args.now:
            context = stderr_progress_context(quiet=args.json)
            with CancelOnSignals(context):
                try:
                    run = backup_project(context, project, daily=False)
                except JobCancelled:
                    raise CliError("Backup cancelled; nothing was kept.") from None
            messages.append(f"Made {run.made.path.name}.")
        settings = backups.backup_settings(project)
        infos = backups.list_backups(project)
    listed = [_backup_data(n, info) for n, info in enumerate(infos, 1)]
    daily = (f"Daily backups: on, keeping {settings.keep} for up to {settings.max_age_days} days"
             if settings.daily else "Daily backups: off")
    lines = messages + [f"{daily}; folder {backups.backups_dir(args.project)}"]
    for item in listed:
        counts = (f"{item['images']:,} images, {item['labels']:,} labels" if item["problem"] == ""
                  else item["problem"])
        lines.append(f"{item['number']:>3}  {item['made_at_local']}  {item['kind']:<14} {counts}  {item['path']}")
    if not listed:
        lines.append("No backups yet.")
    data = {"settings": {"daily": settings.daily, "keep": settings.keep, "max_age_days": settings.max_age_days},
            "folder": str(backups.backups_dir(args.project)), "backups": listed}
    return CommandResult(data, "\n".join(lines))


def _chosen_backup(project_path: Path, choice: str) -> Path:
    if choice.isdigit():
        infos = backups.list_backups(project_path, counts=False)
        number = int(choice)
        if not 1 <= number <= len(infos):
            raise CliError(f"There is no backup number {number} (the project has {len(infos)}; "
                           "see `sortlab backups PROJECT`).")
        return infos[number - 1].path
    return Path(choice)


def run_restore(args: argparse.Namespace) -> CommandResult:
    project_path = _file_project(args.project)
    backup = _chosen_backup(project_path, args.backup)
    restored = backups.check_backup(backup)
    kept = backups.restore_backup(project_path, backup)
    with open_existing_project(args.project):  # upgrades a backup of an older format, as for any file
        pass
    data = {"restored": str(backup), "made_at_utc": restored.made_at.isoformat(), "images": restored.images,
            "labels": restored.labels, "kept_before_restore": str(kept.path)}
    text = (f"Restored {project_path.name} from the backup of {_local(restored.made_at)} ({restored.images:,} "
            f"images, {restored.labels:,} labels). Its content before is kept in {kept.path}.")
    return CommandResult(data, text)


def parse_when(text: str) -> dt.datetime:
    """A time the user typed: ISO 8601 (a space or T between date and time); without an offset it is
    local time. Returns an aware datetime."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(f"Cannot read the time '{text}': write it like 2026-12-01 14:00.") from None
    return when.astimezone() if when.tzinfo is None else when


def run_labels_as_of(args: argparse.Namespace) -> CommandResult:
    when = parse_when(args.when)
    with open_existing_project(args.project) as project:
        names = {c.id: c.name for c in catalog.list_classes(project)}
        plan = plan_labels_as_of(project, when, args.images)
        if args.apply:
            apply_labels_as_of(project, when, args.images)
    moves = Counter(names.get(class_id, "(no label)") if class_id is not None else "(no label)"
                    for class_id in plan.changes.values())
    data = {"when_utc": plan.when.isoformat(), "considered": plan.considered, "applied": bool(args.apply),
            "changes": {str(i): c for i, c in sorted(plan.changes.items())},
            "skipped_removed_class": {str(i): c for i, c in sorted(plan.missing_classes.items())}}
    verb = "Changed" if args.apply else "Would change"
    lines = [f"{verb} {len(plan.changes):,} of {plan.considered:,} images back to their labels at "
             f"{_local(plan.when)}" + (": " + ", ".join(f"{n} {name}" for name, n in moves.most_common())
                                       if moves else ".")]
    if plan.missing_classes:
        lines.append(f"{len(plan.missing_classes):,} images had a class that has since been removed; "
                     "they keep their label.")
    if plan.changes and not args.apply:
        lines.append("Run again with --apply to change them.")
    return CommandResult(data, "\n".join(lines))
