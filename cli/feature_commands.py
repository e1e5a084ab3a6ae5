"""CLI: extract (compute and cache deep features) and backbones (which networks and layers exist)."""

from __future__ import annotations

import argparse

from cli.cluster_commands import add_cluster_option, run_extract_on_cluster
from cli.common import (
    EXIT_CANCELLED,
    CancelOnSignals,
    CliError,
    CommandResult,
    add_json_flag,
    open_existing_project,
    stderr_progress_context,
)
from engine.features.backbones import DEFAULT_BACKBONE, BackboneUnavailable, get_backbone, list_backbones
from engine.features.extraction import device_name, ensure_features
from engine.runtime.jobs import JobCancelled


def register(subparsers) -> None:
    """Adds extract and backbones."""
    extract = subparsers.add_parser(
        "extract", help="compute and cache image features for a project (only images that lack them)",
        description="Compute deep features of every image that has none yet for the chosen network "
        "and layer. Interrupt it any time: the next run goes on where it stopped.",
    )
    extract.add_argument("project", help="project file (.sortlab)")
    extract.add_argument("--backbone", default=DEFAULT_BACKBONE, metavar="NAME",
                         help=f"network (default {DEFAULT_BACKBONE}; see 'sortlab backbones')")
    extract.add_argument("--layer", default=None, metavar="NAME",
                         help="feature layer (default: the network's pooled penultimate layer)")
    add_cluster_option(extract)
    add_json_flag(extract)
    extract.set_defaults(handler=run_extract)

    backbones = subparsers.add_parser("backbones", help="list the networks and feature layers you can use")
    add_json_flag(backbones)
    backbones.set_defaults(handler=run_backbones)


def _resolve(backbone: str, layer: str | None):
    try:
        spec = get_backbone(backbone)
        layer_spec = spec.layer(layer)
    except BackboneUnavailable as exc:
        raise CliError(str(exc)) from exc
    if not spec.available:
        raise CliError(spec.unavailable_reason)
    return spec, layer_spec


def run_extract(args: argparse.Namespace) -> CommandResult:
    spec, layer_spec = _resolve(args.backbone, args.layer)
    if args.cluster:
        return run_extract_on_cluster(args, spec.name, layer_spec.name)
    context = stderr_progress_context()
    with open_existing_project(args.project) as project, CancelOnSignals(context):
        try:
            info = ensure_features(context, project, spec.name, layer_spec.name)
        except JobCancelled:  # Ctrl+C: the batch in progress is finished and saved first
            return CommandResult({"cancelled": True}, "Cancelled; finished batches are saved.", EXIT_CANCELLED)
        except BackboneUnavailable as exc:
            raise CliError(str(exc)) from exc
    data = info.to_dict()
    text = (f"{spec.title} / {layer_spec.name}: {info.extracted} images extracted, {info.cached} already cached "
            f"({info.dim} values each) in {info.seconds:.1f} s on {info.device}")
    for image_id, reason in info.failed:
        text += f"\n  image {image_id}: {reason}"
    return CommandResult(data, text)


def run_backbones(args: argparse.Namespace) -> CommandResult:
    rows = []
    lines = [f"Features are computed on: {device_name()}", ""]
    for spec in list_backbones():
        rows.append({
            "name": spec.name, "title": spec.title, "available": spec.available,
            "input_size": spec.input_size, "default_layer": spec.default_layer,
            "layers": [{"name": layer.name, "title": layer.title, "dim": layer.dim} for layer in spec.layer_specs],
            "reason": spec.unavailable_reason,
        })
        mark = "" if spec.available else "  (not available)"
        lines.append(f"{spec.name}  {spec.title}, {spec.input_size} px: {spec.description}{mark}")
        for layer in spec.layer_specs:
            lines.append(f"    --layer {layer.name:8s} {layer.dim:5d} values  {layer.title}")
        if not spec.available:
            lines.append(f"    {spec.unavailable_reason}")
    return CommandResult(rows, "\n".join(lines))
