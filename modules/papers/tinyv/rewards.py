r"""TinyV reward (Xu et al., arXiv 2505.14625, spec 15(b)): a rule verifier first, an LLM verifier for what the
rule rejects.

With ``ok`` = the rule's verdict (math-verify on the last ``\boxed{}``) and ``v`` = the LLM verifier's (0/1):

- ``addon`` (default): r = 1 if ok else w * v; the LLM sees only the rule's negatives.
- ``tinyv_only``: r = v; the LLM sees every answer.
- ``mixed``: r = w * v + (1 - w) * ok; the LLM sees every answer.

All items that need the LLM in a batch go into one `Verifier.verify` call (batched decoding). Counts go into the
`verifier_stats` dict when one is passed (the TinyV recipe logs them): rows, rule_negatives, llm_items,
llm_positives, overturns (rule said wrong, LLM said right: recovered false negatives), no_answer, verify_calls,
verifier_seconds.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from modules.rewards.accuracy import EXTRACT_MODES, extract_answer
from modules.rewards.registry import completion_text, register_reward

if TYPE_CHECKING:
    from modules.verifiers.base import Verifier

MODES = ("addon", "tinyv_only", "mixed")


def tinyv_combine(mode: str, ok: bool, v: float | None, w: float = 1.0) -> float:
    """The reward of one answer from the rule verdict `ok` and the LLM verdict `v` (spec 15(b)).

    `v` may be None in addon mode when ok (the LLM is not asked).

    >>> tinyv_combine("addon", True, None), tinyv_combine("addon", False, 1.0, w=0.5)
    (1.0, 0.5)
    >>> tinyv_combine("tinyv_only", True, 0.0), tinyv_combine("mixed", True, 0.0, w=0.3)
    (0.0, 0.7)
    """
    if mode == "addon":
        return 1.0 if ok else w * float(v or 0.0)
    if v is None:
        raise ValueError(f"tinyv mode {mode!r} needs the LLM verdict of every answer")
    if mode == "tinyv_only":
        return float(v)
    if mode == "mixed":
        return w * float(v) + (1.0 - w) * float(ok)
    raise ValueError(f"tinyv mode={mode!r}; use one of {MODES}")


_DEFAULT_RULE: list = []


def default_rule() -> "Verifier":
    """The shared math-verify rule verifier (imported lazily: `modules.verifiers` imports `modules.rewards`)."""
    if not _DEFAULT_RULE:
        from modules.verifiers.rule import MathRuleVerifier

        _DEFAULT_RULE.append(MathRuleVerifier())
    return _DEFAULT_RULE[0]


def add_counts(stats: dict | None, **counts: float) -> None:
    """Add `counts` into the `stats` dict (no-op when None)."""
    if stats is not None:
        for key, value in counts.items():
            stats[key] = stats.get(key, 0) + value


@register_reward("tinyv")
def tinyv_reward(
    prompts: list,
    completions: list,
    answer: list | None = None,
    *,
    verifier: Verifier | None = None,
    mode: str = "addon",
    w: float = 1.0,
    extract: str = "boxed",
    verify_missing: bool = False,
    rule: Verifier | None = None,
    question: list | None = None,
    verifier_stats: dict | None = None,
    **kwargs: Any,
) -> list[float | None]:
    r"""TinyV reward per completion (None where the gold `answer` is None).

    Options (reward `kwargs`): `mode` addon | tinyv_only | mixed; `w` the LLM weight (1.0 as released);
    `extract` how the answer is found (`boxed` as TinyV's prompt asks; see `extract_answer`); `verify_missing`
    sends a completion with nothing to extract to the LLM as a whole ([unverified]; default: it scores 0 and the
    LLM is not asked). `verifier` (a `Verifier`, passed by the TinyV recipe), `rule` (default math-verify),
    `question` (dataset column; else the prompt text) and `verifier_stats` come from the caller.

    >>> from modules.verifiers import CallableVerifier
    >>> llm = CallableVerifier(lambda q, g, a: "True" if a.strip() == "12" else "False", parse=lambda t: t == "True")
    >>> tinyv_reward(["q"] * 3, [r"\boxed{12 cm^2}", r"\boxed{12}", r"\boxed{5}"], ["12 cm^2"] * 3, verifier=llm)
    [1.0, 1.0, 0.0]
    >>> llm.stats.items  # only the two rule negatives went to the LLM, in one call
    2
    """
    if answer is None:
        raise ValueError(f"tinyv reward needs the per-row column 'answer' (gold answers); got columns {sorted(kwargs)}")
    if verifier is None:
        raise ValueError("tinyv reward needs `verifier` (a modules.verifiers.Verifier): use the TinyV recipe "
                         "(recipes.tinyv.TinyV, it passes its model.verifier) or pass verifier= yourself")
    if mode not in MODES:
        raise ValueError(f"tinyv reward: mode={mode!r}; use one of {MODES}")
    if extract not in EXTRACT_MODES:
        raise ValueError(f"tinyv reward: extract={extract!r}; use one of {EXTRACT_MODES}")
    if not math.isfinite(float(w)):
        raise ValueError(f"tinyv reward: w={w} must be a finite number")
    rule = rule or default_rule()
    texts = [completion_text(c) for c in completions]
    questions = [str(q) if q is not None else completion_text(p)
                 for q, p in zip(question or [None] * len(texts), prompts)]
    preds = [extract_answer(t, extract) if g is not None else None for t, g in zip(texts, answer)]

    # 1. the rule on every row with a gold answer and an extracted answer (one call)
    checked = [i for i, (g, p) in enumerate(zip(answer, preds)) if g is not None and p is not None]
    ok = [False] * len(texts)
    for i, res in zip(checked, rule.verify([questions[i] for i in checked], [str(answer[i]) for i in checked],
                                           [preds[i] for i in checked])):
        ok[i] = res.correct
    scored = [i for i, g in enumerate(answer) if g is not None]
    missing = [i for i in scored if preds[i] is None]

    # 2. the LLM on the rows the mode needs, all in one batched call
    candidates = [i for i in scored if preds[i] is not None or verify_missing]
    ask = [i for i in candidates if not ok[i]] if mode == "addon" else candidates
    started = time.perf_counter()
    results = verifier.verify([questions[i] for i in ask], [str(answer[i]) for i in ask],
                              [preds[i] if preds[i] is not None else texts[i] for i in ask])
    seconds = time.perf_counter() - started
    v: list[float | None] = [None] * len(texts)
    for i, res in zip(ask, results):
        v[i] = res.score
    if mode != "addon":
        for i in scored:  # nothing extracted and not sent: the LLM's verdict counts as 0
            v[i] = 0.0 if v[i] is None else v[i]

    add_counts(verifier_stats, rows=len(scored), rule_positives=sum(ok[i] for i in scored),
               rule_negatives=sum(not ok[i] for i in scored), no_answer=len(missing), llm_items=len(ask),
               llm_negatives_checked=sum(not ok[i] for i in ask), llm_positives=sum(r.correct for r in results),
               overturns=sum(r.correct and not ok[i] for i, r in zip(ask, results)),
               verify_calls=int(bool(ask)), verifier_seconds=seconds)
    return [tinyv_combine(mode, ok[i], v[i], float(w)) if answer[i] is not None else None for i in range(len(texts))]


def tinyv_step_metrics(counts: dict, step_seconds: float | None = None) -> dict[str, float]:
    """Per-step verifier metrics from the counts `tinyv_reward` adds up (all finite; a rate with an empty
    denominator is 0).

    `llm_overturn_rate` = overturns / rule negatives the LLM checked: the share of rule negatives recovered as
    false negatives. `time_share` = verifier seconds / `step_seconds`.

    >>> m = tinyv_step_metrics({"rows": 8, "rule_negatives": 6, "llm_negatives_checked": 4, "overturns": 1,
    ...                         "verifier_seconds": 0.5, "verify_calls": 1, "llm_items": 4}, step_seconds=5.0)
    >>> m["verifier/llm_overturn_rate"], m["verifier/rule_negative_rate"], m["verifier/time_share"]
    (0.25, 0.75, 0.1)
    """
    c = {k: float(v) for k, v in counts.items()}

    def rate(num: str, den: str) -> float:
        return c.get(num, 0.0) / c[den] if c.get(den) else 0.0

    out = {"verifier/calls": c.get("verify_calls", 0.0), "verifier/items": c.get("llm_items", 0.0),
           "verifier/rule_negatives": c.get("rule_negatives", 0.0), "verifier/overturns": c.get("overturns", 0.0),
           "verifier/llm_overturn_rate": rate("overturns", "llm_negatives_checked"),
           "verifier/rule_negative_rate": rate("rule_negatives", "rows"),
           "verifier/no_answer_rate": rate("no_answer", "rows"),
           "verifier/seconds": c.get("verifier_seconds", 0.0)}
    if step_seconds:
        out["verifier/time_share"] = out["verifier/seconds"] / step_seconds
    return out
