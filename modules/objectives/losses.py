"""Clipped policy-gradient losses of the GRPO family, as TRL's GRPOTrainer computes them.

``policy_loss`` builds the per-token PPO-clip objective (Schulman et al. 2017, Eq. 7) with the
asymmetric "clip-higher" bounds of DAPO (Yu et al. 2025, Eq. 10) and an optional KL penalty, then
reduces it with one of the normalisers in ``LOSS_NORMALISERS``:

- "grpo": mean over each sequence's tokens, then over sequences (Shao et al. 2024, Eq. 3).
- "bnpo": sum over all tokens of the micro-batch / number of those tokens.
- "dr_grpo": sum / (N * max_completion_length), a constant (Liu et al. 2025, "Dr. GRPO", Eq. 3).
- "dapo": sum / ``num_items_in_batch`` (DAPO token-level loss, Eq. 12).
- "cispo": CISPO's surrogate (``cispo_token_loss``), normalised as "dapo" (TRL's loss_type="cispo").
- "sapo": SAPO's soft-gated surrogate (``sapo_gate``), normalised as "grpo" (TRL's loss_type="sapo").

The importance ratio is per token, per sequence (GSPO) or GSPO-token (``importance_log_ratio``); the tokens that
carry a gradient can be narrowed to the high-entropy ones or by covariance (KL-Cov / Clip-Cov, ``TOKEN_SELECTIONS``).

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
    "cispo": _dapo,  # TRL normalises cispo by the tokens of the batch, as dapo
    "sapo": _grpo,  # and sapo per sequence, as grpo
}
PPO_CLIP_LOSSES = ("grpo", "bnpo", "dr_grpo", "dapo")
"""The loss types whose per-token surrogate is PPO's clipped one (the others: cispo, sapo)."""
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence", "sequence_token")
TOKEN_SELECTIONS = ("all", "top_entropy", "kl_cov", "clip_cov")


def importance_log_ratio(logps: Tensor, old_logps: Tensor, mask: Tensor, *, level: str = "token") -> Tensor:
    """(N, T) log importance ratio of the (N, T) ``logps`` against ``old_logps`` over the (N, T) ``mask``.

    - "token" (PPO/GRPO): ``log r_t = logp_t - old_logp_t``.
    - "sequence" (GSPO, Zheng et al. 2025, Eq. 7): ``log s_i = mean_t (logp_t - old_logp_t)`` over row i's trained
      tokens, the same value broadcast to every token; its gradient reaches each token as 1/|y_i|
      (TRL trl/trainer/grpo_trainer.py, importance_sampling_level="sequence").
    - "sequence_token" (GSPO-token, Eq. 13): ``log s_i,t = sg[log s_i] + logp_t - sg[logp_t]``, i.e.
      ``s_i,t = sg[s_i] * pi_t / sg[pi_t]``: the value of s_i with the gradient of token t alone, so per-token
      advantages stay per-token (veRL verl/trainer/ppo/core_algos.py, compute_policy_loss_gspo).
    A row without trained tokens gets log ratio 0.
    """
    if level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f"importance_log_ratio: level={level!r}; use one of {list(IMPORTANCE_SAMPLING_LEVELS)}")
    log_ratio = logps - old_logps  # (N, T)
    if level == "token":
        return log_ratio
    mask = mask.to(log_ratio.dtype)
    seq = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)  # (N, 1)
    if level == "sequence":
        return seq.expand_as(log_ratio)
    return seq.detach() + logps - logps.detach()


def cispo_token_loss(ratio: Tensor, logps: Tensor, advantages: Tensor, *, epsilon_high: float) -> Tensor:
    """(N, T) CISPO loss (MiniMax-M1, Chen et al. 2025, Eq. 4): ``-sg[min(r, 1 + epsilon_high)] * A * logp``.

    The importance weight is clipped and carries no gradient, so every token keeps the REINFORCE gradient
    ``A * w * grad logp`` (none is dropped, unlike PPO's clip). MiniMax sets no lower bound; neither does TRL
    (trl/trainer/grpo_trainer.py, loss_type="cispo"; TRL's epsilon_high is the cap itself, ours is ``1 + epsilon_high``).
    ``ratio`` (N, T) or (N, 1); ``advantages`` (N, 1) or (N, T).
    """
    return -torch.clamp(ratio, max=1.0 + epsilon_high).detach() * advantages * logps


def sapo_gate(ratio: Tensor, temperature: float) -> Tensor:
    """SAPO's soft gate (Gao et al. 2025, arXiv 2511.20347, Eq. 5): ``f(r) = sigmoid(tau * (r - 1)) * 4 / tau``.

    ``f(1) = 2 / tau`` and ``f'(1) = 1``: on-policy the gradient is the plain policy gradient, and it decays smoothly
    (``f'(r) = 4 * sigmoid * (1 - sigmoid)``) as ``r`` leaves 1, instead of dropping to 0 at a hard clip
    (TRL trl/trainer/grpo_trainer.py, get_sapo_token_loss).
    """
    return torch.sigmoid(temperature * (ratio - 1.0)) * (4.0 / temperature)


def sapo_token_loss(ratio: Tensor, advantages: Tensor, *, temperature_pos: float = 1.0,
                    temperature_neg: float = 1.05) -> Tensor:
    """(N, T) SAPO loss ``-f(r; tau) * A`` with ``tau = temperature_pos`` where ``A > 0`` else ``temperature_neg``
    (TRL's defaults 1.0 / 1.05: negative advantages decay faster). ``ratio`` (N, T); ``advantages`` (N, 1) or (N, T).
    """
    tau = torch.where(advantages > 0, temperature_pos, temperature_neg).to(ratio.dtype)  # broadcasts to (N, T)
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)
    return -gate * advantages


def high_entropy_mask(entropies: Tensor, mask: Tensor, *, quantile: float = 0.2) -> Tensor:
    """(N, T) 0/1 mask of the trained tokens whose entropy is in the top ``quantile`` of the batch's trained tokens.

    "Beyond the 80/20 rule" (Wang et al. 2025): train only on the forking tokens, the top 20% by entropy. Threshold:
    the (1 - quantile) quantile (linear interpolation) of the trained tokens' entropies; ties at the threshold are
    kept (TRL trl/trainer/grpo_trainer.py, get_high_entropy_mask with top_entropy_quantile). ``quantile=1`` keeps all.
    """
    on = mask > 0
    if not bool(on.any()):
        return torch.zeros_like(mask, dtype=entropies.dtype)
    values = entropies.detach()[on].float()
    threshold = torch.quantile(values, 1.0 - quantile)
    return ((entropies.detach().float() >= threshold) & on).to(entropies.dtype)


def _centred_product(logps: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """(N, T) cov_t = (A_t - mean A) * (logp_t - mean logp), means over the trained tokens (detached)."""
    on = mask > 0
    adv = advantages.detach()
    adv = (adv.unsqueeze(1) if adv.dim() == 1 else adv).expand_as(logps).float()
    lp = logps.detach().float()
    return (adv - adv[on].mean()) * (lp - lp[on].mean())


def kl_cov_mask(logps: Tensor, advantages: Tensor, mask: Tensor, *, ratio: float = 2e-4) -> Tensor:
    """(N, T) bool (``logps``, ``mask`` (N, T); ``advantages`` (N,), (N, 1) or (N, T)): the ``max(1, int(ratio * n))`` trained tokens (of n) with the largest centred covariance
    ``(A_t - mean A) * (logp_t - mean logp)`` (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs",
    Eq. 12; veRL verl/trainer/ppo/core_algos.py, compute_policy_loss_kl_cov). KL-Cov adds ``kl_cov_coef * |logp -
    old_logp|`` to the unclipped surrogate on these tokens."""
    on = mask > 0
    out = torch.zeros_like(on)
    n = int(on.sum())
    if n == 0 or ratio <= 0:
        return out
    cov = _centred_product(logps, advantages, mask)[on]  # (n,)
    k = max(1, int(n * ratio))
    flat = on.flatten().nonzero().flatten()[torch.topk(cov, k).indices]
    out.view(-1)[flat] = True
    return out


def clip_cov_mask(logps: Tensor, advantages: Tensor, mask: Tensor, clipped: Tensor, *, ratio: float = 2e-4,
                  low: float = 1.0, high: float = 5.0, generator: torch.Generator | None = None) -> Tensor:
    """(N, T) bool: tokens whose gradient Clip-Cov drops (Cui et al. 2025, Eq. 11; veRL core_algos.py,
    compute_policy_loss_clip_cov): among the trained tokens not already clipped (``clipped`` (N, T) bool) whose
    centred covariance lies in the open interval (low, high), ``max(1, int(ratio * n))`` are drawn at random."""
    on = mask > 0
    out = torch.zeros_like(on)
    n = int(on.sum())
    if n == 0 or ratio <= 0:
        return out
    cov = _centred_product(logps, advantages, mask)
    candidates = ((cov > low) & (cov < high) & on & ~clipped).flatten().nonzero().flatten()
    k = min(max(1, int(n * ratio)), candidates.numel())
    if k:
        pick = torch.randperm(candidates.numel(), generator=generator)[:k].to(candidates.device)
        out.view(-1)[candidates[pick]] = True
    return out


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
    importance_sampling_level: str = "token",
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    token_selection: str = "all",
    top_entropy_quantile: float = 0.2,
    kl_cov_ratio: float = 2e-4,
    kl_cov_coef: float = 1.0,
    clip_cov_ratio: float = 2e-4,
    clip_cov_bounds: tuple[float, float] = (1.0, 5.0),
    generator: torch.Generator | None = None,
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

    The menu beyond TRL's default (the defaults reproduce it):
    ``importance_sampling_level``: token, sequence (GSPO) or sequence_token (GSPO-token), see
    ``importance_log_ratio``. ``loss_type`` "cispo" uses ``cispo_token_loss`` and "sapo" ``sapo_token_loss``
    (temperatures ``sapo_temperature_pos`` / ``_neg``) instead of the clipped surrogate.
    ``token_selection``: "all"; "top_entropy" multiplies the surrogate by ``high_entropy_mask(entropies, mask,
    quantile=top_entropy_quantile)`` (needs ``entropies``); "kl_cov" replaces the clipped surrogate by ``-r * A`` plus
    ``kl_cov_coef * |logp - old_logp|`` on the ``kl_cov_mask`` tokens; "clip_cov" zeroes the clipped surrogate on the
    ``clip_cov_mask`` tokens (``clip_cov_bounds`` = (low, high) of the covariance, ``generator`` for the draw). Both
    covariance selections need a PPO-clip ``loss_type`` and token-level ratios. Extra metrics:
    ``token_selection/kept_frac`` (the trained share of the tokens) and ``cispo/clip_frac``.
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

    if token_selection not in TOKEN_SELECTIONS:
        raise ValueError(f"policy_loss: token_selection={token_selection!r}; use one of {list(TOKEN_SELECTIONS)}.")
    if token_selection in ("kl_cov", "clip_cov") and (loss_type not in PPO_CLIP_LOSSES
                                                      or importance_sampling_level != "token"):
        raise ValueError(f"policy_loss: token_selection={token_selection!r} needs a PPO-clip loss_type "
                         f"{list(PPO_CLIP_LOSSES)} and importance_sampling_level='token', got {loss_type!r} and "
                         f"{importance_sampling_level!r}.")
    if token_selection == "top_entropy" and entropies is None:
        raise ValueError("policy_loss: token_selection='top_entropy' needs the (N, T) entropies.")

    ratio = torch.exp(importance_log_ratio(logps, old_logps, mask, level=importance_sampling_level))  # (N, T)
    extra: dict[str, Tensor] = {}
    if loss_type == "cispo":
        per_token_loss = cispo_token_loss(ratio, logps, advantages, epsilon_high=epsilon_high)
        extra["cispo/clip_frac"] = _masked_mean(((ratio.detach() > 1 + epsilon_high) & (advantages > 0)).to(
            mask.dtype), mask)
    elif loss_type == "sapo":
        per_token_loss = sapo_token_loss(ratio, advantages, temperature_pos=sapo_temperature_pos,
                                         temperature_neg=sapo_temperature_neg)
    elif token_selection == "kl_cov":
        chosen = kl_cov_mask(logps, advantages, mask, ratio=kl_cov_ratio)
        per_token_loss = -ratio * advantages + torch.where(chosen, kl_cov_coef * (logps - old_logps).abs(), 0.0)
    else:
        clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
        unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)
        per_token_loss = -torch.min(unclipped * advantages, clipped * advantages)  # (N, T)
        if token_selection == "clip_cov":
            was_clipped = (-clipped * advantages > -ratio * advantages).detach()  # the clip took over
            low, high = clip_cov_bounds
            chosen = clip_cov_mask(logps, advantages, mask, was_clipped, ratio=clip_cov_ratio, low=low, high=high,
                                   generator=generator)
            per_token_loss = per_token_loss.masked_fill(chosen, 0.0)
    if token_selection != "all":
        if token_selection == "top_entropy":
            keep = high_entropy_mask(entropies, mask, quantile=top_entropy_quantile)
            per_token_loss = per_token_loss * keep
        else:
            keep = (~chosen).to(mask.dtype) if token_selection == "clip_cov" else torch.ones_like(mask)
            extra[f"{token_selection}/selected_frac"] = _masked_mean(chosen.to(mask.dtype), mask)
        extra["token_selection/kept_frac"] = _masked_mean(keep.to(mask.dtype), mask)
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
    return loss, {**_metrics(ratio, advantages, mask, epsilon_low, epsilon_high, kl, entropies), **extra}


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
    **menu,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The objective of one micro-batch of `micro_rows` rows, weighted so that the micro-batches of a mini-batch
    (`mini_rows` rows, `mini_tokens` trained tokens) add up to the mini-batch's `policy_loss`, minus the entropy
    bonus `entropy_coef * token-mean entropy` (veRL's entropy_coeff; `entropies` (N, T) must carry a gradient
    when `entropy_coef` != 0).

    dapo (and cispo) already divide by the mini-batch's token count, so their micro-batch losses simply add up; the
    other normalisations are means over this micro-batch and are weighted by its share of the rows.

    `menu`: the keywords of `policy_loss` beyond these (importance_sampling_level, sapo_temperature_pos / _neg,
    token_selection, top_entropy_quantile, kl_cov_ratio, kl_cov_coef, clip_cov_ratio, clip_cov_bounds, generator),
    passed on as they are; top_entropy, kl_cov and clip_cov select among this micro-batch's tokens.

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
        token_weights=token_weights, **menu)
    mask = mask.to(entropies.dtype)  # (n, T)
    if LOSS_NORMALISERS[loss_type] is _dapo:
        bonus = (entropies * mask).sum() / mini_tokens if entropy_coef else 0.0
        return loss - entropy_coef * bonus, metrics
    if entropy_coef:
        loss = loss - entropy_coef * (entropies * mask).sum() / mask.sum().clamp(min=1.0)
    return loss * (micro_rows / mini_rows), metrics
