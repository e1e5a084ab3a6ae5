"""Two processes labeling the same 1,000 images of a team project at once: no label lost or duplicated,
and a complete history (every change an event, each event's previous class the one before it, the
last event's class the label now, each naming the database user who made it)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import select

from helpers.feature_projects import add_placeholder_images
from helpers.pg_server import pg_server, pg_url  # noqa: F401  (fixtures)
from storage import catalog
from storage.models import Label, LabelEvent
from storage.project import create_project, open_project

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import team as team_bench  # noqa: E402


def _two_labelers(pg_server, url: str) -> list[str]:  # noqa: F811
    """Two database roles allowed to label (this test is about concurrency; roles have their own test)."""
    names = [f"labeler_{uuid.uuid4().hex[:6]}" for _ in range(2)]
    database = url.split("/")[3].split("?")[0]
    for name in names:
        pg_server.psql(f'CREATE ROLE "{name}" LOGIN')
        pg_server.psql(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{name}"; '
                       f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{name}"', database=database)
    return [pg_server.url(database, name) for name in names]


def _check_history(url: str, results: list[dict]) -> None:
    with open_project(url) as project, project.session() as session:
        labels = {row.image_id: row.class_id for row in session.scalars(select(Label))}
        events = session.scalars(select(LabelEvent).order_by(LabelEvent.id)).all()
    assert sum(r["changes"] for r in results) == len(events)  # every change recorded once, nothing else
    by_image = defaultdict(list)
    for event in events:
        by_image[event.image_id].append(event)
    for image, chain in by_image.items():
        previous = None
        for event in chain:
            assert event.previous_class_id == previous, f"image {image}: a change was lost"
            previous = event.class_id
        assert labels.get(image) == previous, f"image {image}: its label is not its last change"
    assert {event.actor for event in events} == {r["actor"] for r in results}


def _labeled_project(url: str) -> None:
    with create_project(url) as project:
        add_placeholder_images(project, 1000)
        catalog.ensure_classes(project, ["a", "b", "c"])


def run(pg_server, url, tmp_path, **work):  # noqa: F811
    _labeled_project(url)
    urls = _two_labelers(pg_server, url)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results = team_bench.run_workers(urls, 2, env=env, folder=tmp_path, **work)
    assert all(r["writes"] > 0 for r in results) and len({r["actor"] for r in results}) == 2
    _check_history(url, results)
    return results


def test_two_processes_label_the_same_images(pg_server, pg_url, tmp_path):  # noqa: F811
    results = run(pg_server, pg_url, tmp_path, ops=150)
    assert [r["writes"] for r in results] == [150, 150]


@pytest.mark.slow
def test_two_processes_label_for_thirty_seconds(pg_server, pg_url, tmp_path):  # noqa: F811
    run(pg_server, pg_url, tmp_path, seconds=30)


def test_a_small_image_set_makes_writers_collide(pg_server, pg_url, tmp_path):  # noqa: F811
    """Five images and two writers: most writes meet the other writer's lock, none is lost."""
    with create_project(pg_url) as project:
        add_placeholder_images(project, 5)
        catalog.ensure_classes(project, ["a", "b", "c"])
    urls = _two_labelers(pg_server, pg_url)
    results = team_bench.run_workers(urls, 2, ops=100, env={**os.environ, "PYTHONPATH": str(ROOT)}, folder=tmp_path)
    _check_history(pg_url, results)
