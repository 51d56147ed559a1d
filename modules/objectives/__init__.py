"""Advantage estimators, KL estimators and policy losses as pure tensor functions."""

from __future__ import annotations

from .advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    gdpo_advantages,
    group_advantages,
    passk_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    zero_variance_groups,
)
from .entropy import AdaptiveEntropyCoef, adaptive_entropy_coef
from .kl import KL_ESTIMATORS, kl_estimate
from .losses import (
    IMPORTANCE_SAMPLING_LEVELS,
    LOSS_NORMALISERS,
    TOKEN_SELECTIONS,
    micro_batch_loss,
    policy_loss,
)
from .settings import ObjectiveSettings

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "IMPORTANCE_SAMPLING_LEVELS",
    "KL_ESTIMATORS",
    "LOSS_NORMALISERS",
    "TOKEN_SELECTIONS",
    "AdaptiveEntropyCoef",
    "ObjectiveSettings",
    "adaptive_entropy_coef",
    "compute_advantages",
    "gdpo_advantages",
    "group_advantages",
    "kl_estimate",
    "micro_batch_loss",
    "passk_advantages",
    "policy_loss",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "rloo_advantages",
    "zero_variance_groups",
]
