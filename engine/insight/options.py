"""What the training panel offers on this machine (the backbones with weights here, the compute
device) and the start-up warm-up job that finds out. No Qt here.

Finding out imports the training engine and openTSNE, and torch only where a GPU driver is installed
or torchvision weights are cached (engine.features.runners.gpu_driver_present: elsewhere torch would
find no GPU, and importing it to ask costs half a gigabyte): each first import holds the GIL for
long stretches, which would stall the window in the middle of the user's first training or map.
So the window runs this job once it is on screen, in the background, where nobody waits for it.
Every import goes through ``heavy_imports()``: the map's first layout, on another thread, imports
openTSNE at the same moment and waits for this job's import instead of racing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.features.backbones import DEFAULT_BACKBONE, BackboneSpec, get_backbone, list_backbones
from engine.runtime.first_imports import heavy_imports
from engine.runtime.jobs import JobContext


@dataclass(frozen=True)
class BackboneChoice:
    """A backbone as the panel offers it: its feature layers, the default one first."""

    name: str
    title: str
    layers: tuple[str, ...]
    default_layer: str

    @classmethod
    def of(cls, spec: BackboneSpec) -> BackboneChoice:
        return cls(spec.name, spec.title, spec.layers, spec.default_layer)


def default_backbone_choice() -> BackboneChoice:
    """The backbone offered before the warm-up job has looked for others (always installed)."""
    return BackboneChoice.of(get_backbone(DEFAULT_BACKBONE))


def available_backbones() -> list[BackboneChoice]:
    """The backbones whose weights are on this machine (every known one if none is)."""
    specs = list_backbones(available_only=True) or list_backbones()
    return [BackboneChoice.of(spec) for spec in specs]


@dataclass(frozen=True)
class TrainingOptions:
    """The warm-up job's answer; a part that was not asked for is None."""

    device: str | None = None  # where training runs, in words ("GPU: ...", "CPU, 8 threads ...")
    backbones: list[BackboneChoice] | None = None


def training_options_job(context: JobContext, want_device: bool, want_backbones: bool) -> TrainingOptions:
    """Background job body: warm up the imports (see the module docstring), then answer."""
    from engine.insight.projection import warm_up

    warm_up()  # the map's t-SNE first: a map job of the project just opened may be waiting for it
    context.check_cancelled()
    with heavy_imports():
        import onnxruntime  # noqa: F401  (the first feature extraction imports it: ~0.3 s of GIL)

        import engine.models.training  # noqa: F401  (scikit-learn)
    context.check_cancelled()
    with heavy_imports():  # torch, where a GPU driver or torchvision weights are here (the device, the backbones)
        from engine.features.runners import device_name

        return TrainingOptions(
            device=device_name() if want_device else None,
            backbones=available_backbones() if want_backbones else None,
        )
