"""Shared fixtures. Tests run headless; data-dependent tests skip cleanly without ../shared/data.

Every test runs with Sortlab's ONNX cache in this session's temp folder (never the user's cache),
with no shipped ONNX copies (whatever a packaging build left in the checkout), and with no network
loaded by an earlier test, so no test depends on which ran first.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO_ROOT = Path(__file__).resolve().parent.parent
HYMENOPTERA_DIR = REPO_ROOT.parent / "shared" / "data" / "hymenoptera"

# The same examples on every run, nothing kept in .hypothesis/, and a deadline that catches a decoder
# that hangs but never a busy 2-core machine (examples normally take milliseconds to a second).
settings.register_profile(
    "sortlab", deadline=timedelta(seconds=30), derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("sortlab")


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


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    """The session's ``SORTLAB_CACHE_DIR``: each backbone's ONNX copy (tens of seconds to export and
    verify) is made once per session and then reused by every test."""
    return tmp_path_factory.mktemp("sortlab-cache", numbered=False)


@pytest.fixture(scope="session", autouse=True)
def _session_model_folders(onnx_cache, tmp_path_factory):
    """Session scope, so that module- and session-scoped fixtures that extract features (they run
    before any function-scoped fixture) also never touch the user's cache. Child processes inherit it."""
    from engine.features.runners import RUNTIME_ENV
    from engine.features.onnx_backend import CACHE_ENV, SHIPPED_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(onnx_cache))
        patch.setenv(SHIPPED_ENV, str(tmp_path_factory.mktemp("no-shipped-onnx")))
        patch.delenv(RUNTIME_ENV, raising=False)
        yield


@pytest.fixture(autouse=True)
def _fresh_feature_runners():
    """Each test loads its networks from the cache it sees (reloading a cached ONNX copy takes ~0.1 s)."""
    from engine.features.extraction import forget_runners

    forget_runners()
    yield
    forget_runners()
