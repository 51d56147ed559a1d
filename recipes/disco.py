"""DISCO — domain- and difficulty-aware reward scaling for imbalanced multi-domain GRPO (Zhou et al., arXiv
2505.15074, EMNLP Findings 2025; spec section 12, built from the released code since the paper text was not
available).

Implemented (the maths is in `modules.papers.disco.rewards`):

- `score`: the base correctness reward r (`accuracy_reward`, default `domain_correct`: one 0/1 rule per domain)
  becomes r~ = r * w_dom(d) * w_diff with w_dom = ln(1 + 1/p_d) computed at fit start from the domain mix of the
  datamodule's training rows (`domain_weights`) and w_diff = 1/(sc + 1e-5) from the group's self-consistency sc
  (`difficulty_weights`). Other reward functions in `rewards` (a format bonus...) are added unweighted: with sc = 0
  their weighted value would be multiplied by 1e5.
- `compute_advantages`: the shared group advantages with `scale_rewards: none`, i.e. A = r~ - mean_group(r~)
  (the released `group_norm_wo_std`); correct samples get w_dom(1 - sc)/sc, wrong ones -w_dom. `scale_rewards:
  group` is refused: both weights are constant within a group, so the std division cancels them exactly.
- Per-domain metrics each step for every domain of the training mix: train/domain/<d>/count (prompts), /accuracy
  (unweighted) and /reward (weighted), the last two NaN in a step without a prompt of d; per-domain held-out
  accuracy (eval/domain/<d>/accuracy, /count); the held-out reward is the unweighted one.
- Defaults of the released code: G = 4, k3 KL loss with beta 1e-3.

Documented substitutes: the four synthetic domains of `datamodules.tasks.multi_domain` (addition, letter choice,
country-fact QA with aliases, keyword sentiment, mixed 75/8.3/8.3/8.3) stand in for MetaMath / ARC / NQ / IMDB.

[unverified], hence options: the w_dom formula (inferred from the constants 0.847 / 2.565; `domain_weighting`
offers the code's commented alternatives), the difficulty form (`difficulty_weighting`), and whether the paper's
"self-consistency" is group accuracy (the code) or majority-answer agreement (`self_consistency`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from modules.papers.disco.rewards import (
    DIFFICULTY_FORMS,
    DOMAIN_WEIGHT_FORMS,
    SELF_CONSISTENCY,
    difficulty_weights,
    disco_rewards,
    domain_prediction,
    domain_weights,
    self_consistency,
)
from modules.objectives import ObjectiveSettings
from modules.rollout.batch import RolloutBatch
from recipes.base import RecipeConfigError, RLRecipe, recipe_settings

DOMAIN_COLUMN = "domain"


class DISCO(RLRecipe):
    """GRPO whose correctness reward is scaled by a domain weight and a difficulty weight, advantages without std."""

    def __init__(
        self,
        *args: Any,
        domain_weighting: str = "log",
        difficulty_weighting: str = "inverse",
        difficulty_eps: float = 1e-5,
        self_consistency: str = "accuracy",
        domain_mix: dict[str, float] | None = None,
        num_generations: int = 4,
        objective: ObjectiveSettings = ObjectiveSettings(scale_rewards="none", beta=1e-3),
        accuracy_reward: str | None = "domain_correct",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            domain_weighting: Domain weight from the training mix p_d: log = ln(1 + 1/p_d) (DISCO's default),
                log_squared = ln(1 + 1/p_d)^2 or inverse = 1/p_d (the released code's commented alternatives),
                none = 1 (ablation).
            difficulty_weighting: inverse = 1/(sc + difficulty_eps) (default), log_squared = ln(1 + 1/(sc + eps))^2
                (commented variant), none = 1 (ablation).
            difficulty_eps: eps of the difficulty weight (1e-5 as released).
            self_consistency: sc of a group: accuracy = fraction of correct samples (the released code) or
                agreement = fraction agreeing with the group's majority answer ([unverified] reading of the paper).
            domain_mix: Fixed {domain: count or proportion} for the domain weights instead of counting the
                training rows' `domain` column (e.g. {math: 0.75, arc: 0.0833, ...} for the paper's constants).
            num_generations: G (4 as released).
            objective: As released: advantages without std (scale_rewards none; batch divides by the batch std and
                keeps the relative weights; group is refused: it cancels both weights), k3 KL loss, beta 1e-3.
            accuracy_reward: The base 0/1 correctness reward r that DISCO scales; must name one of `rewards`.
        """
        objective = recipe_settings(type(self), ObjectiveSettings, objective, "objective")
        if objective.scale_rewards == "group":
            raise RecipeConfigError("model.objective.scale_rewards='group' cancels DISCO's weights (they are constant within a "
                                    "group, so dividing by the group std removes them); use none (DISCO) or batch")
        for field, value, allowed in (("domain_weighting", domain_weighting, (*DOMAIN_WEIGHT_FORMS, "none")),
                                      ("difficulty_weighting", difficulty_weighting, (*DIFFICULTY_FORMS, "none")),
                                      ("self_consistency", self_consistency, SELF_CONSISTENCY)):
            if value not in allowed:
                raise RecipeConfigError(f"model.{field}={value!r}; use one of {', '.join(allowed)}")
        if not difficulty_eps > 0:
            raise RecipeConfigError(f"model.difficulty_eps={difficulty_eps}; it must be > 0 (sc can be 0)")
        super().__init__(*args, num_generations=num_generations, objective=objective, accuracy_reward=accuracy_reward,
                         **kwargs)
        if self.accuracy_reward is None:
            raise RecipeConfigError(f"model.accuracy_reward={accuracy_reward!r} is not one of model.rewards "
                                    f"{list(self.reward_set.names)}; DISCO scales this 0/1 correctness reward "
                                    "(add {name: domain_correct} to model.rewards)")
        self.domain_weight: dict[str, float] | None = None
        if domain_mix is not None:
            self.set_domain_weights(domain_mix)

    # ------------------------------------------------------------------ domain weights
    def set_domain_weights(self, domains: Mapping[str, float] | list[str]) -> dict[str, float]:
        """Domain weights from {domain: count} or per-row domain labels, with `domain_weighting`."""
        form = self.hparams.domain_weighting
        try:
            weights = domain_weights(domains, "log" if form == "none" else form)
        except ValueError as err:
            raise RecipeConfigError(f"DISCO domain weights: {err}") from err
        self.domain_weight = {d: 1.0 for d in weights} if form == "none" else weights
        return self.domain_weight

    def on_fit_start(self) -> None:
        if self.hparams.domain_mix is not None:
            return
        dm = self.trainer.datamodule
        rows = getattr(dm, "train_rows", None)
        if not rows:
            raise RecipeConfigError(f"DISCO computes its domain weights from the datamodule's train_rows, and "
                                    f"{type(dm).__name__} has none; use datamodules.PromptDataModule or set "
                                    "model.domain_mix")
        missing = [i for i, row in enumerate(rows) if row.get(DOMAIN_COLUMN) is None]
        if missing:
            raise RecipeConfigError(
                f"DISCO needs a '{DOMAIN_COLUMN}' column in every training row; {len(missing)} of {len(rows)} rows "
                f"lack it (row {missing[0]} has columns {sorted(rows[missing[0]])}). Use data.task: multi_domain or "
                "add the column to the data")
        weights = self.set_domain_weights([str(row[DOMAIN_COLUMN]) for row in rows])
        counts = {d: sum(str(r[DOMAIN_COLUMN]) == d for r in rows) for d in weights}
        rank_zero_info("DISCO domain weights (" + self.hparams.domain_weighting + "): " + ", ".join(
            f"{d} p={counts[d] / len(rows):.3f} w={w:.3f}" for d, w in sorted(weights.items())))

    # ------------------------------------------------------------------ hooks
    def _domains(self, rollout: RolloutBatch) -> list[str]:
        domains = rollout.columns.get(DOMAIN_COLUMN)
        if domains is None or any(d is None for d in domains):
            raise RecipeConfigError(f"DISCO needs a '{DOMAIN_COLUMN}' value on every prompt row; this batch has "
                                    f"columns {sorted(rollout.columns)}. Use data.task: multi_domain or add the column")
        return [str(d) for d in domains]

    def _self_consistency(self, rollout: RolloutBatch, base: Tensor, domains: list[str]) -> Tensor:
        """(N,) sc of each row's group."""
        predictions = None
        if self.hparams.self_consistency == "agreement":
            predictions = [domain_prediction(c, d) for c, d in zip(rollout.completions, domains)]
        return self_consistency(base.cpu(), rollout.group_ids.cpu(), mode=self.hparams.self_consistency,
                                predictions=predictions)

    def score(self, rollout: RolloutBatch, *, purpose: str, **reward_kwargs: Any) -> RolloutBatch:
        """Base rewards, then (training only) r~ = w_dom * w_diff * r_base + (other reward functions) in
        rollout.rewards; held-out evaluation reports the unweighted reward.

        rollout.rewards_per_func keeps the unweighted values (logged as rewards/<name>, accuracy)."""
        rollout = super().score(rollout, purpose=purpose, **reward_kwargs)
        if purpose != "train":
            return rollout
        if self.domain_weight is None:
            raise RecipeConfigError("DISCO has no domain weights yet: they are computed at fit start from the "
                                    "training rows; outside Trainer.fit call set_domain_weights() or set "
                                    "model.domain_mix")
        domains = self._domains(rollout)
        base = self.accuracy_values(rollout).double().cpu()  # (N,) unweighted r, None -> 0
        hp = self.hparams
        difficulty = None if hp.difficulty_weighting == "none" else hp.difficulty_weighting
        try:
            weighted = disco_rewards(base, domains, rollout.group_ids.cpu(), self.domain_weight,
                                     difficulty=difficulty, eps=hp.difficulty_eps,
                                     sc=self._self_consistency(rollout, base, domains))  # (N,)
        except ValueError as err:
            raise RecipeConfigError(f"DISCO: {err}") from err
        w_base = self.reward_set.weights[self.reward_set.names.index(self.accuracy_reward)]
        rollout.rewards = rollout.rewards + (w_base * (weighted - base)).to(rollout.rewards)
        return rollout

    def on_step_end(self, rollout: RolloutBatch) -> dict[str, float]:
        """Per-domain accuracy / weighted reward / prompt count and DISCO's weights."""
        domains = self._domains(rollout)
        base = self.accuracy_values(rollout).double().cpu()  # (N,)
        names = sorted(self.domain_weight)
        stats = torch.zeros(len(names), 3, dtype=torch.float64)  # (D, [correct, reward, rows])
        for d, acc, reward in zip(domains, base.tolist(), rollout.rewards.double().cpu().tolist()):
            stats[names.index(d)] += torch.tensor([acc, reward, 1.0], dtype=torch.float64)
        hp, g = self.hparams, rollout.group_size
        sc = self._self_consistency(rollout, base, domains)  # (N,)
        form = "inverse" if hp.difficulty_weighting == "none" else hp.difficulty_weighting
        diff = difficulty_weights(base, rollout.group_ids.cpu(), form, hp.difficulty_eps, sc=sc)  # (N,)
        group_sc, group_diff = sc.view(-1, g)[:, 0], diff.view(-1, g)[:, 0]  # (B,), (B,)
        solved = group_sc > 0  # (B,) groups with a correct sample (w_diff is finite and meaningful)
        extra = torch.stack([group_sc.sum(), torch.tensor(float(len(group_sc)), dtype=torch.float64),
                             group_diff[solved].sum(), solved.sum().double()])  # (4,)
        if self.trainer.world_size > 1:  # every rank logs the same keys (log_dict syncs them)
            stats = self.all_gather(stats.to(self.device)).reshape(-1, len(names), 3).sum(0).cpu()
            extra = self.all_gather(extra.to(self.device)).reshape(-1, 4).sum(0).cpu()
        metrics: dict[str, float] = {}
        for d, (correct, reward, n) in zip(names, stats.tolist()):
            # Every domain every step: Lightning would repeat a key's last value in a step that skips it.
            metrics[f"domain/{d}/count"] = n / g  # prompts of the step
            metrics[f"domain/{d}/accuracy"] = correct / n if n else float("nan")  # NaN: no prompt of d
            metrics[f"domain/{d}/reward"] = reward / n if n else float("nan")
        metrics["disco/self_consistency"] = float(extra[0] / extra[1])
        if hp.difficulty_weighting != "none":  # mean over groups with a correct sample (0 if none)
            metrics["disco/difficulty_weight"] = float(extra[2] / extra[3]) if extra[3] > 0 else 0.0
        return metrics

    # ------------------------------------------------------------------ evaluation
    def eval_metrics(self, rollouts: list[RolloutBatch]) -> dict[str, float]:
        """Greedy held-out accuracy per domain (eval/domain/<d>/accuracy, /count)."""
        per: dict[str, list[float]] = {}
        for rollout in rollouts:
            domains = rollout.columns.get(DOMAIN_COLUMN) or [None] * len(rollout)
            for d, acc in zip(domains, self.accuracy_values(rollout).tolist()):
                if d is not None:
                    per.setdefault(str(d), []).append(acc)
        out = {}
        for d, accs in sorted(per.items()):
            out[f"eval/domain/{d}/accuracy"] = sum(accs) / len(accs)
            out[f"eval/domain/{d}/count"] = float(len(accs))
        return out
