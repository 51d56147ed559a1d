"""`RLRecipe`: the shared RL loop of DESIGN.md on top of `PolicyModule`, with manual optimisation.

One `training_step` = one generation batch:
  1. B prompts from the datamodule -> G completions each (`generate`), scored (`score`); with dynamic sampling,
     groups whose rewards are all equal are dropped and refilled with fresh prompts.
  2. Old log-probs (when the policy moves before the batch is used up), reference log-probs (beta > 0) and
     anything else a recipe needs before the advantages (`prepare_logps`); the rollout correction starts.
  3. Advantages from rewards and groups (`compute_advantages`).
  4. `num_iterations` passes over `steps_per_generation` mini-batches; each mini-batch is one optimiser step,
     accumulated over micro-batches (`loss`).
  5. The recipe's end-of-step work and metrics (`on_step_end`); everything is logged under `train/`.

The hooks of the loop (besides `PolicyModule`'s):

| hook | contract |
|---|---|
| `prepare_logps(rollout) -> None` | fill `old_logps` / `ref_logps` (/ `values`) before the advantages |
| `compute_advantages(rollout) -> (advantages, metrics)` | (N,) or per-token (N, T) advantages |
| `loss(micro, *, mini_rows, mini_tokens) -> (loss, metrics)` | one micro-batch's objective, weighted to add up to the mini-batch's |
| `on_step_end(rollout) -> metrics` | after the optimiser steps: moving references, monitors, the recipe's step metrics |

Each hook gets what it needs as arguments and returns its metrics; none reads state another hook left behind.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any
from dataclasses import dataclass

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from modules.objectives import ObjectiveSettings, micro_batch_loss, zero_variance_groups
from modules.objectives.entropy import AdaptiveEntropyCoef
from modules.objectives.tis import RolloutCorrection, RolloutCorrectionSettings
from modules.optim import OptimizerSettings
from modules.policy import LoraSettings
from modules.rewards import RewardSpec
from modules.rollout.batch import RolloutBatch, add_stats
from modules.rollout.engine import SamplingSettings
from modules.rollout.vllm import VLLMSettings
from modules.settings import check_number
from modules.vision import VisionSettings
from recipes.policy_module import HOOKS as POLICY_HOOKS
from recipes.policy_module import REWARD_SECONDS, PolicyModule, RecipeConfigError, recipe_settings

HOOKS = (*POLICY_HOOKS, "prepare_logps", "compute_advantages", "loss", "on_step_end")
"""The methods of `RLRecipe` a recipe may override."""


@dataclass(frozen=True)
class BatchSettings:
    """How a generation batch is cut into optimiser steps (`model.batching.*` in a config)."""

    num_iterations: int = 1
    """Passes over each generation batch (mu in the GRPO paper)."""
    steps_per_generation: int = 1
    """Optimiser steps per pass: the batch is split into this many mini-batches (it must divide the rows)."""
    micro_batch_size: int = 8
    """Rows per forward/backward (gradient accumulation inside a mini-batch)."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal and refill with new prompts (DAPO)."""
    max_refill_rounds: int = 3
    """Extra generation rounds allowed per step for dynamic sampling."""
    skip_zero_signal_steps: bool = True
    """Skip the backward pass when every advantage is 0 and beta = 0 (single process only; still logged)."""
    logit_chunk_size: int = 256
    """Completion tokens whose vocabulary logits exist at once when computing log-probs and entropy; the LM head is
    recomputed in the backward. 0 computes all at once."""

    def __post_init__(self) -> None:
        for name in ("num_iterations", "steps_per_generation", "micro_batch_size"):
            check_number(f"model.batching.{name}", getattr(self, name), low=1, integer=True)
        check_number("model.batching.max_refill_rounds", self.max_refill_rounds, low=0, integer=True)
        check_number("model.batching.logit_chunk_size", self.logit_chunk_size, low=0, integer=True,
                     fix="0 computes all logits at once")

    @property
    def passes(self) -> int:
        """Optimiser steps per generation batch."""
        return self.num_iterations * self.steps_per_generation


class RLRecipe(PolicyModule):
    """Group-relative policy optimisation loop shared by every RL paper recipe."""

    # PolicyModule's parameters are listed again (documented there, once): with `*args, **kwargs` here,
    # jsonargparse cannot resolve RLRecipe's own options for recipes that pass the model and rewards positionally.
    def __init__(
        self,
        model_name_or_path: str,
        rewards: list[RewardSpec | str],
        lora: LoraSettings | None = None,
        quantization: str | None = None,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
        reference: str = "auto",
        sampling: SamplingSettings = SamplingSettings(),
        generation_batch_size: int | None = None,
        rollout_engine: str = "hf",
        vllm: VLLMSettings | None = None,
        accuracy_reward: str | None = "accuracy",
        optimizer: OptimizerSettings = OptimizerSettings(),
        vision: VisionSettings | None = None,
        num_generations: int = 8,
        objective: ObjectiveSettings = ObjectiveSettings(),
        batching: BatchSettings = BatchSettings(),
        rollout_correction: RolloutCorrectionSettings | None = None,
    ) -> None:
        """
        Args:
            num_generations: G, completions sampled per prompt (the group size).
            objective: Loss, advantages, clipping, KL and entropy terms.
            batching: Iterations, optimiser steps per generation batch, micro-batches, dynamic sampling.
            rollout_correction: Importance correction for the sampler/trainer log-prob mismatch of a separate
                engine (vLLM): mode token_truncate (TIS, default, clip_max 2), token_mask, sequence_truncate,
                sequence_mask, geometric_mask, offpolicy_mask (+ offpolicy_threshold) or off; the mismatch is
                logged under train/rollout_correction/ in every mode.
        """
        objective = recipe_settings(type(self), ObjectiveSettings, objective, "objective")
        batching = recipe_settings(type(self), BatchSettings, batching, "batching")
        check_number("model.num_generations", num_generations, low=1, integer=True)
        grouped = ("grpo", "rloo", "gdpo", "passk", "reinforce_pp_baseline")  # estimators that compare siblings
        if num_generations < 2 and objective.advantage_estimator in grouped and \
                (objective.scale_rewards != "none" or objective.advantage_estimator != "grpo"):
            raise RecipeConfigError(f"model.num_generations={num_generations}: group advantages need at least 2 "
                                    "samples per prompt; set it to 2 or more")
        super().__init__(model_name_or_path, rewards, lora=lora, quantization=quantization, dtype=dtype,
                         gradient_checkpointing=gradient_checkpointing, reference=reference, sampling=sampling,
                         generation_batch_size=generation_batch_size, rollout_engine=rollout_engine, vllm=vllm,
                         accuracy_reward=accuracy_reward, optimizer=optimizer, vision=vision)
        self.automatic_optimization = False
        self.num_generations = int(num_generations)
        self.objective, self.batching = objective, batching
        self.policy.logit_chunk_size = batching.logit_chunk_size or None
        self.rollout_correction = RolloutCorrection(
            recipe_settings(type(self), RolloutCorrectionSettings, rollout_correction, "rollout_correction"))
        self.last_rollout: RolloutBatch | None = None
        self._step_started = 0.0
        self.entropy_control = None if objective.target_entropy is None else AdaptiveEntropyCoef(
            objective.entropy_coef, target=objective.target_entropy, step=objective.entropy_coef_step)

    # ------------------------------------------------------------------ hooks
    @torch.no_grad()
    def prepare_logps(self, rollout: RolloutBatch) -> None:
        """Old log-probs when the policy changes before the batch is used up; reference log-probs for KL."""
        if self.batching.passes > 1:
            rollout.old_logps = self.trainer_logps(rollout)
        if self.objective.beta != 0.0:
            rollout.ref_logps = self.policy.ref_token_logps(*logp_inputs(rollout), temperature=self.sampling.temperature,
                                                            micro_batch_size=self.batching.micro_batch_size,
                                                            vision=rollout.vision)

    def compute_advantages(self, rollout: RolloutBatch) -> tuple[Tensor, dict[str, float]]:
        """(N,) or (N, T) advantages from rollout.rewards and the group size, and the hook's metrics."""
        try:
            return self.objective.advantages(
                rollout.rewards, rollout.group_size, rewards_per_func=rollout.rewards_per_func,
                reward_weights=self.reward_set.weights, token_counts=rollout.completion_mask.sum(-1)), {}
        except ValueError as err:
            raise RecipeConfigError(f"model.rewards: {err}") from None

    def loss(self, micro: RolloutBatch, *, mini_rows: float, mini_tokens: float) -> tuple[Tensor, dict[str, Tensor]]:
        """Objective of one micro-batch, already weighted so micro-batches add up to the mini-batch loss.

        `mini_rows` / `mini_tokens`: rows and trained tokens of the mini-batch (under DDP, their mean over ranks,
        so that DDP's gradient average is the objective of the global mini-batch)."""
        o = self.objective
        truncation = self.sampler_truncation() if self.rollout_correction.observing else None
        logps, entropy, *sampler = self.policy.token_logps(
            *logp_inputs(micro), temperature=self.sampling.temperature, with_entropy=True,
            entropy_grad=o.entropy_coef != 0.0 or o.target_entropy is not None, truncation=truncation,
            vision=micro.vision)  # (n, T)
        weights = self.rollout_correction.observe(micro, sampler[0] if sampler else logps, micro.advantages)
        if micro.sample_weights is not None:  # per-row loss weights (GUI-G1's difficulty rate) scale every token
            rows = micro.sample_weights.to(logps.dtype)[:, None].expand_as(logps)  # (n, T)
            weights = rows if weights is None else weights * rows
        kwargs = o.loss_kwargs()
        if o.target_entropy is not None:  # the adaptive coefficient, updated once per optimiser step
            mask = micro.completion_mask.to(entropy.dtype)
            mean_entropy = float((entropy.detach() * mask).sum() / mask.sum().clamp(min=1.0))
            kwargs["entropy_coef"] = self.entropy_control.coefficient(self.global_step, mean_entropy)
        loss, metrics = micro_batch_loss(
            logps, micro.old_logps, micro.advantages, micro.completion_mask, entropies=entropy, micro_rows=len(micro),
            mini_rows=mini_rows, mini_tokens=mini_tokens, ref_logps=micro.ref_logps,
            max_completion_length=o.loss_divisor or self.sampling.max_new_tokens, token_weights=weights, **kwargs)
        if o.target_entropy is not None:
            metrics["entropy_coef"] = torch.tensor(kwargs["entropy_coef"])
        return loss, metrics

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.entropy_control is not None:  # the adaptive coefficient resumes where it was
            checkpoint["r1_entropy_coef"] = self.entropy_control.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.entropy_control is not None and "r1_entropy_coef" in checkpoint:
            self.entropy_control.load_state_dict(checkpoint["r1_entropy_coef"])

    def on_step_end(self, rollout: RolloutBatch) -> dict[str, float]:
        """After the optimiser steps of a generation batch (moving references, monitors...): the step's metrics."""
        return {}

    # ------------------------------------------------------------------ the loop
    def training_step(self, batch: list[dict], batch_idx: int) -> None:
        self._step_started = time.perf_counter()
        rollout, metrics = self.collect_rollout(batch)
        self.prepare_logps(rollout)  # before the advantages: PPO folds the KL into its token rewards
        rollout.advantages, advantage_metrics = self.compute_advantages(rollout)
        self.rollout_correction.begin(rollout, single_pass=self.batching.passes == 1,
                                      trainer_logps=lambda: self.trainer_logps(rollout),
                                      sampler_logps=(lambda: self.trainer_logps(rollout, truncated=True))
                                      if self.sampler_truncation() else None, advantages=rollout.advantages)
        if self.objective.mask_truncated_completions:
            rollout.completion_mask = rollout.completion_mask * (~rollout.truncated).long()[:, None]
        metrics.update(advantage_metrics)
        metrics.update(self.optimise(rollout))
        metrics.update(self.rollout_correction.finish(
            lambda: self.trainer_logps(rollout, truncated=self.sampler_truncation() is not None)))
        self.rollout_engine.sync_weights()  # a separate engine (vLLM) samples the next batch with the new weights
        self.last_rollout = rollout
        metrics.update(self.on_step_end(rollout))
        self.log_step(rollout, metrics)

    def elapsed_step_s(self) -> float:
        """Seconds since this training step started."""
        return time.perf_counter() - self._step_started

    def collect_rollout(self, rows: list[dict]) -> tuple[RolloutBatch, dict[str, float]]:
        """Generate and score; with dynamic sampling keep only groups with reward variance, refilling."""
        g, wanted = self.num_generations, len(rows)
        rollout = self.generate_and_score(rows, purpose="train", num_generations=g)
        flat = zero_variance_groups(rollout.rewards, g)  # (B,)
        metrics = {"frac_reward_zero_std": float(flat.float().mean())}
        if not self.batching.dynamic_sampling:
            return rollout, metrics
        kept = [_keep_informative(rollout, g)]
        have, rounds = len(kept[0]) // g, 0
        while have < wanted and rounds < self.batching.max_refill_rounds:
            more = self.generate_and_score(self._refill_rows(wanted - have), purpose="train", num_generations=g)
            kept.append(_keep_informative(more, g))
            have += len(kept[-1]) // g
            rounds += 1
        if self._trainer is not None and self.trainer.world_size > 1:
            # Every rank must run the same number of micro-batches (one gradient all-reduce each mini-batch):
            # keep the smallest number of informative groups any rank found.
            have = int(self.trainer.strategy.reduce(torch.tensor(float(have), device=self.device), reduce_op="min"))
        metrics.update({"dynamic_sampling/refill_rounds": float(rounds),
                        "dynamic_sampling/groups": float(min(have, wanted))})
        stats = add_stats(*(part.stats for part in kept))  # the work of every round, dropped groups included
        kept = [part for part in kept if len(part)]
        if not kept or have == 0:  # nothing informative: train on the original batch (all advantages are 0)
            rollout.stats = stats
            return rollout, metrics
        merged = RolloutBatch.concat(kept).select(slice(0, min(have, wanted) * g))
        merged.stats = stats
        return merged, metrics

    def _refill_rows(self, k: int) -> list[dict]:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "sample_rows"):
            raise RecipeConfigError("model.batching.dynamic_sampling=true needs a datamodule with sample_rows() "
                                    "(e.g. datamodules.PromptDataModule)")
        return dm.sample_rows(k)

    @torch.no_grad()
    def trainer_logps(self, rollout: RolloutBatch, *, truncated: bool = False) -> Tensor:
        """(N, T) the policy's current log-probs of the rollout's completion tokens, in micro-batches; `truncated`:
        renormalised over the sampler's top-p / top-k set (`sampler_truncation`), as vLLM's log-probs are."""
        truncation = self.sampler_truncation() if truncated else None
        logps, _, *sampler = self.policy.token_logps(*logp_inputs(rollout), temperature=self.sampling.temperature,
                                                     micro_batch_size=self.batching.micro_batch_size,
                                                     truncation=truncation, vision=rollout.vision)
        return sampler[0] if sampler else logps

    def sampler_truncation(self) -> tuple[float, int] | None:
        """(top_p, top_k) when the rollout sampler truncates the distribution (so its log-probs are renormalised
        over the kept tokens), else None."""
        s = self.sampling
        return (float(s.top_p), int(s.top_k or 0)) if s.top_p < 1.0 or (s.top_k or 0) > 0 else None

    def optimise(self, rollout: RolloutBatch) -> dict[str, float]:
        b, opt, sched = self.batching, self.optimizers(), self.lr_schedulers()
        started = time.perf_counter()
        world = self.trainer.world_size
        no_signal = bool((rollout.advantages == 0).all()) and self.objective.beta == 0.0
        skip = no_signal and b.skip_zero_signal_steps and world == 1
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        losses: list[float] = []
        grad_norms: dict[str, list[float]] = {}
        trained_tokens, nonfinite = 0, 0
        if len(rollout) % b.steps_per_generation:
            raise RecipeConfigError(f"model.batching.steps_per_generation={b.steps_per_generation} does not divide the "
                                    f"{len(rollout)} rows of the generation batch (batch_size x num_generations); "
                                    "pick a divisor so every optimiser step sees the same number of rows")
        mini_size = len(rollout) // b.steps_per_generation
        for _ in range(b.num_iterations):
            for mini in rollout.micro_batches(mini_size):
                mini_tokens = int(mini.completion_mask.sum())
                # Under DDP the gradients are averaged over ranks: normalise by the per-rank share of the global
                # rows/tokens so that the average is the objective of the whole (all-rank) mini-batch.
                rows, tokens = self._global_mean_counts(len(mini), max(mini_tokens, 1))
                if not skip:
                    total = 0.0
                    micros = mini.micro_batches(b.micro_batch_size)
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
                    norms = self.clip_gradients_by_group(opt, self.optimizer_settings.max_grad_norm)
                    if all(math.isfinite(v) for v in norms.values()):
                        for name, norm in norms.items():
                            grad_norms.setdefault(name, []).append(norm)
                        trained_tokens += mini_tokens
                    else:  # a NaN/inf gradient would poison the weights and AdamW's moments for good: skip it
                        nonfinite += 1
                        opt.zero_grad(set_to_none=True)
                        rank_zero_warn(f"step {self.global_step}: non-finite gradient norm {norms}; this update is "
                                       "skipped (train/nonfinite_grad_updates). Check the rewards, the learning rate "
                                       "and the reference log-probs")
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
        out["nonfinite_grad_updates"] = float(nonfinite)
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
        stats = rollout.stats
        generate_s = stats.get("generate_s", 0.0)
        out: dict[str, float] = {
            "reward": float(rollout.rewards.mean()),
            "reward_std": float(rollout.rewards.std()) if len(rollout) > 1 else 0.0,
            "advantage_std": float(rollout.advantages.float().std()) if rollout.advantages.numel() > 1 else 0.0,
            "completion_length": float(lengths.mean()),
            "completion_length/min": float(lengths.min()),
            "completion_length/max": float(lengths.max()),
            "truncated_ratio": float(rollout.truncated.float().mean()),
            "tokens_per_s/generate": stats.get("generated_tokens", 0.0) / generate_s if generate_s else 0.0,
            "generated_tokens": stats.get("generated_tokens", 0.0),  # every sampled token, dropped groups included
            "time/generate_s": generate_s,
            "time/step_s": self.elapsed_step_s(),
            "lr": float(self.optimizers().param_groups[0]["lr"]),
            **_memory_metrics(self.device),
        }
        for key in ("weight_sync_s", "engine_start_s"):
            if stats.get(key):
                out[f"time/{key}"] = stats[key]
        out.update({f"time/reward/{k[len(REWARD_SECONDS):]}_s": v for k, v in stats.items()
                    if k.startswith(REWARD_SECONDS)})
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


def logp_inputs(rollout: RolloutBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four tensors a log-prob forward takes."""
    return rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_attention_mask


def _memory_metrics(device: torch.device) -> dict[str, float]:
    """Peak memory of the step: CUDA allocated/reserved (then reset), else the process's peak RSS, in GB."""
    if device.type == "cuda":
        out = {"memory/peak_allocated_gb": torch.cuda.max_memory_allocated(device) / 1e9,
               "memory/peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 1e9}
        torch.cuda.reset_peak_memory_stats(device)
        return out
    import resource

    return {"memory/peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}  # KB on Linux


def _keep_informative(rollout: RolloutBatch, g: int) -> RolloutBatch:
    flat = zero_variance_groups(rollout.rewards, g)  # (B,)
    rows = (~flat).repeat_interleave(g)  # (N,)
    return rollout.select(rows)


__all__ = ["HOOKS", "BatchSettings", "RLRecipe", "RecipeConfigError", "logp_inputs", "recipe_settings"]
