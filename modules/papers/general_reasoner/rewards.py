r"""General-Reasoner reward (Ma et al., arXiv 2505.14652, spec 13(b)): extract the answer, ask a generative
verifier, penalise length differences.

- Extraction (`extract_general_answer`): the last non-empty ``\boxed{...}``; else, trying the phrases
  ``Final Answer:``, ``Final Answer is:``, ``The answer is:``, ``Answer:``, ``Solution:``, ``The solution is:`` in
  that order (case-insensitive), the text after the last match of the first phrase found, up to the newline.
- Score: no answer -> -0.5 (the verifier is not asked); judged equivalent ("Final Decision: Yes") ->
  1 - 0.05 * min(10, |ntok(answer) - ntok(gold)|), in [0.5, 1]; judged wrong -> 0.

Documented substitutes / [unverified]: extraction reads the completion only (the released code decodes the last
1024 tokens of prompt + response, where the prompt's own empty ``\boxed{}`` and any "Answer:" in the question
would also match); an empty box or phrase counts as no answer; the phrase order is a priority order
([unverified]: "last match" could also mean the last of any phrase in the text); ntok uses the tokenizer the
caller passes (the General-Reasoner recipe passes the policy's) and whitespace tokens without one.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from modules.rewards.accuracy import extract_boxed
from modules.rewards.registry import completion_text, register_reward
from modules.papers.tinyv.rewards import add_counts

if TYPE_CHECKING:
    from modules.verifiers.base import Verifier

ANSWER_PHRASES = ("Final Answer:", "Final Answer is:", "The answer is:", "Answer:", "Solution:", "The solution is:")
_PHRASE_PATTERNS = [re.compile(re.escape(p) + r"[ \t]*([^\n]*)", re.IGNORECASE) for p in ANSWER_PHRASES]
NO_ANSWER = "No Answer"


def extract_general_answer(text: str) -> str | None:
    r"""The answer of a completion (see the module docstring), or None.

    >>> extract_general_answer(r"so \boxed{3} then \boxed{\frac{1}{2}}")
    '\\frac{1}{2}'
    >>> extract_general_answer("answer: 4\nFINAL ANSWER: 5 cm\nthanks"), extract_general_answer("no idea")
    ('5 cm', None)
    """
    boxed = extract_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    for pattern in _PHRASE_PATTERNS:
        found = [m.strip() for m in pattern.findall(text)]
        found = [m for m in found if m]
        if found:
            return found[-1]
    return None


def count_tokens(text: str, tokenizer: Any = None) -> int:
    """ntok: tokens of `text` under `tokenizer` (no special tokens), or whitespace-separated words without one.

    >>> count_tokens("12 square cm"), count_tokens("")
    (3, 0)
    """
    if tokenizer is None:
        return len(text.split())
    return len(tokenizer.encode(text, add_special_tokens=False))


def length_penalized_score(n_answer: int, n_gold: int, *, coef: float = 0.05, cap: int = 10) -> float:
    """1 - coef * min(cap, |n_answer - n_gold|): the reward of an answer judged equivalent (spec 13(b)).

    >>> length_penalized_score(3, 3), length_penalized_score(5, 2), length_penalized_score(40, 2)
    (1.0, 0.85, 0.5)
    """
    return 1.0 - coef * min(cap, abs(int(n_answer) - int(n_gold)))


@register_reward("general_verifier")
def general_verifier_reward(
    prompts: list,
    completions: list,
    answer: list | None = None,
    *,
    verifier: Verifier | None = None,
    tokenizer: Any = None,
    no_answer_reward: float = -0.5,
    length_coef: float = 0.05,
    length_cap: int = 10,
    question: list | None = None,
    verifier_stats: dict | None = None,
    **kwargs: Any,
) -> list[float | None]:
    r"""General-Reasoner reward per completion (None where the gold `answer` is None).

    Options (reward `kwargs`): `no_answer_reward` (-0.5), `length_coef` (0.05) and `length_cap` (10 tokens).
    From the caller: `verifier` (a `Verifier` whose decisions are read, e.g. an `LLMVerifier` with the
    general_verifier prompt or the `RuleStubVerifier`), `tokenizer` for ntok (whitespace words without one),
    `question` (dataset column; else the prompt text) and `verifier_stats` (counts: rows, no_answer,
    llm_items, llm_positives, length_penalty_sum, verify_calls, verifier_seconds).

    >>> from modules.verifiers import RuleStubVerifier
    >>> general_verifier_reward(["q"] * 4, [r"\boxed{0.5}", "Answer: 0.5 of the pie\nok", "Answer: 2", "hmm"],
    ...                         ["1/2"] * 4, verifier=RuleStubVerifier("general_verifier"))
    [1.0, 0.85, 0.0, -0.5]
    """
    if answer is None:
        raise ValueError(f"general_verifier reward needs the per-row column 'answer' (gold answers); got columns "
                         f"{sorted(kwargs)}")
    if verifier is None:
        raise ValueError("general_verifier reward needs `verifier` (a modules.verifiers.Verifier): use the "
                         "General-Reasoner recipe (recipes.general_reasoner.GeneralReasoner, it passes its "
                         "model.verifier) or pass verifier= yourself")
    if length_cap < 0 or length_coef < 0:
        raise ValueError(f"general_verifier reward: length_coef={length_coef} and length_cap={length_cap} must be >= 0")
    texts = [completion_text(c) for c in completions]
    questions = [str(q) if q is not None else completion_text(p)
                 for q, p in zip(question or [None] * len(texts), prompts)]
    preds = [extract_general_answer(t) for t in texts]
    rewards: list[float | None] = [None if g is None else float(no_answer_reward) for g in answer]
    ask = [i for i, (g, p) in enumerate(zip(answer, preds)) if g is not None and p is not None]
    started = time.perf_counter()
    results = verifier.verify([questions[i] for i in ask], [str(answer[i]) for i in ask], [preds[i] for i in ask])
    seconds = time.perf_counter() - started
    penalty_sum = 0.0
    for i, res in zip(ask, results):
        if res.correct:
            rewards[i] = length_penalized_score(count_tokens(preds[i], tokenizer),
                                                count_tokens(str(answer[i]), tokenizer),
                                                coef=length_coef, cap=length_cap)
            penalty_sum += 1.0 - rewards[i]
        else:
            rewards[i] = 0.0
    add_counts(verifier_stats, rows=sum(g is not None for g in answer),
               no_answer=sum(g is not None and p is None for g, p in zip(answer, preds)), llm_items=len(ask),
               llm_positives=sum(r.correct for r in results), length_penalty_sum=penalty_sum,
               verify_calls=int(bool(ask)), verifier_seconds=seconds)
    return rewards


def general_verifier_step_metrics(counts: dict, step_seconds: float | None = None) -> dict[str, float]:
    """Per-step verifier metrics from the counts `general_verifier_reward` adds up (rates with an empty
    denominator are 0): calls, items, seconds, time_share (of `step_seconds`), no_answer_rate, accuracy
    (judged equivalent / rows) and mean_length_penalty (over the answers judged equivalent).

    >>> m = general_verifier_step_metrics({"rows": 4, "no_answer": 1, "llm_items": 3, "llm_positives": 2,
    ...                                    "length_penalty_sum": 0.3, "verifier_seconds": 1.0}, step_seconds=4.0)
    >>> m["verifier/accuracy"], m["verifier/no_answer_rate"], round(m["verifier/mean_length_penalty"], 2)
    (0.5, 0.25, 0.15)
    """
    c = {k: float(v) for k, v in counts.items()}

    def rate(num: str, den: str) -> float:
        return c.get(num, 0.0) / c[den] if c.get(den) else 0.0

    out = {"verifier/calls": c.get("verify_calls", 0.0), "verifier/items": c.get("llm_items", 0.0),
           "verifier/accuracy": rate("llm_positives", "rows"), "verifier/no_answer_rate": rate("no_answer", "rows"),
           "verifier/mean_length_penalty": rate("length_penalty_sum", "llm_positives"),
           "verifier/seconds": c.get("verifier_seconds", 0.0)}
    if step_seconds:
        out["verifier/time_share"] = out["verifier/seconds"] / step_seconds
    return out
