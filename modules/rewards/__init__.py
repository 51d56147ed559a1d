"""Reward functions (TRL contract ``fn(prompts, completions, **columns) -> list[float | None]``),
registered by name, and `RewardSet` for their weighted combination.

Registered names: ``format``, ``accuracy``, ``overlong``, ``length``, ``countdown`` and the papers' rewards
(``domain_correct``, ``exact_structure``, ``general_verifier``, ``tinyv``, ``hybrid_correct``, ``toy_chat_rm``;
the LASER, NOVER, StepSearch, MoT and GELI rewards register when their module is imported). A config may also
name a user's function by dotted import path.
"""

from __future__ import annotations

from modules.rewards.registry import (
    RewardError,
    RewardSet,
    RewardSpec,
    completion_text,
    get_reward,
    list_rewards,
    register_reward,
)
from modules.rewards.accuracy import accuracy_reward, extract_answer, extract_boxed, extract_last_number
from modules.rewards.countdown import countdown_reward
from modules.rewards.disco import domain_correct_reward
from modules.rewards.format import format_reward
from modules.rewards.general_reasoner import general_verifier_reward
from modules.rewards.hybrid import hybrid_correct, toy_chat_rm
from modules.rewards.structure import exact_structure_reward
from modules.rewards.length import length_penalty, overlong_reward, soft_overlong_punishment
from modules.rewards.tinyv import tinyv_reward

__all__ = [
    "RewardError",
    "RewardSet",
    "RewardSpec",
    "accuracy_reward",
    "completion_text",
    "countdown_reward",
    "domain_correct_reward",
    "exact_structure_reward",
    "extract_answer",
    "extract_boxed",
    "extract_last_number",
    "format_reward",
    "hybrid_correct",
    "general_verifier_reward",
    "get_reward",
    "length_penalty",
    "list_rewards",
    "overlong_reward",
    "register_reward",
    "soft_overlong_punishment",
    "tinyv_reward",
    "toy_chat_rm",
]
