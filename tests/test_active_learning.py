"""Active learning ("label these next"): TypiClust cold start, finding a rare class, the uncertain
phase's reasons, the project-level call and the `next` / `images` CLI JSON shapes.

Synthetic features throughout (Gaussian blobs), so no network is needed and everything runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from engine.curation.next_batch import SelectionCache, next_images, prepare_selection
from engine.curation.selection_index import build_selection_index
from engine.curation.selection_rules import SWITCH_LABELS_PER_CLASS, Strategy, choose_batch
from engine.runtime.jobs import JobContext
from helpers.cli import cli, cli_json
from helpers.feature_projects import BACKBONE, LAYER, add_placeholder_images, make_feature_project
from storage.featurestore import find_feature_set, store_vectors

DIM = 64


def blobs(sizes: list[int], seed: int = 0, spread: float = 1.0, distance: float = 12.0):
    """Well separated Gaussian blobs: (X, blob of each row, centres)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), DIM))
    centres *= distance / np.linalg.norm(centres, axis=1, keepdims=True)
    blob = np.repeat(np.arange(len(sizes)), sizes)
    X = centres[blob] + rng.normal(scale=spread, size=(len(blob), DIM))
    return X.astype(np.float32), blob, centres


def test_cold_start_takes_the_most_typical_image_of_every_cluster():
    X, blob, _ = blobs([220, 180, 150, 120, 90, 60])
    index = build_selection_index(X)
    selection = choose_batch(index, np.array([], dtype=np.int64), np.array([], dtype=np.int64), count=6)
    assert selection.strategy is Strategy.TYPICAL
    rows = [pick.row for pick in selection.picks]
    assert sorted(blob[rows]) == [0, 1, 2, 3, 4, 5]  # one image from each of the K = 0 + 6 clusters
    for row in rows:  # ... the most typical one of its blob (densest k-NN neighbourhood)
        members = np.flatnonzero(blob == blob[row])
        assert row == members[np.argmax(index.typicality[members])]
    assert all("no label yet" in pick.reason for pick in selection.picks)


def test_cold_start_takes_the_largest_clusters_that_hold_no_label():
    X, blob, _ = blobs([220, 180, 150, 120, 90, 60], seed=1)
    index = build_selection_index(X)
    labeled = np.flatnonzero(blob == 0)[:2]  # K = 2 labeled + 4 = 6 clusters: the blobs
    selection = choose_batch(index, labeled, np.zeros(2, dtype=np.int64), count=4)
    assert [int(blob[pick.row]) for pick in selection.picks] == [1, 2, 3, 4]  # largest unlabeled first
    assert not set(labeled) & {pick.row for pick in selection.picks}


def test_a_class_living_in_one_small_cluster_is_found_within_the_first_batches():
    sizes = [300, 300, 300, 300, 15]  # class 4 is 1.2 % of the images
    X, truth, _ = blobs(sizes, seed=2, spread=2.0, distance=14.0)
    index = build_selection_index(X)
    labeled: list[int] = []
    for _ in range(3):  # three batches of 10: random picking would find class 4 with p ~ 0.3
        classes = truth[labeled] if labeled else np.array([], dtype=np.int64)
        proba = None
        if len(set(classes)) >= 2:
            model = LogisticRegression(max_iter=500).fit(X[labeled], classes)
            proba = np.zeros((len(X), 5))
            proba[:, model.classes_] = model.predict_proba(X)
        selection = choose_batch(index, np.array(labeled, dtype=np.int64), classes, 10, proba)
        labeled += [pick.row for pick in selection.picks]
        assert len(set(labeled)) == len(labeled)
    assert 4 in set(truth[labeled])


def test_with_enough_labels_it_asks_where_the_model_hesitates():
    X, truth, _ = blobs([200, 200, 200], seed=3, spread=3.0, distance=6.0)  # overlapping classes
    index = build_selection_index(X)
    rng = np.random.default_rng(0)
    labeled = np.concatenate([rng.choice(np.flatnonzero(truth == c), SWITCH_LABELS_PER_CLASS + 3, replace=False)
                              for c in range(3)])
    model = LogisticRegression(max_iter=500).fit(X[labeled], truth[labeled])
    proba = model.predict_proba(X)
    selection = choose_batch(index, labeled, truth[labeled], 8, proba, ["glass", "plastic", "paper"])
    assert selection.strategy is Strategy.UNCERTAIN
    rows = [pick.row for pick in selection.picks]
    assert len(set(rows)) == 8 and not set(rows) & set(labeled.tolist())
    hesitating = [pick for pick in selection.picks if pick.reason.startswith("the model hesitates between ")]
    exploring = [pick for pick in selection.picks if pick.reason.startswith("typical of a group")]
    assert len(hesitating) == 6 and len(exploring) == 2  # a quarter of the batch keeps exploring
    top_two = np.sort(proba, axis=1)[:, -2:]
    margin = top_two[:, 1] - top_two[:, 0]
    others = np.setdiff1d(np.arange(len(X)), np.concatenate([labeled, [pick.row for pick in exploring]]))
    smallest = np.sort(margin[others])[:6]  # exactly the six least certain of the remaining images
    np.testing.assert_allclose(np.sort(margin[[pick.row for pick in hesitating]]), smallest, atol=1e-12)
    names = {"glass", "plastic", "paper"}
    assert all(set(pick.reason.removeprefix("the model hesitates between ").split(" and ")) <= names
               for pick in hesitating)


def test_the_uncertain_phase_keeps_a_share_for_a_class_with_few_labels():
    X, truth, _ = blobs([300, 300, 60], seed=4, spread=2.5, distance=8.0)
    index = build_selection_index(X)
    rng = np.random.default_rng(1)
    counts = [30, 30, SWITCH_LABELS_PER_CLASS]
    labeled = np.concatenate([rng.choice(np.flatnonzero(truth == c), n, replace=False) for c, n in enumerate(counts)])
    proba = LogisticRegression(max_iter=500).fit(X[labeled], truth[labeled]).predict_proba(X)
    selection = choose_batch(index, labeled, truth[labeled], 10, proba, ["a", "b", "rare"])
    balance = [pick for pick in selection.picks if "few labels" in pick.reason]
    assert [pick.reason for pick in balance] == ["may be rare, a class with few labels so far"]
    assert truth[balance[0].row] == 2


def test_project_next_images_cold_start_and_cache(project):
    made = make_feature_project(project, [0, 0, 0], unlabeled=90, dim=1280, spread=0.5, seed=5)
    cache = SelectionCache()
    first = next_images(JobContext(), project, 3, cache=cache)
    assert first.strategy is Strategy.TYPICAL and len(first.images) == 3
    assert {image.image_id for image in first.images} <= set(made.image_ids)
    assert all(image.path.startswith("/synthetic/") for image in first.images)
    prepared = prepare_selection(JobContext(), project, cache=cache)
    assert prepare_selection(JobContext(), project, cache=cache) is prepared  # features unchanged: reused

    new_ids = add_placeholder_images(project, 5, start=1000)
    feature_set = find_feature_set(project, BACKBONE, LAYER)
    store_vectors(project, feature_set.id, new_ids, np.ones((5, 1280), dtype=np.float32))
    rebuilt = prepare_selection(JobContext(), project, cache=cache)
    assert rebuilt is not prepared and set(new_ids) <= set(rebuilt.image_ids.tolist())


@pytest.fixture
def feature_project_file(tmp_path):
    from storage.project import create_project

    path = tmp_path / "blobs.sortlab"
    with create_project(path) as opened:
        make_feature_project(opened, [7, 7, 7], unlabeled=40, dim=1280, spread=0.5, seed=6)
    return path


def test_cli_next_json_shape(feature_project_file, capsys):
    result = cli_json(capsys, "next", feature_project_file, "--count", 5)
    assert set(result) == {"strategy", "images"} and result["strategy"] == "typical"  # no model yet
    assert len(result["images"]) == 5
    for image in result["images"]:
        assert set(image) == {"id", "path", "reason", "score", "overlap"} and image["overlap"] is False  # no team
        assert isinstance(image["id"], int) and image["path"].startswith("/synthetic/")
        assert isinstance(image["reason"], str) and image["reason"] and isinstance(image["score"], float)
    labeled = {row["id"] for row in cli_json(capsys, "images", feature_project_file, "--labeled")["images"]}
    assert not labeled & {image["id"] for image in result["images"]}

    cli_json(capsys, "train", feature_project_file)
    after = cli_json(capsys, "next", feature_project_file, "--count", 4)
    assert after["strategy"] == "uncertain" and len(after["images"]) == 4
    code, text, _ = cli(capsys, "next", feature_project_file, "--count", "0")
    assert code == 2


def test_cli_images_json_shape(feature_project_file, capsys):
    every = cli_json(capsys, "images", feature_project_file)["images"]
    assert len(every) == 61
    assert all(set(row) == {"id", "path", "label", "prediction", "probability"} for row in every)
    assert all(row["prediction"] is None and row["probability"] is None for row in every)  # no model yet
    labeled = cli_json(capsys, "images", feature_project_file, "--labeled")["images"]
    unlabeled = cli_json(capsys, "images", feature_project_file, "--unlabeled")["images"]
    assert len(labeled) == 21 and len(unlabeled) == 40
    assert {row["label"] for row in labeled} == {"c0", "c1", "c2"} and {row["label"] for row in unlabeled} == {None}

    cli_json(capsys, "train", feature_project_file)
    predicted = cli_json(capsys, "images", feature_project_file, "--unlabeled")["images"]
    assert all(row["prediction"] in {"c0", "c1", "c2"} for row in predicted)
    assert all(0.0 < row["probability"] <= 1.0 for row in predicted)
