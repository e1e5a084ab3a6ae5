"""CLI: export (a verified model bundle), dataset-export (labeled images + CSV), watch (camera drops).

``predict PROJECT --watch FOLDER --csv OUT.csv`` (alias: ``watch PROJECT FOLDER --csv OUT.csv``)
predicts images as they appear in FOLDER and appends ``path,class,probability`` rows to OUT.csv
until Ctrl+C (or SIGTERM), which cancels the watch job cleanly after the batch in progress.
Ctrl+C during export or dataset-export likewise cancels the job (exit status 130).
"""

from __future__ import annotations

import argparse
import signal
import sys
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
from engine.runtime.jobs import JobCancelled, JobContext
from engine.ship.dataset_export import DatasetExportReport, export_dataset
from engine.ship.export import ExportVerificationFailed, export_bundle
from engine.ship.watch import (
    FailedPrediction,
    PredictBatchResult,
    PredictedRow,
    WatchBatch,
    WatchReport,
    watch_folder,
)
from storage.errors import ProjectError
from storage.modelstore import get_model

EXIT_EXPORT_CHECK_FAILED = 3


def register(subparsers) -> None:
    """Adds export, dataset-export and watch."""
    export = subparsers.add_parser(
        "export", help="export a trained model as a standalone bundle (ONNX + predict.py), checked after export",
        description="Write model.onnx, model.json, predict.py and README.md to a new folder. The exported network "
        "is run on validation images and compared with Sortlab's own predictions; below 99.5%% agreement the "
        "export fails (exit status 3) and the folder is renamed NAME-FAILED.",
    )
    export.add_argument("project")
    export.add_argument("out_dir", metavar="OUT_DIR",
                        help="new folder for the bundle (missing parent folders are made)")
    export.add_argument("--model", type=int, metavar="VERSION", help="model version (default: the active one)")
    export.add_argument("--zip", action="store_true", help="write OUT_DIR.zip instead of a folder")
    add_json_flag(export)
    export.set_defaults(handler=run_export)

    dataset = subparsers.add_parser(
        "dataset-export", help="export labeled images as a folder per class plus dataset.csv",
        description="Copy the labeled images into OUT_DIR/<class>/ and write OUT_DIR/dataset.csv with the columns "
        "file,label,source,split,prediction,probability (prediction of the active model, when there is one).",
    )
    dataset.add_argument("project")
    dataset.add_argument("out_dir", metavar="OUT_DIR", help="new (or empty) folder")
    dataset.add_argument("--unlabeled", action="store_true", help="also export unlabeled images (folder 'unlabeled')")
    add_json_flag(dataset)
    dataset.set_defaults(handler=run_dataset_export)

    watch = subparsers.add_parser(
        "watch", help="same as `predict PROJECT --watch FOLDER --csv OUT.csv`: predict images as they appear",
        description="Poll FOLDER (and its sub-folders) about once a second; each new image is predicted once its "
        "size has stopped changing, and a row path,class,probability is appended to the CSV at once. Files "
        "already in the CSV are skipped, so a restarted watch resumes. Ctrl+C stops cleanly.",
    )
    watch.add_argument("project")
    watch.add_argument("folder", metavar="FOLDER")
    watch.add_argument("--csv", required=True, metavar="OUT.csv", help="CSV file to append predictions to")
    watch.add_argument("--model", type=int, metavar="VERSION", help="model version (default: the active one)")
    watch.add_argument("--only-new", action="store_true", help="ignore images already in FOLDER at start")
    watch.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="seconds between polls")
    watch.set_defaults(handler=run_watch)


def run_export(args: argparse.Namespace) -> CommandResult:
    context = stderr_progress_context()
    with open_existing_project(args.project) as project, CancelOnSignals(context):
        try:
            report = export_bundle(context, project, args.out_dir, model_version=args.model, make_zip=args.zip)
        except ExportVerificationFailed as exc:
            print(f"sortlab: error: {exc}", file=sys.stderr)
            data = {"error": str(exc), "failed_path": str(exc.failed_path), "verification": exc.verification.to_dict()}
            return CommandResult(data, "", exit_code=EXIT_EXPORT_CHECK_FAILED)
        except JobCancelled:
            return CommandResult({"cancelled": True}, "Export cancelled; nothing was written.",
                                 exit_code=EXIT_CANCELLED)
        except ProjectError as exc:
            raise CliError(str(exc)) from exc
    text = (f"Exported model version {report.model_version} ({', '.join(report.classes)}) to {report.path}\n"
            f"{report.verification.summary()}.")
    if report.created_folder is not None:
        text = f"Created the folder {report.created_folder} (it did not exist).\n{text}"
    return CommandResult(report.to_dict(), text)


def run_dataset_export(args: argparse.Namespace) -> CommandResult:
    written_so_far: list[DatasetExportReport] = []  # a cancelled export's partial result
    context = stderr_progress_context(on_partial=written_so_far.append)
    with open_existing_project(args.project) as project, CancelOnSignals(context):
        try:
            report = export_dataset(context, project, args.out_dir, include_unlabeled=args.unlabeled)
        except JobCancelled:
            report, cancelled = written_so_far[-1], True
        except ProjectError as exc:
            raise CliError(str(exc)) from exc
        else:
            cancelled = False
    counts = ", ".join(f"{name} {count}" for name, count in report.per_class.items())
    text = f"Exported {report.images} images to {report.out_dir} ({counts}); list in dataset.csv."
    if cancelled:
        text = f"Cancelled: {text}"
    data = {"out_dir": report.out_dir, "images": report.images, "per_class": report.per_class,
            "folders": report.folders, "prediction_model": report.prediction_model, "cancelled": cancelled}
    return CommandResult(data, text, exit_code=EXIT_CANCELLED if cancelled else 0)


def sortlab_predict_function(project, model_version: int):
    """A watch predict function backed by Sortlab's own predict_files (same numbers as `predict --csv`)."""
    from engine.models.predicting import predict_files

    def predict(paths):
        result = predict_files(JobContext(), project, list(paths), model_version=model_version)
        return PredictBatchResult(
            rows=[PredictedRow(p.path, p.class_name, p.probability) for p in result.predictions],
            failed=[FailedPrediction(path, reason) for path, reason in result.failed],
        )

    return predict


def run_watch(args: argparse.Namespace) -> CommandResult:
    """``watch PROJECT FOLDER --csv OUT`` (the older spelling of ``predict PROJECT --watch FOLDER``)."""
    return watch_command(args.project, args.folder, args.csv, model_version=args.model, only_new=args.only_new,
                         interval=args.interval)


def watch_command(project_path: str, folder_arg: str, csv_out: str | None, *, model_version: int | None = None,
                  only_new: bool = False, interval: float = 1.0) -> CommandResult:
    """Watch FOLDER and append predictions to ``csv_out`` (or print CSV on stdout when it is None)
    until Ctrl+C or SIGTERM cancels the watch job after the batch in progress. Paths are written as
    ``predict --csv`` writes them (see engine.ship.watch)."""
    folder = Path(folder_arg)
    if not folder.is_dir():
        raise CliError(f"{folder_arg} is not a folder.")
    if interval <= 0:
        raise CliError("--interval must be a positive number of seconds.")
    seen = WatchReport()

    def show(batch: WatchBatch) -> None:
        for row in batch.rows:
            print(f"{row.path}: {row.class_name} ({row.probability * 100:.1f}%)", file=sys.stderr)
        for failure in batch.failed:
            print(f"sortlab: cannot read {failure.path}: {failure.reason}", file=sys.stderr)
        seen.predicted += len(batch.rows)
        seen.failed.extend(batch.failed)

    context = JobContext(on_partial=show)
    target = csv_out if csv_out is not None else "standard output"
    with open_existing_project(project_path) as project:
        try:
            info = get_model(project, model_version)
        except ProjectError as exc:
            raise CliError(str(exc)) from exc
        with CancelOnSignals(context, (signal.SIGINT, signal.SIGTERM)) as stopper:
            print(f"Watching {folder_arg} with model version {info.version}; appending to {target}. "
                  "Press Ctrl+C to stop.", file=sys.stderr, flush=True)
            try:  # the watch job runs until a signal cancels it
                watch_folder(context, folder, csv_out, sortlab_predict_function(project, info.version),
                             poll_seconds=interval, only_new=only_new)
            except JobCancelled:
                pass
    how = {"SIGINT": "Interrupted (Ctrl+C)", "SIGTERM": "Stopped (SIGTERM)"}.get(stopper.received, "Stopped")
    text = (f"{how}: {seen.predicted} images predicted, {len(seen.failed)} unreadable; "
            f"{target} is complete up to the last one.")
    data = {"predicted": seen.predicted, "failed": len(seen.failed), "csv": csv_out,
            "model_version": info.version, "stopped_by": stopper.received}
    if csv_out is None:  # stdout carries the CSV: the summary goes to stderr
        print(text, file=sys.stderr)
        return CommandResult(data, "", raw="")
    return CommandResult(data, text)
