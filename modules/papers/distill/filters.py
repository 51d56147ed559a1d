"""Verification filters and per-teacher dataset statistics for distillation ("Not All Correct Answers Are
Equal", a-m-team, arXiv 2505.14464, section (b) and Table 1).

Each filter is a pure function that returns a `Verdict(keep, reason)`, where `reason` is a short stable key
(None when the row is kept):

- `verify_filter(score, threshold=0.9)` -> "verify": the verification score is below the threshold (for math,
  the paper uses Math-Verify with a binary score).
- `ngram_repetition_filter(tokens, n=20, max_count=20)` -> "repetition": some n-gram of tokens occurs more than
  `max_count` times (the paper uses 20-token n-grams occurring more than 20 times).
- `think_answer_filter(text)` -> "think_answer": the text lacks a non-empty `<think>...</think>` part followed
  by a non-empty `<answer>...</answer>` part.
- `length_filter(n_tokens, max_tokens)` -> "too_long": the sample is longer than the context (the paper drops
  samples over 32k tokens).
- `perplexity_filter(ppl, max_ppl)` -> "perplexity": the response perplexity under a scoring model is above a
  per-teacher threshold (the paper's thresholds are not given).
- `even_turns_filter(messages)` -> "turns": a conversation (prompt turns + the response) has an odd number of
  non-system turns.

`teacher_stats` gives Table-1-style statistics per teacher: rows, kept, dropped per reason, and the mean, std,
min and max of the kept responses' token lengths, plus their perplexity under the scorer.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

REASONS = ("verify", "repetition", "think_answer", "too_long", "perplexity", "turns")

_THINK_ANSWER = re.compile(r"<think>(.*?)</think>\s*<answer>(.*?)</answer>", re.DOTALL)


class Verdict(NamedTuple):
    """A filter decision: keep the row, or drop it for `reason` (one of `REASONS`)."""

    keep: bool
    reason: str | None = None


KEEP = Verdict(True, None)


def verify_filter(score: float | None, threshold: float = 0.9) -> Verdict:
    """Keep a response whose verification score is at least `threshold` (the paper: 0.9). A missing score (None
    or NaN: the verifier does not apply) fails.

    >>> verify_filter(1.0), verify_filter(0.0), verify_filter(None)
    (Verdict(keep=True, reason=None), Verdict(keep=False, reason='verify'), Verdict(keep=False, reason='verify'))
    """
    if score is None or (isinstance(score, float) and math.isnan(score)) or score < threshold:
        return Verdict(False, "verify")
    return KEEP


def max_ngram_count(tokens: Sequence[Hashable], n: int) -> int:
    """The largest number of times any n-gram (contiguous, overlapping windows) occurs in `tokens`.

    >>> max_ngram_count("abcabcabcx", 3)  # "abc" occurs 3 times
    3
    >>> max_ngram_count([1, 2], 3)
    0
    """
    if n < 1:
        raise ValueError(f"n-gram size {n} must be >= 1")
    if len(tokens) < n:
        return 0
    grams = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    return max(grams.values())


def ngram_repetition_filter(tokens: Sequence[Hashable], n: int = 20, max_count: int = 20) -> Verdict:
    """Drop a response in which some `n`-gram of tokens occurs more than `max_count` times (paper: 20 and 20).

    >>> ngram_repetition_filter("ab" * 5, n=2, max_count=4)  # "ab" occurs 5 times
    Verdict(keep=False, reason='repetition')
    >>> ngram_repetition_filter("ab" * 4, n=2, max_count=4)
    Verdict(keep=True, reason=None)
    """
    if max_count < 1:
        raise ValueError(f"max_count={max_count} must be >= 1")
    return Verdict(False, "repetition") if max_ngram_count(tokens, n) > max_count else KEEP


def think_answer_filter(text: str) -> Verdict:
    """Keep a response with a non-empty `<think>` part followed by a non-empty `<answer>` part.

    >>> think_answer_filter("<think>2+2=4</think> <answer>4</answer>")
    Verdict(keep=True, reason=None)
    >>> think_answer_filter("<think>2+2=4 <answer>4</answer>").keep, think_answer_filter("<think> </think><answer>4</answer>").keep
    (False, False)
    """
    match = _THINK_ANSWER.search(text)
    if match is None or not match.group(1).strip() or not match.group(2).strip():
        return Verdict(False, "think_answer")
    return KEEP


def length_filter(n_tokens: int, max_tokens: int | None) -> Verdict:
    """Drop a sample longer than `max_tokens` tokens (None = no limit; the paper drops samples over 32k).

    >>> length_filter(10, 8), length_filter(8, 8).keep
    (Verdict(keep=False, reason='too_long'), True)
    """
    return Verdict(False, "too_long") if max_tokens is not None and n_tokens > max_tokens else KEEP


def perplexity_filter(ppl: float | None, max_ppl: float | None) -> Verdict:
    """Drop a response whose perplexity under the scoring model is above `max_ppl` (None = no threshold).

    >>> perplexity_filter(3.2, 3.0), perplexity_filter(2.5, 3.0).keep, perplexity_filter(9.0, None).keep
    (Verdict(keep=False, reason='perplexity'), True, True)
    """
    if max_ppl is None:
        return KEEP
    if ppl is None or math.isnan(ppl) or ppl > max_ppl:
        return Verdict(False, "perplexity")
    return KEEP


def even_turns_filter(prompt: str | list[dict]) -> Verdict:
    """A conversation must have an even number of non-system turns once the response is added (user/assistant
    pairs), i.e. the prompt has an odd number. A text prompt is one user turn.

    >>> even_turns_filter("hi").keep, even_turns_filter([{"role": "user", "content": "a"},
    ...                                                  {"role": "assistant", "content": "b"}]).keep
    (True, False)
    """
    turns = 1 if isinstance(prompt, str) else sum(1 for m in prompt if m.get("role") != "system")
    return KEEP if (turns + 1) % 2 == 0 else Verdict(False, "turns")


def combine(verdicts: Sequence[Verdict]) -> tuple[bool, list[str]]:
    """(keep, every reason it fails) over one row's verdicts.

    >>> combine([KEEP, Verdict(False, "verify"), Verdict(False, "repetition")])
    (False, ['verify', 'repetition'])
    """
    reasons = [v.reason for v in verdicts if not v.keep]
    return not reasons, [r for r in reasons if r is not None]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def teacher_stats(teachers: Sequence[str], reasons: Sequence[Sequence[str]], lengths: Sequence[int],
                  nlls: Sequence[tuple[float, int] | None] | None = None) -> list[dict[str, Any]]:
    """Per-teacher statistics, teachers in order of first appearance.

    `teachers[i]`: row i's teacher; `reasons[i]`: why row i is dropped (empty = kept); `lengths[i]`: response
    length in tokens; `nlls[i]`: (summed NLL, tokens) of row i's response under the scoring model, or None
    where it was not computed. Length statistics are over the kept rows (std with ddof 0). `perplexity` =
    exp(sum NLL / sum tokens) over kept rows with an NLL (NaN when there is none). `dropped_<reason>` counts a row
    once per reason it fails, so those counts can add up to more than `dropped`.

    >>> s = teacher_stats(["a", "a", "b"], [[], ["verify"], []], [10, 30, 4], [(2.0, 10), None, (4.0, 4)])
    >>> s[0]["rows"], s[0]["kept"], s[0]["dropped_verify"], s[0]["length_mean"], round(s[0]["perplexity"], 4)
    (2, 1, 1, 10.0, 1.2214)
    """
    nlls = [None] * len(teachers) if nlls is None else nlls
    if not len(teachers) == len(reasons) == len(lengths) == len(nlls):
        raise ValueError(f"teacher_stats: {len(teachers)} teachers, {len(reasons)} reasons, {len(lengths)} lengths "
                         f"and {len(nlls)} NLLs; give one of each per row")
    out = []
    for teacher in dict.fromkeys(teachers):
        idx = [i for i, t in enumerate(teachers) if t == teacher]
        kept = [i for i in idx if not reasons[i]]
        counts = Counter(r for i in idx for r in reasons[i])
        kept_lengths = [float(lengths[i]) for i in kept]
        mean, std = _mean_std(kept_lengths)
        scored = [nlls[i] for i in kept if nlls[i] is not None and nlls[i][1] > 0]
        tokens = sum(n for _, n in scored)
        row = {"teacher": teacher, "rows": len(idx), "kept": len(kept), "dropped": len(idx) - len(kept),
               **{f"dropped_{r}": counts.get(r, 0) for r in REASONS},
               "length_mean": mean, "length_std": std,
               "length_min": min(kept_lengths) if kept_lengths else math.nan,
               "length_max": max(kept_lengths) if kept_lengths else math.nan,
               "perplexity": math.exp(sum(v for v, _ in scored) / tokens) if tokens else math.nan,
               "perplexity_rows": len(scored)}
        out.append(row)
    return out


def comparison_rows(runs: dict[str, dict[str, Any]], *, metric: str = "eval/accuracy") -> list[dict[str, Any]]:
    """One Table-1 row per student run: `runs[name] = {"dataset_stats": [teacher_stats rows], "metrics": {...}}`.

    A run trained on several teachers gets their names joined with "+" and the stats of its first teacher
    (train one student per teacher to compare them). `student_accuracy` is `metrics[metric]` (NaN if absent).

    >>> runs = {"s": {"dataset_stats": [{"teacher": "a", "kept": 9, "rows": 10, "length_mean": 5.0,
    ...                                  "length_std": 1.0, "perplexity": 2.5}], "metrics": {"eval/accuracy": 0.5}}}
    >>> comparison_rows(runs)[0]["student_accuracy"]
    0.5
    """
    out = []
    for name, run in runs.items():
        stats = list(run.get("dataset_stats") or [])
        first = stats[0] if stats else {}
        out.append({"student": name, "teacher": "+".join(s["teacher"] for s in stats) or name,
                    "rows": first.get("rows", math.nan), "kept": first.get("kept", math.nan),
                    "length_mean": first.get("length_mean", math.nan), "length_std": first.get("length_std", math.nan),
                    "perplexity": first.get("perplexity", math.nan),
                    "student_accuracy": float(run.get("metrics", {}).get(metric, math.nan))})
    return out


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def stats_table(stats: Sequence[dict[str, Any]], *, title: str = "distillation data by teacher"):
    """A rich Table of `teacher_stats` rows: kept/rows, drops per reason, length mean ± std [min, max], PPL."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    for name, justify in (("teacher", "left"), ("kept / rows", "right"), ("dropped (by reason)", "left"),
                          ("length mean ± std", "right"), (escape("[min, max]"), "right"), ("PPL (scorer)", "right")):
        table.add_column(name, justify=justify)
    for s in stats:
        drops = ", ".join(f"{r} {s[f'dropped_{r}']}" for r in REASONS if s.get(f"dropped_{r}"))
        table.add_row(escape(str(s["teacher"])), f"{s['kept']} / {s['rows']}", drops or "-",
                      f"{_fmt(s['length_mean'])} ± {_fmt(s['length_std'])}",
                      escape(f"[{_fmt(s['length_min'], '.0f')}, {_fmt(s['length_max'], '.0f')}]"),
                      _fmt(s["perplexity"], ".2f"))
    return table


def comparison_table(rows: Sequence[dict[str, Any]], *, title: str = "students by teacher (arXiv 2505.14464, Table 1 style)"):
    """A rich Table of `comparison_rows`: teacher, kept, mean length ± std, PPL under the scorer, student accuracy."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    for name, justify in (("teacher", "left"), ("kept / rows", "right"), ("length mean ± std", "right"),
                          ("PPL (scorer)", "right"), ("student held-out accuracy", "right")):
        table.add_column(name, justify=justify)
    for r in rows:
        table.add_row(escape(str(r["teacher"])), f"{_fmt(r['kept'])} / {_fmt(r['rows'])}",
                      f"{_fmt(r['length_mean'])} ± {_fmt(r['length_std'])}", _fmt(r["perplexity"], ".2f"),
                      _fmt(r["student_accuracy"], ".3f"))
    return table


__all__ = ["KEEP", "REASONS", "Verdict", "combine", "comparison_rows", "comparison_table", "even_turns_filter",
           "length_filter", "max_ngram_count", "ngram_repetition_filter", "perplexity_filter", "stats_table",
           "teacher_stats", "think_answer_filter", "verify_filter"]
