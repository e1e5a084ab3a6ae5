"""CLI: explain, where the model looks in one image (a class activation map).

``sortlab explain PROJECT IMAGE [--class NAME] [--out heat.png] [--json]`` prints the class explained,
its probability and the hottest point as fractions of the image's width and height; ``--out`` writes
the image with the heat map blended over it. IMAGE is an image file, or the id of a project image.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cli.common import CliError, CommandResult, add_json_flag, open_existing_project, stderr_progress_context
from engine.insight.explain import ImageRef, explain_image, open_subject
from engine.insight.heatmap import blend_heat
from storage.errors import ProjectError


def register(subparsers) -> None:
    """Adds explain."""
    explain = subparsers.add_parser(
        "explain", help="show where the model looks in an image (heat map of the evidence for a class)",
        description="Compute a class activation map of IMAGE under the active model (or --model VERSION): "
        "which regions drove the prediction of a class (the predicted one unless --class NAME). Prints the "
        "class, its probability and the hottest point (x, y as fractions of the image's width and height).",
    )
    explain.add_argument("project")
    explain.add_argument("image", metavar="IMAGE", help="an image file, or the id of an image in the project")
    explain.add_argument("--class", dest="class_name", metavar="NAME",
                         help="class to explain (default: the predicted one)")
    explain.add_argument("--model", type=int, metavar="VERSION", help="model version (default: the active one)")
    explain.add_argument("--out", metavar="HEAT.png", help="write the image with the heat map blended over it")
    add_json_flag(explain)
    explain.set_defaults(handler=run_explain)


def image_ref(text: str) -> ImageRef:
    """A file when one exists at ``text``, else an image id when ``text`` is a number, else the path
    (which then fails with the reader's reason)."""
    if os.path.exists(text) or not text.isdigit():
        return text
    return int(text)


def run_explain(args: argparse.Namespace) -> CommandResult:
    with open_existing_project(args.project) as project:
        try:
            picture = open_subject(project, image_ref(args.image))
            explanation = explain_image(stderr_progress_context(quiet=True), project, picture,
                                        args.class_name, args.model)
        except ProjectError as exc:
            raise CliError(str(exc)) from exc
    data = explanation.to_json()
    if args.out:
        out = Path(args.out)
        try:
            blend_heat(picture, explanation).save(out)
        except (ValueError, KeyError) as exc:  # Pillow: no format for the file's extension
            raise CliError(f"Cannot write {out}: {exc}") from exc
        data["out"] = str(out)
    x, y = explanation.peak
    text = (f"{explanation.class_name} ({explanation.probability:.1%}): the model looks most at "
            f"x={x:.2f}, y={y:.2f} of the image" + (f"; heat map written to {args.out}" if args.out else ""))
    return CommandResult(data, text)
