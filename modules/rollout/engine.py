"""The rollout-engine interface and the shared prompt rendering every engine uses."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from modules.rollout.batch import RolloutBatch
from modules.settings import SettingsError, check_choice, check_number


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are sampled (shared by every engine)."""

    max_new_tokens: int = 64
    """Completion budget in tokens; a completion that reaches it without EOS/stop is `truncated`."""
    temperature: float = 1.0
    """Sampling temperature (also divides the logits when scoring, as TRL does)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    repetition_penalty: float = 1.0
    """HF repetition penalty (1.0 = off)."""
    stop: list[str] | None = None
    """Stop strings; the stop string is kept in the completion text (rewards often need the closing tag)."""
    chat_template: str = "auto"
    """auto: use the tokenizer's chat template when it has one; always; never (raw prompt text)."""

    def __post_init__(self) -> None:
        p = "model.sampling"
        check_number(f"{p}.max_new_tokens", self.max_new_tokens, low=1, integer=True)
        check_number(f"{p}.temperature", self.temperature, low=0.0, low_open=True,
                     fix="greedy decoding is evaluation's job; sample with e.g. 0.7-1.0")
        check_number(f"{p}.top_p", self.top_p, low=0.0, high=1.0, low_open=True, fix="1.0 = off")
        check_number(f"{p}.top_k", self.top_k, low=0, integer=True, fix="0 = off")
        check_number(f"{p}.repetition_penalty", self.repetition_penalty, low=0.0, low_open=True, fix="1.0 = off")
        if self.stop is not None and any(not isinstance(s, str) or s == "" for s in self.stop):
            raise SettingsError(f"{p}.stop={self.stop!r}; stop strings must be non-empty (an empty one would cut "
                                "every completion at its first token)")
        check_choice(f"{p}.chat_template", self.chat_template, ("auto", "always", "never"))


class RolloutEngine(ABC):
    """Samples G completions per prompt and returns one `RolloutBatch` (rows of a group adjacent)."""

    sampling: SamplingSettings

    @abstractmethod
    def generate(self, prompts: list[Any], columns: dict[str, list[Any]], *, num_generations: int,
                 greedy: bool = False) -> RolloutBatch:
        """prompts: B dataset prompts (text or chat messages); columns: B values per field. The batch's `stats`
        hold at least `generate_s` and `generated_tokens`."""

    def sync_weights(self) -> None:
        """Push the policy's current weights into the engine (a no-op when the engine shares them)."""


def render_prompt(tokenizer, prompt: Any, *, system_prompt: str | None = None, chat_template: str = "auto") -> str:
    """The exact text the model is conditioned on: the chat template when used, else the raw prompt."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if chat_template not in ("auto", "always", "never"):
        raise ValueError(f"rollout.chat_template={chat_template!r}; use auto, always or never")
    if isinstance(prompt, list):  # chat messages
        if not has_template:
            raise ValueError("a prompt is a list of chat messages but the tokenizer has no chat_template")
        messages = list(prompt)
    else:
        if not isinstance(prompt, str):
            raise ValueError(f"a prompt must be text or a list of chat messages, got {type(prompt).__name__}")
        use = chat_template == "always" or (chat_template == "auto" and has_template)
        if chat_template == "always" and not has_template:
            raise ValueError("rollout.chat_template='always' but the tokenizer has no chat_template")
        if not use:
            return prompt if system_prompt is None else f"{system_prompt}\n\n{prompt}"
        messages = [{"role": "user", "content": prompt}]
    if system_prompt is not None and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}] + messages
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def render_prompts(tokenizer, prompts: list[Any], system_prompts: list[str | None], chat_template: str = "auto"
                   ) -> tuple[list[str], bool]:
    """(texts, add_special_tokens): every engine tokenizes these texts with that flag, so they all see the same ids.

    A chat template already writes BOS and role tokens; raw text gets the tokenizer's special tokens.
    """
    texts = [render_prompt(tokenizer, p, system_prompt=s, chat_template=chat_template)
             for p, s in zip(prompts, system_prompts)]
    templated = chat_template != "never" and getattr(tokenizer, "chat_template", None) is not None
    return texts, not templated


def repeat_columns(columns: dict[str, list[Any]], times: int) -> dict[str, list[Any]]:
    """Each value repeated `times` times in place (B -> B * times, groups adjacent)."""
    return {k: [v for v in values for _ in range(times)] for k, values in columns.items()}


def split_rows(rows: list[dict]) -> tuple[list[Any], dict[str, list[Any]]]:
    """[{prompt, answer, ...}] -> (prompts, {answer: [...], ...})."""
    if not rows:
        raise ValueError("empty batch of prompts")
    for i, row in enumerate(rows):
        if "prompt" not in row:
            raise ValueError(f"row {i} has no 'prompt' field (fields: {sorted(row)}); "
                             "set data.prompt_column or data.template")
    keys = [k for k in rows[0] if k != "prompt"]
    return [r["prompt"] for r in rows], {k: [r.get(k) for r in rows] for k in keys}
