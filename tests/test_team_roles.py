"""Team-project roles, set with `sortlab team grant`, tested by connecting as each role: the database
refuses what a role may not do, and the user reads one clear line. Also: one training job at a time."""

from __future__ import annotations

import uuid

import pytest

from helpers.cli import cli, cli_json
from helpers.feature_projects import add_placeholder_images
from helpers.pg_server import pg_server, pg_url  # noqa: F401  (fixtures)
from storage import catalog
from storage.backends import parse_database_url
from storage.errors import PermissionDeniedError
from storage.project import create_project, open_project
from storage.team_roles import access_level
from storage.team_store import TrainingBusyError, training_lock


@pytest.fixture
def team(pg_server, pg_url, capsys):  # noqa: F811
    with create_project(pg_url) as project:
        add_placeholder_images(project, 4)
        catalog.ensure_classes(project, ["a", "b"])
    database = parse_database_url(pg_url).database
    urls = {}
    for level in ("viewer", "labeler", "owner"):
        role = f"{level}_{uuid.uuid4().hex[:6]}"
        result = cli_json(capsys, "team", "grant", pg_url, role, f"--{level}")
        assert result["level"] == level
        urls[level] = pg_server.url(database, role)
    return pg_url, urls


def refused(capsys, *args) -> str:
    code, _, err = cli(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "may not" in err and "Traceback" not in err
    return err


def test_each_role_can_do_only_its_part(team, capsys):
    admin, urls = team
    for level, url in urls.items():
        assert cli_json(capsys, "team", "whoami", url)["level"] == level
        assert cli_json(capsys, "info", url)["images"] == 4  # everyone may look
    refused(capsys, "label", urls["viewer"], "--class", "a", 1)
    assert cli(capsys, "label", urls["labeler"], "--class", "a", 1, 2)[0] == 0
    assert cli(capsys, "label", urls["labeler"], "--class", "b", 3)[0] == 0
    history = cli_json(capsys, "history", admin)["events"]
    assert {event["by"] for event in history} == {parse_database_url(urls["labeler"]).username}
    refused(capsys, "classes", urls["labeler"], "add", "c")
    refused(capsys, "classes", urls["labeler"], "remove", "a")
    with open_project(urls["labeler"]) as project:
        assert access_level(project) == "labeler"
        with pytest.raises(PermissionDeniedError, match="may not"):
            with project.writing() as session:
                session.connection().exec_driver_sql("DELETE FROM images")
    with open_project(urls["labeler"]) as project:  # reading trained weights is exporting: refused
        with pytest.raises(PermissionDeniedError, match="may not"):
            from storage.modelstore import model_weights

            model_weights(project, 1)
    assert cli(capsys, "classes", urls["owner"], "add", "c")[0] == 0
    assert cli(capsys, "label", urls["owner"], "--class", "c", 4)[0] == 0


def test_a_labeler_cannot_read_model_weights(team):
    _, urls = team
    from sqlalchemy import text
    from sqlalchemy.exc import ProgrammingError

    with open_project(urls["labeler"]) as project, project.engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(id) FROM model_versions")).scalar() == 0
        with pytest.raises(ProgrammingError, match="permission denied"):
            connection.execute(text("SELECT weights FROM model_versions"))


def test_one_training_job_per_project(team, capsys):
    admin, urls = team
    with open_project(urls["owner"]) as first, open_project(admin) as second:
        with training_lock(first):
            with pytest.raises(TrainingBusyError, match=f"being trained by {first.actor}"):
                with training_lock(second):
                    pass
            code, _, err = cli(capsys, "train", admin)
            assert code == 2 and f"being trained by {first.actor}" in err
        with training_lock(second):  # released when the first training ended
            pass


def test_one_training_job_per_project_file(tmp_path):
    with create_project(tmp_path / "p.sortlab") as first, open_project(tmp_path / "p.sortlab") as second:
        with training_lock(first):
            with pytest.raises(TrainingBusyError, match="being trained by another"):
                with training_lock(second):
                    pass
        with training_lock(second):
            pass


def test_agreement_between_two_labelers(team, pg_server, capsys):  # noqa: F811
    admin, urls = team
    second = f"labeler2_{uuid.uuid4().hex[:6]}"
    cli_json(capsys, "team", "grant", admin, second, "--labeler")
    other = pg_server.url(parse_database_url(admin).database, second)
    for url, labels in ((urls["labeler"], {"a": [1, 2], "b": [3, 4]}), (other, {"a": [1, 3], "b": [2, 4]})):
        for name, ids in labels.items():
            assert cli(capsys, "label", url, "--class", name, *ids)[0] == 0
    from sklearn.metrics import cohen_kappa_score

    result = cli_json(capsys, "team", "agreement", admin)
    [pair] = result["pairs"]
    assert pair["overlap"] == 4 and pair["agreed"] == 2 and sorted(pair["disputed"]) == [2, 3]
    assert pair["kappa"] == pytest.approx(cohen_kappa_score([1, 1, 2, 2], [1, 2, 1, 2]))
    assert set(result["disputed"]) == {"2", "3"}


def test_undo_undoes_only_your_own_action(team):
    _, urls = team
    with open_project(urls["labeler"]) as mine, open_project(urls["owner"]) as theirs:
        a, b = (catalog.find_class(mine, name).id for name in ("a", "b"))
        before = catalog.set_labels(mine, [1, 2], a)  # my action
        catalog.set_labels(theirs, [2], b)  # a teammate relabels one of the images since
        catalog.restore_labels(mine, before)  # I undo mine
        states = {s.image_id: s.class_id for s in catalog.label_states(mine, [1, 2])}
    assert states == {1: None, 2: b}
