"""CLI: import, info, classes, sources, label, demo; JSON documents on stdout, one-line user errors."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import main
from helpers.cli import cli, cli_json
from cli import project_commands
from engine.images.demo import build_demo_project

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_jpeg(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    for seed in range(3):
        write_jpeg(root / "cats" / f"c{seed}.jpg", seed)
    for seed in range(3, 5):
        write_jpeg(root / "dogs" / f"d{seed}.jpg", seed)
    (root / "dogs" / "broken.jpg").write_bytes(b"GIF89a nope")
    (root / "dogs" / "notes.txt").write_text("skip me")
    return root




def test_import_reports_json_and_lists_failures_with_exit_0(capsys, tmp_path, photos):
    project = tmp_path / "pets.sortlab"
    report = cli_json(capsys, "import", project, photos, "--labels-from-folders")
    assert {k: report[k] for k in ("imported", "duplicates", "skipped", "labeled", "classes", "cancelled")} == {
        "imported": 5, "duplicates": 0, "skipped": 1, "labeled": 5, "classes": {"cats": 3, "dogs": 2},
        "cancelled": False}
    assert [Path(f["path"]).name for f in report["failed"]] == ["broken.jpg"]
    assert report["failed"][0]["reason"]
    assert len(report["image_ids"]) == 5

    again = cli_json(capsys, "import", project, photos / "cats", "--source", "second look")
    assert (again["imported"], again["duplicates"]) == (0, 3)


def test_reimport_with_folder_labels_labels_the_duplicates_and_says_so(capsys, tmp_path, photos):
    project = tmp_path / "pets.sortlab"
    first = cli_json(capsys, "import", project, photos)  # no folder labels the first time
    assert (first["imported"], first["labeled"]) == (5, 0)
    ids = first["image_ids"]
    cli_json(capsys, "classes", project, "add", "dogs")
    cli_json(capsys, "label", project, "--class", "dogs", ids[0])  # c0.jpg, a cat, labeled "dogs"
    code, out, _ = cli(capsys, "import", project, photos, "--labels-from-folders")
    assert code == 0 and "Imported 0 images (5 duplicates skipped" in out
    assert "4 of the duplicates had no label and got their folder's label." in out
    assert "1 duplicates are labeled otherwise than their folder says (their label was kept):" in out
    assert f"{photos / 'cats' / 'c0.jpg'}: labeled 'dogs', folder 'cats'" in out
    assert cli_json(capsys, "info", project)["classes"] == {"dogs": 3, "cats": 2}


def test_import_text_output_and_progress_on_stderr(capsys, tmp_path, photos):
    code, out, err = cli(capsys, "import", tmp_path / "p.sortlab", photos)
    assert code == 0
    assert "Imported 5 images" in out and "broken.jpg" in out
    assert "%]" in err and "{" not in out


def test_ctrl_c_cancels_an_import_after_the_batch_in_progress(capsys, tmp_path, monkeypatch):
    """The first Ctrl+C cancels the import job: whole batches stay, the JSON says so, exit status 130."""
    from engine.images import importing

    for seed in range(6):
        write_jpeg(tmp_path / "many" / f"{seed}.jpg", seed)
    monkeypatch.setattr(importing, "BATCH_SIZE", 2)
    real_commit = importing._commit_batch

    def commit_then_ctrl_c(*args):
        real_commit(*args)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(importing, "_commit_batch", commit_then_ctrl_c)
    code, out, err = cli(capsys, "import", tmp_path / "p.sortlab", tmp_path / "many", "--json")
    assert code == 130, err
    report = json.loads(out)
    assert report["cancelled"] is True and report["imported"] == 2 and len(report["image_ids"]) == 2
    assert cli_json(capsys, "info", tmp_path / "p.sortlab")["images"] == 2


def test_ctrl_c_during_the_demo_keeps_the_digits_imported_so_far(capsys, tmp_path, monkeypatch):
    from engine.images import importing

    monkeypatch.setattr(project_commands, "build_demo_project",
                        lambda context, path: build_demo_project(context, path, n_images=20))
    monkeypatch.setattr(importing, "BATCH_SIZE", 8)
    real_commit = importing._commit_batch

    def commit_then_ctrl_c(*args):
        real_commit(*args)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(importing, "_commit_batch", commit_then_ctrl_c)
    code, out, err = cli(capsys, "demo", tmp_path / "digits.sortlab", "--json")
    assert code == 130, err
    report = json.loads(out)
    assert report["cancelled"] is True and report["imported"] == 8
    assert cli_json(capsys, "info", tmp_path / "digits.sortlab")["images"] == 8


def test_a_second_ctrl_c_interrupts_at_once_and_handlers_are_restored():
    from cli.common import CancelOnSignals
    from engine.runtime.jobs import JobContext

    previous = signal.getsignal(signal.SIGINT)
    context = JobContext()
    with CancelOnSignals(context) as stopper:
        signal.raise_signal(signal.SIGINT)
        assert context.cancelled and stopper.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous


def test_info_counts_labels_classes_and_sources(capsys, tmp_path, photos):
    project = tmp_path / "pets.sortlab"
    cli_json(capsys, "import", project, photos / "cats", "--labels-from-folders")
    cli_json(capsys, "import", project, photos / "dogs", "--source", "phone")
    info = cli_json(capsys, "info", project)
    imported = next(name for name in info["sources"] if name != "phone")
    assert re.fullmatch(r"import \d{4}-\d\d-\d\d \d\d:\d\d \(folder 'photos'\)", imported)
    assert info == {"images": 5, "labeled": 3, "unlabeled": 2, "classes": {"cats": 3},
                    "sources": {"phone": 2, imported: 3}}
    code, out, _ = cli(capsys, "info", project)
    assert code == 0 and "5 images, 3 labeled, 2 unlabeled" in out and "cats (3)" in out


def test_sources_are_listed_and_renamed(capsys, tmp_path, photos):
    project = tmp_path / "pets.sortlab"
    cli_json(capsys, "import", project, photos / "cats", "--source", "batch 1")
    cli_json(capsys, "import", project, photos / "dogs", "--source", "phone")
    assert cli_json(capsys, "sources", project) == {"sources": {"batch 1": 3, "phone": 2}}
    code, out, _ = cli(capsys, "sources", project, "--rename", "batch 1", "kitchen camera")
    assert code == 0 and "Renamed source 'batch 1' to 'kitchen camera' (3 images)." in out
    assert "phone  (2 images)" in out
    assert cli_json(capsys, "info", project)["sources"] == {"kitchen camera": 3, "phone": 2}


def test_classes_add_rename_remove_and_list(capsys, tmp_path, photos):
    project = tmp_path / "pets.sortlab"
    cli_json(capsys, "import", project, photos / "cats", "--labels-from-folders")
    added = cli_json(capsys, "classes", project, "add", "dogs", "birds")
    assert [c["name"] for c in added["classes"]] == ["cats", "dogs", "birds"]
    renamed = cli_json(capsys, "classes", project, "rename", "birds", "parrots")
    assert [c["name"] for c in renamed["classes"]] == ["cats", "dogs", "parrots"]
    removed = cli_json(capsys, "classes", project, "remove", "cats")
    assert [(c["name"], c["shortcut"]) for c in removed["classes"]] == [("dogs", "1"), ("parrots", "2")]
    assert cli_json(capsys, "info", project)["labeled"] == 0
    code, out, _ = cli(capsys, "classes", project)
    assert code == 0 and "dogs" in out and "parrots" in out
    assert json.loads(cli(capsys, "classes", project, "--json", "list")[1]) == removed


def test_label_and_clear_by_image_id(capsys, tmp_path, photos):
    project = tmp_path / "pets.sortlab"
    ids = cli_json(capsys, "import", project, photos)["image_ids"]
    cli_json(capsys, "classes", project, "add", "cute")
    assert cli_json(capsys, "label", project, "--class", "cute", *ids[:3])["labeled"] == 3
    assert cli_json(capsys, "info", project)["classes"] == {"cute": 3}
    assert cli_json(capsys, "label", project, "--clear", ids[0])["cleared"] == 1
    assert cli_json(capsys, "info", project)["labeled"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "{tmp}/absent.sortlab"], "does not exist"),
        (["info", "{tmp}/not_a_project.sortlab"], "not a Sortlab project"),
        (["import", "{tmp}/new.sortlab", "{tmp}/no such folder"], "No such file or folder"),
        (["import", "{tmp}/new.txt", "{tmp}"], "must end in .sortlab"),
        (["label", "{tmp}/p.sortlab", "--class", "unicorn", "1"], "No class named 'unicorn'"),
        (["label", "{tmp}/p.sortlab", "--clear", "12345"], "No image with id 12345"),
        (["classes", "{tmp}/p.sortlab", "rename", "ghost", "spirit"], "No class named 'ghost'"),
        (["classes", "{tmp}/p.sortlab", "add", "   "], "cannot be empty"),
        (["sources", "{tmp}/p.sortlab", "--rename", "nowhere", "x"], "No source named 'nowhere'"),
        (["demo", "{tmp}/p.sortlab"], "already exists"),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, tmp_path, photos, args, message):
    (tmp_path / "not_a_project.sortlab").write_text("just text")
    cli_json(capsys, "import", tmp_path / "p.sortlab", photos / "cats")
    code, out, err = cli(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("sortlab: error:") and message in err
    assert not (tmp_path / "new.sortlab").exists()


def test_demo_command_builds_a_partly_labeled_project(capsys, tmp_path, monkeypatch):
    def small_demo(context, path):
        return build_demo_project(context, path, n_images=40)

    monkeypatch.setattr(project_commands, "build_demo_project", small_demo)
    report = cli_json(capsys, "demo", tmp_path / "digits.sortlab")
    assert report["imported"] == 40 and 0 < report["labeled"] < 40
    info = cli_json(capsys, "info", tmp_path / "digits.sortlab")
    assert list(info["classes"]) == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"]  # the number row's order


def test_as_a_process_exit_codes_and_no_tracebacks(tmp_path, photos):
    def run(*args):
        return subprocess.run([sys.executable, "main.py", *map(str, args)], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)

    ok = run("import", tmp_path / "p.sortlab", photos, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["imported"] == 5
    assert len(json.loads(ok.stdout)["failed"]) == 1
    missing = run("import", tmp_path / "p.sortlab", tmp_path / "nowhere")
    not_project = run("info", photos / "cats" / "c0.jpg")
    for failed in (missing, not_project):
        assert failed.returncode == 2 and failed.stdout == ""
        assert "Traceback" not in failed.stderr and failed.stderr.count("\n") == 1


def test_hymenoptera_train_imports_245_labeled_images_once(capsys, tmp_path, hymenoptera_dir):
    project = tmp_path / "P.sortlab"
    first = cli_json(capsys, "import", project, hymenoptera_dir / "train", "--labels-from-folders")
    assert (first["imported"], first["labeled"], first["failed"]) == (245, 245, [])
    assert sorted(first["classes"]) == ["ants", "bees"]
    again = cli_json(capsys, "import", project, hymenoptera_dir / "train", "--labels-from-folders")
    assert (again["imported"], again["duplicates"], again["labeled_duplicates"]) == (0, 245, 0)
    info = cli_json(capsys, "info", project)
    assert (info["images"], info["labeled"], len(info["classes"])) == (245, 245, 2)
