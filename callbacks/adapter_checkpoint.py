"""`AdapterCheckpoint`: save the policy with `save_pretrained` (the LoRA adapter only for PEFT runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L


class AdapterCheckpoint(L.Callback):
    """Save `pl_module.policy.save_pretrained(...)` folders that `from_pretrained` / PEFT can load back.

    LoRA runs (`policy.is_peft`): `dirpath/step-{global_step}` every `every_n_steps` optimizer steps, and
    `dirpath/final` at train end if `save_final`. Full fine-tunes: only `dirpath/final` (if `save_final`);
    use Lightning's `ModelCheckpoint` for periodic full checkpoints. Rank 0 writes; `saved` lists the folders.
    """

    def __init__(self, dirpath: str | Path | None = None, every_n_steps: int = 0, save_final: bool = True) -> None:
        """
        Args:
            dirpath: output folder (default: `<trainer.log_dir or default_root_dir>/adapters`).
            every_n_steps: LoRA runs also save when `global_step` is a positive multiple of this; 0 = never.
            save_final: save `dirpath/final` when training ends.
        """
        if int(every_n_steps) < 0:
            raise ValueError(f"AdapterCheckpoint(every_n_steps={every_n_steps}): must be >= 0 (0 = final only)")
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.every_n_steps = int(every_n_steps)
        self.save_final = save_final
        self.saved: list[Path] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        policy = getattr(pl_module, "policy", None)
        if not callable(getattr(policy, "save_pretrained", None)):
            raise TypeError(f"AdapterCheckpoint needs pl_module.policy.save_pretrained(directory); "
                            f"{type(pl_module).__name__}.policy is {type(policy).__name__}. "
                            "Use an RLRecipe or remove the callback.")
        # Resolved on every rank: `trainer.log_dir` broadcasts from rank 0.
        if self.dirpath is None:
            self.dirpath = Path(trainer.log_dir or trainer.default_root_dir) / "adapters"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if (self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and pl_module.policy.is_peft
                and not any(p.name == f"step-{step}" for p in self.saved)):
            self._save(trainer, pl_module, f"step-{step}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_final:
            self._save(trainer, pl_module, "final")

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> None:
        from modules.sharded import is_sharded

        if trainer.is_global_zero or is_sharded(pl_module.policy.model):  # FSDP: a collective, rank 0 writes
            path = Path(pl_module.policy.save_pretrained(self.dirpath / name))
            if trainer.is_global_zero:
                self.saved.append(path)
        trainer.strategy.barrier("AdapterCheckpoint")
