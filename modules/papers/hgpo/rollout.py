"""HGPO's rollouts: groups forced half to the think tag and half to the no-think tag, and the mode a model picks
freely (`choose_modes`, also used by `callbacks.HybridAccuracy`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from modules.papers.hgpo.objectives import NO_THINK, THINK
from modules.papers.hgpo.rewards import parse_mode
from modules.rollout.batch import RolloutBatch
from modules.rollout.engine import repeat_columns
from modules.rollout.hf import HFGenerateEngine
from modules.rollout.prefix import generate_with_prefix

MODE_COLUMN = "hgpo_mode"  # per-row forced mode ("think" / "no_think"); reward functions see it too
MODE_TOKENS = ("first_divergent", "tag")


def tag_token_ids(tokenizer, think_tag: str, no_think_tag: str) -> dict[str, list[int]]:
    """{"think": ids, "no_think": ids} of the two tags as the forced completion prefixes."""
    return {THINK: list(tokenizer(think_tag, add_special_tokens=False)["input_ids"]),
            NO_THINK: list(tokenizer(no_think_tag, add_special_tokens=False)["input_ids"])}


def mode_token_span(prefixes: dict[str, list[int]], how: str = "first_divergent") -> dict[str, tuple[int, int]]:
    """{mode: (start, length)} of the mode token inside each forced prefix: `tag` = every token of the tag;
    `first_divergent` = the one token where the two tags' tokenisations first differ (the token that decides the
    mode; the whole tag when each tag is a single token, as in the paper).

    >>> mode_token_span({"think": [5, 7, 9], "no_think": [5, 8, 6, 9]})
    {'think': (1, 1), 'no_think': (1, 1)}
    """
    if how == "tag":
        return {m: (0, len(ids)) for m, ids in prefixes.items()}
    a, b = prefixes[THINK], prefixes[NO_THINK]
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return {THINK: (i, 1), NO_THINK: (i, 1)}
    raise ValueError(f"the tags' token ids {a} and {b} do not differ before one of them ends; use tags that are not "
                     "token prefixes of each other")


def forced_mode_rollout(engine: HFGenerateEngine, prompts: list[Any], columns: dict[str, list[Any]],
                        prefixes: dict[str, list[int]], per_mode: int, *, greedy: bool = False) -> RolloutBatch:
    """B adjacent groups (ids 0..B-1) of `per_mode` responses forced to start with the think prefix, then
    `per_mode` forced to start with the no-think prefix; the prefix tokens are trained (completion_mask = 1) and
    each row's mode is in `columns[MODE_COLUMN]`."""
    b, g = len(prompts), 2 * per_mode
    modes = [THINK] * per_mode + [NO_THINK] * per_mode
    batch = generate_with_prefix(engine, [p for p in prompts for _ in range(g)], repeat_columns(columns, g),
                                        [prefixes[m] for _ in range(b) for m in modes], train_prefix=True,
                                        greedy=greedy)
    batch.group_ids = torch.arange(b, device=batch.group_ids.device).repeat_interleave(g)  # (B * G,)
    batch.columns[MODE_COLUMN] = modes * b
    return batch


@torch.no_grad()
def choose_modes(engine: HFGenerateEngine, prompts: list[Any], columns: dict[str, list[Any]], think_tag: str,
                 no_think_tag: str, *, max_new_tokens: int, greedy: bool = False) -> list[str | None]:
    """The mode each prompt's free (unforced) response opens with: "think", "no_think" or None (neither tag).
    Only the first `max_new_tokens` tokens are generated, enough to read the tag."""
    sampling = engine.sampling
    engine.sampling = dataclasses.replace(sampling, max_new_tokens=max_new_tokens, stop=None)
    try:
        batch = engine.generate(prompts, columns, num_generations=1, greedy=greedy)
    finally:
        engine.sampling = sampling
    return [parse_mode(text, think_tag, no_think_tag) for text in batch.completions]
