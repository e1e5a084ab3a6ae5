"""Demo project: handwritten digits from scikit-learn, upscaled, two camera sources, partly labeled."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.images.demo import DEMO_CAMERAS, DEMO_IMAGE_SIDE, build_demo_project, demo_items
from engine.runtime.jobs import JobContext
from storage import catalog
from storage.images import list_images, project_summary, read_image_bytes
from storage.project import open_project


def test_demo_project_has_ten_classes_two_sources_and_about_30_percent_labeled(tmp_path):
    path = tmp_path / "digits.sortlab"
    report = build_demo_project(JobContext(), path, n_images=120, labeled_fraction=0.3)
    assert report.imported == 120 and report.failed == []
    with open_project(path) as project:
        summary = project_summary(project)
        classes = catalog.list_classes(project)
        assert [c.name for c in classes] == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"]
        assert all(c.shortcut == c.name for c in classes)  # each digit is labeled by its own key
        assert summary.images == 120
        assert 0.25 <= summary.labeled / summary.images <= 0.4
        assert all(count > 0 for count in summary.classes.values())
        assert summary.sources == {name: 60 for name in DEMO_CAMERAS}
        infos = list_images(project)
        assert {(i.width, i.height) for i in infos} == {(DEMO_IMAGE_SIDE, DEMO_IMAGE_SIDE)}
        image = Image.open(io.BytesIO(read_image_bytes(project, [infos[0].id])[infos[0].id]))
        assert image.mode == "RGB"


def test_demo_images_look_like_dark_digits_on_paper_and_are_reproducible():
    first = demo_items(n_images=20, seed=3)
    again = demo_items(n_images=20, seed=3)
    assert [i.data for i in first] == [i.data for i in again]
    assert len({i.data for i in first}) == 20  # all distinct, so none is skipped as a duplicate
    pixels = np.asarray(Image.open(io.BytesIO(first[0].data)).convert("L"), dtype=float)
    border = np.concatenate([pixels[:4].ravel(), pixels[-4:].ravel()])
    assert border.mean() > 180  # paper around the digit
    assert pixels.min() < 110  # ink somewhere


def test_existing_file_is_not_overwritten(tmp_path):
    path = tmp_path / "taken.sortlab"
    path.write_bytes(b"something precious")
    with pytest.raises(Exception, match="already exists"):
        build_demo_project(JobContext(), path, n_images=10)
    assert path.read_bytes() == b"something precious"
