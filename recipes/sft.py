"""`SFT`: supervised fine-tuning on (prompt, response) rows, the one SFT LightningModule every SFT stage uses
(distillation, LHRM stage 1, Mixture-of-Thought rounds).

What it does: next-token cross-entropy on the final assistant response only (`modules.sft`), the prompt rendered
exactly as RL rollouts render it, EOS appended so the model learns to stop; automatic optimisation with AdamW,
linear warmup (`warmup_steps` or `warmup_ratio`) then constant or cosine-to-0 learning rate, gradient clipping.
Logs `train/loss`, `train/tokens`, `train/tokens_per_s`, `train/truncated_ratio`, `train/lr`, `train/grad_norm`,
and `val/loss`, `val/perplexity` (token-weighted over the held-out rows).

It is a `PolicyModule` (recipes/policy_module.py), as `RLRecipe` is: the policy loading (LoRA / QLoRA / dtype /
gradient checkpointing), the reward set, generation-based held-out evaluation (`evaluate`, used by
`callbacks.HeldOutEval`), the optimiser, parameter groups and trainable-only checkpoints are shared; the training
step is teacher forcing. `rewards` here only score held-out generations (and, for `Distill`, verify teacher
traces). Hooks: `PolicyModule`'s plus `encode(rows)` and `forward_loss(batch, *, reduction)`.

Data: `datamodules.sft.SFTDataModule` (rows with `prompt`, `response`); a row's `system_prompt` column wins over
`model.system_prompt`. Loss normalisation: token mean per batch (per device under DDP; use
`trainer.accumulate_grad_batches` for larger batches). Sequence packing (the paper packs 32k contexts) is not
implemented: batches are right-padded.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from modules.optim import OptimizerSettings
from modules.policy import LoraSettings
from modules.rewards import RewardSpec
from modules.rollout.batch import RolloutBatch
from modules.rollout.engine import SamplingSettings
from modules.sft import collate_sft, sft_example, sft_example_from_ids, sft_loss
from modules.vision import encode_prompts as encode_vision_prompts
from modules.vision import VisionSettings, forward_kwargs
from recipes.policy_module import HOOKS as POLICY_HOOKS
from recipes.policy_module import PolicyModule, RecipeConfigError

HOOKS = (*POLICY_HOOKS, "encode", "forward_loss")
"""The methods of `SFT` a recipe may override."""


class SFT(PolicyModule):
    """Supervised fine-tuning on prompt/response pairs (loss on the final assistant response only)."""

    def __init__(
        self,
        model_name_or_path: str,
        rewards: list[RewardSpec | str] | None = None,
        lora: LoraSettings | None = None,
        quantization: str | None = None,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
        sampling: SamplingSettings = SamplingSettings(),
        generation_batch_size: int | None = None,
        accuracy_reward: str | None = "accuracy",
        optimizer: OptimizerSettings = OptimizerSettings(adam_betas=(0.9, 0.999)),
        max_length: int | None = None,
        system_prompt: str | None = None,
        vision: VisionSettings | None = None,
    ) -> None:
        """
        Args:
            rewards: Reward functions scoring held-out generations (`callbacks.HeldOutEval`), as in RL recipes;
                null = [accuracy].
            sampling: Generation settings of held-out evaluation; `sampling.chat_template` also renders the
                training prompts (keep it equal to what later RL stages sample with).
            optimizer: AdamW (betas 0.9 / 0.999), gradient clipping and schedule (the paper: cosine, warmup_ratio
                0.05).
            max_length: Most tokens per example (prompt + response + EOS); longer responses are cut from the
                right, counted in `train/truncated_ratio` and warned about (null = no limit).
            system_prompt: System prompt for rows without a `system_prompt` column (training and evaluation).
        """
        if max_length is not None and max_length < 2:
            raise RecipeConfigError(f"model.max_length={max_length}; give at least 2 tokens, or null for no limit")
        super().__init__(model_name_or_path, ["accuracy"] if rewards is None else rewards, lora=lora,
                         quantization=quantization, dtype=dtype, gradient_checkpointing=gradient_checkpointing,
                         reference="none", sampling=sampling, generation_batch_size=generation_batch_size,
                         accuracy_reward=accuracy_reward, optimizer=optimizer, vision=vision)
        self.max_length, self.system_prompt = max_length, system_prompt
        self.stage_outputs: dict[str, Any] = {}  # JSON-able results a pipeline stage records (recipes.cli.stages)
        self._step = {"tokens": 0.0, "started": 0.0, "grad_norm": None}  # this module's own per-batch bookkeeping
        self._warned_truncation = False
        from torchmetrics.aggregation import SumMetric

        self._val_nll, self._val_tokens = SumMetric(), SumMetric()

    # ------------------------------------------------------------------ examples
    def system_prompt_for(self, row: dict) -> str | None:
        """The row's `system_prompt` column when it has one, else `model.system_prompt`."""
        value = row.get("system_prompt")
        return self.system_prompt if value is None else value

    def encode(self, rows: list[dict]) -> dict[str, Tensor]:
        """Tokenise rows `{prompt, response, ...}` into a right-padded batch on the model's device; a vision-language
        policy's rows may carry `images` (processed once each; the batch's `vision` holds them)."""
        tok = self.policy.tokenizer
        for i, row in enumerate(rows):
            if "response" not in row:
                raise RecipeConfigError(f"SFT row {i} has no 'response' (columns: {sorted(row)}); use "
                                        "datamodules.sft.SFTDataModule and set --data.response_column")
        if self.policy.vision is None:
            examples = [sft_example(tok, row["prompt"], row["response"], system_prompt=self.system_prompt_for(row),
                                    chat_template=self.sampling.chat_template, max_length=self.max_length)
                        for row in rows]
            vision = None
        else:
            encoded = encode_vision_prompts(self.policy.processor, [r["prompt"] for r in rows],
                                            [r.get("images") for r in rows], [self.system_prompt_for(r) for r in rows])
            examples = []
            for i, (ids, mask, row) in enumerate(zip(encoded.ids, encoded.mask, rows)):
                prompt_ids = ids[mask.bool()].tolist()
                if self.max_length is not None and len(prompt_ids) >= self.max_length:
                    raise RecipeConfigError(f"SFT row {i}: its prompt is {len(prompt_ids)} tokens with the image "
                                            f"tokens, model.max_length={self.max_length} would cut an image; raise "
                                            "max_length or lower model.vision.max_pixels")
                examples.append(sft_example_from_ids(tok, prompt_ids, row["response"], max_length=self.max_length))
            vision = encoded.vision
        batch = {k: v.to(self.device) for k, v in collate_sft(examples, tok.pad_token_id).items()}
        if vision is not None:
            batch["vision"] = vision
        return batch

    def forward_loss(self, batch: dict[str, Tensor], *, reduction: str = "mean") -> tuple[Tensor, int, dict[str, float]]:
        """(loss, labelled tokens, metrics logged under train/ when training) of an `encode`d batch."""
        extra = {} if "vision" not in batch else forward_kwargs(self.policy.vision, batch["input_ids"],
                                                                batch["vision"], device=self.device)
        out = self.policy.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                                **extra)
        loss, tokens = sft_loss(out.logits, batch["labels"], reduction=reduction)
        return loss, tokens, {}

    # ------------------------------------------------------------------ training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step["started"] = time.perf_counter()

    def training_step(self, batch: list[dict], batch_idx: int) -> Tensor:
        enc = self.encode(batch)
        loss, n_tokens, metrics = self.forward_loss(enc)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite SFT loss {loss.item()} at step {self.global_step}; "
                                     "lower model.optimizer.learning_rate or check the data")
        truncated = enc["truncated"].float()
        if truncated.any() and not self._warned_truncation:
            self._warned_truncation = True
            rank_zero_warn(f"{int(truncated.sum())} of {len(batch)} examples are longer than model.max_length="
                           f"{self.max_length} and were cut (loss on the kept part); see "
                           "train/truncated_ratio, raise max_length or drop long rows")
        self._step["tokens"] = float(n_tokens)
        multi = self.trainer.world_size > 1
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=len(batch), sync_dist=multi)
        self.log_dict({"train/tokens": float(n_tokens), "train/truncated_ratio": float(truncated.mean()),
                       **{f"train/{k}": v for k, v in metrics.items()}}, on_step=True, batch_size=len(batch))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._step["started"]
        metrics = {"train/tokens_per_s": self._step["tokens"] / elapsed if elapsed > 0 else 0.0,
                   "train/lr": float(self.optimizers().param_groups[0]["lr"]), "train/time/step_s": elapsed}
        if self._step["grad_norm"] is not None:
            metrics["train/grad_norm"] = self._step["grad_norm"]
        self.log_dict(metrics, on_step=True, batch_size=len(batch))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip to `model.optimizer.max_grad_norm` (a trainer-level gradient_clip_val, when set, wins) and keep the
        norm (of all groups together, as one clip)."""
        limit = gradient_clip_val if gradient_clip_val is not None else self.optimizer_settings.max_grad_norm
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self._step["grad_norm"] = None if limit is None or not params else \
            float(torch.nn.utils.clip_grad_norm_(params, limit))

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_nll.reset()
        self._val_tokens.reset()

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        nll, n_tokens, _ = self.forward_loss(self.encode(batch), reduction="sum")
        self._val_nll.update(nll.detach().float())
        self._val_tokens.update(torch.tensor(float(n_tokens), device=self.device))

    def on_validation_epoch_end(self) -> None:
        tokens = float(self._val_tokens.compute())
        if tokens == 0:
            return
        loss = float(self._val_nll.compute()) / tokens
        self.log_dict({"val/loss": loss, "val/perplexity": math.exp(min(loss, 50.0))}, on_epoch=True)

    # ------------------------------------------------------------------ evaluation
    def generate(self, rows: list[dict], *, purpose: str, greedy: bool = False, num_generations: int = 1
                 ) -> RolloutBatch:
        """Held-out generation sees the same system prompt training used."""
        if self.system_prompt is not None:
            rows = [{**r, "system_prompt": self.system_prompt_for(r)} for r in rows]
        return super().generate(rows, purpose=purpose, greedy=greedy, num_generations=num_generations)


__all__ = ["SFT"]
