"""`SaveOnPreemption`: when the run is stopped by SIGTERM (what a cluster sends before it kills a job), save a
checkpoint to resume from, then let the run end.

Lightning turns SIGTERM into `trainer.received_sigterm` and stops at the next batch boundary; long work inside a
step boundary (held-out evaluation in a callback) checks the flag itself (`PolicyModule.evaluate`) and stops
between chunks. This callback sees the resulting `SIGTERMException` and writes `<dirpath>/preempted.ckpt` (through
the trainer's checkpoint IO, renamed into place) from the state at the last completed step.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


class SaveOnPreemption(L.Callback):
    """On SIGTERM, save `<dirpath>/preempted.ckpt` (default dirpath: the run's checkpoints folder)."""

    def __init__(self, dirpath: str | Path | None = None) -> None:
        """
        Args:
            dirpath: Where to write preempted.ckpt (null = <log_dir or default_root_dir>/checkpoints).
        """
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.saved: Path | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        directory = self.dirpath or Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
        path = directory / "preempted.ckpt"
        trainer.save_checkpoint(path)
        self.saved = path
        rank_zero_info(f"stopped by SIGTERM at step {trainer.global_step}; resume with --ckpt_path {path}")


__all__ = ["SaveOnPreemption"]
