"""CLI: ``predict ... --cluster`` and ``extract ... --cluster`` (run on a Dask cluster).

``--cluster tcp://HOST:8786`` connects to a running Dask scheduler; ``--cluster local[:N]`` starts a
LocalCluster of N single-threaded worker processes on this machine. Predictions stream into the CSV
in input order as the workers return them; Ctrl+C cancels the work on the cluster (exit status 130)
and leaves the CSV complete up to its last row. Needs the optional extra: pip install "sortlab[cluster]".
"""

from __future__ import annotations

import argparse
import csv
import sys
from contextlib import ExitStack

from cli.common import (
    EXIT_CANCELLED,
    CancelOnSignals,
    CliError,
    CommandResult,
    open_existing_project,
    stderr_progress_context,
)
from engine.runtime.jobs import JobCancelled
from engine.ship.csv_rows import PREDICTIONS_CSV_HEADER, prediction_csv_row
from storage.errors import ProjectError

CLUSTER_HELP = ("run on a Dask cluster: tcp://HOST:8786 (a running scheduler) or local[:N] (N worker processes "
                "on this machine); needs pip install \"sortlab[cluster]\"")


def add_cluster_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", metavar="ADDRESS", default=None, help=CLUSTER_HELP)


def _connect(text: str):
    from engine.cluster.session import ClusterConnection, ClusterError, ClusterSpec

    try:
        spec = ClusterSpec.parse(text)
        print(f"Connecting to {spec.describe()}...", file=sys.stderr, flush=True)
        return ClusterConnection(spec)
    except ClusterError as exc:
        raise CliError(str(exc)) from exc


def _require_extra() -> None:
    """One line instead of an ImportError where the cluster extra is not installed."""
    from engine.cluster.session import ClusterError, require_distributed

    try:
        require_distributed()
    except ClusterError as exc:
        raise CliError(str(exc)) from exc


def run_predict_on_cluster(args: argparse.Namespace) -> CommandResult:
    """``predict PROJECT PATH... --cluster ADDRESS`` with ``--csv OUT.csv`` (a file), a bare ``--csv``
    (CSV on stdout), ``--json`` or plain text."""
    _require_extra()
    from engine.cluster.predict import predict_files_on_cluster
    from engine.cluster.session import ClusterError

    if args.watch:
        raise CliError("--watch runs on this machine; it has no --cluster.")
    to_file = isinstance(args.csv, str)
    if to_file and not args.csv.lower().endswith(".csv"):  # never overwrite a picture typed after --csv
        raise CliError(f"With --cluster, --csv names the file to write (OUT.csv), not {args.csv}.")
    writer_holder: list = []
    collected: list = []

    def on_rows(rows, failed) -> None:
        for path, reason in failed:
            print(f"sortlab: cannot read {path}: {reason}", file=sys.stderr)
        if args.csv:
            stream, writer = writer_holder
            writer.writerows(prediction_csv_row(r.path, r.class_name, r.probability) for r in rows)
            stream.flush()
        elif args.json:
            collected.extend(rows)
        else:
            for r in rows:
                print(f"{r.path}\t{r.class_name}\t{r.probability:.3f}", flush=True)

    context = stderr_progress_context()
    cancelled = False
    with ExitStack() as stack:
        project = stack.enter_context(open_existing_project(args.project))
        connection = stack.enter_context(_connect(args.cluster))
        if args.csv:  # opened once the project and the cluster are there: a failed start keeps the old file
            stream = stack.enter_context(open(args.csv, "w", encoding="utf-8", newline="")) if to_file else sys.stdout
            writer_holder[:] = [stream, csv.writer(stream, lineterminator="\n")]
            writer_holder[1].writerow(PREDICTIONS_CSV_HEADER)
        stack.enter_context(CancelOnSignals(context))
        try:
            report = predict_files_on_cluster(context, project, args.paths, connection, on_rows, args.model)
        except JobCancelled:
            cancelled = True
        except (ClusterError, ProjectError) as exc:
            raise CliError(str(exc)) from exc
    target = args.csv if to_file else "standard output"
    if cancelled:
        text = f"Cancelled: the cluster work was stopped; {target} is complete up to its last row."
        if to_file:
            return CommandResult({"cancelled": True, "csv": args.csv}, text, EXIT_CANCELLED)
        print(text, file=sys.stderr)  # stdout carries the rows
        return CommandResult({"cancelled": True}, "", EXIT_CANCELLED, raw="")
    if report.files == 0:
        raise CliError("No image files found in the given paths.")
    data = {"model": report.model_version, "classes": report.class_names, "predicted": report.predicted,
            "failed": [{"path": p, "reason": reason} for p, reason in report.failed],
            "workers": len(report.workers), "csv": args.csv if to_file else None}
    exit_code = 1 if not report.predicted else 0
    summary = (f"Predicted {report.predicted} images ({len(report.failed)} unreadable) with model version "
               f"{report.model_version} on {len(report.workers)} workers")
    if to_file:
        return CommandResult(data, f"{summary}; rows in {args.csv}.", exit_code)
    print(summary + ".", file=sys.stderr)
    if args.json:
        data["predictions"] = [{"path": r.path, "class": r.class_name, "probability": r.probability,
                                "margin": r.margin, "probabilities": dict(zip(report.class_names, r.probabilities))}
                               for r in collected]
        return CommandResult(data, "", exit_code)
    return CommandResult(data, "", exit_code, raw="")


def run_extract_on_cluster(args: argparse.Namespace, backbone: str, layer: str) -> CommandResult:
    """``extract PROJECT --cluster ADDRESS``: workers compute vectors, this machine stores them."""
    _require_extra()
    from engine.cluster.extract import ensure_features_on_cluster
    from engine.cluster.session import ClusterError

    context = stderr_progress_context()
    with open_existing_project(args.project) as project, _connect(args.cluster) as connection, \
            CancelOnSignals(context):
        try:
            info = ensure_features_on_cluster(context, project, connection, backbone, layer)
        except JobCancelled:
            return CommandResult({"cancelled": True}, "Cancelled; finished chunks are saved.", EXIT_CANCELLED)
        except (ClusterError, ProjectError) as exc:
            raise CliError(str(exc)) from exc
    data = info.to_dict()
    text = (f"{info.backbone} / {info.layer}: {info.extracted} images extracted, {info.cached} already cached "
            f"({info.dim} values each) in {info.seconds:.1f} s on {info.device}")
    for image_id, reason in info.failed:
        text += f"\n  image {image_id}: {reason}"
    return CommandResult(data, text)
