"""Turning a picture into the exact tensor a backbone's weights expect. The normalisation lives here only.

Policy (the one each backbone's weights were evaluated with): resize the shorter side to
``spec.resize_size``, center-crop ``spec.input_size``, then ``(x/255 - mean) / std``. The resize and
the crop are done as ONE resampling of the crop's source box, which gives the same pixels as
resize-then-crop with less work. JPEGs are decoded at a reduced DCT scale (``Image.draft``) when
that still leaves at least ``resize_size`` pixels on the shorter side: about 5x faster decoding.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

from engine.features.backbones import BackboneSpec
from engine.images.imaging import EXIF_ORIENTATION, ImageDecodeError, decode_image, to_rgb

_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def normalization_arrays(spec: BackboneSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (offset, scale) on the 0..255 scale: features = (pixels - offset) / scale."""
    offset = np.asarray(spec.mean, dtype=np.float32) * np.float32(255.0)
    scale = np.asarray(spec.std, dtype=np.float32) * np.float32(255.0)
    return offset, scale


def crop_box(width: int, height: int, spec: BackboneSpec) -> tuple[float, float, float, float]:
    """The centered source box that resize-shorter-side-then-center-crop would keep."""
    side = min(width, height) * spec.input_size / spec.resize_size
    left = (width - side) / 2.0
    top = (height - side) / 2.0
    return (left, top, left + side, top + side)


def resize_and_crop(image: Image.Image, spec: BackboneSpec) -> Image.Image:
    """RGB ``input_size`` square: the center crop of the image resized to ``resize_size`` (shorter side)."""
    if image.mode != "RGB":
        image = to_rgb(image)
    size = spec.input_size
    return image.resize(
        (size, size), _RESAMPLING[spec.interpolation], box=crop_box(image.width, image.height, spec)
    )


def normalize_array(pixels: np.ndarray, spec: BackboneSpec, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 pixels -> (3, H, W) float32 network input, written into ``out`` when given
    (a slot of a batch array: saves a copy per image)."""
    offset, scale = normalization_arrays(spec)
    if out is None:
        out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
    np.copyto(out, pixels.transpose(2, 0, 1), casting="unsafe")
    out -= offset[:, None, None]
    out /= scale[:, None, None]
    return out


def preprocess_pil(image: Image.Image, spec: BackboneSpec) -> np.ndarray:
    """A PIL image (any size, RGB) -> (3, input_size, input_size) float32, normalized for ``spec``."""
    return normalize_array(np.asarray(resize_and_crop(image, spec)), spec)


def preprocess_batch(images: Sequence[Image.Image], spec: BackboneSpec) -> np.ndarray:
    """Several PIL images -> (N, 3, H, W) float32."""
    size = spec.input_size
    batch = np.empty((len(images), 3, size, size), dtype=np.float32)
    for index, image in enumerate(images):
        batch[index] = preprocess_pil(image, spec)
    return batch


def decode_for_model(data: bytes, spec: BackboneSpec) -> Image.Image:
    """Decode image bytes just large enough for ``spec`` (JPEG DCT scaling), RGB and EXIF-upright.

    Raises ImageDecodeError(reason) for bytes that are not a readable image.
    """
    try:
        # No ``with``: closing would discard the decoded pixels, and an in-memory file needs no closing.
        image = Image.open(io.BytesIO(data))
        if image.format in ("JPEG", "MPO"):
            image.draft("RGB", (spec.resize_size, spec.resize_size))
        image.load()
        if image.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1):
            image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except Exception:  # let the careful importer-grade decoder name the reason (or succeed)
        try:
            return decode_image(data)
        except ImageDecodeError:
            raise
        except Exception as exc:
            raise ImageDecodeError(f"cannot decode image ({exc})") from None


def preprocess_bytes(data: bytes, spec: BackboneSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Image bytes -> (3, H, W) float32 network input (into ``out`` when given); ImageDecodeError for
    unreadable bytes."""
    return normalize_array(np.asarray(resize_and_crop(decode_for_model(data, spec), spec)), spec, out)
