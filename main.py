"""Sortlab's composition root: run bare (or with a project path) it opens the GUI; with a
subcommand it is the command-line interface (``python main.py --help``)."""

from __future__ import annotations

import argparse
import os
import sys


def app_version() -> str:
    try:
        from importlib.metadata import version

        return version("sortlab")
    except Exception:
        return "0+source"


def build_parser() -> argparse.ArgumentParser:
    from cli import feature_commands, model_commands, project_commands, ship_commands

    parser = argparse.ArgumentParser(
        prog="sortlab",
        description="Label your own images and train an image classifier, offline. "
        "Run without arguments to open the app.",
    )
    parser.add_argument("--version", action="version", version=f"Sortlab {app_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (project_commands, feature_commands, model_commands, ship_commands):
        module.register(subparsers)
    return parser


def run_cli(argv: list[str]) -> int:
    from cli.common import CliError, emit

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        result = args.handler(args)
    except CliError as exc:
        print(f"sortlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sortlab: interrupted; everything committed so far is saved.", file=sys.stderr)
        return 130
    emit(result, getattr(args, "json", False))
    return result.exit_code


def run_gui(argv: list[str]) -> int:
    from gui.app import run_app

    return run_app(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (len(argv) == 1 and argv[0].endswith(".sortlab") and os.path.exists(argv[0])):
        return run_gui(argv)
    return run_cli(argv)


if __name__ == "__main__":
    sys.exit(main())
