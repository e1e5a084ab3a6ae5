"""Shared plumbing for CLI subcommands: output, progress on stderr, and clean user errors."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.runtime.jobs import JobContext, PartialCallback
from storage.backends import is_database_url
from storage.errors import ProjectError
from storage.project import Project, open_project


EXIT_CANCELLED = 130  # the shell's status for a command stopped by Ctrl+C


class CliError(Exception):
    """A user error: printed as one line, exit status 2, never a traceback."""


@dataclass
class CommandResult:
    data: dict[str, Any] | list[Any]
    text: str = ""
    exit_code: int = 0
    # Printed instead of text/JSON when the command writes its own format (e.g. --csv).
    raw: str | None = field(default=None)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def open_existing_project(path: str) -> Project:
    """Open a project file, or a team project named by a database URL (postgresql+psycopg://...)."""
    if is_database_url(path):
        try:
            return open_project(path)
        except ProjectError as exc:
            raise CliError(str(exc)) from exc
    project_path = Path(path)
    if not project_path.exists():
        raise CliError(f"Project {path} does not exist.")
    try:
        return open_project(project_path)
    except ProjectError as exc:
        raise CliError(str(exc)) from exc


def open_or_create_project(path: str) -> Project:
    if is_database_url(path):
        try:
            return open_project(path, create=True)
        except ProjectError as exc:
            raise CliError(str(exc)) from exc
    project_path = Path(path)
    if not project_path.exists() and project_path.suffix != ".sortlab":
        raise CliError(f"New project files must end in .sortlab: {path}")
    try:
        return open_project(project_path, create=True)
    except ProjectError as exc:
        raise CliError(str(exc)) from exc


def stderr_progress_context(quiet: bool = False, on_partial: PartialCallback | None = None) -> JobContext:
    """A job context that draws a one-line progress indicator on stderr (at most ~10 times a second)
    and hands the job's partial results to ``on_partial``."""
    last_print = [0.0]
    interactive = sys.stderr.isatty()

    def on_progress(fraction: float, message: str) -> None:
        if quiet:
            return
        now = time.monotonic()
        if fraction < 1.0 and now - last_print[0] < (0.1 if interactive else 2.0):
            return
        last_print[0] = now
        line = f"[{fraction * 100:5.1f}%] {message}"
        if interactive:
            sys.stderr.write("\r" + line[:100].ljust(100) + ("\n" if fraction >= 1.0 else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    return JobContext(on_progress, on_partial)


class CancelOnSignals:
    """Turns Ctrl+C (SIGINT), and SIGTERM when asked, into a cancel of a long command's job context:
    the job stops at its next safe point (after the batch in progress) and ends with JobCancelled, so
    what it wrote is complete. A second Ctrl+C interrupts at once. ``received`` names the signal that
    stopped the job. Outside the main thread (where signals cannot be caught) it does nothing."""

    def __init__(self, context: JobContext, signals: tuple[signal.Signals, ...] = (signal.SIGINT,)):
        self.context = context
        self.signals = signals
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.context.cancelled and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        self.context.cancel()

    def __enter__(self) -> CancelOnSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def emit(result: CommandResult, as_json: bool) -> None:
    if result.raw is not None:
        sys.stdout.write(result.raw)
    elif as_json:
        sys.stdout.write(json.dumps(result.data, ensure_ascii=False, default=str) + "\n")
    elif result.text:
        sys.stdout.write(result.text.rstrip("\n") + "\n")
    sys.stdout.flush()


Handler = Callable[[argparse.Namespace], CommandResult]
