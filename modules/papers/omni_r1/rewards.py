"""360-R1 / OmniVQA rewards (Zhang, Ye, Zheng, arXiv 2505.14197; spec 17 (b)): **our substitute**.

The paper names three GRPO rewards (reasoning-process similarity, answer semantic accuracy, format compliance) but
released no code, and its formulas, weights and thresholds were not found ([unverified]). What is here follows the
spec's suggested substitute ``R = sim(think, ref_cot) + sim(answer, ref_ans) + 1[format ok]``:

- ``omni_reasoning``: sim(content of the last ``<think>...</think>``, the row's `reasoning` column); 0 when the
  completion has no think block (or an empty one).
- ``omni_answer``: sim(content of the last ``<answer>...</answer>``, the row's `answer` column); 0 when there is
  no answer block (or an empty one).
- ``omni_format``: the shared ``format`` reward (1 for exactly ``<think>...</think>`` then ``<answer>...</answer>``,
  whitespace allowed around and between, each tag once; else 0), registered under this name as an alias.

sim(a, b) = max(0, min(1, e(a) . e(b))) with e the L2-normalised embedding of `encoder`: ``minilm``
(sentence-transformers all-MiniLM-L6-v2, the packaged offline copy; falls back to TF-IDF with one warning where
it is not installed) or ``tfidf`` (TF-IDF cosine, refit on each batch's distinct texts). Every batch is embedded
with one encoder call (completions' parts and references together). A row whose reference is missing scores None.

`answer_metrics` is the evaluation summary: exact match of the normalised answer per question type, and the mean
answer similarity.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from typing import Sequence

from modules.rewards.format import format_reward
from modules.rewards.registry import completion_text, register_reward
from modules.text_embeddings import pair_similarity, text_encoder

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCT = str.maketrans(string.punctuation, " " * len(string.punctuation))


def tag_content(text: str, tag: str) -> str | None:
    """The stripped content of the last ``<tag>...</tag>`` in `text`, or None when there is none or it is empty.

    >>> tag_content("<think> a </think><answer>x</answer><answer> red circle </answer>", "answer")
    'red circle'
    >>> tag_content("<think></think>", "think") is None
    True
    """
    found = re.findall(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", text, re.DOTALL)  # re caches the pattern
    return (found[-1].strip() or None) if found else None


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation to spaces, drop the articles a / an / the, collapse whitespace.

    >>> normalize_answer("  The Green-Square. ")
    'green square'
    """
    text = str(text).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def tag_similarities(completions: Sequence, references: Sequence, tag: str, *, encoder: str = "minilm"
                     ) -> list[float | None]:
    """sim(content of the last `tag` block, reference) per row: 0.0 without a (non-empty) block, None where the
    reference is missing or empty. One encoder call for the whole batch."""
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions but {len(references)} references")
    parts = [tag_content(completion_text(c), tag) for c in completions]
    refs = [None if r is None or not str(r).strip() else str(r) for r in references]
    rows = [i for i, (p, r) in enumerate(zip(parts, refs)) if p is not None and r is not None]
    out: list[float | None] = [0.0 if r is not None else None for r in refs]
    if rows:
        sims = pair_similarity(text_encoder(encoder), [parts[i] for i in rows], [refs[i] for i in rows])
        for i, s in zip(rows, sims):
            out[i] = s
    return out


@register_reward("omni_reasoning")
def omni_reasoning_reward(prompts: list, completions: list, *, reasoning: Sequence[str | None] | None = None,
                          encoder: str = "minilm", **kwargs) -> list[float | None]:
    """Our substitute for 360-R1's reasoning-process reward: sim(``<think>`` content, reference chain `reasoning`),
    in [0, 1]; 0 without a think block; None where the row has no reference chain.

    >>> r = omni_reasoning_reward(None, ["<think>red circle at yaw 90</think><answer>x</answer>", "<answer>x</answer>"],
    ...                           reasoning=["red circle at yaw 90", "red circle at yaw 90"], encoder="tfidf")
    >>> [round(v, 4) for v in r]
    [1.0, 0.0]
    """
    if reasoning is None:
        raise ValueError("omni_reasoning reward needs the `reasoning` column (the reference chain of each row)")
    return tag_similarities(completions, reasoning, "think", encoder=encoder)


@register_reward("omni_answer")
def omni_answer_reward(prompts: list, completions: list, *, answer: Sequence[str | None] | None = None,
                       encoder: str = "minilm", **kwargs) -> list[float | None]:
    """Our substitute for 360-R1's answer semantic-accuracy reward: sim(``<answer>`` content, reference `answer`),
    in [0, 1]; 0 without an answer block; None where the row has no reference answer.

    >>> r = omni_answer_reward(None, ["<think>t</think><answer>green square</answer>", "green square"],
    ...                        answer=["green square", "green square"], encoder="tfidf")
    >>> [round(v, 4) for v in r]
    [1.0, 0.0]
    """
    if answer is None:
        raise ValueError("omni_answer reward needs the `answer` column (the reference answer of each row)")
    return tag_similarities(completions, answer, "answer", encoder=encoder)


@register_reward("omni_format")
def omni_format_reward(prompts: list, completions: list, **kwargs) -> list[float]:
    """360-R1's format-compliance reward: the shared ``format`` reward with its defaults (1.0 for
    ``<think>...</think>`` then ``<answer>...</answer>``, whitespace allowed, each tag once; else 0.0).

    >>> omni_format_reward(None, [" <think>a</think>\\n<answer>b</answer> ", "<answer>b</answer><think>a</think>"])
    [1.0, 0.0]
    """
    return format_reward(prompts, completions, **kwargs)


def answer_metrics(completions: Sequence, answer: Sequence[str], question_type: Sequence[str], *,
                   encoder: str = "minilm") -> dict[str, float]:
    """Evaluation summary over a batch of completions (one per row).

    ``accuracy``, ``accuracy/<type>``: share of rows whose normalised ``<answer>`` content (`normalize_answer`)
    equals the normalised reference (no answer block = wrong); ``answer_similarity``, ``answer_similarity/<type>``:
    mean sim(answer, reference) as in ``omni_answer`` (0 without an answer block); ``count/<type>``: rows per type.

    >>> m = answer_metrics(["<answer>The red circle.</answer>", "<answer>blue</answer>", "no tags"],
    ...                    ["red circle", "green", "above"], ["spatial", "attribute", "spatial"], encoder="tfidf")
    >>> m["accuracy"], m["accuracy/spatial"], m["accuracy/attribute"], m["count/spatial"]
    (0.3333333333333333, 0.5, 0.0, 2.0)
    """
    if not len(completions) == len(answer) == len(question_type):
        raise ValueError(f"answer_metrics got {len(completions)} completions, {len(answer)} answers and "
                         f"{len(question_type)} question types")
    if not completions:
        return {}
    sims = tag_similarities(completions, answer, "answer", encoder=encoder)
    hits = []
    for c, gold in zip(completions, answer):
        pred = tag_content(completion_text(c), "answer")
        hits.append(float(pred is not None and gold is not None and normalize_answer(pred) == normalize_answer(gold)))
    by_type: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(question_type):
        by_type[str(t)].append(i)
    out = {"accuracy": sum(hits) / len(hits), "answer_similarity": sum(s or 0.0 for s in sims) / len(sims)}
    for t, rows in sorted(by_type.items()):
        out[f"accuracy/{t}"] = sum(hits[i] for i in rows) / len(rows)
        out[f"answer_similarity/{t}"] = sum(sims[i] or 0.0 for i in rows) / len(rows)
        out[f"count/{t}"] = float(len(rows))
    return out


__all__ = ["answer_metrics", "normalize_answer", "omni_answer_reward", "omni_format_reward",
           "omni_reasoning_reward", "tag_content", "tag_similarities"]
