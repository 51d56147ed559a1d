r"""LASER / LASER-D / LASER-DE: length-based reward shaping (Liu, Zhou, ..., He; arXiv 2505.15612, ICLR 2026).

Spec section 8 (built from the released code; the paper text was not available). Unified view
``R^(x, y) = C(y) + lambda(y) * S(y)``:

- correctness C (`correctness_score`): +1 correct, -0.5 wrong, -1 when there is no ``\boxed{}`` (or, with
  `require_think`, no ``<think>``/``</think>``); the answer is read after ``</think>`` when present;
- LASER (`laser`): ``R^ = C + alpha * 1[C = 1] * 1[L <= L_T]`` with one target L_T (`step_bonus`);
- LASER-D (`laser_d`): the same with L_T = L_A(bucket), the bucket from the prompt's group accuracy in the
  current batch (`difficulty_buckets`: acc >= 2/3 easy, 1/3 <= acc < 2/3 medium, else hard) and L_A from a
  monitoring set (`select_targets`, with the monitor's own bucketing `monitor_buckets`);
- LASER-DE (`laser_de`): LASER-D plus ``alpha`` for wrong (C = -0.5), over-target, non-repetitive responses
  (`exploration_bonus`, `is_repetitive`).

L is the completion's token count (the trainer's ``completion_lengths``). The recipe (`recipes.laser.LASER`)
passes the targets (``laser_targets``), ``laser_alpha``, ``completion_token_ids`` and an optional ``laser_info``
dict that the rewards fill with per-row details (correctness, bucket, target, bonus) for logging.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from modules.rewards.accuracy import extract_boxed, math_equal
from modules.rewards.registry import completion_text, register_reward

BUCKETS = ("easy", "medium", "hard")
ROUND_METHODS = ("floor", "ceil")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CORRECT, WRONG, NO_ANSWER = 1.0, -0.5, -1.0


# ---- correctness ------------------------------------------------------------------------------------

def correctness_score(completion: Any, gold: Any, *, require_think: bool = True,
                      timeout_seconds: int | None = 5) -> float | None:
    r"""C(y) of spec 8(b): +1 correct, -0.5 wrong, -1 without a ``\boxed{}`` answer (None where gold is None).

    The answer is the last ``\boxed{}`` after the first ``</think>`` (the whole text when there is none),
    compared with math-verify (`modules.rewards.accuracy.math_equal`). `require_think` (the paper's rule, for
    models that write ``<think>...</think>``) also gives -1 when either tag is missing; small instruct models
    do not write them, so configs for those set it to false.

    >>> correctness_score(r"<think>6*7</think> so \boxed{42}", "42")
    1.0
    >>> correctness_score(r"<think>6*7</think> \boxed{41}", "42"), correctness_score(r"\boxed{42}", "42")
    (-0.5, -1.0)
    >>> correctness_score(r"\boxed{42}", "42", require_think=False), correctness_score("42", "42", require_think=False)
    (1.0, -1.0)
    """
    if gold is None:
        return None
    text = completion_text(completion)
    if require_think and (THINK_OPEN not in text or THINK_CLOSE not in text):
        return NO_ANSWER
    answer = text.split(THINK_CLOSE, 1)[1] if THINK_CLOSE in text else text
    boxed = extract_boxed(answer)
    if boxed is None:
        return NO_ANSWER
    return CORRECT if math_equal(str(gold), boxed.strip(), timeout_seconds=timeout_seconds) else WRONG


# ---- repetition -------------------------------------------------------------------------------------

def repetition_start(tokens: Sequence[Any]) -> int:
    """Where a repetition starts in `tokens` (token ids or text tokens), or ``len(tokens)`` when none is found.

    Spec 8(b), the released detector's rules: sequences of at most 8 tokens are never repetitive; n-grams of
    n = 2 (len < 30), 3 (len < 100) or 4 are scanned from the end backwards; an n-gram made of one token repeated
    is skipped when n > 2; a repetition is an n-gram seen `threshold` times (2, or 3 when len >= 200) with two
    consecutive occurrences less than len // 3 tokens apart. Failing that, a 2n-token pattern seen twice (len >=
    4n) is a repetition. The start is the earliest occurrence found when the scan stops.

    >>> repetition_start("a b c d e f g h i j".split()), repetition_start("x y z a b a b a b".split())
    (10, 5)
    """
    size = len(tokens)
    if size <= 8:
        return size
    n = 2 if size < 30 else 3 if size < 100 else 4
    threshold = 3 if size >= 200 else 2
    max_gap = size // 3
    seen: dict[tuple, list[int]] = {}  # n-gram -> [count, smallest gap between consecutive occurrences, last start]
    for i in range(size - n, -1, -1):
        gram = tuple(tokens[i:i + n])
        if n > 2 and len(set(gram)) == 1:
            continue
        entry = seen.get(gram)
        if entry is None:
            seen[gram] = [1, math.inf, i]
            continue
        entry[0] += 1
        entry[1] = min(entry[1], entry[2] - i)
        entry[2] = i
        if entry[0] >= threshold and entry[1] < max_gap:
            return i
    if size >= 4 * n:
        patterns: set[tuple] = set()
        for i in range(size - 2 * n, -1, -1):
            pattern = tuple(tokens[i:i + 2 * n])
            if pattern in patterns:
                return i
            patterns.add(pattern)
    return size


def is_repetitive(tokens: Sequence[Any]) -> bool:
    """Whether `repetition_start` finds a repetition before the end of `tokens`.

    >>> is_repetitive([5, 6, 7, 8, 9, 10, 11, 12, 13, 14]), is_repetitive([1, 2, 3, 1, 2, 3, 1, 2, 3, 4])
    (False, True)
    """
    return repetition_start(tokens) < len(tokens)


# ---- difficulty buckets -----------------------------------------------------------------------------

def _group_counts(correct: Sequence[Any], group_ids: Sequence[Any]) -> list[tuple[int, int]]:
    """(correct count, group size) of each row's group."""
    if len(correct) != len(group_ids):
        raise ValueError(f"{len(correct)} correctness values for {len(group_ids)} group_ids")
    counts: dict[Any, list[int]] = {}
    for ok, gid in zip(correct, group_ids):
        entry = counts.setdefault(gid, [0, 0])
        entry[0] += int(bool(ok))
        entry[1] += 1
    return [tuple(counts[gid]) for gid in group_ids]


def difficulty_buckets(correct: Sequence[Any], group_ids: Sequence[Any]) -> list[str]:
    """Training bucket of each row from its group's accuracy (spec 8(b), LASER-D's reward):
    acc >= 2/3 easy, 1/3 <= acc < 2/3 medium, acc < 1/3 hard (exact fractions, no float rounding).

    >>> difficulty_buckets([1, 1, 0, 1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 2, 2, 2])[::3]
    ['easy', 'medium', 'hard']
    """
    out = []
    for k, n in _group_counts(correct, group_ids):
        out.append("easy" if 3 * k >= 2 * n else "medium" if 3 * k >= n else "hard")
    return out


def monitor_buckets(correct: Sequence[Any], group_ids: Sequence[Any]) -> list[str]:
    """Monitoring-set bucket of each row (spec 8(b)): acc <= 1/3 hard, 1/3 < acc <= 2/3 medium, > 2/3 easy.

    The boundaries differ from `difficulty_buckets` (an accuracy of exactly 1/3 or 2/3 falls in a different
    bucket); the released code has both and so do we.

    >>> correct, groups = [1, 1, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1]  # accuracies 2/3 and 1/3
    >>> monitor_buckets(correct, groups)[::3], difficulty_buckets(correct, groups)[::3]
    (['medium', 'hard'], ['easy', 'medium'])
    """
    out = []
    for k, n in _group_counts(correct, group_ids):
        out.append("hard" if 3 * k <= n else "medium" if 3 * k <= 2 * n else "easy")
    return out


# ---- target selection -------------------------------------------------------------------------------

def length_thresholds(low: int, step: int, maximum: int) -> list[int]:
    """Candidate targets: ``[low] + range(step, maximum + 1, step)`` when low < step, else
    ``range(low, maximum + 1, step)`` (spec 8(b): L_low, then multiples of 1024 up to 16384).

    >>> length_thresholds(8, 8, 64), length_thresholds(4, 16, 64), length_thresholds(1024, 1024, 4096)
    ([8, 16, 24, 32, 40, 48, 56, 64], [4, 16, 32, 48, 64], [1024, 2048, 3072, 4096])
    """
    if not (low >= 1 and step >= 1 and maximum >= low):
        raise ValueError(f"length_thresholds needs 1 <= low <= maximum and step >= 1; got low={low}, step={step}, "
                         f"maximum={maximum}")
    if low < step:
        return [low, *range(step, maximum + 1, step)]
    return list(range(low, maximum + 1, step))


def expected_correct_counts(num_generations: int, round_method: str = "floor") -> dict[str, int]:
    """n_d of each bucket for N rollouts: easy 2N/3, medium N/3, hard 1, rounded down (``floor``, the default)
    or up (``ceil``).

    >>> expected_correct_counts(8), expected_correct_counts(8, "ceil")
    ({'easy': 5, 'medium': 2, 'hard': 1}, {'easy': 6, 'medium': 3, 'hard': 1})
    """
    if round_method not in ROUND_METHODS:
        raise ValueError(f"round_method={round_method!r} is not one of {ROUND_METHODS}")
    if num_generations < 1:
        raise ValueError(f"num_generations={num_generations} must be >= 1")
    if round_method == "floor":
        return {"easy": 2 * num_generations // 3, "medium": num_generations // 3, "hard": 1}
    return {"easy": -(-2 * num_generations // 3), "medium": -(-num_generations // 3), "hard": 1}


def coverage_counts(lengths: Sequence[int], buckets: Sequence[str], thresholds: Sequence[int]
                    ) -> dict[str, tuple[list[int], int]]:
    """Per bucket: (responses with length <= l for each threshold l, all the bucket's responses), so that
    coverage(l) = count / total (spec 8(b): over *all* the bucket's responses, correct or not). Counts add up
    across processes.

    >>> coverage_counts([3, 9, 12, 5], ["easy", "easy", "hard", "hard"], [4, 8, 16])["hard"]
    ([0, 1, 2], 2)
    """
    if len(lengths) != len(buckets):
        raise ValueError(f"{len(lengths)} lengths for {len(buckets)} buckets")
    out = {b: ([0] * len(thresholds), 0) for b in BUCKETS}
    for length, bucket in zip(lengths, buckets):
        counts, total = out[bucket]
        for j, limit in enumerate(thresholds):
            counts[j] += int(length <= limit)
        out[bucket] = (counts, total + 1)
    return out


def targets_from_coverage(coverage: Mapping[str, tuple[Sequence[int], int]], *, num_generations: int,
                          thresholds: Sequence[int], default: int, round_method: str = "floor",
                          expected_correct: int = 1) -> dict[str, int]:
    """L_A of each bucket: the smallest threshold l with ECR(l) >= `expected_correct`, else `default`.

    ECR(l) = floor(coverage(l) * n_d) (``floor``; computed exactly as (count * n_d) // total) or coverage(l) * n_d
    (``ceil``), n_d from `expected_correct_counts`. A target is never above `default` (the released code starts
    from the batch's maximum response length and keeps a threshold only when smaller). An empty bucket has
    coverage 0 and gets `default`.

    >>> cov = {"easy": ([1, 2, 8], 8), "medium": ([1, 4, 8], 8), "hard": ([7, 7, 8], 8)}
    >>> targets_from_coverage(cov, num_generations=8, thresholds=[8, 16, 32], default=64)
    {'easy': 16, 'medium': 16, 'hard': 32}
    """
    n_d = expected_correct_counts(num_generations, round_method)
    out = {}
    for bucket in BUCKETS:
        counts, total = coverage.get(bucket, ([0] * len(thresholds), 0))
        if len(counts) != len(thresholds):
            raise ValueError(f"bucket {bucket!r}: {len(counts)} coverage counts for {len(thresholds)} thresholds")
        target = default
        for limit, count in sorted(zip(thresholds, counts)):
            if total <= 0:
                break
            ecr_ok = ((count * n_d[bucket]) // total >= expected_correct if round_method == "floor"
                      else count * n_d[bucket] >= expected_correct * total)
            if ecr_ok:
                target = min(target, int(limit))
                break
        out[bucket] = target
    return out


def select_targets(lengths: Sequence[int], correct: Sequence[Any], group_ids: Sequence[Any], *,
                   num_generations: int, thresholds: Sequence[int], default: int, round_method: str = "floor",
                   expected_correct: int = 1) -> dict[str, int]:
    """LASER-D's adaptive targets from a monitoring set (spec 8(b)): bucket the monitor prompts by accuracy over
    their N rollouts (`monitor_buckets`), then `coverage_counts` and `targets_from_coverage`.

    `lengths` / `correct` / `group_ids`: one entry per monitor response (rows of a prompt share a group id).

    >>> ids = [0] * 3 + [1] * 3
    >>> select_targets([4, 6, 30, 20, 25, 40], [1, 1, 1, 0, 0, 1], ids, num_generations=3, thresholds=[8, 16, 32, 48],
    ...                default=64)
    {'easy': 8, 'medium': 64, 'hard': 48}
    """
    buckets = monitor_buckets(correct, group_ids)
    coverage = coverage_counts(lengths, buckets, thresholds)
    return targets_from_coverage(coverage, num_generations=num_generations, thresholds=thresholds, default=default,
                                 round_method=round_method, expected_correct=expected_correct)


# ---- the shaped reward ------------------------------------------------------------------------------

def step_bonus(score: float | None, length: int, target: int, alpha: float) -> float:
    """LASER's step length reward: `alpha` for a correct response (C = 1) of at most `target` tokens, else 0.

    >>> step_bonus(1.0, 30, 32, 0.5), step_bonus(1.0, 33, 32, 0.5), step_bonus(-0.5, 10, 32, 0.5)
    (0.5, 0.0, 0.0)
    """
    return alpha if score == CORRECT and length <= target else 0.0


def exploration_bonus(score: float | None, length: int, target: int, alpha: float, tokens: Sequence[Any]) -> float:
    """LASER-DE's exploration bonus: `alpha` for a wrong answer (C = -0.5) longer than `target` that is not
    repetitive (`is_repetitive(tokens)`), else 0. Missing answers (C = -1) and correct ones never get it.

    >>> exploration_bonus(-0.5, 40, 32, 0.5, list(range(40))), exploration_bonus(-1.0, 40, 32, 0.5, list(range(40)))
    (0.5, 0.0)
    """
    if score != WRONG or length <= target:
        return 0.0
    return 0.0 if is_repetitive(tokens) else alpha


def _row_targets(name: str, targets: int | Mapping[str, int] | None, buckets: list[str] | None, n: int) -> list[int]:
    if targets is None:
        raise ValueError(f"{name} reward needs laser_targets (an int, or {{easy, medium, hard}} token targets); "
                         "recipes.laser.LASER passes them, or bind them in the reward's kwargs")
    if isinstance(targets, Mapping):
        missing = [b for b in BUCKETS if b not in targets]
        if missing:
            raise ValueError(f"{name} reward: laser_targets={dict(targets)} lacks bucket(s) {missing}")
        if buckets is None:
            raise ValueError(f"{name} reward: per-bucket laser_targets need group_ids (the trainer passes them)")
        return [int(targets[b]) for b in buckets]
    return [int(targets)] * n


def _laser(name: str, completions: list, answer: list | None, *, targets, alpha: float, require_think: bool,
           completion_lengths, group_ids, explore: bool, token_ids, info: dict | None,
           timeout_seconds: int | None) -> list[float | None]:
    n = len(completions)
    if answer is None:
        raise ValueError(f"{name} reward needs the per-row column 'answer' (gold answers)")
    if completion_lengths is None or len(completion_lengths) != n:
        raise ValueError(f"{name} reward needs completion_lengths (one token count per completion; the trainer "
                         f"passes it), got {None if completion_lengths is None else len(completion_lengths)} for {n}")
    if group_ids is not None and len(group_ids) != n:
        raise ValueError(f"{name} reward: {len(group_ids)} group_ids for {n} completions")
    if token_ids is not None and len(token_ids) != n:
        raise ValueError(f"{name} reward: {len(token_ids)} completion_token_ids for {n} completions")
    if not math.isfinite(alpha):
        raise ValueError(f"{name} reward: laser_alpha={alpha} must be a finite number")
    scores = [correctness_score(c, g, require_think=require_think, timeout_seconds=timeout_seconds)
              for c, g in zip(completions, answer)]
    buckets = difficulty_buckets([s == CORRECT for s in scores], group_ids) if group_ids is not None else None
    row_targets = _row_targets(name, targets, buckets, n)
    rewards: list[float | None] = []
    kinds: list[str] = []
    for i, (score, length, target) in enumerate(zip(scores, completion_lengths, row_targets)):
        if score is None:
            rewards.append(None)
            kinds.append("none")
            continue
        bonus = step_bonus(score, int(length), target, alpha)
        kind = "length" if bonus else "none"
        if explore and not bonus and score == WRONG and int(length) > target:
            tokens = token_ids[i] if token_ids is not None else completion_text(completions[i]).split()
            bonus = exploration_bonus(score, int(length), target, alpha, tokens)
            kind = "explore" if bonus else "repetitive"
        rewards.append(score + bonus)
        kinds.append(kind)
    if info is not None:
        info.update(correctness=scores, bucket=buckets or ["none"] * n, target=row_targets, bonus=kinds)
    return rewards


@register_reward("laser_correctness")
def laser_correctness_reward(prompts: list, completions: list, answer: list | None = None, *,
                             require_think: bool = True, timeout_seconds: int | None = 5, **kwargs) -> list[float | None]:
    r"""C(y) alone (`correctness_score`): LASER's reward without the length bonus, the paper's baseline reward. A plain
    reward any recipe can use (GRPO against LASER in `r1 compare --preset laser`).

    >>> laser_correctness_reward(None, [r"\boxed{4}", r"\boxed{5}", "4"], ["4"] * 3, require_think=False)
    [1.0, -0.5, -1.0]
    """
    return [correctness_score(c, gold, require_think=require_think, timeout_seconds=timeout_seconds)
            for c, gold in zip(completions, answer if answer is not None else [None] * len(completions))]


@register_reward("laser")
def laser_reward(prompts: list, completions: list, answer: list | None = None, *, laser_targets: int | None = None,
                 laser_alpha: float = 0.5, require_think: bool = True, completion_lengths: list[int] | None = None,
                 group_ids: list | None = None, laser_info: dict | None = None, timeout_seconds: int | None = 5,
                 **kwargs) -> list[float | None]:
    r"""LASER: ``C + alpha * 1[C = 1] * 1[L <= L_T]`` with one target L_T = `laser_targets` (an int).

    `laser_alpha`: alpha (0.5). `require_think`: see `correctness_score`. `laser_info`: a dict to fill with
    per-row ``correctness``, ``bucket``, ``target``, ``bonus`` (length / explore / repetitive / none).

    >>> laser_reward(None, [r"\boxed{4}", r"\boxed{4}", r"\boxed{5}", "4"], ["4"] * 4, laser_targets=10,
    ...              require_think=False, completion_lengths=[8, 12, 8, 8])
    [1.5, 1.0, -0.5, -1.0]
    """
    if isinstance(laser_targets, Mapping):
        raise ValueError("laser reward uses one target L_T (an int); per-bucket targets are the laser_d reward")
    return _laser("laser", completions, answer, targets=laser_targets, alpha=laser_alpha, require_think=require_think,
                  completion_lengths=completion_lengths, group_ids=group_ids, explore=False, token_ids=None,
                  info=laser_info, timeout_seconds=timeout_seconds)


@register_reward("laser_d")
def laser_d_reward(prompts: list, completions: list, answer: list | None = None, *,
                   laser_targets: int | Mapping[str, int] | None = None, laser_alpha: float = 0.5,
                   require_think: bool = True, completion_lengths: list[int] | None = None,
                   group_ids: list | None = None, laser_info: dict | None = None, timeout_seconds: int | None = 5,
                   **kwargs) -> list[float | None]:
    r"""LASER-D: LASER with the target of the row's difficulty bucket, ``laser_targets[bucket]``; the bucket
    comes from the group accuracy in this batch (`difficulty_buckets` over `group_ids`). An int target is the
    same for every bucket (the released code's fallback before the first monitor pass). Options as `laser_reward`.

    >>> done = [r"\boxed{4}"] * 3 + [r"\boxed{4}", r"\boxed{5}", r"\boxed{5}"]
    >>> laser_d_reward(None, done, ["4"] * 6, laser_targets={"easy": 8, "medium": 16, "hard": 32},
    ...                require_think=False, completion_lengths=[8, 9, 20] + [12, 8, 8], group_ids=[0] * 3 + [1] * 3)
    [1.5, 1.0, 1.0, 1.5, -0.5, -0.5]
    """
    return _laser("laser_d", completions, answer, targets=laser_targets, alpha=laser_alpha,
                  require_think=require_think, completion_lengths=completion_lengths, group_ids=group_ids,
                  explore=False, token_ids=None, info=laser_info, timeout_seconds=timeout_seconds)


@register_reward("laser_de")
def laser_de_reward(prompts: list, completions: list, answer: list | None = None, *,
                    laser_targets: int | Mapping[str, int] | None = None, laser_alpha: float = 0.5,
                    require_think: bool = True, completion_lengths: list[int] | None = None,
                    group_ids: list | None = None, completion_token_ids: list[list[int]] | None = None,
                    laser_info: dict | None = None, timeout_seconds: int | None = 5,
                    **kwargs) -> list[float | None]:
    r"""LASER-DE: LASER-D plus `exploration_bonus`: +alpha for a wrong (C = -0.5) response longer than its
    target that `is_repetitive` does not flag. Repetition is checked on `completion_token_ids` (the policy's
    tokens, which the recipe passes), or on the whitespace-split text when they are not given.

    >>> texts = [r"\boxed{4}", "a b c d e f g h i j " + r"\boxed{5}", "a b a b a b a b a b " + r"\boxed{5}"]
    >>> laser_de_reward(None, texts, ["4"] * 3, laser_targets=8, require_think=False, completion_lengths=[8, 11, 11],
    ...                 group_ids=[0, 0, 0])
    [1.5, 0.0, -0.5]
    """
    return _laser("laser_de", completions, answer, targets=laser_targets, alpha=laser_alpha,
                  require_think=require_think, completion_lengths=completion_lengths, group_ids=group_ids,
                  explore=True, token_ids=completion_token_ids, info=laser_info, timeout_seconds=timeout_seconds)
