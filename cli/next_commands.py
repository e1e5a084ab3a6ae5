"""CLI: next (which images to label next, and why) and images (every image with its label and prediction).

Together with ``sortlab label`` they script the labeling loop from outside: ask, label by id, retrain.
"""

from __future__ import annotations

import argparse

from cli.common import CliError, CommandResult, add_json_flag, open_existing_project, stderr_progress_context
from engine.curation.next_batch import DEFAULT_COUNT, next_images
from engine.features.backbones import BackboneUnavailable
from engine.runtime.jobs import JobCancelled
from storage.catalog import list_classes
from storage.images import list_images
from storage.modelstore import predictions

EXIT_CANCELLED = 130


def register(subparsers) -> None:
    """Adds next and images."""
    upcoming = subparsers.add_parser(
        "next", help="the images most worth labeling next, with the reason for each",
        description="Choose the unlabeled images whose labels will help the model most: without a model, "
        "typical images of groups that have no label yet; later, images the model hesitates on, spread "
        "over the collection. Extracts missing features first.",
    )
    upcoming.add_argument("project", help="project file (.sortlab)")
    upcoming.add_argument("--count", type=int, default=DEFAULT_COUNT, metavar="N",
                          help=f"how many images (default {DEFAULT_COUNT})")
    upcoming.add_argument("--backbone", default=None, metavar="NAME",
                          help="feature network (default: the active model's, else Sortlab's default)")
    add_json_flag(upcoming)
    upcoming.set_defaults(handler=run_next)

    images = subparsers.add_parser(
        "images", help="list images with their label and the model's prediction",
        description="Every image with its label and the active model's prediction. When that model was "
        "trained on cached features (logreg, svm), a labeled image's prediction comes from a model that did "
        "not train on it (out-of-fold), so a disagreement points at a possible labeling mistake.",
    )
    images.add_argument("project", help="project file (.sortlab)")
    which = images.add_mutually_exclusive_group()
    which.add_argument("--unlabeled", action="store_true", help="only images without a label")
    which.add_argument("--labeled", action="store_true", help="only labeled images")
    add_json_flag(images)
    images.set_defaults(handler=run_images)


def run_next(args: argparse.Namespace) -> CommandResult:
    if args.count < 1:
        raise CliError("--count must be at least 1.")
    with open_existing_project(args.project) as project:
        try:
            batch = next_images(stderr_progress_context(), project, args.count, backbone=args.backbone)
        except JobCancelled:
            return CommandResult({"cancelled": True}, "Cancelled; finished feature batches are saved.", EXIT_CANCELLED)
        except (BackboneUnavailable, ValueError) as exc:
            raise CliError(str(exc)) from exc
    lines = [f"Label these next ({batch.strategy.value}):"] if batch.images else ["Every image is labeled."]
    lines += [f"  {image.image_id:>7}  {image.path}  ({image.reason})" for image in batch.images]
    return CommandResult(batch.to_dict(), "\n".join(lines))


def run_images(args: argparse.Namespace) -> CommandResult:
    with open_existing_project(args.project) as project:
        class_names = {info.id: info.name for info in list_classes(project)}
        predicted = predictions(project)
        infos = list_images(project)
    rows = []
    for info in infos:
        if (args.labeled and info.class_id is None) or (args.unlabeled and info.class_id is not None):
            continue
        prediction = predicted.get(info.id)
        rows.append({
            "id": info.id, "path": info.original_path,
            "label": None if info.class_id is None else class_names.get(info.class_id),
            "prediction": None if prediction is None else prediction.class_name,
            "probability": None if prediction is None else round(prediction.probability, 4),
        })
    lines = [f"{row['id']:>7}  {row['label'] or '-':<15} {_prediction_words(row):<22} {row['path']}" for row in rows]
    return CommandResult({"images": rows}, "\n".join(lines) if lines else "No images.")


def _prediction_words(row: dict) -> str:
    if row["prediction"] is None:
        return "-"
    return f"{row['prediction']} {row['probability']:.2f}"
