"""The optimiser settings and learning-rate schedule shared by every training recipe (RL loop and SFT)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from modules.settings import SettingsError, check_choice, check_number

LR_SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, *, warmup_steps: int = 0, total_steps: int | None = None, schedule: str = "constant"
              ) -> float:
    """Learning-rate multiplier at optimiser step `step` (0-based): linear warmup over `warmup_steps`, then
    `constant` (1.0) or `cosine` decay to 0 at `total_steps` (the paper: cosine, 5% warmup, decay to 0).

    >>> [round(lr_factor(s, warmup_steps=2, total_steps=6, schedule="cosine"), 3) for s in range(6)]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule={schedule!r}; use one of {LR_SCHEDULES}")
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        if not total_steps:
            raise ValueError("the cosine schedule needs the total number of optimiser steps (set trainer.max_steps)")
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


PREFIX = "model.optimizer"


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW, gradient clipping and the learning-rate schedule (`model.optimizer.*` in a config)."""

    learning_rate: float = 1e-5
    """AdamW peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm of each parameter group to this (null = no clipping)."""
    warmup_steps: int = 0
    """Linear warmup steps (wins over warmup_ratio when > 0)."""
    warmup_ratio: float = 0.0
    """Warmup as a fraction of the total optimiser steps (needs a known total: trainer.max_steps)."""
    lr_schedule: str = "constant"
    """constant, or cosine (decays to 0 at the last optimiser step; needs trainer.max_steps)."""

    def __post_init__(self) -> None:
        check_number(f"{PREFIX}.learning_rate", self.learning_rate, low=0.0, low_open=True, fix="e.g. 1e-5")
        check_number(f"{PREFIX}.weight_decay", self.weight_decay, low=0.0)
        if len(tuple(self.adam_betas)) != 2:
            raise SettingsError(f"{PREFIX}.adam_betas={self.adam_betas!r}; give two numbers, e.g. [0.9, 0.99]")
        for beta in self.adam_betas:
            check_number(f"{PREFIX}.adam_betas", beta, low=0.0, high=1.0, high_open=True)
        if self.max_grad_norm is not None:
            check_number(f"{PREFIX}.max_grad_norm", self.max_grad_norm, low=0.0, low_open=True,
                         fix="a negative norm reverses the update and 0 zeroes it; null turns clipping off")
        check_number(f"{PREFIX}.warmup_steps", self.warmup_steps, low=0, integer=True)
        check_number(f"{PREFIX}.warmup_ratio", self.warmup_ratio, low=0.0, high=1.0, high_open=True)
        check_choice(f"{PREFIX}.lr_schedule", self.lr_schedule, LR_SCHEDULES)

    def build(self, groups: list[dict]) -> torch.optim.Optimizer:
        """AdamW over parameter groups (a group may set its own `lr`)."""
        return torch.optim.AdamW(groups, lr=self.learning_rate, weight_decay=self.weight_decay,
                                 betas=tuple(self.adam_betas))

    def schedule(self, optimizer: torch.optim.Optimizer, total_steps: int | None) -> torch.optim.lr_scheduler.LambdaLR:
        """The warmup + constant/cosine schedule over `total_steps` optimiser steps (None: unknown)."""
        if total_steps is None and (self.lr_schedule == "cosine" or (self.warmup_ratio and not self.warmup_steps)):
            raise SettingsError(f"{PREFIX}.lr_schedule=cosine / {PREFIX}.warmup_ratio need a known number of "
                                "optimiser steps; set trainer.max_steps")
        warmup = self.warmup_steps or (round(self.warmup_ratio * total_steps) if total_steps else 0)

        def factor(step: int) -> float:
            return lr_factor(step, warmup_steps=warmup, total_steps=total_steps, schedule=self.lr_schedule)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
