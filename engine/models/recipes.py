"""Quick's recipes and the automatic choice between them, made on the project's own labels.

A recipe is the linear head's setting on the cached features. The default (logistic regression on
unit-length rows, C = 1) won on average over caltech101-dev, hymenoptera and the digits demo
(benchmarks/accuracy.py), but a project of blurry camera frames or of near-identical classes may want
more or less regularization. So a full training (not the retrain after each label, which reuses the
last choice) scores the candidates by stratified cross-validation on the labeled images that are not
on the validation side: the images its reported accuracy comes from never choose anything. The
default stays unless another candidate is better by ``MIN_GAIN`` (a margin against chasing noise),
and candidates are tried in order until ``TIME_BUDGET_S`` is spent. The choice and its reason are
stored with the model version and shown in the training panel and the model card.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from engine.models.classifiers import fold_count, make_classifier
from engine.models.evaluation import MIN_LABELED_FOR_HOLDOUT, EvaluationPlan, stratified_folds
from engine.runtime.jobs import JobContext
from storage.modelstore import ModelInfo


@dataclass(frozen=True)
class QuickRecipe:
    name: str  # stored in model versions
    title: str  # the user's words (training panel, model card)
    C: float  # logistic regression's inverse regularization on unit-length rows


QUICK_RECIPES = (  # the default first: it is kept when nothing beats it clearly
    QuickRecipe("unit-C1", "logistic regression on unit-length features, C = 1", 1.0),
    QuickRecipe("unit-C0.1", "logistic regression on unit-length features, C = 0.1 (stronger regularization)", 0.1),
    QuickRecipe("unit-C0.3", "logistic regression on unit-length features, C = 0.3", 0.3),
    QuickRecipe("unit-C3", "logistic regression on unit-length features, C = 3", 3.0),
    QuickRecipe("unit-C10", "logistic regression on unit-length features, C = 10 (weaker regularization)", 10.0),
)
# Tried on caltech101-dev and not kept (README figures): self-training on Quick's confident predictions of
# unlabeled images (+1.1 / +0.8 / +0.2 points at 5 / 10 / 30 labels per class; costs a second fit per retrain;
# risks, not measured: over-confident suggestions), square-rooted or project-centred features (within 0.3 points).
# Other heads (shrinkage LDA, nearest class mean, linear SVM, ridge) do no better than C = 1 on these features.
DEFAULT_RECIPE = QUICK_RECIPES[0]
RECIPES_BY_NAME = {recipe.name: recipe for recipe in QUICK_RECIPES}
CHOICE_FOLDS = 3
MIN_GAIN = 0.005  # balanced accuracy a candidate must add over the default (half a point)
TIME_BUDGET_S = 10.0  # the choice stops trying candidates after this long (the default is always scored)
MAX_LABELED_TO_CHOOSE = 10_000  # beyond, even the default's cross-validation would outlast the training


@dataclass(frozen=True)
class RecipeChoice:
    recipe: QuickRecipe
    reason: str
    scores: dict[str, float]  # recipe name -> cross-validated balanced accuracy (those tried)


def choose_recipe(context: JobContext, X: np.ndarray, y: np.ndarray, seed: int = 0,
                  time_budget_s: float = TIME_BUDGET_S, candidates: tuple[QuickRecipe, ...] = QUICK_RECIPES,
                  ) -> RecipeChoice:
    """The recipe for these labeled rows (never the validation side's: the caller leaves them out), from
    ``candidates``, the first of which is the default."""
    default, by_name = candidates[0], {recipe.name: recipe for recipe in candidates}
    counts = np.unique(y, return_counts=True)[1]
    folds = min(fold_count(counts, CHOICE_FOLDS), CHOICE_FOLDS)
    if folds < 2:
        return RecipeChoice(default, "the default: too few labels per class to compare recipes", {})
    splits = stratified_folds(y, folds, seed)
    started = time.perf_counter()
    scores: dict[str, float] = {}
    for number, recipe in enumerate(candidates):
        if number and time.perf_counter() - started > time_budget_s:
            break
        context.check_cancelled()
        context.progress(number / len(candidates), f"Comparing recipes ({number + 1} of {len(candidates)})")
        predicted = np.empty_like(y)
        for train, test in splits:
            model = make_classifier("logreg", C=recipe.C, random_state=seed).fit(X[train], y[train])
            predicted[test] = model.predict(X[test])
        scores[recipe.name] = float(balanced_accuracy_score(y, predicted))
    best = max(scores, key=lambda name: scores[name])
    default_score = scores[default.name]
    tried = f"{len(scores)} recipes compared by {folds}-fold cross-validation on {len(y)} labeled images"
    if scores[best] < default_score + MIN_GAIN:
        return RecipeChoice(default, f"the default; {tried}, none better by half a point or more "
                                            f"({default_score * 100:.1f}%)", scores)
    return RecipeChoice(by_name[best], f"chosen: {scores[best] * 100:.1f}% against the default's "
                                               f"{default_score * 100:.1f}% ({tried})", scores)


def recipe_for_training(context: JobContext, plan: EvaluationPlan, X: np.ndarray, y: np.ndarray, is_val: np.ndarray,
                        seed: int, previous: ModelInfo | None) -> RecipeChoice:
    """The recipe of a training run: a quick retrain keeps the previous version's; a full training
    chooses on the training side when the model is judged on a validation side, else takes the default
    (judged by cross-validation, every labeled image is needed to judge the model, none may choose)."""
    if previous is not None:
        kept = RECIPES_BY_NAME.get(previous.params.get("recipe_name", ""), DEFAULT_RECIPE)
        return RecipeChoice(kept, previous.params.get("recipe_reason", "the default"), {})
    if len(y) > MAX_LABELED_TO_CHOOSE:
        return RecipeChoice(DEFAULT_RECIPE, f"the default: above {MAX_LABELED_TO_CHOOSE:,} labeled images, comparing "
                                            "recipes would take longer than the training", {})
    if plan.kind != "holdout":
        return RecipeChoice(DEFAULT_RECIPE, f"the default: recipes are compared from {MIN_LABELED_FOR_HOLDOUT} "
                                            "labeled images, when a validation side can judge the result", {})
    train_side = ~np.asarray(is_val, dtype=bool)
    return choose_recipe(context, X[train_side], y[train_side], seed)
