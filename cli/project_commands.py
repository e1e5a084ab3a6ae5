"""CLI: import, info, classes, sources, label, demo.

Each command prints human-readable text, or with ``--json`` one JSON document on stdout;
progress goes to stderr. User errors raise CliError (one line, exit status 2).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cli.common import (
    EXIT_CANCELLED,
    CancelOnSignals,
    CliError,
    CommandResult,
    add_json_flag,
    open_existing_project,
    open_or_create_project,
    stderr_progress_context,
)
from engine.images.demo import build_demo_project
from engine.images.importing import ImportReport, import_paths
from engine.runtime.jobs import JobCancelled, JobContext, user_message
from storage import catalog
from storage.class_order import classes_ordered, set_classes_ordered
from storage.errors import ProjectError
from storage.images import project_summary, rename_source
from storage.project import SUFFIX


def register(subparsers) -> None:
    """Adds import, info, classes, sources, label and demo."""
    importer = subparsers.add_parser(
        "import", help="import image files and folders into a project (created if missing)",
        description="Import image files and folders (recursively). Identical images are skipped; "
        "files that cannot be read are listed with the reason and the import goes on.",
    )
    importer.add_argument("project", help="project file (.sortlab); created if it does not exist")
    importer.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    importer.add_argument("--labels-from-folders", action="store_true",
                          help="use each file's folder name as its class")
    importer.add_argument("--source", metavar="NAME",
                          help="source tag for every imported image (default: \"import DATE TIME (folder 'NAME')\" "
                          "per imported sub-folder; rename it later with `sources PROJECT --rename`)")
    add_json_flag(importer)
    importer.set_defaults(handler=run_import)

    info = subparsers.add_parser("info", help="count images, labels, classes and sources")
    info.add_argument("project")
    add_json_flag(info)
    info.set_defaults(handler=run_info)

    classes = subparsers.add_parser("classes", help="list, add, rename or remove classes")
    classes.add_argument("project")
    add_json_flag(classes)
    ordering = classes.add_mutually_exclusive_group()
    ordering.add_argument("--ordered", dest="ordered", action="store_true", default=None,
                          help="mark the classes as ordered levels (e.g. fill levels), lowest first in list order: "
                          "training and the metrics then respect the order")
    ordering.add_argument("--unordered", dest="ordered", action="store_false", help="the classes are not ordered")
    classes.set_defaults(handler=run_classes, action="list")
    actions = classes.add_subparsers(dest="action", metavar="ACTION")
    add = actions.add_parser("add", help="add classes")
    add.add_argument("names", nargs="+", metavar="NAME")
    rename = actions.add_parser("rename", help="rename a class")
    rename.add_argument("old", metavar="OLD")
    rename.add_argument("new", metavar="NEW")
    remove = actions.add_parser("remove", help="remove a class (its images become unlabeled)")
    remove.add_argument("name", metavar="NAME")
    listing = actions.add_parser("list", help="list classes with their image counts")
    order = actions.add_parser("order", help="set the class order (every class, lowest level first)")
    order.add_argument("names", nargs="+", metavar="NAME")
    for action_parser in (add, rename, remove, listing, order):
        # SUPPRESS keeps a --json given before the action from being reset to False here.
        action_parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                                   help="print one JSON document on stdout")

    sources = subparsers.add_parser("sources", help="list the image sources (cameras, batches) or rename one",
                                    description="A source tells where images came from: a camera, a day, a batch. "
                                    "Imports name them after the folder and the time of the import.")
    sources.add_argument("project")
    sources.add_argument("--rename", nargs=2, metavar=("OLD", "NEW"), help="rename source OLD to NEW "
                         "(if NEW exists, the two become one source)")
    add_json_flag(sources)
    sources.set_defaults(handler=run_sources)

    label = subparsers.add_parser("label", help="label images (by id) with a class, or clear their labels")
    label.add_argument("project")
    target = label.add_mutually_exclusive_group(required=True)
    target.add_argument("--class", dest="class_name", metavar="NAME", help="class to give the images")
    target.add_argument("--clear", action="store_true", help="remove the images' labels")
    label.add_argument("image_ids", nargs="+", type=int, metavar="IMAGE_ID")
    add_json_flag(label)
    label.set_defaults(handler=run_label)

    demo = subparsers.add_parser("demo", help="create a demo project of handwritten digits, partly labeled")
    demo.add_argument("project", help="new project file (.sortlab)")
    add_json_flag(demo)
    demo.set_defaults(handler=run_demo)


def _report_text(report: ImportReport, cancelled: bool) -> str:
    lines = [f"Imported {report.imported} images ({report.duplicates} duplicates skipped, "
             f"{report.skipped} non-image files skipped, {len(report.failed)} failed)."]
    if report.classes:
        lines.append("Labeled: " + ", ".join(f"{name} {count}" for name, count in report.classes.items()))
    if report.labeled_duplicates:
        lines.append(f"{report.labeled_duplicates} of the duplicates had no label and got their folder's label.")
    if report.conflicts:
        lines.append(f"{len(report.conflicts)} duplicates are labeled otherwise than their folder says "
                     "(their label was kept):")
        lines.extend(f"  {c.path}: labeled '{c.label}', folder '{c.folder_label}'" for c in report.conflicts)
    if report.failed:
        lines.append("Could not import:")
        lines.extend(f"  {failure.path}: {failure.reason}" for failure in report.failed)
    if cancelled:
        lines.append("Cancelled: the images imported so far are saved.")
    return "\n".join(lines)


def run_import(args: argparse.Namespace) -> CommandResult:
    missing = [p for p in args.paths if not os.path.lexists(p)]
    if missing:
        raise CliError(f"No such file or folder: {missing[0]}")
    imported_so_far: list[ImportReport] = []  # a cancelled import's partial result
    context = stderr_progress_context(on_partial=imported_so_far.append)
    refreshed = None
    with open_or_create_project(args.project) as project, CancelOnSignals(context):
        try:
            report = import_paths(context, project, args.paths,
                                  labels_from_folders=args.labels_from_folders, source=args.source)
        except JobCancelled:
            report, cancelled = imported_so_far[-1], True
        else:
            cancelled = False
            refreshed = _predict_new_images(context, project)
    data = {**report.to_dict(), "cancelled": cancelled, "predictions": refreshed}
    text = _report_text(report, cancelled)
    if refreshed is not None:
        text += "\n" + (refreshed["error"] if "error" in refreshed else
                        f"Model version {refreshed['model']} predicted {refreshed['predicted']} new images.")
    return CommandResult(data, text, exit_code=EXIT_CANCELLED if cancelled else 0)


def _predict_new_images(context: JobContext, project) -> dict | None:
    """The active model's predictions for the images that have none (None without a model). The import
    is saved whatever happens here, so a failure is reported, not raised."""
    from storage.modelstore import active_model

    if active_model(project) is None:  # the usual case for a new project: skip loading sklearn (~1.5 s)
        return None
    from engine.models.predicting import refresh_if_model

    try:
        outcome = refresh_if_model(context, project)
    except JobCancelled:
        return {"model": None, "predicted": 0, "error": "Cancelled: new images have no predictions yet."}
    except Exception as exc:  # e.g. features that cannot be computed in this edition
        return {"model": None, "predicted": 0, "error": f"New images have no predictions yet: {user_message(exc)}"}
    return None if outcome is None else {"model": outcome.model_version, "predicted": outcome.predicted}


def run_info(args: argparse.Namespace) -> CommandResult:
    with open_existing_project(args.project) as project:
        summary = project_summary(project)
    data = {"images": summary.images, "labeled": summary.labeled, "unlabeled": summary.unlabeled,
            "classes": summary.classes, "sources": summary.sources}
    lines = [f"{Path(args.project).name}: {summary.images} images, {summary.labeled} labeled, "
             f"{summary.unlabeled} unlabeled"]
    lines.append("Classes: " + (", ".join(f"{n} ({c})" for n, c in summary.classes.items()) or "none"))
    lines.append("Sources: " + (", ".join(f"{n or '(none)'} ({c})" for n, c in summary.sources.items()) or "none"))
    return CommandResult(data, "\n".join(lines))


def _classes_result(project, message: str = "") -> CommandResult:
    infos = catalog.list_classes(project)
    ordered = classes_ordered(project)
    data = {"classes": [{"id": c.id, "name": c.name, "color": c.color, "shortcut": c.shortcut, "count": c.count}
                        for c in infos], "ordered": ordered}
    lines = [message] if message else []
    if ordered:
        lines.append("Ordered classes, lowest level first:")
    lines.extend(f"{c.shortcut or ' '}  {c.name}  ({c.count} images)" for c in infos)
    if not infos:
        lines.append("No classes yet.")
    return CommandResult(data, "\n".join(lines))


def run_classes(args: argparse.Namespace) -> CommandResult:
    with open_existing_project(args.project) as project:
        try:
            if getattr(args, "ordered", None) is not None:
                set_classes_ordered(project, args.ordered)
            if args.action == "order":
                catalog.reorder_classes(project, [catalog.find_class(project, name).id for name in args.names])
                return _classes_result(project, "Class order set.")
            if args.action == "add":
                for name in args.names:
                    catalog.add_class(project, name)
                return _classes_result(project, f"Added {len(args.names)} class(es).")
            if args.action == "rename":
                catalog.rename_class(project, catalog.find_class(project, args.old).id, args.new)
                return _classes_result(project, f"Renamed '{args.old}' to '{args.new}'.")
            if args.action == "remove":
                removed = catalog.remove_class(project, catalog.find_class(project, args.name).id)
                return _classes_result(project, f"Removed '{args.name}'; {removed} images are unlabeled now.")
            return _classes_result(project)
        except ProjectError as exc:
            raise CliError(str(exc)) from exc


def run_sources(args: argparse.Namespace) -> CommandResult:
    message = ""
    with open_existing_project(args.project) as project:
        if args.rename is not None:
            old, new = args.rename
            try:
                renamed = rename_source(project, old, new)
            except ProjectError as exc:
                raise CliError(str(exc)) from exc
            message = f"Renamed source '{old}' to '{' '.join(new.split())}' ({renamed} images)."
        counts = project_summary(project).sources
    lines = [message] if message else []
    lines.extend(f"{name or '(none)'}  ({count} images)" for name, count in counts.items())
    if not counts:
        lines.append("No images yet.")
    return CommandResult({"sources": counts}, "\n".join(lines))


def run_label(args: argparse.Namespace) -> CommandResult:
    with open_existing_project(args.project) as project:
        try:
            class_id = None if args.clear else catalog.find_class(project, args.class_name).id
            catalog.set_labels(project, args.image_ids, class_id, origin="manual")
        except ProjectError as exc:
            raise CliError(str(exc)) from exc
    count = len(set(args.image_ids))
    if args.clear:
        return CommandResult({"cleared": count, "image_ids": args.image_ids}, f"Cleared the labels of {count} images.")
    return CommandResult({"labeled": count, "class": args.class_name, "image_ids": args.image_ids},
                         f"Labeled {count} images as '{args.class_name}'.")


def run_demo(args: argparse.Namespace) -> CommandResult:
    path = Path(args.project)
    if path.suffix != SUFFIX:
        raise CliError(f"New project files must end in {SUFFIX}: {args.project}")
    if path.exists():
        raise CliError(f"{args.project} already exists; choose a new file name for the demo project.")
    imported_so_far: list[ImportReport] = []  # a cancelled build's partial result
    context = stderr_progress_context(on_partial=imported_so_far.append)
    try:
        with CancelOnSignals(context):
            report = build_demo_project(context, path)
    except JobCancelled:
        report = imported_so_far[-1]
        text = f"Cancelled: the demo project {path.name} holds the {report.imported} digits imported so far."
        return CommandResult({**report.to_dict(), "cancelled": True}, text, exit_code=EXIT_CANCELLED)
    except ProjectError as exc:
        raise CliError(str(exc)) from exc
    text = (f"Created demo project {path.name}: {report.imported} handwritten digits, "
            f"{report.labeled} labeled in {len(report.classes)} classes.\n"
            f"Open it with: python main.py {args.project}")
    return CommandResult({**report.to_dict(), "cancelled": False}, text)
