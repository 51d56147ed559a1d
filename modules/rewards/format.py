"""Format reward: R1-Zero's ``<think>...</think><answer>...</answer>`` layout, or a custom regex."""

from __future__ import annotations

import functools
import re

from modules.rewards.registry import completion_text, register_reward


@functools.lru_cache(maxsize=64)
def _tags_regex(think: str, answer: str, require_think: bool, prefix_opened: bool) -> re.Pattern:
    t, a = re.escape(think), re.escape(answer)
    answer_block = rf"<{a}>.*?</{a}>"
    if prefix_opened:  # the prompt already opened <think>: the completion starts inside it
        head = rf".*?</{t}>\s*"
    elif require_think:
        head = rf"\s*<{t}>.*?</{t}>\s*"
    else:
        head = rf"\s*(?:<{t}>.*?</{t}>\s*)?"
    return re.compile(rf"{head}{answer_block}\s*", re.DOTALL)


@functools.lru_cache(maxsize=64)
def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"format reward: invalid regex pattern={pattern!r} ({err})") from err


def _tags_ok(text: str, think: str, answer: str, require_think: bool, prefix_opened: bool) -> bool:
    opens_think = 0 if prefix_opened else 1
    counts = {f"<{answer}>": 1, f"</{answer}>": 1, f"<{think}>": opens_think, f"</{think}>": 1}
    if not require_think and not prefix_opened and f"<{think}>" not in text and f"</{think}>" not in text:
        counts[f"<{think}>"] = counts[f"</{think}>"] = 0
    if any(text.count(tag) != k for tag, k in counts.items()):
        return False
    return _tags_regex(think, answer, require_think, prefix_opened).fullmatch(text) is not None


@register_reward("format")
def format_reward(
    prompts: list,
    completions: list,
    *,
    think_tag: str = "think",
    answer_tag: str = "answer",
    require_think: bool = True,
    prefix_opened: bool = False,
    pattern: str | None = None,
    **kwargs,
) -> list[float]:
    """1.0 when a completion has the expected layout, else 0.0.

    Tags mode (default): optional whitespace, ``<think>...</think>``, optional whitespace,
    ``<answer>...</answer>``, optional whitespace, each tag exactly once (DeepSeek-R1-Zero template).
    `require_think=False` also accepts a lone answer block. `prefix_opened=True`: the prompt already
    ends with ``<think>`` (R1-Zero template), so the completion must contain no ``<think>`` and starts
    inside the block: ``reasoning</think><answer>...</answer>``.
    `pattern`: a regex that the stripped completion must `re.fullmatch` instead (e.g. ``-?\\d+`` for
    "reply with just a number"); the tag options are then ignored.

    >>> format_reward(None, ["<think>2+2</think> <answer>4</answer>", "<answer>4</answer>"])
    [1.0, 0.0]
    >>> format_reward(None, [" 42 ", "42 apples"], pattern=r"-?\\d+")
    [1.0, 0.0]
    """
    texts = [completion_text(c) for c in completions]
    if pattern is not None:
        rx = _compile(pattern)
        return [1.0 if rx.fullmatch(t.strip()) else 0.0 for t in texts]
    return [1.0 if _tags_ok(t, think_tag, answer_tag, require_think, prefix_opened) else 0.0 for t in texts]
