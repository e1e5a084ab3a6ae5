"""CLI: review (likely mislabeled images), duplicates (look-alike groups) and outliers (images that fit nowhere).

Each extracts the features images still lack (the active model's backbone, else the default) and then
works on the cached vectors; ``review`` cross-validates, so every score comes from a model that never
saw the image it scores.
"""

from __future__ import annotations

import argparse

from cli.common import CliError, CommandResult, add_json_flag, open_existing_project, stderr_progress_context
from engine.curation.duplicates import LOOK_ALIKE, project_duplicates
from engine.curation.outliers import project_outliers
from engine.curation.review import review_labels
from engine.features.backbones import BackboneUnavailable
from engine.runtime.jobs import JobCancelled
from storage.catalog import list_classes
from storage.errors import ProjectError
from storage.images import list_images
from storage.project import Project

EXIT_CANCELLED = 130
TEXT_ROWS_AT_LEAST = 10


def _add_feature_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", help="project file (.sortlab)")
    parser.add_argument("--backbone", default=None, metavar="NAME",
                        help="feature network (default: the active model's, else the default network)")
    parser.add_argument("--layer", default=None, metavar="NAME", help="feature layer (default: as the backbone)")
    add_json_flag(parser)


def register(subparsers) -> None:
    """Adds review, duplicates and outliers."""
    review = subparsers.add_parser(
        "review", help="list the labeled images most likely mislabeled, most suspicious first",
        description="Score every labeled image with a model that did not train on it (5-fold cross-validation "
        "on the cached features) and list them by how little that model believes the given label. "
        "suggested_count estimates how many of the first ones are worth a look.",
    )
    _add_feature_options(review)
    review.add_argument("--seed", type=int, default=0, help="random seed of the folds")
    review.set_defaults(handler=run_review)

    duplicates = subparsers.add_parser(
        "duplicates", help="group images that look like copies of each other",
        description="Group images whose features are nearly the same: the same photo saved twice, resized, "
        "recompressed or cropped, or the same object shot again.",
    )
    _add_feature_options(duplicates)
    duplicates.add_argument("--threshold", type=float, default=LOOK_ALIKE, metavar="SIMILARITY",
                            help=f"cosine similarity from which two images count as copies (default {LOOK_ALIKE}; "
                            "0.95 and above is nearly always the same photo)")
    duplicates.set_defaults(handler=run_duplicates)

    outliers = subparsers.add_parser(
        "outliers", help="list images that look like nothing else in their class or the project",
        description="Flag images far from every neighbour in feature space (placeholders, wrong pictures). "
        "The flags are kept in the project: the app's \"Outliers\" filter shows them.",
    )
    _add_feature_options(outliers)
    outliers.set_defaults(handler=run_outliers)


def _paths(project: Project, image_ids) -> dict[int, str]:
    return {info.id: info.original_path for info in list_images(project, [int(i) for i in image_ids])}


def _run(job):
    """Run an engine job with progress on stderr; failures the user can fix become one-line CliErrors."""
    try:
        return job(stderr_progress_context())
    except (BackboneUnavailable, ProjectError) as exc:
        raise CliError(str(exc)) from exc


def run_review(args: argparse.Namespace) -> CommandResult:
    with open_existing_project(args.project) as project:
        try:
            review = _run(lambda context: review_labels(context, project, args.backbone, args.layer, args.seed))
        except JobCancelled:
            return CommandResult({"cancelled": True}, "Cancelled.", EXIT_CANCELLED)
        names = {c.id: c.name for c in list_classes(project)}
        suspects = review.suspects()
        paths = _paths(project, [s.image_id for s in suspects])
    rows = [{"id": s.image_id, "path": paths.get(s.image_id, ""), "label": names.get(s.label, str(s.label)),
             "suggested": names.get(s.suggested, str(s.suggested)), "score": round(s.score, 6)} for s in suspects]
    lines = [f"{review.suggested_count} of {len(rows)} labeled images are worth a second look "
             f"({review.folds}-fold out-of-fold {review.method}); most suspicious first:"]
    lines += [f"{r['id']:>7}  {r['score']:.3f}  {r['label']} -> {r['suggested']}  {r['path']}"
              for r in rows[:max(review.suggested_count, TEXT_ROWS_AT_LEAST)]]
    if review.unchecked:
        lines.append(f"Not checked (only image of its class): {', '.join(map(str, review.unchecked))}")
    return CommandResult({"suggested_count": review.suggested_count, "suspects": rows}, "\n".join(lines))


def run_duplicates(args: argparse.Namespace) -> CommandResult:
    if not 0.0 < args.threshold <= 1.0:
        raise CliError("--threshold is a cosine similarity between 0 and 1, such as 0.88.")
    with open_existing_project(args.project) as project:
        try:
            groups = _run(lambda context: project_duplicates(context, project, args.threshold, args.backbone,
                                                             args.layer))
        except JobCancelled:
            return CommandResult({"cancelled": True}, "Cancelled.", EXIT_CANCELLED)
        paths = _paths(project, [i for g in groups for i in g.image_ids])
    data = {"threshold": args.threshold,
            "groups": [[{"id": i, "path": paths.get(i, "")} for i in g.image_ids] for g in groups]}
    lines = [f"{len(groups)} groups of look-alike images (cosine similarity >= {args.threshold}):"]
    for group in groups:
        lines.append(f"{group.kind} ({group.similarity:.3f}):")
        lines += [f"  {i:>7}  {paths.get(i, '')}" for i in group.image_ids]
    return CommandResult(data, "\n".join(lines))


def run_outliers(args: argparse.Namespace) -> CommandResult:
    with open_existing_project(args.project) as project:
        try:
            flagged = _run(lambda context: project_outliers(context, project, args.backbone, args.layer))
        except JobCancelled:
            return CommandResult({"cancelled": True}, "Cancelled.", EXIT_CANCELLED)
        paths = _paths(project, [o.image_id for o in flagged])
    rows = [{"id": o.image_id, "path": paths.get(o.image_id, ""), "score": round(o.score, 3),
             "reasons": list(o.reasons)} for o in flagged]
    lines = [f"{len(rows)} images look out of place:"]
    lines += [f"{r['id']:>7}  {r['score']:5.1f}  {r['path']}  ({'; '.join(r['reasons'])})" for r in rows]
    return CommandResult({"outliers": rows}, "\n".join(lines))
