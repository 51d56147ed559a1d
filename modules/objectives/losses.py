"""Clipped policy-gradient losses of the GRPO family, as TRL's GRPOTrainer computes them.

``policy_loss`` builds the per-token PPO-clip objective (Schulman et al. 2017, Eq. 7) with the
asymmetric "clip-higher" bounds of DAPO (Yu et al. 2025, Eq. 10) and an optional KL penalty, then
reduces it with one of the normalisers in ``LOSS_NORMALISERS``:

- "grpo": mean over each sequence's tokens, then over sequences (Shao et al. 2024, Eq. 3).
- "bnpo": sum over all tokens of the micro-batch / number of those tokens.
- "dr_grpo": sum / (N * max_completion_length), a constant (Liu et al. 2025, "Dr. GRPO", Eq. 3).
- "dapo": sum / ``num_items_in_batch`` (DAPO token-level loss, Eq. 12).

Gradient accumulation: "dapo" is the only normaliser whose micro-batch losses add up to the loss of
the whole batch, when every micro-batch passes the same ``num_items_in_batch`` (the trained-token
count of the whole accumulated batch, as TRL passes it). The other three are per-micro-batch means;
divide them by the number of accumulation steps, as TRL does, outside this function.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .kl import kl_estimate

# (loss_mat (N, T) already masked, mask (N, T), max_completion_length, num_items_in_batch) -> scalar
Normaliser = Callable[..., Tensor]


def _grpo(loss_mat: Tensor, mask: Tensor, max_completion_length, num_items_in_batch) -> Tensor:
    """Per-sequence masked mean, then mean over sequences (a fully masked row contributes 0)."""
    return (loss_mat.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def _bnpo(loss_mat: Tensor, mask: Tensor, max_completion_length, num_items_in_batch) -> Tensor:
    """Sum over all masked tokens / their number."""
    return loss_mat.sum() / mask.sum().clamp(min=1.0)


def _dr_grpo(loss_mat: Tensor, mask: Tensor, max_completion_length, num_items_in_batch) -> Tensor:
    """Sum / (N * max_completion_length): no length bias (Dr. GRPO)."""
    if max_completion_length is None or max_completion_length < 1:
        raise ValueError(
            f"policy_loss: loss_type='dr_grpo' needs max_completion_length >= 1, got "
            f"{max_completion_length!r}; pass the generation limit (max_new_tokens)."
        )
    return loss_mat.sum() / (loss_mat.size(0) * max_completion_length)


def _dapo(loss_mat: Tensor, mask: Tensor, max_completion_length, num_items_in_batch) -> Tensor:
    """Sum / num_items_in_batch (default: this micro-batch's trained-token count)."""
    if num_items_in_batch is None:
        num_items_in_batch = mask.sum()
    total = torch.as_tensor(num_items_in_batch, dtype=loss_mat.dtype, device=loss_mat.device)
    return loss_mat.sum() / total.clamp(min=1.0)


LOSS_NORMALISERS: dict[str, Normaliser] = {
    "grpo": _grpo,
    "bnpo": _bnpo,
    "dr_grpo": _dr_grpo,
    "dapo": _dapo,
}


def _check_shape(name: str, x: Tensor | None, shape: torch.Size) -> None:
    if x is not None and x.shape != shape:
        raise ValueError(
            f"policy_loss: {name} has shape {tuple(x.shape)} but logps has {tuple(shape)}; "
            "all per-token tensors must be (N, T) over the same completion tokens."
        )


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the tokens where ``mask`` is set; 0 when none is."""
    return torch.where(mask > 0, x * mask, 0.0).sum() / mask.sum().clamp(min=1.0)


def _metrics(ratio, advantages, mask, eps_low, eps_high, kl, entropies) -> dict[str, Tensor]:
    """Detached scalar diagnostics over masked tokens (clip fractions as TRL logs them)."""
    ratio, advantages = ratio.detach(), advantages.detach()
    low = ((ratio < 1 - eps_low) & (advantages < 0)).to(mask.dtype)
    high = ((ratio > 1 + eps_high) & (advantages > 0)).to(mask.dtype)
    on = mask > 0
    any_token = bool(on.any())
    metrics = {
        "clip_ratio/low_mean": _masked_mean(low, mask),
        "clip_ratio/high_mean": _masked_mean(high, mask),
        "clip_ratio/region_mean": _masked_mean(torch.maximum(low, high), mask),
        "ratio/mean": _masked_mean(ratio, mask),
        "ratio/min": ratio[on].min() if any_token else ratio.new_zeros(()),
        "ratio/max": ratio[on].max() if any_token else ratio.new_zeros(()),
    }
    if kl is not None:
        metrics["kl"] = _masked_mean(kl.detach(), mask)
    if entropies is not None:
        metrics["entropy"] = _masked_mean(entropies.detach().to(mask.dtype), mask)
    return metrics


def policy_loss(
    logps: Tensor,
    old_logps: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    loss_type: str = "grpo",
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    ref_logps: Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    max_completion_length: int | None = None,
    num_items_in_batch: Tensor | int | float | None = None,
    delta: float | None = None,
    entropies: Tensor | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate loss of TRL's GRPOTrainer; returns ``(loss, metrics)``.

    Shapes: ``logps``, ``old_logps``, ``ref_logps``, ``mask``, ``entropies`` (N, T); ``advantages``
    (N,) or per-token (N, T). ``old_logps=None`` means a single iteration: ``logps.detach()`` is used,
    so the ratio is 1 but the gradient flows. ``ratio = exp(logps - old_logps)`` is clipped to
    ``[1 - epsilon_low, 1 + epsilon_high]`` (``epsilon_high`` defaults to ``epsilon_low``);
    ``delta`` caps the unclipped ratio too (TRL's two-sided clipping; use ``delta > 1 + epsilon_high``).
    ``beta != 0`` adds ``beta * kl_estimate(logps, ref_logps, kl_estimator)`` per token.
    ``loss_type`` picks the normaliser (module docstring). Masked-out positions contribute 0 and never
    NaN in the forward pass; they must still hold finite values for the gradient to stay finite.
    ``metrics``: detached scalars ``clip_ratio/{low,high,region}_mean``, ``ratio/{mean,min,max}``,
    plus ``kl`` when ``ref_logps`` is given and ``entropy`` when ``entropies`` is given.
    ``token_weights`` (N, T) or (N, 1), no gradient: multiplies the clipped surrogate before the KL term is added
    (the rollout importance weights of `objectives.tis` when a separate engine such as vLLM sampled the batch).
    """
    if loss_type not in LOSS_NORMALISERS:
        raise ValueError(
            f"policy_loss: unknown loss_type={loss_type!r}; choose one of {list(LOSS_NORMALISERS)}."
        )
    if logps.dim() != 2:
        raise ValueError(f"policy_loss: logps must be (N, T), got shape {tuple(logps.shape)}.")
    if beta != 0.0 and ref_logps is None:
        raise ValueError(
            f"policy_loss: beta={beta} needs ref_logps (reference-model log-probs); "
            "pass them or set beta=0.0 to train without the KL penalty."
        )
    if epsilon_low < 0 or (epsilon_high is not None and epsilon_high < 0):
        raise ValueError(
            f"policy_loss: epsilon_low={epsilon_low} and epsilon_high={epsilon_high} must be >= 0."
        )
    per_token = {"old_logps": old_logps, "ref_logps": ref_logps, "mask": mask, "entropies": entropies}
    for name, x in per_token.items():
        _check_shape(name, x, logps.shape)
    if advantages.dim() == 1:
        if advantages.size(0) != logps.size(0):
            raise ValueError(
                f"policy_loss: advantages has {advantages.size(0)} rows but logps has {logps.size(0)}."
            )
        advantages = advantages.unsqueeze(1)  # (N, 1)
    else:
        _check_shape("advantages (per-token)", advantages, logps.shape)
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    # Counts in at least float32: a bf16 mask.sum() is inexact above 256 tokens.
    mask = mask.to(torch.promote_types(logps.dtype, torch.float32))
    old_logps = logps.detach() if old_logps is None else old_logps
    # Padding positions hold arbitrary log-probs (a reference's -100 against a policy's 0 makes exp overflow):
    # neutralise them before any exp, or the loss stays finite while its gradient is NaN (0 * inf).
    valid = mask > 0
    old_logps = torch.where(valid, old_logps, logps.detach())
    if ref_logps is not None:
        ref_logps = torch.where(valid, ref_logps, logps.detach())

    ratio = torch.exp(logps - old_logps)  # (N, T)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)
    per_token_loss = -torch.min(unclipped * advantages, clipped * advantages)  # (N, T)
    if token_weights is not None:
        if token_weights.shape not in (logps.shape, (logps.shape[0], 1)):
            raise ValueError(f"policy_loss: token_weights has shape {tuple(token_weights.shape)}; expected "
                             f"{tuple(logps.shape)} or ({logps.shape[0]}, 1).")
        per_token_loss = per_token_loss * token_weights.detach()

    kl = kl_estimate(logps, ref_logps, kl_estimator) if ref_logps is not None else None
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * kl

    loss_mat = torch.where(mask > 0, per_token_loss * mask, 0.0)
    loss = LOSS_NORMALISERS[loss_type](loss_mat, mask, max_completion_length, num_items_in_batch)
    return loss, _metrics(ratio, advantages, mask, epsilon_low, epsilon_high, kl, entropies)


def micro_batch_loss(
    logps: Tensor,
    old_logps: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    entropies: Tensor,
    micro_rows: int,
    mini_rows: float,
    mini_tokens: float,
    loss_type: str = "grpo",
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    ref_logps: Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    entropy_coef: float = 0.0,
    max_completion_length: int | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The objective of one micro-batch of `micro_rows` rows, weighted so that the micro-batches of a mini-batch
    (`mini_rows` rows, `mini_tokens` trained tokens) add up to the mini-batch's `policy_loss`, minus the entropy
    bonus `entropy_coef * token-mean entropy` (veRL's entropy_coeff; `entropies` (N, T) must carry a gradient
    when `entropy_coef` != 0).

    dapo already divides by the mini-batch's token count, so its micro-batch losses simply add up; the other
    normalisations are means over this micro-batch and are weighted by its share of the rows.

    >>> lp = torch.zeros(2, 3, requires_grad=True); m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    >>> loss, _ = micro_batch_loss(lp, None, torch.tensor([1.0, -1.0]), m, entropies=torch.zeros(2, 3),
    ...                            micro_rows=2, mini_rows=4, mini_tokens=6)
    >>> float(loss.detach())  # grpo: mean over the 2 rows of (-1, +1) = 0, times 2/4
    0.0
    """
    loss, metrics = policy_loss(
        logps, old_logps, advantages, mask, loss_type=loss_type, epsilon_low=epsilon_low, epsilon_high=epsilon_high,
        delta=delta, ref_logps=ref_logps, beta=beta, kl_estimator=kl_estimator,
        max_completion_length=max_completion_length, num_items_in_batch=mini_tokens, entropies=entropies.detach(),
        token_weights=token_weights)
    mask = mask.to(entropies.dtype)  # (n, T)
    if loss_type == "dapo":
        bonus = (entropies * mask).sum() / mini_tokens if entropy_coef else 0.0
        return loss - entropy_coef * bonus, metrics
    if entropy_coef:
        loss = loss - entropy_coef * (entropies * mask).sum() / mask.sum().clamp(min=1.0)
    return loss * (micro_rows / mini_rows), metrics
