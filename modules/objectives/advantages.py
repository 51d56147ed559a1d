"""Group-relative advantage estimators (GRPO, RLOO, GDPO, pass@k, REINFORCE++) as pure tensor functions.

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


def gdpo_advantages(rewards_per_func: Tensor, group_size: int, *, weights: Tensor | list[float] | None = None,
                    eps: float = 1e-4) -> Tensor:
    """GDPO advantages (Liu et al. 2026, arXiv 2601.05242, Eqs. 4-6), shape (N,), from ``rewards_per_func`` (N, F).

    Each reward function k is normalised within each group on its own, ``A_k = (r_k - mean_g r_k) / (std_g r_k +
    eps)``, then ``A = sum_k w_k A_k`` (``weights`` (F,), default 1) and the sum is normalised over the batch,
    ``(A - mean A) / (std A + eps)``: rewards with different scales or variances no longer collapse distinct reward
    combinations onto one advantage, as normalising their sum does (TRL trl/trainer/grpo_trainer.py,
    multi_objective_aggregation="normalize_then_sum"). std is unbiased; a NaN reward (a function that returned None)
    is left out of its function's statistics and contributes 0; a group where function k is constant gets A_k = 0.
    """
    if rewards_per_func.dim() != 2:
        raise ValueError(f"gdpo_advantages: rewards_per_func must be (N, F), got shape "
                         f"{tuple(rewards_per_func.shape)}.")
    n, f = rewards_per_func.shape
    x = rewards_per_func if rewards_per_func.is_floating_point() else rewards_per_func.to(torch.get_default_dtype())
    if (x == float("inf")).any() or (x == float("-inf")).any():
        raise ValueError("gdpo_advantages: a reward function returned inf; rewards must be finite (or None).")
    w = torch.ones(f, dtype=x.dtype) if weights is None else torch.as_tensor(weights, dtype=x.dtype)
    if w.shape != (f,):
        raise ValueError(f"gdpo_advantages: {w.numel()} weights for {f} reward functions.")
    total = torch.zeros(n, dtype=x.dtype, device=x.device)
    for k in range(f):
        col = x[:, k]
        valid = ~torch.isnan(col)
        grouped = _grouped(torch.where(valid, col, 0.0), group_size, "gdpo_advantages")  # (B, G)
        on = valid.view(-1, group_size).to(x.dtype)  # (B, G)
        count = on.sum(1, keepdim=True)
        mean = (grouped * on).sum(1, keepdim=True) / count.clamp(min=1.0)
        var = ((grouped - mean).square() * on).sum(1, keepdim=True) / (count - 1).clamp(min=1.0)
        normed = (grouped - mean) / (var.sqrt() + eps) * on
        spread = torch.where(on > 0, grouped, -torch.inf).amax(1) - torch.where(on > 0, grouped, torch.inf).amin(1)
        tied = ~(spread > 0) | (count.squeeze(1) < 2)  # (B,)
        total = total + w[k] * normed.masked_fill(tied.unsqueeze(1), 0.0).view(-1)
    std = total.std() if n > 1 else total.new_zeros(())
    return (total - total.mean()) / (std + eps)


def passk_advantages(rewards: Tensor, group_size: int, *, scale: str = "group", eps: float = 1e-6) -> Tensor:
    """Pass@k advantages (arXiv 2503.19595, as veRL cites it), shape (N,): in each group only the
    best completion gets a non-zero advantage, ``r_max - r_second`` (divided by the group's unbiased std + eps when
    ``scale="group"``; ``"none"`` leaves it raw); the first of tied maxima wins (veRL
    verl/trainer/ppo/core_algos.py, compute_grpo_passk_outcome_advantage). Needs ``group_size >= 2``."""
    if scale not in ("group", "none"):
        raise ValueError(f"passk_advantages: scale={scale!r}; use group or none.")
    if isinstance(group_size, int) and group_size < 2:
        raise ValueError(f"passk_advantages: group_size must be >= 2 (the best completion is compared with the "
                         f"second best), got {group_size}.")
    grouped = _grouped(rewards, group_size, "passk_advantages")  # (B, G)
    top = torch.topk(grouped, 2, dim=1)  # values, indices (B, 2); ties keep the lower index first
    gap = top.values[:, 0] - top.values[:, 1]  # (B,)
    if scale == "group":
        gap = gap / (grouped.std(dim=1) + eps)
    out = torch.zeros_like(grouped)
    out.scatter_(1, top.indices[:, :1], gap.unsqueeze(1))
    return out.view(-1)


def _whiten(values: Tensor, token_counts: Tensor | None, eps: float = 1e-8) -> Tensor:
    """(values - mean) / sqrt(var + eps), each row weighted by its token count (veRL's masked_whiten over the
    tokens of outcome returns, unbiased by the token total); equal weights when ``token_counts`` is None."""
    w = torch.ones_like(values) if token_counts is None else token_counts.to(values)
    if w.shape != values.shape:
        raise ValueError(f"token_counts has shape {tuple(w.shape)}, rewards {tuple(values.shape)}.")
    total = w.sum()
    mean = (w * values).sum() / total.clamp(min=1e-12)
    var = (w * (values - mean).square()).sum() / total.clamp(min=1e-12)
    if total > 1:
        var = var * total / (total - 1)
    return (values - mean) * torch.rsqrt(var + eps)


def reinforce_pp_advantages(rewards: Tensor, group_size: int, *, token_counts: Tensor | None = None) -> Tensor:
    """REINFORCE++ (Hu 2025, arXiv 2501.03262, Eq. 7) for outcome rewards, shape (N,): the return of every token is
    the row's reward (gamma = 1), whitened over all the trained tokens of the batch: ``(r - mean) / std`` with each
    row counted ``token_counts`` (N,) times (default once); no group baseline (veRL verl/trainer/ppo/core_algos.py,
    compute_reinforce_plus_plus_outcome_advantage)."""
    grouped = _grouped(rewards, group_size, "reinforce_pp_advantages")
    return _whiten(grouped.reshape(-1), token_counts)


def reinforce_pp_baseline_advantages(rewards: Tensor, group_size: int, *,
                                     token_counts: Tensor | None = None) -> Tensor:
    """REINFORCE++-baseline (Hu 2025, arXiv 2501.03262 v3, Eq. 9), shape (N,): ``r - mean_group r`` (no centring for
    groups of size 1), then whitened over the batch's trained tokens as ``reinforce_pp_advantages`` (veRL
    core_algos.py, compute_reinforce_plus_plus_baseline_outcome_advantage)."""
    grouped = _grouped(rewards, group_size, "reinforce_pp_baseline_advantages")  # (B, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True) if group_size > 1 else grouped
    return _whiten(centred.reshape(-1), token_counts)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Tensor]] = {
    "grpo": group_advantages,  # takes scale= and eps=
    "rloo": rloo_advantages,
    "gdpo": gdpo_advantages,  # takes rewards_per_func (N, F) in place of rewards, and weights=
    "passk": passk_advantages,  # takes scale=
    "reinforce_pp": reinforce_pp_advantages,  # takes token_counts=
    "reinforce_pp_baseline": reinforce_pp_baseline_advantages,  # takes token_counts=
}


def compute_advantages(name: str, rewards: Tensor, group_size: int, **kwargs) -> Tensor:
    """Look up ``name`` in ``ADVANTAGE_ESTIMATORS`` and apply it; ``kwargs`` go to the estimator.

    ``rewards`` (N,), or (N, F) per reward function for "gdpo"; returns (N,) advantages in ``rewards``' dtype."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(
            f"compute_advantages: unknown advantage estimator {name!r}; "
            f"choose one of {sorted(ADVANTAGE_ESTIMATORS)}."
        )
    # In float64: float32 rewards near its range (±3e38) overflow the group std to inf and turn every advantage
    # into 0 silently; float64 holds their spread exactly enough, and what still is not finite is refused.
    kwargs = {k: v.double() if isinstance(v, Tensor) else v for k, v in kwargs.items()}
    advantages = ADVANTAGE_ESTIMATORS[name](rewards.double(), group_size, **kwargs).to(rewards.dtype)
    if not bool(torch.isfinite(advantages).all()):
        raise ValueError(f"compute_advantages: the rewards (max |r| = {float(rewards.abs().max()):.3g}) give "
                         "non-finite advantages; scale the reward functions to a moderate range")
    return advantages
