"""A demo project from scikit-learn's bundled handwritten digits, so a newcomer sees the whole
loop (label, train, review suggestions) with no data of their own and no network.

Each 8x8 digit is upscaled smoothly to 96x96 and "photographed" by one of two simulated cameras
(different paper tint, ink colour, noise and a small random rotation/shift), which also gives the
``source`` tags something to show. About 30% of each class is labeled, picked at random. The
classes are ordered as the keyboard's number row, so key 7 labels "7" and key 0 labels "0".
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from engine.images.importing import ImportItem, ImportReport, import_items
from engine.runtime.jobs import JobContext
from storage.catalog import ensure_classes
from storage.project import Project, create_project

DEMO_IMAGE_COUNT = 800
DEMO_IMAGE_SIDE = 96
DEMO_LABELED_FRACTION = 0.3
# In the keyboard's order (1..9, then 0): class shortcut keys follow the class order, so each digit
# is labeled by its own key.
DEMO_CLASSES = [str(digit) for digit in (*range(1, 10), 0)]

# name -> (paper RGB, ink RGB, noise sigma, blur radius)
DEMO_CAMERAS = {
    "camera-a": ((244, 245, 248), (25, 30, 70), 4.0, 0.0),
    "camera-b": ((232, 220, 192), (70, 45, 25), 9.0, 0.8),
}


def _render_digit(pixels: np.ndarray, camera: str, rng: np.random.Generator) -> bytes:
    """One 8x8 digit (values 0..16) as a 96x96 RGB PNG as the given camera would see it."""
    paper, ink, noise_sigma, blur = DEMO_CAMERAS[camera]
    # A one-pixel margin keeps strokes off the edge, so rotation never shows a cut-off stroke.
    padded = np.pad(pixels, 1)
    darkness = Image.fromarray(np.clip(padded * (255.0 / 16.0), 0, 255).astype(np.uint8), "L")
    big = darkness.resize((DEMO_IMAGE_SIDE, DEMO_IMAGE_SIDE), Image.Resampling.BICUBIC)
    shift = rng.uniform(-5, 5, size=2)
    big = big.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BICUBIC,
                     translate=(float(shift[0]), float(shift[1])), fillcolor=0)
    if blur:
        big = big.filter(ImageFilter.GaussianBlur(blur))
    colored = ImageOps.colorize(ImageOps.invert(big), black=ink, white=paper)
    noisy = np.asarray(colored, dtype=np.float32) + rng.normal(0, noise_sigma, (DEMO_IMAGE_SIDE, DEMO_IMAGE_SIDE, 1))
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def demo_items(
    n_images: int = DEMO_IMAGE_COUNT, labeled_fraction: float = DEMO_LABELED_FRACTION, seed: int = 0
) -> list[ImportItem]:
    """Rendered demo images with their source tags; a random ``labeled_fraction`` of each class is labeled."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(digits.target))[: min(n_images, len(digits.target))]
    targets = digits.target[chosen]
    labeled_positions: set[int] = set()
    for digit in range(10):
        positions = np.flatnonzero(targets == digit)
        count = math.ceil(len(positions) * labeled_fraction)
        labeled_positions.update(int(p) for p in rng.choice(positions, size=count, replace=False))
    cameras = list(DEMO_CAMERAS)
    items = []
    for position, index in enumerate(chosen):
        camera = cameras[position % len(cameras)]
        items.append(
            ImportItem(
                path=f"sklearn-digits/{camera}/digit-{index:04d}.png",
                source=camera,
                class_name=str(targets[position]) if position in labeled_positions else None,
                data=_render_digit(digits.images[index], camera, rng),
            )
        )
    return items


def add_demo_images(
    context: JobContext,
    project: Project,
    *,
    n_images: int = DEMO_IMAGE_COUNT,
    labeled_fraction: float = DEMO_LABELED_FRACTION,
    seed: int = 0,
) -> ImportReport:
    """Add the demo digits (classes "1".."9", "0", partly labeled) to an open project."""
    context.progress(0.0, "Drawing demo digits...")
    ensure_classes(project, DEMO_CLASSES)  # all ten, in order, even if a class got no label
    items = demo_items(n_images, labeled_fraction, seed)
    return import_items(context.subcontext(0.1, 1.0), project, items)


def build_demo_project(
    context: JobContext,
    path: str | os.PathLike,
    *,
    n_images: int = DEMO_IMAGE_COUNT,
    labeled_fraction: float = DEMO_LABELED_FRACTION,
    seed: int = 0,
) -> ImportReport:
    """Create a new project file at ``path`` holding the demo digits. A cancelled build ends with
    JobCancelled (see ``import_items``), leaving the file with the digits imported so far."""
    with create_project(path) as project:
        return add_demo_images(context, project, n_images=n_images, labeled_fraction=labeled_fraction, seed=seed)
