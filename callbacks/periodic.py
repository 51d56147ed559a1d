"""`PeriodicEvaluation`: the schedule and bookkeeping shared by the evaluation callbacks (`HeldOutEval`,
`HybridAccuracy`)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class PeriodicEvaluation(L.Callback):
    """Run `_run(trainer, pl_module)` at train start (if `at_start` and `global_step == 0`, so a resumed run does not
    redo it), every `every_n_steps` optimizer steps, and at train end (if `at_end`, unless the last evaluation was
    already at that step). A subclass implements `_run` and hands its metrics to `_record`, which appends
    `(global_step, metrics)` to `history` (saved in the checkpoint), logs them to every logger at `global_step` and
    puts them into `trainer.callback_metrics`.
    """

    def __init__(self, every_n_steps: int = 0, at_start: bool = True, at_end: bool = True) -> None:
        self.every_n_steps = int(every_n_steps)
        self.at_start, self.at_end = at_start, at_end
        self.history: list[tuple[int, dict[str, float]]] = []

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_start and trainer.global_step == 0:
            self._run(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and not self._done_at(step):
            self._run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end and not self._done_at(trainer.global_step):
            self._run(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [(step, dict(m)) for step, m in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(int(step), dict(m)) for step, m in state_dict.get("history", [])]

    # ------------------------------------------------------------------ helpers
    def _done_at(self, step: int) -> bool:
        return bool(self.history) and self.history[-1][0] == step

    def _record(self, trainer: L.Trainer, metrics: dict[str, float]) -> None:
        step = trainer.global_step
        self.history.append((step, metrics))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in metrics.items()})


__all__ = ["PeriodicEvaluation"]
