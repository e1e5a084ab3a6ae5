"""The export check: run the exported ONNX network and compare it with Sortlab's own predictions.

Sortlab's side is computed the way the app computes it: cached features + classifier for feature
models, the torch network for fine-tuned ones. Below ``MIN_AGREEMENT`` top-1 agreement, or with any
probability more than ``MAX_PROBABILITY_DIFFERENCE`` apart, the export fails loudly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engine.runtime.jobs import JobContext
from engine.ship.network import INPUT_NAME, ExportError, is_network_model, linear_predictor
from storage.images import list_images, read_image_bytes
from storage.modelstore import ModelInfo
from storage.project import Project

MIN_AGREEMENT = 0.995
# Largest difference in any class probability between ONNX and Sortlab that still passes. Legitimate
# exports differ by float32 rounding only (8e-8 measured on 49 hymenoptera validation photos); a wrong
# crop, mean or head shows up at 1e-2 and more.
MAX_PROBABILITY_DIFFERENCE = 1e-3
VERIFY_SAMPLE = 200
VERIFY_BATCH = 16


@dataclass
class VerificationResult:
    """How the exported ONNX network compares with Sortlab's own predictions."""

    compared: int
    agreed: int
    max_probability_difference: float
    images: str  # which images were compared: 'validation' or 'labeled' or 'all'

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
    feature models decode with JPEG draft scaling (engine.features.preprocess), fine-tuned networks fully."""
    from engine.features.backbones import get_backbone
    from engine.features.preprocess import preprocess_bytes, preprocess_pil
    from engine.images.imaging import load_stored_image

    spec = get_backbone(info.backbone)
    data = read_image_bytes(project, image_ids)
    if is_network_model(info):
        return np.stack([preprocess_pil(load_stored_image(data[i]), spec) for i in image_ids])
    return np.stack([preprocess_bytes(data[i], spec) for i in image_ids])


def _feature_model_probabilities(context: JobContext, project: Project, info: ModelInfo, image_ids: list[int]):
    """Sortlab's probabilities for stored images from their cached features (as the app computes them)."""
    from engine.features.extraction import ensure_features, load_features

    ensure_features(context, project, info.backbone, info.layer)
    ids, X = load_features(project, info.backbone, info.layer)
    row_of = {int(image_id): row for row, image_id in enumerate(ids)}
    missing = [i for i in image_ids if i not in row_of]
    if missing:
        raise ExportError(f"{len(missing)} images have no cached features; extract features and try again.")
    return linear_predictor(project, info).predict_proba(X[[row_of[i] for i in image_ids]])


def verify_onnx(
    context: JobContext, project: Project, info: ModelInfo, onnx_bytes: bytes, network=None,
    sample_size: int = VERIFY_SAMPLE,
) -> VerificationResult:
    """Run the ONNX network on up to ``sample_size`` validation images and compare with Sortlab:
    cached features + classifier for feature models, the torch ``network`` for fine-tuned ones."""
    image_ids, kind = _verification_images(project, sample_size)
    if not image_ids:
        return VerificationResult(0, 0, 0.0, "no")
    network_model = is_network_model(info)
    expected_rows = []
    if not network_model:
        expected_rows.append(_feature_model_probabilities(context.subcontext(0.0, 0.5), project, info, image_ids))
    session = _onnx_session(onnx_bytes)
    got_rows = []
    for start in range(0, len(image_ids), VERIFY_BATCH):
        context.check_cancelled()
        chunk = image_ids[start : start + VERIFY_BATCH]
        batch = model_pixels(project, info, chunk)
        got_rows.append(session.run(None, {INPUT_NAME: batch})[0])
        if network_model:
            from engine.torch.onnx_export import run_network

            expected_rows.append(run_network(network, batch))
        context.progress(0.5 + 0.5 * (start + len(chunk)) / len(image_ids), "Checking the exported model")
    got = np.concatenate(got_rows)
    expected = np.concatenate(expected_rows)
    agreed = int(np.sum(np.argmax(got, axis=1) == np.argmax(expected, axis=1)))
    difference = float(np.max(np.abs(got - expected)))
    return VerificationResult(len(image_ids), agreed, difference, kind)
