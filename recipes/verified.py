"""`VerifiedRecipe`: the verifier wiring shared by recipes whose reward asks an answer verifier (TinyV,
General-Reasoner): the verifier built from the recipe's `verifier:` settings, passed to the reward with the step's
counters, and the counters turned into train/verifier/ metrics at the end of each step."""

from __future__ import annotations

import functools
from typing import Any

from modules.rollout.batch import RolloutBatch, add_stats
from modules.verifiers import Verifier, VerifierSettings, build_verifier
from recipes.base import RecipeConfigError, RLRecipe

STATS_PREFIX = "verifier/"


def verifier_from_settings(settings: VerifierSettings | None, preset: str) -> Verifier:
    """The recipe's `Verifier` from its `verifier` settings (`preset` when the prompt is null); config errors name
    model.verifier."""
    try:
        return build_verifier(settings or VerifierSettings(), default_prompt=preset)
    except ValueError as err:
        raise RecipeConfigError(f"model.verifier: {err}") from err


def check_verifier_reward(recipe: RLRecipe, name: str) -> None:
    """`name` must be one of the recipe's rewards, without the keywords the recipe passes itself."""
    if name not in recipe.reward_set.names:
        raise RecipeConfigError(f"model.rewards {list(recipe.reward_set.names)} lack {name!r}, the reward this "
                                f"recipe passes its verifier to; add {{name: {name}}}")
    fn = recipe.reward_set.funcs[recipe.reward_set.names.index(name)]
    bound = fn.keywords if isinstance(fn, functools.partial) else {}
    clash = sorted(set(bound) & {"verifier", "verifier_stats", "tokenizer"})
    if clash:
        raise RecipeConfigError(f"model.rewards: the {name!r} reward's kwargs set {clash}, which the recipe passes "
                                "itself; configure the verifier under model.verifier instead")


class VerifiedRecipe(RLRecipe):
    """RLRecipe whose `verifier_reward` reward gets `verifier` and `verifier_stats` (counters it fills) as keywords.

    A subclass sets `verifier_reward` (the reward's name, also the default prompt preset) and implements
    `verifier_step_metrics(counts, step_seconds)`; its result is logged under train/ each step. The counters of a
    training batch travel in `rollout.stats` under `verifier/` (summed over dynamic-sampling rounds).
    """

    HOOKS = ("verifier_step_metrics",)
    verifier_reward: str = ""

    def __init__(self, *args: Any, verifier: VerifierSettings | None = None, **kwargs: Any) -> None:
        # `verifier` is documented in each subclass's Args (its defaults differ).
        verifier_obj = verifier_from_settings(verifier, self.verifier_reward)  # fails before the policy loads
        super().__init__(*args, **kwargs)
        check_verifier_reward(self, self.verifier_reward)
        self.verifier = verifier_obj

    def verifier_step_metrics(self, counts: dict[str, float], step_seconds: float) -> dict[str, float]:
        """train/ metrics from the step's verifier counters."""
        raise NotImplementedError

    def score(self, rollout: RolloutBatch, *, purpose: str, **reward_kwargs: Any) -> RolloutBatch:
        """Passes `verifier` (moved to the policy's device) and a fresh `verifier_stats` dict to the rewards."""
        counts: dict[str, float] = {}
        rollout = super().score(rollout, purpose=purpose, verifier=self.verifier.to(self.device),
                                verifier_stats=counts, **reward_kwargs)
        rollout.stats = add_stats(rollout.stats, {f"{STATS_PREFIX}{k}": v for k, v in counts.items()})
        return rollout

    def on_step_end(self, rollout: RolloutBatch) -> dict[str, float]:
        counts = {k[len(STATS_PREFIX):]: v for k, v in rollout.stats.items() if k.startswith(STATS_PREFIX)}
        return self.verifier_step_metrics(counts, self.elapsed_step_s())


__all__ = ["VerifiedRecipe", "check_verifier_reward", "verifier_from_settings"]
