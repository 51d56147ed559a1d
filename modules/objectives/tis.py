"""Rollout-correction importance weights for a sampler that is not the trainer (vLLM).

vLLM samples with its own kernels (and, for QLoRA, from merged bf16 weights), so the probability it gave a
token, mu(y_t), differs from the trainer's pi_old(y_t) even with identical weights. Truncated importance
sampling (TIS; Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training")
multiplies each token's policy-gradient term by ``w_t = min(pi_old(y_t) / mu(y_t), C)``. TRL
(`vllm_importance_sampling_mode`) and veRL (`rollout_is`) also offer a sequence-level ratio and masking
instead of truncation; the four first modes here follow those semantics, the last two are rejection masks
(weights 0 or 1, no ratio applied):

- ``token_truncate``: w_t = clamp(exp(old_t - rollout_t), clip_min, clip_max) (TIS, the default, C = 2).
- ``token_mask``: w_t = exp(old_t - rollout_t), set to 0 where it falls outside [clip_min, clip_max].
- ``sequence_truncate`` / ``sequence_mask``: the same with the sequence ratio exp(sum_t (old_t - rollout_t))
  over the row's trained tokens, shared by all its tokens.
- ``geometric_mask``: w = 1 if clip_min <= exp(mean_t (old_t - rollout_t)) <= clip_max else 0, per row (the
  geometric mean of the token ratios over the row's trained tokens: length-invariant). SkyRL's default
  `off_policy_correction` sequence mask (`sequence_mask_metric: geometric`, its bounds `geo_mask_low/high`).
- ``offpolicy_mask``: DeepSeek-V3.2's off-policy sequence masking: w_t = 0 where A_t < 0 and the row's mean
  log-ratio of sampler to trainer, (1/|o|) sum_t (rollout_t - old_t), exceeds `offpolicy_threshold` (delta);
  1 elsewhere. [unverified: the rule is recalled from the paper (its pi_old is the sampler, pi_theta the trained
  policy), not checked against its text here; delta has no published default, so it must be set.] pi_old here is
  the trainer's log-prob at the step's start, so the row's divergence is measured once per step.

With top-p / top-k sampling (`SamplingSettings.top_p < 1` or `top_k > 0`), vLLM's processed log-probs are
renormalised over the kept tokens; the trainer's pi_old for the correction is then `truncated_logprobs` of its
own logits (the same truncation, at the sampling temperature), so both sides compare like with like.

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

ROLLOUT_CORRECTION_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "geometric_mask",
                            "offpolicy_mask")
_ROW_MODES = ("sequence_truncate", "sequence_mask", "geometric_mask")  # one weight per row
_MASK_ONLY_MODES = ("geometric_mask", "offpolicy_mask")  # weights are 0 or 1


@dataclass
class RolloutCorrectionSettings:
    """Importance correction for rollouts sampled by another engine (`model.rollout_correction`)."""

    mode: str = "token_truncate"
    """token_truncate (TIS), token_mask, sequence_truncate, sequence_mask, geometric_mask (SkyRL),
    offpolicy_mask (DeepSeek-V3.2), or off (log the mismatch only)."""
    clip_max: float | None = 2.0
    """C: the upper bound on the weight (truncate modes) or the largest kept ratio (mask modes)."""
    clip_min: float | None = None
    """Lower bound (truncate) or the smallest kept ratio (mask); null: none."""
    offpolicy_threshold: float | None = None
    """offpolicy_mask: delta, the row's mean sampler-to-trainer log-ratio above which a negative-advantage row is
    masked (no published default: set it)."""

    def __post_init__(self) -> None:
        check_choice("model.rollout_correction.mode", self.mode, (*ROLLOUT_CORRECTION_MODES, "off"))
        if self.mode.endswith("truncate") and self.clip_max is None:
            raise SettingsError(f"model.rollout_correction.mode={self.mode} needs clip_max (the truncation bound C; "
                                "2.0 in the TIS paper)")
        if self.mode == "geometric_mask" and self.clip_max is None and self.clip_min is None:
            raise SettingsError("model.rollout_correction.mode=geometric_mask needs clip_min and/or clip_max (the "
                                "kept range of the per-row geometric-mean ratio; SkyRL uses 0.99 and 1.01)")
        if self.mode == "offpolicy_mask" and self.offpolicy_threshold is None:
            raise SettingsError("model.rollout_correction.mode=offpolicy_mask needs offpolicy_threshold (delta, the "
                                "row's mean log-ratio above which a negative-advantage row is masked)")
        for name in ("clip_max", "clip_min", "offpolicy_threshold"):
            if getattr(self, name) is not None:
                check_number(f"model.rollout_correction.{name}", getattr(self, name), low=0.0)
        if self.clip_min is not None and self.clip_max is not None and self.clip_min > self.clip_max:
            raise SettingsError(f"model.rollout_correction.clip_min={self.clip_min} > clip_max={self.clip_max}")


def truncated_logprobs(logits: Tensor, token_ids: Tensor, *, temperature: float = 1.0, top_p: float = 1.0,
                       top_k: int = 0) -> Tensor:
    """Log-probs (...,) of `token_ids` (...,) under `logits` (..., V) renormalised over the top-k / top-p set.

    vLLM's sampler order: logits / temperature, then top-k (ties with the k-th logit kept), then top-p over the
    top-k distribution (sort ascending, drop the tokens whose cumulative probability is <= 1 - top_p, always
    keeping the most likely), then log-softmax over what is kept; a token outside the kept set gets -inf.
    `top_p=1, top_k=0` is the plain log-softmax.

    >>> p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    >>> truncated_logprobs(p.log(), torch.tensor(0), top_p=0.75).exp()  # keeps {0.5, 0.3}: 0.5 / 0.8
    tensor(0.6250)
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    vocab = logits.shape[-1]
    if top_k and 0 < top_k < vocab:
        kth = logits.topk(int(top_k), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        ascending, order = logits.sort(dim=-1)
        drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1.0 - top_p
        drop[..., -1] = False  # the most likely token always stays
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), -math.inf)
    return torch.log_softmax(logits, dim=-1).gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1)


def rollout_importance_weights(old_logps: Tensor, rollout_logps: Tensor, mask: Tensor, *, mode: str = "token_truncate",
                               clip_max: float | None = 2.0, clip_min: float | None = None,
                               advantages: Tensor | None = None, offpolicy_threshold: float | None = None) -> Tensor:
    """Importance weights pi_old / mu for the trainer's `old_logps` and the sampler's `rollout_logps`, both (N, T).

    Returns (N, T) for token modes and offpolicy_mask, (N, 1) for sequence modes and geometric_mask; positions
    outside `mask` (N, T) count as a log ratio of 0. NaN sampler log-probs (a token the engine could not score)
    also count as 0. offpolicy_mask needs `advantages` ((N,) or (N, T)) and `offpolicy_threshold`.

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
    if mode == "geometric_mask":  # exp(mean_t log ratio) over the row's trained tokens
        mean = log_ratio.sum(dim=-1, keepdim=True) / mask.float().sum(dim=-1, keepdim=True).clamp(min=1.0)
        geo = torch.exp(mean)  # (N, 1)
        low = -math.inf if clip_min is None else clip_min
        high = math.inf if clip_max is None else clip_max
        return ((geo >= low) & (geo <= high)).float()
    if mode == "offpolicy_mask":
        if advantages is None or offpolicy_threshold is None:
            raise ValueError("rollout_correction.mode=offpolicy_mask needs the advantages and offpolicy_threshold")
        rows = log_ratio.sum(dim=-1, keepdim=True) / mask.float().sum(dim=-1, keepdim=True).clamp(min=1.0)
        negative = advantages.reshape(len(old_logps), -1) < 0  # (N, 1) or (N, T)
        return (~((-rows > offpolicy_threshold) & negative)).float().expand(old_logps.shape).contiguous()
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(dim=-1, keepdim=True)  # (N, 1)
    ratio = torch.exp(log_ratio)
    if mode.endswith("truncate"):
        return ratio if clip_min is None and clip_max is None else torch.clamp(ratio, min=clip_min, max=clip_max)
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)


def rollout_mismatch_metrics(old_logps: Tensor, rollout_logps: Tensor, mask: Tensor, weights: Tensor | None = None,
                             *, mask_only: bool = False) -> dict[str, float]:
    """How far the sampler's log-probs are from the trainer's, over trained tokens (NaN tokens skipped).

    `logp_diff/mean|max`: |old - rollout| per token; `kl`: the k3 estimate of KL(mu || pi_old) per token
    (exp(d) - 1 - d with d = old - rollout, >= 0, 0 only when they agree); `is_weight/*` and `is_zeroed` (share
    of weights that truncation or masking changed; with `mask_only` (0/1 rejection masks), the share zeroed) when
    `weights` are given.
    """
    # NaN sampler log-probs (a token the engine could not score) and -inf trainer ones (a sampled token outside the
    # trainer's replayed top-k / top-p set: its weight is 0) would make the statistics NaN or inf: skip them.
    valid = mask.bool() & torch.isfinite(rollout_logps) & torch.isfinite(old_logps)  # (N, T)
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
        corrected = (w == 0) if mask_only else (w != raw)
        out.update({"is_weight/mean": float(w.mean()), "is_weight/min": float(w.min()),
                    "is_weight/max": float(w.max()), "is_corrected_frac": float(corrected.float().mean())})
    return out


class RolloutCorrection:
    """The correction of one training step's batch, owned by the recipe: `begin` -> `observe` per micro-batch ->
    `finish`. Inactive (every call a no-op) when the batch carries no sampler log-probs (the HF engine).

    pi_old is the trainer's log-prob of each token under the weights the engine sampled with (with top-p / top-k
    sampling, renormalised over the same truncation: `truncated_logprobs`). When the batch is used in a single
    pass, those are the weights of the training forward itself, so `observe` takes each micro-batch's detached
    log-probs and no extra forward runs (TRL and veRL run one). Otherwise `begin` computes them (`trainer_logps`
    sets `old_logps`, the ratio's base; `sampler_logps`, when given, is the truncated pi_old of the weights) and
    sets `token_weights`. offpolicy_mask also needs the advantages, passed to `begin` and `observe`.
    """

    def __init__(self, settings: RolloutCorrectionSettings) -> None:
        self.settings = settings
        self._rollout: RolloutBatch | None = None
        self._advantages: Tensor | None = None
        self._parts: list[Tensor] | None = None
        self._metrics: dict[str, float] = {}

    @property
    def observing(self) -> bool:
        """True while a single-pass step takes pi_old from the training forwards (`observe` uses its log-probs)."""
        return self._parts is not None

    def weights(self, old_logps: Tensor, rollout: RolloutBatch, advantages: Tensor | None = None) -> Tensor | None:
        """(N, T) importance weights (row modes broadcast over the row), or None when the mode is off."""
        s, mask = self.settings, rollout.completion_mask
        if s.mode == "off":
            return None
        w = rollout_importance_weights(old_logps, rollout.rollout_logps, mask, mode=s.mode, clip_max=s.clip_max,
                                       clip_min=s.clip_min, advantages=advantages,
                                       offpolicy_threshold=s.offpolicy_threshold)
        return w.expand(mask.shape).contiguous()

    def _mismatch(self, rollout: RolloutBatch, old_logps: Tensor, weights: Tensor | None) -> dict[str, float]:
        if weights is not None and self.settings.mode in _ROW_MODES:
            weights = weights[:, :1]  # one weight per row
        metrics = rollout_mismatch_metrics(old_logps, rollout.rollout_logps, rollout.completion_mask, weights,
                                           mask_only=self.settings.mode in _MASK_ONLY_MODES)
        return {f"rollout_correction/{k}": v for k, v in metrics.items()}

    @torch.no_grad()
    def begin(self, rollout: RolloutBatch, *, single_pass: bool, trainer_logps: Callable[[], Tensor],
              sampler_logps: Callable[[], Tensor] | None = None, advantages: Tensor | None = None) -> None:
        """Start the step's correction of `rollout` (sets `old_logps` and `token_weights` unless single-pass).

        `trainer_logps`: the trainer's full-vocabulary log-probs (the ratio's base); `sampler_logps`: the trainer's
        log-probs under the sampler's top-p / top-k truncation, when it truncates (the pi_old of the weights);
        `advantages`: (N,) or (N, T), for offpolicy_mask."""
        self._rollout = rollout if rollout.rollout_logps is not None else None
        self._parts, self._metrics, self._advantages = None, {}, advantages
        if self._rollout is None:
            return
        if rollout.old_logps is None and single_pass:
            self._parts = []  # filled by `observe`, one micro-batch at a time, in row order
            return
        if rollout.old_logps is None:
            rollout.old_logps = trainer_logps()
        pi_old = rollout.old_logps if sampler_logps is None else sampler_logps()
        rollout.token_weights = self.weights(pi_old, rollout, advantages)
        self._metrics = self._mismatch(rollout, pi_old, rollout.token_weights)

    def observe(self, micro: RolloutBatch, logps: Tensor, advantages: Tensor | None = None) -> Tensor | None:
        """The token weights of `micro` given its training forward's log-probs (N, T) (under the sampler's
        truncation when it truncates) and its advantages (offpolicy_mask)."""
        if self._parts is None or micro.rollout_logps is None:
            return micro.token_weights
        logps = logps.detach()
        self._parts.append(logps)
        return self.weights(logps, micro, advantages)

    @torch.no_grad()
    def finish(self, trainer_logps: Callable[[], Tensor]) -> dict[str, float]:
        """The mismatch metrics of the step (`trainer_logps`, the pi_old of the weights, runs only if a single pass
        skipped its backward)."""
        rollout, parts, advantages = self._rollout, self._parts, self._advantages
        self._rollout, self._parts, self._advantages = None, None, None
        if rollout is None:
            return {}
        if parts is not None:
            old = torch.cat(parts) if parts else trainer_logps()
            return self._mismatch(rollout, old, self.weights(old, rollout, advantages))
        return self._metrics


__all__ = ["ROLLOUT_CORRECTION_MODES", "RolloutCorrection", "RolloutCorrectionSettings", "rollout_importance_weights",
           "rollout_mismatch_metrics", "truncated_logprobs"]
