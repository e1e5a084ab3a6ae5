"""CLI: export (a verified model bundle), dataset-export (labeled images + CSV), watch (camera drops).

``watch PROJECT FOLDER --csv OUT.csv`` predicts images as they appear in FOLDER and appends
``path,class,probability`` rows to OUT.csv until Ctrl+C (or SIGTERM), which stops cleanly.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from cli.common import CliError, CommandResult, add_json_flag, open_existing_project, stderr_progress_context
from engine.dataset_export import export_dataset
from engine.export import ExportVerificationFailed, export_bundle
from engine.jobs import JobCancelled, JobContext
from engine.watch import FailedPrediction, PredictBatchResult, PredictedRow, watch_folder
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
    export.add_argument("out_dir", metavar="OUT_DIR", help="new folder for the bundle")
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
        "watch", help="predict images as they appear in a folder, appending to a CSV (Ctrl+C stops)",
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
    with open_existing_project(args.project) as project:
        try:
            report = export_bundle(context, project, args.out_dir, model_version=args.model, make_zip=args.zip)
        except ExportVerificationFailed as exc:
            print(f"sortlab: error: {exc}", file=sys.stderr)
            data = {"error": str(exc), "failed_path": str(exc.failed_path), "verification": exc.verification.to_dict()}
            return CommandResult(data, "", exit_code=EXIT_EXPORT_CHECK_FAILED)
        except JobCancelled:
            raise CliError("Export cancelled; nothing was written.") from None
        except ProjectError as exc:
            raise CliError(str(exc)) from exc
    text = (f"Exported model version {report.model_version} ({', '.join(report.classes)}) to {report.path}\n"
            f"{report.verification.summary()}.")
    return CommandResult(report.to_dict(), text)


def run_dataset_export(args: argparse.Namespace) -> CommandResult:
    context = stderr_progress_context()
    with open_existing_project(args.project) as project:
        try:
            report = export_dataset(context, project, args.out_dir, include_unlabeled=args.unlabeled)
        except ProjectError as exc:
            raise CliError(str(exc)) from exc
    counts = ", ".join(f"{name} {count}" for name, count in report.per_class.items())
    text = f"Exported {report.images} images to {report.out_dir} ({counts}); list in dataset.csv."
    data = {"out_dir": report.out_dir, "images": report.images, "per_class": report.per_class,
            "folders": report.folders, "prediction_model": report.prediction_model}
    return CommandResult(data, text)


def sortlab_predict_function(project, model_version: int):
    """A watch predict function backed by Sortlab's own predict_files (same numbers as `predict --csv`)."""
    from engine.predicting import predict_files

    def predict(paths):
        result = predict_files(JobContext(), project, list(paths), model_version=model_version)
        return PredictBatchResult(
            rows=[PredictedRow(p.path, p.class_name, p.probability) for p in result.predictions],
            failed=[FailedPrediction(path, reason) for path, reason in result.failed],
        )

    return predict


def run_watch(args: argparse.Namespace) -> CommandResult:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise CliError(f"{args.folder} is not a folder.")
    stop = threading.Event()
    previous_term = None
    if threading.current_thread() is threading.main_thread():
        previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    def on_rows(rows) -> None:
        for row in rows:
            print(f"{row.path}: {row.class_name} ({row.probability * 100:.1f}%)", file=sys.stderr)

    def on_failed(failure) -> None:
        print(f"{failure.path}: skipped: {failure.reason}", file=sys.stderr)

    with open_existing_project(args.project) as project:
        try:
            info = get_model(project, args.model)
        except ProjectError as exc:
            raise CliError(str(exc)) from exc
        print(f"Watching {folder} with model version {info.version}; appending to {args.csv}. "
              "Press Ctrl+C to stop.", file=sys.stderr)
        predicted = [0]

        def counting_rows(rows) -> None:
            predicted[0] += len(rows)
            on_rows(rows)

        interrupted = False
        try:
            watch_folder(folder, args.csv, sortlab_predict_function(project, info.version),
                         poll_seconds=args.interval, only_new=args.only_new, stop_event=stop,
                         on_rows=counting_rows, on_failed=on_failed)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if previous_term is not None:
                signal.signal(signal.SIGTERM, previous_term)
    how = "Interrupted" if interrupted else "Stopped"
    text = f"{how}: {predicted[0]} images predicted; {args.csv} is complete up to the last one."
    return CommandResult({"predicted": predicted[0], "csv": args.csv, "model_version": info.version}, text)
