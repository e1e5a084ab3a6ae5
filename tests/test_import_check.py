"""The import summary's look-alikes and outliers (issue 14): engine.curation.import_check on cached
(synthetic) features, a planted near-copy, a placeholder unlike everything, a picture in the wrong folder."""

from __future__ import annotations

import numpy as np
from helpers.feature_projects import BACKBONE, LAYER, add_placeholder_images, make_feature_project

from engine.curation.import_check import check_new_images
from engine.runtime.jobs import JobContext
from storage import catalog
from storage.featurestore import ensure_feature_set, load_vectors, store_vectors

DIM = 1280  # the default network's: its cached vectors are used as they are, nothing is extracted


def test_new_look_alikes_and_outliers_are_found_and_ordinary_new_images_are_not(project):
    fp = make_feature_project(project, [20, 20], dim=DIM)
    _, X = load_vectors(project, BACKBONE, LAYER)
    rng = np.random.default_rng(1)
    c0 = fp.class_by_name["c0"]
    copy = X[3] * 1.05 + rng.normal(scale=0.02, size=DIM)  # the same photo, a little brighter
    placeholder = rng.normal(size=DIM) * 0.01
    placeholder[0] = 10.0  # a solid-colour "image not found": unlike anything in the project
    wrong_folder = fp.centers[1] + rng.normal(scale=1.5, size=DIM)  # a c1 picture in c0's folder
    ordinary = fp.centers[0] + rng.normal(scale=1.5, size=(4, DIM))
    vectors = np.vstack([copy, placeholder, wrong_folder, ordinary]).astype(np.float32)
    new_ids = add_placeholder_images(project, len(vectors), start=1000)
    store_vectors(project, ensure_feature_set(project, BACKBONE, LAYER, DIM).id, new_ids, vectors)
    catalog.set_labels(project, [new_ids[2], *new_ids[3:]], c0, origin="import")
    copy_id, placeholder_id, wrong_id = new_ids[:3]

    progress = []
    check = check_new_images(JobContext(on_progress=lambda f, m: progress.append(f)), project, new_ids,
                             backbone=BACKBONE, layer=LAYER)
    assert check.checked == len(new_ids)
    assert check.look_alike_ids == [copy_id]
    assert check.look_alikes[0].like_id == fp.image_ids[3] and check.look_alikes[0].similarity > 0.95
    by_id = {o.image_id: o for o in check.outliers}
    assert placeholder_id in by_id and "looks like no other image in the project" in by_id[placeholder_id].reasons
    assert wrong_id in by_id and by_id[wrong_id].reasons == ("looks like no other image labeled 'c0'",)
    assert not set(by_id) & set(new_ids[3:]) and copy_id not in by_id
    assert [o.score for o in check.outliers] == sorted((o.score for o in check.outliers), reverse=True)
    assert progress and progress[-1] == 1.0


def test_a_first_import_has_no_look_alikes_to_report(project):
    fp = make_feature_project(project, [10, 10], dim=DIM, spread=0.5)
    check = check_new_images(JobContext(), project, fp.image_ids, backbone=BACKBONE, layer=LAYER)
    assert check.look_alikes == [] and check.checked == 20
