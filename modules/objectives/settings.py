"""`ObjectiveSettings`: the options of the policy objective, grouped (`model.objective.*` in a config).

A recipe holds one `ObjectiveSettings`; a paper states its own defaults once, as the default instance in its
signature (`objective: ObjectiveSettings = ObjectiveSettings(beta=1e-3, ...)`); a config then overrides single
fields (`model.objective.beta: 0.01`) and keeps the paper's other defaults. The maths stays in pure functions
(`advantages`, `losses`): `advantage_kwargs()` and `loss_kwargs()` hand them these fields as keywords.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from modules.objectives.advantages import (
    ADVANTAGE_ESTIMATORS,
    SCALES,
    compute_advantages,
)
from modules.objectives.kl import KL_ESTIMATORS
from modules.objectives.losses import (
    IMPORTANCE_SAMPLING_LEVELS,
    LOSS_NORMALISERS,
    PPO_CLIP_LOSSES,
    TOKEN_SELECTIONS,
)
from modules.settings import SettingsError, check_choice, check_number

PREFIX = "model.objective"


@dataclass(frozen=True)
class ObjectiveSettings:
    """The policy objective: advantages, clipped surrogate, KL and entropy terms."""

    loss_type: str = "grpo"
    """Normalisation of the token losses: grpo (mean per sequence, then over sequences), bnpo (token mean of the
    micro-batch), dr_grpo (sum / (N * max_new_tokens)) or dapo (token mean over the whole mini-batch); or another
    surrogate: cispo (MiniMax-M1: -sg[min(r, 1 + epsilon_high)] * A * log pi, no token ever loses its gradient;
    normalised as dapo) or sapo (soft sigmoid gate instead of the clip, see sapo_temperature_*; normalised as grpo)."""
    importance_sampling_level: str = "token"
    """Importance ratio: token (per-token r_t), sequence (GSPO: s_i = exp(mean_t log r_t) over the row's trained
    tokens, clipped per sequence) or sequence_token (GSPO-token: the value of s_i with each token's own gradient)."""
    sapo_temperature_pos: float = 1.0
    """SAPO gate temperature for positive advantages (loss_type sapo; TRL's default 1.0)."""
    sapo_temperature_neg: float = 1.05
    """SAPO gate temperature for advantages <= 0 (loss_type sapo; TRL's default 1.05, larger decays faster)."""
    token_selection: str = "all"
    """Tokens that carry the policy gradient: all; top_entropy (only the top top_entropy_quantile by entropy of each
    micro-batch's tokens, "80/20" forking tokens); kl_cov (unclipped surrogate plus kl_cov_coef * |log r| on the
    kl_cov_ratio tokens of largest cov(logp, A)); clip_cov (clipped surrogate with the gradient of clip_cov_ratio
    random tokens of cov in clip_cov_bounds dropped). kl_cov / clip_cov need a PPO-clip loss_type and token ratios."""
    top_entropy_quantile: float = 0.2
    """Share of the tokens kept by token_selection top_entropy (0 < q <= 1; TRL's top_entropy_quantile)."""
    kl_cov_ratio: float = 2e-4
    """Share of the tokens that get the KL penalty under token_selection kl_cov (veRL's default 0.0002)."""
    kl_cov_coef: float = 1.0
    """Coefficient of the |log r| penalty of token_selection kl_cov (veRL's ppo_kl_coef)."""
    clip_cov_ratio: float = 2e-4
    """Share of the tokens whose gradient token_selection clip_cov drops (veRL's default 0.0002)."""
    clip_cov_bounds: tuple[float, float] = (1.0, 5.0)
    """(low, high): clip_cov draws only tokens whose covariance lies strictly between them (veRL's 1 and 5)."""
    advantage_estimator: str = "grpo"
    """grpo (group-normalised), rloo (leave-one-out baseline), gdpo (each reward function normalised within the
    group, weighted sum, then normalised over the batch), passk (only each group's best completion: r_max - r_second,
    / group std unless scale_rewards none), reinforce_pp (rewards whitened over the batch's tokens, no group
    baseline) or reinforce_pp_baseline (r - group mean, then whitened over the batch's tokens)."""
    scale_rewards: str = "group"
    """Advantage scaling of the grpo estimator: group (divide by the group std), batch (by the batch std) or none
    (Dr.GRPO: r - group mean); passk takes group or none."""
    epsilon_low: float = 0.2
    """Lower clip range of the importance ratio."""
    epsilon_high: float | None = None
    """Upper clip range (null = epsilon_low; DAPO's clip-higher uses 0.28)."""
    delta: float | None = None
    """Upper bound on the unclipped ratio (two-sided clipping; must exceed 1 + epsilon_high; null = off)."""
    beta: float = 0.0
    """KL coefficient (0 = no KL term and no reference model needed)."""
    kl_estimator: str = "k3"
    """KL estimator: k3 (as TRL), k1, k2 or low_var_kl (veRL's clamped k3)."""
    entropy_coef: float = 0.0
    """Entropy bonus: subtract entropy_coef * token-mean entropy of the policy's tokens (veRL's entropy_coeff); the
    starting value when target_entropy is set."""
    target_entropy: float | None = None
    """Adaptive entropy coefficient (Skywork-OR1): after each optimiser step the coefficient moves by
    entropy_coef_step up when the step's mean token entropy is below this target, down (not below 0) when above;
    null = the fixed entropy_coef."""
    entropy_coef_step: float = 0.005
    """Step of the adaptive entropy coefficient per optimiser step (with target_entropy)."""
    mask_truncated_completions: bool = False
    """Leave completions that hit max_new_tokens out of the loss (DAPO)."""
    loss_divisor: int | None = None
    """The constant of loss_type dr_grpo: each row's token-loss sum is divided by it, then rows are averaged (null =
    sampling.max_new_tokens, Dr.GRPO; GUI-G1's length-free normaliser uses 64)."""

    def __post_init__(self) -> None:
        check_choice(f"{PREFIX}.loss_type", self.loss_type, tuple(LOSS_NORMALISERS))
        check_choice(f"{PREFIX}.advantage_estimator", self.advantage_estimator, tuple(ADVANTAGE_ESTIMATORS))
        check_choice(f"{PREFIX}.scale_rewards", self.scale_rewards, SCALES)
        check_choice(f"{PREFIX}.kl_estimator", self.kl_estimator, tuple(KL_ESTIMATORS))
        check_number(f"{PREFIX}.epsilon_low", self.epsilon_low, low=0.0, fix="0.2 in GRPO")
        if self.epsilon_high is not None:
            check_number(f"{PREFIX}.epsilon_high", self.epsilon_high, low=0.0, fix="null = epsilon_low; 0.28 in DAPO")
        if self.delta is not None:
            high = self.epsilon_low if self.epsilon_high is None else self.epsilon_high
            check_number(f"{PREFIX}.delta", self.delta, low=1.0 + high, low_open=True,
                         fix="at or below 1 + epsilon_high positive advantages get no gradient; null = off")
        check_number(f"{PREFIX}.beta", self.beta, low=0.0, fix="0 turns the KL term off")
        if self.loss_divisor is not None:
            check_number(f"{PREFIX}.loss_divisor", self.loss_divisor, low=1, integer=True,
                         fix="null = max_new_tokens; GUI-G1 uses 64")
            if self.loss_type != "dr_grpo":
                raise SettingsError(f"{PREFIX}.loss_divisor={self.loss_divisor} with loss_type={self.loss_type!r}; "
                                    "the constant divisor belongs to loss_type dr_grpo: set it, or loss_divisor null")
        check_number(f"{PREFIX}.entropy_coef", self.entropy_coef)
        check_choice(f"{PREFIX}.importance_sampling_level", self.importance_sampling_level,
                     IMPORTANCE_SAMPLING_LEVELS)
        check_choice(f"{PREFIX}.token_selection", self.token_selection, TOKEN_SELECTIONS)
        for name in ("sapo_temperature_pos", "sapo_temperature_neg"):
            check_number(f"{PREFIX}.{name}", getattr(self, name), low=0.0, low_open=True,
                         fix="a positive gate temperature; TRL uses 1.0 and 1.05")
        check_number(f"{PREFIX}.top_entropy_quantile", self.top_entropy_quantile, low=0.0, high=1.0, low_open=True,
                     fix="the share of tokens kept, 0.2 in the 80/20 paper")
        for name in ("kl_cov_ratio", "clip_cov_ratio"):
            check_number(f"{PREFIX}.{name}", getattr(self, name), low=0.0, high=1.0, low_open=True,
                         fix="a share of the tokens; veRL uses 0.0002")
        check_number(f"{PREFIX}.kl_cov_coef", self.kl_cov_coef, low=0.0, fix="veRL uses 1.0")
        bounds = self.clip_cov_bounds
        if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2
                and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
                and bounds[0] < bounds[1]):
            raise SettingsError(f"{PREFIX}.clip_cov_bounds={bounds!r}; give [low, high] with low < high "
                                "(veRL uses [1.0, 5.0])")
        if self.token_selection in ("kl_cov", "clip_cov") and (self.loss_type not in PPO_CLIP_LOSSES
                                                               or self.importance_sampling_level != "token"):
            raise SettingsError(f"{PREFIX}.token_selection={self.token_selection!r} with loss_type="
                                f"{self.loss_type!r} and importance_sampling_level={self.importance_sampling_level!r}"
                                f"; the covariance selections need loss_type one of {', '.join(PPO_CLIP_LOSSES)} "
                                "and importance_sampling_level token")
        if self.advantage_estimator == "passk" and self.scale_rewards == "batch":
            raise SettingsError(f"{PREFIX}.scale_rewards='batch' with advantage_estimator='passk'; "
                                "use group (divide by the group std) or none")
        if self.target_entropy is not None:
            check_number(f"{PREFIX}.target_entropy", self.target_entropy, low=0.0,
                         fix="a token entropy in nats; null = the fixed entropy_coef")
            check_number(f"{PREFIX}.entropy_coef_step", self.entropy_coef_step, low=0.0, low_open=True,
                         fix="0.005 in Skywork-OR1")
            check_number(f"{PREFIX}.entropy_coef", self.entropy_coef, low=0.0,
                         fix="the adaptive coefficient starts here and stays >= 0")

    def advantage_kwargs(self, *, reward_weights: Any = None, token_counts: Tensor | None = None) -> dict[str, Any]:
        """Keywords of `modules.objectives.compute_advantages` for the configured estimator: gdpo takes the reward
        functions' `reward_weights` (F,), reinforce_pp(_baseline) the rows' trained-token counts `token_counts`
        (N,) (both from the rollout; None = equal weights)."""
        name = self.advantage_estimator
        if name in ("grpo", "passk"):
            return {"scale": self.scale_rewards}
        if name == "gdpo":
            return {"weights": reward_weights}
        if name in ("reinforce_pp", "reinforce_pp_baseline"):
            return {"token_counts": token_counts}
        return {}

    def advantages(self, rewards: Tensor, group_size: int, *, rewards_per_func: Tensor | None = None,
                   reward_weights: Any = None, token_counts: Tensor | None = None) -> Tensor:
        """(N,) advantages of (N,) rewards in adjacent groups of `group_size`; gdpo uses `rewards_per_func` (N, F)
        instead (with `reward_weights` (F,)), reinforce_pp(_baseline) weight rows by `token_counts` (N,)."""
        if self.advantage_estimator == "gdpo":
            if rewards_per_func is None:
                raise ValueError("advantage_estimator gdpo needs the per-function rewards (N, F)")
            rewards = rewards_per_func
        kwargs = self.advantage_kwargs(reward_weights=reward_weights, token_counts=token_counts)
        return compute_advantages(self.advantage_estimator, rewards, group_size, **kwargs)

    def loss_kwargs(self) -> dict[str, Any]:
        """Keywords of `modules.objectives.losses.micro_batch_loss` (the fixed entropy_coef; a recipe with
        target_entropy passes its adaptive coefficient instead). The menu keywords are passed only when they differ
        from the defaults, so a plain grpo objective calls exactly today's loss."""
        out = {"loss_type": self.loss_type, "epsilon_low": self.epsilon_low, "epsilon_high": self.epsilon_high,
               "delta": self.delta, "beta": self.beta, "kl_estimator": self.kl_estimator,
               "entropy_coef": self.entropy_coef}
        if self.importance_sampling_level != "token":
            out["importance_sampling_level"] = self.importance_sampling_level
        if self.loss_type == "sapo":
            out.update(sapo_temperature_pos=self.sapo_temperature_pos, sapo_temperature_neg=self.sapo_temperature_neg)
        if self.token_selection == "top_entropy":
            out.update(token_selection="top_entropy", top_entropy_quantile=self.top_entropy_quantile)
        elif self.token_selection == "kl_cov":
            out.update(token_selection="kl_cov", kl_cov_ratio=self.kl_cov_ratio, kl_cov_coef=self.kl_cov_coef)
        elif self.token_selection == "clip_cov":
            out.update(token_selection="clip_cov", clip_cov_ratio=self.clip_cov_ratio,
                       clip_cov_bounds=tuple(self.clip_cov_bounds))
        return out


__all__ = ["ObjectiveSettings"]
