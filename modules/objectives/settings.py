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

from modules.objectives.advantages import ADVANTAGE_ESTIMATORS, SCALES, compute_advantages
from modules.objectives.kl import KL_ESTIMATORS
from modules.objectives.losses import LOSS_NORMALISERS
from modules.settings import check_choice, check_number

PREFIX = "model.objective"


@dataclass(frozen=True)
class ObjectiveSettings:
    """The policy objective: advantages, clipped surrogate, KL and entropy terms."""

    loss_type: str = "grpo"
    """Normalisation of the token losses: grpo (mean per sequence, then over sequences), bnpo (token mean of the
    micro-batch), dr_grpo (sum / (N * max_new_tokens)) or dapo (token mean over the whole mini-batch)."""
    advantage_estimator: str = "grpo"
    """grpo (group-normalised) or rloo (leave-one-out baseline)."""
    scale_rewards: str = "group"
    """Advantage scaling of the grpo estimator: group (divide by the group std), batch (by the batch std) or none
    (Dr.GRPO: r - group mean)."""
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
    """Entropy bonus: subtract entropy_coef * token-mean entropy of the policy's tokens (veRL's entropy_coeff)."""
    mask_truncated_completions: bool = False
    """Leave completions that hit max_new_tokens out of the loss (DAPO)."""

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
        check_number(f"{PREFIX}.entropy_coef", self.entropy_coef)

    def advantage_kwargs(self) -> dict[str, Any]:
        """Keywords of `modules.objectives.compute_advantages` for the configured estimator."""
        return {"scale": self.scale_rewards} if self.advantage_estimator == "grpo" else {}

    def advantages(self, rewards: Tensor, group_size: int) -> Tensor:
        """(N,) advantages of (N,) rewards in adjacent groups of `group_size`."""
        return compute_advantages(self.advantage_estimator, rewards, group_size, **self.advantage_kwargs())

    def loss_kwargs(self) -> dict[str, Any]:
        """Keywords of `modules.objectives.losses.micro_batch_loss`."""
        return {"loss_type": self.loss_type, "epsilon_low": self.epsilon_low, "epsilon_high": self.epsilon_high,
                "delta": self.delta, "beta": self.beta, "kl_estimator": self.kl_estimator,
                "entropy_coef": self.entropy_coef}


__all__ = ["ObjectiveSettings"]
