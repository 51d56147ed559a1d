"""Length-based rewards computed from the policy token count of each completion.

Both read the ``completion_lengths`` keyword (tokens the policy wrote per completion) that the trainer
passes; call them by hand with ``completion_lengths=[...]``.
"""

from __future__ import annotations

from modules.rewards.registry import register_reward


def _lengths(name: str, completions: list, completion_lengths: list | None) -> list:
    if completion_lengths is None:
        raise ValueError(f"{name} reward needs the keyword completion_lengths (policy tokens per completion); "
                         "the trainer passes it, pass completion_lengths=[...] when calling by hand")
    if len(completion_lengths) != len(completions):
        raise ValueError(f"{name} reward: {len(completion_lengths)} completion_lengths for "
                         f"{len(completions)} completions")
    return [int(n) for n in completion_lengths]


def soft_overlong_punishment(length: int, max_completion_length: int, cache_length: int) -> float:
    """DAPO soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, Eq. 13).

    0 while ``l <= L_max - L_cache``; ``(L_max - L_cache - l) / L_cache`` in the cache zone (0 to -1);
    -1 beyond ``L_max``.

    >>> [soft_overlong_punishment(l, 20, 8) for l in (12, 14, 20, 21)]
    [0.0, -0.25, -1.0, -1.0]
    """
    expected = max_completion_length - cache_length
    if length <= expected:
        return 0.0
    if length <= max_completion_length:
        return (expected - length) / cache_length
    return -1.0


@register_reward("overlong")
def overlong_reward(
    prompts: list,
    completions: list,
    *,
    completion_lengths: list[int] | None = None,
    max_completion_length: int | None = None,
    cache_length: int | None = None,
    **kwargs,
) -> list[float]:
    """DAPO's soft overlong punishment per completion (see `soft_overlong_punishment`).

    `max_completion_length` is L_max (the generation limit) and `cache_length` L_cache (the
    punishment zone before it; DAPO: 20480 and 4096).

    >>> overlong_reward(None, ["a", "b"], completion_lengths=[10, 18], max_completion_length=20, cache_length=4)
    [0.0, -0.5]
    """
    if max_completion_length is None or cache_length is None:
        raise ValueError("overlong reward needs max_completion_length (L_max) and cache_length (L_cache), "
                         "e.g. kwargs: {max_completion_length: 1024, cache_length: 256}")
    if not 0 < cache_length <= max_completion_length:
        raise ValueError(f"overlong reward needs 0 < cache_length <= max_completion_length, got "
                         f"cache_length={cache_length}, max_completion_length={max_completion_length}")
    lengths = _lengths("overlong", completions, completion_lengths)
    return [soft_overlong_punishment(n, max_completion_length, cache_length) for n in lengths]


@register_reward("length")
def length_penalty(
    prompts: list,
    completions: list,
    *,
    completion_lengths: list[int] | None = None,
    target: int | None = None,
    coef: float = 1.0,
    **kwargs,
) -> list[float]:
    """Linear penalty for tokens beyond `target`: ``-coef * max(0, l - target) / max(1, target)``.

    0 up to `target` tokens, -coef at twice the target, growing without bound after that.

    >>> length_penalty(None, ["a", "b", "c"], completion_lengths=[50, 150, 300], target=100, coef=0.5)
    [0.0, -0.25, -1.0]
    """
    if target is None or target < 0:
        raise ValueError(f"length reward needs a token budget target >= 0, got target={target}; "
                         "e.g. kwargs: {target: 512, coef: 1.0}")
    lengths = _lengths("length", completions, completion_lengths)
    return [0.0 - coef * max(0, n - target) / max(1, target) for n in lengths]  # 0.0 - ...: no -0.0
