"""`SFT`: supervised fine-tuning on (prompt, response) rows, the one SFT LightningModule every SFT stage uses
(distillation, LHRM stage 1, Mixture-of-Thought rounds).

What it does: next-token cross-entropy on the final assistant response only (`modules.sft`), the prompt rendered
exactly as RL rollouts render it, EOS appended so the model learns to stop; automatic optimisation with AdamW,
linear warmup (`warmup_steps` or `warmup_ratio`) then constant or cosine-to-0 learning rate, gradient clipping.
Logs `train/loss`, `train/tokens`, `train/tokens_per_s`, `train/truncated_ratio`, `train/lr`, `train/grad_norm`,
and `val/loss`, `val/perplexity` (token-weighted over the held-out rows).

Why it subclasses `RLRecipe`: it shares the policy loading (LoRA / QLoRA / dtype / gradient checkpointing), the
reward set, generation-based held-out evaluation (`evaluate`, used by `callbacks.HeldOutEval`), parameter groups
and trainable-only checkpoints; and `r1 fit` accepts `RLRecipe` subclasses. It replaces the training step
(teacher forcing instead of rollouts). `rewards` here only score held-out generations (and, for `Distill`,
verify teacher traces).

Data: `datamodules.sft.SFTDataModule` (rows with `prompt`, `response`); a row's `system_prompt` column wins over
`model.system_prompt`. Loss normalisation: token mean per batch (per device under DDP; use
`trainer.accumulate_grad_batches` for larger batches). Sequence packing (the paper packs 32k contexts) is not
implemented: batches are right-padded.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from modules.policy import LoraSettings
from modules.rewards import RewardSpec
from modules.rollout.batch import RolloutBatch
from modules.rollout.engine import SamplingSettings
from modules.optim import LR_SCHEDULES, lr_factor
from modules.sft import collate_sft, sft_example, sft_loss
from recipes.base import RecipeConfigError, RLRecipe, _check_choice, _has_callables


class SFT(RLRecipe):
    """Supervised fine-tuning on prompt/response pairs (loss on the final assistant response only)."""

    def __init__(
        self,
        model_name_or_path: str,
        lora: LoraSettings | None = None,
        quantization: str | None = None,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        warmup_ratio: float = 0.0,
        lr_schedule: str = "constant",
        max_grad_norm: float | None = 1.0,
        max_length: int | None = None,
        system_prompt: str | None = None,
        chat_template: str | None = None,
        rewards: list[RewardSpec | str] | None = None,
        accuracy_reward: str | None = "accuracy",
        sampling: SamplingSettings | None = None,
        generation_batch_size: int | None = None,
    ) -> None:
        """
        Args:
            model_name_or_path: Local directory, model alias (`smollm2-135m-instruct`, `tiny-qwen2`) or hub id.
            lora: LoRA adapter settings; null = full fine-tune.
            quantization: null, "4bit" (QLoRA, NF4 via bitsandbytes) or "8bit"; needs `lora`.
            dtype: Model weights dtype: float32, bfloat16 or float16.
            gradient_checkpointing: Trade compute for activation memory.
            learning_rate: AdamW peak learning rate.
            weight_decay: AdamW weight decay.
            adam_betas: AdamW betas.
            warmup_steps: Linear warmup steps (wins over warmup_ratio when > 0).
            warmup_ratio: Warmup as a fraction of the total optimiser steps (the paper: 0.05).
            lr_schedule: constant, or cosine (decays to 0 at the last step).
            max_grad_norm: Gradient clipping norm (null = off).
            max_length: Most tokens per example (prompt + response + EOS); longer responses are cut from the
                right, counted in `train/truncated_ratio` and warned about (null = no limit).
            system_prompt: System prompt for rows without a `system_prompt` column (training and evaluation).
            chat_template: auto, always or never: how prompts are rendered (null = `sampling.chat_template`);
                keep it equal to what later RL stages sample with.
            rewards: Reward functions scoring held-out generations (`callbacks.HeldOutEval`), as in RL recipes;
                null = [accuracy].
            accuracy_reward: Name of the reward whose value 1.0 means "correct" (logged as eval/accuracy).
            sampling: Generation settings for held-out evaluation (max_new_tokens, temperature, ...).
            generation_batch_size: Rows per `generate` call during evaluation (null = all at once).
        """
        sampling = sampling or SamplingSettings()
        if chat_template is not None:
            _check_choice("chat_template", chat_template, ("auto", "always", "never"))
            sampling.chat_template = chat_template
        _check_choice("lr_schedule", lr_schedule, LR_SCHEDULES)
        if not 0.0 <= warmup_ratio < 1.0:
            raise RecipeConfigError(f"model.warmup_ratio={warmup_ratio}; give a fraction in [0, 1)")
        if warmup_steps < 0:
            raise RecipeConfigError(f"model.warmup_steps={warmup_steps}; it must be >= 0")
        if max_length is not None and max_length < 2:
            raise RecipeConfigError(f"model.max_length={max_length}; give at least 2 tokens, or null for no limit")
        rewards = ["accuracy"] if rewards is None else rewards
        super().__init__(model_name_or_path, rewards=rewards, lora=lora, quantization=quantization, dtype=dtype,
                         gradient_checkpointing=gradient_checkpointing, reference="none", sampling=sampling,
                         num_generations=1, scale_rewards="none", accuracy_reward=accuracy_reward,
                         generation_batch_size=generation_batch_size,
                         learning_rate=learning_rate, weight_decay=weight_decay, adam_betas=adam_betas,
                         max_grad_norm=max_grad_norm, warmup_steps=warmup_steps, lr_schedule=lr_schedule)
        # Only SFT's own options (and a subclass's) are hyper-parameters; RLRecipe's RL options do not apply.
        self.save_hyperparameters(ignore=["rewards"] if _has_callables(rewards) else None)
        self.automatic_optimization = True
        self.stage_outputs: dict[str, Any] = {}  # JSON-able results a pipeline stage records (recipes.cli.stages)
        self._step_tokens, self._step_truncated, self._grad_norm = 0, 0.0, None
        self._batch_started = 0.0
        self._warned_truncation = False
        from torchmetrics.aggregation import SumMetric

        self._val_nll, self._val_tokens = SumMetric(), SumMetric()

    # ------------------------------------------------------------------ examples
    def system_prompt_for(self, row: dict) -> str | None:
        """The row's `system_prompt` column when it has one, else `model.system_prompt`."""
        value = row.get("system_prompt")
        return self.hparams.system_prompt if value is None else value

    def encode(self, rows: list[dict]) -> dict[str, Tensor]:
        """Tokenise rows `{prompt, response, ...}` into a right-padded batch on the model's device."""
        tok = self.policy.tokenizer
        examples = []
        for i, row in enumerate(rows):
            if "response" not in row:
                raise RecipeConfigError(f"SFT row {i} has no 'response' (columns: {sorted(row)}); use "
                                        "datamodules.sft.SFTDataModule and set --data.response_column")
            examples.append(sft_example(tok, row["prompt"], row["response"], system_prompt=self.system_prompt_for(row),
                                        chat_template=self.sampling.chat_template, max_length=self.hparams.max_length))
        batch = collate_sft(examples, tok.pad_token_id)
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward_loss(self, batch: dict[str, Tensor], *, reduction: str = "mean") -> tuple[Tensor, int]:
        """(loss, labelled tokens) of an `encode`d batch."""
        out = self.policy.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        return sft_loss(out.logits, batch["labels"], reduction=reduction)

    # ------------------------------------------------------------------ training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()

    def training_step(self, batch: list[dict], batch_idx: int) -> Tensor:
        enc = self.encode(batch)
        loss, n_tokens = self.forward_loss(enc)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite SFT loss {loss.item()} at step {self.global_step}; "
                                     "lower model.learning_rate or check the data")
        truncated = enc["truncated"].float()
        if truncated.any() and not self._warned_truncation:
            self._warned_truncation = True
            rank_zero_warn(f"{int(truncated.sum())} of {len(batch)} examples are longer than model.max_length="
                           f"{self.hparams.max_length} and were cut (loss on the kept part); see "
                           "train/truncated_ratio, raise max_length or drop long rows")
        self._step_tokens, self._step_truncated = n_tokens, float(truncated.mean())
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=len(batch),
                 sync_dist=self.trainer.world_size > 1)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._batch_started
        metrics = {"train/tokens": float(self._step_tokens), "train/truncated_ratio": self._step_truncated,
                   "train/tokens_per_s": self._step_tokens / elapsed if elapsed > 0 else 0.0,
                   "train/lr": float(self.optimizers().param_groups[0]["lr"]), "train/time/step_s": elapsed}
        if self._grad_norm is not None:
            metrics["train/grad_norm"] = self._grad_norm
        metrics.update({f"train/{k}": v for k, v in self.step_metrics.items()})
        self.log_dict(metrics, on_step=True, batch_size=len(batch))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip to `model.max_grad_norm` (a trainer-level gradient_clip_val, when set, wins) and keep the norm."""
        limit = gradient_clip_val if gradient_clip_val is not None else self.hparams.max_grad_norm
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if limit is None or not params:
            self._grad_norm = None
            return
        self._grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))

    def configure_optimizers(self):
        hp = self.hparams
        opt = self.build_optimizer()
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        total = None if total is None or math.isinf(total) else int(total)
        if total is None and (hp.lr_schedule == "cosine" or (hp.warmup_ratio and not hp.warmup_steps)):
            raise RecipeConfigError("model.lr_schedule=cosine / model.warmup_ratio need a known number of steps; "
                                    "set trainer.max_steps (or trainer.max_epochs)")
        warmup = hp.warmup_steps or (round(hp.warmup_ratio * total) if total else 0)
        factor = functools.partial(lr_factor, warmup_steps=warmup, total_steps=total, schedule=hp.lr_schedule)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_nll.reset()
        self._val_tokens.reset()

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        nll, n_tokens = self.forward_loss(self.encode(batch), reduction="sum")
        self._val_nll.update(nll.detach().float())
        self._val_tokens.update(torch.tensor(float(n_tokens), device=self.device))

    def on_validation_epoch_end(self) -> None:
        tokens = float(self._val_tokens.compute())
        if tokens == 0:
            return
        loss = float(self._val_nll.compute()) / tokens
        self.log_dict({"val/loss": loss, "val/perplexity": math.exp(min(loss, 50.0))}, on_epoch=True)

    # ------------------------------------------------------------------ evaluation
    def generate_and_score(self, rows: list[dict], *, greedy: bool = False, num_generations: int | None = None
                           ) -> RolloutBatch:
        """Held-out generation sees the same system prompt training used."""
        rows = [{**r, "system_prompt": self.system_prompt_for(r)} if self.hparams.system_prompt is not None else r
                for r in rows]
        return super().generate_and_score(rows, greedy=greedy, num_generations=num_generations)


__all__ = ["SFT"]
