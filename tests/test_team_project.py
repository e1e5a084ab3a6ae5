"""A team project on a real (throwaway) PostgreSQL: the CLI path users take, from an empty database to an
exported model, the grid's raw queries against a file project's answers, and the URL rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.cli import cli, cli_json
from helpers.pg_server import pg_server, pg_url  # noqa: F401  (fixtures)
from storage import browse, catalog, modelstore
from storage.backends import parse_database_url, shown_url, translate_sqlite_sql
from storage.errors import ProjectError
from storage.project import create_project, current_revision, head_revision, open_project

COLOURS = {"red": (210, 40, 40), "blue": (40, 50, 210)}


@pytest.fixture(scope="module", autouse=True)
def _shared_onnx_cache(onnx_cache):
    return onnx_cache


def write_photo(path: Path, colour, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    pixels = np.array(colour, dtype=np.float64) + rng.normal(0, 18, (64, 64, 3))
    x, y = rng.integers(0, 40, 2)
    pixels[y : y + 20, x : x + 20] *= 0.6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=92)
    return path


def photo_folder(root: Path, per_class: int = 8) -> Path:
    for name, colour in COLOURS.items():
        for i in range(per_class):
            write_photo(root / "labeled" / name / f"{name}{i}.jpg", colour, seed=100 * len(name) + i)
    return root / "labeled"


def test_urls_are_shown_without_password_and_checked():
    url = parse_database_url("postgresql://ann:secret@db.example/sortlab_bins")
    assert url.drivername == "postgresql+psycopg"
    assert "secret" not in shown_url(url) and shown_url(url) == "postgresql+psycopg://ann@db.example/sortlab_bins"
    with pytest.raises(ProjectError, match="names no database"):
        parse_database_url("postgresql+psycopg://ann@db.example")
    with pytest.raises(ProjectError, match="psycopg driver"):
        parse_database_url("postgresql+asyncpg://ann@db.example/x")


def test_sqlite_forms_are_rewritten_for_postgresql():
    upsert = translate_sqlite_sql("INSERT OR REPLACE INTO features (feature_set_id, image_id, vector) VALUES (?, ?, ?)")
    assert upsert == ("INSERT INTO features (feature_set_id, image_id, vector) VALUES (%s, %s, %s) "
                      "ON CONFLICT (feature_set_id, image_id) DO UPDATE SET vector = EXCLUDED.vector")
    assert translate_sqlite_sql("SELECT i.id FROM images i INDEXED BY ix_images_source WHERE x LIKE '50%?'") == \
        "SELECT i.id FROM images i WHERE x LIKE '50%%?'"
    assert translate_sqlite_sql("ORDER BY i.original_name COLLATE NOCASE, i.id") == "ORDER BY lower(i.original_name), i.id"


def test_cli_from_empty_database_to_exported_model(pg_url, tmp_path, capsys):
    folder = photo_folder(tmp_path)
    code, _, err = cli(capsys, "import", pg_url, folder, "--labels-from-folders")
    assert code == 0, err
    info = cli_json(capsys, "info", pg_url)
    assert info["images"] == 16 and info["labeled"] == 16
    code, _, err = cli(capsys, "label", pg_url, "--clear", 1, 2)
    assert code == 0, err
    code, _, err = cli(capsys, "label", pg_url, "--class", "red", 1)
    assert code == 0, err
    assert cli_json(capsys, "info", pg_url)["labeled"] == 15

    trained = cli_json(capsys, "train", pg_url)
    assert trained["n_labeled"] == 15 and trained["metrics"]["accuracy"] >= 0.8
    predicted = cli_json(capsys, "predict", pg_url, folder / "red" / "red5.jpg", folder / "blue" / "blue5.jpg")
    assert [row["class"] for row in predicted["predictions"]] == ["red", "blue"]
    code, out, err = cli(capsys, "export", pg_url, tmp_path / "bundle", "--json")
    assert code == 0, err
    assert (tmp_path / "bundle" / "model.onnx").is_file() and json.loads(out)["model_version"] == trained["model"]

    with open_project(pg_url) as project:  # the same code path as a file project, in the database
        assert project.is_database and project.path is None and current_revision(project) == head_revision()
        assert project.actor == "postgres" and "@" in project.location
        model = browse.filtered_image_ids(project, browse.GridQuery(kind=browse.ALL))
        assert len(model) == 16


def test_grid_queries_answer_as_on_a_file_project(pg_url, tmp_path, capsys):
    """The raw-SQL grid queries (json_each, float32_at, COLLATE NOCASE) give the file project's answers."""
    folder = photo_folder(tmp_path, per_class=6)
    answers = []
    for target in (str(tmp_path / "file.sortlab"), pg_url):
        assert cli(capsys, "import", target, folder, "--labels-from-folders")[0] == 0
        cli_json(capsys, "train", target)
        with open_project(target) as project:
            version = modelstore.active_version(project)
            queries = [browse.GridQuery(kind=browse.REVIEW, threshold=1.01, sort=browse.RANKED),
                       browse.GridQuery(kind=browse.CHOSEN, image_ids=(5, 3, 9, 3), sort=browse.RANKED),
                       browse.GridQuery(kind=browse.ALL, sort=browse.NAME),
                       browse.GridQuery(kind=browse.LOW_CONFIDENCE, threshold=1.01, sort=browse.CONFIDENCE)]
            found = [browse.filtered_image_ids(project, q, version).tolist() for q in queries]
            detail = browse.image_detail(project, 3, version)
            answers.append((found, sorted(detail.probabilities),
                            [(c.name, c.count) for c in catalog.list_classes(project)]))
    (file_ids, file_detail, file_counts), (db_ids, db_detail, db_counts) = answers
    assert db_ids[1] == file_ids[1] == [5, 3, 9] and db_ids[2] == file_ids[2]
    assert len(db_ids[0]) == len(file_ids[0]) == 12 and sorted(db_ids[3]) == sorted(file_ids[3])
    assert db_detail == file_detail and db_counts == file_counts


def test_open_refuses_what_is_not_a_project(pg_server, tmp_path):  # noqa: F811
    url = pg_server.new_database()
    with pytest.raises(ProjectError, match="holds no Sortlab project"):
        open_project(url)
    pg_server.psql("CREATE TABLE stuff (x int)", database=parse_database_url(url).database)
    with pytest.raises(ProjectError, match="other tables"):
        create_project(url)
    with pytest.raises(ProjectError, match="Cannot connect"):
        open_project(pg_server.url("no_such_database"))


def test_migrations_from_an_empty_database_and_upgrade(pg_url):
    with create_project(pg_url, revision="0001") as project:
        assert current_revision(project) == "0001"
    with open_project(pg_url) as project:
        assert current_revision(project) == head_revision()
        with project.session() as session:
            from sqlalchemy import text

            assert session.execute(text("SELECT float32_at(:b, 1)"), {"b": np.array([0.25, -1.5], "<f4").tobytes()}
                                   ).scalar() == -1.5
