"""Rollout-correction importance weights for a sampler that is not the trainer (vLLM).

vLLM samples with its own kernels (and, for QLoRA, from merged bf16 weights), so the probability it gave a
token, mu(y_t), differs from the trainer's pi_old(y_t) even with identical weights. Truncated importance
sampling (TIS; Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training")
multiplies each token's policy-gradient term by ``w_t = min(pi_old(y_t) / mu(y_t), C)``. TRL
(`vllm_importance_sampling_mode`) and veRL (`rollout_is`) also offer a sequence-level ratio and masking
instead of truncation; the four modes here follow those semantics:

- ``token_truncate``: w_t = clamp(exp(old_t - rollout_t), clip_min, clip_max) (TIS, the default, C = 2).
- ``token_mask``: w_t = exp(old_t - rollout_t), set to 0 where it falls outside [clip_min, clip_max].
- ``sequence_truncate`` / ``sequence_mask``: the same with the sequence ratio exp(sum_t (old_t - rollout_t))
  over the row's trained tokens, shared by all its tokens.

The weight multiplies the clipped surrogate before the KL term is added (TRL's order), and carries no gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

ROLLOUT_CORRECTION_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclass
class RolloutCorrectionSettings:
    """Importance correction for rollouts sampled by another engine (`model.rollout_correction`)."""

    mode: str = "token_truncate"
    """token_truncate (TIS), token_mask, sequence_truncate, sequence_mask, or off (log the mismatch only)."""
    clip_max: float | None = 2.0
    """C: the upper bound on the weight (truncate modes) or the largest kept ratio (mask modes)."""
    clip_min: float | None = None
    """Lower bound (truncate) or the smallest kept ratio (mask); null: none."""


def rollout_importance_weights(old_logps: Tensor, rollout_logps: Tensor, mask: Tensor, *, mode: str = "token_truncate",
                               clip_max: float | None = 2.0, clip_min: float | None = None) -> Tensor:
    """Importance weights pi_old / mu for the trainer's `old_logps` and the sampler's `rollout_logps`, both (N, T).

    Returns (N, T) for token modes and (N, 1) for sequence modes; positions outside `mask` (N, T) count as a log
    ratio of 0. NaN sampler log-probs (a token the engine could not score) also count as 0.

    >>> old = torch.tensor([[-1.0, -2.0]]); mu = torch.tensor([[-2.0, -1.0]]); m = torch.ones(1, 2)
    >>> rollout_importance_weights(old, mu, m, clip_max=2.0)  # e^1 = 2.72 -> 2.0, e^-1 = 0.37
    tensor([[2.0000, 0.3679]])
    >>> rollout_importance_weights(old, mu, m, mode="sequence_mask", clip_max=2.0)  # e^0 = 1 is kept
    tensor([[1.]])
    """
    if mode not in ROLLOUT_CORRECTION_MODES:
        raise ValueError(f"rollout_correction.mode={mode!r}; use one of {', '.join(ROLLOUT_CORRECTION_MODES)}")
    if old_logps.shape != rollout_logps.shape or mask.shape != old_logps.shape:
        raise ValueError(f"rollout_importance_weights: shapes differ: old {tuple(old_logps.shape)}, rollout "
                         f"{tuple(rollout_logps.shape)}, mask {tuple(mask.shape)}")
    if clip_min is not None and clip_max is not None and clip_min > clip_max:
        raise ValueError(f"rollout_correction: clip_min={clip_min} > clip_max={clip_max}")
    log_ratio = torch.nan_to_num((old_logps - rollout_logps).float() * mask.float(), nan=0.0)  # (N, T)
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(dim=-1, keepdim=True)  # (N, 1)
    ratio = torch.exp(log_ratio)
    if mode.endswith("truncate"):
        return ratio if clip_min is None and clip_max is None else torch.clamp(ratio, min=clip_min, max=clip_max)
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)


def rollout_mismatch_metrics(old_logps: Tensor, rollout_logps: Tensor, mask: Tensor, weights: Tensor | None = None
                             ) -> dict[str, float]:
    """How far the sampler's log-probs are from the trainer's, over trained tokens (NaN tokens skipped).

    `logp_diff/mean|max`: |old - rollout| per token; `kl`: the k3 estimate of KL(mu || pi_old) per token
    (exp(d) - 1 - d with d = old - rollout, >= 0, 0 only when they agree); `is_weight/*` and `is_zeroed` (share
    of weights that truncation or masking changed) when `weights` are given.
    """
    valid = mask.bool() & ~torch.isnan(rollout_logps)  # (N, T)
    if not bool(valid.any()):
        return {}
    d = (old_logps - rollout_logps).float()[valid]
    out = {"logp_diff/mean": float(d.abs().mean()), "logp_diff/max": float(d.abs().max()),
           "kl": float((torch.exp(d) - 1 - d).mean())}
    if weights is not None:
        raw = torch.exp(torch.nan_to_num((old_logps - rollout_logps).float() * mask.float(), nan=0.0))
        if weights.shape[-1] == 1:  # sequence weights: one per row that has trained tokens
            rows = mask.bool().any(dim=-1)
            w, raw = weights[:, 0][rows], torch.exp(torch.log(raw).sum(-1))[rows]
        else:
            w, raw = weights[valid], raw[valid]
        out.update({"is_weight/mean": float(w.mean()), "is_weight/min": float(w.min()),
                    "is_weight/max": float(w.max()), "is_corrected_frac": float((w != raw).float().mean())})
    return out


__all__ = ["ROLLOUT_CORRECTION_MODES", "RolloutCorrectionSettings", "rollout_importance_weights", "rollout_mismatch_metrics"]
