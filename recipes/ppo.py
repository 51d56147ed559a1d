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

from typing import Any

import torch
from torch import Tensor

from modules.critic import Critic
from modules.objectives.ppo import gae_advantages, kl_penalised_rewards, last_token_rewards, masked_whiten, value_loss
from modules.policy import LoraSettings
from modules.rollout.batch import RolloutBatch
from recipes.base import RecipeConfigError, RLRecipe


class PPO(RLRecipe):
    """Actor-critic PPO on the shared loop."""

    def __init__(self, *args: Any, critic_model_name_or_path: str | None = None,
                 critic_lora: LoraSettings | None = None, critic_learning_rate: float | None = None,
                 gamma: float = 1.0, lam: float = 1.0, value_clip: float | None = 0.5, vf_coef: float = 0.5,
                 kl_coef: float = 0.001, whiten_advantages: bool = True, **kwargs: Any) -> None:
        """
        Args:
            critic_model_name_or_path: Value model backbone (null = the policy's model).
            critic_lora: LoRA on the critic backbone (null = the policy's `lora` settings; full fine-tune if both null).
            critic_learning_rate: Critic learning rate (null = learning_rate).
            gamma: GAE discount.
            lam: GAE lambda.
            value_clip: Clip range of the value update around the rollout-time values (null = plain MSE).
            vf_coef: Weight of the value loss.
            kl_coef: KL-in-reward coefficient (per-token k1 penalty on the rewards; 0 = off). For a KL loss term
                instead, use `beta` as in GRPO.
            whiten_advantages: Normalise the advantages over the batch's policy tokens.
        """
        # The CLI passes every inherited option with its default: only a changed value is a mistake.
        for name, default in (("advantage_estimator", "grpo"), ("scale_rewards", "group")):
            if kwargs.pop(name, default) not in (default, "none"):
                raise RecipeConfigError(f"model.{name} does not apply to PPO (advantages come from GAE); remove it "
                                        "and use gamma / lam / whiten_advantages")
        kwargs.setdefault("num_generations", 1)
        super().__init__(*args, scale_rewards="none", **kwargs)
        for name, value in (("gamma", gamma), ("lam", lam)):
            if not 0.0 <= value <= 1.0:
                raise RecipeConfigError(f"model.{name}={value}; it must be in [0, 1]")
        if value_clip is not None and value_clip <= 0:
            raise RecipeConfigError(f"model.value_clip={value_clip}; give a positive range or null for no clipping")
        hp = self.hparams
        lora = critic_lora if critic_lora is not None else hp.lora
        self.critic = Critic.from_pretrained(critic_model_name_or_path or hp.model_name_or_path, lora=lora,
                                             quantization=hp.quantization, dtype=hp.dtype,
                                             gradient_checkpointing=hp.gradient_checkpointing)
        self.critic.backbone.model.train()

    # ------------------------------------------------------------------ hooks
    def token_rewards(self, rollout: RolloutBatch) -> Tensor:
        """(N, T) rewards per token: the sequence reward on the last policy token."""
        return last_token_rewards(rollout.rewards, rollout.completion_mask)

    def prepare_logps(self, rollout: RolloutBatch) -> None:
        super().prepare_logps(rollout)
        hp = self.hparams
        args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_attention_mask)
        with torch.no_grad():
            if hp.kl_coef:
                if rollout.old_logps is None:
                    rollout.old_logps, _ = self.policy.token_logps(*args, temperature=self.sampling.temperature,
                                                                   micro_batch_size=hp.micro_batch_size)
                if rollout.ref_logps is None:
                    rollout.ref_logps = self.policy.ref_token_logps(*args, temperature=self.sampling.temperature,
                                                                    micro_batch_size=hp.micro_batch_size)
            rollout.values = self.critic.values(*args, micro_batch_size=hp.micro_batch_size)

    def compute_advantages(self, rollout: RolloutBatch) -> Tensor:
        hp = self.hparams
        mask = rollout.completion_mask
        rewards = self.token_rewards(rollout).to(mask.device)  # (N, T)
        if hp.kl_coef:
            rewards, kl = kl_penalised_rewards(rewards, rollout.old_logps, rollout.ref_logps, mask, hp.kl_coef)
            self.step_metrics["kl_in_reward"] = float(kl.sum() / mask.sum().clamp(min=1))
        advantages, returns = gae_advantages(rewards, rollout.values, mask, gamma=hp.gamma, lam=hp.lam)
        rollout.returns = returns
        self.step_metrics["returns_mean"] = float(returns[mask.bool()].mean()) if mask.any() else 0.0
        return masked_whiten(advantages, mask) if hp.whiten_advantages else advantages

    def loss(self, micro: RolloutBatch, *, mini_rows: float, mini_tokens: float) -> tuple[Tensor, dict[str, Tensor]]:
        """The shared clipped policy loss (per-token advantages, entropy bonus) + vf_coef * clipped value loss."""
        loss, metrics = super().loss(micro, mini_rows=mini_rows, mini_tokens=mini_tokens)
        values = self.critic.values(micro.prompt_ids, micro.prompt_mask, micro.completion_ids,
                                    micro.completion_attention_mask)
        v_loss, v_metrics = value_loss(values, micro.values, micro.returns, micro.completion_mask,
                                       clip_range=self.hparams.value_clip)
        return loss + self.hparams.vf_coef * v_loss * (len(micro) / mini_rows), {**metrics, **v_metrics}

    def parameter_groups(self) -> list[dict[str, Any]]:
        lr = self.hparams.critic_learning_rate or self.hparams.learning_rate
        return [*super().parameter_groups(), {"name": "critic", "params": list(self.critic.trainable_parameters()),
                                              "lr": lr}]
