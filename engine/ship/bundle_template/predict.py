#!/usr/bin/env python3
"""Predict image classes with a model exported by Sortlab. Needs only onnxruntime, numpy, Pillow.

    pip install onnxruntime numpy Pillow
    python predict.py photo.jpg more_photos/            # one line per image
    python predict.py more_photos/ --csv > results.csv  # path,class,probability

Folders are searched recursively (hidden files and non-images are skipped). The model is the
``model.onnx`` + ``model.json`` beside this script, or ``--bundle`` (an export folder or its .zip;
a zip is read in memory and never extracted, and member names that try to leave it are refused).
Images are prepared exactly as Sortlab prepares them: EXIF rotation applied, transparency put on
white, converted to RGB, resized and cropped, normalized with the model's mean and std.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import warnings
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

BATCH_SIZE = 16
EXIF_ORIENTATION = 0x0112
WHITE = (255, 255, 255)
BUNDLE_FILES = ("model.onnx", "model.json")
# Zip bombs: the largest sizes a bundle member may declare (zipfile never inflates past them).
MAX_MEMBER_BYTES = {"model.json": 16 * 1024 * 1024, "model.onnx": 1024 * 1024 * 1024}
_NOT_PHOTOS = {".bufr", ".grib", ".h5", ".hdf", ".fit", ".fits", ".mpeg", ".mpg", ".ps", ".eps", ".wmf", ".emf"}
IMAGE_EXTENSIONS = frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN and ext not in _NOT_PHOTOS
)
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class BundleError(Exception):
    """The model bundle is missing, incomplete or unsafe."""


class ImageError(Exception):
    """An image that cannot be predicted; the message says why."""


# ---------------------------------------------------------------- reading the bundle safely


def check_member_name(name: str) -> str:
    """A zip member name that stays inside the archive (no absolute paths, drives or '..')."""
    if not name or "\\" in name or name.startswith("/") or "\x00" in name or ":" in name:
        raise BundleError(f"Unsafe file name in the bundle: {name!r}")  # ':' = drive or Windows stream
    parts = PurePosixPath(name).parts
    if any(part in ("..", "") for part in parts):
        raise BundleError(f"Unsafe file name in the bundle: {name!r}")
    return name


def read_bundle(path: Path) -> dict[str, bytes]:
    """model.onnx and model.json bytes from an export folder or zip (read in memory, never extracted)."""
    if path.is_dir():
        missing = [name for name in BUNDLE_FILES if not (path / name).is_file()]
        if missing:
            raise BundleError(f"{path} is not a Sortlab export: {', '.join(missing)} missing.")
        return {name: (path / name).read_bytes() for name in BUNDLE_FILES}
    if not zipfile.is_zipfile(path):
        raise BundleError(f"{path} is neither an export folder nor a zip file.")
    found: dict[str, bytes] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = check_member_name(info.filename)
            base = PurePosixPath(name).name
            depth = len(PurePosixPath(name).parts)
            if base in BUNDLE_FILES and depth <= 2 and base not in found:
                if info.file_size > MAX_MEMBER_BYTES[base]:
                    raise BundleError(f"{name} in the bundle is too large ({info.file_size} bytes).")
                found[base] = archive.read(info)
    missing = [name for name in BUNDLE_FILES if name not in found]
    if missing:
        raise BundleError(f"{path} is not a Sortlab export: {', '.join(missing)} missing.")
    return found


def _is_number_list(value, length: int) -> bool:
    return (isinstance(value, list) and len(value) == length
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def check_config(config) -> dict:
    """model.json, checked up front: every key this script relies on, with a usable value.
    A damaged or hand-edited file gives one BundleError naming the problem, never a KeyError later."""
    if not isinstance(config, dict):
        raise BundleError("model.json does not hold a JSON object.")
    classes = config.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise BundleError("model.json: 'classes' must be a non-empty list of class names.")
    prep = config.get("preprocessing")
    if not isinstance(prep, dict):
        raise BundleError("model.json: 'preprocessing' is missing.")
    problems = []
    size = prep.get("input_size")
    if not (_is_number_list(size, 2) and all(isinstance(v, int) and v > 0 for v in size)):
        problems.append("'input_size' must be two positive whole numbers")
    if prep.get("resize") != "shorter_side_then_center_crop":
        problems.append(f"unknown 'resize' policy {prep.get('resize')!r}")
    shorter = prep.get("resize_shorter_side")
    if not (isinstance(shorter, int) and not isinstance(shorter, bool) and shorter > 0):
        problems.append("'resize_shorter_side' must be a positive whole number")
    if not isinstance(prep.get("interpolation"), str) or prep["interpolation"] not in RESAMPLING:
        problems.append(f"unknown 'interpolation' {prep.get('interpolation')!r}")
    if prep.get("color_order", "RGB") != "RGB":  # (a list compares unequal: no TypeError here)
        problems.append(f"unsupported 'color_order' {prep.get('color_order')!r}")
    if not _is_number_list(prep.get("mean"), 3):
        problems.append("'mean' must be three numbers")
    if not (_is_number_list(prep.get("std"), 3) and all(v > 0 for v in prep["std"])):
        problems.append("'std' must be three positive numbers")
    if problems:
        raise BundleError("model.json preprocessing: " + "; ".join(problems) + ".")
    return config


# ---------------------------------------------------------------- images, as Sortlab reads them


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:
        return 1


def _upright(image: Image.Image) -> Image.Image:
    if _orientation(image) in (1, 0):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def _wide_grayscale_to_l(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        scaled = values / 257.0
    else:
        peak = float(values.max()) if values.size else 0.0
        low = min(float(values.min()) if values.size else 0.0, 0.0)
        if peak <= 255 and low >= 0:
            scaled = values
        elif peak <= 65535 and low >= 0:
            scaled = values / 257.0
        else:
            scaled = (values - low) * (255.0 / max(peak - low, 1e-12))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any mode: alpha composited on white, 16-bit grayscale rescaled (as Sortlab does)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return _wide_grayscale_to_l(image).convert("RGB")
    if "A" in mode or "a" in mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _decode_carefully(data: bytes) -> Image.Image:
    """Full decode with Pillow's decompression-bomb limit as an error (Sortlab's fallback path)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        image.load()
        return to_rgb(_upright(image))
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognized file format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"possible decompression bomb: {exc}") from None
    except Exception as exc:
        raise ImageError(f"cannot decode image ({str(exc).strip() or exc.__class__.__name__})") from None


def decode_for_model(data: bytes, prep: dict) -> Image.Image:
    """Decode just large enough for the model (JPEG DCT scaling), upright and RGB, as Sortlab does."""
    shorter = int(prep["resize_shorter_side"])
    try:
        with Image.open(io.BytesIO(data)) as image:
            if prep.get("jpeg_draft", True) and image.format in ("JPEG", "MPO"):
                image.draft("RGB", (shorter, shorter))
            image.load()
            upright = ImageOps.exif_transpose(image) if image.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1) else image
            rgb = to_rgb(upright)
            return rgb if rgb is not image else image.copy()
    except Exception:
        return _decode_carefully(data)


def open_image(path: str, prep: dict) -> Image.Image:
    """Read and decode a file into an upright RGB image, or raise ImageError with the reason."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise ImageError("is a folder, not a file") from None
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except OSError as exc:
        raise ImageError(f"unreadable: {exc.strerror or exc}") from None
    if not data:
        raise ImageError("empty file (0 bytes)")
    return decode_for_model(data, prep)


def resize_and_crop(image: Image.Image, prep: dict) -> Image.Image:
    """Resize the shorter side to resize_shorter_side and center-crop input_size, as ONE resampling
    of the crop's source box (exactly Sortlab's geometry)."""
    if prep["resize"] != "shorter_side_then_center_crop":
        raise BundleError(f"Unknown resize policy in model.json: {prep['resize']!r}")
    height, width = prep["input_size"]
    shorter = int(prep["resize_shorter_side"])
    side = min(image.width, image.height) * width / shorter
    left = (image.width - side) / 2.0
    top = (image.height - side) / 2.0
    box = (left, top, left + side, top + side)
    return image.resize((width, height), RESAMPLING[prep["interpolation"]], box=box)


def preprocess(image: Image.Image, prep: dict) -> np.ndarray:
    """(3, H, W) float32: (pixels - mean * 255) / (std * 255), channels in RGB order."""
    if prep.get("color_order", "RGB") != "RGB":
        raise BundleError(f"Unsupported color order {prep['color_order']!r}")
    if image.mode != "RGB":
        image = to_rgb(image)
    pixels = np.asarray(resize_and_crop(image, prep))
    offset = np.asarray(prep["mean"], dtype=np.float32) * np.float32(255.0)
    scale = np.asarray(prep["std"], dtype=np.float32) * np.float32(255.0)
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
    chw -= offset[:, None, None]
    chw /= scale[:, None, None]
    return chw


# ---------------------------------------------------------------- finding files, predicting


def has_image_extension(path: str) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def collect_files(paths: list[str]) -> list[str]:
    """Files as given, and the images inside folders (recursively, sorted, hidden ones skipped)."""
    files: list[str] = []
    for raw in paths:
        root = Path(raw)
        if not root.is_dir():
            files.append(str(root))
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if not filename.startswith(".") and has_image_extension(filename):
                    files.append(str(Path(dirpath) / filename))
    return files


class Predictor:
    """The ONNX network plus its class names and preprocessing."""

    def __init__(self, bundle: dict[str, bytes]):
        import onnxruntime

        try:
            config = json.loads(bundle["model.json"].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BundleError(f"model.json is not valid JSON ({exc}).") from None
        self.config = check_config(config)
        self.classes = list(self.config["classes"])
        self.prep = self.config["preprocessing"]
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(
                bundle["model.onnx"], options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's InvalidProtobuf and friends are plain Exceptions
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BundleError(f"model.onnx is not a valid ONNX model ({first_line[:200]}).") from None
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_outputs()[0].shape or [None]
        width = shape[-1]
        if isinstance(width, int) and width != len(self.classes):
            raise BundleError(f"model.onnx gives {width} outputs but model.json names {len(self.classes)} classes.")

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]

    def predict_paths(self, paths: list[str]):
        """Yield (path, class, probability, None) or (path, None, None, reason) in order."""
        for start in range(0, len(paths), BATCH_SIZE):
            chunk = paths[start : start + BATCH_SIZE]
            arrays, ok_paths, results = [], [], {}
            for path in chunk:
                try:
                    arrays.append(preprocess(open_image(path, self.prep), self.prep))
                    ok_paths.append(path)
                except ImageError as exc:
                    results[path] = (path, None, None, str(exc))
            if arrays:
                probs = self.probabilities(np.stack(arrays))
                for path, row in zip(ok_paths, probs):
                    best = int(np.argmax(row))
                    results[path] = (path, self.classes[best], float(row[best]), None)
            for path in chunk:
                yield results[path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Predict image classes with a model exported by Sortlab.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument("--csv", action="store_true", help="print CSV: path,class,probability")
    parser.add_argument("--bundle", metavar="DIR_OR_ZIP", default=str(Path(__file__).resolve().parent),
                        help="export folder or zip holding model.onnx and model.json (default: beside this script)")
    args = parser.parse_args(argv)
    try:
        predictor = Predictor(read_bundle(Path(args.bundle)))
    except (BundleError, OSError, ValueError, KeyError) as exc:
        print(f"predict.py: error: {exc}", file=sys.stderr)
        return 2
    files = collect_files(args.paths)
    if not files:
        print("predict.py: error: no image files found in the given paths.", file=sys.stderr)
        return 2
    writer = csv.writer(sys.stdout, lineterminator="\n") if args.csv else None
    if writer is not None:
        writer.writerow(("path", "class", "probability"))
    predicted = 0
    for path, class_name, probability, reason in predictor.predict_paths(files):
        if reason is not None:
            print(f"predict.py: cannot read {path}: {reason}", file=sys.stderr)
            continue
        predicted += 1
        if writer is not None:
            writer.writerow((path, class_name, f"{probability:.6f}"))
        else:
            print(f"{path}: {class_name} ({probability * 100:.1f}%)")
    sys.stdout.flush()
    return 0 if predicted else 1


if __name__ == "__main__":
    sys.exit(main())
