"""Exact-structure format reward of pPE: one ``<x>...</x>`` block, then one ``<answer>...</answer>`` block.

The check itself is the ``format`` reward's tag mode (`modules.rewards.format`, each tag exactly once, fullmatch
of ``\\s*<x>.*?</x>\\s*<answer>.*?</answer>\\s*``) with ``think_tag = x``; this module only lets the tag come
from each row (column ``prior_tag``, written by `recipes.ppe.PriorPromptDataModule`), so one config knob (the
strategy) sets both the prompt and the reward.
"""

from __future__ import annotations

from modules.rewards.format import format_reward
from modules.rewards.registry import register_reward


@register_reward("exact_structure")
def exact_structure_reward(
    prompts: list,
    completions: list,
    prior_tag: list | None = None,
    *,
    tag: str | None = None,
    answer_tag: str = "answer",
    **kwargs,
) -> list[float]:
    """1.0 iff the completion is exactly ``<tag>...</tag>`` then ``<answer>...</answer>`` (whitespace only
    around and between, each of the four tags exactly once), else 0.0 (spec 19 (b), the 0.5-weight format reward).

    `tag`: the first block's tag for every row; when null, each row's `prior_tag` column gives it. Both given and
    different is an error (the prompt asks for one tag, the reward checks another).

    >>> exact_structure_reward(None, ["<plan>a</plan> <answer>\\\\boxed{4}</answer>", "<plan>a</plan>"], tag="plan")
    [1.0, 0.0]
    >>> exact_structure_reward(None, ["<code>x</code><answer>1</answer>"], prior_tag=["code"])
    [1.0]
    """
    n = len(completions)
    if prior_tag is None and tag is None:
        raise ValueError("exact_structure reward needs the option tag (e.g. kwargs: {tag: think}) or a per-row "
                         "'prior_tag' column (recipes.ppe.PriorPromptDataModule adds it)")
    if prior_tag is not None and tag is not None and any(t != tag for t in prior_tag):
        other = next(t for t in prior_tag if t != tag)
        raise ValueError(f"exact_structure reward: option tag={tag!r} but the rows' prior_tag is {other!r}; "
                         "remove the option (the rows' strategy then decides) or make them agree")
    tags = [tag] * n if tag is not None else list(prior_tag)
    for t in set(tags):
        if not isinstance(t, str) or not t or t == answer_tag:
            raise ValueError(f"exact_structure reward: tag {t!r} must be a non-empty name other than "
                             f"answer_tag={answer_tag!r}")
    return [format_reward(None, [c], think_tag=t, answer_tag=answer_tag)[0] for c, t in zip(completions, tags)]
