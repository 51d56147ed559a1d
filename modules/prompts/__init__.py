"""Prompt builders: pPE prior prompts (`STRATEGIES`, `instruction`, `prior_prompt`)."""

from __future__ import annotations

from modules.prompts.prior import ANSWER_TAG, STRATEGIES, PriorStrategy, get_strategy, instruction, prior_prompt

__all__ = ["ANSWER_TAG", "STRATEGIES", "PriorStrategy", "get_strategy", "instruction", "prior_prompt"]
