"""LASER / LASER-D / LASER-DE — adaptive length-based reward shaping (Liu, Zhou, ..., He; arXiv 2505.15612,
ICLR 2026; spec section 8, built from the released verl code since the paper text was not available).

Implemented (the maths is in `modules.papers.laser.rewards`):

- Rewards `laser` (step reward: C + alpha for a correct answer of at most L_T tokens), `laser_d` (the target of the
  prompt's difficulty bucket, easy/medium/hard from the group accuracy in the batch) and `laser_de` (plus alpha for
  wrong, over-target, non-repetitive answers). C = +1 / -0.5 / -1 (no boxed answer), alpha = 0.5.
- LASER-D/DE targets: at the first step and every `monitor_every` steps (20 as released), N rollouts on each prompt
  of a fixed monitoring sample of the training rows; the monitor prompts are bucketed by accuracy (<= 1/3 hard,
  (1/3, 2/3] medium, > 2/3 easy: asymmetric to the training buckets, as released) and each bucket's target is the
  smallest threshold l in `[L_low] + range(step, max + 1, step)` with floor(coverage(l) * n_d) >= 1 (n_easy =
  floor(2N/3), n_medium = floor(N/3), n_hard = 1), else the maximum response length. Targets and step counters are
  checkpointed. Under DDP each rank monitors its share of the prompts and the coverage counts are summed.
- Objective defaults of the released scripts: clip 0.2 / 0.28, KL loss 0.001 (low_var_kl), entropy bonus 0.001,
  temperature 0.6, group-normalised advantages, no other advantage change.
- Logged under train/laser/: target_<bucket>, frac_<bucket> (training buckets), length_bonus_rate, no_answer_rate,
  de_bonus_rate and repetitive_rate (laser_de), monitor_accuracy, monitor_frac_<bucket>, monitor_refreshed, monitor_s.

Documented substitutes: the monitoring set is a fixed seeded sample of the training rows (the release uses a
separate 500-prompt split of the same data); a bucket without a qualifying threshold gets `max_new_tokens` instead
of the batch's longest response (the same rewards: every response is within both); the CPU config uses synthetic
arithmetic with a boxed answer and budgets scaled down (64 tokens, thresholds 8..64 step 8).

[unverified], hence options: `loss_type` bnpo (token mean, as veRL's default aggregation then), `round_method`
(floor as released, ceil), `expected_correct` (1), `require_think` (a reward option: the paper's -1 for missing think
tags; off for models that do not write them).
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from modules.objectives import ObjectiveSettings
from modules.rewards import RewardSpec
from modules.papers.laser.rewards import (BUCKETS, CORRECT, NO_ANSWER, ROUND_METHODS, coverage_counts, length_thresholds,
                                   monitor_buckets, targets_from_coverage)
from modules.rollout.batch import RolloutBatch
from modules.rollout.engine import SamplingSettings
from recipes.base import RecipeConfigError, RLRecipe

VARIANTS = ("laser", "laser_d", "laser_de")
PASSED_KEYS = ("laser_targets", "laser_alpha", "laser_info", "completion_token_ids")  # set here, per call
INFO_KEYS = ("correctness", "bucket", "target", "bonus")  # copied into rollout.columns as laser_<key>


class LASER(RLRecipe):
    """GRPO with LASER's length reward; LASER-D/DE re-estimate per-difficulty targets on a monitoring set."""

    def __init__(
        self,
        model_name_or_path: str,
        rewards: list[RewardSpec | str],
        *args: Any,
        variant: str | None = "laser_d",
        alpha: float = 0.5,
        target_length: int | None = None,
        monitor_size: int = 500,
        monitor_every: int = 20,
        monitor_generations: int | None = None,
        monitor_batch_size: int = 32,
        length_low: int = 1024,
        length_step: int = 1024,
        length_max: int | None = None,
        round_method: str = "floor",
        expected_correct: int = 1,
        sampling: SamplingSettings = SamplingSettings(temperature=0.6),
        objective: ObjectiveSettings = ObjectiveSettings(loss_type="bnpo", epsilon_high=0.28, beta=0.001,
                                                         kl_estimator="low_var_kl", entropy_coef=0.001),
        **kwargs: Any,
    ) -> None:
        """
        Args:
            variant: laser (one target L_T), laser_d (per-difficulty targets from the monitor) or laser_de (plus
                the exploration bonus); model.rewards must hold the reward of that name. null = the one it holds.
            alpha: Length bonus alpha (0.5), also the LASER-DE exploration bonus.
            target_length: L_T of LASER (required for variant laser; 2048/4096/8192 in the paper); for laser_d/de
                the target of every bucket until the first monitor pass (null = max_new_tokens).
            monitor_size: Monitor prompts, a fixed seeded sample of the training rows (500 as released).
            monitor_every: Generation steps between target re-estimations K (20 as released; also at step 0).
            monitor_generations: Rollouts N per monitor prompt (null = num_generations; 8 as released).
            monitor_batch_size: Monitor prompts per generate call.
            length_low: L_low, the smallest candidate target (model names D-L1024/2048/4096).
            length_step: Spacing of the candidate targets above L_low (1024 as released).
            length_max: Largest candidate target (null = max_new_tokens; 16384 as released).
            round_method: floor (released: ECR = floor(coverage * n_d), n_d rounded down) or ceil.
            expected_correct: Smallest expected number of correct responses within a target (1 as released).
            sampling: Sampling settings (temperature 0.6 as released).
            objective: As released: token-mean loss (bnpo, veRL's token-mean [unverified]), clip 0.2 / 0.28,
                low_var_kl KL loss 0.001, entropy bonus 0.001, group-normalised advantages.
        """
        variant = _check_laser_rewards(rewards, variant)
        for name, value in (("monitor_size", monitor_size), ("monitor_every", monitor_every),
                            ("monitor_batch_size", monitor_batch_size), ("expected_correct", expected_correct),
                            ("monitor_generations", monitor_generations), ("target_length", target_length)):
            if value is not None and int(value) < 1:
                raise RecipeConfigError(f"model.{name}={value}; it must be >= 1")
        if not (math.isfinite(alpha) and alpha >= 0):
            raise RecipeConfigError(f"model.alpha={alpha}; it must be a finite number >= 0 (0.5 in the paper)")
        if round_method not in ROUND_METHODS:
            raise RecipeConfigError(f"model.round_method={round_method!r}; use one of {', '.join(ROUND_METHODS)}")
        if variant == "laser" and target_length is None:
            raise RecipeConfigError("model.variant=laser needs model.target_length (L_T, e.g. 2048; 32 with the CPU config)")
        try:
            thresholds = length_thresholds(length_low, length_step, length_max or sampling.max_new_tokens)
        except ValueError as err:
            raise RecipeConfigError(f"model.length_low/length_step/length_max: {err}") from err
        super().__init__(model_name_or_path, rewards, *args, sampling=sampling, objective=objective, **kwargs)
        self.variant = variant
        self.thresholds = thresholds  # candidate targets of the monitor
        n_monitor = monitor_generations or self.num_generations
        if variant != "laser" and round_method == "floor" and n_monitor < 3:
            rank_zero_warn(f"LASER: {n_monitor} monitor rollouts per prompt give n_medium = floor(N/3) = 0, so the "
                           "medium bucket always gets the default target; set model.monitor_generations >= 3")
        self.targets: dict[str, int] | None = None  # L_A per bucket once the monitor ran
        self.laser_step = 0  # generation steps done
        self.monitor_step = -1  # laser_step of the last monitor pass
        self.monitor_stats: dict[str, float] = {}  # of the latest monitor pass (monitor_refreshed: 1 in its step)
        self._monitor_rows: list[dict] | None = None

    # ------------------------------------------------------------------ targets
    def current_targets(self) -> int | dict[str, int]:
        """What the reward gets as laser_targets: L_T, the monitor's L_A per bucket, or the fallback before it."""
        fallback = self.hparams.target_length or self.sampling.max_new_tokens
        if self.variant == "laser" or self.targets is None:
            return int(fallback)
        return dict(self.targets)

    def monitor_rows(self) -> list[dict]:
        """The fixed monitoring sample: `monitor_size` training rows drawn with the datamodule's seed."""
        if self._monitor_rows is None:
            dm = getattr(self.trainer, "datamodule", None)
            rows = getattr(dm, "train_rows", None)
            k = self.hparams.monitor_size
            if rows:
                rng = random.Random(f"laser-monitor:{getattr(dm, 'seed', 0)}")
                self._monitor_rows = [dict(r) for r in rng.sample(list(rows), min(k, len(rows)))]
            elif dm is not None and hasattr(dm, "sample_rows"):
                self._monitor_rows = dm.sample_rows(k)
            else:
                raise RecipeConfigError("LASER-D/DE draws its monitoring set from the datamodule's train_rows (or "
                                        "sample_rows()); use datamodules.PromptDataModule, or model.variant=laser")
        return self._monitor_rows

    @torch.no_grad()
    def refresh_targets(self) -> dict[str, int]:
        """Sample N rollouts per monitor prompt (this rank's share) and re-select the per-bucket targets."""
        hp, started = self.hparams, time.perf_counter()
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
        rows = self.monitor_rows()[rank::world]
        n = hp.monitor_generations or self.num_generations
        lengths, correct, groups = [], [], []
        for start in range(0, len(rows), hp.monitor_batch_size):
            rollout = self.generate_and_score(rows[start:start + hp.monitor_batch_size], purpose="eval",
                                              num_generations=n)
            lengths += rollout.completion_lengths.tolist()
            correct += [c == CORRECT for c in rollout.columns["laser_correctness"]]
            groups += [(start, g) for g in rollout.group_ids.tolist()]
        buckets = monitor_buckets(correct, groups)
        coverage = coverage_counts(lengths, buckets, self.thresholds)
        table = torch.tensor([[*coverage[b][0], coverage[b][1]] for b in BUCKETS], dtype=torch.float64)  # (3, T+1)
        extra = torch.tensor([float(sum(correct)), float(len(correct))], dtype=torch.float64)  # (2,)
        if world > 1:
            table = self.trainer.strategy.reduce(table.to(self.device), reduce_op="sum").cpu()
            extra = self.trainer.strategy.reduce(extra.to(self.device), reduce_op="sum").cpu()
        summed = {b: ([int(c) for c in table[i, :-1].tolist()], int(table[i, -1])) for i, b in enumerate(BUCKETS)}
        self.targets = targets_from_coverage(summed, num_generations=n, thresholds=self.thresholds,
                                             default=self.sampling.max_new_tokens, round_method=hp.round_method,
                                             expected_correct=hp.expected_correct)
        responses = max(float(extra[1]), 1.0)
        self.monitor_stats = {"monitor_accuracy": float(extra[0]) / responses,
                              **{f"monitor_frac_{b}": summed[b][1] / responses for b in BUCKETS},
                              "monitor_s": time.perf_counter() - started}
        self.monitor_step = self.laser_step
        return self.targets

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        due = self.targets is None or self.laser_step - self.monitor_step >= self.hparams.monitor_every
        if self.variant != "laser" and due:
            self.refresh_targets()

    # ------------------------------------------------------------------ hooks
    def score(self, rollout: RolloutBatch, *, purpose: str, **reward_kwargs: Any) -> RolloutBatch:
        """The shared scoring with laser_targets, laser_alpha, a laser_info dict the reward fills and (laser_de)
        the policy's token ids; the reward's per-row details become columns laser_<key> (kept through
        select/concat)."""
        info: dict = {}
        extra: dict[str, Any] = {"laser_targets": self.current_targets(), "laser_alpha": float(self.hparams.alpha),
                                 "laser_info": info}
        if self.variant == "laser_de":
            ids, mask = rollout.completion_ids.cpu(), rollout.completion_mask.bool().cpu()  # (N, T), (N, T)
            extra["completion_token_ids"] = [row[keep].tolist() for row, keep in zip(ids, mask)]
        rollout = super().score(rollout, purpose=purpose, **extra, **reward_kwargs)
        for key in INFO_KEYS:
            rollout.columns[f"laser_{key}"] = list(info[key])
        return rollout

    def on_step_end(self, rollout: RolloutBatch) -> dict[str, float]:
        """Targets, bucket fractions, bonus rates and the latest monitor statistics (train/laser/)."""
        cols, rows = rollout.columns, float(len(rollout))
        targets = self.current_targets()
        metrics: dict[str, float] = {}
        for b in BUCKETS:
            metrics[f"laser/target_{b}"] = float(targets if isinstance(targets, int) else targets[b])
            metrics[f"laser/frac_{b}"] = cols["laser_bucket"].count(b) / rows
        metrics["laser/length_bonus_rate"] = cols["laser_bonus"].count("length") / rows
        metrics["laser/no_answer_rate"] = sum(c == NO_ANSWER for c in cols["laser_correctness"]) / rows
        if self.variant == "laser_de":
            metrics["laser/de_bonus_rate"] = cols["laser_bonus"].count("explore") / rows
            metrics["laser/repetitive_rate"] = cols["laser_bonus"].count("repetitive") / rows
        if self.variant != "laser":
            metrics.update({f"laser/{k}": v for k, v in self.monitor_stats.items()})
            metrics["laser/monitor_refreshed"] = float(self.monitor_step == self.laser_step)
        self.laser_step += 1
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def recipe_state(self) -> dict[str, Any]:
        return {"targets": None if self.targets is None else dict(self.targets), "laser_step": self.laser_step,
                "monitor_step": self.monitor_step, "monitor_stats": dict(self.monitor_stats)}

    def load_recipe_state(self, state: dict[str, Any]) -> None:
        if state:
            self.targets = None if state["targets"] is None else {b: int(state["targets"][b]) for b in BUCKETS}
            self.laser_step, self.monitor_step = int(state["laser_step"]), int(state["monitor_step"])
            self.monitor_stats = dict(state["monitor_stats"])


def _check_laser_rewards(rewards: list[Any], variant: str | None) -> str:
    """The variant, checked against the one laser reward in `rewards` (and no recipe-set option bound there)."""
    if variant is not None and variant not in VARIANTS:
        raise RecipeConfigError(f"model.variant={variant!r}; use one of {', '.join(VARIANTS)}")
    found: list[tuple[str, dict]] = []
    for spec in rewards or []:
        if isinstance(spec, str):
            spec = RewardSpec(spec)
        elif isinstance(spec, dict):
            spec = RewardSpec(**spec)
        if isinstance(spec, RewardSpec) and spec.name in VARIANTS:
            found.append((spec.name, dict(spec.kwargs)))
    if len(found) != 1:
        example = f"rewards: [{{name: {variant or 'laser_d'}, kwargs: {{require_think: false}}}}]"
        raise RecipeConfigError(f"model.rewards must hold exactly one of the rewards {', '.join(VARIANTS)}; found "
                                f"{[name for name, _ in found] or 'none'} (e.g. {example})")
    name, bound = found[0]
    if variant is not None and name != variant:
        raise RecipeConfigError(f"model.variant={variant!r} but model.rewards has the {name!r} reward; rename that "
                                f"reward to {variant!r} (or set model.variant: {name})")
    clash = sorted(set(bound) & set(PASSED_KEYS))
    if clash:
        raise RecipeConfigError(f"model.rewards: the {name!r} reward binds {clash}, which LASER sets itself; "
                                "use model.alpha / model.target_length and drop them from the reward's kwargs")
    return name
