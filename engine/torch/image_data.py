"""Images as PyTorch training data: the augmentation for training, the evaluation transform (Sortlab's
own preprocessing, so a network sees at training what it sees when predicting), and a dataset of
decoded images."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from engine.features.backbones import BackboneSpec
from engine.features.preprocess import preprocess_pil


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


def eval_transform(spec: BackboneSpec) -> Callable:
    """A PIL image -> the normalized tensor Sortlab predicts from."""
    return lambda image: torch.from_numpy(preprocess_pil(image, spec))
