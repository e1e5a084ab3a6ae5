"""Training in torch on the images themselves: a linear probe on the frozen backbone (with augmentation)
and fine-tuning (head first, then the whole network at a lower learning rate, optionally with
layer-wise learning-rate decay), with early stopping on the validation images.

The loops follow torchvision's reference scripts (``train_one_epoch`` / ``evaluate``), report progress
every batch, stream one ``{"kind": "epoch", ...}`` partial per epoch, and check for cancellation every
batch. CUDA is used when present. Weights are saved as safetensors, never pickled: a probe is exported
as a LinearPredictor over the cached features (so it predicts like the other linear models), a
fine-tuned network as its state_dict.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from safetensors.torch import load as load_state
from safetensors.torch import save as save_state
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from engine.backbones import get_backbone
from engine.classifiers import LinearPredictor
from engine.evaluation import assign_splits, classification_metrics, unevaluated_metrics
from engine.imaging import load_stored_image, open_image_file
from engine.jobs import JobCancelled, JobContext, user_message
from engine.preprocess import preprocess_pil
from storage.catalog import list_classes
from storage.images import image_ids as all_image_ids
from storage.images import read_image_bytes
from storage.modelstore import (
    ModelInfo,
    NewModel,
    PredictionBatch,
    finish_training_run,
    model_weights,
    save_model_version,
    start_training_run,
)
from storage.project import Project
from storage.splits import labeled_images


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


def train_transform(input_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Augmentation for training: random crops, flips and colour jitter on PIL images."""
    return v2.Compose([
        v2.PILToTensor(),
        v2.RandomResizedCrop(input_size, scale=(0.5, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])


class ImageListDataset(Dataset):
    """PIL images (decoded once) with class indices; ``transform`` turns an image into a tensor."""

    def __init__(self, images: Sequence, targets: Sequence[int], transform: Callable):
        self.images = list(images)
        self.targets = list(targets)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.targets[index]


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


def train_one_epoch(
    model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
    device: torch.device, context: JobContext, epoch: int, progress: Callable[[float], None] | None = None,
) -> tuple[float, float]:
    """One pass over the training images; returns (mean loss, accuracy)."""
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
            progress((i + 1) / len(loader))
    return total_loss / max(seen, 1), correct / max(seen, 1)


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
    curves: list[dict]
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
    curves: list[dict] = []
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
            row = {"kind": "epoch", "epoch": epoch + 1, "stage": stage, "train_loss": train_loss, "train_acc": train_acc}
            if val_loader is not None:
                val_loss, val_acc, _ = evaluate(network, criterion, val_loader, run_on, context)
                row.update(val_loss=val_loss, val_acc=val_acc)
            curves.append(row)
            context.partial(dict(row))
            epoch += 1
            score = row.get("val_loss", train_loss)
            if score < best[0] - 1e-6:
                best, waited = (score, copy.deepcopy(network.state_dict()), epoch), 0
            else:
                waited += 1
                if val_loader is not None and waited >= config.patience:
                    stopped_early = True
                    break
        network.load_state_dict(best[1])
    return FitReport(curves, best[2], stopped_early)


# -- project jobs ----------------------------------------------------------------------------------


def _eval_transform(spec) -> Callable:
    return lambda image: torch.from_numpy(preprocess_pil(image, spec))


def build_network(backbone: str, layer: str, n_classes: int) -> ClassifierNetwork:
    from engine.backbones import feature_extractor

    spec = get_backbone(backbone)
    model = spec.load_model()
    return ClassifierNetwork(feature_extractor(model, layer, spec.name), spec.feature_dim(layer), n_classes)


def train_network(
    context: JobContext, project: Project, method: str, backbone: str, layer: str, seed: int = 0,
    config: FineTuneConfig | None = None,
):
    """The 'probe' and 'finetune' training jobs on the project's labeled images."""
    run_id = start_training_run(project, method)
    curves: list[dict] = []

    def keep_curve(result) -> None:
        if isinstance(result, dict) and result.get("kind") == "epoch":
            curves.append(result)

    recording = JobContext(context.progress, _chain(context.partial, keep_curve), context._cancel_event)
    try:
        result = _train_network(recording, project, method, backbone, layer, seed, config or DEFAULT_CONFIG, run_id)
    except JobCancelled:
        finish_training_run(project, run_id, "cancelled", curves, "Cancelled by the user.")
        raise
    except Exception as exc:
        finish_training_run(project, run_id, "failed", curves, user_message(exc))
        raise
    return result


def _chain(*callbacks: Callable) -> Callable:
    def call(result) -> None:
        for callback in callbacks:
            callback(result)

    return call


def _train_network(context, project, method, backbone, layer, seed, config: FineTuneConfig, run_id):
    from engine.training import TrainResult

    started = time.perf_counter()
    spec = get_backbone(backbone)
    sides = assign_splits(project)
    labeled = labeled_images(project)
    classes = np.array(sorted({img.class_id for img in labeled}), dtype=np.int64)
    index_of = {int(c): i for i, c in enumerate(classes)}
    names_by_id = {c.id: c.name for c in list_classes(project)}
    class_names = [names_by_id.get(int(c), str(c)) for c in classes]
    images = {i: load_stored_image(b) for i, b in read_image_bytes(project, [img.image_id for img in labeled]).items()}
    labeled = [img for img in labeled if img.image_id in images]
    val = [img for img in labeled if sides.get(img.image_id) == "val"]
    has_val = {img.class_id for img in val} == set(index_of)
    train = [img for img in labeled if not has_val or sides.get(img.image_id) != "val"]
    generator = torch.Generator().manual_seed(seed)
    augment = train_transform(spec.input_size, spec.mean, spec.std)
    train_loader = DataLoader(
        ImageListDataset([images[i.image_id] for i in train], [index_of[i.class_id] for i in train], augment),
        batch_size=config.batch_size, shuffle=True, generator=generator, drop_last=len(train) > config.batch_size,
    )
    eval_tf = _eval_transform(spec)
    val_loader = None
    if has_val:
        val_loader = DataLoader(ImageListDataset([images[i.image_id] for i in val], [index_of[i.class_id] for i in val],
                                                 eval_tf), batch_size=config.batch_size)
    network = build_network(spec.name, layer, len(classes))
    report = fit_network(context.subcontext(0.0, 0.85), network, train_loader, val_loader, config,
                         fine_tune=method == "finetune", seed=seed)
    metrics: dict = {"evaluation": "holdout" if has_val else "not evaluated", "n_train": len(train),
                     "n_val": len(val) if has_val else 0, "n_labeled": len(labeled), "best_epoch": report.best_epoch,
                     "stopped_early": report.stopped_early}
    val_proba = None
    if has_val:
        criterion = nn.CrossEntropyLoss()
        _, _, val_proba = evaluate(network, criterion, val_loader, device(), context)
        metrics.update(classification_metrics(np.array([i.class_id for i in val]), val_proba, classes, class_names,
                                              [i.source for i in val]))
    else:
        metrics.update(unevaluated_metrics())
        metrics["evaluation_note"] = "every class needs an image on the validation side to be evaluated"
    context.progress(0.9, "Predicting every image")
    network.eval().cpu()
    if method == "probe":
        weights = probe_predictor(network, classes).to_bytes()
    else:
        weights = save_state({k: v.contiguous() for k, v in network.state_dict().items()},
                             metadata={"format": "sortlab-finetune-1"})
    ids, proba = _predict_all(context, project, method, spec.name, layer, weights, network)
    out_of_fold = np.zeros(len(ids), dtype=bool)
    if val_proba is not None:
        row_of = {int(i): r for r, i in enumerate(ids)}
        for img, p in zip(val, val_proba):
            if img.image_id in row_of:
                proba[row_of[img.image_id]] = p
                out_of_fold[row_of[img.image_id]] = True
    params = {"seed": seed, "config": asdict(config), "device": str(device())}
    version = save_model_version(
        project, NewModel(method, spec.name, layer, class_names, classes.tolist(), weights, params, metrics, len(labeled)),
        PredictionBatch(ids, proba, out_of_fold),
    )
    finish_training_run(project, run_id, "done", report.curves, model_version=version)
    context.progress(1.0, f"Model version {version} ready")
    return TrainResult(version, method, spec.name, layer, metrics, len(labeled), run_id, params,
                       {"total_s": time.perf_counter() - started})


def probe_predictor(network: ClassifierNetwork, classes: np.ndarray) -> LinearPredictor:
    """The probe's head as plain arrays over (unstandardized) backbone features."""
    weight = network.head.weight.detach().cpu().double().numpy()
    bias = network.head.bias.detach().cpu().double().numpy()
    dim = weight.shape[1]
    return LinearPredictor(classes, np.zeros(dim), np.ones(dim), weight, bias)


def _predict_all(context, project, method: str, backbone: str, layer: str, weights: bytes, network):
    """Predictions for every project image: cached features for a probe, the network itself otherwise."""
    if method == "probe":
        from engine.features import ensure_features
        from storage.featurestore import load_vectors

        ensure_features(context.subcontext(0.9, 0.98), project, backbone, layer)
        ids, X = load_vectors(project, backbone, layer)
        return ids, LinearPredictor.from_bytes(weights).predict_proba(X)
    return _network_predictions(context, network, get_backbone(backbone), all_image_ids(project),
                                lambda chunk: {i: load_stored_image(b) for i, b in read_image_bytes(project, chunk).items()})


def _network_predictions(context, network, spec, keys: Sequence, load: Callable[[Sequence], dict], batch: int = 32):
    """Softmax outputs of a network for images loaded chunk by chunk: (keys that loaded, proba)."""
    run_on = device()
    network.eval().to(run_on)
    done_keys, outputs = [], []
    with torch.inference_mode():
        for start in range(0, len(keys), batch):
            context.check_cancelled()
            chunk = keys[start:start + batch]
            loaded = load(chunk)
            ok = [k for k in chunk if k in loaded]
            if ok:
                x = torch.stack([torch.from_numpy(preprocess_pil(loaded[k], spec)) for k in ok]).to(run_on)
                outputs.append(torch.softmax(network(x).float(), dim=1).cpu().numpy())
                done_keys.extend(ok)
    n_classes = network.head.out_features
    proba = np.concatenate(outputs) if outputs else np.zeros((0, n_classes), dtype=np.float32)
    return np.asarray(done_keys, dtype=object if keys and isinstance(keys[0], str) else np.int64), proba


def load_fine_tuned(project: Project, info: ModelInfo) -> ClassifierNetwork:
    """Rebuild a fine-tuned network from its safetensors state_dict."""
    network = build_network(info.backbone, info.layer, len(info.class_ids))
    network.load_state_dict(load_state(model_weights(project, info.version)))
    return network.eval()


def predict_project_images(context: JobContext, project: Project, info: ModelInfo, image_ids=None):
    """(image ids, proba) for every project image, or only ``image_ids``."""
    network = load_fine_tuned(project, info)
    ids = all_image_ids(project) if image_ids is None else [int(i) for i in image_ids]
    return _network_predictions(
        context, network, get_backbone(info.backbone), ids,
        lambda chunk: {i: load_stored_image(b) for i, b in read_image_bytes(project, chunk).items()},
    )


def predict_image_files(context: JobContext, project: Project, info: ModelInfo, paths: Sequence[str]):
    """(paths that could be read, proba, [(path, reason)]) for files outside the project."""
    network = load_fine_tuned(project, info)
    failed: list[tuple[str, str]] = []

    def load(chunk):
        loaded = {}
        for path in chunk:
            try:
                loaded[path] = open_image_file(path)
            except Exception as exc:  # unreadable files are reported, the rest still get predictions
                failed.append((path, getattr(exc, "reason", None) or str(exc)))
        return loaded

    keys, proba = _network_predictions(context, network, get_backbone(info.backbone), list(paths), load)
    return [str(k) for k in keys], proba, failed

