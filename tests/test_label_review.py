"""Trust your labels: the review queue (out-of-fold scores), near-duplicates with the leak guard, outliers,
and the review/duplicates/outliers commands on a tiny generated project."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import main
from engine.curation import duplicates as dup
from engine.curation.duplicates import (
    find_duplicates,
    keep_groups_on_one_side,
    look_alikes_of,
    nearest_neighbours,
    similar_pairs,
    validation_twins,
)
from engine.curation.outliers import find_outliers, robust_z
from engine.curation.review import confident_issues, label_quality, review_arrays, review_settings, stored_review
from engine.models.classifiers import DEFAULT_C, NotEnoughLabelsError
from engine.models.evaluation import place_new_images
from engine.runtime.jobs import JobCancelled, JobContext
from helpers.cli import cli, cli_json
from storage.modelstore import get_model
from storage.project import open_project
from storage.splits import LabeledImage


def clustered(per_class: int = 20, classes: int = 3, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated class clusters of rectified vectors (like pooled CNN features)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(classes, dim))
    y = np.repeat(np.arange(classes), per_class)
    return np.maximum(centers[y] + rng.normal(size=(len(y), dim)), 0).astype(np.float32), y


# ---- review ----------------------------------------------------------------------------------------


def test_a_wrong_label_tops_the_queue_and_its_suggestion_is_the_true_class():
    X, y = clustered()
    given = y.copy()
    given[7] = 2  # a class-0 image labeled as class 2
    ids = np.arange(100, 100 + len(y))
    review = review_arrays(ids, given, X)
    first = review.suspects()[0]
    assert (first.image_id, first.label, first.suggested) == (107, 2, 0)
    assert first.score < 0.2 < review.suspects()[1].score
    assert 1 <= review.suggested_count <= 3
    assert len(review.suspects()) == len(y) and review.unchecked == []


def test_a_class_with_one_image_is_left_unchecked_instead_of_flagged():
    X, y = clustered()
    given = np.append(y, 9)
    X = np.vstack([X, X[:1]])
    review = review_arrays(np.arange(len(given)), given, X)
    assert review.unchecked == [len(given) - 1]
    assert 9 not in review.classes.tolist()


def test_review_needs_two_classes_of_two_images():
    X, _ = clustered(per_class=2, classes=1)
    with pytest.raises(NotEnoughLabelsError):
        review_arrays(np.arange(2), np.array([0, 0]), X)


def test_label_quality_by_self_confidence_and_normalized_margin():
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    columns = np.array([1, 2])
    np.testing.assert_allclose(label_quality(proba, columns, "self_confidence"), [0.2, 0.8], atol=1e-12)
    np.testing.assert_allclose(label_quality(proba, columns, "margin"), [0.25, 0.85], atol=1e-12)
    with pytest.raises(ValueError):
        label_quality(proba, columns, "entropy")


def test_confident_issues_count_images_another_class_confidently_claims():
    labels = np.array([0, 0, 0, 1, 1])
    # Thresholds: class 0 mean(0.9, 0.8, 0.3) = 0.667, class 1 mean(0.9, 0.6) = 0.75. Row 2 leans to
    # class 1 (0.7) but stays under its threshold, so nothing is confidently off the diagonal.
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9], [0.4, 0.6]])
    assert confident_issues(proba, labels).tolist() == [False] * 5
    # Row 2 at 0.8 for class 1 clears 0.75: counted. Row 4 (0.4 / 0.6) clears neither threshold.
    proba[2] = [0.2, 0.8]
    assert confident_issues(proba, labels).tolist() == [False, False, True, False, False]


# ---- duplicates ------------------------------------------------------------------------------------


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles far smaller than the data, so every block boundary case runs."""
    monkeypatch.setattr(dup, "ROW_BLOCK", 7)
    monkeypatch.setattr(dup, "COLUMN_BLOCK", 11)


def brute_similarity(X: np.ndarray) -> np.ndarray:
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    return U.astype(np.float64) @ U.T.astype(np.float64)


def test_tiled_pairs_and_neighbours_match_the_full_matrix(small_tiles):
    X, _ = clustered(per_class=15, dim=16, seed=3)
    S = brute_similarity(X)
    threshold = 0.9
    a, b, sims = similar_pairs(X, threshold)
    expected = {(i, j) for i, j in zip(*np.nonzero(np.triu(S, 1) >= threshold))}
    near_threshold = {(i, j) for i, j in zip(*np.nonzero(np.abs(np.triu(S, 1) - threshold) < 1e-5))}
    assert set(zip(a.tolist(), b.tolist())) ^ expected <= near_threshold
    np.testing.assert_allclose(sims, S[a, b], atol=1e-5)

    rows, near = nearest_neighbours(X, k=3)
    np.fill_diagonal(S, -np.inf)
    np.testing.assert_allclose(near, -np.sort(-S, axis=1)[:, :3], atol=1e-5)
    assert not np.any(rows == np.arange(len(X))[:, None])  # never its own neighbour


def test_copies_group_transitively_and_identical_files_always_group(small_tiles):
    rng = np.random.default_rng(1)
    X = np.maximum(rng.normal(size=(30, 64)), 0).astype(np.float32)
    X[10] = X[3] + 0.01 * rng.normal(size=64)  # 3 ~ 10 ~ 20: one group of three
    X[20] = X[10] + 0.01 * rng.normal(size=64)
    hashes = [f"h{i}" for i in range(30)]
    hashes[25] = hashes[5]  # byte-identical files, whatever their features say
    ids = np.arange(1000, 1030)
    groups = find_duplicates(ids, X, 0.95, hashes)
    assert [g.image_ids for g in groups] == [(1003, 1010, 1020), (1005, 1025)]
    assert groups[0].kind == "same photo" and groups[1].identical


def test_a_cancelled_comparison_stops_with_job_cancelled(small_tiles):
    X, _ = clustered(per_class=15, dim=16)
    cancel = threading.Event()
    seen: list[float] = []

    def cancel_after_first_block(fraction: float, message: str) -> None:
        seen.append(fraction)
        cancel.set()

    context = JobContext(cancel_after_first_block, cancel_event=cancel)
    with pytest.raises(JobCancelled):
        similar_pairs(X, 0.9, context)
    assert len(seen) == 1 and seen[0] < 1.0


def test_after_the_guard_no_near_duplicate_pair_straddles_train_and_validation():
    rng = np.random.default_rng(5)
    X = np.maximum(rng.normal(size=(80, 64)), 0).astype(np.float32)  # distinct pictures: cosine ~0.5
    y = np.repeat([0, 1], 40)
    twins = rng.choice(len(y), size=12, replace=False)
    X = np.vstack([X, X[twins] + 0.01 * rng.normal(size=(12, X.shape[1])).astype(np.float32)])
    y = np.append(y, y[twins])
    images = [LabeledImage(i, int(c), "", "train", False, None, f"hash-{i}") for i, c in enumerate(y)]
    sides = place_new_images(images, {img.image_id for img in images})
    groups = [g.image_ids for g in find_duplicates(np.arange(len(y)), X, 0.95)]
    assert set(groups) == {(int(t), 80 + k) for k, t in enumerate(twins)}
    straddling = [g for g in groups if {sides[i] for i in g} == {"train", "val"}]
    assert straddling, "the hash order should have split some twins (else this test proves nothing)"
    assert len(validation_twins(groups, sides)) >= len(straddling)

    guarded = keep_groups_on_one_side(groups, sides)
    assert all(len({guarded[i] for i in g}) == 1 for g in groups)
    assert validation_twins(groups, guarded) == []
    untouched = set(sides) - {i for g in groups for i in g}
    assert all(guarded[i] == sides[i] for i in untouched)


def test_the_guard_follows_pinned_images_and_never_moves_them():
    sides = {1: "train", 2: "val", 3: "val", 4: "train", 5: "val"}
    guarded = keep_groups_on_one_side([(1, 2, 3), (4, 5)], sides, pinned={1})
    assert [guarded[i] for i in (1, 2, 3)] == ["train"] * 3  # the pinned image's side wins over the majority
    assert [guarded[i] for i in (4, 5)] == ["train", "train"]  # a tie goes to the first image's side
    assert [keep_groups_on_one_side([(5, 4)], sides)[i] for i in (4, 5)] == ["val", "val"]
    assert keep_groups_on_one_side([(1, 2)], sides, pinned={1, 2}) == sides
    # A new twin (3, on val) joins its settled group (1 and 4 on train) instead of pulling it over.
    assert {keep_groups_on_one_side([(1, 3, 4)], sides, settled={1, 4})[i] for i in (1, 3, 4)} == {"train"}
    assert keep_groups_on_one_side([(2, 4, 5)], sides, settled={4})[2] == "train"


def test_the_import_summary_names_new_images_that_look_like_known_ones(project, monkeypatch):
    from helpers.feature_projects import BACKBONE, LAYER, add_placeholder_images
    from storage.featurestore import ensure_feature_set, store_vectors

    monkeypatch.setattr(dup, "COLUMN_BLOCK", 4)  # known images read in several blocks
    rng = np.random.default_rng(4)
    known = np.maximum(rng.normal(size=(10, 64)), 0).astype(np.float32)
    old_ids = add_placeholder_images(project, 10)
    new_ids = add_placeholder_images(project, 4, start=100)
    fresh = np.maximum(rng.normal(size=(3, 64)), 0).astype(np.float32)
    copy = known[6] + 0.01 * rng.normal(size=64).astype(np.float32)
    feature_set = ensure_feature_set(project, BACKBONE, LAYER, 64)
    store_vectors(project, feature_set.id, old_ids, known)
    store_vectors(project, feature_set.id, new_ids[:3], np.vstack([fresh[:2], copy]))  # the 4th: no features yet
    summary = look_alikes_of(JobContext(), project, new_ids, backbone=BACKBONE, layer=LAYER)
    assert [(m.image_id, m.like_id) for m in summary.matches] == [(new_ids[2], old_ids[6])]
    assert summary.matches[0].similarity > 0.99
    assert summary.compared == 3 and summary.missing_features == [new_ids[3]]


# ---- reviewed marks and the grid's review, outlier and chosen filters ----------------------------------


def labeled_with_model(project, self_confidence: dict[int, float], out_of_fold: set[int]):
    """Images labeled "ants" (and one unlabeled), with a stored model version whose probability of "ants"
    is ``self_confidence[image]``."""
    from helpers.feature_projects import add_placeholder_images
    from storage.catalog import ensure_classes, set_labels
    from storage.modelstore import NewModel, PredictionBatch, save_model_version

    ids = add_placeholder_images(project, len(self_confidence) + 1)
    classes = ensure_classes(project, ["ants", "bees"])
    labeled = ids[:-1]
    set_labels(project, labeled, classes["ants"])
    ants = np.array([self_confidence[k] for k in range(len(labeled))] + [0.5])
    version = save_model_version(
        project, NewModel("logreg", "b", "l", ["ants", "bees"], [classes["ants"], classes["bees"]], b"w", {"C": 1.0}),
        PredictionBatch(np.array(ids), np.column_stack([ants, 1 - ants]),
                        np.array([k in out_of_fold for k in range(len(ids))])))
    return ids, classes, version


def test_review_marks_stay_with_the_label_and_are_undone_with_it(project):
    from storage.catalog import label_states, mark_reviewed, restore_labels, set_labels, set_labels_by_class

    ids, classes, _ = labeled_with_model(project, {0: 0.2, 1: 0.3, 2: 0.9}, {0, 1, 2})
    before = mark_reviewed(project, ids)  # the unlabeled image is skipped
    assert [s.image_id for s in before] == ids[:3] and all(s.reviewed_at is None for s in before)
    assert all(s.reviewed_at is not None for s in label_states(project, ids[:3]))
    set_labels(project, ids[:1], classes["ants"])  # same class again: still reviewed
    set_labels(project, ids[1:2], classes["bees"])  # another class: the user has not reviewed that label
    set_labels_by_class(project, {ids[2]: classes["bees"]})
    states = label_states(project, ids[:3])
    assert [s.reviewed_at is not None for s in states] == [True, False, False]
    undo = set_labels(project, ids[:1], classes["bees"])
    restore_labels(project, undo)  # undo brings the label back with its mark
    assert label_states(project, ids[:1])[0].reviewed_at is not None
    restore_labels(project, before)  # undo the marking itself
    assert all(s.reviewed_at is None for s in label_states(project, ids[:3]))


def test_the_review_filter_ranks_labels_by_out_of_fold_self_confidence(project):
    from storage import browse
    from storage.catalog import mark_reviewed

    ids, _, version = labeled_with_model(project, {0: 0.45, 1: 0.05, 2: 0.9, 3: 0.2, 4: 0.01}, {0, 1, 2, 3})

    def shown(**query):
        return browse.filtered_image_ids(project, browse.GridQuery(kind=browse.REVIEW, **query), version).tolist()

    # 4 is in-sample (not out-of-fold): a model that trained on it cannot judge it.
    assert shown(sort=browse.RANKED, threshold=1.0) == [ids[1], ids[3], ids[0], ids[2]]
    assert shown(sort=browse.RANKED, threshold=0.5) == [ids[1], ids[3], ids[0]]
    assert shown(sort=browse.RANKED, threshold=1.0, limit=2) == [ids[1], ids[3]]
    assert shown(threshold=0.5) == [ids[0], ids[1], ids[3]]  # import order when asked
    review = stored_review(project)  # the same queue, from the stored predictions, for the GUI's count
    assert [s.image_id for s in review.suspects()] == [ids[1], ids[3], ids[0], ids[2]]
    assert review.unchecked == [ids[4]]
    mark_reviewed(project, [ids[1]])
    assert shown(sort=browse.RANKED, threshold=0.5) == [ids[3], ids[0]]
    assert [s.image_id for s in stored_review(project).suspects()] == [ids[3], ids[0], ids[2]]
    tiles = browse.tile_infos(project, ids, version)
    assert [tiles[i].reviewed for i in ids] == [False, True, False, False, False, False]
    assert browse.image_detail(project, ids[1], version).reviewed
    assert browse.REVIEW in browse.NEEDS_MODEL


def test_outlier_and_chosen_filters_keep_their_ranking(project):
    from helpers.feature_projects import add_placeholder_images
    from storage import browse
    from storage.outliers import replace_outliers

    ids = add_placeholder_images(project, 6)
    replace_outliers(project, [(ids[4], 9.0, ["far"]), (ids[1], 12.5, ["farther"]), (ids[2], 4.0, ["odd"])])

    def shown(**query):
        return browse.filtered_image_ids(project, browse.GridQuery(**query)).tolist()

    assert shown(kind=browse.OUTLIERS, sort=browse.RANKED) == [ids[1], ids[4], ids[2]]
    assert shown(kind=browse.OUTLIERS) == [ids[1], ids[2], ids[4]]
    group = (ids[5], ids[0], ids[3], ids[0])  # a duplicate group, in the order the duplicates job gave
    assert shown(kind=browse.CHOSEN, image_ids=group, sort=browse.RANKED) == [ids[5], ids[0], ids[3]]
    assert shown(kind=browse.CHOSEN, image_ids=group) == [ids[0], ids[3], ids[5]]
    assert shown(kind=browse.CHOSEN, image_ids=group, sort=browse.RANKED, limit=2) == [ids[5], ids[0]]
    replace_outliers(project, [])
    assert shown(kind=browse.OUTLIERS) == []


# ---- outliers --------------------------------------------------------------------------------------


def test_a_solid_colour_placeholder_among_photo_like_vectors_is_flagged():
    X, y = clustered(per_class=25, classes=2, dim=48, seed=2)
    placeholder = np.zeros((1, X.shape[1]), dtype=np.float32)
    placeholder[0, :3] = 5.0  # a flat picture excites a few channels only
    X = np.vstack([X, placeholder])
    ids = np.arange(len(X))
    labels = {int(i): int(c) for i, c in zip(ids, np.append(y, 0))}
    flagged = find_outliers(ids, X, labels, {0: "ants", 1: "bees"})
    assert flagged and flagged[0].image_id == len(X) - 1
    assert "looks like no other image labeled 'ants'" in flagged[0].reasons
    assert len(flagged) <= 3


def test_robust_z_ignores_the_outlier_itself_and_survives_no_spread():
    values = np.array([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 50.0])
    z = robust_z(values)
    assert z[-1] > 100 and np.all(np.abs(z[:-1]) < 3)
    np.testing.assert_array_equal(robust_z(np.ones(5)), np.zeros(5))


# ---- CLI on a tiny generated project ----------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _shared_onnx_cache(onnx_cache):
    return onnx_cache


def write_photo(path: Path, colour, seed: int, size: int = 96) -> Path:
    """A noisy one-colour JPEG with a darker square somewhere (every file different)."""
    rng = np.random.default_rng(seed)
    pixels = np.array(colour, dtype=np.float64) + rng.normal(0, 18, (size, size, 3))
    x, y = rng.integers(0, size - 36, 2)
    pixels[y : y + 30, x : x + 30] *= 0.6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=92)
    return path


def write_scene(path: Path, seed: int, size: int = 128) -> Path:
    """A picture of 6-15 random ellipses, boxes and strokes: distinct scenes stay below 0.86 cosine."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 16))):
        x, y = rng.integers(0, size - 20, 2)
        w, h = rng.integers(12, 60, 2)
        box = [int(x), int(y), int(x + w), int(y + h)]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.ellipse(box, fill=colour)
        elif shape == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.line(box, fill=colour, width=int(rng.integers(2, 8)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def curated_project(tmp_path_factory):
    """10 red and 10 blue photos, a blue photo filed under red and a flat grey placeholder filed under red;
    imported with folder labels."""
    root = tmp_path_factory.mktemp("curation")
    folders = root / "labeled"
    for i in range(10):
        write_photo(folders / "red" / f"red{i}.jpg", (210, 40, 40), seed=i)
        write_photo(folders / "blue" / f"blue{i}.jpg", (40, 50, 210), seed=50 + i)
    write_photo(folders / "red" / "actually_blue.jpg", (40, 50, 210), seed=99)
    Image.new("RGB", (96, 96), (235, 235, 235)).save(folders / "red" / "placeholder.png")
    project = root / "curation.sortlab"
    assert main.main(["import", str(project), str(folders), "--labels-from-folders"]) == 0
    return project


def test_review_json_puts_the_misfiled_photo_first(curated_project, capsys):
    result = cli_json(capsys, "review", curated_project)
    assert set(result) == {"suggested_count", "suspects"} and isinstance(result["suggested_count"], int)
    suspects = result["suspects"]
    assert len(suspects) == 22
    assert all(set(s) == {"id", "path", "label", "suggested", "score"} for s in suspects)
    top = [s for s in suspects[:2] if s["path"].endswith("actually_blue.jpg")]
    assert top and (top[0]["label"], top[0]["suggested"]) == ("red", "blue")
    assert [s["score"] for s in suspects] == sorted(s["score"] for s in suspects)
    assert 1 <= result["suggested_count"] <= 5


def test_outliers_json_flags_the_placeholder_and_keeps_the_flags_for_the_grid(curated_project, capsys):
    from storage import browse

    result = cli_json(capsys, "outliers", curated_project)
    flagged = {Path(row["path"]).name: row for row in result["outliers"]}
    assert "placeholder.png" in flagged and flagged["placeholder.png"]["reasons"]
    assert result["outliers"][0]["path"].endswith("placeholder.png") and len(flagged) <= 3
    with open_project(curated_project) as project:
        shown = browse.filtered_image_ids(project, browse.GridQuery(kind=browse.OUTLIERS, sort=browse.RANKED))
    assert shown.tolist() == [row["id"] for row in result["outliers"]]


def test_review_uses_the_active_linear_models_method_and_C(curated_project, capsys):
    assert review_settings_of(curated_project) == ("logreg", DEFAULT_C)  # no model yet: the defaults
    trained = cli_json(capsys, "train", curated_project, "--method", "svm")
    with open_project(curated_project) as project:
        C = get_model(project, trained["model"]).params["C"]
    assert review_settings_of(curated_project) == ("svm", C)
    first_two = [Path(s["path"]).name for s in cli_json(capsys, "review", curated_project)["suspects"][:2]]
    assert "actually_blue.jpg" in first_two  # next to the grey placeholder, whose label "red" is no better


def review_settings_of(path: Path) -> tuple[str, float]:
    with open_project(path) as project:
        return review_settings(project)


def test_duplicates_json_groups_a_resaved_copy_with_its_original_only(tmp_path, capsys):
    folder = tmp_path / "scenes"
    for i in range(8):
        write_scene(folder / f"scene{i}.jpg", seed=i)
    with Image.open(folder / "scene3.jpg") as original:
        original.save(folder / "scene3_copy.png")  # the same pixels, other bytes: the hash cannot tell
    project = tmp_path / "scenes.sortlab"
    assert main.main(["import", str(project), str(folder)]) == 0
    result = cli_json(capsys, "duplicates", project)
    assert set(result) == {"threshold", "groups"} and result["threshold"] == pytest.approx(dup.LOOK_ALIKE)
    assert [sorted(Path(m["path"]).name for m in group) for group in result["groups"]] == [
        ["scene3.jpg", "scene3_copy.png"]]
    assert all(set(member) == {"id", "path"} for member in result["groups"][0])
    code, _, err = cli(capsys, "duplicates", project, "--threshold", "1.5")
    assert code == 2 and "--threshold" in err
