"""Answer accuracy: extract the final answer, compare it with the gold `answer` column.

Comparison modes: ``math`` (symbolic equivalence with HF math-verify), ``exact`` (normalised string
match), ``number`` (the last number equals the gold numerically).
"""

from __future__ import annotations

import functools
import re
import threading
import warnings
from decimal import Decimal, InvalidOperation

from modules.rewards.registry import completion_text, register_reward

EXTRACT_MODES = ("auto", "answer_tag", "boxed", "last_number", "none")
COMPARE_MODES = ("math", "exact", "number")

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# 1,234,567.5 | -12 | 3.25 | .5 ; a trailing sentence period is not part of the number.
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")
_DELIMITERS = ("$", "\\(", "\\[", "\\boxed")


def extract_last_number(text: str) -> str | None:
    """The last integer or decimal in `text` (thousands commas removed), or None.

    >>> extract_last_number("so 1,234 + 0.5 = 1,234.5.")
    '1234.5'
    """
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def extract_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (nested braces allowed), or None.

    >>> extract_boxed(r"so \boxed{\frac{1}{2}}.")
    '\\frac{1}{2}'
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # unbalanced


def extract_answer(text: str, how: str = "auto") -> str | None:
    """The answer part of a completion, or None when `how` finds nothing.

    ``auto``: content of the last ``<answer>...</answer>`` (unwrapping a ``\\boxed{}`` inside it), else
    the last ``\\boxed{...}``, else the whole text. ``answer_tag`` / ``boxed`` / ``last_number``: only
    that source. ``none``: the whole text.

    >>> extract_answer("<think>..</think><answer>\\\\boxed{7}</answer>")
    '7'
    """
    if how not in EXTRACT_MODES:
        raise ValueError(f"extract={how!r} is not one of {EXTRACT_MODES}")
    if how == "none":
        return text
    if how == "last_number":
        return extract_last_number(text)
    if how in ("auto", "answer_tag"):
        tags = _ANSWER_TAG.findall(text)
        if tags:
            inner = tags[-1].strip()
            return (extract_boxed(inner) or inner) if how == "auto" else inner
        if how == "answer_tag":
            return None
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed.strip()
    return text if how == "auto" else None


def normalize_text(text: str) -> str:
    """Strip, casefold, collapse whitespace, drop trailing periods (for ``mode="exact"``)."""
    return " ".join(str(text).split()).casefold().rstrip(".").strip()


def _to_decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


# ---- math-verify -------------------------------------------------------------------------------

def _timeout(seconds: int | None) -> int | None:
    """math-verify times out with signal.alarm, which only works in the main thread: no timeout elsewhere."""
    return seconds if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _parse(text: str, wrap: bool, timeout: int | None) -> list:
    """math-verify parse. Bare LaTeX (``\\frac{1}{2}``, ``x^2+1``) only parses inside ``$...$``, so text
    without math delimiters is tried wrapped first when `wrap`, then as it is."""
    from math_verify import parse

    if wrap and not any(d in text for d in _DELIMITERS):
        parsed = parse(f"${text}$", parsing_timeout=timeout)
        if parsed:
            return parsed
    return parse(text, parsing_timeout=timeout)


def math_equal(gold: str, pred: str, *, wrap_pred: bool = True, timeout_seconds: int | None = 5) -> bool:
    """Whether `pred` is mathematically equivalent to `gold` (math-verify ``verify(gold, pred)``)."""
    from math_verify import verify

    timeout = _timeout(timeout_seconds)
    gold_parsed = _parse(gold, True, timeout)
    if not gold_parsed:
        warnings.warn(f"accuracy reward: math-verify could not parse the gold answer {gold!r}; "
                      "every completion scores 0 on it (use mode='exact' or fix the answer)", stacklevel=2)
        return False
    pred_parsed = _parse(pred, wrap_pred, timeout)
    return bool(pred_parsed) and verify(gold_parsed, pred_parsed, timeout_seconds=timeout)


# ---- reward ------------------------------------------------------------------------------------

def _score(completion: str, gold, extract: str, mode: str, timeout_seconds: int | None) -> float | None:
    if gold is None:
        return None
    pred = extract_answer(completion, extract)
    if pred is None:
        return 0.0
    if mode == "exact":
        return float(normalize_text(pred) == normalize_text(gold))
    if mode == "number":
        gold_num = _to_decimal(str(gold).strip().replace(",", "").rstrip("."))
        if gold_num is None:
            raise ValueError(f"mode='number' needs numeric answers, got answer={gold!r}; use mode='math' or 'exact'")
        pred_num = extract_last_number(pred)
        return float(pred_num is not None and _to_decimal(pred_num) == gold_num)
    # math: text found by a tag / box is a bare expression (wrap it in $...$); the whole completion is prose.
    whole = pred is completion
    return float(math_equal(str(gold), pred, wrap_pred=not whole, timeout_seconds=timeout_seconds))


@register_reward("accuracy")
def accuracy_reward(
    prompts: list,
    completions: list,
    answer: list | None = None,
    *,
    extract: str = "auto",
    mode: str = "math",
    timeout_seconds: int | None = 5,
    **kwargs,
) -> list[float | None]:
    r"""1.0 when the extracted answer matches the gold `answer` column, 0.0 otherwise, None where the
    gold is None.

    `extract`: see `extract_answer`. `mode`: ``math`` = math-verify equivalence (``\frac{1}{2}`` ==
    ``0.5``; math-verify's signal timeout of `timeout_seconds` applies in the main thread only),
    ``exact`` = `normalize_text` equality, ``number`` = last number equals the gold (exact decimal).
    An answer missing from the completion (nothing to extract) scores 0.0.

    >>> accuracy_reward(None, ["<answer>\\frac{1}{2}</answer>", "<answer>2</answer>"], answer=["0.5", "0.5"])
    [1.0, 0.0]
    >>> accuracy_reward(None, ["The answer is 42.", "42"], answer=["42", None], mode="number")
    [1.0, None]
    """
    if answer is None:
        raise ValueError(f"accuracy reward needs the per-row column 'answer' (gold answers); got columns "
                         f"{sorted(kwargs)}. Add an 'answer' field to the dataset rows.")
    if extract not in EXTRACT_MODES:
        raise ValueError(f"accuracy reward: extract={extract!r} is not one of {EXTRACT_MODES}")
    if mode not in COMPARE_MODES:
        raise ValueError(f"accuracy reward: mode={mode!r} is not one of {COMPARE_MODES}")
    return [_score(completion_text(c), g, extract, mode, timeout_seconds) for c, g in zip(completions, answer)]
