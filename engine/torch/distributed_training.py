"""Fine-tuning on several processes or GPUs with torchrun: DistributedDataParallel over the recipe of
engine.torch.finetune.

``torchrun --standalone --nproc_per_node=N main.py train PROJECT --method finetune`` starts N ranks.
The process group uses NCCL on CUDA (one GPU per rank, ``LOCAL_RANK``) and gloo on the CPU. Rank 0
alone opens the project: it records the training run, splits the labeled images as single-process
fine-tuning does and exports them once to a shard folder (engine.torch.distributed_shards); after a
barrier every rank reads that folder. Each epoch a DistributedSampler (``set_epoch``) gives every rank
its share of the training images; losses and accuracies are summed over ranks with ``all_reduce``,
so every rank takes the same early-stopping decision. BatchNorm layers become SyncBatchNorm on CUDA
only (it does not run on the CPU). At the end the ranks compare a digest of their parameters, rank 0
evaluates, predicts every image and stores the one model version with its curves, then ``barrier``
and ``destroy_process_group``. ``config.batch_size`` is per rank: N ranks train on N times as many
images per step.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import shutil
import time
from dataclasses import asdict
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from engine.features.backbones import get_backbone
from engine.images.imaging import load_stored_image
from engine.models.methods import get_method
from engine.models.results import EpochResult, TrainResult
from engine.runtime.jobs import JobCancelled, JobContext, user_message
from engine.torch import finetune
from engine.torch.distributed_shards import (
    TrainingShards,
    export_shards,
    read_manifest,
    shard_folder,
    write_manifest,
)
from engine.torch.image_data import ImageListDataset, eval_transform, train_transform

GROUP_TIMEOUT = timedelta(hours=4)  # rank 0 predicting a large project keeps the others at the last barrier


class DistributedTrainingFailed(RuntimeError):
    """Another rank (or the shard export) failed; the message says why."""


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def train_distributed(
    context: JobContext, project_path, method: str, backbone: str, layer: str, seed: int = 0,
    config: finetune.FineTuneConfig | None = None,
) -> TrainResult | None:
    """One rank's part of a torchrun fine-tuning; rank 0 returns the stored version's TrainResult,
    the others None."""
    rank, size, local_rank = world()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=GROUP_TIMEOUT)
    try:
        return _train(context, project_path, method, backbone, layer, seed, config or finetune.DEFAULT_CONFIG,
                      rank, size, torch.device("cuda", local_rank) if cuda else torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def _train(context, project_path, method, backbone, layer, seed, config, rank, size, run_on) -> TrainResult | None:
    started = time.perf_counter()
    training_method = get_method(method)
    spec = get_backbone(backbone)
    folder = shard_folder()
    project = run_id = None
    if rank == 0:
        from storage.modelstore import finish_training_run, start_training_run
        from storage.project import open_project

        project = open_project(project_path)
        run_id = start_training_run(project, method)
        try:
            export_shards(project, folder, run_id)
        except Exception as exc:  # tell the other ranks, then fail here too
            write_manifest(TrainingShards(folder, [], [], [], [], run_id, error=user_message(exc)))
            finish_training_run(project, run_id, "failed", [], user_message(exc))
            dist.barrier()
            project.close()
            raise
    dist.barrier()  # the shard folder is complete
    shards = read_manifest(folder)
    if shards.error:
        raise DistributedTrainingFailed(f"Rank 0 could not export the training images: {shards.error}")
    try:
        network, curves, best_epoch, stopped_early = _fit(context, shards, spec, layer, training_method, config,
                                                          seed, rank, size, run_on)
        identical = _same_parameters_everywhere(network, run_on)
        if not identical:
            raise DistributedTrainingFailed("The ranks ended with different parameters.")
        result = None
        if rank == 0:
            from engine.torch.distributed_store import store_version

            counts = {"n_train": len(shards.train), "n_val": len(shards.val),
                      "n_labeled": len(shards.train) + len(shards.val), "best_epoch": best_epoch,
                      "stopped_early": stopped_early}
            params = {"seed": seed, "config": asdict(config), "device": str(run_on), "world_size": size,
                      "backend": dist.get_backend(), "parameters_identical_across_ranks": identical}
            result = store_version(context, project, shards, training_method, spec, layer, network, curves, counts,
                                   params, started)
    except BaseException as exc:
        if rank == 0:
            from storage.modelstore import finish_training_run

            status = "cancelled" if isinstance(exc, JobCancelled) else "failed"
            finish_training_run(project, shards.run_id, status, [], user_message(exc))
        raise
    finally:
        if rank == 0:
            project.close()
    dist.barrier()  # rank 0 has stored the version
    if rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def _loaders(shards: TrainingShards, spec, config, seed: int, rank: int, size: int):
    images = {e.image_id: load_stored_image(shards.image_bytes(e.image_id)) for e in shards.train + shards.val}
    augment = train_transform(spec.input_size, spec.mean, spec.std)
    train_set = ImageListDataset([images[e.image_id] for e in shards.train], [e.target for e in shards.train], augment)
    sampler = DistributedSampler(train_set, num_replicas=size, rank=rank, shuffle=True, seed=seed)
    train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler,
                              drop_last=len(sampler) > config.batch_size)
    val_loader = None
    if shards.val:  # each rank scores its own slice, no padding: the summed counts are exact
        val_set = ImageListDataset([images[e.image_id] for e in shards.val], [e.target for e in shards.val],
                                   eval_transform(spec))
        val_loader = DataLoader(Subset(val_set, range(rank, len(val_set), size)), batch_size=config.batch_size)
    return sampler, train_loader, val_loader


def _summed(values: list[float], run_on: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=run_on)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def _train_epoch(model, criterion, optimizer, loader, run_on, context, progress) -> list[float]:
    """(loss sum, correct, seen) of one pass over this rank's share."""
    return list(finetune.epoch_sums(model, criterion, optimizer, loader, run_on, context, progress))


@torch.inference_mode()
def _val_epoch(network, criterion, loader, run_on, context) -> list[float]:
    network.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for images, targets in loader:
        context.check_cancelled()
        images, targets = images.to(run_on), targets.to(run_on)
        output = network(images)
        loss_sum += float(criterion(output, targets).item()) * len(targets)
        correct += int((output.argmax(dim=1) == targets).sum().item())
        seen += len(targets)
    return [loss_sum, correct, seen]


def _fit(context, shards, spec, layer, training_method, config, seed, rank, size, run_on):
    """finetune.fit_network's schedule under DDP; returns (network, curves, best epoch, stopped early)."""
    torch.manual_seed(seed)  # the same new head everywhere (DDP also broadcasts rank 0's weights)
    network = finetune.build_network(spec.name, layer, len(shards.classes))
    if run_on.type == "cuda":
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    network.to(run_on)
    torch.manual_seed(seed + rank)  # each rank its own augmentations
    sampler, train_loader, val_loader = _loaders(shards, spec, config, seed, rank, size)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    stages = [("head", config.head_epochs)] + ([("full", config.full_epochs)] if training_method.fine_tunes else [])
    total = sum(n for _, n in stages)
    curves: list[EpochResult] = []
    best = (math.inf, copy.deepcopy(network.state_dict()), 0)
    stopped_early = False
    epoch = 0
    for stage, n_epochs in stages:
        finetune.set_backbone_trainable(network, stage == "full")
        # A new wrapper per stage: DDP syncs the parameters that require gradients when it is made.
        model = DistributedDataParallel(network, device_ids=[run_on.index] if run_on.type == "cuda" else None)
        if stage == "head":
            optimizer = torch.optim.AdamW(network.head.parameters(), lr=config.head_lr, weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.AdamW(finetune.parameter_groups(network, config.full_lr, config.layer_decay,
                                                                    config.weight_decay))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(n_epochs, 1))
        waited = 0
        for _ in range(n_epochs):
            sampler.set_epoch(epoch)
            first = epoch / total

            def progress(fraction: float, first=first, epoch=epoch, stage=stage) -> None:
                context.progress(0.85 * (first + fraction / total),
                                 f"Epoch {epoch + 1} of {total} ({stage}) on {size} processes")

            loss_sum, correct, seen = _summed(_train_epoch(model, criterion, optimizer, train_loader, run_on,
                                                           context, progress), run_on)
            scheduler.step()
            _broadcast_buffers(network)
            val_loss = val_acc = None
            if val_loader is not None:
                v_loss, v_correct, v_seen = _summed(_val_epoch(network, criterion, val_loader, run_on, context), run_on)
                val_loss, val_acc = v_loss / max(v_seen, 1), v_correct / max(v_seen, 1)
            row = EpochResult(epoch + 1, stage, loss_sum / max(seen, 1), correct / max(seen, 1), val_loss, val_acc)
            curves.append(row)
            context.partial(row)
            epoch += 1
            score = row.train_loss if val_loss is None else val_loss
            if score < best[0] - 1e-6:
                best, waited = (score, copy.deepcopy(network.state_dict()), epoch), 0
            else:
                waited += 1
                if val_loader is not None and waited >= config.patience:
                    stopped_early = True
                    break
        network.load_state_dict(best[1])
        del model
    return network, curves, best[2], stopped_early


def _broadcast_buffers(network: nn.Module) -> None:
    """Rank 0's BatchNorm statistics everywhere: DDP broadcasts them before each forward pass, but the
    last training batch updates each rank's copy from its own images."""
    for buffer in network.buffers():
        dist.broadcast(buffer.data, src=0)


def _same_parameters_everywhere(network: nn.Module, run_on: torch.device) -> bool:
    """Whether every rank holds bit-identical parameters and buffers (SHA-256 of the state dict)."""
    digest = hashlib.sha256()
    for name, value in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    mine = torch.tensor(np.frombuffer(digest.digest(), dtype=np.uint8).astype(np.int64), device=run_on)
    everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    return all(torch.equal(other, mine) for other in everyone)
