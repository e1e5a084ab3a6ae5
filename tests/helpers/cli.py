"""Run Sortlab's CLI in-process from a test and capture what that one command printed."""

from __future__ import annotations

import json

from main import run_cli


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what earlier steps of the test printed
    code = run_cli([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli_json(capsys, *args):
    code, out, err = cli(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)
