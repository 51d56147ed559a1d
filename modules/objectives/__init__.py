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
from .losses import LOSS_NORMALISERS, policy_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_NORMALISERS",
    "compute_advantages",
    "group_advantages",
    "kl_estimate",
    "policy_loss",
    "rloo_advantages",
    "zero_variance_groups",
]
