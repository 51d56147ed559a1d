"""Run by tests/test_ddp.py (not collected by pytest): one optimiser step of the shared loop on a fixed rollout,
in one process or split over N CPU processes with DDP (gloo). Each rank saves its trainable weights.

    python tests/ddp_worker.py MODEL_DIR OUT_DIR LOSS_TYPE DEVICES
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from modules.rollout.batch import RolloutBatch  # noqa: E402
from recipes.grpo import GRPO  # noqa: E402

N, P, T = 8, 5, 8
LENGTHS = [2, 3, 2, 3, 8, 7, 8, 6]  # the first half (rank 0) has far fewer tokens than the second (rank 1)


def fixed_rollout(pad_token_id: int) -> RolloutBatch:
    g = torch.Generator().manual_seed(0)
    completion_mask = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).long()  # (N, T)
    completion_ids = torch.randint(5, 500, (N, T), generator=g).masked_fill(completion_mask == 0, pad_token_id)
    batch = RolloutBatch(
        prompt_ids=torch.randint(5, 500, (N, P), generator=g), prompt_mask=torch.ones(N, P, dtype=torch.long),
        completion_ids=completion_ids, completion_mask=completion_mask,
        completion_attention_mask=completion_mask.clone(), prompts=[f"p{i // 2}" for i in range(N)],
        completions=[f"c{i}" for i in range(N)], group_ids=torch.arange(N) // 2, pad_token_id=pad_token_id)
    batch.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    batch.rewards_per_func = batch.rewards[:, None].clone()
    batch.reward_names = ["accuracy"]
    batch.advantages = torch.tensor([0.7, -0.7, -0.7, 0.7, 0.7, -0.7, 0.7, -0.7])
    return batch


class FixedRolloutGRPO(GRPO):
    """The loop with generation replaced by this rank's share of a fixed rollout."""

    def collect_rollout(self, rows):
        full = fixed_rollout(self.policy.tokenizer.pad_token_id).to(self.device)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        share = len(full) // world
        return full.select(slice(rank * share, (rank + 1) * share)), {}

    def compute_advantages(self, rollout):
        return rollout.advantages, {}

    def configure_optimizers(self):
        # plain SGD: the update is the gradient itself, so any normalisation error shows in the weights
        return torch.optim.SGD([g["params"] for g in self.parameter_groups()][0], lr=1.0)


def main() -> None:
    model_dir, out_dir, loss_type, devices = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    torch.manual_seed(0)
    recipe = FixedRolloutGRPO(model_name_or_path=model_dir, rewards=["accuracy"], num_generations=2,
                              objective={"loss_type": loss_type}, batching={"micro_batch_size": 2, "skip_zero_signal_steps": False}, optimizer={"max_grad_norm": None})
    strategy = DDPStrategy(process_group_backend="gloo") if devices > 1 else "auto"
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(recipe, train_dataloaders=DataLoader(list(range(8)), batch_size=1))
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu() for k, v in recipe.policy.model.named_parameters() if v.requires_grad}
    torch.save(weights, out_dir / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
