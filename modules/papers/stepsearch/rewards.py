"""StepSearch rewards (Wang et al., arXiv 2505.15107; spec 11 (b), from the released `qa_step.py`).

- `normalize_answer`, `token_f1`: SQuAD-style answer normalisation and token F1, max over the gold answer and its
  aliases.
- `final_answer` / `format_ok`: the format gate: the last ``<answer>…</answer>`` must be the final non-whitespace
  text, else the total score is -1 and there are no step rewards (applied by `recipes.stepsearch`).
- `keyword_reward`: the search-keyword reward R_key with the overwrite rule.
- `information_gain_steps`, `redundancy_steps`, `step_rewards`: per search step, r_t = IG_t - P_t.
- `global_score`: S = F1 + gamma_key * R_key (gamma_key = 0.618).
- `place_token_rewards`: 0.6 * r_t on the token closing each step's ``</search>``, S on the last response token
  (overwriting).

TF-IDF: scikit-learn's `TfidfVectorizer` with its defaults (lowercase, tokens of 2+ word characters, smoothed idf
ln((1 + n) / (1 + df)) + 1, l2-normalised rows), refit on ``[norm(d)] + [norm(g) for g in golds]`` for every
retrieved doc d, as the spec says; cosine = dot product of the l2-normalised rows.

Registered reward functions (TRL contract; weights in the config): ``stepsearch_f1`` (weight 1),
``stepsearch_keyword`` (weight gamma_key), ``stepsearch_format`` (1 = gate passed; weight 0, the recipe applies
the gate) and ``stepsearch_em`` (exact match, weight 0, logged as accuracy).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from modules.rewards.registry import completion_text, register_reward

GAMMA_KEY = 0.618  # weight of the keyword reward in S (the released code's default)
STEP_REWARD_COEF = 0.6  # scale of r_t on the token closing a search step
FORMAT_PENALTY = -1.0  # total score when the format gate fails

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_SEARCH = re.compile(r"<search>(.*?)</search>", re.DOTALL)
_INFORMATION = re.compile(r"<information>.*?(</information>|$)", re.DOTALL)


# ------------------------------------------------------------------------------------------- answers
def normalize_answer(s: str) -> str:
    """Lowercase, strip punctuation, drop the articles a/an/the, collapse whitespace (spec 11 (b) `norm`).

    >>> normalize_answer("The  Capital, of France!")
    'capital of france'
    """
    s = str(s).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def token_f1(pred: str, golds: str | Sequence[str]) -> float:
    """Max token F1 of `pred` over the gold answers (the answer plus its aliases); 0 when nothing overlaps.

    >>> token_f1("Kelport city", ["Kelport", "Port of Kel"])
    0.6666666666666666
    """
    golds = [golds] if isinstance(golds, str) else list(golds)
    return max((_f1(pred, g) for g in golds), default=0.0)


def final_answer(text: str) -> str | None:
    """The format gate: the content of the last ``<answer>…</answer>`` when it is the final non-whitespace text,
    else None.

    >>> final_answer("<search>q</search> ... <answer> Kelport </answer>\\n")
    'Kelport'
    >>> final_answer("<answer>Kelport</answer> more text") is None
    True
    """
    matches = list(_ANSWER.finditer(text))
    if not matches or text[matches[-1].end():].strip():
        return None
    return matches[-1].group(1).strip()


def format_ok(text: str) -> bool:
    """True when `final_answer(text)` exists (the gate passes)."""
    return final_answer(text) is not None


# ------------------------------------------------------------------------------------------ keywords
def search_queries(text: str) -> list[str]:
    """The queries of the ``<search>q</search>`` calls the policy wrote (retrieved ``<information>`` blocks are
    skipped).

    >>> search_queries("<search>a b</search>\\n<information>Doc 1<## Title: T ##> x</information>\\n<search> c </search>")
    ['a b', 'c']
    """
    return [q.strip() for q in _SEARCH.findall(_INFORMATION.sub(" ", text))]


def keyword_reward(queries: Sequence[str], keyword_groups: Sequence[Sequence[str]]) -> float:
    """R_key (spec 11 (b)): for each query in order, the group whose best F1 (over its phrasings) is highest gets
    that F1, overwriting the group's earlier value (no max); R_key = sum of the group values / number of groups.
    Ties go to the first group, so a query matching nothing writes 0 into group 0 (as the rule reads). 0 when
    there are no groups.

    >>> keyword_reward(["alice born", "norvania capital"], [["alice born"], ["norvania capital"]])
    1.0
    >>> keyword_reward(["norvania capital", "capital"], [["alice born"], ["norvania capital"]])  # overwritten
    0.3333333333333333
    """
    groups = [[str(p) for p in g] if not isinstance(g, str) else [g] for g in keyword_groups]
    if not groups:
        return 0.0
    values = [0.0] * len(groups)
    for q in queries:
        best = [token_f1(q, g) for g in groups]
        j = max(range(len(groups)), key=lambda k: best[k])  # first max
        values[j] = best[j]
    return sum(values) / len(groups)


# ----------------------------------------------------------------------------------------- step rewards
def tfidf_cosines(doc: str, golds: Sequence[str]) -> list[float]:
    """cos_TFIDF(norm(doc), norm(g)) for each gold g, the vectoriser refit on ``[doc] + golds`` (spec 11 (b)).
    0 for an empty vocabulary (e.g. a doc of stopword-free single letters).

    >>> [round(c, 3) for c in tfidf_cosines("alice born paris", ["alice born paris", "lyon france"])]
    [1.0, 0.0]
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [normalize_answer(doc)] + [normalize_answer(g) for g in golds]
    try:
        x = TfidfVectorizer().fit_transform(texts)  # (1 + n, V), rows l2-normalised
    except ValueError:  # empty vocabulary
        return [0.0] * len(golds)
    return [float(v) for v in (x[1:] @ x[0].T).toarray().ravel()]


def information_gain_steps(retrieved_docs_per_step: Sequence[Sequence[str]], gold_docs: Sequence[str]) -> list[float]:
    """IG_t = (1/n) sum_i max(c_i^t - m_i^{t-1}, 0), c_i^t = max_{d in D_t} cos(d, g_i), m_i^t = max(m_i^{t-1}, c_i^t),
    m^0 = 0 (spec 11 (b)). A step with no documents (a failed search) has c = 0; no golds gives IG = 0.

    >>> ig = information_gain_steps([["alice born paris"], ["alice born paris", "lyon france"]],
    ...                             ["alice born paris", "lyon france"])
    >>> [round(x, 6) for x in ig]
    [0.5, 0.5]
    """
    n = len(gold_docs)
    running = [0.0] * n
    out = []
    for docs in retrieved_docs_per_step:
        c = [0.0] * n
        for d in docs:
            c = [max(a, b) for a, b in zip(c, tfidf_cosines(d, gold_docs))]
        out.append(sum(max(ci - mi, 0.0) for ci, mi in zip(c, running)) / n if n else 0.0)
        running = [max(mi, ci) for mi, ci in zip(running, c)]
    return out


def redundancy_steps(retrieved_docs_per_step: Sequence[Sequence[str]]) -> list[float]:
    """P_t = #{d in D_t seen before} / |D_t|, "seen" = the exact string appeared earlier, in an earlier step or
    earlier in the same step (spec 11 (b)); 0 for a step with no documents.

    >>> redundancy_steps([["a", "b"], ["b", "c", "c"], []])
    [0.0, 0.6666666666666666, 0.0]
    """
    seen: set[str] = set()
    out = []
    for docs in retrieved_docs_per_step:
        repeated = 0
        for d in docs:
            repeated += d in seen
            seen.add(d)
        out.append(repeated / len(docs) if docs else 0.0)
    return out


def step_rewards(retrieved_docs_per_step: Sequence[Sequence[str]], gold_docs: Sequence[str]) -> list[float]:
    """r_t = IG_t - P_t for each search step.

    >>> [round(r, 6) for r in step_rewards([["alice born paris"], ["alice born paris"]], ["alice born paris"])]
    [1.0, -1.0]
    """
    ig = information_gain_steps(retrieved_docs_per_step, gold_docs)
    return [g - p for g, p in zip(ig, redundancy_steps(retrieved_docs_per_step))]


def global_score(f1: float, r_key: float, *, gamma_key: float = GAMMA_KEY) -> float:
    """S = F1 + gamma_key * R_key (before the format gate).

    >>> round(global_score(0.5, 1.0), 3)
    1.118
    """
    return float(f1) + gamma_key * float(r_key)


def place_token_rewards(shape: tuple[int, int], step_positions: Sequence[Sequence[int]],
                        step_values: Sequence[Sequence[float]], final_rewards: Sequence[float],
                        last_positions: Sequence[int | None], *, coef: float = STEP_REWARD_COEF) -> Tensor:
    """(N, T) token rewards: `coef * r_t` at each step's closing-``</search>`` position, then the global score on
    each row's last response token, overwriting what is there (spec 11 (b)); a row without tokens (None) gets
    nothing.

    >>> place_token_rewards((1, 5), [[1]], [[0.5]], [2.0], [4])
    tensor([[0.0000, 0.3000, 0.0000, 0.0000, 2.0000]])
    """
    out = torch.zeros(shape, dtype=torch.float32)  # (N, T)
    for i, (positions, values) in enumerate(zip(step_positions, step_values)):
        if len(positions) != len(values):
            raise ValueError(f"row {i}: {len(positions)} step positions for {len(values)} step rewards")
        for pos, value in zip(positions, values):
            out[i, pos] += coef * float(value)
    for i, (pos, value) in enumerate(zip(last_positions, final_rewards)):
        if pos is not None:
            out[i, pos] = float(value)
    return out


# -------------------------------------------------------------------------------- reward functions
def _golds(answer: Any, aliases: Any) -> list[str]:
    golds = list(answer) if isinstance(answer, (list, tuple)) else [answer]
    golds += list(aliases or [])
    return [str(g) for g in golds if g is not None]


def _need(name: str, column: str, values: Any) -> None:
    if values is None:
        raise ValueError(f"{name} needs a {column!r} column in the data")


@register_reward("stepsearch_f1")
def stepsearch_f1(prompts: list, completions: list, answer: list | None = None, aliases: list | None = None,
                  **kwargs: Any) -> list[float]:
    """Token F1 of the final ``<answer>`` against `answer` (+ `aliases`); 0 when the format gate fails."""
    _need("stepsearch_f1", "answer", answer)
    aliases = aliases or [None] * len(completions)
    out = []
    for c, a, al in zip(completions, answer, aliases):
        pred = final_answer(completion_text(c))
        out.append(0.0 if pred is None else token_f1(pred, _golds(a, al)))
    return out


@register_reward("stepsearch_em")
def stepsearch_em(prompts: list, completions: list, answer: list | None = None, aliases: list | None = None,
                  **kwargs: Any) -> list[float]:
    """1.0 when the normalised final ``<answer>`` equals a normalised gold answer or alias, else 0.0."""
    _need("stepsearch_em", "answer", answer)
    aliases = aliases or [None] * len(completions)
    out = []
    for c, a, al in zip(completions, answer, aliases):
        pred = final_answer(completion_text(c))
        ok = pred is not None and normalize_answer(pred) in {normalize_answer(g) for g in _golds(a, al)}
        out.append(float(ok))
    return out


@register_reward("stepsearch_keyword")
def stepsearch_keyword(prompts: list, completions: list, search_keys: list | None = None,
                       **kwargs: Any) -> list[float]:
    """R_key of the completion's search queries against the row's `search_keys` (list of keyword groups)."""
    _need("stepsearch_keyword", "search_keys", search_keys)
    return [keyword_reward(search_queries(completion_text(c)), keys or []) for c, keys in zip(completions, search_keys)]


@register_reward("stepsearch_format")
def stepsearch_format(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """1.0 when the format gate passes (the last ``<answer>…</answer>`` ends the text), else 0.0."""
    return [float(format_ok(completion_text(c))) for c in completions]
