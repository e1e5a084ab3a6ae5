"""CLI: ``train`` under torchrun (``torchrun --nproc_per_node=N main.py train PROJECT --method finetune``).

torchrun sets WORLD_SIZE; each of the N processes runs this command as one rank of a
DistributedDataParallel fine-tuning (engine.torch.distributed_training). Rank 0 shows progress and
prints the result; the other ranks print nothing unless they fail. ``SORTLAB_FINETUNE_CONFIG`` may
hold JSON overriding the recipe's fields, e.g. ``{"full_epochs": 20, "batch_size": 32}`` (per rank).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields

from cli.common import EXIT_CANCELLED, CancelOnSignals, CliError, CommandResult, stderr_progress_context
from engine.models.methods import get_method
from engine.runtime.jobs import JobCancelled

CONFIG_ENV = "SORTLAB_FINETUNE_CONFIG"


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def _config_overrides() -> dict:
    text = os.environ.get(CONFIG_ENV, "").strip()
    if not text:
        return {}
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{CONFIG_ENV} is not JSON: {exc}") from None
    from engine.runtime.edition import require_torch

    require_torch("Distributed fine-tuning")
    from engine.torch.finetune import FineTuneConfig

    known = {f.name for f in fields(FineTuneConfig)}
    unknown = sorted(set(values) - known) if isinstance(values, dict) else ["(not an object)"]
    if unknown:
        raise CliError(f"{CONFIG_ENV}: unknown fields {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    return values


def run_distributed_train(args: argparse.Namespace) -> CommandResult:
    """This process's rank of a torchrun fine-tuning; rank 0 reports the stored model version."""
    from pathlib import Path

    method = get_method(args.method)
    if not (method.needs_torch and not method.trains_on_features):  # the methods that train in torch on images
        raise CliError(f"torchrun trains the network methods (finetune, probe); '{method.name}' trains in "
                       "seconds on one process: run it without torchrun.")
    if not Path(args.project).exists():
        raise CliError(f"Project {args.project} does not exist.")
    from engine.runtime.edition import require_torch

    require_torch("Distributed fine-tuning")
    from dataclasses import replace

    from engine.features.backbones import get_backbone
    from engine.torch.distributed_training import DistributedTrainingFailed, train_distributed, world
    from engine.torch.finetune import DEFAULT_CONFIG

    config = replace(DEFAULT_CONFIG, **_config_overrides())
    rank, size, _ = world()
    spec = get_backbone(args.backbone)
    layer = spec.layer(args.layer).name
    context = stderr_progress_context(quiet=rank != 0)
    with CancelOnSignals(context):
        try:
            result = train_distributed(context, args.project, args.method, spec.name, layer, args.seed, config)
        except JobCancelled:
            return CommandResult({"cancelled": True}, "Cancelled: no new model version was stored." if rank == 0
                                 else "", EXIT_CANCELLED)
        except DistributedTrainingFailed as exc:
            raise CliError(str(exc)) from exc
    if result is None:  # not rank 0: the result is rank 0's to print
        return CommandResult({"rank": rank}, "", raw="")
    m = result.metrics
    data = {"model": result.model_version, "method": result.method, "backbone": result.backbone,
            "layer": result.layer, "n_labeled": result.n_labeled, "metrics": m.to_json(), "world_size": size,
            "params": result.params}
    accuracy = "-" if m.accuracy is None else f"{m.accuracy:.3f}"
    text = (f"Model version {result.model_version} ({result.method}, {result.backbone}/{result.layer}) is now active: "
            f"trained on {size} processes ({result.params['backend']}). Accuracy {accuracy} ({m.evaluation}, "
            f"{result.n_labeled} labeled images).")
    return CommandResult(data, text)
