"""HGPO, Hybrid Group Policy Optimization (LHRM, "Think Only When You Need", Jiang et al., arXiv 2505.14631;
spec section 14), as pure functions.

Each query gets N/2 responses forced into think mode and N/2 forced into no-think mode (`modes`: 1 = think,
0 = no-think). From their scalar rewards:

- `hgpo_rewards`: the inter-group reward (which mode wins for this query, with margin delta for no-think) and the
  intra-group reward (the best response within its own mode) (spec 14b, paper Eqs. 5-9);
- `hgpo_advantages`: per-token advantages `A_t = GRPO(r_intra)_i + 1[o_t in Phi] * alpha * GRPO(r_inter)_i`
  (spec 14c, paper Eq. 10): the inter-group term lands only on the mode token;
- `reference_mode` / `hybrid_accuracy`: the Hybrid Accuracy (HAcc) metric (spec 14c).

Tie rules (the paper writes argmax without saying how ties break):
- inter-group: when `mean_think == mean_no_think + delta` (within 1e-6), no-think wins (the cheaper mode; delta
  exists to favour it);
- intra-group: `ties="all"` (default) gives r_intra = 1 to every response that reaches its mode's best reward (so
  with 0/1 rewards, r_intra = "correct, or as good as the best of this mode"); `ties="first"` gives it to the
  first such response only (a literal single argmax).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

THINK, NO_THINK = "think", "no_think"
TIE_RULES = ("all", "first")
NORMS = ("group", "mode")
ESTIMATORS = ("grpo", "rloo")
_TOL = 1e-6


def _rows_of(group_ids: Tensor) -> list[Tensor]:
    """Row indices of each group (in order of first appearance)."""
    return [(group_ids == g).nonzero().flatten() for g in torch.unique(group_ids, sorted=False)]


def hgpo_rewards(rewards: Tensor, modes: Tensor, group_ids: Tensor, delta: float = 0.2, *, ties: str = "all"
                 ) -> tuple[Tensor, Tensor]:
    """(r_inter, r_intra), both (N,) floats in {0, 1}, per spec 14b (paper Eqs. 5-9).

    `rewards` (N,): each response's reward; `modes` (N,): 1 = think, 0 = no-think; `group_ids` (N,): rows with the
    same id are one query's responses (each query needs both modes). With R_think / R_no_think the mean rewards of
    the query's two subgroups, `r_inter = 1` for every response of mode `argmax{R_think, R_no_think + delta}`
    (no-think wins ties), else 0; `r_intra = 1` for the response(s) with the highest reward within its own mode
    (see `ties`), else 0.

    >>> r_inter, r_intra = hgpo_rewards(torch.tensor([1.0, 0.0, 0.5, 0.0]), torch.tensor([1, 1, 0, 0]),
    ...                                 torch.tensor([0, 0, 0, 0]), delta=0.2)
    >>> r_inter.tolist(), r_intra.tolist()
    ([1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0])
    """
    if ties not in TIE_RULES:
        raise ValueError(f"hgpo_rewards: ties={ties!r}; use one of {TIE_RULES}")
    if not rewards.shape == modes.shape == group_ids.shape or rewards.dim() != 1:
        raise ValueError(f"hgpo_rewards: rewards {tuple(rewards.shape)}, modes {tuple(modes.shape)} and group_ids "
                         f"{tuple(group_ids.shape)} must all be (N,)")
    rewards = rewards.double()
    think = modes.bool()
    r_inter = torch.zeros_like(rewards)
    r_intra = torch.zeros_like(rewards)
    for rows in _rows_of(group_ids):
        in_think, in_plain = rows[think[rows]], rows[~think[rows]]
        if in_think.numel() == 0 or in_plain.numel() == 0:
            raise ValueError(f"hgpo_rewards: group {int(group_ids[rows[0]])} has {in_think.numel()} think and "
                             f"{in_plain.numel()} no-think responses; every query needs both modes")
        mean_think, mean_plain = rewards[in_think].mean(), rewards[in_plain].mean()  # Eq. 5
        winner = in_think if mean_think > mean_plain + delta + _TOL else in_plain  # Eqs. 6-7
        r_inter[winner] = 1.0
        for sub in (in_think, in_plain):  # Eqs. 8-9
            best = rewards[sub].max()
            hits = sub[rewards[sub] >= best - _TOL]
            r_intra[hits if ties == "all" else hits[:1]] = 1.0
    return r_inter.to(torch.float32), r_intra.to(torch.float32)


def _normalise(values: Tensor, scopes: list[Tensor], *, estimator: str, scale: bool, eps: float) -> Tensor:
    """GRPO `(x - mean) / (std + eps)` (std unbiased; 0 for a constant scope) or RLOO `x - mean of the others`,
    within each scope (a tensor of row indices)."""
    out = torch.zeros_like(values)
    for rows in scopes:
        x = values[rows]
        if x.numel() < 2 or bool((x == x[0]).all()):
            continue  # one value, or no variance: advantage 0 (as modules.objectives.group_advantages)
        if estimator == "rloo":
            out[rows] = x.numel() / (x.numel() - 1) * (x - x.mean())
        else:
            centred = x - x.mean()
            out[rows] = centred / (x.std() + eps) if scale else centred
    return out


def hgpo_advantages(r_inter: Tensor, r_intra: Tensor, group_ids: Tensor, mode_token_mask: Tensor,
                    completion_mask: Tensor, *, alpha: float = 1.0, norm: str = "group", modes: Tensor | None = None,
                    estimator: str = "grpo", scale: bool = True, eps: float = 1e-4) -> Tensor:
    """Per-token advantages (N, T) per spec 14c (paper Eq. 10):
    `A_t = GRPO(r_intra)_i + 1[o_t in Phi] * alpha * GRPO(r_inter)_i`, zero outside `completion_mask`.

    `mode_token_mask` (N, T): 1 at the mode token(s) Phi of each row; it must lie inside `completion_mask` (the
    mode token is trained). `norm` = where GRPO's mean/std are taken ([unverified]: the spec flags it):
    "group" = over all N outputs of the query (default); "mode" = r_intra within its own mode's N/2 outputs
    (needs `modes`), r_inter still over all N (it is constant within a mode). `estimator`: "grpo" (std-scaled
    unless `scale=False`) or "rloo" (leave-one-out baseline; the paper reports RLOO plugs into Eq. 10 alike).

    >>> a = hgpo_advantages(torch.tensor([1., 1., 0., 0.]), torch.tensor([1., 0., 1., 0.]), torch.zeros(4).long(),
    ...                     torch.tensor([[1, 0]] * 4), torch.ones(4, 2).long(), scale=False)
    >>> a.tolist()
    [[1.0, 0.5], [0.0, -0.5], [0.0, 0.5], [-1.0, -0.5]]
    """
    if norm not in NORMS:
        raise ValueError(f"hgpo_advantages: norm={norm!r}; use one of {NORMS}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"hgpo_advantages: estimator={estimator!r}; use one of {ESTIMATORS}")
    n = r_inter.shape[0]
    if r_intra.shape != (n,) or group_ids.shape != (n,):
        raise ValueError(f"hgpo_advantages: r_inter, r_intra, group_ids must be (N,) = ({n},)")
    if mode_token_mask.shape != completion_mask.shape or mode_token_mask.shape[0] != n:
        raise ValueError(f"hgpo_advantages: mode_token_mask {tuple(mode_token_mask.shape)} and completion_mask "
                         f"{tuple(completion_mask.shape)} must both be (N={n}, T)")
    on_mode, trained = mode_token_mask.bool(), completion_mask.bool()
    if bool((on_mode & ~trained).any()):
        raise ValueError("hgpo_advantages: the mode token must be trained (completion_mask = 1 wherever "
                         "mode_token_mask = 1)")
    if bool((on_mode.sum(-1) == 0).any()):
        raise ValueError("hgpo_advantages: a row has no mode token; every forced response starts with its mode tag")
    groups = _rows_of(group_ids)
    if norm == "mode":
        if modes is None:
            raise ValueError("hgpo_advantages: norm='mode' needs `modes`")
        think = modes.bool()
        intra_scopes = [sub for rows in groups for sub in (rows[think[rows]], rows[~think[rows]])]
    else:
        intra_scopes = groups
    kw = dict(estimator=estimator, scale=scale, eps=eps)
    a_intra = _normalise(r_intra.float(), intra_scopes, **kw)  # (N,)
    a_inter = _normalise(r_inter.float(), groups, **kw)  # (N,)
    per_token = a_intra[:, None] + alpha * a_inter[:, None] * on_mode.float()  # (N, T)
    return per_token * trained.float()


def mode_token_mask(completion_mask: Tensor, starts: Sequence[int], lengths: Sequence[int]) -> Tensor:
    """(N, T) long mask with ones at positions `[starts[i], starts[i] + lengths[i])` of each row i.

    >>> mode_token_mask(torch.ones(2, 4), [0, 1], [1, 2]).tolist()
    [[1, 0, 0, 0], [0, 1, 1, 0]]
    """
    pos = torch.arange(completion_mask.shape[1], device=completion_mask.device)[None, :]  # (1, T)
    start = torch.as_tensor(list(starts), device=completion_mask.device)[:, None]  # (N, 1)
    end = start + torch.as_tensor(list(lengths), device=completion_mask.device)[:, None]  # (N, 1)
    return ((pos >= start) & (pos < end)).long()


# ------------------------------------------------------------------------------------ Hybrid Accuracy
def reference_mode(think_scores: Sequence[float], no_think_scores: Sequence[float], think_lengths: Sequence[float],
                   no_think_lengths: Sequence[float], *, margin: float = 0.0) -> str:
    """The query's reference mode for HAcc (spec 14c): the mode with the higher mean score; when the two means are
    within `margin`, the mode with the shorter mean response length (no-think when the lengths tie too).

    >>> reference_mode([1, 1], [1, 0], [40, 50], [5, 5]), reference_mode([1, 1], [1, 1], [40, 50], [5, 5])
    ('think', 'no_think')
    """
    if not think_scores or not no_think_scores:
        raise ValueError("reference_mode: needs at least one scored response in each mode")
    mt, mn = sum(think_scores) / len(think_scores), sum(no_think_scores) / len(no_think_scores)
    if abs(mt - mn) > margin + _TOL:
        return THINK if mt > mn else NO_THINK
    lt, ln = sum(think_lengths) / len(think_lengths), sum(no_think_lengths) / len(no_think_lengths)
    return THINK if lt < ln else NO_THINK


def hybrid_accuracy(chosen: Sequence[str | None], think_scores: Sequence[Sequence[float]],
                    no_think_scores: Sequence[Sequence[float]], think_lengths: Sequence[Sequence[float]],
                    no_think_lengths: Sequence[Sequence[float]], *, margin: float = 0.0) -> tuple[float, list[str]]:
    """(HAcc, reference modes): the share of queries whose freely chosen mode (`chosen[q]`: "think", "no_think",
    or None when the model wrote neither tag, which never matches) equals `reference_mode` of the query's scores
    and lengths sampled in each forced mode (spec 14c).

    >>> hybrid_accuracy(["think", "no_think", None], [[1, 1], [1, 1], [0, 0]], [[0, 0], [1, 1], [1, 1]],
    ...                 [[30, 30], [30, 30], [30, 30]], [[4, 4], [4, 4], [4, 4]])
    (0.6666666666666666, ['think', 'no_think', 'no_think'])
    """
    q = len(chosen)
    if not q or not len(think_scores) == len(no_think_scores) == len(think_lengths) == len(no_think_lengths) == q:
        raise ValueError("hybrid_accuracy: give one choice and one list of scores/lengths per mode for every query")
    refs = [reference_mode(ts, ns, tl, nl, margin=margin)
            for ts, ns, tl, nl in zip(think_scores, no_think_scores, think_lengths, no_think_lengths)]
    return sum(c == r for c, r in zip(chosen, refs)) / q, refs


__all__ = ["ESTIMATORS", "NORMS", "NO_THINK", "THINK", "TIE_RULES", "hgpo_advantages", "hgpo_rewards",
           "hybrid_accuracy", "mode_token_mask", "reference_mode"]
