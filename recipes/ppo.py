"""PPO with a critic (Schulman et al. 2017, arXiv 1707.06347; as veRL runs it for LLMs).

Differences from the GRPO loop, each in one hook:

- `token_rewards`: an (N, T) reward per token; by default the sequence reward on its last policy token. Paper
  recipes add step rewards on given tokens (StepSearch).
- `prepare_logps`: also the critic's values V(s_t), and the rollout-time log-probs when the KL is folded into
  the rewards (`kl_coef`, veRL's `use_kl_in_reward`: r_t -= kl_coef * (logp_t - ref_logp_t)).
- `compute_advantages`: GAE(gamma, lam) over the policy's tokens, optionally whitened; returns for the critic.
- `loss`: the shared clipped policy loss (per-token advantages, `entropy_coef` bonus) + vf_coef * clipped value
  loss.
Groups are not needed (num_generations may be 1); tool observations are neither actions nor trained.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from modules.critic import Critic
from modules.objectives.ppo import gae_advantages, kl_penalised_rewards, last_token_rewards, masked_whiten, value_loss
from modules.policy import LoraSettings
from modules.rollout.batch import RolloutBatch
from modules.objectives import ObjectiveSettings
from modules.settings import check_number
from recipes.base import RecipeConfigError, RLRecipe, recipe_settings, logp_inputs


class PPO(RLRecipe):
    """Actor-critic PPO on the shared loop."""

    HOOKS = ("token_rewards",)
    """What PPO publishes beside RLRecipe's hooks."""

    def __init__(self, *args: Any, critic_model_name_or_path: str | None = None,
                 critic_lora: LoraSettings | None = None, critic_learning_rate: float | None = None,
                 gamma: float = 1.0, lam: float = 1.0, value_clip: float | None = 0.5, vf_coef: float = 0.5,
                 kl_coef: float = 0.001, whiten_advantages: bool = True, num_generations: int = 1,
                 objective: ObjectiveSettings = ObjectiveSettings(scale_rewards="none"), **kwargs: Any) -> None:
        """
        Args:
            critic_model_name_or_path: Value model backbone (null = the policy's model).
            critic_lora: LoRA on the critic backbone (null = the policy's `lora` settings; full fine-tune if both null).
            critic_learning_rate: Critic learning rate (null = optimizer.learning_rate).
            gamma: GAE discount.
            lam: GAE lambda.
            value_clip: Clip range of the value update around the rollout-time values (null = plain MSE).
            vf_coef: Weight of the value loss.
            kl_coef: KL-in-reward coefficient (per-token k1 penalty on the rewards; 0 = off). For a KL loss term
                instead, use `objective.beta` as in GRPO.
            whiten_advantages: Normalise the advantages over the batch's policy tokens.
            num_generations: Samples per prompt (PPO needs no groups).
            objective: The shared objective; advantages come from GAE, so advantage_estimator and scale_rewards
                do not apply.
        """
        objective = recipe_settings(type(self), ObjectiveSettings, objective, "objective")
        if objective.advantage_estimator != "grpo" or objective.scale_rewards not in ("none", "group"):
            raise RecipeConfigError("model.objective.advantage_estimator / scale_rewards do not apply to PPO "
                                    "(advantages come from GAE); remove them and use gamma / lam / whiten_advantages")
        for name, value in (("gamma", gamma), ("lam", lam)):
            check_number(f"model.{name}", value, low=0.0, high=1.0)
        if value_clip is not None:
            check_number("model.value_clip", value_clip, low=0.0, low_open=True,
                         fix="a positive range, or null for no clipping")
        super().__init__(*args, num_generations=num_generations,
                         objective=dataclasses.replace(objective, scale_rewards="none"), **kwargs)
        lora = critic_lora if critic_lora is not None else self.hparams.lora
        self.critic = Critic.from_pretrained(critic_model_name_or_path or self.hparams.model_name_or_path, lora=lora,
                                             quantization=self.hparams.quantization, dtype=self.hparams.dtype,
                                             gradient_checkpointing=self.hparams.gradient_checkpointing)
        self.critic.backbone.model.train()

    # ------------------------------------------------------------------ hooks
    def token_rewards(self, rollout: RolloutBatch) -> tuple[Tensor, dict[str, float]]:
        """(N, T) rewards per token: the sequence reward on the last policy token; and the hook's metrics."""
        return last_token_rewards(rollout.rewards, rollout.completion_mask), {}

    @torch.no_grad()
    def prepare_logps(self, rollout: RolloutBatch) -> None:
        super().prepare_logps(rollout)
        if self.hparams.kl_coef:  # the KL in the reward needs both, whatever the loss uses
            if rollout.old_logps is None:
                rollout.old_logps = self.trainer_logps(rollout)
            if rollout.ref_logps is None:
                rollout.ref_logps = self.policy.ref_token_logps(*logp_inputs(rollout), temperature=self.sampling.temperature,
                                                                micro_batch_size=self.batching.micro_batch_size)
        rollout.values = self.critic.values(*logp_inputs(rollout), micro_batch_size=self.batching.micro_batch_size)

    def compute_advantages(self, rollout: RolloutBatch) -> tuple[Tensor, dict[str, float]]:
        hp = self.hparams
        mask = rollout.completion_mask
        rewards, metrics = self.token_rewards(rollout)
        rewards = rewards.to(mask.device)  # (N, T)
        if hp.kl_coef:
            rewards, kl = kl_penalised_rewards(rewards, rollout.old_logps, rollout.ref_logps, mask, hp.kl_coef)
            metrics["kl_in_reward"] = float(kl.sum() / mask.sum().clamp(min=1))
        advantages, returns = gae_advantages(rewards, rollout.values, mask, gamma=hp.gamma, lam=hp.lam)
        rollout.returns = returns
        metrics["returns_mean"] = float(returns[mask.bool()].mean()) if mask.any() else 0.0
        return (masked_whiten(advantages, mask) if hp.whiten_advantages else advantages), metrics

    def loss(self, micro: RolloutBatch, *, mini_rows: float, mini_tokens: float) -> tuple[Tensor, dict[str, Tensor]]:
        """The shared clipped policy loss (per-token advantages, entropy bonus) + vf_coef * clipped value loss."""
        loss, metrics = super().loss(micro, mini_rows=mini_rows, mini_tokens=mini_tokens)
        values = self.critic.values(*logp_inputs(micro))
        v_loss, v_metrics = value_loss(values, micro.values, micro.returns, micro.completion_mask,
                                       clip_range=self.hparams.value_clip)
        return loss + self.hparams.vf_coef * v_loss * (len(micro) / mini_rows), {**metrics, **v_metrics}

    def parameter_groups(self) -> list[dict[str, Any]]:
        lr = self.hparams.critic_learning_rate or self.optimizer_settings.learning_rate
        return [*super().parameter_groups(), {"name": "critic", "params": list(self.critic.trainable_parameters()),
                                              "lr": lr}]
