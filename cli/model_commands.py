"""CLI: train, predict, models.

``train`` extracts missing features, trains, evaluates and activates a new model version;
``predict`` classifies image files that are not in the project (nothing is imported);
``models`` lists model versions with their metrics and can switch the active one.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys

from cli.cluster_commands import add_cluster_option, run_predict_on_cluster
from cli.cluster_torchrun import launched_by_torchrun, run_distributed_train
from cli.common import (
    EXIT_CANCELLED,
    CancelOnSignals,
    CliError,
    CommandResult,
    add_json_flag,
    open_existing_project,
    stderr_progress_context,
)
from engine.features.backbones import DEFAULT_BACKBONE
from engine.insight.advice import Advice, project_advice
from engine.models.methods import DEFAULT_METHOD, METHODS
from engine.models.metrics import Metrics
from engine.models.predicting import FilePredictions, predict_files
from engine.models.results import TrainResult
from engine.models.training import train_model
from engine.runtime.jobs import JobCancelled, JobContext
from engine.ship.csv_rows import PREDICTIONS_CSV_HEADER, prediction_csv_row
from storage.errors import ProjectError
from storage.modelstore import ModelInfo, list_models, set_active_model


def _method_help() -> str:
    """--method's help, from the registry: each name with the title users see in the app."""
    words = [f"{m.name}: {m.title}" + (" (default)" if m.name == DEFAULT_METHOD else "")
             + (", slow without a GPU" if m.fine_tunes else "") for m in METHODS.values()]
    return "training method; " + "; ".join(words)


def register(subparsers) -> None:
    """Adds train, predict and models."""
    train = subparsers.add_parser(
        "train", help="train a classifier on the labeled images (features are extracted first if missing)",
        description="Train a new model version on the project's labeled images, evaluate it honestly "
        "(held-out validation images, or k-fold cross-validation for small projects), predict every image "
        "and make it the active model.",
    )
    train.add_argument("project")
    train.add_argument("--method", choices=list(METHODS), default=DEFAULT_METHOD, help=_method_help())
    train.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"feature network (default {DEFAULT_BACKBONE})")
    train.add_argument("--layer", default=None, help="feature layer (default: the backbone's pooled last layer)")
    train.add_argument("--seed", type=int, default=0, help="random seed (same seed, same model)")
    add_json_flag(train)
    train.set_defaults(handler=run_train)

    predict = subparsers.add_parser(
        "predict", help="classify image files or folders that are not in the project (nothing is imported)",
        description="Classify image files or folders. With --watch FOLDER, keep watching FOLDER and predict "
        "each new image once it has stopped growing, appending path,class,probability rows to the --csv "
        "file (or printing them) until Ctrl+C or SIGTERM. CSV paths are the path you gave followed by the "
        "file's path inside it (relative stays relative, absolute stays absolute), in both modes.",
    )
    predict.add_argument("project")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (with --watch: one folder)")
    predict.add_argument("--model", type=int, metavar="VERSION", help="model version (default: the active one)")
    output = predict.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    output.add_argument("--csv", nargs="?", const=True, default=False, metavar="OUT.csv",
                        help="print CSV: path,class,probability; with --watch, OUT.csv is the file to append to "
                        "(put a bare --csv after the paths)")
    predict.add_argument("--watch", action="store_true",
                         help="watch the folder PATH for new images until Ctrl+C (camera drops)")
    predict.add_argument("--only-new", action="store_true", help="with --watch: ignore images already there")
    predict.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                         help="with --watch: seconds between looks at the folder")
    add_cluster_option(predict)
    predict.set_defaults(handler=run_predict)

    models = subparsers.add_parser("models", help="list model versions with their metrics")
    models.add_argument("project")
    models.add_argument("--activate", type=int, metavar="VERSION", help="make this version the active model")
    add_json_flag(models)
    models.set_defaults(handler=run_models)


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _advice(context: JobContext, project, result: TrainResult, seed: int) -> Advice | None:
    """How many more labels each class needs, on the features the new version trained on (None when
    Ctrl+C stops it: the new version is stored by then)."""
    try:
        return project_advice(context, project, result.method, result.backbone, result.layer,
                              result.params.get("C"), seed)
    except JobCancelled:
        return None


def run_train(args: argparse.Namespace) -> CommandResult:
    if launched_by_torchrun():  # one rank of `torchrun --nproc_per_node=N main.py train ...`
        return run_distributed_train(args)
    context = stderr_progress_context()
    with open_existing_project(args.project) as project, CancelOnSignals(context):
        try:
            result = train_model(context.subcontext(0.0, 0.9), project, method=args.method, backbone=args.backbone,
                                 layer=args.layer, seed=args.seed)
            advice = _advice(context.subcontext(0.9, 1.0), project, result, args.seed)
        except JobCancelled:  # Ctrl+C: features extracted so far are kept, the run is recorded as cancelled
            return CommandResult({"cancelled": True}, "Cancelled: no new model version was stored.", EXIT_CANCELLED)
        except ProjectError as exc:
            raise CliError(str(exc)) from exc
    m = result.metrics
    data = {"model": result.model_version, "method": result.method, "backbone": result.backbone,
            "layer": result.layer, "n_labeled": result.n_labeled, "metrics": m.to_json(),
            "advice": advice.to_json() if advice is not None else None,
            "recipe": result.params.get("recipe"), "recipe_reason": result.params.get("recipe_reason")}
    text = (
        f"Model version {result.model_version} ({result.method}, {result.backbone}/{result.layer}) is now active.\n"
        f"Accuracy {_fmt(m.accuracy)}, balanced accuracy {_fmt(m.balanced_accuracy)} "
        f"({m.evaluation}, {result.n_labeled} labeled images)."
    )
    if result.params.get("recipe"):
        reason = result.params.get("recipe_reason")
        text += f"\nRecipe: {result.params['recipe']}" + (f" ({reason})." if reason else ".")
    if advice is not None:
        text += "\n" + "\n".join(advice.sentences())
    return CommandResult(data, text)


def _csv(result: FilePredictions) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PREDICTIONS_CSV_HEADER)
    for row in result.predictions:
        writer.writerow(prediction_csv_row(row.path, row.class_name, row.probability))
    return buffer.getvalue()


def run_predict(args: argparse.Namespace) -> CommandResult:
    if args.cluster:
        return run_predict_on_cluster(args)
    if args.watch:
        from cli.ship_commands import watch_command

        if len(args.paths) != 1:
            raise CliError("--watch takes exactly one folder.")
        if args.json:
            raise CliError("--watch writes CSV rows (to --csv OUT.csv, or stdout); it has no --json output.")
        csv_out = args.csv if isinstance(args.csv, str) else None
        return watch_command(args.project, args.paths[0], csv_out, model_version=args.model,
                             only_new=args.only_new, interval=args.interval)
    if isinstance(args.csv, str):  # `predict P --csv a.jpg b.jpg`: the word after --csv was a path
        args.paths = [args.csv, *args.paths]
        args.csv = True
    with open_existing_project(args.project) as project:
        try:
            result = predict_files(stderr_progress_context(), project, args.paths, args.model)
        except ProjectError as exc:
            raise CliError(str(exc)) from exc
    for path, reason in result.failed:
        print(f"sortlab: cannot read {path}: {reason}", file=sys.stderr)
    if not result.predictions and not result.failed:
        raise CliError("No image files found in the given paths.")
    data = {
        "model": result.model_version,
        "classes": result.class_names,
        "predictions": [
            {"path": r.path, "class": r.class_name, "probability": r.probability, "margin": r.margin,
             "probabilities": dict(zip(result.class_names, r.probabilities))}
            for r in result.predictions
        ],
        "failed": [{"path": p, "reason": reason} for p, reason in result.failed],
    }
    text = "\n".join(f"{r.path}\t{r.class_name}\t{r.probability:.3f}" for r in result.predictions)
    exit_code = 1 if not result.predictions else 0
    return CommandResult(data, text, exit_code=exit_code, raw=_csv(result) if args.csv else None)


def _model_row(info: ModelInfo) -> dict:
    """A version as ``models --json`` prints it: its metrics exactly as the project stores them."""
    return {"version": info.version, "active": info.is_active, "method": info.method, "backbone": info.backbone,
            "layer": info.layer, "created_at": info.created_at.isoformat(timespec="seconds"),
            "n_labeled": info.n_labeled, "classes": info.class_names, "metrics": info.metrics}


def run_models(args: argparse.Namespace) -> CommandResult:
    with open_existing_project(args.project) as project:
        try:
            if args.activate is not None:
                set_active_model(project, args.activate)
            models = list_models(project)
        except ProjectError as exc:
            raise CliError(str(exc)) from exc
    rows = [_model_row(info) for info in models]
    if not rows:
        return CommandResult({"models": [], "active": None}, "No model versions yet: run `sortlab train` first.")
    lines = [f"{'':1} {'version':>7}  {'method':8}  {'backbone':20}  {'labeled':>7}  {'accuracy':>8}  "
             f"{'balanced':>8}  evaluation"]
    for r in rows:
        m = Metrics.from_json(r["metrics"])
        lines.append(f"{'*' if r['active'] else ' ':1} {r['version']:>7}  {r['method']:8}  {r['backbone']:20}  "
                     f"{r['n_labeled']:>7}  {_fmt(m.accuracy):>8}  {_fmt(m.balanced_accuracy):>8}  "
                     f"{m.evaluation}")
    active = next((r["version"] for r in rows if r["active"]), None)
    return CommandResult({"models": rows, "active": active}, "\n".join(lines))
