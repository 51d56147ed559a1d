"""`SampleTable`: print a few sampled completions with their rewards and advantages during training."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from rich.console import Console
from rich.table import Table
from rich.text import Text

from modules.rollout.batch import RolloutBatch


class SampleTable(L.Callback):
    """Every `every_n_steps` optimizer steps, print a rich table of rows of `pl_module.last_rollout`.

    Columns: prompt, completion, one per reward function, total reward, advantage. The first
    `num_samples` rows are shown: rows of a group are adjacent, so these are usually completions of the
    same prompt, which shows how the group's rewards became advantages. Long texts keep their start and
    their end (where the final answer usually is), joined by " … ". Printed on global rank 0 only, to stderr.
    """

    def __init__(self, every_n_steps: int = 10, num_samples: int = 4, max_chars: int = 300,
                 console: Console | None = None) -> None:
        """
        Args:
            every_n_steps: print when `trainer.global_step` is a positive multiple of this; 0 disables.
            num_samples: how many rows of the rollout to show.
            max_chars: longer prompts and completions are shortened to about this many characters.
            console: where to print (default: a rich Console on stderr).
        """
        for name, value, low in (("every_n_steps", every_n_steps, 0), ("num_samples", num_samples, 1),
                                 ("max_chars", max_chars, 8)):
            if int(value) < low:
                raise ValueError(f"SampleTable({name}={value}): must be >= {low}")
        self.every_n_steps = int(every_n_steps)
        self.num_samples = int(num_samples)
        self.max_chars = int(max_chars)
        self.console = console or Console(stderr=True)
        self._last_step = -1

    def render(self, rollout: RolloutBatch, *, title: str | None = None) -> Table:
        """A rich table of the first `num_samples` rows of `rollout`."""
        table = Table(title=title, show_lines=True, expand=False)
        table.add_column("prompt", overflow="fold")
        table.add_column("completion", overflow="fold")
        names = list(rollout.reward_names)
        for name in names:
            table.add_column(name, justify="right")
        table.add_column("reward", justify="right", style="bold")
        table.add_column("advantage", justify="right")
        advantages = _row_advantages(rollout)
        for i in range(min(self.num_samples, len(rollout))):
            per_func = [_fmt(_cell(rollout.rewards_per_func, i, j)) for j in range(len(names))]
            table.add_row(
                Text(shorten(prompt_text(rollout.prompts[i]), self.max_chars)),
                Text(shorten(rollout.completions[i], self.max_chars)),
                *per_func,
                _fmt(_cell(rollout.rewards, i)),
                _fmt(None if advantages is None else advantages[i]),
            )
        return table

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps == 0 or step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        rollout = getattr(pl_module, "last_rollout", None)
        if rollout is None or not trainer.is_global_zero:
            return
        self.console.print(self.render(rollout, title=f"samples at step {step}"))


def prompt_text(prompt: Any) -> str:
    """A prompt as one string: chat messages become "role: content" lines."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        return "\n".join(f"{m.get('role', '?')}: {_content(m.get('content', ''))}" for m in prompt)
    return str(prompt)


def shorten(text: str, max_chars: int) -> str:
    """Keep the first and last parts of `text` so that it fits in about `max_chars` characters."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    head = (max_chars - 3) // 2
    tail = max_chars - 3 - head
    return f"{text[:head]} … {text[-tail:]}"


def _content(content: Any) -> str:
    if isinstance(content, list):  # multimodal content parts: keep the text parts
        return " ".join(part.get("text", f"<{part.get('type', '?')}>") for part in content if isinstance(part, dict))
    return str(content)


def _row_advantages(rollout: RolloutBatch) -> list[float] | None:
    """Per-row advantage; per-token advantages (N, T) are averaged over the trained tokens."""
    adv = rollout.advantages
    if adv is None:
        return None
    if adv.dim() == 2:
        mask = rollout.completion_mask.to(adv.dtype)
        adv = (adv * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # (N,)
    return adv.float().tolist()


def _cell(values: Any, i: int, j: int | None = None) -> float | None:
    if values is None:
        return None
    value = float(values[i] if j is None else values[i, j])
    return None if math.isnan(value) else value


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
