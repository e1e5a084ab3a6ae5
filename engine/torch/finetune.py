"""The fine-tuning recipe in PyTorch: a new linear head on a backbone's feature extractor, trained
head first with the backbone frozen (the linear probe stops there), then the whole network at a lower
learning rate, optionally with layer-wise learning-rate decay, with early stopping on the validation
images.

The loops follow torchvision's reference scripts (``train_one_epoch`` / ``evaluate``), report progress
every batch, stream one ``EpochResult`` partial per epoch, and check for cancellation every
batch. CUDA is used when present. The project job around them is engine.torch.network_training.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from engine.features.backbones import get_backbone
from engine.models.results import EpochResult
from engine.runtime.jobs import JobContext
from engine.torch.extractors import load_feature_extractor


@dataclass(frozen=True)
class FineTuneConfig:
    """Schedule: ``head_epochs`` with the backbone frozen, then (fine-tuning only) ``full_epochs`` of the
    whole network at ``full_lr``; ``layer_decay`` < 1 gives earlier layers smaller learning rates."""

    head_epochs: int = 8
    full_epochs: int = 6
    head_lr: float = 1e-3
    full_lr: float = 1e-4
    layer_decay: float | None = 0.8
    weight_decay: float = 1e-4
    batch_size: int = 16
    patience: int = 3
    label_smoothing: float = 0.1


DEFAULT_CONFIG = FineTuneConfig()


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ClassifierNetwork(nn.Module):
    """A feature extractor (N, C, H, W) -> (N, D) with a new linear head for our classes. While the
    backbone is frozen it stays in eval mode even in training (pretrained BatchNorm statistics kept)."""

    def __init__(self, features: nn.Module, dim: int, n_classes: int):
        super().__init__()
        self.features = features
        self.head = nn.Linear(dim, n_classes)
        self.backbone_frozen = False

    def train(self, mode: bool = True) -> ClassifierNetwork:
        super().train(mode)
        if self.backbone_frozen:
            self.features.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def set_backbone_trainable(network: ClassifierNetwork, trainable: bool) -> None:
    for parameter in network.features.parameters():
        parameter.requires_grad_(trainable)
    network.backbone_frozen = not trainable
    network.train(network.training)


def layer_groups(module: nn.Module) -> list[list[nn.Parameter]]:
    """Parameters grouped by depth, input side first: each child module is a group, each item of a
    ModuleList/Sequential (e.g. EfficientNet's blocks) its own group; single-child wrappers are looked through."""
    children = [c for c in module.children() if any(True for _ in c.parameters())]
    own = list(module.parameters(recurse=False))
    if len(children) == 1 and not own:
        return layer_groups(children[0])
    groups = [own] if own else []
    for child in children:
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            groups.extend(list(c.parameters()) for c in child if any(True for _ in c.parameters()))
        else:
            groups.append(list(child.parameters()))
    return groups


def parameter_groups(network: ClassifierNetwork, lr: float, layer_decay: float | None, weight_decay: float) -> list[dict]:
    """Optimizer groups: the head at ``lr``; backbone layers at lr * decay^(distance from the top)."""
    groups = [{"params": list(network.head.parameters()), "lr": lr, "weight_decay": weight_decay}]
    backbone = layer_groups(network.features)
    for depth, params in enumerate(backbone):
        scale = 1.0 if not layer_decay else layer_decay ** (len(backbone) - depth)
        groups.append({"params": params, "lr": lr * scale, "weight_decay": weight_decay})
    return groups


def build_network(backbone: str, layer: str, n_classes: int, seed: int | None = None) -> ClassifierNetwork:
    """The (backbone, layer) feature extractor with its ImageNet weights and a new head for ``n_classes``.
    ``seed``: the new head's random initial weights come from it, so a training's recorded seed gives
    the same model again (None: from torch's global generator, as a network about to be loaded needs)."""
    spec = get_backbone(backbone)
    extractor = load_feature_extractor(spec, layer)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):  # the caller's generator untouched
        if seed is not None:
            torch.manual_seed(seed)
        return ClassifierNetwork(extractor, spec.feature_dim(layer), n_classes)


def train_one_epoch(
    model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
    device: torch.device, context: JobContext, epoch: int, progress: Callable[[float], None] | None = None,
) -> tuple[float, float]:
    """One pass over the training images; returns (mean loss, accuracy)."""
    total_loss, correct, seen = epoch_sums(model, criterion, optimizer, loader, device, context, progress)
    return total_loss / max(seen, 1), correct / max(seen, 1)


def epoch_sums(
    model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
    device: torch.device, context: JobContext, progress: Callable[[float], None] | None = None,
) -> tuple[float, int, int]:
    """One pass over ``loader``: (summed loss, correct, seen), sums so that ranks of a distributed run
    can add theirs up before dividing."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for i, (images, targets) in enumerate(loader):
        context.check_cancelled()
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        output = model(images)
        loss = criterion(output, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += float(loss.item()) * len(targets)
        correct += int((output.argmax(dim=1) == targets).sum().item())
        seen += len(targets)
        if progress is not None:
            progress((i + 1) / max(len(loader), 1))
    return total_loss, correct, seen


@torch.inference_mode()
def evaluate(
    model: nn.Module, criterion: nn.Module, loader: DataLoader, device: torch.device, context: JobContext,
) -> tuple[float, float, np.ndarray]:
    """Loss, accuracy and softmax probabilities over a loader (in order), in eval mode."""
    model.eval()
    total_loss, correct, seen, probabilities = 0.0, 0, 0, []
    for images, targets in loader:
        context.check_cancelled()
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        output = model(images)
        total_loss += float(criterion(output, targets).item()) * len(targets)
        correct += int((output.argmax(dim=1) == targets).sum().item())
        seen += len(targets)
        probabilities.append(torch.softmax(output.float(), dim=1).cpu().numpy())
    proba = np.concatenate(probabilities) if probabilities else np.zeros((0, 0), dtype=np.float32)
    return total_loss / max(seen, 1), correct / max(seen, 1), proba


@dataclass
class FitReport:
    curves: list[EpochResult]
    best_epoch: int
    stopped_early: bool


def fit_network(
    context: JobContext, network: ClassifierNetwork, train_loader: DataLoader, val_loader: DataLoader | None,
    config: FineTuneConfig, fine_tune: bool, seed: int = 0,
) -> FitReport:
    """Head first (backbone frozen), then for fine-tuning the whole network; keeps the weights of the
    epoch with the lowest validation loss and stops after ``patience`` epochs without improvement."""
    torch.manual_seed(seed)
    run_on = device()
    network.to(run_on)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    stages = [("head", config.head_epochs)] + ([("full", config.full_epochs)] if fine_tune else [])
    total_epochs = sum(n for _, n in stages)
    curves: list[EpochResult] = []
    best = (math.inf, copy.deepcopy(network.state_dict()), 0)
    stopped_early = False
    epoch = 0
    for stage, n_epochs in stages:
        set_backbone_trainable(network, stage == "full")
        if stage == "head":
            optimizer = torch.optim.AdamW(network.head.parameters(), lr=config.head_lr, weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.AdamW(
                parameter_groups(network, config.full_lr, config.layer_decay, config.weight_decay))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(n_epochs, 1))
        waited = 0
        for _ in range(n_epochs):
            first = epoch / total_epochs

            def progress(fraction: float, first=first, epoch=epoch) -> None:
                context.progress(first + fraction / total_epochs, f"Epoch {epoch + 1} of {total_epochs} ({stage})")

            train_loss, train_acc = train_one_epoch(network, criterion, optimizer, train_loader, run_on, context,
                                                    epoch, progress)
            scheduler.step()
            val_loss = val_acc = None
            if val_loader is not None:
                val_loss, val_acc, _ = evaluate(network, criterion, val_loader, run_on, context)
            row = EpochResult(epoch + 1, stage, train_loss, train_acc, val_loss, val_acc)
            curves.append(row)
            context.partial(row)
            epoch += 1
            score = train_loss if val_loss is None else val_loss
            if score < best[0] - 1e-6:
                best, waited = (score, copy.deepcopy(network.state_dict()), epoch), 0
            else:
                waited += 1
                if val_loader is not None and waited >= config.patience:
                    stopped_early = True
                    break
        network.load_state_dict(best[1])
    return FitReport(curves, best[2], stopped_early)
