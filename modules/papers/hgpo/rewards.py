"""Rewards for hybrid thinking (LHRM, arXiv 2505.14631; spec section 14): responses are
`<think>...</think>answer` or `<no_think>answer</no_think>`.

- `parse_mode` / `extract_hybrid_answer`: which mode a response is in, and its answer part.
- `hybrid_correct` (registered): rule-based accuracy of the answer part, None for rows without a gold `answer`.
- `toy_chat_rm` (registered): a toy heuristic reward model for "chat" rows (those with a `keywords` column),
  a documented CPU substitute for the paper's Llama-3.1-Tulu-3-8B-RM; None for other rows.
"""

from __future__ import annotations

import re

from modules.rewards.accuracy import accuracy_reward
from modules.rewards.registry import completion_text, register_reward

THINK_TAG, NO_THINK_TAG = "<think>", "<no_think>"


def closing_tag(tag: str) -> str:
    """`<think>` -> `</think>`.

    >>> closing_tag("<no_think>")
    '</no_think>'
    """
    if not (tag.startswith("<") and tag.endswith(">") and len(tag) > 2):
        raise ValueError(f"mode tag {tag!r} must look like <name>")
    return "</" + tag[1:]


def parse_mode(text: str, think_tag: str = THINK_TAG, no_think_tag: str = NO_THINK_TAG) -> str | None:
    """"think" / "no_think" when the response (after leading whitespace) opens with that tag, else None.

    >>> parse_mode("<think>2+2</think>4"), parse_mode(" <no_think>4</no_think>"), parse_mode("4")
    ('think', 'no_think', None)
    """
    text = text.lstrip()
    # The longer tag first, in case one tag is a prefix of the other.
    for tag, mode in sorted(((think_tag, "think"), (no_think_tag, "no_think")), key=lambda t: -len(t[0])):
        if text.startswith(tag):
            return mode
    return None


def extract_hybrid_answer(text: str, think_tag: str = THINK_TAG, no_think_tag: str = NO_THINK_TAG) -> str | None:
    """The answer part: what follows the closing think tag, or what the no-think tags enclose; None when the
    response has no mode tag, does not close it, or leaves the answer empty.

    >>> extract_hybrid_answer("<think>3*4=12</think> 12"), extract_hybrid_answer("<no_think>12</no_think>")
    ('12', '12')
    >>> extract_hybrid_answer("<think>3*4=12 ...") is None
    True
    """
    mode = parse_mode(text, think_tag, no_think_tag)
    if mode is None:
        return None
    text = text.lstrip()
    if mode == "think":
        close = closing_tag(think_tag)
        if close not in text:
            return None
        answer = text.rsplit(close, 1)[1]
    else:
        match = re.match(re.escape(no_think_tag) + r"(.*?)" + re.escape(closing_tag(no_think_tag)), text, re.DOTALL)
        if match is None:
            return None
        answer = match.group(1)
    answer = answer.strip()
    return answer or None


@register_reward("hybrid_correct")
def hybrid_correct(prompts: list, completions: list, answer: list | None = None, *, mode: str = "number",
                   think_tag: str = THINK_TAG, no_think_tag: str = NO_THINK_TAG, **kwargs) -> list[float | None]:
    """1.0 when the answer part (`extract_hybrid_answer`) matches the gold `answer` (compared as the `accuracy`
    reward does with `mode`: number, exact or math), 0.0 when it does not or the response is malformed, None
    where the gold is None (e.g. chat rows).

    >>> hybrid_correct(None, ["<think>5+7=12</think>12", "<no_think>13</no_think>", "12", "hi"],
    ...                answer=["12", "12", "12", None])
    [1.0, 0.0, 0.0, None]
    """
    if answer is None:
        raise ValueError(f"hybrid_correct needs the per-row column 'answer' (None for rows without one); got "
                         f"columns {sorted(kwargs)}")
    out: list[float | None] = []
    for completion, gold in zip(completions, answer):
        if gold is None:
            out.append(None)
            continue
        pred = extract_hybrid_answer(completion_text(completion), think_tag, no_think_tag)
        out.append(0.0 if pred is None else accuracy_reward(None, [pred], answer=[str(gold)], mode=mode)[0])
    return out


@register_reward("hybrid_format")
def hybrid_format(prompts: list, completions: list, *, think_tag: str = THINK_TAG, no_think_tag: str = NO_THINK_TAG,
                  **kwargs) -> list[float]:
    """1.0 when the response is well formed in one of the two modes (opens with a mode tag, closes it and gives a
    non-empty answer: `extract_hybrid_answer` finds one), else 0.0: the format rate of a hybrid model, for any row.

    >>> hybrid_format(None, ["<think>5+7=12</think>12", "<no_think>hi</no_think>", "<think>5+7", "12"])
    [1.0, 1.0, 0.0, 0.0]
    """
    return [float(extract_hybrid_answer(completion_text(c), think_tag, no_think_tag) is not None) for c in completions]


@register_reward("toy_chat_rm")
def toy_chat_rm(prompts: list, completions: list, keywords: list | None = None, *, max_words: int = 20,
                keyword_weight: float = 0.7, think_tag: str = THINK_TAG, no_think_tag: str = NO_THINK_TAG,
                **kwargs) -> list[float | None]:
    """A toy heuristic reward model for chat rows, in [0, 1]: `keyword_weight` x the share of the row's `keywords`
    found (case-insensitive) in the reply, plus (1 - keyword_weight) when the reply has 1..`max_words` words
    (a brevity bonus). The reply is the answer part of a mode-tagged response (`extract_hybrid_answer`), or the
    whole text when it has no mode tag; a malformed tagged response (unclosed tag, empty reply) scores 0.
    None for rows whose `keywords` is None (non-chat rows). A stand-in for a learned RM (spec 14e).

    >>> toy_chat_rm(None, ["<no_think>Hello, Ana!</no_think>", "<think>hmm", "Hi"],
    ...             keywords=[["hello", "ana"], ["hello"], None])
    [1.0, 0.0, None]
    """
    if keywords is None:
        raise ValueError(f"toy_chat_rm needs the per-row column 'keywords' (None for non-chat rows); got columns "
                         f"{sorted(kwargs)}")
    if not 0.0 <= keyword_weight <= 1.0 or max_words < 1:
        raise ValueError(f"toy_chat_rm: keyword_weight={keyword_weight} must be in [0, 1] and max_words={max_words} "
                         ">= 1")
    out: list[float | None] = []
    for completion, words in zip(completions, keywords):
        if words is None:
            out.append(None)
            continue
        text = completion_text(completion)
        reply = extract_hybrid_answer(text, think_tag, no_think_tag) if parse_mode(text, think_tag, no_think_tag) \
            else text.strip()
        if not reply:
            out.append(0.0)
            continue
        low = reply.casefold()
        found = sum(str(w).casefold() in low for w in words) / len(words) if words else 1.0
        brief = 1.0 if 1 <= len(reply.split()) <= max_words else 0.0
        out.append(keyword_weight * found + (1.0 - keyword_weight) * brief)
    return out


__all__ = ["NO_THINK_TAG", "THINK_TAG", "closing_tag", "extract_hybrid_answer", "hybrid_correct", "parse_mode",
           "toy_chat_rm"]
