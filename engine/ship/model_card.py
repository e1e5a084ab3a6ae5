"""What a bundle says about its model: ``model.json`` (data for programs) and ``README.md`` (the model
card, in plain words). Metrics are read through engine.models.metrics.Metrics and the method's words
come from the training-method registry, so the card says what the app says.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from engine.models.methods import get_method
from engine.models.metrics import Metrics
from engine.ship.network import INPUT_NAME, OUTPUT_NAME, is_network_model
from engine.ship.verify import VerificationResult
from storage import catalog
from storage.modelstore import ModelInfo
from storage.project import Project, app_version

BUNDLE_FORMAT = 1


def preprocessing_description(backbone: str, jpeg_draft: bool = True) -> dict[str, Any]:
    """Exactly what engine.features.preprocess does, as data predict.py (or any other runtime) can follow.
    ``jpeg_draft``: feature models decode JPEGs at reduced DCT scale; fine-tuned networks do not."""
    from engine.features.backbones import get_backbone

    spec = get_backbone(backbone)
    return {
        "input_size": [spec.input_size, spec.input_size],
        "resize": "shorter_side_then_center_crop",
        "resize_shorter_side": spec.resize_size,
        "interpolation": spec.interpolation,
        "resampling_note": (
            "One PIL Image.resize of the center crop's source box: side = shorter * input / resize_shorter_side, "
            "centered; equal to resizing the shorter side then center-cropping."
        ),
        "jpeg_draft": jpeg_draft,
        "jpeg_draft_note": (
            "JPEGs are decoded with PIL Image.draft('RGB', (resize_shorter_side,)*2) first." if jpeg_draft
            else "JPEGs are decoded at full size."
        ),
        "exif_transpose": True,
        "alpha": "composited on white",
        "color_order": "RGB",
        "pixel_range": "0..255",
        "normalization": "(pixel - mean * 255) / (std * 255), float32",
        "mean": [float(v) for v in spec.mean],
        "std": [float(v) for v in spec.std],
        "layout": "NCHW",
        "dtype": "float32",
    }


def _class_counts(project: Project, info: ModelInfo) -> dict[str, int]:
    counts = {c.name: c.count for c in catalog.list_classes(project)}
    return {name: int(counts.get(name, 0)) for name in info.class_names}


def model_description(project: Project, info: ModelInfo) -> dict[str, Any]:
    """model.json: classes in output order, the exact preprocessing, and where the model came from."""
    from engine.features.backbones import get_backbone

    spec = get_backbone(info.backbone)
    return {
        "format": "sortlab-bundle",
        "format_version": BUNDLE_FORMAT,
        "classes": list(info.class_names),
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, spec.input_size, spec.input_size]},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(info.class_names)], "meaning": "class probabilities"},
        "preprocessing": preprocessing_description(info.backbone, jpeg_draft=not is_network_model(info)),
        "backbone": {"name": spec.name, "title": spec.title, "layer": info.layer},
        "training": {
            "method": info.method,
            "params": info.params,
            "trained_at": info.created_at.isoformat() if info.created_at else None,
            "labeled_images": info.n_labeled,
            "labeled_images_per_class_at_export": _class_counts(project, info),
        },
        "model_version": info.version,
        "project": project.name,
        "sortlab_version": app_version(),
        "exported_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "metrics": Metrics.from_json(info.metrics).to_json(),
    }


def _percent(value: float | None) -> str:
    return "not measured" if value is None else f"{value * 100:.1f}%"


def _per_class_lines(metrics: Metrics, classes: list[str], counts: dict[str, int]) -> list[str]:
    lines = ["| Class | Labeled images | Precision | Recall | F1 |", "| --- | --- | --- | --- | --- |"]
    for name in classes:
        scores = metrics.per_class.get(name)
        precision, recall, f1 = (None, None, None) if scores is None else (scores.precision, scores.recall, scores.f1)
        numbers = " | ".join(_percent(value) for value in (precision, recall, f1))
        lines.append(f"| {name} | {counts.get(name, 0)} | {numbers} |")
    return lines


def _quality_lines(metrics: Metrics) -> list[str]:
    """The card's "How good is it?" bullets (without the export check)."""
    lines = [
        f"- Accuracy on labeled images it had not seen while learning: **{_percent(metrics.accuracy)}**"
        + (f" ({metrics.n_val} images)" if metrics.evaluated and metrics.n_val else ""),
    ]
    if metrics.balanced_accuracy is not None:
        lines.append(f"- Balanced accuracy (every class counts the same): {_percent(metrics.balanced_accuracy)}")
    if metrics.ordered:
        lines.append(f"- The classes are ordered levels ({' < '.join(metrics.confusion_matrix.labels)}): "
                     f"within one level on {_percent(metrics.within_one_accuracy)}, off by "
                     f"{metrics.mean_absolute_error_levels:.2f} levels on average")
    if metrics.evaluated:
        how = metrics.evaluation
        if "CV" in how:
            how += " (cross-validation: each image was judged by a model trained without it)"
        lines.append(f"- How this was measured: {how}")
    if metrics.evaluation_note:
        lines.append(f"- Note: {metrics.evaluation_note}")
    return lines


def model_card(description: dict[str, Any], verification: VerificationResult) -> str:
    """README.md: what the model does, how good it was, and how to run it, in plain words."""
    metrics = Metrics.from_json(description["metrics"])
    classes = description["classes"]
    counts = description["training"]["labeled_images_per_class_at_export"]
    method = get_method(description["training"]["method"])
    params = description["training"].get("params") or {}
    recipe, reason = params.get("recipe") or method.description, params.get("recipe_reason")
    prep = description["preprocessing"]
    lines = [
        f"# Image classifier: {', '.join(classes)}",
        "",
        f"This model sorts pictures into {len(classes)} classes: {', '.join(f'**{c}**' for c in classes)}.",
        f"It was trained with Sortlab {description['sortlab_version']} on "
        f"{description['training']['labeled_images']} labeled images from the project "
        f"\"{description['project']}\" (model version {description['model_version']}).",
        "",
        "## How good is it?",
        "",
        *_quality_lines(metrics),
        f"- Export check: {verification.summary()}.",
        "",
        "Per class (precision: how often a picture called this class really is it; recall: how many "
        "pictures of this class it finds):",
        "",
        *_per_class_lines(metrics, classes, counts),
        "",
        "It can only answer with these classes. A picture of something else still gets one of them, "
        "and pictures unlike the training images (other cameras, light, backgrounds) may be sorted worse.",
        "",
        "## What it is",
        "",
        f"- Network: {description['backbone']['title']} (pretrained on ImageNet), features from its "
        f"'{description['backbone']['layer']}' layer, then {recipe}.",
        *([f"- Why this recipe: {reason}"] if reason else []),
        f"- Input: RGB pictures, shorter side resized to {prep['resize_shorter_side']} pixels, center crop "
        f"{prep['input_size'][1]}x{prep['input_size'][0]}, {prep['interpolation']} resampling, "
        f"normalized with mean {[round(v, 4) for v in prep['mean']]} and std "
        f"{[round(v, 4) for v in prep['std']]} (0..1 scale).",
        "- `model.onnx` holds the whole network; `model.json` lists the classes in output order and the exact "
        "preparation of pictures.",
        "",
        "## How to run it",
        "",
        "You need Python 3.9 or newer and three packages:",
        "",
        "    pip install onnxruntime numpy Pillow",
        "    python predict.py photo.jpg folder_of_photos/",
        "    python predict.py folder_of_photos/ --csv > results.csv",
        "",
        "The CSV has the columns `path,class,probability`, like Sortlab's own `predict --csv`.",
        "",
    ]
    return "\n".join(lines)
