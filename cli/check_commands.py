"""CLI: ``sortlab check PROJECT [--json] [--integrity] [--strip-foreign]``.

Reports a project file's integrity (SQLite's page check), schema objects Sortlab did not make,
rows pointing at rows that do not exist, stored items Sortlab will not load, and what
``--strip-foreign`` would fix; with ``--strip-foreign`` it backs the file up first, then fixes it.
Exit status 0 when the project is clean (or was made clean), 1 when problems remain.
"""

from __future__ import annotations

import argparse

from cli.common import CliError, CommandResult, add_json_flag
from storage.backends import is_database_url
from storage.trust_check import CheckReport, check_project, strip_foreign


def register(subparsers) -> None:
    check = subparsers.add_parser(
        "check", help="check a project file someone sent you before opening it",
        description="Check a project file: damaged pages, database objects Sortlab did not make (triggers, "
        "views, tables that could change your data), rows pointing at nothing, and stored images or models "
        "too large or not matching their description. Nothing is changed unless --strip-foreign is given.",
    )
    check.add_argument("project", help="project file (.sortlab)")
    check.add_argument("--integrity", action="store_true",
                       help="run SQLite's full integrity_check and read every stored picture's header (slower)")
    check.add_argument("--strip-foreign", action="store_true",
                       help="back the file up, then drop what Sortlab did not make and delete orphan rows")
    add_json_flag(check)
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> CommandResult:
    if is_database_url(args.project):
        raise CliError("check works on project files; a team project's database is checked by its server.")
    if args.strip_foreign:
        report = strip_foreign(args.project)
    else:
        report = check_project(args.project, integrity=args.integrity)
    return CommandResult(report.to_json(), _text(report), 0 if report.clean else 1)


def _section(title: str, lines: list[str]) -> list[str]:
    return [f"{title}:", *(f"  {line}" for line in lines)] if lines else []


def _text(report: CheckReport) -> str:
    lines = [f"{report.path} (format {report.revision or 'unknown'})"]
    lines.append(f"integrity ({report.integrity_check}): " + ("ok" if not report.integrity else "DAMAGED"))
    lines += [f"  {problem}" for problem in report.integrity[:10]]
    lines.append("schema: " + ("as Sortlab made it" if not report.schema else f"{len(report.schema)} problem(s)"))
    lines += [f"  {item['description']}" for item in report.schema]
    lines.append("orphan rows: " + (", ".join(f"{n} in {t}" for t, n in report.orphans.items()) or "none"))
    lines.append("items Sortlab will not load: " + (str(len(report.refused)) if report.refused else "none"))
    lines += [f"  {item}" for item in report.refused[:20]]
    if len(report.refused) > 20:
        lines.append(f"  ... and {len(report.refused) - 20} more (--json lists all)")
    lines += _section("not checked", report.not_checked)
    lines += _section("fixed", report.fixed)
    if report.backup:
        lines.append(f"backup of the file as it was: {report.backup}")
    if not report.fixed:
        lines += _section("--strip-foreign would fix", report.would_fix)
    lines += _section("cannot be fixed here", report.cannot_fix)
    lines.append("clean" if report.clean else "problems found")
    return "\n".join(lines)
