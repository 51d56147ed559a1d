"""Run by tests/test_fsdp.py (not collected by pytest): one optimiser step of the shared loop on the fixed rollout of
tests/ddp_worker.py, in one process or sharded over N CPU processes with FSDP2 (gloo). Inside the step each rank
also generates greedily with a rank-dependent number of new tokens (ranks run different numbers of forwards). Rank 0
saves the gathered trainable weights, the generated ids and the same generation from an unsharded copy of the model.
With `resume`, the run saves a checkpoint, then a second fit resumes from it for one more step.

    python tests/fsdp_worker.py MODEL_DIR OUT_DIR MODE DEVICES [resume]     # MODE: full | lora
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from ddp_worker import FixedRolloutGRPO  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from modules.distributed import FSDP2Strategy, configure_sharding, full_state_dict, is_sharded  # noqa: E402
from modules.policy import Policy  # noqa: E402
from modules.rollout.engine import SamplingSettings  # noqa: E402
from modules.rollout.hf import HFGenerateEngine  # noqa: E402


class FSDPFixedRolloutGRPO(FixedRolloutGRPO):
    """The DDP worker's recipe, plus a greedy generation inside the step."""

    def configure_model(self):  # what RLRecipe.configure_model does once the base.py patch is in
        configure_sharding(self)

    def collect_rollout(self, rows):
        rank = self.trainer.global_rank
        settings = SamplingSettings(max_new_tokens=3 + 5 * rank)  # rank 1 runs 5 more forwards than rank 0
        ids = HFGenerateEngine(self.policy, settings).generate([f"prompt {rank}"], {}, num_generations=1,
                                                               greedy=True).completion_ids
        self.generated = ids.cpu()
        self.settings = settings
        self.sharded_during_step = is_sharded(self.policy.model)
        return super().collect_rollout(rows)

    def on_train_start(self):
        if getattr(self, "capture_start", False):  # the weights the resumed run starts from
            model = self.policy.model
            state = full_state_dict(model) if is_sharded(model) else model.state_dict()
            self.start_weights = {k: v.detach().cpu().clone() for k, v in state.items()}

    def configure_optimizers(self):
        # the first step of SGD with momentum is the plain gradient step, and it leaves an optimiser state to resume
        return torch.optim.SGD([g["params"] for g in self.parameter_groups()][0], lr=1.0, momentum=0.9)


def main() -> None:
    model_dir, out_dir, mode, devices = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    resume = len(sys.argv) > 5 and sys.argv[5] == "resume"
    torch.manual_seed(0)
    lora = {"r": 4, "alpha": 8, "target_modules": "all-linear"} if mode == "lora" else None
    recipe = FSDPFixedRolloutGRPO(model_name_or_path=model_dir, rewards=["accuracy"], num_generations=2, lora=lora,
                                  objective={"loss_type": "grpo", "beta": 0.04}, batching={"micro_batch_size": 2, "skip_zero_signal_steps": False}, optimizer={"max_grad_norm": 0.05 if mode == "full" else None})
    # the same greedy generation from an unsharded copy (LoRA starts as the identity: B = 0)
    plain = Policy.from_pretrained(model_dir)
    strategy = (FSDP2Strategy(process_group_backend="gloo", timeout=timedelta(seconds=120)) if devices > 1
                else "auto")
    ckpt = ModelCheckpoint(dirpath=out_dir / "ckpt", save_last=True) if resume else None
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=1, logger=False,
                        enable_checkpointing=resume, callbacks=[ckpt] if ckpt else None, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(recipe, train_dataloaders=DataLoader(list(range(8)), batch_size=1))
    rank = trainer.global_rank
    expected = HFGenerateEngine(plain, recipe.settings).generate([f"prompt {rank}"], {}, num_generations=1,
                                                                 greedy=True).completion_ids
    trainable = {k for k, v in recipe.policy.model.named_parameters() if v.requires_grad}
    if is_sharded(recipe.policy.model):
        state = full_state_dict(recipe.policy.model)  # every rank takes part; rank 0 gets the weights
    else:
        state = recipe.policy.model.state_dict()
    out = {"weights": {k: v.detach().cpu().clone() for k, v in state.items() if k in trainable},
           "grad_norm": float(trainer.callback_metrics["train/grad_norm"]) if mode == "full" else None,
           "generated": recipe.generated, "expected": expected.cpu(), "sharded": recipe.sharded_during_step}
    if resume:
        resumed = FSDPFixedRolloutGRPO(model_name_or_path=model_dir, rewards=["accuracy"], num_generations=2,
                                       lora=lora, batching={"micro_batch_size": 2, "skip_zero_signal_steps": False}, optimizer={"max_grad_norm": None})
        resumed.capture_start = True
        again = L.Trainer(accelerator="cpu", devices=devices, strategy=FSDP2Strategy(
            process_group_backend="gloo", timeout=timedelta(seconds=120)) if devices > 1 else "auto", max_steps=2,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        again.fit(resumed, train_dataloaders=DataLoader(list(range(8)), batch_size=1),
                  ckpt_path=str(out_dir / "ckpt" / "last.ckpt"))
        out["resumed_global_step"] = again.global_step
        out["resumed_start"] = {k: v for k, v in resumed.start_weights.items() if k in trainable}
        out["checkpoint"] = str(out_dir / "ckpt" / "last.ckpt")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(out, out_dir / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
