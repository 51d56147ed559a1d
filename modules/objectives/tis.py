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
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from modules.settings import SettingsError, check_choice, check_number

if TYPE_CHECKING:
    from modules.rollout.batch import RolloutBatch

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

    def __post_init__(self) -> None:
        check_choice("model.rollout_correction.mode", self.mode, (*ROLLOUT_CORRECTION_MODES, "off"))
        if self.mode.endswith("truncate") and self.clip_max is None:
            raise SettingsError(f"model.rollout_correction.mode={self.mode} needs clip_max (the truncation bound C; "
                                "2.0 in the TIS paper)")
        for name in ("clip_max", "clip_min"):
            if getattr(self, name) is not None:
                check_number(f"model.rollout_correction.{name}", getattr(self, name), low=0.0)
        if self.clip_min is not None and self.clip_max is not None and self.clip_min > self.clip_max:
            raise SettingsError(f"model.rollout_correction.clip_min={self.clip_min} > clip_max={self.clip_max}")


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


class RolloutCorrection:
    """The correction of one training step's batch, owned by the recipe: `begin` -> `observe` per micro-batch ->
    `finish`. Inactive (every call a no-op) when the batch carries no sampler log-probs (the HF engine).

    pi_old is the trainer's log-prob of each token under the weights the engine sampled with. When the batch is
    used in a single pass, those are the weights of the training forward itself, so `observe` takes each
    micro-batch's detached log-probs and no extra forward runs (TRL and veRL run one). Otherwise `begin` computes
    them (`trainer_logps`), they become `old_logps` (the ratio's base) and `token_weights`.
    """

    def __init__(self, settings: RolloutCorrectionSettings) -> None:
        self.settings = settings
        self._rollout: RolloutBatch | None = None
        self._parts: list[Tensor] | None = None
        self._metrics: dict[str, float] = {}

    def weights(self, old_logps: Tensor, rollout: RolloutBatch) -> Tensor | None:
        """(N, T) importance weights (sequence modes broadcast over the row), or None when the mode is off."""
        s, mask = self.settings, rollout.completion_mask
        if s.mode == "off":
            return None
        w = rollout_importance_weights(old_logps, rollout.rollout_logps, mask, mode=s.mode, clip_max=s.clip_max,
                                       clip_min=s.clip_min)
        return w.expand(mask.shape).contiguous()

    def _mismatch(self, rollout: RolloutBatch, old_logps: Tensor, weights: Tensor | None) -> dict[str, float]:
        if weights is not None and self.settings.mode.startswith("sequence"):
            weights = weights[:, :1]  # one weight per row
        metrics = rollout_mismatch_metrics(old_logps, rollout.rollout_logps, rollout.completion_mask, weights)
        return {f"rollout_correction/{k}": v for k, v in metrics.items()}

    @torch.no_grad()
    def begin(self, rollout: RolloutBatch, *, single_pass: bool, trainer_logps: Callable[[], Tensor]) -> None:
        """Start the step's correction of `rollout` (sets `old_logps` and `token_weights` unless single-pass)."""
        self._rollout = rollout if rollout.rollout_logps is not None else None
        self._parts, self._metrics = None, {}
        if self._rollout is None:
            return
        if rollout.old_logps is None and single_pass:
            self._parts = []  # filled by `observe`, one micro-batch at a time, in row order
            return
        if rollout.old_logps is None:
            rollout.old_logps = trainer_logps()
        rollout.token_weights = self.weights(rollout.old_logps, rollout)
        self._metrics = self._mismatch(rollout, rollout.old_logps, rollout.token_weights)

    def observe(self, micro: RolloutBatch, logps: Tensor) -> Tensor | None:
        """The token weights of `micro` given its training forward's log-probs (N, T)."""
        if self._parts is None or micro.rollout_logps is None:
            return micro.token_weights
        logps = logps.detach()
        self._parts.append(logps)
        return self.weights(logps, micro)

    @torch.no_grad()
    def finish(self, trainer_logps: Callable[[], Tensor]) -> dict[str, float]:
        """The mismatch metrics of the step (`trainer_logps` runs only if a single pass skipped its backward)."""
        rollout, parts = self._rollout, self._parts
        self._rollout, self._parts = None, None
        if rollout is None:
            return {}
        if parts is not None:
            old = torch.cat(parts) if parts else trainer_logps()
            return self._mismatch(rollout, old, self.weights(old, rollout))
        return self._metrics


__all__ = ["ROLLOUT_CORRECTION_MODES", "RolloutCorrection", "RolloutCorrectionSettings", "rollout_importance_weights",
           "rollout_mismatch_metrics"]
