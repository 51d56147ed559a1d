"""LightningDataModules and synthetic tasks: prompts (RL) and prompt/response rows (SFT) from JSONL / `datasets` /
Python lists / tasks."""

from __future__ import annotations

from datamodules.errors import DataConfigError
from datamodules.prompts import PromptBatches, PromptDataModule, load_rows, prepare_rows, split_held_out
from datamodules.sft import SFTDataModule
from datamodules.tasks import TASKS, make_arithmetic, make_countdown, make_task

__all__ = [
    "TASKS",
    "DataConfigError",
    "PromptBatches",
    "PromptDataModule",
    "SFTDataModule",
    "load_rows",
    "make_arithmetic",
    "make_countdown",
    "make_task",
    "prepare_rows",
    "split_held_out",
]
