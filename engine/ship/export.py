"""Export a trained model as a self-contained, verified bundle that runs without Sortlab.

A bundle is a folder (or a zip of it) holding:

- ``model.onnx``: backbone and classifier as ONE network (engine.ship.network). Input ``images``:
  float32 NCHW batch of preprocessed images; output ``probabilities``: (N, classes), columns in
  ``model.json`` order.
- ``model.json``: classes, the exact preprocessing, backbone, method, Sortlab version, metrics
  (engine.ship.model_card).
- ``predict.py``: standalone predictor (onnxruntime, numpy, Pillow only).
- ``README.md``: a model card in plain words (engine.ship.model_card).
- ``linear_head.npz``: the linear classifier alone as arrays (for feature-based models).

Before anything is written, the ONNX network is checked against Sortlab's own predictions
(engine.ship.verify). A bundle that fails the check is still written for inspection, but renamed
``<name>-FAILED`` with the reason inside, and the export fails loudly.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.models.evolving import keep_version
from engine.runtime.jobs import JobContext
from engine.ship.model_card import model_card, model_description
from engine.ship.network import ExportError, build_network, export_onnx, exported_method, head_arrays
from engine.ship.verify import VERIFY_SAMPLE, VerificationResult, verify_onnx
from storage.modelstore import get_model
from storage.project import Project

TEMPLATE_DIR = Path(__file__).with_name("bundle_template")
FAILED_MARKER = "EXPORT_FAILED.txt"


class ExportVerificationFailed(ExportError):
    """The exported network disagrees with Sortlab; ``failed_path`` holds the kept evidence."""

    def __init__(self, message: str, failed_path: Path, verification: VerificationResult):
        super().__init__(message)
        self.failed_path = failed_path
        self.verification = verification


@dataclass
class ExportReport:
    path: str
    model_version: int
    classes: list[str]
    verification: VerificationResult
    files: list[str] = field(default_factory=list)
    onnx_bytes: int = 0
    created_folder: str | None = None  # the outermost folder that did not exist and was made for the bundle

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "model_version": self.model_version, "classes": self.classes,
            "verification": self.verification.to_dict(), "files": self.files, "onnx_bytes": self.onnx_bytes,
            "created_folder": self.created_folder,
        }


def _first_missing_folder(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist (None if ``folder`` exists)."""
    missing = None
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _prepare_target(out_dir: Path, make_zip: bool) -> tuple[Path, Path | None]:
    """(folder to fill, zip path or None); refuses to overwrite anything. Missing parent folders
    are made later, once the bundle passed its check and is written."""
    zip_path = None
    if make_zip:
        zip_path = out_dir if out_dir.suffix.lower() == ".zip" else out_dir.with_name(out_dir.name + ".zip")
        if zip_path.exists():
            raise ExportError(f"{zip_path} already exists; choose another name.")
        out_dir = zip_path.with_suffix("")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} already exists and is not an empty folder; choose a new folder.")
    blocking = next((p for p in out_dir.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ExportError(f"{blocking} is a file, not a folder; choose another place for the export.")
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
    exported_method(info)  # an unknown or unexportable method fails before anything is built
    folder, zip_path = _prepare_target(Path(out_dir), make_zip)
    from engine.features.backbones import get_backbone

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

    created = _first_missing_folder(folder.parent)
    partial = folder.with_name(f".{folder.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        (partial / "model.onnx").write_bytes(onnx_bytes)
        (partial / "model.json").write_text(json.dumps(description, indent=2, ensure_ascii=False, default=str),
                                            encoding="utf-8")
        shutil.copyfile(TEMPLATE_DIR / "predict.py", partial / "predict.py")
        (partial / "README.md").write_text(model_card(description, verification), encoding="utf-8")
        head = head_arrays(project, info)
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
    keep_version(project, info.version)  # an exported version is never replaced by an automatic retrain
    context.progress(1.0, f"Exported model version {info.version} to {path}")
    return ExportReport(str(path), info.version, list(info.class_names), verification, files, len(onnx_bytes),
                        str(created) if created is not None else None)
