"""`DrivingDataModule`: the "data" of an agent that makes its own by driving (HCRMP).

An environment recipe collects its experience inside `training_step`, so the loader only counts rounds: each batch is
the round's index (one round = one rollout of `model.steps_per_round` control steps, then the updates). It exists so
an environment recipe runs under the same `r1 fit` command, trainer, logging and checkpoints as every other recipe.
"""

from __future__ import annotations

from lightning import LightningDataModule

from datamodules.errors import DataConfigError


class RoundCounter:
    """An iterable of round indices 0..rounds-1 (resumable: Lightning restarts it at the saved position)."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds

    def __len__(self) -> int:
        return self.rounds

    def __iter__(self):
        return iter(range(self.rounds))


class DrivingDataModule(LightningDataModule):
    """Round indices for an environment recipe (no dataset: the agent collects its own experience)."""

    def __init__(self, rounds_per_epoch: int = 1000) -> None:
        """
        Args:
            rounds_per_epoch: Rollout rounds in one epoch (training length is set by trainer.max_steps).
        """
        super().__init__()
        if int(rounds_per_epoch) < 1:
            raise DataConfigError(f"--data.rounds_per_epoch={rounds_per_epoch}; it must be >= 1")
        self.rounds_per_epoch = int(rounds_per_epoch)

    def train_dataloader(self) -> RoundCounter:
        return RoundCounter(self.rounds_per_epoch)


__all__ = ["DrivingDataModule", "RoundCounter"]
