"""Reward functions (TRL contract ``fn(prompts, completions, **columns) -> list[float | None]``),
registered by name, and `RewardSet` for their weighted combination.

Registered here: ``format``, ``accuracy``, ``overlong``, ``length``, ``countdown``, ``reward_model`` (a
sequence-classification reward model). The papers' rewards
(``domain_correct``, ``tinyv``, ``laser_d``, ...) live in their packages under `modules.papers` and register when
`get_reward` first meets a name it does not know. A config may also name a user's function by dotted import path.
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
from modules.rewards.format import format_reward
from modules.rewards.length import length_penalty, overlong_reward, soft_overlong_punishment
from modules.rewards.reward_model import clear_reward_model_cache, load_reward_model, reward_model_reward

__all__ = [
    "RewardError",
    "RewardSet",
    "RewardSpec",
    "accuracy_reward",
    "clear_reward_model_cache",
    "completion_text",
    "countdown_reward",
    "extract_answer",
    "extract_boxed",
    "extract_last_number",
    "format_reward",
    "get_reward",
    "length_penalty",
    "list_rewards",
    "load_reward_model",
    "overlong_reward",
    "register_reward",
    "reward_model_reward",
    "soft_overlong_punishment",
]
