"""`StepProgressBar`: one bar over optimiser steps (not epochs) with the numbers an RL run is watched by."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

# logged name -> short label, in display order
SHOWN = {"train/reward": "reward", "train/accuracy": "acc", "train/completion_length": "len",
         "train/kl": "kl", "train/time/step_s": "s/step"}


class StepProgressBar(TQDMProgressBar):
    """A tqdm bar from step 0 to `max_steps`, showing reward, accuracy, completion length, KL and seconds per step.

    Lightning's default bars count batches per epoch, and an RL run is bounded by `max_steps` with an
    open-ended epoch count ("Epoch 0/-2"); this one counts `global_step` (optimiser steps / generation batches)
    across epochs and resumes at the checkpoint's step. `r1 fit` adds it unless the config disables the bar.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = True) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)

    @staticmethod
    def _total(trainer: L.Trainer) -> int | None:
        return trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=self._total(trainer))
        self.train_progress_bar.initial = 0
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description("train steps")
        self.train_progress_bar.refresh()

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        pass  # one bar for the whole run

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        bar.n = trainer.global_step
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, str]:
        logged = trainer.callback_metrics
        out = {}
        for key, label in SHOWN.items():
            if key in logged:
                value = float(logged[key])
                if math.isfinite(value):
                    out[label] = f"{value:.3g}" if label != "len" else f"{value:.0f}"
        return out
