"""PPO with a critic: token-level rewards, KL folded into rewards, GAE, clipped value loss.

Pure tensor functions over (N, T) completion tokens, following veRL's `core_algos` (`compute_gae_advantage_return`,
`compute_value_loss`) and Schulman et al. 2017 (PPO, Eq. 9) / 2016 (GAE, Eq. 16).

Masks: `mask` marks the tokens the policy wrote (``RolloutBatch.completion_mask``). Tool observations and other
injected tokens are not actions: GAE runs over the policy's tokens only, so an observation between two turns
is a transition of the environment (the value after a tool call bootstraps from the next policy token).
"""

from __future__ import annotations

import torch
from torch import Tensor


def last_token_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """(N, T) token rewards with each sequence reward on its last policy token (the outcome-reward convention).

    >>> last_token_rewards(torch.tensor([1.0, 2.0]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    tensor([[0., 1., 0.],
            [2., 0., 0.]])
    """
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions[None, :] * mask.long()).argmax(-1)  # (N,) index of the last policy token
    has = mask.sum(-1) > 0
    rows = torch.arange(mask.shape[0], device=mask.device)[has]
    out[rows, last[has]] = rewards[has].float()
    return out


def kl_penalised_rewards(token_rewards: Tensor, logps: Tensor, ref_logps: Tensor, mask: Tensor, beta: float
                         ) -> tuple[Tensor, Tensor]:
    """(rewards - beta * kl, kl) with the per-token k1 estimate kl = logp - ref_logp on policy tokens (veRL's
    `apply_kl_penalty` with kl_penalty="kl"; InstructGPT's KL-in-reward)."""
    kl = (logps - ref_logps) * mask
    return token_rewards - beta * kl, kl


def gae_advantages(token_rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0, lam: float = 1.0
                   ) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over each row's policy tokens. Returns (advantages, returns), (N, T),
    zero off the mask.

    delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1}  (GAE, Eq. 16), where t+1 is the
    next *policy* token (V = 0 after the last one) and returns = A + V. Rewards on non-policy tokens are added to
    the preceding policy token (they are consequences of its action).
    """
    if not token_rewards.shape == values.shape == mask.shape:
        raise ValueError(f"gae_advantages: shapes differ: rewards {tuple(token_rewards.shape)}, values "
                         f"{tuple(values.shape)}, mask {tuple(mask.shape)}")
    m = mask.bool()
    adv = torch.zeros_like(values, dtype=torch.float32)
    n, t = values.shape
    for i in range(n):
        idx = m[i].nonzero().flatten()  # policy token positions
        if idx.numel() == 0:
            continue
        r = token_rewards[i].float()
        # rewards sitting on observation tokens go to the policy token before them
        seg = torch.zeros(idx.numel(), dtype=torch.float32, device=values.device)
        owner = torch.clamp(torch.searchsorted(idx, torch.arange(t, device=idx.device), right=True) - 1, min=0)
        seg.index_add_(0, owner, r)
        v = values[i, idx].float()
        next_v = torch.cat([v[1:], v.new_zeros(1)])
        delta = seg + gamma * next_v - v
        running = 0.0
        out = torch.empty_like(delta)
        for k in range(delta.numel() - 1, -1, -1):
            running = delta[k] + gamma * lam * running
            out[k] = running
        adv[i, idx] = out
    returns = (adv + values.float()) * m
    return adv * m, returns


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the masked entries (unbiased variance, as veRL's `masked_whiten`), 0 off the mask."""
    m = mask.bool()
    vals = x[m]
    if vals.numel() < 2:
        return x * m
    return ((x - vals.mean()) / (vals.var(unbiased=True) + eps).sqrt()) * m


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *, clip_range: float | None = 0.5
               ) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = old + clamp(V - old, -c, c), token mean
    over the mask (PPO, Eq. 9 as in veRL/OpenAI baselines). `clip_range=None` is the plain MSE."""
    m = mask.float()
    unclipped = (values - returns) ** 2
    if clip_range is None:
        per_token = unclipped
        clipped_frac = torch.zeros((), device=values.device)
    else:
        v_clip = old_values + (values - old_values).clamp(-clip_range, clip_range)
        clipped = (v_clip - returns) ** 2
        per_token = torch.maximum(unclipped, clipped)
        clipped_frac = ((clipped > unclipped).float() * m).sum() / m.sum().clamp(min=1.0)
    loss = 0.5 * (per_token * m).sum() / m.sum().clamp(min=1.0)
    resid = ((returns - values) * m)[mask.bool()]
    target = returns[mask.bool()]
    explained = 1 - resid.var() / target.var().clamp(min=1e-8) if target.numel() > 1 else torch.zeros(())
    return loss, {"value_loss": loss.detach(), "value_clip_ratio": clipped_frac.detach(),
                  "explained_variance": explained.detach(), "value_mean": (values * m).sum().detach() / m.sum().clamp(min=1)}
