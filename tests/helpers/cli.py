"""Run Sortlab's CLI in-process from a test and capture what it printed."""

from __future__ import annotations

import json

import main


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli_json(capsys, *args):
    code, out, err = cli(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)
