"""HCRMP's agent: a Beta-policy actor with one critic per reward term, and the multi-critic advantage maths.

Spec section 6(b, c). The policy samples continuous actions (acceleration, steering) from a Beta distribution
[2nd] on (0, 1), mapped to [-1, 1] (`to_action`). Each reward term (`env.TERMS`) has its own value head; the
advantages are computed per critic (`per_critic_gae`, GAE through `modules.objectives.ppo.gae_advantages`) and
mixed with the hint's critic weights, ``A = sum_k w_k A_k`` (`multi_critic_advantage`) [unverified form].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modules.objectives.ppo import gae_advantages


class BetaActorMultiCritic(nn.Module):
    """An MLP actor giving Beta parameters ``alpha, beta > 1`` (softplus + 1: unimodal) per action dimension, and a
    separate MLP critic with one value per reward term. Both are two tanh layers of `hidden` units."""

    def __init__(self, obs_dim: int, action_dim: int = 2, n_critics: int = 3, hidden: int = 64) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.n_critics = n_critics
        self.actor = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                   nn.Linear(hidden, 2 * action_dim))
        self.critic = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                    nn.Linear(hidden, n_critics))
        nn.init.orthogonal_(self.actor[-1].weight, gain=0.01)  # start near Beta(1 + log 2, 1 + log 2): centred, wide
        nn.init.zeros_(self.actor[-1].bias)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """obs (B, D) -> alpha (B, A), beta (B, A), values (B, K)."""
        out = self.actor(obs)  # (B, 2A)
        alpha = F.softplus(out[..., :self.action_dim]) + 1.0  # (B, A)
        beta = F.softplus(out[..., self.action_dim:]) + 1.0  # (B, A)
        return alpha, beta, self.critic(obs)  # values (B, K)


def beta_log_prob(alpha: Tensor, beta: Tensor, action01: Tensor) -> Tensor:
    """log Beta(x; alpha, beta) summed over the last (action) dimension: (B, A) -> (B,).

    ``(a - 1) log x + (b - 1) log(1 - x) - [lgamma(a) + lgamma(b) - lgamma(a + b)]``; `action01` must lie in (0, 1)
    (use `to_unit`).
    """
    log_norm = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)  # (B, A) log B(a, b)
    return ((alpha - 1) * torch.log(action01) + (beta - 1) * torch.log1p(-action01) - log_norm).sum(-1)


def beta_entropy(alpha: Tensor, beta: Tensor) -> Tensor:
    """Differential entropy of Beta(alpha, beta) summed over the action dimension: (B, A) -> (B,).

    ``log B(a, b) - (a - 1) psi(a) - (b - 1) psi(b) + (a + b - 2) psi(a + b)``.
    """
    log_norm = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)  # (B, A)
    return (log_norm - (alpha - 1) * torch.digamma(alpha) - (beta - 1) * torch.digamma(beta)
            + (alpha + beta - 2) * torch.digamma(alpha + beta)).sum(-1)


def to_unit(action, eps: float = 1e-5):
    """[-1, 1] -> [eps, 1 - eps]: ``(a + 1) / 2`` clamped so the Beta log-prob stays finite (tensor or numpy)."""
    u = (action + 1) / 2
    return u.clamp(eps, 1 - eps) if isinstance(u, Tensor) else u.clip(eps, 1 - eps)


def to_action(u):
    """(0, 1) -> (-1, 1): ``2 u - 1`` (a Beta sample to the env's action; tensor or numpy)."""
    return 2 * u - 1


def multi_critic_advantage(advantages: Tensor, weights: Tensor) -> Tensor:
    """``A_t = sum_k w_tk A_tk``: advantages (T, K), weights (T, K) (or (K,), broadcast) -> (T,)."""
    return (advantages * weights).sum(-1)  # (T,)


def per_critic_gae(rewards: Tensor, values: Tensor, dones: Tensor, last_values: Tensor, *, gamma: float,
                   lam: float) -> tuple[Tensor, Tensor]:
    """GAE for each critic over one rollout of T steps that may span several episodes.

    rewards (T, K) (the per-term rewards, ``rewards[t]`` received after the action at t), values (T, K) (V_k(s_t)),
    dones (T,) (the episode ended after step t), last_values (K,) (V_k of the state after the last step).
    Returns (advantages (T, K), returns (T, K)), float32.

    Episode boundaries: the rollout is cut after every done into segments, and each (segment, critic) pair becomes
    one masked row of `modules.objectives.ppo.gae_advantages`, whose value after a row's last step is 0. So a done
    step does not bootstrap (``delta = r - V``) and nothing flows back across it. The last segment, when it does
    not end with a done, bootstraps from `last_values` by adding ``gamma * last_values`` to its last reward (the
    same delta as ``r + gamma V_next - V``). A done at a time limit is treated as terminal; to bootstrap a
    truncation, add ``gamma * V(s_next)`` to that step's reward before the call.
    """
    t_len, k = rewards.shape
    done = dones.reshape(t_len).bool()
    ends = (done.nonzero().flatten() + 1).tolist()
    if not ends or ends[-1] != t_len:
        ends.append(t_len)
    starts = [0] + ends[:-1]
    width = max(e - s for s, e in zip(starts, ends))
    seg_r = torch.zeros(len(ends), k, width, dtype=torch.float32, device=rewards.device)  # (S, K, L)
    seg_v = torch.zeros_like(seg_r)  # (S, K, L)
    seg_m = torch.zeros(len(ends), k, width, dtype=torch.bool, device=rewards.device)  # (S, K, L)
    for i, (s, e) in enumerate(zip(starts, ends)):
        seg_r[i, :, :e - s] = rewards[s:e].T.float()  # (K, e - s)
        seg_v[i, :, :e - s] = values[s:e].T.float()
        seg_m[i, :, :e - s] = True
    if not bool(done[-1]):
        seg_r[-1, :, ends[-1] - starts[-1] - 1] += gamma * last_values.to(seg_r).reshape(k)
    adv, ret = gae_advantages(seg_r.view(-1, width), seg_v.view(-1, width), seg_m.view(-1, width),
                              gamma=gamma, lam=lam)  # (S * K, L) each
    adv, ret = adv.view(len(ends), k, width), ret.view(len(ends), k, width)  # (S, K, L)
    advantages = torch.empty(t_len, k, dtype=torch.float32, device=rewards.device)
    returns = torch.empty_like(advantages)
    for i, (s, e) in enumerate(zip(starts, ends)):
        advantages[s:e] = adv[i, :, :e - s].T  # (e - s, K)
        returns[s:e] = ret[i, :, :e - s].T
    return advantages, returns


__all__ = ["BetaActorMultiCritic", "beta_entropy", "beta_log_prob", "multi_critic_advantage", "per_critic_gae",
           "to_action", "to_unit"]
