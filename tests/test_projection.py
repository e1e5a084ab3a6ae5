"""engine.insight.projection: PCA at once, t-SNE streaming partials, cancellation, the embedding job."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import engine.features.extraction as extraction
from engine.insight import projection
from engine.runtime.jobs import JobCancelled, JobContext, JobStatus, run_job
from engine.insight.projection import MapLayout, compute_embedding, embedding_job, point_attributes


def clusters(n_per: int = 60, k: int = 3, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 8, (k, dim))
    X = np.concatenate([rng.normal(c, 1.0, (n_per, dim)) for c in centers]).astype(np.float32)
    y = np.repeat(np.arange(k), n_per)
    return X, y


def separation(coords: np.ndarray, y: np.ndarray) -> float:
    """Between-cluster distance of centroids over mean within-cluster spread."""
    centroids = np.stack([coords[y == c].mean(axis=0) for c in np.unique(y)])
    within = np.mean([np.linalg.norm(coords[y == c] - centroids[c], axis=1).mean() for c in np.unique(y)])
    between = np.mean([np.linalg.norm(a - b) for i, a in enumerate(centroids) for b in centroids[i + 1 :]])
    return between / within


def test_pca_is_immediate_float32_and_keeps_clusters_apart():
    X, y = clusters()
    coords = compute_embedding(JobContext(), X, "pca")
    assert coords.shape == (len(X), 2) and coords.dtype == np.float32
    assert separation(coords, y) > 3


def test_pca_handles_degenerate_inputs():
    assert compute_embedding(JobContext(), np.ones((1, 5), np.float32), "pca").shape == (1, 2)
    one_dim = compute_embedding(JobContext(), np.arange(10, dtype=np.float32)[:, None], "pca")
    assert one_dim.shape == (10, 2) and np.all(one_dim[:, 1] == 0)
    with pytest.raises(ValueError):
        compute_embedding(JobContext(), np.ones((4, 3)), "umap")


def test_tsne_streams_partials_and_separates_clusters():
    X, y = clusters()
    partials = []
    fractions = []
    context = JobContext(on_progress=lambda f, m: fractions.append(f), on_partial=partials.append)
    coords = compute_embedding(context, X, "tsne", seed=1)
    assert coords.shape == (len(X), 2) and coords.dtype == np.float32
    total = projection.EARLY_ITERATIONS + projection.MAIN_ITERATIONS
    iterations = [p.iteration for p in partials]
    assert iterations == sorted(iterations) and iterations[0] == projection.PARTIAL_EVERY and iterations[-1] == total
    assert all(isinstance(p, MapLayout) and p.method == "tsne" and p.total_iterations == total for p in partials)
    assert all(p.coords.shape == (len(X), 2) and p.colors is None for p in partials)
    # without image ids the layouts name their rows by row number
    assert all(np.array_equal(p.image_ids, np.arange(len(X))) for p in partials)
    # partials are copies: a later step does not rewrite an earlier one
    assert not np.allclose(partials[0].coords, partials[-1].coords)
    assert fractions[-1] == 1.0
    assert separation(coords, y) > 3


def test_tsne_cancels_inside_the_optimisation():
    X, _ = clusters()
    cancel = threading.Event()
    partials = []

    def on_partial(result):
        partials.append(result)
        cancel.set()  # the user presses Cancel as soon as the first layout arrives

    context = JobContext(on_partial=on_partial, cancel_event=cancel)
    with pytest.raises(JobCancelled):
        compute_embedding(context, X, "tsne")
    assert len(partials) == 1
    assert run_job(compute_embedding, JobContext(cancel_event=cancel), X, "tsne").status is JobStatus.CANCELLED


def test_embedding_job_gives_pca_first_then_tsne(project, monkeypatch):
    X, _ = clusters(n_per=20)
    ids = np.arange(100, 100 + len(X), dtype=np.int64)
    calls = []

    def fake_load_features(project_arg, backbone, layer):
        calls.append((project_arg, backbone, layer))
        return ids, X

    monkeypatch.setattr(extraction, "load_features", fake_load_features)
    monkeypatch.setattr(projection, "EARLY_ITERATIONS", 100)
    monkeypatch.setattr(projection, "MAIN_ITERATIONS", 100)
    partials = []
    result = embedding_job(JobContext(on_partial=partials.append), project, "efficientnet_lite0", "pooled")
    assert calls == [(project, "efficientnet_lite0", "pooled")]
    assert partials[0].method == "pca" and partials[0].iteration == 0
    assert [p.method for p in partials[1:]] == ["tsne"] * (len(partials) - 1) and len(partials) > 5
    assert all(np.array_equal(p.image_ids, ids) for p in partials)
    colors = partials[0].colors  # read in the job, so the window never has to
    np.testing.assert_array_equal(colors.image_ids, ids)
    assert (colors.class_ids == -1).all() and (colors.predicted == -1).all()
    assert isinstance(result, MapLayout) and result.method == "tsne" and result.coords.shape == (len(X), 2)
    np.testing.assert_array_equal(result.image_ids, ids)


def test_point_attributes_aligns_labels_sources_and_splits(project):
    from storage.catalog import add_class, set_labels, set_split
    from storage.models import Image

    with project.writing() as session:
        for i, source in enumerate(["cam-a", "cam-b", "cam-a", ""]):
            session.add(Image(id=i + 1, content_hash=f"h{i}", original_name=f"{i}.png", original_path=f"/x/{i}.png",
                              source=source, width=4, height=4, original_format="PNG", data=b"", thumbnail=b""))
    bees = add_class(project, "bees")
    set_labels(project, [3], bees.id)
    set_split(project, [2], "val")
    attributes = point_attributes(project, [3, 1, 2, 4, 99])
    assert attributes.class_ids.tolist() == [bees.id, -1, -1, -1, -1]
    names = attributes.source_names
    assert [names[c] for c in attributes.source_codes[:4]] == ["cam-a", "cam-a", "cam-b", ""]
    assert attributes.splits.tolist() == [0, 0, 1, 0, 0]


def test_map_colors_and_prediction_arrays_follow_the_active_version(project):
    from storage.catalog import add_class, set_labels
    from storage.models import Image, ModelVersion, Prediction
    from storage.modelstore import set_active_model

    with project.writing() as session:
        for i in range(1, 6):
            session.add(Image(id=i, content_hash=f"h{i}", original_name=f"{i}.png", original_path=f"/x/{i}.png",
                              source="cam" if i % 2 else "phone", width=4, height=4, original_format="PNG",
                              data=b"", thumbnail=b""))
    ants, bees = add_class(project, "ants"), add_class(project, "bees")
    set_labels(project, [1, 2], ants.id)
    assert projection.prediction_arrays(project)[0].size == 0  # no model yet
    versions = []
    with project.writing() as session:
        for said, active in (({1: ants.id, 2: ants.id, 3: ants.id}, False), ({2: bees.id, 4: bees.id, 5: None}, True)):
            model = ModelVersion(method="logreg", backbone="b", layer="l", class_names=["ants", "bees"],
                                 class_ids=[ants.id, bees.id], weights=b"", is_active=active, n_labeled=2, metrics={})
            session.add(model)
            session.flush()
            versions.append(model.id)
            for image_id, class_id in said.items():
                session.add(Prediction(model_version_id=model.id, image_id=image_id, class_index=0, class_id=class_id,
                                       probability=0.9, margin=0.5, probabilities=b"", out_of_fold=image_id == 2))
    ids, classes, out_of_fold = projection.prediction_arrays(project)
    assert ids.tolist() == [2, 4, 5] and classes.tolist() == [bees.id, bees.id, -1]
    assert out_of_fold.tolist() == [True, False, False]

    colors = projection.map_colors(project, [5, 4, 3, 2, 1, 77])
    assert colors.class_ids.tolist() == [-1, -1, -1, ants.id, ants.id, -1]
    assert colors.predicted.tolist() == [-1, bees.id, -1, bees.id, -1, -1]
    assert [colors.source_names[c] for c in colors.source_codes[:5]] == ["cam", "phone", "cam", "phone", "cam"]
    assert [c.name for c in colors.classes] == ["ants", "bees"]
    assert projection.map_colors(project, [1, 3], version=versions[0]).predicted.tolist() == [ants.id, ants.id]
    set_active_model(project, versions[0])
    assert projection.map_colors(project, [3, 4]).predicted.tolist() == [ants.id, -1]


def test_align_puts_values_in_the_asked_order():
    values = projection.align(np.array([30, 10, 20]), np.array([3, 1, 2]), np.array([20, 99, 10, 30]), -1)
    assert values.tolist() == [2, -1, 1, 3]
    assert projection.align(np.zeros(0, np.int64), np.zeros(0, np.int64), np.array([1, 2]), -1).tolist() == [-1, -1]


def test_the_map_leaves_one_core_to_the_window(monkeypatch):
    for cores, threads in ((None, 1), (1, 1), (2, 1), (8, 7)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert projection.background_threads() == threads, cores
