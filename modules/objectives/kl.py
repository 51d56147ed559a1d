"""Per-token estimators of KL(pi || ref) from samples of pi.

Schulman, "Approximating KL divergence" (2020): http://joschu.net/blog/kl-approx.html
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def _k1(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k1 = log pi - log ref: unbiased, high variance, can be negative."""
    return logps - ref_logps


def _k2(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k2 = 0.5 * (log pi - log ref)^2: biased, non-negative, low variance."""
    return 0.5 * (logps - ref_logps).square()


def _k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k3 = exp(ref - logp) - (ref - logp) - 1: unbiased and non-negative (TRL GRPOTrainer's KL)."""
    log_ratio = ref_logps - logps
    return torch.exp(log_ratio) - log_ratio - 1


def _low_var_kl(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k3 as veRL computes it: log ratio clamped to [-20, 20], result clamped to [-10, 10]."""
    log_ratio = torch.clamp(ref_logps - logps, min=-20, max=20)
    return torch.clamp(torch.exp(log_ratio) - log_ratio - 1, min=-10, max=10)


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": _k1,
    "k2": _k2,
    "k3": _k3,
    "low_var_kl": _low_var_kl,
}


def kl_estimate(logps: Tensor, ref_logps: Tensor, kind: str = "k3") -> Tensor:
    """Per-token KL estimate, same shape as ``logps`` (e.g. (N, T)); ``kind`` in ``KL_ESTIMATORS``."""
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimate: unknown kind={kind!r}; choose one of {list(KL_ESTIMATORS)}.")
    if logps.shape != ref_logps.shape:
        raise ValueError(
            f"kl_estimate: logps {tuple(logps.shape)} and ref_logps {tuple(ref_logps.shape)} must have "
            "the same shape (score the same completion tokens with both models)."
        )
    return KL_ESTIMATORS[kind](logps, ref_logps)
