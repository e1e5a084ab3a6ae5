"""`sortlab copy`: a file project into PostgreSQL and back with identical contents (images, labels, label
history, features, models, predictions), resumable after an interruption, verified at the end."""

from __future__ import annotations

import pytest

from helpers.cli import cli, cli_json
from helpers.pg_server import pg_server, pg_url  # noqa: F401  (fixtures)
from storage import copying
from storage.copying import copy_project, project_checksums
from engine.runtime.jobs import JobCancelled, JobContext
from storage.errors import ProjectError
from storage.project import open_project
from test_team_project import photo_folder


@pytest.fixture(scope="module", autouse=True)
def _shared_onnx_cache(onnx_cache):
    return onnx_cache


@pytest.fixture(scope="module")
def file_project(tmp_path_factory):
    """A file project with images, labels and a label history, features, a model and its predictions."""
    import main

    root = tmp_path_factory.mktemp("copy-source")
    project = root / "source.sortlab"
    assert main.main(["import", str(project), str(photo_folder(root, per_class=5)), "--labels-from-folders"]) == 0
    assert main.main(["label", str(project), "--class", "red", "2"]) == 0
    assert main.main(["label", str(project), "--clear", "3"]) == 0
    assert main.main(["train", str(project)]) == 0
    return project


def test_file_to_database_to_file_is_identical(file_project, pg_url, tmp_path, capsys):
    back = tmp_path / "back.sortlab"
    first = cli_json(capsys, "copy", file_project, pg_url)
    second = cli_json(capsys, "copy", pg_url, back)
    with open_project(file_project) as source, open_project(back) as copy:
        original = project_checksums(source)
        assert project_checksums(copy) == original
    counts = {check.table: check.rows for check in original}
    assert counts["images"] == 10 and counts["labels"] == 9 and counts["model_versions"] == 1
    assert counts["features"] == 10 and counts["predictions"] >= 10 and counts["label_events"] >= 2
    assert first["tables"] == second["tables"] and first["verified"]
    history = cli_json(capsys, "history", pg_url, 3)["events"]
    assert [event["class"] for event in history][:1] == [None]  # the cleared label, as in the file
    # The database's counters go on after the copied ids: a new class gets a fresh id.
    code, _, err = cli(capsys, "classes", pg_url, "add", "green")
    assert code == 0, err


def test_an_interrupted_copy_resumes_and_a_full_destination_is_refused(file_project, pg_server, monkeypatch):  # noqa: F811
    monkeypatch.setattr(copying, "ROWS_PER_BATCH", 3)
    url = pg_server.new_database()
    calls = []

    def stop_after_a_few(fraction, message):
        calls.append(message)
        if len(calls) == 4:
            context.cancel()

    context = JobContext(stop_after_a_few)
    with open_project(file_project) as source, open_project(url, create=True) as destination:
        with pytest.raises(JobCancelled):
            copy_project(context, source, destination)
        partial = {check.table: check.rows for check in project_checksums(destination)}
        assert 0 < partial["images"] < 10 or partial["images"] == 10 and partial["labels"] < 9
        report = copy_project(JobContext(), source, destination)
        assert report.resumed and report.copied_rows < sum(t.rows for t in report.tables)
        assert project_checksums(destination) == project_checksums(source)
        with pytest.raises(ProjectError, match="already holds a project"):
            copy_project(JobContext(), source, destination)
