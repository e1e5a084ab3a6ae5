"""Shared bits of the proof tests (crash, fuzz, soak): image checks and a count reporter."""

from __future__ import annotations

import io
import json
import sqlite3
from collections import Counter
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]


def report_counts(request, title: str, counts: dict) -> None:
    """Show counts in pytest's output (visible with -q too) so the closing note can quote them."""
    text = json.dumps(counts, sort_keys=True, default=lambda o: dict(o) if isinstance(o, Counter) else str(o))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:  # pragma: no cover - pytest without its terminal
        print(f"[{title}] {text}")
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n[{title}] {text}")


def incomplete_image_rows(db_path: Path, after_id: int = 0) -> list[str]:
    """Problems with image rows (id > after_id): empty or undecodable data/thumbnail, wrong size.

    Reads the file with plain sqlite3 so the check does not depend on Sortlab's own code.
    """
    problems: list[str] = []
    connection = sqlite3.connect(str(db_path))
    try:
        rows = connection.execute(
            "SELECT id, data, thumbnail, width, height, content_hash FROM images WHERE id > ? ORDER BY id",
            (after_id,),
        ).fetchall()
    finally:
        connection.close()
    for image_id, data, thumbnail, width, height, content_hash in rows:
        if not content_hash:
            problems.append(f"image {image_id}: no content hash")
        if not width or not height or width <= 0 or height <= 0:
            problems.append(f"image {image_id}: size {width}x{height}")
        for column, blob in (("data", data), ("thumbnail", thumbnail)):
            if not blob:
                problems.append(f"image {image_id}: empty {column}")
                continue
            try:
                with Image.open(io.BytesIO(blob)) as decoded:
                    decoded.load()
                    size = decoded.size
            except Exception as exc:
                problems.append(f"image {image_id}: {column} does not decode ({exc})")
                continue
            if column == "data" and size != (width, height):
                problems.append(f"image {image_id}: data is {size}, row says {width}x{height}")
            if column == "thumbnail" and max(size) > max(width, height, 160):
                problems.append(f"image {image_id}: thumbnail {size} larger than the image")
    return problems


def max_image_id(db_path: Path) -> int:
    connection = sqlite3.connect(str(db_path))
    try:
        return connection.execute("SELECT coalesce(max(id), 0) FROM images").fetchone()[0]
    finally:
        connection.close()
