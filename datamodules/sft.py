"""(prompt, response) rows for supervised fine-tuning: `PromptDataModule` plus a checked `response` column.

The datamodule yields raw rows (a batch is a `list[dict]`, as for RL); the SFT LightningModule tokenises them
with its own tokenizer (`modules.sft.sft_example`), so no tokenizer travels through the data config.
Loading, templates, the held-out split and the resumable batch order are `PromptDataModule`'s.
"""

from __future__ import annotations

from typing import Any

from datamodules.errors import DataConfigError
from datamodules.prompts import PromptDataModule


def with_responses(rows: list[dict], response_column: str, *, what: str = "data") -> list[dict]:
    """Copies of `rows` with a checked, non-empty text `"response"` taken from `response_column`.

    >>> with_responses([{"prompt": "Q", "target": "A"}], "target")[0]["response"]
    'A'
    """
    out = []
    for i, row in enumerate(rows):
        if response_column not in row:
            raise DataConfigError(f"{what} row {i} has no response column {response_column!r}; columns found: "
                                  f"{list(row)}. Set --data.response_column to the column holding the target text")
        response = row[response_column]
        if not isinstance(response, str) or not response.strip():
            raise DataConfigError(f"{what} row {i}: the response ({response_column!r}) must be non-empty text, "
                                  f"found {response!r}; remove the row or fix it")
        out.append({**row, "response": response})
    return out


class SFTDataModule(PromptDataModule):
    """Prompt/response pairs for SFT from a file, a hub dataset, a Python list or a synthetic task.

    After `setup()`, `train_rows` and `val_rows` are dict rows with `"prompt"` (text or chat messages: for a
    multi-turn conversation, every turn before the final assistant answer), `"response"` (the final assistant
    text, the only part trained on) and every other column. Training batches are `PromptDataModule`'s seeded,
    resumable `PromptBatches`; `val_dataloader` yields the held-out rows in order (for `val/loss`), and
    `held_out_rows()` gives them to generation-based evaluation (`callbacks.HeldOutEval`).

    Args (beside every `PromptDataModule` option: source / rows / task, template, system_prompt, val_size, ...):
        response_column: Column holding the target response text (the final assistant turn).
        val_batch_size: Examples per validation batch (null = batch_size).
    """

    def __init__(self, response_column: str = "response", val_batch_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if val_batch_size is not None and val_batch_size < 1:
            raise DataConfigError(f"--data.val_batch_size={val_batch_size} must be >= 1 (or null)")
        self.response_column = response_column
        self.val_batch_size = val_batch_size or self.batch_size
        self._responses_checked = False

    def setup(self, stage: str | None = None) -> None:
        """Load and split as `PromptDataModule` does, then check and copy the response column (once)."""
        super().setup(stage)
        if self._responses_checked:
            return
        self.train_rows = with_responses(self.train_rows, self.response_column, what="training data")
        self.val_rows = with_responses(self.val_rows, self.response_column, what="held-out data")
        self._responses_checked = True

    def replace_train_rows(self, rows: list[dict], *, reason: str = "filtered") -> None:
        """Train on `rows` instead (e.g. the rows that passed verification filters); call before fitting starts.

        `reason` names the step in the error raised when too few rows remain.
        """
        self.setup("fit")
        if len(rows) < self.batch_size:
            raise DataConfigError(f"only {len(rows)} training row(s) remain after {reason} (of {len(self.train_rows)})"
                                  f" but --data.batch_size={self.batch_size}; add rows (--data.num_rows) or loosen "
                                  "the filters")
        self.train_rows = list(rows)
        self._batches = None

    def val_dataloader(self) -> RowBatches:
        """The held-out rows in order, `val_batch_size` per batch (empty when there is no held-out split); with
        several devices each rank takes every world_size-th row."""
        self.setup("validate")
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return RowBatches(self.val_rows[rank::world], self.val_batch_size)


class RowBatches:
    """Consecutive batches (`list[dict]`) of `rows`, in order; one loader to Lightning (a plain list of batches
    would read as several loaders)."""

    def __init__(self, rows: list[dict], batch_size: int) -> None:
        self.rows, self.batch_size = list(rows), int(batch_size)

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.rows), self.batch_size):
            yield [dict(r) for r in self.rows[i:i + self.batch_size]]


__all__ = ["RowBatches", "SFTDataModule", "with_responses"]
