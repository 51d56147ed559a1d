"""`RLRecipe`: the shared RL loop of DESIGN.md as a LightningModule with manual optimisation.

One `training_step` = one generation batch:
  1. B prompts from the datamodule -> the rollout engine samples G completions each (`build_rollout`).
  2. Reward functions score them (`score`); optional DAPO dynamic sampling drops zero-variance groups
     and refills them with fresh prompts.
  3. Advantages from rewards and groups (`compute_advantages`).
  4. Old log-probs (when the policy moves before the batch is used up) and reference log-probs (beta > 0).
  5. `num_iterations` passes over `steps_per_generation` mini-batches; each mini-batch is one optimiser
     step, accumulated over micro-batches (`loss`).
  6. Everything is logged under `train/`.
Paper recipes override one hook (`build_rollout`, `score`, `reward_kwargs`, `compute_advantages`, `loss`,
`on_step_end`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import random
import time
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from torch import Tensor

from modules.objectives import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, LOSS_NORMALISERS, policy_loss, zero_variance_groups
from modules.objectives import compute_advantages as _advantages
from modules.objectives.advantages import SCALES
from modules.objectives.tis import (ROLLOUT_CORRECTION_MODES, RolloutCorrectionSettings, rollout_importance_weights,
                                    rollout_mismatch_metrics)
from modules.optim import LR_SCHEDULES, lr_factor
from modules.policy import LoraSettings, Policy
from modules.rewards import RewardSet, RewardSpec
from modules.rollout.batch import RolloutBatch
from modules.rollout.engine import RolloutEngine, SamplingSettings, split_rows
from modules.rollout.hf import HFGenerateEngine
from modules.rollout.vllm import VLLMEngine, VLLMSettings

ROLLOUT_ENGINES = ("hf", "vllm")

class RecipeConfigError(ValueError):
    """A bad recipe setting; the message names the field and the fix."""


class RLRecipe(L.LightningModule):
    """Group-relative policy optimisation loop shared by every paper recipe."""

    def __init__(
        self,
        model_name_or_path: str,
        rewards: list[RewardSpec | str],
        lora: LoraSettings | None = None,
        quantization: str | None = None,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
        reference: str = "auto",
        sampling: SamplingSettings | None = None,
        num_generations: int = 8,
        generation_batch_size: int | None = None,
        rollout_engine: str = "hf",
        vllm: VLLMSettings | None = None,
        rollout_correction: RolloutCorrectionSettings | None = None,
        loss_type: str = "grpo",
        advantage_estimator: str = "grpo",
        scale_rewards: str = "group",
        epsilon_low: float = 0.2,
        epsilon_high: float | None = None,
        delta: float | None = None,
        beta: float = 0.0,
        kl_estimator: str = "k3",
        entropy_coef: float = 0.0,
        num_iterations: int = 1,
        steps_per_generation: int = 1,
        micro_batch_size: int = 8,
        mask_truncated_completions: bool = False,
        dynamic_sampling: bool = False,
        max_refill_rounds: int = 3,
        skip_zero_signal_steps: bool = True,
        accuracy_reward: str | None = "accuracy",
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        adam_betas: tuple[float, float] = (0.9, 0.99),
        max_grad_norm: float | None = 1.0,
        warmup_steps: int = 0,
        lr_schedule: str = "constant",
    ) -> None:
        """
        Args:
            model_name_or_path: Local directory, model alias (`smollm2-135m-instruct`, `tiny-qwen2`) or hub id.
            rewards: Reward functions: names from the registry (`format`, `accuracy`, ...) or
                `{name, weight, kwargs}` entries; a dotted path `pkg.module.fn` loads your own function.
            lora: LoRA adapter settings; null = full fine-tune.
            quantization: null, "4bit" (QLoRA, NF4 via bitsandbytes) or "8bit"; needs `lora`.
            dtype: Model weights dtype: float32, bfloat16 or float16.
            gradient_checkpointing: Trade compute for activation memory.
            reference: KL reference: auto (adapter disabled for LoRA, frozen copy otherwise), adapter, copy, none.
            sampling: Sampling settings (max_new_tokens, temperature, top_p, top_k, stop, chat_template).
            num_generations: G, completions sampled per prompt (the group size).
            generation_batch_size: Rows per `generate` call (null = all at once; HF engine only).
            rollout_engine: hf (transformers `generate` on the policy itself) or vllm (a colocated vLLM engine that
                receives the policy's weights after every optimisation phase; needs the `vllm` extra).
            vllm: Settings of the vLLM engine (gpu_memory_utilization, weight_sync merged|adapter, sleep mode,
                tensor_parallel_size, ...); used when rollout_engine=vllm.
            rollout_correction: Importance correction for the sampler/trainer log-prob mismatch of a separate
                engine (vLLM): mode token_truncate (TIS, default, clip_max 2), token_mask, sequence_truncate,
                sequence_mask or off; the mismatch is logged under train/rollout_correction/ in every mode.
            loss_type: grpo (sequence mean), bnpo (token mean), dr_grpo (sum / (N * max_new_tokens)) or
                dapo (token mean over the whole mini-batch).
            advantage_estimator: grpo (group-normalised) or rloo (leave-one-out baseline).
            scale_rewards: group (divide by group std), batch (by batch std) or none (Dr.GRPO).
            epsilon_low: Lower clip range of the importance ratio.
            epsilon_high: Upper clip range (null = epsilon_low; DAPO clip-higher uses 0.28).
            delta: Optional upper bound on the unclipped ratio (two-sided clipping).
            beta: KL coefficient (0 = no reference model needed).
            kl_estimator: k3 (default, as TRL), k1, k2 or low_var_kl.
            entropy_coef: Entropy bonus: subtract entropy_coef * token-mean entropy of the policy's tokens (veRL's
                entropy_coeff; 0 = off).
            num_iterations: Passes over each generation batch (mu in the GRPO paper).
            steps_per_generation: Optimiser steps per pass (the batch is split into this many mini-batches).
            micro_batch_size: Rows per forward/backward (gradient accumulation inside a mini-batch).
            mask_truncated_completions: Exclude completions that hit max_new_tokens from the loss (DAPO).
            dynamic_sampling: Drop groups whose rewards are all equal and refill with new prompts (DAPO).
            max_refill_rounds: Extra generation rounds allowed per step for dynamic sampling.
            skip_zero_signal_steps: Skip the backward pass when every advantage is 0 and beta = 0
                (single process only; the step is still counted and logged).
            accuracy_reward: Name of the reward function whose value 1.0 means "correct" (logged as accuracy).
            learning_rate: AdamW learning rate.
            weight_decay: AdamW weight decay.
            adam_betas: AdamW betas.
            max_grad_norm: Gradient clipping norm (null = off).
            warmup_steps: Linear warmup steps.
            lr_schedule: constant or cosine (after warmup).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["rewards"] if _has_callables(rewards) else None)
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold trainable weights only (see on_save_checkpoint)
        # Checked here, against the objectives' own registries, so a bad name fails before any model loads.
        _check_choice("loss_type", loss_type, tuple(LOSS_NORMALISERS))
        _check_choice("scale_rewards", scale_rewards, SCALES)
        _check_choice("advantage_estimator", advantage_estimator, tuple(ADVANTAGE_ESTIMATORS))
        _check_choice("kl_estimator", kl_estimator, tuple(KL_ESTIMATORS))
        _check_choice("lr_schedule", lr_schedule, LR_SCHEDULES)
        _check_choice("rollout_engine", rollout_engine, ROLLOUT_ENGINES)
        self.rollout_engine_name = rollout_engine  # an attribute, not hparams: subclasses (SFT) save their own
        self.vllm_settings = vllm or VLLMSettings()
        self.rollout_correction = rollout_correction or RolloutCorrectionSettings()
        _check_choice("rollout_correction.mode", self.rollout_correction.mode, (*ROLLOUT_CORRECTION_MODES, "off"))
        if self.rollout_correction.mode.endswith("truncate") and self.rollout_correction.clip_max is None:
            raise RecipeConfigError(f"model.rollout_correction.mode={self.rollout_correction.mode} needs clip_max "
                                    "(the truncation bound C; 2.0 in the TIS paper)")
        for name, value in (("num_generations", num_generations), ("num_iterations", num_iterations),
                            ("steps_per_generation", steps_per_generation), ("micro_batch_size", micro_batch_size)):
            if int(value) < 1:
                raise RecipeConfigError(f"model.{name}={value}; it must be >= 1")
        if num_generations < 2 and advantage_estimator in ("grpo", "rloo") and scale_rewards != "none":
            raise RecipeConfigError(f"model.num_generations={num_generations}: group advantages need at least 2 "
                                    "samples per prompt; set it to 2 or more")
        self.sampling = sampling or SamplingSettings()
        try:
            self.reward_set = RewardSet.from_specs(rewards)
        except (ValueError, TypeError) as err:
            raise RecipeConfigError(f"model.rewards: {err}") from err
        if accuracy_reward is not None and accuracy_reward not in self.reward_set.names:
            accuracy_reward = None  # nothing to report as accuracy
        self.accuracy_reward = accuracy_reward
        self.policy = Policy.from_pretrained(model_name_or_path, lora=lora, quantization=quantization, dtype=dtype,
                                             gradient_checkpointing=gradient_checkpointing, reference=reference)
        self.policy.model.train()  # from_pretrained returns eval mode; dropout follows the Trainer from here
        self.rollout_engine = self.build_rollout()
        if rollout_engine == "vllm" and not isinstance(self.rollout_engine, VLLMEngine):
            raise RecipeConfigError(f"model.rollout_engine=vllm: {type(self).__name__} builds its own rollout engine "
                                    f"({type(self.rollout_engine).__name__}), which vLLM cannot replace; use hf")
        self.last_rollout: RolloutBatch | None = None
        self.step_metrics: dict[str, float] = {}  # any hook may add metrics here; logged under train/ each step
        self._step_started = 0.0
        self._generation_time, self._generated_tokens = 0.0, 0.0
        self._pi_old_parts: list[Tensor] | None = None  # see correct_rollout

    # ------------------------------------------------------------------ hooks a paper may override
    def build_rollout(self) -> RolloutEngine:
        """The rollout engine: HF generate, or a colocated vLLM engine (`rollout_engine: vllm`)."""
        if self.rollout_engine_name == "vllm":
            try:
                return VLLMEngine(self.policy, self.sampling, self.vllm_settings)
            except (ValueError, ImportError) as err:  # a bad vllm.* setting or no vLLM: a one-line config error
                raise RecipeConfigError(str(err)) from err
        return HFGenerateEngine(self.policy, self.sampling, generation_batch_size=self.hparams.generation_batch_size)

    def score(self, rollout: RolloutBatch) -> RolloutBatch:
        """Fill rollout.rewards (N,) and rollout.rewards_per_func (N, F) from the reward functions."""
        per_func, total = self.reward_set(rollout.prompts, rollout.completions, rollout.columns,
                                          **self.reward_kwargs(rollout))
        rollout.rewards_per_func = per_func.to(self.device)
        rollout.rewards = total.to(self.device)
        rollout.reward_names = list(self.reward_set.names)
        return rollout

    def reward_kwargs(self, rollout: RolloutBatch) -> dict[str, Any]:
        """Keywords every reward function receives beside the dataset columns (TRL passes similar ones).

        `group_ids` lets a group-aware reward (ranks within a group, group accuracy) see its siblings.
        A recipe adds its own (a tokenizer, a monitor's targets) by extending this dict.
        """
        return {"completion_lengths": rollout.completion_lengths.tolist(), "truncated": rollout.truncated.tolist(),
                "group_ids": rollout.group_ids.tolist()}

    def compute_advantages(self, rollout: RolloutBatch) -> Tensor:
        """(N,) or (N, T) advantages from rollout.rewards and the group size."""
        kwargs = {"scale": self.hparams.scale_rewards} if self.hparams.advantage_estimator == "grpo" else {}
        return _advantages(self.hparams.advantage_estimator, rollout.rewards, rollout.group_size, **kwargs)

    def loss(self, micro: RolloutBatch, *, mini_rows: float, mini_tokens: float) -> tuple[Tensor, dict[str, Tensor]]:
        """Objective of one micro-batch, already weighted so micro-batches add up to the mini-batch loss.

        `mini_rows` / `mini_tokens`: rows and trained tokens of the mini-batch (under DDP, their mean over ranks,
        so that DDP's gradient average is the objective of the global mini-batch)."""
        hp = self.hparams
        bonus = hp.entropy_coef != 0.0
        logps, entropy = self.policy.token_logps(
            micro.prompt_ids, micro.prompt_mask, micro.completion_ids, micro.completion_attention_mask,
            temperature=self.sampling.temperature, with_entropy=True, entropy_grad=bonus)  # (n, T), (n, T)
        weights = micro.token_weights
        if self._pi_old_parts is not None and micro.rollout_logps is not None:  # single pass: pi_old is this forward
            self._pi_old_parts.append(logps.detach())
            weights = self._rollout_weights(logps.detach(), micro)
        loss, metrics = policy_loss(
            logps, micro.old_logps, micro.advantages, micro.completion_mask, loss_type=hp.loss_type,
            epsilon_low=hp.epsilon_low, epsilon_high=hp.epsilon_high, delta=hp.delta, ref_logps=micro.ref_logps,
            beta=hp.beta, kl_estimator=hp.kl_estimator, max_completion_length=self.sampling.max_new_tokens,
            num_items_in_batch=mini_tokens, entropies=entropy.detach(), token_weights=weights)
        mask = micro.completion_mask.to(entropy.dtype)  # (n, T)
        # dapo already divides by the mini-batch token count; the others are means over this micro-batch.
        if hp.loss_type == "dapo":
            return loss - (hp.entropy_coef * (entropy * mask).sum() / mini_tokens if bonus else 0.0), metrics
        if bonus:
            loss = loss - hp.entropy_coef * (entropy * mask).sum() / mask.sum().clamp(min=1.0)
        return loss * (len(micro) / mini_rows), metrics

    def on_step_end(self, rollout: RolloutBatch) -> None:
        """Called after the optimiser steps of a generation batch (moving references, monitors...)."""

    # ------------------------------------------------------------------ the loop
    def training_step(self, batch: list[dict], batch_idx: int) -> None:
        self._step_started = time.perf_counter()
        self.step_metrics = {}
        rollout, sampling_metrics = self.collect_rollout(batch)
        self.prepare_logps(rollout)  # before the advantages: PPO folds the KL into its token rewards
        self.correct_rollout(rollout)
        rollout.advantages = self.compute_advantages(rollout)
        if self.hparams.mask_truncated_completions:
            rollout.completion_mask = rollout.completion_mask * (~rollout.truncated).long()[:, None]
        train_metrics = self.optimise(rollout)
        if self._pi_old_parts is not None:
            self._finish_rollout_correction(rollout)
        self.rollout_engine.sync_weights()  # a separate engine (vLLM) samples the next batch with the new weights
        self.last_rollout = rollout
        self.on_step_end(rollout)
        self.log_step(rollout, {**sampling_metrics, **train_metrics, **self.step_metrics})

    def generate_and_score(self, rows: list[dict], *, greedy: bool = False, num_generations: int | None = None
                           ) -> RolloutBatch:
        prompts, columns = split_rows(rows)
        g = self.hparams.num_generations if num_generations is None else num_generations
        rollout = self.rollout_engine.generate(prompts, columns, num_generations=g, greedy=greedy)
        stats = self.rollout_engine.last_stats
        self._generation_time += stats.get("generate_s", 0.0)
        self._generated_tokens += stats.get("generated_tokens", 0.0)
        for key in ("weight_sync_s", "engine_start_s"):
            if stats.get(key):
                self.step_metrics[f"time/{key}"] = self.step_metrics.get(f"time/{key}", 0.0) + stats[key]
        return self.score(rollout)

    def collect_rollout(self, rows: list[dict]) -> tuple[RolloutBatch, dict[str, float]]:
        """Generate and score; with dynamic sampling keep only groups with reward variance, refilling."""
        self._generation_time, self._generated_tokens = 0.0, 0.0
        rollout = self.generate_and_score(rows)
        g, wanted = self.hparams.num_generations, len(rows)
        flat = zero_variance_groups(rollout.rewards, g)  # (B,)
        metrics = {"frac_reward_zero_std": float(flat.float().mean())}
        if not self.hparams.dynamic_sampling:
            return rollout, metrics
        kept = [_keep_informative(rollout, g)]
        have, rounds = len(kept[0]) // g, 0
        while have < wanted and rounds < self.hparams.max_refill_rounds:
            extra = self._refill_rows(wanted - have)
            more = _keep_informative(self.generate_and_score(extra), g)
            kept.append(more)
            have += len(more) // g
            rounds += 1
        if self._trainer is not None and self.trainer.world_size > 1:
            # Every rank must run the same number of micro-batches (one gradient all-reduce each mini-batch):
            # keep the smallest number of informative groups any rank found.
            have = int(self.trainer.strategy.reduce(torch.tensor(float(have), device=self.device), reduce_op="min"))
        kept = [b for b in kept if len(b)]
        metrics.update({"dynamic_sampling/refill_rounds": float(rounds), "dynamic_sampling/groups": float(min(have, wanted))})
        if not kept or have == 0:  # nothing informative: train on the original batch (all advantages are 0)
            return rollout, metrics
        merged = RolloutBatch.concat(kept)
        return merged.select(slice(0, min(have, wanted) * g)), metrics

    def _refill_rows(self, k: int) -> list[dict]:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "sample_rows"):
            raise RecipeConfigError("model.dynamic_sampling=true needs a datamodule with sample_rows() "
                                    "(e.g. datamodules.PromptDataModule)")
        return dm.sample_rows(k)

    @torch.no_grad()
    def prepare_logps(self, rollout: RolloutBatch) -> None:
        """Old log-probs when the policy changes before the batch is used up; reference log-probs for KL."""
        hp = self.hparams
        args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_attention_mask)
        if hp.num_iterations * hp.steps_per_generation > 1:
            rollout.old_logps, _ = self.policy.token_logps(*args, temperature=self.sampling.temperature,
                                                           micro_batch_size=hp.micro_batch_size)
        if hp.beta != 0.0:
            rollout.ref_logps = self.policy.ref_token_logps(*args, temperature=self.sampling.temperature,
                                                            micro_batch_size=hp.micro_batch_size)

    @torch.no_grad()
    def correct_rollout(self, rollout: RolloutBatch) -> None:
        """When another engine sampled the batch (vLLM), weight each token by pi_old / mu (`objectives.tis`).

        pi_old is the trainer's log-prob of the token under the weights the engine sampled with. When the batch is
        used in a single pass (num_iterations = steps_per_generation = 1) those are the weights of the training
        forward itself, so `loss` takes its detached log-probs and no extra forward runs (TRL and veRL run one);
        otherwise they are computed here and become `old_logps`, the ratio's base. The mismatch is logged in every
        mode, including `off`.
        """
        if rollout.rollout_logps is None:
            return
        hp = self.hparams
        if rollout.old_logps is None and hp.num_iterations * hp.steps_per_generation == 1:
            self._pi_old_parts = []  # filled by `loss`, one micro-batch at a time, in row order
            return
        if rollout.old_logps is None:
            rollout.old_logps = self._trainer_logps(rollout)
        rollout.token_weights = self._rollout_weights(rollout.old_logps, rollout)
        self._log_rollout_mismatch(rollout, rollout.old_logps, rollout.token_weights)

    def _trainer_logps(self, rollout: RolloutBatch) -> Tensor:
        logps, _ = self.policy.token_logps(
            rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_attention_mask,
            temperature=self.sampling.temperature, micro_batch_size=self.hparams.micro_batch_size)
        return logps

    def _rollout_weights(self, old_logps: Tensor, rollout: RolloutBatch) -> Tensor | None:
        """(N, T) importance weights (sequence modes broadcast over the row), or None when the correction is off."""
        s, mask = self.rollout_correction, rollout.completion_mask
        if s.mode == "off":
            return None
        weights = rollout_importance_weights(old_logps, rollout.rollout_logps, mask, mode=s.mode,
                                             clip_max=s.clip_max, clip_min=s.clip_min)
        return weights.expand(mask.shape).contiguous()

    def _log_rollout_mismatch(self, rollout: RolloutBatch, old_logps: Tensor, weights: Tensor | None) -> None:
        if weights is not None and self.rollout_correction.mode.startswith("sequence"):
            weights = weights[:, :1]  # one weight per row
        metrics = rollout_mismatch_metrics(old_logps, rollout.rollout_logps, rollout.completion_mask, weights)
        self.step_metrics.update({f"rollout_correction/{k}": v for k, v in metrics.items()})

    @torch.no_grad()
    def _finish_rollout_correction(self, rollout: RolloutBatch) -> None:
        """After a single pass: the mismatch over the whole batch from the log-probs the training forwards gave."""
        parts, self._pi_old_parts = self._pi_old_parts, None
        old = torch.cat(parts) if parts else self._trainer_logps(rollout)  # no parts: the backward was skipped
        self._log_rollout_mismatch(rollout, old, self._rollout_weights(old, rollout))

    def optimise(self, rollout: RolloutBatch) -> dict[str, float]:
        hp = self.hparams
        opt = self.optimizers()
        sched = self.lr_schedulers()
        started = time.perf_counter()
        no_signal = bool((rollout.advantages == 0).all()) and hp.beta == 0.0
        skip = no_signal and hp.skip_zero_signal_steps and self.trainer.world_size == 1
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        losses: list[float] = []
        grad_norms: dict[str, list[float]] = {}
        trained_tokens = 0
        mini_size = math.ceil(len(rollout) / hp.steps_per_generation)
        world = self.trainer.world_size
        for _ in range(hp.num_iterations):
            for mini in rollout.micro_batches(mini_size):
                mini_tokens = int(mini.completion_mask.sum())
                # Under DDP the gradients are averaged over ranks: normalise by the per-rank share of the global
                # rows/tokens so that the average is the objective of the whole (all-rank) mini-batch.
                rows, tokens = self._global_mean_counts(len(mini), max(mini_tokens, 1))
                if not skip:
                    total = 0.0
                    micros = mini.micro_batches(hp.micro_batch_size)
                    for k, micro in enumerate(micros):
                        loss, metrics = self.loss(micro, mini_rows=rows, mini_tokens=tokens)
                        if not torch.isfinite(loss):
                            raise FloatingPointError(
                                f"non-finite loss {loss.item()} at step {self.global_step}; metrics: "
                                f"{ {k: float(v) for k, v in metrics.items()} }. Check rewards and learning_rate")
                        last = k == len(micros) - 1  # gradients are all-reduced once, on the last micro-batch
                        with contextlib.nullcontext() if last or world == 1 else self.trainer.strategy.block_backward_sync():
                            self.manual_backward(loss)
                        total += float(loss.detach())
                        for key, value in metrics.items():
                            sums[key] = sums.get(key, 0.0) + float(value)
                            counts[key] = counts.get(key, 0) + 1
                    losses.append(total)
                    if hp.max_grad_norm is not None:
                        for group in opt.param_groups:
                            norm = float(torch.nn.utils.clip_grad_norm_(group["params"], hp.max_grad_norm))
                            grad_norms.setdefault(group.get("name", "policy"), []).append(norm)
                    trained_tokens += mini_tokens
                opt.step()  # a no-op update on zero grads still advances the step counter (keeps schedules aligned)
                opt.zero_grad(set_to_none=True)
                if sched is not None:
                    sched.step()
        elapsed = time.perf_counter() - started
        out = {k: sums[k] / counts[k] for k in sums}
        out["loss"] = float(np.mean(losses)) if losses else 0.0
        for name, norms in grad_norms.items():
            out["grad_norm" if name == "policy" else f"grad_norm/{name}"] = float(np.mean(norms))
        out["skipped_backward"] = float(skip)
        out["tokens_per_s/train"] = trained_tokens / elapsed if elapsed > 0 and trained_tokens else 0.0
        return out

    def _global_mean_counts(self, rows: int, tokens: int) -> tuple[float, float]:
        """(rows, tokens) of the mini-batch averaged over ranks (this rank's own counts in one process)."""
        if self.trainer.world_size == 1:
            return float(rows), float(tokens)
        counts = torch.tensor([float(rows), float(tokens)], device=self.device)
        counts = self.trainer.strategy.reduce(counts, reduce_op="mean")
        return float(counts[0]), float(counts[1])

    def log_step(self, rollout: RolloutBatch, metrics: dict[str, float]) -> None:
        lengths = rollout.completion_lengths.float()
        out: dict[str, float] = {
            "reward": float(rollout.rewards.mean()),
            "reward_std": float(rollout.rewards.std()) if len(rollout) > 1 else 0.0,
            "advantage_std": float(rollout.advantages.float().std()) if rollout.advantages.numel() > 1 else 0.0,
            "completion_length": float(lengths.mean()),
            "completion_length/min": float(lengths.min()),
            "completion_length/max": float(lengths.max()),
            "truncated_ratio": float(rollout.truncated.float().mean()),
            "tokens_per_s/generate": self._generated_tokens / self._generation_time if self._generation_time else 0.0,
            "time/generate_s": self._generation_time,
            "time/step_s": time.perf_counter() - self._step_started,
            "lr": float(self.optimizers().param_groups[0]["lr"]),
            **_memory_metrics(self.device),
        }
        out.update(self.reward_set.stats(rollout.rewards_per_func))
        if self.accuracy_reward is not None:
            out["accuracy"] = out[f"rewards/{self.accuracy_reward}/mean"]
        out.update(metrics)
        prog = {"reward", "accuracy", "completion_length", "time/step_s"}
        logged = {f"train/{k}": v for k, v in out.items()}
        multi = self.trainer.world_size > 1
        self.log_dict({k: v for k, v in logged.items() if k[6:] not in prog}, on_step=True, sync_dist=multi)
        self.log_dict({k: v for k, v in logged.items() if k[6:] in prog}, on_step=True, prog_bar=True,
                      sync_dist=multi)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, rows: list[dict], *, k: int = 1, batch_size: int = 16) -> dict[str, float]:
        """Held-out metrics: greedy reward/accuracy/length, and pass@k from k samples when k > 1."""
        from torchmetrics.aggregation import MeanMetric

        from tqdm.auto import tqdm

        meters = {name: MeanMetric().to(self.device) for name in ("reward", "accuracy", "completion_length", "pass")}
        # per reward function (a format rate, ...); None rows (NaN) are not counted
        per_func = {name: MeanMetric(nan_strategy="ignore").to(self.device) for name in self.reward_set.names}
        show = self._trainer is None or self.trainer.is_global_zero
        chunks = range(0, len(rows), batch_size)
        for i in tqdm(chunks, desc=f"held-out eval ({len(rows)} prompts)", leave=False,
                      disable=not show or len(chunks) < 2):
            chunk = rows[i:i + batch_size]
            greedy = self.generate_and_score(chunk, greedy=True, num_generations=1)
            meters["reward"].update(greedy.rewards)
            meters["completion_length"].update(greedy.completion_lengths.float())
            for j, name in enumerate(greedy.reward_names):
                per_func[name].update(greedy.rewards_per_func[:, j])
            if self.accuracy_reward is not None:
                meters["accuracy"].update(self._accuracy_column(greedy))
            if k > 1 and self.accuracy_reward is not None:
                sampled = self.generate_and_score(chunk, num_generations=k)
                correct = self._accuracy_column(sampled).view(-1, k)  # (B, k)
                meters["pass"].update((correct > 0.5).any(dim=1).float())
        out = {"eval/reward": float(meters["reward"].compute()),
               "eval/completion_length": float(meters["completion_length"].compute())}
        out.update({f"eval/rewards/{name}/mean": float(m.compute()) for name, m in per_func.items()})
        if self.accuracy_reward is not None:
            out["eval/accuracy"] = float(meters["accuracy"].compute())
            if k > 1:
                out[f"eval/pass@{k}"] = float(meters["pass"].compute())
        return out

    def _accuracy_column(self, rollout: RolloutBatch) -> Tensor:
        col = rollout.rewards_per_func[:, rollout.reward_names.index(self.accuracy_reward)]
        return torch.nan_to_num(col, nan=0.0)

    # ------------------------------------------------------------------ optimiser and checkpoints
    def configure_model(self) -> None:
        """Shard the policy under FSDP2 (`modules.distributed.FSDP2Strategy`) and refuse strategies the loop cannot
        use (Lightning's FSDP1; DeepSpeed with the loop's gradient clipping). A no-op under DDP or on one device."""
        from modules.distributed import configure_sharding

        configure_sharding(self)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups, each with a `name` (gradients are clipped per group); PPO adds its critic."""
        return [{"name": "policy", "params": list(self.policy.trainable_parameters())}]

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over `parameter_groups()` with the recipe's learning rate, weight decay and betas."""
        hp = self.hparams
        groups = self.parameter_groups()
        if not groups[0]["params"]:
            raise RecipeConfigError("the policy has no trainable parameters; check model.lora / model.quantization")
        return torch.optim.AdamW(groups, lr=hp.learning_rate, weight_decay=hp.weight_decay, betas=tuple(hp.adam_betas))

    def configure_optimizers(self):
        hp = self.hparams
        opt = self.build_optimizer()
        total = self.trainer.max_steps if self._trainer is not None and self.trainer.max_steps > 0 else None
        if hp.lr_schedule == "cosine" and total is None:
            raise RecipeConfigError("model.lr_schedule=cosine needs trainer.max_steps (the decay ends there)")
        factor = functools.partial(lr_factor, warmup_steps=hp.warmup_steps, total_steps=total, schedule=hp.lr_schedule)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Frozen weights (a LoRA base, a quantized base) are reloaded from model_name_or_path: keep only
        # what training changes, so a LoRA checkpoint of a 7B model is megabytes, not gigabytes.
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        # Plain types only, so the checkpoint loads with torch.load(weights_only=True) (Lightning's default).
        checkpoint["hyper_parameters"] = _plain(dict(self.hparams))
        checkpoint["r1_rng"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("r1_rng")
        if rng:  # resume sampling exactly where the interrupted run was
            torch.set_rng_state(rng["torch"])
            random.setstate(tuple(rng["python"]))
            if rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


def _memory_metrics(device: torch.device) -> dict[str, float]:
    """Peak memory of the step: CUDA allocated/reserved (then reset), else the process's peak RSS, in GB."""
    if device.type == "cuda":
        out = {"memory/peak_allocated_gb": torch.cuda.max_memory_allocated(device) / 1e9,
               "memory/peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 1e9}
        torch.cuda.reset_peak_memory_stats(device)
        return out
    import resource

    return {"memory/peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}  # KB on Linux


def _plain(value: Any) -> Any:
    """Dataclasses -> dicts, callables -> their qualified names, recursively (checkpoint-safe values)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    return value


def _keep_informative(rollout: RolloutBatch, g: int) -> RolloutBatch:
    flat = zero_variance_groups(rollout.rewards, g)  # (B,)
    rows = (~flat).repeat_interleave(g)  # (N,)
    return rollout.select(rows)


def _check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise RecipeConfigError(f"model.{field}={value!r}; use one of {', '.join(allowed)}")


def _has_callables(rewards: list[Any]) -> bool:
    return any(isinstance(r, Callable) and not isinstance(r, (str, RewardSpec)) for r in rewards)  # type: ignore[arg-type]
