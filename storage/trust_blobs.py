"""Bounds on what one stored item may make Sortlab allocate; each refusal is per item, with its reason.

A project from someone else may hold an image blob of absurd size (or a record header claiming one),
or model weights whose tensors do not fit the model's own description. Reads go through here:

- image bytes and thumbnails: ``length()`` is asked first (SQLite answers from the record header,
  without loading the value); a value over its limit is left out, so is a picture whose header
  declares more pixels than its limit (read with Pillow, before anything decodes it), and so is a
  row SQLite cannot read (a damaged record), instead of failing the whole batch;
- model weights: the stored size is asked first, then the safetensors header is parsed here (each
  tensor's byte range must hold exactly its dtype and shape) and the shapes must agree with the
  version's class list and with each other.

Left-out items are logged and kept in ``refusals(project)`` for whoever wants to show them
(``sortlab check`` reports them all); everything else in the project stays usable.
"""

from __future__ import annotations

import io
import json
import logging
import re
import struct
import threading
import warnings
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from PIL import Image as PILImage
from sqlalchemy import case, func, select
from sqlalchemy.exc import DatabaseError

from storage.chunks import in_list_chunks
from storage.errors import ProjectError
from storage.models import Image, ModelVersion

log = logging.getLogger(__name__)

MB = 1 << 20
MAX_IMAGE_BYTES = 100 * MB  # stored images are normalized JPEGs of a few hundred kB
MAX_THUMBNAIL_BYTES = 4 * MB  # thumbnails are 160-pixel JPEGs of a few kB
MAX_THUMBNAIL_PIXELS = 1024 * 1024  # ... so one that decodes to more was not made by Sortlab
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's decompression-bomb limit, which the importer applies too
MAX_WEIGHTS_BYTES = 512 * MB  # the largest network Sortlab fine-tunes (ConvNeXt-Tiny) is ~110 MB of float32
MAX_SAFETENSORS_HEADER = 16 * MB
_KEPT_REFUSALS = 1000


class UnusableModelError(ProjectError):
    """A stored model version whose weights cannot be used (too large, damaged, or not matching)."""


@dataclass(frozen=True)
class Refusal:
    """One stored item Sortlab would not load: ``what`` ('image', 'thumbnail', 'model'), its id, why."""

    what: str
    item_id: int
    reason: str

    def message(self) -> str:
        return f"{self.what} {self.item_id} was skipped: {self.reason}."


_REFUSALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_REFUSALS_LOCK = threading.Lock()


def refusals(project) -> list[Refusal]:
    """The items refused since the project was opened (the newest last, at most 1,000)."""
    with _REFUSALS_LOCK:
        return list(_REFUSALS.get(project, {}).values())


def _refuse(project, refusal: Refusal) -> None:
    with _REFUSALS_LOCK:
        kept = _REFUSALS.setdefault(project, {})
        if (refusal.what, refusal.item_id) not in kept:
            log.warning("%s: %s", project.name, refusal.message())
        kept[(refusal.what, refusal.item_id)] = refusal
        while len(kept) > _KEPT_REFUSALS:
            kept.pop(next(iter(kept)))


def size_reason(size: int, limit: int) -> str:
    return f"it is stored as {size / MB:,.0f} MB, over the limit of {limit // MB} MB"


def declared_size(blob: bytes) -> tuple[int, int] | None:
    """The width and height an image's header declares (nothing is decoded); None when Pillow does not
    recognize the bytes (the decoder downstream then names the reason)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the bomb warning: the caller applies its own limit
            with PILImage.open(io.BytesIO(blob)) as image:
                return image.size
    except PILImage.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels", str(exc))
        pixels = int(found.group(1)) if found else 1 << 40
        return pixels, 1
    except Exception:
        return None


def read_bounded_images(project, column, ids: Iterable[int], limit: int, what: str,
                        max_pixels: int) -> dict[int, bytes]:
    """``Image.id -> column`` for the given ids, leaving out (and recording) values over ``limit`` bytes,
    pictures whose header declares more than ``max_pixels`` (checked before anything decodes them) and
    rows SQLite cannot read; unknown ids are left out silently."""
    found: dict[int, bytes] = {}
    stored_length = func.length(column)
    with project.session() as session:
        for chunk in in_list_chunks(ids):
            query = select(Image.id, stored_length, case((stored_length <= limit, column), else_=None)
                           ).where(Image.id.in_(chunk))
            try:
                rows = session.execute(query).all()
            except DatabaseError:  # one damaged record fails the whole statement: read one by one
                session.rollback()
                rows = []
                for image_id in chunk:
                    try:
                        rows.extend(session.execute(query.where(Image.id == image_id)).all())
                    except DatabaseError as exc:
                        session.rollback()
                        _refuse(project, Refusal(what, int(image_id), f"its stored record is damaged ({_short(exc)})"))
            for image_id, stored_size, value in rows:
                declared = declared_size(value) if value is not None else None
                if declared is not None and declared[0] * declared[1] > max_pixels:
                    _refuse(project, Refusal(what, int(image_id), f"its header declares {declared[0]}x{declared[1]} "
                                             f"pixels, over the limit of {max_pixels:,}"))
                elif value is not None:
                    found[image_id] = value
                elif stored_size is not None and stored_size > limit:
                    _refuse(project, Refusal(what, int(image_id), size_reason(stored_size, limit)))
    return found


def _short(exc: Exception) -> str:
    return " ".join(str(getattr(exc, "orig", None) or exc).split())[:120]


# -- model weights -------------------------------------------------------------------------------------

_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def safetensors_header(blob: bytes) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """The tensors a safetensors blob declares (name -> (dtype, shape)) and its metadata, read from the
    header alone; ValueError when the header does not describe the blob exactly."""
    if len(blob) < 8:
        raise ValueError("not a safetensors file (too short)")
    (length,) = struct.unpack_from("<Q", blob, 0)
    if length > min(MAX_SAFETENSORS_HEADER, len(blob) - 8):
        raise ValueError("not a safetensors file (its header length is out of range)")
    try:
        header = json.loads(bytes(blob[8:8 + length]))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file (unreadable header)")
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    body = len(blob) - 8 - length
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(int(n) for n in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name!r} is described incompletely") from None
        count = 1
        for n in shape:
            if n < 0:
                raise ValueError(f"tensor {name!r} has a negative size")
            count *= n
        if dtype not in _DTYPE_BYTES or not (0 <= start <= end <= body) or end - start != count * _DTYPE_BYTES[dtype]:
            raise ValueError(f"tensor {name!r} claims {shape} of {dtype}, which its bytes do not hold")
        tensors[name] = (dtype, shape)
    return tensors, metadata if isinstance(metadata, dict) else {}


def weights_mismatch(tensors: dict[str, tuple[str, tuple[int, ...]]], metadata: dict[str, str],
                     n_classes: int) -> str | None:
    """Why a model's tensors do not match its own description (None when they do)."""
    kind = metadata.get("format", "")
    shapes = {name: shape for name, (_dtype, shape) in tensors.items()}
    if kind == "sortlab-linear-1":
        missing = {"classes", "mean", "scale", "coef", "intercept"} - set(shapes)
        if missing:
            return f"its weights lack {', '.join(sorted(missing))}"
        coef, classes = shapes["coef"], shapes["classes"]
        if len(coef) != 2 or classes != (n_classes,):
            return f"its weights hold {classes[0] if len(classes) == 1 else classes} classes, but it names {n_classes}"
        rows, dim = coef
        if rows not in (n_classes, 1) or shapes["intercept"] != (rows,):
            return f"its weights have {rows} output rows for {n_classes} classes"
        if shapes["mean"] != (dim,) or shapes["scale"] != (dim,):
            return f"its weights disagree on the feature size ({dim} vs {shapes['mean']})"
    elif kind == "sortlab-finetune-1":
        head = shapes.get("head.weight")
        if head is None or len(head) != 2 or head[0] != n_classes or shapes.get("head.bias") != (n_classes,):
            return f"its network's last layer is {head}, not one output per class ({n_classes})"
    return None


def vet_weights(blob: bytes, n_classes: int, version: int) -> bytes:
    """The blob itself when it may be loaded, else UnusableModelError naming the version and the reason."""
    reason = None
    if len(blob) > MAX_WEIGHTS_BYTES:
        reason = size_reason(len(blob), MAX_WEIGHTS_BYTES)
    else:
        try:
            reason = weights_mismatch(*safetensors_header(blob), n_classes)
        except ValueError as exc:
            reason = str(exc)
    if reason:
        raise UnusableModelError(f"Model version {version} cannot be used: {reason}. "
                                 "Train again, or choose another version.")
    return blob


def read_vetted_weights(session, version: int) -> bytes | None:
    """A model version's weights (None when there is no such version), its stored size checked before
    the bytes are loaded and its tensors checked against its class list (UnusableModelError)."""
    row = session.execute(select(func.length(ModelVersion.weights), ModelVersion.class_names)
                          .where(ModelVersion.id == int(version))).first()
    if row is None or row[0] is None:
        return None
    if row[0] > MAX_WEIGHTS_BYTES:
        raise UnusableModelError(f"Model version {version} cannot be used: {size_reason(row[0], MAX_WEIGHTS_BYTES)}. "
                                 "Train again, or choose another version.")
    blob = session.scalar(select(ModelVersion.weights).where(ModelVersion.id == int(version)))
    return None if blob is None else vet_weights(blob, len(row[1] or []), version)


def refusal_reason(project, what: str, item_id: int) -> str | None:
    """Why this item was refused since the project was opened (None when it was not)."""
    with _REFUSALS_LOCK:
        refusal = _REFUSALS.get(project, {}).get((what, int(item_id)))
    return refusal.reason if refusal is not None else None
