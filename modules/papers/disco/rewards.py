"""DISCO (Zhou et al., arXiv 2505.15074): domain- and difficulty-weighted rewards for imbalanced multi-domain GRPO.

Spec section 12 (built from the released code; the paper text was not available):

- base reward r_i in {0, 1} per domain (`domain_correct`): math = extracted answer equals the gold; choice (ARC)
  = last standalone letter A-H equals the gold; qa (NQ) = a normalised gold alias is a substring of the
  normalised response; sentiment (IMDB) = last Positive/Negative equals the gold;
- domain weight w_dom(d) = ln(1 + 1/p_d) (`domain_weights`, inferred from the released constants 0.847 / 2.565);
- difficulty weight w_diff = 1 / (sc + 1e-5), sc = the group's self-consistency (`difficulty_weights`);
- r~_i = r_i * w_dom * w_diff (`disco_rewards`), then mean-centred advantages without std division.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from modules.rewards.accuracy import accuracy_reward, extract_answer, extract_last_number, normalize_text
from modules.rewards.registry import completion_text, register_reward

DOMAIN_WEIGHT_FORMS = ("log", "log_squared", "inverse")
DIFFICULTY_FORMS = ("inverse", "log_squared")
SELF_CONSISTENCY = ("accuracy", "agreement")
DOMAINS = ("math", "choice", "qa", "sentiment")
# The paper's dataset names (MetaMath, ARC, NQ, IMDB) map to the four scorers.
DOMAIN_ALIASES = {"metamath": "math", "arc": "choice", "nq": "qa", "imdb": "sentiment"}

_LETTER = re.compile(r"\b([A-H])\b")
_SENTIMENT = re.compile(r"\b(positive|negative)\b", re.IGNORECASE)
_PUNCT = re.compile(r"[^\w\s]")


# ---- weights ----------------------------------------------------------------------------------------

def domain_weights(domains: Mapping[str, float] | Sequence[str], form: str = "log") -> dict[str, float]:
    """Per-domain weights from the domain mix: counts/fractions `{domain: n}` or a list of per-row labels.

    p_d = n_d / sum(n). ``form``: ``log`` = ln(1 + 1/p_d) (the default; spec 12(b), inferred from the released
    constants 0.847 / 2.565); ``log_squared`` = ln(1 + 1/p_d)^2 and ``inverse`` = 1/p_d are the alternatives
    commented out in the released code (0.72 / 6.58 and 1.33 / 12 for a 75/8.3 mix).

    >>> {d: round(w, 3) for d, w in domain_weights({"math": 9, "arc": 1, "nq": 1, "imdb": 1}).items()}
    {'math': 0.847, 'arc': 2.565, 'nq': 2.565, 'imdb': 2.565}
    >>> domain_weights(["a", "a", "b", "a"], form="inverse")
    {'a': 1.3333333333333333, 'b': 4.0}
    """
    if form not in DOMAIN_WEIGHT_FORMS:
        raise ValueError(f"domain_weights: form={form!r} is not one of {DOMAIN_WEIGHT_FORMS}")
    if isinstance(domains, Mapping):
        counts = {str(d): float(n) for d, n in domains.items()}
    else:
        counts = {str(d): float(n) for d, n in Counter(domains).items()}
    bad = {d: n for d, n in counts.items() if not (math.isfinite(n) and n > 0)}
    if not counts or bad:
        raise ValueError(f"domain_weights: every domain needs a positive count or fraction, got {counts or domains!r}")
    total = sum(counts.values())
    out = {}
    for d, n in counts.items():
        p = n / total
        out[d] = {"log": math.log1p(1.0 / p), "log_squared": math.log1p(1.0 / p) ** 2, "inverse": 1.0 / p}[form]
    return out


def _group_index(group_ids: Sequence[int] | Tensor) -> Tensor:
    """(N,) index of each row's group in 0..num_groups-1."""
    ids = torch.as_tensor(group_ids).flatten()
    return torch.unique(ids, return_inverse=True)[1]


def self_consistency(base_rewards: Sequence[float] | Tensor, group_ids: Sequence[int] | Tensor, *,
                     mode: str = "accuracy", predictions: Sequence[str | None] | None = None) -> Tensor:
    """(N,) float64: each row's group self-consistency sc.

    ``accuracy`` (the released code): the mean of the group's base rewards (fraction of correct samples).
    ``agreement`` ([unverified] reading of "self-consistency"): the fraction of the group whose `predictions`
    equal the group's most common non-None prediction (0 when all are None).

    >>> self_consistency([1, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1]).tolist()
    [0.25, 0.25, 0.25, 0.25, 1.0, 1.0]
    >>> self_consistency([0, 0, 0], [7, 7, 7], mode="agreement", predictions=["4", "4", None]).tolist()
    [0.6666666666666666, 0.6666666666666666, 0.6666666666666666]
    """
    if mode not in SELF_CONSISTENCY:
        raise ValueError(f"self_consistency: mode={mode!r} is not one of {SELF_CONSISTENCY}")
    base = torch.as_tensor(base_rewards, dtype=torch.float64).flatten()  # (N,)
    index = _group_index(group_ids)  # (N,)
    if index.numel() != base.numel():
        raise ValueError(f"self_consistency: {base.numel()} rewards but {index.numel()} group ids")
    num_groups = int(index.max()) + 1 if index.numel() else 0
    sizes = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, index, torch.ones_like(base))  # (B,)
    if mode == "accuracy":
        sums = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, index, base)  # (B,)
        return (sums / sizes)[index]  # (N,)
    if predictions is None or len(predictions) != base.numel():
        raise ValueError("self_consistency: mode='agreement' needs one prediction (or None) per row")
    members: dict[int, list[str | None]] = {}
    for g, pred in zip(index.tolist(), predictions):
        members.setdefault(g, []).append(pred)
    agree = torch.zeros(num_groups, dtype=torch.float64)  # (B,)
    for g, preds in members.items():
        votes = Counter(p for p in preds if p is not None)
        agree[g] = votes.most_common(1)[0][1] if votes else 0.0
    return (agree / sizes)[index]  # (N,)


def difficulty_weights(base_rewards: Sequence[float] | Tensor, group_ids: Sequence[int] | Tensor,
                       form: str = "inverse", eps: float = 1e-5, *, sc: Tensor | None = None) -> Tensor:
    """(N,) float64 difficulty weight of each row from its group's self-consistency sc (spec 12(b)).

    ``inverse`` (default): 1 / (sc + eps); ``log_squared`` (commented variant of the released code):
    ln(1 + 1/(sc + eps))^2. `sc` defaults to the group accuracy (`self_consistency(..., mode="accuracy")`).

    >>> [round(w, 4) for w in difficulty_weights([1, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]).tolist()]
    [3.9998, 3.9998, 3.9998, 3.9998, 1.0, 1.0, 1.0, 1.0]
    """
    if form not in DIFFICULTY_FORMS:
        raise ValueError(f"difficulty_weights: form={form!r} is not one of {DIFFICULTY_FORMS}")
    if not eps > 0:
        raise ValueError(f"difficulty_weights: eps={eps} must be > 0 (sc can be 0)")
    sc = self_consistency(base_rewards, group_ids) if sc is None else torch.as_tensor(sc, dtype=torch.float64)
    inv = 1.0 / (sc + eps)  # (N,)
    return inv if form == "inverse" else torch.log1p(inv) ** 2


def disco_rewards(base: Sequence[float] | Tensor, domains: Sequence[str], group_ids: Sequence[int] | Tensor,
                  w_dom: Mapping[str, float], *, difficulty: str | None = "inverse", eps: float = 1e-5,
                  sc: Tensor | None = None) -> Tensor:
    """(N,) float64 DISCO rewards r~_i = r_i * w_dom(d_i) * w_diff_i (spec 12(b)).

    `w_dom`: `domain_weights` output (every domain of `domains` must be in it); `difficulty`: a
    `difficulty_weights` form, or None for w_diff = 1; `sc`: per-row self-consistency (default: group accuracy
    of `base`). Mean-centring these per group (`group_advantages(..., scale="none")`) gives correct samples
    w_dom (1 - sc) / sc and wrong ones -w_dom: both weights are constant within a group, so a std division
    would cancel them.

    >>> w = {"math": 0.847, "qa": 2.565}
    >>> [round(r, 3) for r in disco_rewards([1, 0, 1, 1], ["math", "math", "qa", "qa"], [0, 0, 1, 1], w).tolist()]
    [1.694, 0.0, 2.565, 2.565]
    """
    base_t = torch.as_tensor(base, dtype=torch.float64).flatten()  # (N,)
    if len(domains) != base_t.numel():
        raise ValueError(f"disco_rewards: {base_t.numel()} rewards but {len(domains)} domains")
    missing = sorted({str(d) for d in domains} - set(w_dom))
    if missing:
        raise ValueError(f"disco_rewards: no domain weight for domain(s) {missing}; weights exist for "
                         f"{sorted(w_dom)} (compute them from data that contains every domain)")
    dom = torch.tensor([float(w_dom[str(d)]) for d in domains], dtype=torch.float64)  # (N,)
    if difficulty is None:
        diff = torch.ones_like(base_t)  # (N,)
    else:
        diff = difficulty_weights(base_t, group_ids, difficulty, eps, sc=sc)  # (N,)
    return base_t * dom * diff


# ---- per-domain base rewards ------------------------------------------------------------------------

def canonical_domain(domain: Any) -> str:
    """`domain` as one of DOMAINS (case-insensitive; the paper's dataset names are accepted too)."""
    name = str(domain).strip().lower()
    name = DOMAIN_ALIASES.get(name, name)
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; domain_correct scores {list(DOMAINS)} "
                         f"(or the paper's names {list(DOMAIN_ALIASES)})")
    return name


def _qa_norm(text: str) -> str:
    """normalize_text after turning punctuation into spaces ("Washington, D.C." -> "washington d c")."""
    return normalize_text(_PUNCT.sub(" ", str(text)))


def domain_prediction(completion: str, domain: str, *, extract: str = "auto") -> str | None:
    """The normalised answer a completion gives in `domain` (None when it gives none).

    math: the `extract_answer` text, reduced to its last number when it has no tag/box; choice: the last
    standalone capital letter A-H; sentiment: the last "positive"/"negative"; qa: the normalised answer text.

    >>> domain_prediction("B is wrong, so the answer is D.", "choice")
    'D'
    >>> domain_prediction("Negative? No: Positive", "sentiment")
    'positive'
    """
    domain = canonical_domain(domain)
    text = extract_answer(completion, extract)
    if text is None:
        return None
    if domain == "math":
        if text is completion:  # no <answer> tag or \\boxed{}: the last number of the prose
            return extract_last_number(text)
        return normalize_text(text)
    if domain == "choice":
        letters = _LETTER.findall(text)
        return letters[-1] if letters else None
    if domain == "sentiment":
        labels = _SENTIMENT.findall(text)
        return labels[-1].lower() if labels else None
    return _qa_norm(text) or None


def _correct(completion: str, gold: Any, domain: str, aliases: Any, extract: str, math_mode: str) -> float | None:
    if gold is None:
        return None
    domain = canonical_domain(domain)
    if domain == "math":
        return accuracy_reward(None, [completion], answer=[str(gold)], extract=extract, mode=math_mode)[0]
    if domain == "qa":
        text = extract_answer(completion, extract)
        if text is None:
            return 0.0
        response = f" {_qa_norm(text)} "
        golds = [gold, *(aliases or [])]
        return float(any(f" {_qa_norm(a)} " in response for a in golds if _qa_norm(a)))
    pred = domain_prediction(completion, domain, extract=extract)
    return float(pred is not None and pred.lower() == normalize_text(gold))


@register_reward("domain_correct")
def domain_correct_reward(
    prompts: list,
    completions: list,
    answer: list | None = None,
    domain: list | None = None,
    aliases: list | None = None,
    *,
    extract: str = "auto",
    math_mode: str = "math",
    **kwargs,
) -> list[float | None]:
    r"""DISCO's per-domain 0/1 base reward, dispatching on the `domain` column (spec 12(b)).

    math: the extracted answer equals the gold (`accuracy_reward` with `extract` and `math_mode`: math =
    math-verify, number = last number, exact = normalised string); choice: the last standalone letter A-H
    equals the gold letter; qa: the gold or one of its `aliases` (normalised, word-bounded) is a substring of
    the normalised response; sentiment: the last Positive/Negative equals the gold. `extract` (default auto:
    the `<answer>` tag or `\boxed{}` when present, else the whole response) picks the text each rule reads.
    None where the gold answer is None.

    >>> domain_correct_reward(None, ["12 + 30 = 42", "A or C? I pick C", "It is Paris, France.", "Negative!"],
    ...                       answer=["42", "C", "Paris", "Positive"], domain=["math", "choice", "qa", "sentiment"],
    ...                       math_mode="number")
    [1.0, 1.0, 1.0, 0.0]
    """
    if answer is None or domain is None:
        raise ValueError(f"domain_correct needs the per-row columns 'answer' and 'domain'; got columns "
                         f"{sorted(kwargs)}. Use data.task: multi_domain or add the columns to the rows.")
    aliases = [None] * len(completions) if aliases is None else aliases
    return [_correct(completion_text(c), g, d, a, extract, math_mode)
            for c, g, d, a in zip(completions, answer, domain, aliases)]
