"""Bad and unusual input: each broken file gets a clear reason and the import goes on; unusual but
valid formats and modes import correctly. Every file is made on the fly."""

from __future__ import annotations

import io
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.images.imaging import ImageDecodeError, load_stored_image, normalize_image, open_image_file
from engine.images.importing import batch_source, import_paths
from engine.runtime.jobs import JobContext
from storage.images import list_images, read_image_bytes

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise_jpeg(seed: int = 0, size=(64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    return encoded(Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)), "JPEG")


def halves(left, right, mode="RGBA", size=(32, 16)) -> Image.Image:
    """Left half one colour, right half another (colours given in ``mode``)."""
    image = Image.new(mode, size, left)
    image.paste(Image.new(mode, (size[0] // 2, size[1]), right), (size[0] // 2, 0))
    return image


def stored_halves(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Colours in the middle of the left and right halves of what Sortlab would store."""
    normalized = normalize_image(data)
    image = load_stored_image(normalized.data)
    assert image.mode == "RGB"
    pixels = np.asarray(image, dtype=int)
    height, width = pixels.shape[:2]
    return pixels[height // 2, width // 4], pixels[height // 2, 3 * width // 4]


def assert_close(actual, expected, tolerance=14):
    assert np.abs(np.asarray(actual) - np.asarray(expected)).max() <= tolerance, (actual, expected)


def palette_png_with_transparent_left() -> bytes:
    image = Image.new("P", (32, 16), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * (254 * 3))
    image.paste(1, (16, 0, 32, 16))
    return encoded(image, "PNG", transparency=0)


def animated_gif_red_then_blue() -> bytes:
    frames = [Image.new("RGB", (32, 16), color).convert("P") for color in (RED, BLUE)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


VALID_INPUTS = {
    "rgba png, transparent left on white": (lambda: encoded(halves((0, 0, 0, 0), BLUE + (255,)), "PNG"), WHITE, BLUE),
    "la png": (lambda: encoded(halves((0, 0), (0, 255), mode="LA"), "PNG"), WHITE, (0, 0, 0)),
    "palette png": (lambda: encoded(halves(RED, GREEN, "RGB").convert("P"), "PNG"), RED, GREEN),
    "palette png with transparency": (palette_png_with_transparent_left, WHITE, GREEN),
    "grayscale jpeg": (lambda: encoded(halves(30, 220, "L"), "JPEG", quality=95), (30,) * 3, (220,) * 3),
    "1-bit png": (lambda: encoded(halves(0, 1, "1"), "PNG"), (0, 0, 0), WHITE),
    "cmyk jpeg": (lambda: encoded(halves((0, 255, 255, 0), (255, 255, 0, 0), "CMYK"), "JPEG", quality=95), RED, BLUE),
    "cmyk tiff": (lambda: encoded(halves((0, 255, 255, 0), (255, 255, 0, 0), "CMYK"), "TIFF"), RED, BLUE),
    # 16-bit: mid-grey 32768 must become ~128 (scaled), not 255 (clipped).
    "16-bit png": (lambda: encoded(Image.fromarray(np.tile(np.array([[1000] * 16 + [32768] * 16], np.uint16), (16, 1))),
                                   "PNG"), (4,) * 3, (128,) * 3),
    "16-bit tiff": (lambda: encoded(Image.fromarray(np.tile(np.array([[65535] * 16 + [32768] * 16], np.uint16), (16, 1))),
                                    "TIFF"), WHITE, (128,) * 3),
    "webp": (lambda: encoded(halves(RED, GREEN, "RGB"), "WEBP", lossless=True), RED, GREEN),
    "bmp": (lambda: encoded(halves(RED, GREEN, "RGB"), "BMP"), RED, GREEN),
    "tiff": (lambda: encoded(halves(RED, GREEN, "RGB"), "TIFF"), RED, GREEN),
    "animated gif, first frame": (animated_gif_red_then_blue, RED, RED),
}


@pytest.mark.parametrize("kind", list(VALID_INPUTS))
def test_unusual_but_valid_images_normalize_to_the_right_colours(kind):
    make, expected_left, expected_right = VALID_INPUTS[kind]
    left, right = stored_halves(make())
    assert_close(left, expected_left)
    assert_close(right, expected_right)


def truncated(data: bytes) -> bytes:
    return data[: int(len(data) * 0.6)]


def test_truncated_files_are_refused_even_on_the_jpeg_fast_path():
    small_baseline_jpeg = noise_jpeg()
    normalize_image(small_baseline_jpeg)  # fine whole
    for data in (truncated(small_baseline_jpeg), truncated(encoded(halves(RED, GREEN, "RGB"), "PNG"))):
        with pytest.raises(ImageDecodeError, match="truncated"):
            normalize_image(data)


@pytest.mark.parametrize("pixels", [1600, 2500], ids=["over the limit (Pillow warns)", "over twice the limit (Pillow errors)"])
def test_decompression_bombs_are_refused(monkeypatch, pixels):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    side = int(pixels ** 0.5)
    data = encoded(Image.new("RGB", (side, side), RED), "PNG")
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        normalize_image(data)


def test_every_bad_file_is_reported_and_the_import_goes_on(project, tmp_path, monkeypatch):
    folder = tmp_path / "mixed bag"
    folder.mkdir()
    (folder / "good één.jpg").write_bytes(noise_jpeg(1))
    (folder / "text pretending.jpg").write_text("hello, I am not a picture")
    (folder / "cut off.jpg").write_bytes(truncated(noise_jpeg(2)))
    (folder / "empty.png").write_bytes(b"")
    (folder / "huge.png").write_bytes(encoded(Image.new("RGB", (100, 100), RED), "PNG"))
    (folder / "locked.jpg").write_bytes(noise_jpeg(3))
    os.symlink(tmp_path / "gone.jpg", folder / "dangling.jpg")
    (folder / "readme.txt").write_text("skipped silently")
    (folder / "Thumbs.db").write_bytes(b"\x00")
    named_text_file = tmp_path / "notes.txt"
    named_text_file.write_text("named explicitly, so it gets a reason")
    _make_unreadable(folder / "locked.jpg", monkeypatch)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # the good 64x48 JPEG stays under it

    report = import_paths(JobContext(), project, [folder, named_text_file, tmp_path / "missing.jpg"])

    reasons = {Path(f.path).name: f.reason for f in report.failed}
    assert report.imported == 1 and report.skipped == 2
    assert [info.original_name for info in list_images(project)] == ["good één.jpg"]
    assert "not an image" in reasons["text pretending.jpg"]
    assert "truncated" in reasons["cut off.jpg"]
    assert "empty file" in reasons["empty.png"]
    assert "decompression bomb" in reasons["huge.png"]
    assert "permission denied" in reasons["locked.jpg"]
    assert "broken link" in reasons["dangling.jpg"]
    assert "not an image" in reasons["notes.txt"]
    assert "not found" in reasons["missing.jpg"]
    assert len(reasons) == 8


def _make_unreadable(path: Path, monkeypatch) -> None:
    """chmod 000 where that works; root reads anything, so there the read itself is made to fail."""
    if os.geteuid() != 0:
        path.chmod(0)
        return
    real_read_bytes = Path.read_bytes

    def read_bytes(self):
        if self.name == path.name:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)


def test_all_valid_kinds_import_together_with_odd_names(project, tmp_path):
    folder = tmp_path / "odd names ü 日本"
    folder.mkdir()
    for index, (kind, (make, _, _)) in enumerate(VALID_INPUTS.items()):
        extension = {"webp": ".webp", "bmp": ".bmp", "tiff": ".tif", "cmyk tiff": ".tiff", "16-bit tiff": ".tiff"}.get(
            kind, ".gif" if "gif" in kind else ".jpg" if "jpeg" in kind else ".png")
        (folder / f"{index:02d} {kind}{extension}").write_bytes(make())
    when = datetime(2026, 12, 1, 21, 40)
    report = import_paths(JobContext(), project, [folder], imported_at=when)
    assert report.failed == [] and report.imported == len(VALID_INPUTS)
    infos = list_images(project)
    assert {info.source for info in infos} == {batch_source("odd names ü 日本", when)}
    stored = read_image_bytes(project, [info.id for info in infos])
    assert all(Image.open(io.BytesIO(data)).mode == "RGB" for data in stored.values())


def test_open_image_file_gives_upright_rgb_or_a_reason(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (5, 3), 90).save(path)
    image = open_image_file(path)
    assert (image.mode, image.size) == ("RGB", (5, 3))
    with pytest.raises(ImageDecodeError, match="is a folder"):
        open_image_file(tmp_path)
    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(ImageDecodeError, match="not a regular file"):  # must not block reading it
        open_image_file(tmp_path / "pipe.jpg")
