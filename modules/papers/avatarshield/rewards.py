"""AvatarShield (arXiv 2505.15173): real/fake answer parsing, the accuracy, format and temporal compensation rewards,
and forgery-detection metrics.

Spec section 10. The detector watches a clip's frames and answers in the R1 layout (spec 10(d) [unverified])::

    <think> ... </think> <answer> fake </answer>

Rewards, each a pluggable callable with the shared contract ``fn(prompts, completions, **columns)``:

- `avatar_accuracy` [page, exact form unverified]: 1 when the label in ``<answer>`` equals the gold ``label``
  column ("real" / "fake"), else 0.
- `avatar_format` [unverified]: the shared ``format`` reward with a pattern that also asks the answer to be one
  of the two labels.
- `avatar_temporal`: the temporal compensation reward. The paper names it, but its formula was not retrieved;
  this is the spec's hypothesis [unverified], a T-GRPO-style bonus (Video-R1, arXiv 2503.21776): for each clip,
  with ``p`` = accuracy of the completions that saw the frames in order and ``p~`` = accuracy of those that saw
  them shuffled, every *correct* ordered completion gets ``alpha`` when ``p >= mu * p~`` (Video-R1's defaults and
  code: ``alpha = 0.3``, ``mu = 0.8``, bonus only where the accuracy reward is positive). The spec's wording
  "when accuracy with ordered frames *exceeds* accuracy with shuffled frames" is the other reading, ``p > p~``,
  available as ``rule="exceeds"``. The group maths is the pure function `temporal_bonus`.

Labels. The answer is read from the last ``<answer>...</answer>`` (case, surrounding whitespace and a trailing
period ignored). ``real`` and ``fake`` are the labels; with ``synonyms=True`` (default) `LABEL_SYNONYMS` also reads
``ai-generated`` / ``ai generated`` as ``fake``, the words of the spec's question ("Is this video real or
AI-generated?"). The spec mentions no other synonyms, so "authentic", "forged", "deepfake" are *not* read (they
score 0). The format reward accepts only ``real`` / ``fake``, the template's answer set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from modules.rewards.accuracy import extract_answer, normalize_text
from modules.rewards.format import format_reward
from modules.rewards.registry import completion_text, register_reward

LABELS = ("real", "fake")
"""The gold labels (the ``label`` column)."""

FORGERY_TYPES = ("real", "teleport", "flicker", "texture")
"""Values of the ``forgery_type`` column of ``fake_clips`` ("real" for a genuine clip), the keys of
`forgery_metrics`' per-type accuracies."""

LABEL_SYNONYMS = {"real": "real", "fake": "fake", "ai-generated": "fake", "ai generated": "fake"}
"""Normalised answer -> label with ``synonyms=True``: the labels plus the spec's own word for fake, "AI-generated"
(spec 10(d)'s question). Answers outside this table parse as None (scored wrong)."""

AVATAR_FORMAT_PATTERN = (r"(?is)<think>(?:(?!</?think>|</?answer>).)*</think>\s*"
                         r"<answer>\s*(?:real|fake)\s*</answer>")
"""`format_reward`'s ``pattern`` for `avatar_format` (fullmatched against the stripped completion): one
``<think>`` block (no tags nested inside), whitespace, one ``<answer>`` block holding only ``real`` or ``fake``
(any case, spaces around it allowed)."""

TEMPORAL_ALPHA, TEMPORAL_MU = 0.3, 0.8
"""The temporal bonus and the threshold ratio of T-GRPO (Video-R1's paper and code) [unverified for AvatarShield]."""

TEMPORAL_RULES = ("t_grpo", "exceeds")
"""When the temporal bonus is granted: ``t_grpo`` ``p >= mu * p~`` (Video-R1, default), ``exceeds`` ``p > p~``
(the spec's paraphrase; `mu` unused)."""


# ---- parsing ------------------------------------------------------------------------------------------

def parse_label(completion: Any, *, synonyms: bool = True) -> str | None:
    """The label ("real" / "fake") answered in the last ``<answer>...</answer>`` of `completion`, or None when there
    is no answer block or its text is not a label (nor, with `synonyms`, a `LABEL_SYNONYMS` entry).

    >>> parse_label("<think>jumps</think><answer> Fake. </answer>"), parse_label("<answer>AI-generated</answer>")
    ('fake', 'fake')
    >>> parse_label("<answer>AI-generated</answer>", synonyms=False), parse_label("fake"), parse_label(
    ...     "<answer>authentic</answer>")
    (None, None, None)
    """
    inner = extract_answer(completion_text(completion), "answer_tag")
    if inner is None:
        return None
    text = normalize_text(inner)
    return LABEL_SYNONYMS.get(text) if synonyms else (text if text in LABELS else None)


def _gold(value: Any) -> str | None:
    if value is None:
        return None
    gold = normalize_text(value)
    if gold not in LABELS:
        raise ValueError(f"avatarshield: gold label {value!r} is not one of {LABELS}")
    return gold


def label_correct(completions: Sequence, label: Sequence | None, *, synonyms: bool = True,
                  name: str = "avatar_accuracy") -> list[float | None]:
    """Per row 1.0 when the parsed answer equals the gold label, 0.0 otherwise (no answer = wrong), None where the
    gold label is None. Raises when `label` is missing or a gold is not a label."""
    if label is None:
        raise ValueError(f"{name} needs the `label` column (gold 'real' / 'fake' per row)")
    out: list[float | None] = []
    for completion, gold in zip(completions, label, strict=True):
        gold = _gold(gold)
        out.append(None if gold is None else float(parse_label(completion, synonyms=synonyms) == gold))
    return out


# ---- rewards ------------------------------------------------------------------------------------------

@register_reward("avatar_accuracy")
def avatar_accuracy(prompts: list, completions: list, *, label: Sequence | None = None, synonyms: bool = True,
                    **kwargs) -> list[float | None]:
    """Accuracy detection reward [page; exact form unverified]: 1.0 when the label in the last ``<answer>`` block
    (`parse_label`; `synonyms` reads "AI-generated" as fake) equals the ``label`` column, else 0.0 (a missing or
    unreadable answer is 0.0); None where the gold label is None.

    >>> avatar_accuracy(None, ["<think>a</think><answer>REAL</answer>", "<answer>real</answer>", "real"],
    ...                 label=["real", "fake", "real"])
    [1.0, 0.0, 0.0]
    """
    return label_correct(completions, label, synonyms=synonyms)


@register_reward("avatar_format")
def avatar_format(prompts: list, completions: list, *, pattern: str = AVATAR_FORMAT_PATTERN, **kwargs) -> list[float]:
    """Format reward [unverified]: the shared ``format`` reward with `AVATAR_FORMAT_PATTERN`, i.e. 1.0 for
    ``<think>...</think>`` then ``<answer>real|fake</answer>`` (whitespace around the blocks and the label allowed,
    any case, each block once), else 0.0.

    >>> avatar_format(None, ["<think>a</think>\\n<answer> Fake </answer>", "<think>a</think><answer>maybe</answer>"])
    [1.0, 0.0]
    """
    return format_reward(prompts, completions, pattern=pattern, **kwargs)


def _check_binary(name: str, values: Sequence) -> list[float]:
    out = []
    for v in values:
        x = float(v)
        if x not in (0.0, 1.0):
            raise ValueError(f"temporal_bonus: {name} holds {v!r}; give correctness as 0 / 1 (or bools)")
        out.append(x)
    return out


def temporal_bonus(correct_ordered: Sequence, correct_shuffled: Sequence, *, alpha: float = TEMPORAL_ALPHA,
                   mu: float = TEMPORAL_MU, rule: str = "t_grpo") -> list[float]:
    """The temporal compensation bonus of one clip's ordered completions [unverified: T-GRPO's form, spec 10(b)].

    `correct_ordered` (G,): correctness (0 / 1 or bools) of the G completions that saw the clip's frames in order;
    `correct_shuffled` (G~,): of the G~ that saw them shuffled (G, G~ >= 1). With ``p = mean(correct_ordered)`` and
    ``p~ = mean(correct_shuffled)``, the bonus is granted when ``p >= mu * p~`` (``rule="t_grpo"``, Video-R1) or
    ``p > p~`` (``rule="exceeds"``); then each correct ordered completion gets `alpha`, a wrong one 0. Returns (G,)
    floats, all 0 when not granted.

    >>> temporal_bonus([1, 1, 0, 0], [1, 1, 1, 0])  # p = 0.5 < 0.8 * 0.75 = 0.6: not granted
    [0.0, 0.0, 0.0, 0.0]
    >>> temporal_bonus([1, 1, 1, 0], [1, 1, 1, 0]), temporal_bonus([1, 1, 1, 0], [1, 1, 1, 0], rule="exceeds")
    ([0.3, 0.3, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0])
    """
    if rule not in TEMPORAL_RULES:
        raise ValueError(f"temporal_bonus: rule={rule!r} is not one of {TEMPORAL_RULES}")
    if not (math.isfinite(alpha) and math.isfinite(mu) and mu >= 0):
        raise ValueError(f"temporal_bonus: need finite alpha and mu >= 0; got alpha={alpha}, mu={mu}")
    ordered = _check_binary("correct_ordered", correct_ordered)
    shuffled = _check_binary("correct_shuffled", correct_shuffled)
    if not ordered or not shuffled:
        raise ValueError(f"temporal_bonus needs at least one ordered and one shuffled completion; got "
                         f"{len(ordered)} and {len(shuffled)}")
    p, p_shuffled = sum(ordered) / len(ordered), sum(shuffled) / len(shuffled)
    granted = p >= mu * p_shuffled if rule == "t_grpo" else p > p_shuffled
    return [float(alpha) if granted and c == 1.0 else 0.0 for c in ordered]


@register_reward("avatar_temporal")
def avatar_temporal(prompts: list, completions: list, *, label: Sequence | None = None,
                    clip_id: Sequence | None = None, frames_shuffled: Sequence | None = None,
                    group_ids: Sequence | None = None, alpha: float = TEMPORAL_ALPHA, mu: float = TEMPORAL_MU,
                    rule: str = "t_grpo", synonyms: bool = True, **kwargs) -> list[float | None]:
    """Temporal compensation reward [unverified: T-GRPO-style hypothesis, spec 10(b)], per row of a batch that
    shows each clip both in order and shuffled (``fake_clips.with_shuffled_copies``).

    Rows are pooled by ``clip_id`` over the batch: a clip's ordered rows (``frames_shuffled`` False) and shuffled
    rows (True) give the correctness lists of `temporal_bonus` (correctness = `avatar_accuracy` against ``label``,
    with `synonyms`). Then:

    - an ordered row gets its `temporal_bonus`: `alpha` when it is correct and its clip's ordered accuracy
      ``p >= mu * p~`` (``rule="t_grpo"``) or ``p > p~`` (``rule="exceeds"``), else 0.0;
    - a shuffled row gets None (the bonus does not apply to it; in Video-R1 shuffled completions only estimate p~);
    - every row of a clip without ordered or without shuffled rows gets None (e.g. evaluation batches, which have
      no shuffled copies), and so does a row whose gold label is None (it is left out of p and p~).

    ``group_ids`` (the trainer's GRPO groups) are checked: a group must show a single clip (the recipe may keep a
    clip's ordered and shuffled rows in one merged group or in two groups; the bonus is the same), else ValueError.

    >>> done = ["<think>t</think><answer>fake</answer>", "<think>t</think><answer>real</answer>"]
    >>> avatar_temporal(None, done * 2, label=["fake"] * 4, clip_id=["c"] * 4,
    ...                 frames_shuffled=[False, False, True, True], group_ids=[0, 0, 0, 0])
    [0.3, 0.0, None, None]
    """
    missing = [k for k, v in (("label", label), ("clip_id", clip_id), ("frames_shuffled", frames_shuffled),
                              ("group_ids", group_ids)) if v is None]
    if missing:
        raise ValueError(f"avatar_temporal needs the columns {missing} (rows from fake_clips with_shuffled_copies; "
                         "group_ids come from the trainer)")
    n = len(completions)
    for name, col in (("label", label), ("clip_id", clip_id), ("frames_shuffled", frames_shuffled),
                      ("group_ids", group_ids)):
        if len(col) != n:
            raise ValueError(f"avatar_temporal: {name} has {len(col)} values for {n} completions")
    group_clip: dict[Any, Any] = {}
    for gid, clip in zip(group_ids, clip_id):
        if group_clip.setdefault(gid, clip) != clip:
            raise ValueError(f"avatar_temporal: group {gid!r} holds clips {group_clip[gid]!r} and {clip!r}; a group "
                             "must show one clip (its ordered and/or shuffled frames)")
    correct = label_correct(completions, label, synonyms=synonyms, name="avatar_temporal")
    clips: dict[Any, tuple[list[int], list[int]]] = {}
    for i, (clip, shuffled) in enumerate(zip(clip_id, frames_shuffled)):
        if correct[i] is not None:
            clips.setdefault(clip, ([], []))[1 if shuffled else 0].append(i)
    out: list[float | None] = [None] * n
    for ordered, shuffled in clips.values():
        if ordered and shuffled:
            bonus = temporal_bonus([correct[i] for i in ordered], [correct[i] for i in shuffled], alpha=alpha,
                                   mu=mu, rule=rule)
            for i, b in zip(ordered, bonus):
                out[i] = b
    return out


# ---- evaluation ---------------------------------------------------------------------------------------

def forgery_metrics(completions: Sequence, label: Sequence, forgery_type: Sequence, *,
                    synonyms: bool = True) -> dict[str, float]:
    """Detection metrics over a batch (one completion per row): ``accuracy`` (all rows), ``accuracy/<type>`` for
    each of `FORGERY_TYPES` (rows of that ``forgery_type``; NaN when there are none), ``fake_rate`` (share of rows
    answered fake), ``parse_failure_rate`` (share with no readable label; they count as wrong and not fake) and
    ``n``. An empty batch gives NaN rates.

    >>> m = forgery_metrics(["<answer>real</answer>", "<answer>fake</answer>", "<answer>real</answer>", "oops"],
    ...                     ["real", "fake", "fake", "fake"], ["real", "teleport", "flicker", "texture"])
    >>> m["accuracy"], m["accuracy/teleport"], m["accuracy/flicker"], m["fake_rate"], m["parse_failure_rate"]
    (0.5, 1.0, 0.0, 0.25, 0.25)
    """
    rows = list(zip(completions, label, forgery_type, strict=True))
    nan = float("nan")
    hits: dict[str, list[int]] = {t: [0, 0] for t in FORGERY_TYPES}
    correct = fakes = failures = 0
    for completion, gold, kind in rows:
        if kind not in hits:
            raise ValueError(f"forgery_metrics: forgery_type {kind!r} is not one of {FORGERY_TYPES}")
        gold = _gold(gold)
        if gold is None:
            raise ValueError("forgery_metrics: every row needs a gold label ('real' / 'fake'), got None")
        pred = parse_label(completion, synonyms=synonyms)
        ok = pred == gold
        correct += ok
        fakes += pred == "fake"
        failures += pred is None
        hits[kind][0] += ok
        hits[kind][1] += 1
    n = len(rows)
    out = {"accuracy": correct / n if n else nan}
    out.update({f"accuracy/{t}": (k / m if m else nan) for t, (k, m) in hits.items()})
    out.update({"fake_rate": fakes / n if n else nan, "parse_failure_rate": failures / n if n else nan, "n": n})
    return out


__all__ = ["AVATAR_FORMAT_PATTERN", "FORGERY_TYPES", "LABELS", "LABEL_SYNONYMS", "TEMPORAL_ALPHA", "TEMPORAL_MU",
           "TEMPORAL_RULES", "avatar_accuracy", "avatar_format", "avatar_temporal", "forgery_metrics",
           "label_correct", "parse_label", "temporal_bonus"]
