"""Reading, decoding and normalizing image files, with one clear reason for each failure.

Every image Sortlab stores is RGB, EXIF-upright, at most ``max_side`` pixels on its longer side,
encoded as JPEG, with a small JPEG thumbnail beside it. Pillow's decompression-bomb limit
(``Image.MAX_IMAGE_PIXELS``) is enforced as an error, and truncated files are errors too
(``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off), so nothing half-decoded ever gets in.
Pillow releases the GIL while decoding, so these functions are meant to run in a thread pool.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

THUMBNAIL_SIDE = 160
DEFAULT_MAX_SIDE = 1024
JPEG_QUALITY = 90
THUMBNAIL_QUALITY = 85
# Bytes are read whole before decoding; refuse what cannot be a sane image rather than fill memory.
MAX_FILE_BYTES = 1 << 30
EXIF_ORIENTATION = 0x0112
WHITE = (255, 255, 255)

# Extensions Pillow can open, less formats that are stubs, vector, video or scientific data.
_NOT_PHOTOS = {".bufr", ".grib", ".h5", ".hdf", ".fit", ".fits", ".mpeg", ".mpg", ".ps", ".eps", ".wmf", ".emf"}
IMAGE_EXTENSIONS = frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN and ext not in _NOT_PHOTOS
)

# warnings.catch_warnings is process-global: serialize our uses of it across decoder threads.
_OPEN_LOCK = threading.Lock()


class ImageDecodeError(Exception):
    """A file that cannot become a Sortlab image; ``reason`` is one short phrase for the user."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class NormalizedImage:
    """Bytes ready to store: normalized JPEG, thumbnail JPEG, size after normalization."""

    data: bytes = field(repr=False)
    thumbnail: bytes = field(repr=False)
    width: int
    height: int
    original_format: str


def has_image_extension(path: str | os.PathLike) -> bool:
    """Whether a file found in a folder looks like an image worth trying (by its extension)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_image_file(path: str | os.PathLike) -> bytes:
    """The file's bytes, or ImageDecodeError saying why it cannot be read."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ImageDecodeError(f"broken link (it points to {os.readlink(path)}, which does not exist)")
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ImageDecodeError("is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):  # a pipe or device would block or never end
            raise ImageDecodeError("not a regular file")
        size = info.st_size
        if size > MAX_FILE_BYTES:
            raise ImageDecodeError(f"file too large ({size / 2**20:.0f} MiB; the limit is {MAX_FILE_BYTES >> 20} MiB)")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except PermissionError:
        raise ImageDecodeError("unreadable: permission denied") from None
    except OSError as exc:
        raise ImageDecodeError(f"unreadable: {exc.strerror or exc}") from None
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    return data


def _open(data: bytes) -> Image.Image:
    """Identify the image (header only), with Pillow's bomb warning raised as an error."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (unrecognized file format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"possible decompression bomb: {exc}") from None
    except Exception as exc:  # a header Pillow recognizes but cannot parse (e.g. cut-off WebP)
        raise ImageDecodeError(_failure_reason(exc)) from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        # Code outside this module may swap the warning filters from another thread; the limit still holds.
        raise ImageDecodeError(
            f"possible decompression bomb: {image.width}x{image.height} pixels is over Pillow's limit of {limit}"
        )
    return image


def _failure_reason(exc: Exception) -> str:
    text = str(exc).strip()
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return "truncated image (the file ends before the image data does)"
    return f"cannot decode image; the file may be damaged ({text or exc.__class__.__name__})"


def _orientation(image: Image.Image) -> int:
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data" is not the user's problem here
            return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # unreadable EXIF: treat as upright rather than refuse the picture
        return 1


def _upright(image: Image.Image) -> Image.Image:
    if _orientation(image) in (1, 0):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF must not lose the picture
        return image


def _wide_grayscale_to_l(image: Image.Image) -> Image.Image:
    """16-bit/32-bit/float grayscale to 8-bit by scaling, not clipping (Pillow's convert clips)."""
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
    """RGB for any Pillow mode: alpha is composited on white, wide grayscale is rescaled."""
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


def decode_image(data: bytes) -> Image.Image:
    """Fully decoded RGB image, EXIF-upright (first frame of animations)."""
    image = _open(data)
    try:
        image.load()
        return to_rgb(_upright(image))
    except Exception as exc:  # any decoder failure is a reason for the user, never a crash
        raise ImageDecodeError(_failure_reason(exc)) from None


def open_image_file(path: str | os.PathLike) -> Image.Image:
    """Read and decode a file into an RGB, EXIF-upright image, or raise ImageDecodeError(reason)."""
    return decode_image(read_image_file(path))


def load_stored_image(data: bytes) -> Image.Image:
    """Decode bytes Sortlab stored (already normalized JPEG) into an RGB image."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB") if image.mode != "RGB" else image.copy()


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _thumbnail_bytes(image: Image.Image) -> bytes:
    thumbnail = image.copy() if max(image.size) > THUMBNAIL_SIDE else image
    thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BICUBIC)
    return _encode_jpeg(thumbnail, THUMBNAIL_QUALITY)


def _is_storable_as_is(image: Image.Image, max_side: int) -> bool:
    """A baseline RGB JPEG, small enough and upright, needs no re-encoding (keeps it lossless too)."""
    return (
        image.format == "JPEG"
        and image.mode == "RGB"
        and not image.info.get("progressive")
        and not image.info.get("progression")
        and max(image.size) <= max_side
        and _orientation(image) in (0, 1)
    )


def normalize_image(data: bytes, max_side: int = DEFAULT_MAX_SIDE) -> NormalizedImage:
    """Turn a file's bytes into what Sortlab stores, or raise ImageDecodeError(reason)."""
    image = _open(data)
    original_format = (image.format or "unknown").upper()
    try:
        if _is_storable_as_is(image, max_side):
            width, height = image.size
            # Decoding at 1/2..1/8 scale (JPEG DCT scaling) is fast and still reads the whole
            # file, so a truncated JPEG is caught here too.
            image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            image.load()
            return NormalizedImage(data, _thumbnail_bytes(image), width, height, original_format)
        if image.format in ("JPEG", "MPO") and max(image.size) > max_side:
            image.draft(None, (max_side, max_side))
        image.load()
        rgb = to_rgb(_upright(image))
        if max(rgb.size) > max_side:
            rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return NormalizedImage(
            _encode_jpeg(rgb, JPEG_QUALITY), _thumbnail_bytes(rgb), rgb.width, rgb.height, original_format
        )
    except Exception as exc:  # any decoder failure is a reason for the user, never a crash
        raise ImageDecodeError(_failure_reason(exc)) from None
