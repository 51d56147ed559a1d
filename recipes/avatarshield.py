"""AvatarShield — visual RL for human-centric video forgery detection (Xu, Zhang, Huang, Zhou, Zhang; arXiv
2505.15173; spec section 10). No code was released: the parts the paper only names are documented options.

A vision-language policy watches a clip (its `frames`, at most `frame_budget` of them, evenly spaced, shown as
images in order: the architecture-independent video path, as Qwen's own video processor needs torchvision) and
answers real or fake in `<think>...</think><answer>...</answer>`. GRPO from binary labels only. Implemented
(`modules.papers.avatarshield`):
- `avatar_accuracy` (the answered label equals the gold label) and `avatar_format` (the think/answer form with a
  real/fake answer) [unverified exact forms];
- the temporal compensation reward, whose formula was not retrieved, in the form the spec records as a hypothesis
  [unverified]: Video-R1's T-GRPO. Each training prompt is also shown with its frames shuffled; the shuffled
  copies are sampled and scored (they give the clip's shuffled accuracy) and then left out of the loss; an ordered
  rollout that is correct gets `alpha` (0.3) when the clip's ordered accuracy reaches `mu` (0.8) times its shuffled
  accuracy (`rule: t_grpo`; `rule: exceeds` = strictly greater). Give the reward `avatar_temporal` in
  `model.rewards` to turn it on; without it no shuffled copies are made.
- Metrics: accuracy per forgery type, the rate of "fake" answers, parse failures (held out), and the share of
  ordered rollouts that got the temporal bonus (training).

The dual-encoder front end (a VQ-VAE residual extractor beside the vision tower) is not implemented: it is an
architecture change of the model, not of the training recipe. On CPU a tiny random VLM exercises every part on
synthetic moving-shape clips (`datamodules.tasks.fake_clips`).
"""

from __future__ import annotations

from typing import Any

from datamodules.tasks.fake_clips import with_shuffled_copies
from modules.papers.avatarshield.rewards import forgery_metrics
from modules.rewards import RewardSpec
from modules.rollout.batch import RolloutBatch
from modules.vision import sample_frames
from recipes.base import RecipeConfigError, RLRecipe

TEMPORAL = "avatar_temporal"


class AvatarShield(RLRecipe):
    """GRPO real/fake video classification with accuracy, format and temporal compensation rewards."""

    def __init__(self, model_name_or_path: str, rewards: list[RewardSpec | str], *args: Any, frame_budget: int = 8,
                 accuracy_reward: str | None = "avatar_accuracy", **kwargs: Any) -> None:
        """
        Args:
            frame_budget: Most frames of a clip shown to the policy (evenly spaced, first and last kept).
            accuracy_reward: avatar_accuracy (a correct real/fake answer).
        """
        if int(frame_budget) < 1:
            raise RecipeConfigError(f"model.frame_budget={frame_budget}; show at least 1 frame")
        super().__init__(model_name_or_path, rewards, *args, accuracy_reward=accuracy_reward, **kwargs)
        if self.policy.vision is None:
            raise RecipeConfigError(f"AvatarShield watches video frames: model.model_name_or_path="
                                    f"{model_name_or_path!r} is a text model; give a vision-language checkpoint "
                                    "(tiny-qwen2-vl for a smoke run)")
        self.frame_budget = int(frame_budget)
        self.temporal = TEMPORAL in self.reward_set.names
        self._shuffle_round = 0

    # ------------------------------------------------------------------ hooks
    def generate(self, rows: list[dict], *, purpose: str, greedy: bool = False, num_generations: int = 1
                 ) -> RolloutBatch:
        """Each clip's frames become the prompt's images; for training with the temporal reward every clip is also
        sampled with its frames shuffled (rows [clip, clip shuffled, ...])."""
        if purpose == "train" and self.temporal:
            self._shuffle_round += 1
            rows = with_shuffled_copies(rows, seed=self._shuffle_round)
        shown = []
        for i, row in enumerate(rows):
            frames = row.get("frames")
            if not frames:
                raise RecipeConfigError(f"AvatarShield row {i} has no `frames` (columns: {sorted(row)}); give each "
                                        "row its clip as a list of images")
            shown.append({**row, "images": sample_frames(list(frames), self.frame_budget)})
        return super().generate(shown, purpose=purpose, greedy=greedy, num_generations=num_generations)

    def score(self, rollout: RolloutBatch, *, purpose: str, **reward_kwargs: Any) -> RolloutBatch:
        """All rewards over ordered and shuffled rollouts together (the temporal reward compares them), then only
        the ordered rollouts go on to the loss."""
        rollout = super().score(rollout, purpose=purpose, **reward_kwargs)
        shuffled = rollout.columns.get("frames_shuffled")
        if not shuffled or not any(shuffled):
            return rollout
        kept = rollout.select([i for i, s in enumerate(shuffled) if not s])
        kept.stats = dict(rollout.stats)  # the shuffled copies' generation is part of the step's work
        return kept

    def on_step_end(self, rollout: RolloutBatch) -> dict[str, float]:
        """The share of ordered rollouts that received the temporal bonus."""
        if not self.temporal:
            return {}
        column = rollout.rewards_per_func[:, rollout.reward_names.index(TEMPORAL)]
        return {"avatar/temporal_bonus_rate": float((column.nan_to_num(0.0) > 0).float().mean())}

    def eval_metrics(self, rollouts: list[RolloutBatch]) -> dict[str, float]:
        """Held-out accuracy per forgery type, the fake-answer rate and parse failures (`eval/avatar/...`)."""
        if not rollouts:
            return {}
        batch = RolloutBatch.concat(rollouts)
        cols = batch.columns
        if "label" not in cols or "forgery_type" not in cols:
            return {}
        stats = forgery_metrics(batch.completions, cols["label"], cols["forgery_type"])
        return {f"eval/avatar/{k}": float(v) for k, v in stats.items() if k != "n" and v == v}


__all__ = ["AvatarShield"]
