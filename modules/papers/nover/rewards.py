"""NOVER (Liu et al., arXiv 2505.16022): verifier-free rewards from the reasoning perplexity of the reference answer.

Spec section 1(b):

- reasoning perplexity P_r(p, t, g) = exp(-sum_i log pi(g_i | p, t, g_<i) / (|g| * N(|t|))), N(|t|) = max(1, 1 +
  log|t|) with |t| the reasoning's token count (`length_normaliser`, `reasoning_perplexity`). The target g is scored
  as the text ``"\\n<answer>\\n{g}\\n</answer>"`` after the prompt and ``"\\n<think>\\n{t}\\n</think>\\n"``
  (`scoring_ids`, `target_token_logps`); the model is the proxy (a slowly mixed copy of the policy).
- format R_f: 1 when the completion without whitespace is exactly ``<think>t</think><answer>a</answer>``
  (`parse_think_answer`, reward ``nover_format``);
- reasoning R_r: within a group, the n_v valid rollouts sorted by P_r ascending get (n_v - k) / n_v at rank k,
  invalid ones 0 (`rank_rewards`, reward ``nover_reasoning``);
- efficiency R_e(i) = 1/(n_v - 1) * #{valid j != i : |t_i| < |t_j| and P_r(i) < P_r(j)}, 0 if n_v < 2 or invalid
  (`efficiency_rewards`, reward ``nover_efficiency``);
- total R = w_f R_f + 1[R_f = 1] (w_r R_r + w_e R_e) (`gated_total`).

The registered rewards read the per-row keywords ``reasoning_ppl`` (None where invalid), ``think_lengths`` and
``group_ids`` that `recipes.nover.NOVER.score` passes; they cannot be used without the recipe.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from modules.policy import selective_log_softmax
from modules.rewards.registry import completion_text, register_reward

THINK_TEMPLATE = "\n<think>\n{think}\n</think>\n"
ANSWER_TEMPLATE = "\n<answer>\n{answer}\n</answer>"
_STRICT = re.compile(r"<think>(.*?)</think><answer>(.*?)</answer>", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


# ---- format -----------------------------------------------------------------------------------------

def parse_think_answer(completion: str) -> tuple[bool, str | None, str | None]:
    """(valid, think, answer) of a completion under NOVER's strict tag format (spec 1(b), R_f).

    Valid when the text with every whitespace character removed is exactly ``<think>..</think><answer>..</answer>``
    with each tag once; `think` / `answer` are then the stripped contents (whitespace kept), else None.

    >>> parse_think_answer("<think>\\n2 and 2\\n</think>\\n<answer> 4 </answer>\\n")
    (True, '2 and 2', '4')
    >>> parse_think_answer("<think>x</think>so <answer>4</answer>")[0]
    False
    """
    text = completion_text(completion)
    squeezed = "".join(text.split())
    if any(squeezed.count(tag) != 1 for tag in _TAGS) or not _STRICT.fullmatch(squeezed):
        return False, None, None
    return True, _THINK.search(text).group(1).strip(), _ANSWER.search(text).group(1).strip()


# ---- perplexity -------------------------------------------------------------------------------------

def length_normaliser(think_len: int, base: float = 10.0) -> float:
    """N(|t|) = max(1, 1 + log_base |t|) (spec 1(b); the authors' code uses base 10, the paper writes log).

    |t| = 0 gives 1.

    >>> length_normaliser(100), length_normaliser(5), length_normaliser(0)
    (3.0, 1.6989700043360187, 1.0)
    """
    if not base > 1:
        raise ValueError(f"length_normaliser: base={base}; use a log base > 1 (10 as the authors' code, or e)")
    if think_len <= 0:
        return 1.0
    return max(1.0, 1.0 + math.log(think_len) / math.log(base))


def reasoning_perplexity(target_logps: Tensor, target_mask: Tensor, think_lens: Sequence[int],
                         base: float = 10.0) -> Tensor:
    """P_r = exp(mean NLL of the target tokens / N(|t|)) per row (spec 1(b)): (N, T), (N, T), N -> (N,).

    >>> lp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 1.0]]))
    >>> reasoning_perplexity(lp, torch.tensor([[1, 1], [1, 0]]), [1, 100]).tolist()  # 2^1.5; 2^(1/3)
    [2.8284270763397217, 1.2599210739135742]
    """
    mask = target_mask.to(target_logps.dtype)
    counts = mask.sum(-1)  # (N,)
    if bool((counts == 0).any()):
        raise ValueError("reasoning_perplexity: a row has no target tokens; the reference answer must be non-empty")
    nll = -(target_logps * mask).sum(-1) / counts  # (N,)
    norm = torch.tensor([length_normaliser(int(k), base) for k in think_lens], dtype=nll.dtype, device=nll.device)
    return torch.exp(nll / norm)


def scoring_ids(tokenizer, prompt_ids: Sequence[Sequence[int]], thinks: Sequence[str], answers: Sequence[str]
                ) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """(context ids, target ids, |t|) per row: the prompt's own tokens + the tokenised think block, the tokenised
    answer block ``"\\n<answer>\\n{g}\\n</answer>"`` (spec 1(b)), and the token count of the reasoning t."""
    blocks = tokenizer([THINK_TEMPLATE.format(think=t) for t in thinks], add_special_tokens=False)["input_ids"]
    targets = tokenizer([ANSWER_TEMPLATE.format(answer=g) for g in answers], add_special_tokens=False)["input_ids"]
    think_lens = [len(ids) for ids in tokenizer(list(thinks), add_special_tokens=False)["input_ids"]]
    contexts = [list(p) + list(b) for p, b in zip(prompt_ids, blocks)]
    return contexts, [list(t) for t in targets], think_lens


@torch.no_grad()
def target_token_logps(model: nn.Module, context_ids: Sequence[Sequence[int]], target_ids: Sequence[Sequence[int]],
                       *, pad_token_id: int, micro_batch_size: int | None = None,
                       device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Log-probs of each target token given its context, batched: returns (logps, mask), both (N, T_max).

    Rows are left-padded (positions count real tokens only), so every target ends at the last position and only
    the last T_max + 1 logits are computed. Row i's T_i values are right-aligned; `mask` marks them.
    No temperature: the proxy scores the reference answer with its plain distribution.
    """
    n = len(context_ids)
    if n != len(target_ids):
        raise ValueError(f"target_token_logps: {n} contexts for {len(target_ids)} targets")
    device = device or next(model.parameters()).device
    lengths = [len(t) for t in target_ids]
    if n == 0:
        return torch.zeros(0, 0, device=device), torch.zeros(0, 0, dtype=torch.long, device=device)
    if min(lengths) == 0 or min(len(c) for c in context_ids) == 0:
        raise ValueError("target_token_logps: an empty target or context")
    t_max = max(lengths)
    out = torch.zeros(n, t_max, device=device)
    mask = torch.zeros(n, t_max, dtype=torch.long, device=device)
    step = micro_batch_size or n
    for s in range(0, n, step):
        seqs = [list(c) + list(t) for c, t in zip(context_ids[s:s + step], target_ids[s:s + step])]
        width = max(len(q) for q in seqs)
        ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
        attn = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, q in enumerate(seqs):
            ids[i, width - len(q):] = torch.tensor(q, dtype=torch.long)
            attn[i, width - len(q):] = 1
        ids, attn = ids.to(device), attn.to(device)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)  # (n, W)
        keep = max(lengths[s:s + step])  # < width: every context is non-empty
        logits = model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=keep + 1,
                       use_cache=False).logits[:, :-1, :].float()  # (n, keep, V): predicts the last `keep` tokens
        logps = selective_log_softmax(logits, ids[:, -keep:])  # (n, keep)
        out[s:s + len(seqs), t_max - keep:] = logps
        for i, k in enumerate(lengths[s:s + step]):
            mask[s + i, t_max - k:] = 1
    return out * mask, mask


# ---- group rewards ----------------------------------------------------------------------------------

def _groups(group_ids: Sequence[int], valid: Sequence[bool]) -> dict[int, list[int]]:
    members: dict[int, list[int]] = defaultdict(list)
    for i, (g, ok) in enumerate(zip(group_ids, valid)):
        if ok:
            members[int(g)].append(i)
    return members


def _check(name: str, n: int, **lists: Sequence) -> None:
    for key, values in lists.items():
        if len(values) != n:
            raise ValueError(f"{name}: {key} has {len(values)} values for {n} rows")


def rank_rewards(ppl: Sequence[float | None], valid: Sequence[bool], group_ids: Sequence[int]) -> list[float]:
    """R_r (spec 1(b)): in each group, valid rows sorted by P_r ascending get (n_v - k)/n_v; invalid rows 0.

    Ties keep row order (a stable sort).

    >>> rank_rewards([3.0, 1.0, None, 2.0, 5.0, 4.0], [True, True, False, True, True, True], [0, 0, 0, 0, 1, 1])
    [0.3333333333333333, 1.0, 0.0, 0.6666666666666666, 0.5, 1.0]
    """
    _check("rank_rewards", len(ppl), valid=valid, group_ids=group_ids)
    out = [0.0] * len(ppl)
    for rows in _groups(group_ids, valid).values():
        order = sorted(rows, key=lambda i: float(ppl[i]))
        n_v = len(order)
        for k, i in enumerate(order):
            out[i] = (n_v - k) / n_v
    return out


def efficiency_rewards(ppl: Sequence[float | None], think_lens: Sequence[int], valid: Sequence[bool],
                       group_ids: Sequence[int]) -> list[float]:
    """R_e (spec 1(b)): share of a row's valid siblings that it beats on both |t| and P_r (strictly); 0 when the
    row is invalid or its group has fewer than 2 valid rows.

    >>> efficiency_rewards([1.0, 2.0, 3.0, 0.5], [10, 20, 30, 40], [True] * 4, [0] * 4)
    [0.6666666666666666, 0.3333333333333333, 0.0, 0.0]
    """
    _check("efficiency_rewards", len(ppl), think_lens=think_lens, valid=valid, group_ids=group_ids)
    out = [0.0] * len(ppl)
    for rows in _groups(group_ids, valid).values():
        if len(rows) < 2:
            continue
        for i in rows:
            wins = sum(1 for j in rows if j != i and think_lens[i] < think_lens[j] and float(ppl[i]) < float(ppl[j]))
            out[i] = wins / (len(rows) - 1)
    return out


def gated_total(format_r: Sequence[float], reasoning_r: Sequence[float], efficiency_r: Sequence[float],
                weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> list[float]:
    """R = w_f R_f + 1[R_f = 1] (w_r R_r + w_e R_e) (spec 1(b)).

    >>> gated_total([1.0, 0.0], [0.5, 1.0], [1.0, 1.0])
    [2.5, 0.0]
    """
    w_f, w_r, w_e = weights
    return [w_f * f + (w_r * r + w_e * e if f == 1.0 else 0.0) for f, r, e in zip(format_r, reasoning_r, efficiency_r)]


# ---- reward functions (the recipe supplies reasoning_ppl / think_lengths) -----------------------------

def _needs(name: str, **values) -> None:
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise ValueError(f"reward {name!r} needs the keywords {missing}, which recipes.nover.NOVER adds "
                         "(reward_kwargs); use it with model.class_path: recipes.nover.NOVER")


@register_reward("nover_format")
def nover_format_reward(prompts: list, completions: list, **kwargs) -> list[float]:
    """R_f: 1.0 for the strict ``<think>..</think><answer>..</answer>`` layout (whitespace ignored), else 0.0.

    >>> nover_format_reward(None, ["<think>a</think>\\n<answer>b</answer>", "<answer>b</answer>"])
    [1.0, 0.0]
    """
    return [1.0 if parse_think_answer(c)[0] else 0.0 for c in completions]


@register_reward("nover_reasoning")
def nover_reasoning_reward(prompts: list, completions: list, *, reasoning_ppl: list | None = None,
                           group_ids: list | None = None, **kwargs) -> list[float]:
    """R_r from the per-row reasoning perplexities (None = invalid row), ranked within groups (`rank_rewards`)."""
    _needs("nover_reasoning", reasoning_ppl=reasoning_ppl, group_ids=group_ids)
    return rank_rewards(reasoning_ppl, [p is not None for p in reasoning_ppl], group_ids)


@register_reward("nover_efficiency")
def nover_efficiency_reward(prompts: list, completions: list, *, reasoning_ppl: list | None = None,
                            think_lengths: list | None = None, group_ids: list | None = None, **kwargs) -> list[float]:
    """R_e from the per-row reasoning perplexities and reasoning lengths (`efficiency_rewards`)."""
    _needs("nover_efficiency", reasoning_ppl=reasoning_ppl, think_lengths=think_lengths, group_ids=group_ids)
    return efficiency_rewards(reasoning_ppl, think_lengths, [p is not None for p in reasoning_ppl], group_ids)


__all__ = ["ANSWER_TEMPLATE", "THINK_TEMPLATE", "efficiency_rewards", "gated_total", "length_normaliser",
           "nover_efficiency_reward", "nover_format_reward", "nover_reasoning_reward", "parse_think_answer",
           "rank_rewards", "reasoning_perplexity", "scoring_ids", "target_token_logps"]
