"""Project files from strangers: hostile schema objects, damaged pages, absurd blobs and weights that do
not match their model are each refused with one clear message, and nothing in them runs."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save as save_safetensors

from storage import trust, trust_blobs
from storage.errors import ProjectError
from storage.project import create_project, open_project


def _jpeg(side: int = 32, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _labeled_project(path: Path, n_images: int = 4, *, mailed: bool = True):
    """A project as a user makes it: two classes, ``n_images`` labeled images; closed again. ``mailed``:
    it was made on another computer, so this one never checked it."""
    from storage import catalog
    from storage.images import NewImage, add_images

    project = create_project(path)
    ant = catalog.add_class(project, "ant").id
    bee = catalog.add_class(project, "bee").id
    add_images(project, [
        NewImage(f"hash{i}", f"{i}.jpg", f"/x/{i}.jpg", "cam", 32, 32, "JPEG", _jpeg(seed=i), _jpeg(16, i),
                 ant if i % 2 else bee)
        for i in range(n_images)
    ])
    project.close()
    if mailed:
        trust.forget_file(path)
    return path, (ant, bee)


def _tamper(path: Path, *statements: str) -> None:
    """What a stranger does to a file with the sqlite3 shell (plain connection, no Sortlab)."""
    connection = sqlite3.connect(str(path))
    try:
        for statement in statements:
            connection.execute(statement)
        connection.commit()
    finally:
        connection.close()


def _counts(path: Path) -> tuple[int, int]:
    connection = sqlite3.connect(str(path))
    try:
        return (connection.execute("SELECT count(*) FROM images").fetchone()[0],
                connection.execute("SELECT count(*) FROM classes").fetchone()[0])
    finally:
        connection.close()


def _assert_one_clear_line(message: str, *needles: str) -> None:
    assert message.strip() and "\n" not in message and len(message) < 400, message
    for needle in needles:
        assert needle in message, message


HOSTILE_TRIGGER = ("CREATE TRIGGER wipe AFTER INSERT ON labels BEGIN DELETE FROM images; DELETE FROM classes; END")


def test_a_hostile_trigger_refuses_the_file_and_nothing_runs(tmp_path):
    path, _ = _labeled_project(tmp_path / "mailed.sortlab")
    _tamper(path, HOSTILE_TRIGGER,
            "CREATE TRIGGER wipe2 BEFORE UPDATE ON images BEGIN DELETE FROM labels; END")
    before = _counts(path)
    with pytest.raises(trust.UntrustedProjectError) as caught:
        open_project(path)
    _assert_one_clear_line(str(caught.value), "mailed.sortlab", "trigger 'wipe' on labels",
                           "trigger 'wipe2' on images", "--strip-foreign")
    assert _counts(path) == before
    assert not list(tmp_path.glob("*.bak")), "a refused file is not upgraded nor backed up"


def test_a_trigger_that_appears_while_open_cannot_run(tmp_path):
    """Defence in depth: even past the open-time check, no statement of a foreign trigger is authorized."""
    from storage import catalog

    path, (ant, _bee) = _labeled_project(tmp_path / "mine.sortlab", mailed=False)
    project = open_project(path)
    try:
        _tamper(path, "DELETE FROM labels WHERE image_id = 1", HOSTILE_TRIGGER)
        with pytest.raises(Exception) as caught:
            catalog.set_labels(project, [1], ant)
        assert "not authorized" in str(caught.value)
    finally:
        project.close()
    assert _counts(path) == (4, 2)


def test_the_connection_refuses_what_defensive_mode_refuses(project):
    with project.engine.connect() as connection:
        raw = connection.connection.driver_connection
        assert raw.execute("PRAGMA trusted_schema").fetchone()[0] == 0
        for pragma in ("PRAGMA writable_schema=ON", "PRAGMA schema_version=7", "PRAGMA journal_mode=OFF"):
            with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
                raw.execute(pragma)


def test_a_view_shadowing_a_table_is_refused(tmp_path):
    path, _ = _labeled_project(tmp_path / "shadow.sortlab")
    _tamper(path, "ALTER TABLE labels RENAME TO labels_real",
            "CREATE VIEW labels AS SELECT * FROM labels_real WHERE class_id = 1")
    with pytest.raises(trust.UntrustedProjectError) as caught:
        open_project(path)
    _assert_one_clear_line(str(caught.value), "view 'labels'", "table 'labels_real'")


def test_a_changed_table_and_a_foreign_index_are_refused(tmp_path):
    path, _ = _labeled_project(tmp_path / "changed.sortlab")
    _tamper(path, "ALTER TABLE images ADD COLUMN payload TEXT DEFAULT 'x'",
            "CREATE INDEX sneaky ON classes(color)")
    with pytest.raises(trust.UntrustedProjectError) as caught:
        open_project(path)
    _assert_one_clear_line(str(caught.value), "changed table 'images'", "index 'sneaky' on classes")


def _crafted_3gb_claim(path: Path) -> None:
    """Rewrite image 1's record header so its ``data`` claims 3 GB (the file does not grow)."""
    def varint(value: int) -> bytes:
        groups = []
        while True:
            groups.append(value & 0x7F)
            value >>= 7
            if not value:
                break
        groups.reverse()
        return bytes([g | 0x80 for g in groups[:-1]] + [groups[-1]])

    content_hash = "c" * 64
    connection = sqlite3.connect(str(path))
    connection.execute(
        "INSERT INTO images (id, content_hash, original_name, original_path, source, width, height, "
        "original_format, imported_at, data, thumbnail, split, split_pinned) VALUES "
        "(100, ?, 'n.jpg', 'p', '', 10, 10, 'JPEG', '2020-01-01 00:00:00.000000', ?, ?, 'train', 0)",
        (content_hash, b"D" * 200, b"T" * 10))
    connection.commit()
    connection.close()
    # Header: size, rowid alias, then the 12 columns' serial types; content_hash gives up 3 bytes
    # of its text so that the 5-byte length of "3 GB" fits and the record keeps its size.
    tail = bytes([23, 15, 13, 1, 1, 21, 65])
    old = bytes([16, 0]) + varint(2 * 64 + 13) + tail + varint(2 * 200 + 12) + bytes([32, 23, 8]) + b"c" * 64
    new = bytes([19, 0]) + varint(2 * 61 + 13) + tail + varint(2 * 3_000_000_000 + 12) + bytes([32, 23, 8]) + b"c" * 61
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))


def test_a_blob_claiming_3_gb_is_refused_and_the_rest_stays_usable(tmp_path):
    from storage.images import read_image_bytes, read_thumbnails

    path, _ = _labeled_project(tmp_path / "claims.sortlab")
    _crafted_3gb_claim(path)
    with pytest.raises(trust.DamagedProjectError) as caught:
        open_project(path)  # the first open on this computer runs quick_check
    _assert_one_clear_line(str(caught.value), "claims.sortlab is damaged")
    # Had this computer checked the file before it was damaged, each read refuses only that image.
    trust.remember_file(path)
    project = open_project(path)
    try:
        assert set(read_image_bytes(project, [1, 2, 100, 3])) == {1, 2, 3}
        assert set(read_thumbnails(project, [100, 4])) == {4}
        reasons = {(r.what, r.item_id): r.reason for r in trust_blobs.refusals(project)}
        assert "damaged" in reasons[("image", 100)] and ("thumbnail", 100) in reasons
    finally:
        project.close()


def test_an_image_blob_over_the_limit_is_refused_per_item(tmp_path, monkeypatch):
    import storage.images
    from storage.images import read_image_bytes

    # The limit is 100 MB; 1 MB here keeps the test from writing (and checking) 100 MB.
    monkeypatch.setattr(storage.images, "MAX_IMAGE_BYTES", trust_blobs.MB)
    path, _ = _labeled_project(tmp_path / "huge.sortlab")
    size = trust_blobs.MB + 1
    _tamper(path, f"UPDATE images SET data = zeroblob({size}) WHERE id = 2")
    project = open_project(path)
    try:
        found = read_image_bytes(project, [1, 2, 3])
        assert set(found) == {1, 3} and Image.open(io.BytesIO(found[1])).size == (32, 32)
        (refusal,) = trust_blobs.refusals(project)
        assert (refusal.what, refusal.item_id) == ("image", 2)
        _assert_one_clear_line(refusal.message(), "image 2", "over the limit of 1 MB")
        assert trust_blobs.refusal_reason(project, "image", 2) == refusal.reason  # what the viewer shows
        assert trust_blobs.refusal_reason(project, "image", 1) is None
    finally:
        project.close()


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) declares another size: decoding it would allocate that."""
    data = bytearray(_jpeg(16))
    at = data.index(b"\xff\xc0") + 5
    data[at:at + 4] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_pictures_whose_header_declares_huge_sizes_are_refused_before_decoding(tmp_path):
    from storage.images import read_image_bytes, read_thumbnails

    path, _ = _labeled_project(tmp_path / "bombs.sortlab")
    connection = sqlite3.connect(str(path))
    connection.execute("UPDATE images SET thumbnail = ? WHERE id = 1", (_jpeg_claiming(5000, 5000),))
    connection.execute("UPDATE images SET data = ? WHERE id = 2", (_jpeg_claiming(30000, 30000),))
    connection.commit()
    connection.close()
    project = open_project(path)
    try:
        assert set(read_thumbnails(project, [1, 2])) == {2}
        assert set(read_image_bytes(project, [1, 2, 3])) == {1, 3}
        reasons = {(r.what, r.item_id): r.reason for r in trust_blobs.refusals(project)}
        assert "5000x5000" in reasons[("thumbnail", 1)]
        assert "over the limit" in reasons[("image", 2)]
    finally:
        project.close()


def _linear_weights(n_classes: int, dim: int = 8) -> bytes:
    rows = 1 if n_classes == 2 else n_classes
    return save_safetensors({
        "classes": np.arange(n_classes, dtype=np.int64), "mean": np.zeros(dim), "scale": np.ones(dim),
        "coef": np.zeros((rows, dim)), "intercept": np.zeros(rows),
    }, metadata={"format": "sortlab-linear-1"})


def test_model_weights_that_do_not_match_their_version_are_refused_and_others_still_work(tmp_path):
    from engine.models.predicting import predict_feature_rows
    from storage.modelstore import NewModel, get_model, model_weights, save_model_version

    path, (ant, bee) = _labeled_project(tmp_path / "weights.sortlab")
    project = open_project(path)
    try:
        def save(weights: bytes) -> int:
            return save_model_version(project, NewModel(
                method="logreg", backbone="efficientnet_lite0", layer="pooled", class_names=["ant", "bee"],
                class_ids=[ant, bee], weights=weights))

        good = save(_linear_weights(2))
        wrong_classes = save(_linear_weights(5))
        assert model_weights(project, good) == _linear_weights(2)
        with pytest.raises(trust_blobs.UnusableModelError) as caught:
            model_weights(project, wrong_classes)
        _assert_one_clear_line(str(caught.value), f"Model version {wrong_classes}", "5 classes", "names 2")
        rows = np.zeros((3, 8), dtype=np.float32)
        assert predict_feature_rows(project, get_model(project, good), rows).shape == (3, 2)
        with pytest.raises(trust_blobs.UnusableModelError):
            predict_feature_rows(project, get_model(project, wrong_classes), rows)
    finally:
        project.close()


@pytest.mark.parametrize("tensors, reason", [
    ({"head.weight": ((3, 16), "F32"), "head.bias": ((3,), "F32")}, "not one output per class"),
    ({"head.weight": ((2, 16), "F32"), "head.bias": ((2,), "F32")}, None),
])
def test_finetuned_network_heads_must_have_one_output_per_class(tensors, reason):
    arrays = {name: np.zeros(shape, dtype=np.float32) for name, (shape, _) in tensors.items()}
    blob = save_safetensors(arrays, metadata={"format": "sortlab-finetune-1"})
    found = trust_blobs.weights_mismatch(*trust_blobs.safetensors_header(blob), 2)
    assert (found is None) if reason is None else (reason in found)


def test_a_safetensors_header_claiming_more_than_its_bytes_is_refused():
    blob = bytearray(_linear_weights(2))
    claimed = bytes(blob).replace(b'"shape":[1,8]', b'"shape":[9999,8]')
    assert claimed != bytes(blob)
    with pytest.raises(ValueError, match="which its bytes do not hold"):
        trust_blobs.safetensors_header(claimed)
    with pytest.raises(trust_blobs.UnusableModelError):
        trust_blobs.vet_weights(claimed, 2, 1)


def _flip_cell_pointer(path: Path, table: str) -> None:
    connection = sqlite3.connect(str(path))
    root = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    connection.close()
    data = bytearray(path.read_bytes())
    page = (root - 1) * page_size
    header = 8 if data[page] in (10, 13) else 12  # leaf or interior b-tree page
    data[page + header] ^= 0x40  # the first cell pointer now points outside the page
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_page_is_refused_with_a_clear_message(tmp_path):
    path, _ = _labeled_project(tmp_path / "flipped.sortlab")
    _flip_cell_pointer(path, "classes")
    with pytest.raises(trust.DamagedProjectError) as caught:
        open_project(path)
    _assert_one_clear_line(str(caught.value), "flipped.sortlab is damaged", "Restore it from a backup")
    assert not list(tmp_path.glob("*.bak"))


def test_own_projects_open_and_the_page_check_runs_once_per_state(tmp_path, monkeypatch):
    calls = []
    real = trust.quick_check
    monkeypatch.setattr(trust, "quick_check", lambda *a, **k: calls.append(1) or real(*a, **k))
    path, _ = _labeled_project(tmp_path / "own.sortlab", mailed=False)
    open_project(path).close()
    assert calls == [], "a project Sortlab wrote and closed is not checked again"
    trust.forget_file(path)
    open_project(path).close()
    open_project(path).close()
    assert calls == [1], "the first open checks, the next one remembers"
    _tamper(path, "UPDATE classes SET color = '#000000'")  # changed outside Sortlab
    open_project(path).close()
    assert calls == [1, 1]


def test_an_old_format_project_is_compared_with_its_own_revision_and_upgrades(tmp_path):
    from storage.project import current_revision, head_revision

    old = create_project(tmp_path / "old.sortlab", revision="0002")
    old.close()
    project = open_project(tmp_path / "old.sortlab")
    try:
        assert current_revision(project) == head_revision()
    finally:
        project.close()


def test_refusals_are_project_errors_the_cli_and_gui_already_show():
    assert issubclass(trust.UntrustedProjectError, ProjectError)
    assert issubclass(trust.DamagedProjectError, ProjectError)
    assert issubclass(trust_blobs.UnusableModelError, ProjectError)
