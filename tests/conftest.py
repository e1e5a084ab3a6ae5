"""Shared fixtures. Tests run headless; data-dependent tests skip cleanly without ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO_ROOT = Path(__file__).resolve().parent.parent
HYMENOPTERA_DIR = REPO_ROOT.parent / "shared" / "data" / "hymenoptera"


@pytest.fixture
def hymenoptera_dir() -> Path:
    if not (HYMENOPTERA_DIR / "train").is_dir():
        pytest.skip("../shared/data/hymenoptera is not present")
    return HYMENOPTERA_DIR


@pytest.fixture
def project(tmp_path):
    """A fresh, empty project at head revision."""
    from storage.project import create_project

    opened = create_project(tmp_path / "test.sortlab")
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """ONNX copies go to the session's temp folder, shared by every module that uses this fixture
    (autouse there), so each backbone is exported once per test session."""
    folder = tmp_path_factory.getbasetemp() / "sortlab-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SORTLAB_CACHE_DIR", str(folder))
        patch.delenv("SORTLAB_RUNTIME", raising=False)
        yield folder
