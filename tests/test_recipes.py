"""Quick's automatic recipe choice (engine.models.recipes): made on the training side only, the default
kept unless another recipe is clearly better, reused by quick retrains, shown with its reason."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.feature_projects import BACKBONE, LAYER, make_feature_project

from engine.models import recipes
from engine.models.evaluation import EvaluationPlan
from engine.models.recipes import QuickRecipe, choose_recipe, recipe_for_training
from engine.models.training import train_on_cached_features
from engine.runtime.jobs import JobCancelled, JobContext
from storage import modelstore

OVER_REGULARIZED = QuickRecipe("unit-C1e-6", "regularized into the class means' directions", 1e-6)


def blobs(per_class: int = 30, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, 16)) * 3
    y = np.repeat(np.arange(classes), per_class)
    return (centers[y] + rng.normal(size=(len(y), 16))).astype(np.float32), y


def elongated(per_class: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes apart along feature 0, hidden in a large noise shared by features 0 and 1: only a weakly
    regularized model learns to subtract feature 1 (a strongly regularized one follows the class means)."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], per_class)
    X = rng.normal(scale=0.3, size=(len(y), 16))
    common = rng.normal(scale=4.0, size=len(y))
    X[:, 0] += y + common
    X[:, 1] += common
    X[:, 2] += 20.0  # rows of about the same length: unit-length scaling keeps the geometry
    return X.astype(np.float32), y


def test_the_default_stays_when_no_recipe_is_clearly_better():
    X, y = blobs()
    choice = choose_recipe(JobContext(), X, y)
    assert choice.recipe is recipes.DEFAULT_RECIPE
    assert set(choice.scores) == {r.name for r in recipes.QUICK_RECIPES}
    assert choice.reason.startswith("the default") and "3-fold cross-validation on 90 labeled images" in choice.reason


def test_a_clearly_better_recipe_replaces_the_default():
    X, y = elongated()
    choice = choose_recipe(JobContext(), X, y)
    assert choice.recipe.C > recipes.DEFAULT_RECIPE.C and choice.reason.startswith("chosen:")
    assert choice.scores[choice.recipe.name] >= choice.scores[recipes.DEFAULT_RECIPE.name] + recipes.MIN_GAIN
    poor_default = choose_recipe(JobContext(), X, y, candidates=(OVER_REGULARIZED, recipes.DEFAULT_RECIPE))
    assert poor_default.recipe is recipes.DEFAULT_RECIPE
    assert f"against the default's {poor_default.scores[OVER_REGULARIZED.name] * 100:.1f}%" in poor_default.reason


def test_the_time_budget_stops_after_the_default_and_cancel_is_honoured():
    X, y = blobs()
    assert list(choose_recipe(JobContext(), X, y, time_budget_s=0.0).scores) == [recipes.DEFAULT_RECIPE.name]
    context = JobContext()
    context.cancel()
    with pytest.raises(JobCancelled):
        choose_recipe(context, X, y)


def test_too_few_labels_per_class_keep_the_default():
    X, y = blobs(per_class=1)
    choice = choose_recipe(JobContext(), X, y)
    assert choice.recipe is recipes.DEFAULT_RECIPE and choice.scores == {} and "too few" in choice.reason


def test_only_the_training_side_chooses_and_cross_validated_projects_keep_the_default(monkeypatch):
    X, y = blobs()
    is_val = np.zeros(len(y), dtype=bool)
    is_val[::5] = True
    seen = []
    monkeypatch.setattr(recipes, "choose_recipe", lambda context, X_, y_, seed: seen.append(len(y_)) or
                        recipes.RecipeChoice(recipes.DEFAULT_RECIPE, "scored", {}))
    recipe_for_training(JobContext(), EvaluationPlan("holdout"), X, y, is_val, 0, None)
    assert seen == [len(y) - is_val.sum()]
    choice = recipe_for_training(JobContext(), EvaluationPlan("cv", folds=5), X, y, is_val, 0, None)
    assert choice.recipe is recipes.DEFAULT_RECIPE and "validation side" in choice.reason and len(seen) == 1


def test_training_stores_the_recipe_and_a_quick_retrain_keeps_it(project, monkeypatch):
    make_feature_project(project, [130, 130], unlabeled=5, dim=16)
    fractions, messages = [], []
    context = JobContext(lambda fraction, message: (fractions.append(fraction), messages.append(message)))
    first = train_on_cached_features(context, project, "logreg", BACKBONE, LAYER, quick=False)
    assert first.metrics.evaluation == "holdout"
    assert fractions == sorted(fractions) and any(m.startswith("Comparing recipes") for m in messages)
    assert first.params["recipe_name"] in recipes.RECIPES_BY_NAME and first.params["recipe_reason"]
    assert first.params["recipe_scores"] and first.params["C"] == pytest.approx(
        recipes.RECIPES_BY_NAME[first.params["recipe_name"]].C)

    def no_choice(*args, **kwargs):
        raise AssertionError("a quick retrain must not compare recipes again")

    monkeypatch.setattr(recipes, "choose_recipe", no_choice)
    again = train_on_cached_features(JobContext(), project, "logreg", BACKBONE, LAYER, quick=True)
    assert again.params["quick"] and again.params["recipe_name"] == first.params["recipe_name"]
    assert again.params["recipe_reason"] == first.params["recipe_reason"]
    stored = modelstore.get_model(project, again.model_version)
    assert stored.params["recipe"] == recipes.RECIPES_BY_NAME[first.params["recipe_name"]].title
