"""GUI-G1 — R1-Zero-like training for GUI visual grounding (Zhou, Dai, Wang, Zhou, Jia, Xu; arXiv 2505.15810,
NeurIPS 2025; spec section 5, from the released code where the paper is silent).

A vision-language policy reads a screenshot and a grounding instruction in the Fast Thinking Template (no system
prompt, no `<think>`: the user turn is the image then "Grounding instruction is: ... Report the bbox coordinates in
JSON format.") and answers ```json [{"bbox_2d": [x1, y1, x2, y2]}]``` in absolute pixels. Implemented:
- Rewards (`modules.papers.gui_g1`): `gui_hit` (box centre inside the target), `gui_iou` (0.25 IoU) and `gui_box`
  (0.125 x the harmonic mean of the four normalised coordinate closenesses, the box-size constraint against the
  shrinking / inflating reward hacks); a completion that does not parse scores 0 on all three.
- Objective: advantages r - group mean without the std division; the length-free loss, each row's clipped token
  sum divided by the constant 64 (`objective: {loss_type: dr_grpo, loss_divisor: 64}`, an option of the shared
  objective); no KL (beta 0); clip 0.2; temperature 0.9; G = 8; 128 new tokens; learning rate 1e-6.
- Difficulty weights: each row's loss is multiplied by its difficulty coefficient (`RolloutBatch.sample_weights`).
  The released code reads a precomputed `rate` field whose formula is not released; `difficulty_weight` takes that
  column, or computes a weight from the target box (`box_area`: a bounded inverse box-area ratio, [unverified]).
- Metrics: the box statistics of each step's rollouts and of held-out evaluation, per difficulty (hit rate, mean
  IoU, predicted / target box area: the paper's reward-hacking signal, parse failures), under `gui/`.

The CPU config trains a tiny random VLM on synthetic screens (`datamodules.tasks.gui_screens`): it exercises every
part, but a random policy does not learn grounding in a few steps; the GPU configs (Qwen2.5-VL-3B-Instruct, LoRA and
QLoRA) are in recipes/configs/scale/.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from modules.objectives import ObjectiveSettings
from modules.optim import OptimizerSettings
from modules.papers.gui_g1.rewards import DIFFICULTY_WEIGHTS, box_metrics, difficulty_weight
from modules.rewards import RewardSpec
from modules.rollout.batch import RolloutBatch
from modules.rollout.engine import SamplingSettings
from recipes.base import RecipeConfigError, RLRecipe
from recipes.policy_module import prefixed_metrics

RATE_COLUMN = "rate"


class GUIG1(RLRecipe):
    """GRPO for GUI grounding: box rewards, no std scaling, the /64 loss and per-sample difficulty weights."""

    def __init__(
        self,
        model_name_or_path: str,
        rewards: list[RewardSpec | str],
        *args: Any,
        difficulty_weight: str | None = RATE_COLUMN,
        num_generations: int = 8,
        accuracy_reward: str | None = "gui_hit",
        sampling: SamplingSettings = SamplingSettings(temperature=0.9, max_new_tokens=128),
        objective: ObjectiveSettings = ObjectiveSettings(loss_type="dr_grpo", loss_divisor=64, scale_rewards="none"),
        optimizer: OptimizerSettings = OptimizerSettings(learning_rate=1e-6),
        **kwargs: Any,
    ) -> None:
        """
        Args:
            difficulty_weight: The per-sample loss weight: `rate` (the row's `rate` column, as the released data;
                the synthetic screens fill it with the box_area weight), a weight function computed from the
                row's `solution` box and `image_size` (box_area [unverified], uniform), or null (no weighting).
            accuracy_reward: gui_hit (a hit is what the paper's grounding accuracy counts).
            sampling: Temperature 0.9 and 128 new tokens, as released.
            objective: Advantages without std scaling; each row's token-loss sum / 64 (dr_grpo with loss_divisor 64);
                no KL.
            optimizer: Learning rate 1e-6, as released.
        """
        if difficulty_weight is not None and difficulty_weight != RATE_COLUMN and \
                difficulty_weight not in DIFFICULTY_WEIGHTS:
            raise RecipeConfigError(f"model.difficulty_weight={difficulty_weight!r}; use {RATE_COLUMN!r} (the rows' "
                                    f"column), one of {sorted(DIFFICULTY_WEIGHTS)}, or null")
        super().__init__(model_name_or_path, rewards, *args, num_generations=num_generations,
                         accuracy_reward=accuracy_reward, sampling=sampling, objective=objective, optimizer=optimizer,
                         **kwargs)
        if self.policy.vision is None:
            raise RecipeConfigError(f"GUI-G1 grounds boxes in screenshots: model.model_name_or_path="
                                    f"{model_name_or_path!r} is a text model; give a vision-language checkpoint "
                                    "(tiny-qwen2-vl for a smoke run, Qwen/Qwen2.5-VL-3B-Instruct on a GPU)")
        self.difficulty_weight = difficulty_weight

    # ------------------------------------------------------------------ hooks
    def score(self, rollout: RolloutBatch, *, purpose: str, **reward_kwargs: Any) -> RolloutBatch:
        """The box rewards, and for training the rows' difficulty weights (`rollout.sample_weights`)."""
        rollout = super().score(rollout, purpose=purpose, **reward_kwargs)
        if purpose == "train" and self.difficulty_weight is not None:
            rollout.sample_weights = self.sample_weights(rollout.columns).to(rollout.rewards.device)
        return rollout

    def sample_weights(self, columns: dict[str, list[Any]]) -> Tensor:
        """(N,) the difficulty coefficient of each row."""
        name = self.difficulty_weight
        if name == RATE_COLUMN:
            if RATE_COLUMN not in columns:
                raise RecipeConfigError(f"model.difficulty_weight={RATE_COLUMN!r} but the rows have no "
                                        f"{RATE_COLUMN!r} column (columns: {sorted(columns)}); use box_area to "
                                        "compute it from the target box, or null")
            values = [1.0 if v is None else float(v) for v in columns[RATE_COLUMN]]
        else:
            missing = [c for c in ("solution", "image_size") if c not in columns]
            if missing:
                raise RecipeConfigError(f"model.difficulty_weight={name!r} needs the rows' {missing} column(s)")
            values = [difficulty_weight(name, box, size) for box, size in zip(columns["solution"],
                                                                             columns["image_size"])]
        weights = torch.tensor(values, dtype=torch.float32)
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise RecipeConfigError(f"difficulty weights must be finite and >= 0; got {values[:8]}...")
        return weights

    def on_step_end(self, rollout: RolloutBatch) -> dict[str, float]:
        """The step's box statistics (hit rate, IoU, area ratio, parse failures) and mean difficulty weight (per
        difficulty only in evaluation: a step's batch need not hold every level)."""
        out = prefixed_metrics({k: v for k, v in box_statistics(rollout).items() if k.startswith("all/")}, "gui")
        if rollout.sample_weights is not None:
            out["gui/sample_weight_mean"] = float(rollout.sample_weights.mean())
        return out

    def eval_metrics(self, rollouts: list[RolloutBatch]) -> dict[str, float]:
        """Held-out box statistics, overall and per difficulty (`eval/gui/<difficulty>/...`)."""
        if not rollouts:
            return {}
        return prefixed_metrics(box_statistics(RolloutBatch.concat(rollouts)), "eval/gui")


def box_statistics(rollout: RolloutBatch) -> dict[str, float]:
    """`box_metrics` over all rows and per `difficulty` column value (when the rows have one)."""
    cols = rollout.columns
    if "solution" not in cols or "image_size" not in cols:
        return {}
    out = {f"all/{k}": v for k, v in box_metrics(rollout.completions, cols["solution"], cols["image_size"]).items()
           if k != "n"}
    for level in sorted({d for d in cols.get("difficulty", []) if d is not None}):
        rows = [i for i, d in enumerate(cols["difficulty"]) if d == level]
        part = box_metrics([rollout.completions[i] for i in rows], [cols["solution"][i] for i in rows],
                           [cols["image_size"][i] for i in rows])
        out.update({f"{level}/{k}": v for k, v in part.items() if k != "n"})
    return out


__all__ = ["GUIG1", "box_statistics"]
