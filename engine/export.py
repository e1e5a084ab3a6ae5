"""Export a trained model as a self-contained, verified bundle that runs without Sortlab.

A bundle is a folder (or a zip of it) holding:

- ``model.onnx``: backbone and classifier as ONE network. Input ``images``: float32 NCHW batch of
  preprocessed images; output ``probabilities``: (N, classes), columns in ``model.json`` order.
- ``model.json``: classes, the exact preprocessing, backbone, method, Sortlab version, metrics.
- ``predict.py``: standalone predictor (onnxruntime, numpy, Pillow only).
- ``README.md``: a model card in plain words.
- ``linear_head.npz``: the linear classifier alone as arrays (for feature-based models).

After writing, the ONNX network is run with onnxruntime on validation images and compared with
Sortlab's own predictions for the same model version. Below ``MIN_AGREEMENT`` top-1 agreement, or
with any probability more than ``MAX_PROBABILITY_DIFFERENCE`` apart, the export fails loudly and the
folder is renamed ``<name>-FAILED`` with the reason inside.

Nothing here ever unpickles: weights come from safetensors bytes, zips are read member by member
with their names (``check_member_name``) and declared sizes (``check_member_sizes``) checked.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from engine.jobs import JobContext
from storage import catalog
from storage.errors import ProjectError
from storage.images import list_images, read_image_bytes
from storage.modelstore import ModelInfo, get_model, model_weights
from storage.project import Project

BUNDLE_FORMAT = 1
MIN_AGREEMENT = 0.995
# Largest difference in any class probability between ONNX and Sortlab that still passes. Legitimate
# exports differ by float32 rounding only (8e-8 measured on 49 hymenoptera validation photos); a wrong
# crop, mean or head shows up at 1e-2 and more.
MAX_PROBABILITY_DIFFERENCE = 1e-3
# Zip bombs: a bundle member may declare at most this many bytes, the whole bundle at most the total.
MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_MEMBER_BYTES = 1024 * 1024 * 1024
MAX_BUNDLE_BYTES = 2 * 1024 * 1024 * 1024
VERIFY_SAMPLE = 200
OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
TEMPLATE_DIR = Path(__file__).with_name("bundle_template")
BUNDLE_FILES = ("model.onnx", "model.json", "predict.py", "README.md")
FAILED_MARKER = "EXPORT_FAILED.txt"
METHOD_WORDS = {
    "logreg": "a logistic-regression classifier",
    "svm": "a linear SVM classifier with calibrated probabilities",
    "probe": "a linear classifier trained on the network's features (linear probe)",
    "finetune": "the whole network fine-tuned on these images",
}


class ExportError(ProjectError):
    """The model cannot be exported; the message says why."""


class ExportVerificationFailed(ExportError):
    """The exported network disagrees with Sortlab; ``failed_path`` holds the kept evidence."""

    def __init__(self, message: str, failed_path: Path, verification: VerificationResult):
        super().__init__(message)
        self.failed_path = failed_path
        self.verification = verification


class UnsafeBundleError(ExportError):
    """A zip whose member names would write outside the folder it is extracted to."""


@dataclass
class VerificationResult:
    """How the exported ONNX network compares with Sortlab's own predictions."""

    compared: int
    agreed: int
    max_probability_difference: float
    images: str  # which images were compared: 'validation' or 'all labeled' or 'all'

    @property
    def agreement(self) -> float:
        return self.agreed / self.compared if self.compared else 0.0

    @property
    def passed(self) -> bool:
        return (self.compared > 0 and self.agreement >= MIN_AGREEMENT
                and self.max_probability_difference <= MAX_PROBABILITY_DIFFERENCE)

    def failure_reason(self) -> str | None:
        """Why the check failed, in one sentence, or None when it passed."""
        if self.compared == 0:
            return "Export check failed: the project has no images to check the model on."
        problems = []
        if self.agreement < MIN_AGREEMENT:
            problems.append(f"at least {MIN_AGREEMENT * 100:.1f}% agreement is required")
        if not self.max_probability_difference <= MAX_PROBABILITY_DIFFERENCE:  # NaN fails too
            problems.append(f"probabilities may differ by at most {MAX_PROBABILITY_DIFFERENCE:.0e}")
        return f"Export check failed: {self.summary()}; {' and '.join(problems)}." if problems else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agreement": self.agreement, "passed": self.passed, "threshold": MIN_AGREEMENT,
                "max_probability_difference_allowed": MAX_PROBABILITY_DIFFERENCE}

    def summary(self) -> str:
        return (
            f"ONNX agrees with Sortlab on {self.agreed} of {self.compared} {self.images} images "
            f"({self.agreement * 100:.2f}%, max probability difference {self.max_probability_difference:.2e})"
        )


@dataclass
class ExportReport:
    path: str
    model_version: int
    classes: list[str]
    verification: VerificationResult
    files: list[str] = field(default_factory=list)
    onnx_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "model_version": self.model_version, "classes": self.classes,
            "verification": self.verification.to_dict(), "files": self.files, "onnx_bytes": self.onnx_bytes,
        }


# ---------------------------------------------------------------------------------------------
# Zip safety (reading a bundle someone sent)


def check_member_name(name: str) -> str:
    """A zip member name that stays inside its archive folder, or UnsafeBundleError."""
    if not name or "\\" in name or "\x00" in name or ":" in name or name.startswith("/"):
        raise UnsafeBundleError(f"Unsafe file name in the zip: {name!r}")  # ':' = drive or Windows stream
    parts = PurePosixPath(name).parts
    if any(part in ("..", "") for part in parts):
        raise UnsafeBundleError(f"Unsafe file name in the zip: {name!r}")
    return name


def check_member_sizes(infos: list[zipfile.ZipInfo]) -> None:
    """Refuse zip bombs before inflating anything: declared sizes are capped per member and in total
    (zipfile never inflates a member past its declared size, so the caps hold while reading)."""
    total = 0
    for info in infos:
        limit = MAX_JSON_BYTES if info.filename.endswith(".json") else MAX_MEMBER_BYTES
        if info.file_size > limit:
            raise UnsafeBundleError(f"{info.filename} in the zip is too large ({info.file_size} bytes).")
        total += info.file_size
    if total > MAX_BUNDLE_BYTES:
        raise UnsafeBundleError(f"The zip would unpack to {total} bytes; a Sortlab export is far smaller.")


def read_bundle_zip(path: str | os.PathLike) -> dict[str, bytes]:
    """The files of a zipped bundle by base name, read in memory after checking every member's name
    and declared size."""
    found: dict[str, bytes] = {}
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ExportError(f"{path} is not a zip file ({exc}).") from exc
    with archive:
        infos = archive.infolist()
        for info in infos:
            check_member_name(info.filename)
        wanted = [info for info in infos if not info.is_dir() and len(PurePosixPath(info.filename).parts) <= 2]
        check_member_sizes(wanted)
        for info in wanted:
            found.setdefault(PurePosixPath(info.filename).name, archive.read(info))
    missing = [name for name in ("model.onnx", "model.json") if name not in found]
    if missing:
        raise ExportError(f"{path} is not a Sortlab export: {', '.join(missing)} missing.")
    return found


def extract_bundle_zip(path: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Extract a zipped bundle into ``destination`` (checked member by member; nothing is executed)."""
    destination = Path(destination).resolve()
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        for info in infos:
            check_member_name(info.filename)
            if not (destination / info.filename).resolve().is_relative_to(destination):
                raise UnsafeBundleError(f"Unsafe file name in the zip: {info.filename!r}")
        check_member_sizes(infos)
        destination.mkdir(parents=True, exist_ok=True)
        for info in infos:
            target = destination / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
    return destination


# ---------------------------------------------------------------------------------------------
# The exported network


def is_network_model(info: ModelInfo) -> bool:
    """Whether the version is a whole (fine-tuned) network rather than a linear model on features."""
    from engine.predicting import NETWORK_MODEL_METHODS

    return info.method in NETWORK_MODEL_METHODS


def _linear_predictor(project: Project, info: ModelInfo):
    from engine.classifiers import LinearPredictor

    try:
        return LinearPredictor.from_bytes(model_weights(project, info.version))
    except ValueError as exc:
        raise ExportError(f"Model version {info.version} has no readable linear classifier ({exc}).") from exc


def build_network(project: Project, info: ModelInfo):
    """A torch module mapping preprocessed images (N, 3, H, W) to class probabilities (N, K).

    Without torch (the CPU edition) a feature model comes back as finished ONNX bytes instead: the
    backbone's verified ONNX copy composed with the linear head (engine.onnx_compose)."""
    from engine.edition import require_torch, torch_available

    if not is_network_model(info) and not torch_available():
        return _composed_network(project, info)
    require_torch("Exporting a fine-tuned network")
    from engine import torch_export

    if not is_network_model(info):
        from engine.backbones import feature_extractor, get_backbone

        spec = get_backbone(info.backbone)
        extractor = feature_extractor(spec.load_model(), info.layer, spec.name)
        network = torch_export.FeaturesThenLinear(extractor, _linear_predictor(project, info))
    else:
        network = torch_export.finetuned_network(project, info)
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


def _composed_network(project: Project, info: ModelInfo) -> bytes:
    """ONNX bytes of a feature model built without torch: backbone ONNX copy + linear head."""
    from engine.backbones import get_backbone
    from engine.onnx_backend import OnnxExportFailed
    from engine.onnx_backend import export as backbone_onnx
    from engine.onnx_compose import compose

    spec = get_backbone(info.backbone)
    try:
        backbone = backbone_onnx(spec, spec.layer(info.layer).name)
    except OnnxExportFailed as exc:
        raise ExportError(f"Cannot export model version {info.version}: {exc}.") from exc
    return compose(backbone, _linear_predictor(project, info), INPUT_NAME, OUTPUT_NAME)


def export_onnx(network, input_size: int) -> bytes:
    """The network as ONNX bytes with a dynamic batch dimension (legacy exporter: no onnxscript).
    ONNX bytes already composed by ``build_network`` (CPU edition) pass through unchanged."""
    if isinstance(network, bytes):
        return network
    import torch

    sample = torch.zeros(2, 3, input_size, input_size, dtype=torch.float32)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter, not the user's concern
        torch.onnx.export(
            network, (sample,), buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    network.eval()  # the exporter may switch training mode around
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Verification


def _verification_images(project: Project, limit: int) -> tuple[list[int], str]:
    """Up to ``limit`` validation images (else labeled ones, else any), spread evenly, by id."""
    images = list_images(project)
    for kind, chosen in (
        ("validation", [i.id for i in images if i.split == "val" and i.class_id is not None]),
        ("labeled", [i.id for i in images if i.class_id is not None]),
        ("all", [i.id for i in images]),
    ):
        if chosen:
            if len(chosen) > limit:
                picks = np.linspace(0, len(chosen) - 1, limit).round().astype(int)
                chosen = [chosen[p] for p in sorted(set(picks.tolist()))]
            return chosen, kind
    return [], "no"


def _onnx_session(onnx_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def model_pixels(project: Project, info: ModelInfo, image_ids: list[int]) -> np.ndarray:
    """Network input for stored images, prepared the way Sortlab prepares them for this kind of model:
    feature models decode with JPEG draft scaling (engine.preprocess), fine-tuned networks fully."""
    from engine.backbones import get_backbone
    from engine.imaging import load_stored_image
    from engine.preprocess import preprocess_bytes, preprocess_pil

    spec = get_backbone(info.backbone)
    data = read_image_bytes(project, image_ids)
    if is_network_model(info):
        return np.stack([preprocess_pil(load_stored_image(data[i]), spec) for i in image_ids])
    return np.stack([preprocess_bytes(data[i], spec) for i in image_ids])


def _feature_model_probabilities(context: JobContext, project: Project, info: ModelInfo, image_ids: list[int]):
    """Sortlab's probabilities for stored images from their cached features (as the app computes them)."""
    from engine.features import ensure_features, load_features

    ensure_features(context, project, info.backbone, info.layer)
    ids, X = load_features(project, info.backbone, info.layer)
    row_of = {int(image_id): row for row, image_id in enumerate(ids)}
    missing = [i for i in image_ids if i not in row_of]
    if missing:
        raise ExportError(f"{len(missing)} images have no cached features; extract features and try again.")
    return _linear_predictor(project, info).predict_proba(X[[row_of[i] for i in image_ids]])


def verify_onnx(
    context: JobContext, project: Project, info: ModelInfo, onnx_bytes: bytes, network=None,
    sample_size: int = VERIFY_SAMPLE,
) -> VerificationResult:
    """Run the ONNX network on up to ``sample_size`` validation images and compare with Sortlab:
    cached features + classifier for feature models, the torch network for fine-tuned ones."""
    image_ids, kind = _verification_images(project, sample_size)
    if not image_ids:
        return VerificationResult(0, 0, 0.0, "no")
    expected_rows = []
    if not is_network_model(info):
        expected_rows.append(_feature_model_probabilities(context.subcontext(0.0, 0.5), project, info, image_ids))
    session = _onnx_session(onnx_bytes)
    got_rows = []
    for start in range(0, len(image_ids), 16):
        context.check_cancelled()
        chunk = image_ids[start : start + 16]
        batch = model_pixels(project, info, chunk)
        got_rows.append(session.run(None, {INPUT_NAME: batch})[0])
        if is_network_model(info):
            import torch

            with torch.inference_mode():
                expected_rows.append(network(torch.from_numpy(batch)).numpy())
        context.progress(0.5 + 0.5 * (start + len(chunk)) / len(image_ids), "Checking the exported model")
    got = np.concatenate(got_rows)
    expected = np.concatenate(expected_rows)
    agreed = int(np.sum(np.argmax(got, axis=1) == np.argmax(expected, axis=1)))
    difference = float(np.max(np.abs(got - expected)))
    return VerificationResult(len(image_ids), agreed, difference, kind)


# ---------------------------------------------------------------------------------------------
# Bundle files


def sortlab_version() -> str:
    try:
        from importlib.metadata import version

        return version("sortlab")
    except Exception:
        return "0+source"


def preprocessing_description(backbone: str, jpeg_draft: bool = True) -> dict[str, Any]:
    """Exactly what engine.preprocess does, as data predict.py (or any other runtime) can follow.
    ``jpeg_draft``: feature models decode JPEGs at reduced DCT scale; fine-tuned networks do not."""
    from engine.backbones import get_backbone

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
    from engine.backbones import get_backbone

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
        "sortlab_version": sortlab_version(),
        "exported_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "metrics": info.metrics,
    }


def _percent(value: Any) -> str:
    try:
        return f"{float(value) * 100:.1f}%"
    except (TypeError, ValueError):
        return "not measured"


def _find_metric(metrics: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in metrics and not isinstance(metrics[name], dict):
            return metrics[name]
    for nested in ("validation", "val"):
        if isinstance(metrics.get(nested), dict):
            found = _find_metric(metrics[nested], *names)
            if found is not None:
                return found
    return None


def _per_class_lines(metrics: dict[str, Any], classes: list[str], counts: dict[str, int]) -> list[str]:
    per_class = metrics.get("per_class")
    if per_class is None and isinstance(metrics.get("validation"), dict):
        per_class = metrics["validation"].get("per_class")
    lines = ["| Class | Labeled images | Precision | Recall | F1 |", "| --- | --- | --- | --- | --- |"]
    for name in classes:
        numbers = {}
        if isinstance(per_class, dict):
            numbers = per_class.get(name) or {}
        elif isinstance(per_class, list):
            numbers = next((row for row in per_class if isinstance(row, dict) and row.get("class") == name), {})
        lines.append(
            f"| {name} | {counts.get(name, 0)} | {_percent(numbers.get('precision'))} | "
            f"{_percent(numbers.get('recall'))} | {_percent(numbers.get('f1', numbers.get('f1-score')))} |"
        )
    return lines


def model_card(description: dict[str, Any], verification: VerificationResult) -> str:
    """README.md: what the model does, how good it was, and how to run it, in plain words."""
    metrics = description["metrics"] or {}
    classes = description["classes"]
    counts = description["training"]["labeled_images_per_class_at_export"]
    accuracy = _find_metric(metrics, "val_accuracy", "accuracy", "val_acc")
    balanced = _find_metric(metrics, "val_balanced_accuracy", "balanced_accuracy")
    n_val = _find_metric(metrics, "n_val", "val_images", "validation_images")
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
        f"- Accuracy on labeled images it had not seen while learning: **{_percent(accuracy)}**"
        + (f" ({n_val} images)" if n_val is not None else ""),
    ]
    if balanced is not None:
        lines.append(f"- Balanced accuracy (every class counts the same): {_percent(balanced)}")
    if metrics.get("evaluation"):
        how = str(metrics["evaluation"])
        if "CV" in how:
            how += " (cross-validation: each image was judged by a model trained without it)"
        lines.append(f"- How this was measured: {how}")
    if metrics.get("evaluation_note"):
        lines.append(f"- Note: {metrics['evaluation_note']}")
    lines += [
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
        f"'{description['backbone']['layer']}' layer, then "
        f"{METHOD_WORDS.get(description['training']['method'], description['training']['method'])}.",
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


def _head_arrays(project: Project, info: ModelInfo) -> bytes | None:
    """The linear classifier alone (standardization folded in) as an .npz of plain arrays."""
    if is_network_model(info):
        return None
    from engine.onnx_compose import folded_linear

    predictor = _linear_predictor(project, info)
    weight, bias = folded_linear(predictor)
    arrays = {
        "weight": weight.astype(np.float32), "bias": bias.astype(np.float32),
        "coef": predictor.coef, "intercept": predictor.intercept, "mean": predictor.mean, "scale": predictor.scale,
        "classes": np.asarray(info.class_names, dtype=np.str_),
    }
    if predictor.calib_a is not None:
        arrays.update(calib_a=predictor.calib_a, calib_b=predictor.calib_b)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# The job


def _prepare_target(out_dir: Path, make_zip: bool) -> tuple[Path, Path | None]:
    """(folder to fill, zip path or None); refuses to overwrite anything."""
    zip_path = None
    if make_zip:
        zip_path = out_dir if out_dir.suffix.lower() == ".zip" else out_dir.with_name(out_dir.name + ".zip")
        if zip_path.exists():
            raise ExportError(f"{zip_path} already exists; choose another name.")
        out_dir = zip_path.with_suffix("")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} already exists and is not an empty folder; choose a new folder.")
    if not out_dir.parent.is_dir():
        raise ExportError(f"Folder {out_dir.parent} does not exist.")
    return out_dir, zip_path


def _mark_failed(folder: Path, message: str) -> Path:
    failed = folder.with_name(folder.name + "-FAILED")
    if failed.exists():
        shutil.rmtree(failed)
    folder.rename(failed)
    (failed / FAILED_MARKER).write_text(
        "This export FAILED its check and must not be used.\n\n" + message + "\n", encoding="utf-8"
    )
    return failed


def _zip_folder(folder: Path, zip_path: Path) -> None:
    temporary = zip_path.with_name(f".{zip_path.name}.partial")
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"{folder.name}/{path.name}")
    os.replace(temporary, zip_path)


def export_bundle(
    context: JobContext,
    project: Project,
    out_dir: str | os.PathLike,
    *,
    model_version: int | None = None,
    make_zip: bool = False,
    sample_size: int = VERIFY_SAMPLE,
) -> ExportReport:
    """Write and verify an export bundle of a model version (the active one by default)."""
    info = get_model(project, model_version)
    folder, zip_path = _prepare_target(Path(out_dir), make_zip)
    from engine.backbones import get_backbone

    spec = get_backbone(info.backbone)
    context.progress(0.02, "Building the network")
    network = build_network(project, info)
    context.check_cancelled()
    context.progress(0.15, "Writing model.onnx")
    onnx_bytes = export_onnx(network, spec.input_size)
    context.check_cancelled()

    verification = verify_onnx(context.subcontext(0.3, 0.95), project, info, onnx_bytes, network, sample_size)
    del network
    description = model_description(project, info)
    description["export_check"] = verification.to_dict()

    partial = folder.with_name(f".{folder.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    try:
        (partial / "model.onnx").write_bytes(onnx_bytes)
        (partial / "model.json").write_text(json.dumps(description, indent=2, ensure_ascii=False, default=str),
                                            encoding="utf-8")
        shutil.copyfile(TEMPLATE_DIR / "predict.py", partial / "predict.py")
        (partial / "README.md").write_text(model_card(description, verification), encoding="utf-8")
        head = _head_arrays(project, info)
        if head is not None:
            (partial / "linear_head.npz").write_bytes(head)
        if folder.exists():
            folder.rmdir()
        partial.rename(folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    files = sorted(p.name for p in folder.iterdir())

    if not verification.passed:
        reason = verification.failure_reason()
        failed = _mark_failed(folder, reason)
        raise ExportVerificationFailed(f"{reason} The bundle was kept for inspection in {failed}.", failed, verification)

    path = folder
    if zip_path is not None:
        _zip_folder(folder, zip_path)
        shutil.rmtree(folder)
        path = zip_path
    context.progress(1.0, f"Exported model version {info.version} to {path}")
    return ExportReport(str(path), info.version, list(info.class_names), verification, files, len(onnx_bytes))
