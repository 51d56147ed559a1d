"""Group-relative advantage estimators (GRPO, RLOO) as pure tensor functions.

Rows of a group (the G completions sampled for one prompt) are adjacent: ``rewards`` has N = B * G
entries and ``rewards.view(-1, G)`` is (B, G).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

SCALES = ("group", "batch", "none")


def _grouped(rewards: Tensor, group_size: int, fn: str) -> Tensor:
    """Validate ``rewards`` and return them as a float (B, G) view."""
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"{fn}: group_size must be a positive int, got {group_size!r}.")
    if rewards.dim() != 1:
        raise ValueError(
            f"{fn}: rewards must be 1-D (N,), got shape {tuple(rewards.shape)}; flatten them first."
        )
    n = rewards.numel()
    if n % group_size != 0:
        raise ValueError(
            f"{fn}: the number of rewards ({n}) is not divisible by group_size ({group_size}); "
            "each prompt must have exactly group_size adjacent completions."
        )
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    bad = (~torch.isfinite(rewards)).nonzero().flatten()
    if bad.numel() > 0:
        row = int(bad[0])
        raise ValueError(
            f"{fn}: reward of row {row} is {rewards[row].item()} (rows with non-finite rewards: "
            f"{bad.tolist()[:10]}); check the reward functions: every row needs a finite total reward "
            "(look for one returning None, NaN or inf for this row)."
        )
    return rewards.view(-1, group_size)  # (B, G)


def zero_variance_groups(
    rewards: Tensor, group_size: int, *, atol: float = 1e-8, rtol: float = 1e-6
) -> Tensor:
    """Bool (B,): True for groups whose rewards are all equal (within ``atol + rtol * |max|``).

    Such groups carry no learning signal under group-relative advantages; DAPO's dynamic sampling
    (Yu et al. 2025, Sec. 3.2) drops them.
    """
    grouped = _grouped(rewards, group_size, "zero_variance_groups")  # (B, G)
    hi, lo = grouped.max(dim=1).values, grouped.min(dim=1).values  # (B,), (B,)
    return torch.isclose(hi, lo, rtol=rtol, atol=atol)


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """GRPO advantages (Shao et al. 2024, Eq. 3): ``(r - mean_g) / (std + eps)``, shape (N,).

    ``scale``: "group" divides by the group's std, "batch" by the std of the whole batch (TRL's
    ``scale_rewards="batch"``, Liu et al. 2025 / Dr.GRPO discussion), "none" only centres (Dr.GRPO).
    std is unbiased (``torch.std``). Groups of size 1 and zero-variance groups get advantage exactly 0.
    """
    if scale not in SCALES:
        raise ValueError(f"group_advantages: scale={scale!r} is not one of {list(SCALES)}.")
    grouped = _grouped(rewards, group_size, "group_advantages")  # (B, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (B, G)
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped)  # (B, 1)
        centred = centred / (std + eps)
    elif scale == "batch":
        std = grouped.std() if grouped.numel() > 1 else grouped.new_zeros(())
        centred = centred / (std + eps)
    tied = zero_variance_groups(rewards, group_size).unsqueeze(1)  # (B, 1)
    return centred.masked_fill(tied, 0.0).view(-1)  # (N,)


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO advantages (Ahmadian et al. 2024, Eq. 7): ``r_i`` minus the mean of the other G-1 rewards.

    Equals ``G / (G - 1) * (r_i - mean_g)``; shape (N,). Needs ``group_size >= 2``.
    """
    if isinstance(group_size, int) and group_size < 2:
        raise ValueError(
            f"rloo_advantages: group_size must be >= 2 (the baseline is the mean of the other "
            f"completions), got {group_size}; sample at least 2 completions per prompt."
        )
    grouped = _grouped(rewards, group_size, "rloo_advantages")  # (B, G)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # (B, G)
    tied = zero_variance_groups(rewards, group_size).unsqueeze(1)  # (B, 1)
    return (grouped - others).masked_fill(tied, 0.0).view(-1)  # (N,)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Tensor]] = {
    "grpo": group_advantages,  # takes scale= and eps=
    "rloo": rloo_advantages,
}


def compute_advantages(name: str, rewards: Tensor, group_size: int, **kwargs) -> Tensor:
    """Look up ``name`` in ``ADVANTAGE_ESTIMATORS`` and apply it; ``kwargs`` go to the estimator."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(
            f"compute_advantages: unknown advantage estimator {name!r}; "
            f"choose one of {sorted(ADVANTAGE_ESTIMATORS)}."
        )
    # In float64: float32 rewards near its range (±3e38) overflow the group std to inf and turn every advantage
    # into 0 silently; float64 holds their spread exactly enough, and what still is not finite is refused.
    advantages = ADVANTAGE_ESTIMATORS[name](rewards.double(), group_size, **kwargs).to(rewards.dtype)
    if not bool(torch.isfinite(advantages).all()):
        raise ValueError(f"compute_advantages: the rewards (max |r| = {float(rewards.abs().max()):.3g}) give "
                         "non-finite advantages; scale the reward functions to a moderate range")
    return advantages
