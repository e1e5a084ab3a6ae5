"""The team's overlap share (issue 17): a fixed share of images every labeler is shown, so two people
label the same images on purpose; "Label next" offers a teammate's overlap images to whoever has not
labeled them, and the agreement (Cohen's kappa, disputed images) reaches the CLI and the model report.

File projects with two user names (``Project.actor``, what ``SORTLAB_USER`` sets) cover the logic
everywhere; the PostgreSQL tests (skipped without PostgreSQL binaries) add roles and confirmations."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest
from PySide6.QtCore import Qt
from sklearn.metrics import cohen_kappa_score

from engine.curation.next_batch import OVERLAP_REASON, SelectionCache, next_images
from engine.runtime.jobs import JobContext
from helpers.cli import cli, cli_json
from helpers.feature_projects import add_placeholder_images, make_feature_project
from helpers.pg_server import pg_server, pg_url  # noqa: F401  (fixtures)
from storage import catalog
from storage.backends import parse_database_url
from storage.errors import PermissionDeniedError
from storage.project import create_project, open_project
from storage.team_agreement import agreement, shared_agreement
from storage.team_overlap import (
    in_overlap,
    overlap_image_ids,
    overlap_share,
    parse_share,
    pending_overlap,
    set_overlap_share,
)


def test_overlap_choice_is_deterministic_of_the_right_share_and_nested():
    ids = np.arange(1, 50_001)
    chosen = in_overlap(ids, 0.1)
    assert chosen.mean() == pytest.approx(0.1, abs=0.006)
    assert np.array_equal(chosen, in_overlap(ids.copy(), 0.1))  # every client computes the same
    assert np.array_equal(in_overlap(ids[::7], 0.1), chosen[::7])  # depends on the id alone, not on the others
    smaller = in_overlap(ids, 0.03)
    assert smaller.mean() == pytest.approx(0.03, abs=0.004) and not (smaller & ~chosen).any()  # nested
    assert not in_overlap(ids, 0).any() and in_overlap(ids, 1).all()
    runs = np.diff(np.flatnonzero(chosen))
    assert runs.max() < 200  # spread through the collection, not a block of ids


def test_share_is_typed_in_words_or_numbers():
    assert parse_share("0.1") == 0.1 and parse_share("10%") == pytest.approx(0.1) and parse_share("25") == 0.25
    for bad in ("ten", "-0.1", "150%", "nan"):
        with pytest.raises(ValueError, match="overlap share must be"):
            parse_share(bad)


def test_the_setting_is_stored_in_the_project_and_set_from_the_cli(tmp_path, capsys):
    path = tmp_path / "team.sortlab"
    with create_project(path) as project:
        add_placeholder_images(project, 400)
        assert overlap_share(project) == 0 and overlap_image_ids(project) == []
    result = cli_json(capsys, "team", "overlap", path, "20%")
    assert result["share"] == pytest.approx(0.2) and 50 < result["images"] < 110
    with open_project(path) as project:
        assert overlap_share(project) == pytest.approx(0.2)
        assert overlap_image_ids(project) == [i for i in range(1, 401) if in_overlap([i], 0.2)[0]]
    assert cli_json(capsys, "team", "overlap", path)["share"] == pytest.approx(0.2)  # shown, unchanged
    code, out, err = cli(capsys, "team", "overlap", path, "2x")
    assert code == 2 and err.count("\n") == 1 and "overlap share must be a number" in err and not out


def two_people(path):
    alice, bob = open_project(path), open_project(path)
    alice.actor, bob.actor = "alice", "bob"
    return alice, bob


@pytest.fixture
def team_file(tmp_path):
    """A project file of 120 unlabeled images with features, classes c0..c2 and a 25 % overlap."""
    path = tmp_path / "team.sortlab"
    with create_project(path) as project:
        made = make_feature_project(project, [0, 0, 0], unlabeled=120, dim=1280, spread=0.5, seed=3)
        set_overlap_share(project, 0.25)
    return path, made


def test_a_teammate_is_offered_the_overlap_images_labeled_by_another_and_no_other_labeled_one(team_file):
    path, made = team_file
    alice, bob = two_people(path)
    cache = SelectionCache()
    try:
        c0, c1 = made.class_by_name["c0"], made.class_by_name["c1"]
        alice_ids = made.image_ids[:40]
        catalog.set_labels(alice, alice_ids, c0)
        shared = [i for i in alice_ids if in_overlap([i], 0.25)[0]]
        assert 4 <= len(shared) <= 20
        assert pending_overlap(alice) == {} and list(pending_overlap(bob)) == shared  # in alice's order

        batch = next_images(JobContext(), bob, 4 * len(shared), cache=cache)
        offered_labeled = [image for image in batch.images if image.image_id in alice_ids]
        assert sorted(image.image_id for image in offered_labeled) == shared  # overlap ones only
        assert all(image.overlap and OVERLAP_REASON in image.reason and "alice labeled it" in image.reason
                   for image in offered_labeled)
        assert len(batch.images) == 4 * len(shared) and batch.images[0].image_id in shared  # spread, first first
        # alice herself is never offered what she labeled
        hers = {image.image_id for image in next_images(JobContext(), alice, 30, cache=cache).images}
        assert not hers & set(alice_ids)

        small = next_images(JobContext(), bob, 8, cache=cache)  # a share of a small batch, not all of it
        assert sum(image.image_id in shared for image in small.images) == math.ceil(8 * 0.25)

        # bob labels them (last write wins, both in the history); disputes on half
        disputed = shared[::2]
        catalog.set_labels(bob, disputed, c1)
        assert {s.class_id for s in catalog.label_states(bob, disputed)} == {c1}
        assert set(pending_overlap(bob)) == set(shared) - set(disputed)
        report = agreement(bob)
        [pair] = report.pairs
        assert (pair.first, pair.second, pair.overlap, pair.agreed) == ("alice", "bob", len(disputed), 0)
        assert pair.disputed == disputed and set(report.disputed) == set(disputed)
        assert report.disputed[disputed[0]] == {"alice": "c0", "bob": "c1"}
    finally:
        alice.close()
        bob.close()


def test_nothing_else_to_label_then_the_whole_batch_is_overlap(tmp_path):
    path = tmp_path / "small.sortlab"
    with create_project(path) as project:
        made = make_feature_project(project, [0, 0], unlabeled=40, dim=1280, spread=0.5, seed=4)
        set_overlap_share(project, 0.5)
    alice, bob = two_people(path)
    try:
        catalog.set_labels(alice, made.image_ids, made.class_by_name["c0"])
        shared = [i for i in made.image_ids if in_overlap([i], 0.5)[0]]
        batch = next_images(JobContext(), bob, 100, cache=SelectionCache())
        assert [image.image_id for image in batch.images] == shared and all(image.overlap for image in batch.images)
        set_overlap_share(alice, 0)  # turned off: a labeled image is never offered again
        assert next_images(JobContext(), bob, 100, cache=SelectionCache()).images == []
    finally:
        alice.close()
        bob.close()


def test_cli_next_offers_overlap_images_to_the_user_named_in_sortlab_user(team_file, capsys, monkeypatch):
    path, made = team_file
    monkeypatch.setenv("SORTLAB_USER", "alice")
    first = cli_json(capsys, "next", path, "--count", 12)["images"]
    assert not any(image["overlap"] and "labeled it" in image["reason"] for image in first)
    assert cli(capsys, "label", path, "--class", "c2", *[image["id"] for image in first])[0] == 0
    monkeypatch.setenv("SORTLAB_USER", "bob")
    shown = {image["id"]: image for image in cli_json(capsys, "next", path, "--count", 40)["images"]}
    expected = {image["id"] for image in first if in_overlap([image["id"]], 0.25)[0]}
    assert {i for i in shown if i in {image["id"] for image in first}} == expected
    assert all("alice labeled it" in shown[i]["reason"] for i in expected)
    code, out, _ = cli(capsys, "next", path, "--count", 40)
    assert code == 0 and "shown to everyone on the team to check agreement" in out


def report_project(path, made, disputes: int):
    """alice labels 12 images, bob labels the same 12 (``disputes`` of them differently); a model version."""
    from test_gui_insight import save_version

    alice, bob = two_people(path)
    try:
        ids = made.image_ids[:12]
        a_classes = [made.class_by_name["c0"] if n % 2 else made.class_by_name["c1"] for n in range(12)]
        for image_id, class_id in zip(ids, a_classes):
            catalog.set_labels(alice, [image_id], class_id)
        flip = {made.class_by_name["c0"]: made.class_by_name["c1"], made.class_by_name["c1"]: made.class_by_name["c0"]}
        b_classes = [flip[c] if n < disputes else c for n, c in enumerate(a_classes)]
        for image_id, class_id in zip(ids, b_classes):
            if class_id != a_classes[ids.index(image_id)]:
                catalog.set_labels(bob, [image_id], class_id)
        # bob confirms the rest by pressing the same key: the history keeps a label given again
        for image_id, class_id in zip(ids[disputes:], b_classes[disputes:]):
            catalog.set_labels(bob, [image_id], class_id)
        classes = catalog.list_classes(alice)
        version = save_version(alice, classes, dict(zip(ids, a_classes)))
        return ids, a_classes, b_classes, version
    finally:
        alice.close()
        bob.close()


def test_the_report_carries_the_agreement_between_labelers(team_file):
    from engine.insight.report import project_report

    path, made = team_file
    ids, a_classes, b_classes, version = report_project(path, made, disputes=3)
    with open_project(path) as project:
        report = project_report(project, version)
    [pair] = report.agreement.pairs
    assert (pair.first, pair.second, pair.overlap, pair.agreed) == ("alice", "bob", 12, 9)
    assert pair.kappa == pytest.approx(cohen_kappa_score(a_classes, b_classes), abs=1e-9)
    assert pair.disputed == sorted(ids[:3])


def test_one_labeler_has_no_agreement_section(tmp_path):
    from engine.insight.report import project_report
    from test_gui_insight import save_version

    with create_project(tmp_path / "solo.sortlab") as project:
        made = make_feature_project(project, [3, 3], dim=8)
        assert shared_agreement(project) is None
        version = save_version(project, catalog.list_classes(project), dict(zip(made.image_ids, made.class_ids)))
        assert project_report(project, version).agreement is None


@pytest.mark.gui
def test_the_report_window_shows_agreement_and_a_click_opens_the_disputed_images(qtbot, team_file):
    from gui.model_report import ModelReport

    path, made = team_file
    ids, _a, _b, version = report_project(path, made, disputes=2)
    with open_project(path) as project:
        widget = ModelReport(project)
        qtbot.addWidget(widget)
        widget.resize(700, 760)
        widget.show()
        section = widget.view.agreement
        qtbot.waitUntil(section.isVisible)
        assert widget.report_version == version
        table = section.table
        assert table.rowCount() == 1
        assert [table.item(0, c).text() for c in range(4)][:2] == ["alice and bob", "10 of 12"]
        assert "alice and bob both labeled 12 images and chose the same class for 10" in section.hint.text()
        rect = table.visualItemRect(table.item(0, 0))
        with qtbot.waitSignal(widget.show_images, timeout=2000) as shown:
            qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
        assert shown.args == [sorted(ids[:2]), "Labeled differently by alice and bob"]


@pytest.mark.gui
def test_agreement_shows_before_any_model(qtbot, team_file):
    from gui.model_report import ModelReport
    from gui.report_view import NO_MODEL_TEXT

    path, made = team_file
    alice, bob = two_people(path)
    try:
        catalog.set_labels(alice, made.image_ids[:3], made.class_by_name["c0"])
        catalog.set_labels(bob, made.image_ids[:1], made.class_by_name["c1"])
        widget = ModelReport(bob)
        qtbot.addWidget(widget)
        widget.show()
        assert widget.versions_table.rowCount() == 0 and widget.view.summary.text() == NO_MODEL_TEXT
        assert widget.view.agreement.isVisible() and widget.view.agreement.pair_images(0) == made.image_ids[:1]
    finally:
        alice.close()
        bob.close()


def test_no_agreement_hides_the_section(qtbot, tmp_path):
    from engine.insight.report import project_report
    from gui.report_view import ReportView
    from test_gui_insight import save_version

    with create_project(tmp_path / "solo.sortlab") as project:
        made = make_feature_project(project, [3, 3], dim=8)
        version = save_version(project, catalog.list_classes(project), dict(zip(made.image_ids, made.class_ids)))
        view = ReportView()
        qtbot.addWidget(view)
        view.show()
        view.show_report(project_report(project, version), version)
        assert not view.agreement.isVisible() and view.agreement.table.rowCount() == 0


# -- PostgreSQL ------------------------------------------------------------------------------------


@pytest.fixture
def team_db(pg_server, pg_url, capsys):  # noqa: F811
    """A team database with 60 images with features, an owner (the admin URL) and two labelers."""
    with create_project(pg_url) as project:
        made = make_feature_project(project, [0, 0], unlabeled=60, dim=1280, spread=0.5, seed=7)
    database = parse_database_url(pg_url).database
    urls = {}
    for name in ("alice", "bob"):
        role = f"{name}_{uuid.uuid4().hex[:6]}"
        cli_json(capsys, "team", "grant", pg_url, role, "--labeler")
        urls[name] = pg_server.url(database, role)
    return pg_url, urls, made


def test_team_database_overlap_confirmations_and_roles(team_db, capsys):
    admin, urls, made = team_db
    err = cli(capsys, "team", "overlap", urls["alice"], "0.5")[2]  # a labeler may not change the setting
    assert "Only the project's owners may change the overlap share" in err and err.count("\n") == 1
    with open_project(urls["alice"]) as alice, pytest.raises(PermissionDeniedError):
        set_overlap_share(alice, 0.5)
    assert cli_json(capsys, "team", "overlap", admin, "0.5")["share"] == 0.5

    c0, c1 = made.class_by_name["c0"], made.class_by_name["c1"]
    ids = made.image_ids[:16]
    shared = [i for i in ids if in_overlap([i], 0.5)[0]]
    with open_project(urls["alice"]) as alice, open_project(urls["bob"]) as bob:
        catalog.set_labels(alice, ids, c0)
        batch = next_images(JobContext(), bob, 2 * len(shared), cache=SelectionCache())
        assert sorted(image.image_id for image in batch.images if image.image_id in ids) == shared
        assert all(f"{alice.actor} labeled it" in image.reason for image in batch.images if image.image_id in ids)
        catalog.set_labels(bob, shared[:1], c1)  # a dispute
        catalog.set_labels(bob, shared[1:], c0)  # confirmations: recorded in the history too
        assert pending_overlap(bob) == {}
        offered = {image.image_id for image in next_images(JobContext(), bob, 40, cache=SelectionCache()).images}
        assert not offered & set(ids)
    result = cli_json(capsys, "team", "agreement", admin)
    [pair] = result["pairs"]
    assert pair["overlap"] == len(shared) and pair["agreed"] == len(shared) - 1 and pair["disputed"] == shared[:1]


# -- the window ------------------------------------------------------------------------------------


@pytest.mark.gui
def test_the_overlap_dialog_stores_the_share_and_says_what_it_means(qtbot, project, monkeypatch):
    from PySide6.QtWidgets import QInputDialog, QWidget

    import gui.team_overlap_dialog as dialog

    parent = QWidget()
    qtbot.addWidget(parent)
    messages = []
    parent.show_message = lambda text, _ms=0: messages.append(text)
    asked = []

    def answer(_parent, _title, _prompt, value, *_limits):
        asked.append(value)
        return 15.0, True

    monkeypatch.setattr(QInputDialog, "getDouble", answer)
    assert dialog.ask_overlap_share(parent, project) == pytest.approx(0.15)
    assert overlap_share(project) == pytest.approx(0.15) and asked == [0.0]
    assert messages and messages[0].startswith("15% of the images are shown to everyone")
    monkeypatch.setattr(QInputDialog, "getDouble", lambda *_a: (40.0, False))  # cancelled: unchanged
    assert dialog.ask_overlap_share(parent, project) is None and overlap_share(project) == pytest.approx(0.15)


@pytest.mark.gui
def test_label_next_waits_for_your_own_label_of_an_overlap_image(qtbot, tmp_path, monkeypatch):
    """A teammate's label on an overlap image does not finish the batch: the next batch comes once
    you have labeled it yourself."""
    from PySide6.QtCore import QSettings

    import engine.curation.next_batch as next_batch
    import engine.models.training
    from engine.curation.selection_rules import Strategy
    from gui.filter_bar import LABEL_NEXT
    from gui.runner import QtJobRunner
    from test_gui_curation import choose, shown
    from test_gui_workspace import FakeTrainer, add_rows, open_window, press

    monkeypatch.setattr(engine.models.training, "train_model", FakeTrainer())
    window = open_window(qtbot, QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat), tmp_path)
    window.show()
    qtbot.waitExposed(window)
    project = create_project(tmp_path / "team.sortlab")
    ids = add_rows(project, 6)
    cats, _dogs = catalog.add_class(project, "cats"), catalog.add_class(project, "dogs")
    with open_project(tmp_path / "team.sortlab") as teammate:
        teammate.actor = "teammate"
        catalog.set_labels(teammate, [ids[1]], cats.id)
    window.set_project(project)
    batches = [
        next_batch.NextBatch(Strategy.TYPICAL, [
            next_batch.NextImage(ids[0], "/x/img0.jpg", "typical", 0.9),
            next_batch.NextImage(ids[1], "/x/img1.jpg", next_batch.OVERLAP_REASON, 1.0, overlap=True)]),
        next_batch.NextBatch(Strategy.TYPICAL, [next_batch.NextImage(ids[2], "/x/img2.jpg", "typical", 0.8)]),
    ]
    asked = []

    def fake_next_images(context, project, count):
        asked.append(count)
        return batches[len(asked) - 1]

    monkeypatch.setattr(next_batch, "next_images", fake_next_images)
    choose(window, LABEL_NEXT)
    qtbot.waitUntil(lambda: shown(window) == [ids[0], ids[1]], timeout=60_000)
    press(qtbot, window.grid, Qt.Key.Key_2)  # ids[0]: the batch is all labeled, but ids[1] by a teammate only
    qtbot.waitUntil(lambda: not any(r.busy for r in window.findChildren(QtJobRunner)), timeout=60_000)
    assert len(asked) == 1 and shown(window) == [ids[0], ids[1]]
    window.grid.select_rows([1])
    press(qtbot, window.grid, Qt.Key.Key_2)  # your own label of the overlap image
    qtbot.waitUntil(lambda: shown(window) == [ids[0], ids[1], ids[2]], timeout=60_000)
    assert len(asked) == 2
