"""Team-project commands: ``copy`` (a project between a file and a database), ``history`` (who labeled
what, and when), ``team grant`` (PostgreSQL roles for viewers, labelers and owners), ``team overlap``
(the share of images everyone labels) and ``team agreement`` (how far labelers agree)."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from cli.common import (
    EXIT_CANCELLED,
    CancelOnSignals,
    CliError,
    CommandResult,
    add_json_flag,
    open_existing_project,
    stderr_progress_context,
)
from engine.runtime.jobs import JobCancelled
from storage.backends import is_database_url
from storage.errors import ProjectError
from storage.project import Project, create_project, open_project


def register(subparsers) -> None:
    copy = subparsers.add_parser(
        "copy", help="copy a project between a file and a database (team project), verified at the end",
        description="Copy everything (images, labels, label history, features, models, predictions) from SRC to "
        "DEST: a .sortlab file or a database URL (postgresql+psycopg://user@host/dbname; the database must exist "
        "and be empty). Interrupted copies resume when run again; at the end row counts and SHA-256 checksums "
        "of every table are compared.",
    )
    copy.add_argument("source", metavar="SRC")
    copy.add_argument("destination", metavar="DEST")
    add_json_flag(copy)
    copy.set_defaults(handler=run_copy)

    history = subparsers.add_parser(
        "history", help="who changed which labels, and when (newest first)",
        description="List label changes: by whom (the database user in a team project, the login name or "
        "SORTLAB_USER for a file), to what class, and when (UTC).",
    )
    history.add_argument("project")
    history.add_argument("image_id", nargs="?", type=int, metavar="IMAGE_ID", help="only this image")
    history.add_argument("--by", metavar="USER", help="only changes by this user")
    history.add_argument("--limit", type=int, default=200, help="at most this many changes (0: all)")
    add_json_flag(history)
    history.set_defaults(handler=run_history)

    team = subparsers.add_parser("team", help="who may do what in a team project (PostgreSQL roles)")
    actions = team.add_subparsers(dest="team_action", metavar="ACTION", required=True)
    grant = actions.add_parser(
        "grant", help="let a database role view, label or own a team project",
        description="Set ROLE's rights with PostgreSQL grants (run as the project's owner): a viewer looks but "
        "cannot label or export, a labeler also labels, an owner does everything (classes, import, training, "
        "export, upgrades). ROLE is created (LOGIN) if missing; its password is set in PostgreSQL, not here.",
    )
    grant.add_argument("project", metavar="URL")
    grant.add_argument("role", metavar="ROLE")
    level = grant.add_mutually_exclusive_group(required=True)
    for name in ("viewer", "labeler", "owner"):
        level.add_argument(f"--{name}", dest="level", action="store_const", const=name)
    add_json_flag(grant)
    grant.set_defaults(handler=run_grant)
    agree = actions.add_parser(
        "agreement", help="how far labelers agree where two labeled the same images (Cohen's kappa)",
        description="For each pair of people who labeled the same images (each person's latest label, from the "
        "label history), Cohen's kappa and the images they disagree on.")
    agree.add_argument("project")
    add_json_flag(agree)
    agree.set_defaults(handler=run_agreement)
    overlap = actions.add_parser(
        "overlap", help="the share of images shown to everyone who labels (to measure agreement)",
        description="Without SHARE: the project's overlap share. With SHARE (0.1, 10%%; 0 turns it off; owners "
        "only): that share of the images, the same for every client, is offered by 'Label next' and "
        "'sortlab next' to each person who has not labeled it yet, even when a teammate has, so that "
        "'sortlab team agreement' and the model report can compare their labels. Works for project files "
        "too, with each person's name in SORTLAB_USER.")
    overlap.add_argument("project")
    overlap.add_argument("share", nargs="?", metavar="SHARE", help="a fraction (0.1) or a percentage (10%%)")
    add_json_flag(overlap)
    overlap.set_defaults(handler=run_overlap)
    whoami = actions.add_parser("whoami", help="your database role and what it may do in a team project")
    whoami.add_argument("project", metavar="URL")
    add_json_flag(whoami)
    whoami.set_defaults(handler=run_whoami)


def _open_destination(target: str, source: Project) -> Project:
    try:
        if is_database_url(target):
            return open_project(target, create=True)
        path = Path(target)
        if path.exists() and path.stat().st_size > 0:
            return open_project(path)  # only an unfinished copy of the source is accepted (checked next)
        if path.suffix != ".sortlab":
            raise CliError(f"New project files must end in .sortlab: {target}")
        return create_project(path)
    except ProjectError as exc:
        raise CliError(str(exc)) from exc


def run_copy(args: argparse.Namespace) -> CommandResult:
    from storage.copying import copy_project

    context = stderr_progress_context()
    with open_existing_project(args.source) as source:
        if source.location == str(Path(args.destination)) or source.location == args.destination:
            raise CliError("SRC and DEST are the same project.")
        with _open_destination(args.destination, source) as destination, CancelOnSignals(context):
            try:
                report = copy_project(context, source, destination)
            except JobCancelled:
                return CommandResult({"cancelled": True}, "Cancelled: run the same command again to resume the copy.",
                                     exit_code=EXIT_CANCELLED)
            except ProjectError as exc:
                raise CliError(str(exc)) from exc
    rows = sum(table.rows for table in report.tables)
    text = (f"Copied {report.source} to {report.destination}"
            + (" (resumed)" if report.resumed else "")
            + f": {rows:,} rows in {len(report.tables)} tables, counts and checksums verified.")
    return CommandResult(report.to_dict(), text)


def _when(value: dt.datetime) -> str:
    return value.replace(microsecond=0).isoformat(sep=" ")


def run_history(args: argparse.Namespace) -> CommandResult:
    from storage.label_history import label_history

    with open_existing_project(args.project) as project:
        events = label_history(project, args.image_id, limit=args.limit or None, actor=args.by)
    rows = [{"image": e.image_id, "class": e.class_name, "previous": e.previous_class_name, "by": e.actor,
             "at": e.at.isoformat(), "origin": e.origin} for e in events]

    def name(value: str | None, class_id: int | None) -> str:
        return value if value is not None else ("(none)" if class_id is None else f"(removed class {class_id})")

    lines = [f"{_when(e.at)}  image {e.image_id:>6}  {name(e.previous_class_name, e.previous_class_id)} -> "
             f"{name(e.class_name, e.class_id)}  by {e.actor or '?'}  ({e.origin})" for e in events]
    return CommandResult({"events": rows}, "\n".join(lines) if lines else "No label changes recorded.")


def run_grant(args: argparse.Namespace) -> CommandResult:
    from storage.team_roles import grant

    if not is_database_url(args.project):
        raise CliError("Roles exist only in team projects: give the database URL.")
    with open_existing_project(args.project) as project:
        try:
            statements = grant(project, args.role, args.level)
        except ProjectError as exc:
            raise CliError(str(exc)) from exc
    return CommandResult({"role": args.role, "level": args.level, "statements": statements},
                         f"{args.role} is now a {args.level} of {project.location}.")


def run_whoami(args: argparse.Namespace) -> CommandResult:
    from storage.team_roles import access_level

    with open_existing_project(args.project) as project:
        level = access_level(project)
    return CommandResult({"role": project.actor, "level": level}, f"{project.actor}: {level} of {project.location}")


def run_overlap(args: argparse.Namespace) -> CommandResult:
    from storage.team_overlap import describe_share, overlap_image_ids, overlap_share, parse_share, set_overlap_share

    with open_existing_project(args.project) as project:
        if args.share is not None:
            try:
                set_overlap_share(project, parse_share(args.share))
            except (ValueError, ProjectError) as exc:
                raise CliError(str(exc)) from exc
        share = overlap_share(project)
        images = len(overlap_image_ids(project, share))
    text = describe_share(share) + (f" That is {images:,} images now." if share > 0 else "")
    return CommandResult({"share": share, "images": images}, text)


def run_agreement(args: argparse.Namespace) -> CommandResult:
    from storage.team_agreement import agreement

    with open_existing_project(args.project) as project:
        report = agreement(project)
    lines = [f"{p.first} and {p.second}: {p.agreed} of {p.overlap} images alike, kappa "
             + ("n/a" if p.kappa is None else f"{p.kappa:.2f}") for p in report.pairs]
    if report.disputed:
        lines.append("Disputed images:")
        lines += [f"  {image}: " + ", ".join(f"{who} says {what}" for who, what in people.items())
                  for image, people in report.disputed.items()]
    return CommandResult(report.to_dict(), "\n".join(lines) or "No image was labeled by two people yet.")
