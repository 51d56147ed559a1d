"""Advantage estimators, KL estimators and policy losses as pure tensor functions."""

from __future__ import annotations

from .advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    group_advantages,
    rloo_advantages,
    zero_variance_groups,
)
from .kl import KL_ESTIMATORS, kl_estimate
from .losses import LOSS_NORMALISERS, micro_batch_loss, policy_loss
from .settings import ObjectiveSettings

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_NORMALISERS",
    "ObjectiveSettings",
    "compute_advantages",
    "group_advantages",
    "kl_estimate",
    "micro_batch_loss",
    "policy_loss",
    "rloo_advantages",
    "zero_variance_groups",
]
