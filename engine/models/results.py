"""What training jobs return and stream, shared by the linear trainer (engine.models.training), the
network trainer (engine.torch.network_training) and the GUI, so that none of them imports another and
the GUI can read them without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from engine.models.metrics import Metrics


@dataclass
class TrainResult:
    """What a training job produced (plain data for the GUI and the CLI)."""

    model_version: int
    method: str
    backbone: str
    layer: str
    metrics: Metrics
    n_labeled: int
    training_run: int
    params: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EpochResult:
    """One epoch of network training, streamed as the job's partial result and kept as a row of the
    training run's curves. The validation values are None when no image is on the validation side."""

    epoch: int  # 1-based, counted across the head and full stages
    stage: str  # "head" (backbone frozen) or "full" (whole network)
    train_loss: float
    train_acc: float  # fraction, 0..1
    val_loss: float | None = None
    val_acc: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The stored curve row: ``{"kind": "epoch", ...}``, without validation keys when there were none."""
        row = {"kind": "epoch", **asdict(self)}
        return {key: value for key, value in row.items() if value is not None}
