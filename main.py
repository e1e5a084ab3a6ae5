"""Sortlab's composition root: run bare (or with a project path) it opens the GUI; with a
subcommand it is the command-line interface (``python main.py --help``)."""

from __future__ import annotations

import argparse
import errno
import os
import sys


class SortlabArgumentParser(argparse.ArgumentParser):
    """Usage errors as one line ``sortlab: error: ...`` (exit 2) instead of argparse's usage block.
    Sub-command parsers inherit this class (argparse creates them with the parent's type)."""

    def error(self, message: str):
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = f"{command}: " if command else ""
        hint = f"sortlab {command} --help" if command else "sortlab --help"
        self.exit(2, f"sortlab: error: {where}{message} (see `{hint}`)\n")


def os_error_line(exc: OSError) -> str:
    """One line for a failed file operation: the disk-full sentence, or 'reason: path'."""
    from engine.runtime.jobs import user_message

    if getattr(exc, "errno", None) == errno.ENOSPC:
        return user_message(exc)
    reason = exc.strerror or str(exc).strip() or exc.__class__.__name__
    names = [name for name in (exc.filename, exc.filename2) if name]
    return f"{reason}: {' -> '.join(str(name) for name in names)}" if names else reason


def build_parser() -> argparse.ArgumentParser:
    from cli import (
        backup_commands, check_commands, explain_commands, feature_commands, model_commands, next_commands,
        project_commands, review_commands, ship_commands, team_commands,
    )
    from storage.project import app_version

    parser = SortlabArgumentParser(
        prog="sortlab",
        description="Label your own images and train an image classifier, offline. "
        "Run without arguments to open the app.",
    )
    parser.add_argument("--version", action="version", version=f"Sortlab {app_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (project_commands, feature_commands, model_commands, ship_commands, review_commands, next_commands,
                   explain_commands, check_commands, team_commands, backup_commands):
        module.register(subparsers)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"


def run_cli(argv: list[str]) -> int:
    """Run one CLI command. User-fixable failures (bad arguments, project errors, OSError such as a
    full disk or a read-only folder) end in one line ``sortlab: error: ...`` and a non-zero status."""
    from cli.common import CliError, emit
    from storage.errors import ProjectError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        result = args.handler(args)
        emit(result, getattr(args, "json", False))
    except (CliError, ProjectError) as exc:
        print(f"sortlab: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only folder, permission denied: the user can fix these
        print(f"sortlab: error: {_one_line(os_error_line(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sortlab: interrupted; everything committed so far is saved.", file=sys.stderr)
        return 130
    return result.exit_code


def run_gui(argv: list[str]) -> int:
    from gui.app import run_app

    return run_app(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (len(argv) == 1 and argv[0].endswith(".sortlab") and os.path.exists(argv[0])) or (
            len(argv) == 1 and argv[0].startswith(("postgresql://", "postgresql+psycopg://"))):  # a team project
        return run_gui(argv)
    return run_cli(argv)


if __name__ == "__main__":
    sys.exit(main())
