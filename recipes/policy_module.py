"""`PolicyModule`: what every training recipe shares, RL or SFT, as one LightningModule.

It builds the policy (Hugging Face model; LoRA / QLoRA; the KL reference), the reward set and the rollout engine;
generates and scores rows (`generate_and_score`); runs held-out evaluation (`evaluate`, used by
`callbacks.HeldOutEval`); builds the optimiser and schedule from `OptimizerSettings`; clips gradients per
parameter group; and writes checkpoints that hold the trainable weights only, the RNG state and a recipe's own
state. `RLRecipe` (recipes/base.py) adds the RL loop, `SFT` (recipes/sft.py) teacher forcing.

The hooks a recipe may override (the whole table, RL and SFT included, is in docs/recipes.md; a test fails when a
recipe overrides anything else):

| hook | contract |
|---|---|
| `build_rollout() -> RolloutEngine` | the engine that samples completions (HF generate, vLLM, multi-turn tools, ...) |
| `generate(rows, *, purpose, greedy, num_generations) -> RolloutBatch` | sample completions for prompt rows; `purpose` is "train" or "eval" |
| `score(rollout, *, purpose, **reward_kwargs) -> RolloutBatch` | fill `rewards` / `rewards_per_func`; extra keywords reach every reward function |
| `eval_metrics(rollouts) -> dict` | extra held-out metrics from the greedy evaluation rollouts |
| `parameter_groups() -> list[dict]` | optimiser parameter groups, each with a `name` (clipped separately) |
| `recipe_state() -> dict` / `load_recipe_state(state)` | a recipe's own state in checkpoints (statistics, counters, RNG) |

plus Lightning's own hooks `on_fit_start`, `on_train_batch_start` and `setup` for work around training.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from typing import Any, Callable

import lightning as L
import torch
from torch import Tensor

from modules.optim import OptimizerSettings
from modules.policy import LoraSettings, Policy
from modules.rewards import RewardSet, RewardSpec
from modules.rollout.batch import RolloutBatch, add_stats
from modules.rollout.engine import RolloutEngine, SamplingSettings, split_rows
from modules.rollout.hf import HFGenerateEngine
from modules.rollout.vllm import VLLMEngine, VLLMSettings
from modules.settings import SettingsError, check_choice, settings_from, signature_default
from modules.vision import VisionSettings

ROLLOUT_ENGINES = ("hf", "vllm")
PURPOSES = ("train", "eval")
REWARD_SECONDS = "reward_s/"  # rollout.stats key prefix: seconds each reward function took
HOOKS = ("build_rollout", "generate", "score", "eval_metrics", "parameter_groups", "recipe_state",
         "load_recipe_state")
"""The methods of `PolicyModule` a recipe may override."""


class RecipeConfigError(SettingsError):
    """A bad recipe setting; the message names the field and the fix."""


class PolicyModule(L.LightningModule):
    """A policy with its rewards, sampling, evaluation, optimiser and checkpoints (the base of every recipe)."""

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
    ) -> None:
        """
        Args:
            model_name_or_path: Local directory, model alias (`smollm2-135m-instruct`, `tiny-qwen2`) or hub id.
            rewards: Reward functions: names from the registry (`format`, `accuracy`, `reward_model` for a local
                sequence-classification model, the papers' rewards, ...) or `{name, weight, kwargs, timeout,
                on_timeout}` entries; a dotted path `pkg.module.fn` loads your own (sync or async) function.
            lora: LoRA adapter settings; null = full fine-tune.
            quantization: null, "4bit" (QLoRA, NF4 via bitsandbytes) or "8bit"; needs `lora`.
            dtype: Model weights dtype: float32, bfloat16 or float16.
            gradient_checkpointing: Trade compute for activation memory.
            reference: KL reference: auto (adapter disabled for LoRA, frozen copy otherwise), adapter, copy, none.
            sampling: Sampling settings (max_new_tokens, temperature, top_p, top_k, stop, chat_template).
            generation_batch_size: Rows per `generate` call (null = all at once; HF engine only).
            rollout_engine: hf (transformers `generate` on the policy itself) or vllm (a colocated vLLM engine that
                receives the policy's weights after every optimisation phase; needs the `vllm` extra).
            vllm: Settings of the vLLM engine (gpu_memory_utilization, weight_sync merged|adapter, sleep mode,
                tensor_parallel_size, ...); used when rollout_engine=vllm.
            accuracy_reward: Name of the reward function whose value 1.0 means "correct" (logged as accuracy).
            optimizer: AdamW, gradient clipping and learning-rate schedule.
            vision: Vision-language models (any `AutoModelForImageTextToText` checkpoint; rows carry `images`):
                train_tower, max_pixels, min_pixels. Null = the defaults; a text model takes none.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["rewards"] if _has_callables(rewards) else None)
        self.strict_loading = False  # checkpoints hold trainable weights only (see on_save_checkpoint)
        # Checked before any model loads: a bad value fails in a second, not after the download.
        check_choice("model.rollout_engine", rollout_engine, ROLLOUT_ENGINES)
        if generation_batch_size is not None and int(generation_batch_size) < 1:
            raise RecipeConfigError(f"model.generation_batch_size={generation_batch_size}; give >= 1 rows per "
                                    "generate call, or null for all at once")
        self.optimizer_settings = recipe_settings(type(self), OptimizerSettings, optimizer, "optimizer")
        self.sampling = recipe_settings(type(self), SamplingSettings, sampling, "sampling")
        self.vllm_settings = recipe_settings(type(self), VLLMSettings, vllm, "vllm")
        self.rollout_engine_name = rollout_engine
        self.generation_batch_size = generation_batch_size
        try:
            self.reward_set = RewardSet.from_specs(rewards)
        except (ValueError, TypeError) as err:
            raise RecipeConfigError(f"model.rewards: {err}") from err
        if accuracy_reward is not None and accuracy_reward not in self.reward_set.names and \
                accuracy_reward != signature_default(type(self), "accuracy_reward"):
            raise RecipeConfigError(f"model.accuracy_reward={accuracy_reward!r} is not one of model.rewards "
                                    f"{list(self.reward_set.names)}; name one of them, or null")
        # The recipe's default names a reward the config may not use: then nothing is reported as accuracy.
        self.accuracy_reward = accuracy_reward if accuracy_reward in self.reward_set.names else None
        vision_settings = recipe_settings(type(self), VisionSettings, vision, "vision") if vision is not None else None
        self.policy = Policy.from_pretrained(model_name_or_path, lora=lora, quantization=quantization, dtype=dtype,
                                             gradient_checkpointing=gradient_checkpointing, reference=reference,
                                             vision=vision_settings)
        if vision is not None and self.policy.vision is None:
            raise RecipeConfigError(f"model.vision is set but {model_name_or_path!r} is a text model (no vision "
                                    "tower); remove model.vision or load a vision-language checkpoint")
        self.policy.model.train()  # from_pretrained returns eval mode; dropout follows the Trainer from here
        self._engine: RolloutEngine | None = None
        self.last_eval_records: list[dict[str, Any]] = []  # per prompt, set by `evaluate`
        if rollout_engine == "vllm":
            if type(self).build_rollout is not PolicyModule.build_rollout:
                raise RecipeConfigError(f"model.rollout_engine=vllm: {type(self).__name__} builds its own rollout "
                                        "engine, which vLLM cannot replace; use hf")
            _ = self.rollout_engine  # start vLLM now: a missing extra or a bad vllm.* setting fails at construction

    # ------------------------------------------------------------------ hooks
    def build_rollout(self) -> RolloutEngine:
        """The rollout engine: HF generate, or a colocated vLLM engine (`rollout_engine: vllm`)."""
        if self.rollout_engine_name == "vllm":
            try:
                return VLLMEngine(self.policy, self.sampling, self.vllm_settings)
            except (ValueError, ImportError) as err:  # a bad vllm.* setting or no vLLM: a one-line config error
                raise RecipeConfigError(str(err)) from err
        return HFGenerateEngine(self.policy, self.sampling, generation_batch_size=self.generation_batch_size)

    def generate(self, rows: list[dict], *, purpose: str, greedy: bool = False, num_generations: int = 1
                 ) -> RolloutBatch:
        """`num_generations` completions per prompt row (rows of a group adjacent); stats in `batch.stats`."""
        prompts, columns = split_rows(rows)
        return self.rollout_engine.generate(prompts, columns, num_generations=num_generations, greedy=greedy)

    def score(self, rollout: RolloutBatch, *, purpose: str, **reward_kwargs: Any) -> RolloutBatch:
        """Fill rollout.rewards (N,) and rollout.rewards_per_func (N, F) from the reward functions.

        Every function receives the dataset columns, `completion_lengths`, `truncated` and `group_ids` (so a
        group-aware reward sees its siblings), plus `reward_kwargs` (what a recipe passes: a verifier, targets...).
        """
        kwargs = {"completion_lengths": rollout.completion_lengths.tolist(), "truncated": rollout.truncated.tolist(),
                  "group_ids": rollout.group_ids.tolist(), **reward_kwargs}
        per_func, total, seconds = self.reward_set.score(rollout.prompts, rollout.completions, rollout.columns,
                                                         **kwargs)
        rollout.rewards_per_func = per_func.to(self.device)
        rollout.rewards = total.to(self.device)
        rollout.reward_names = list(self.reward_set.names)
        rollout.stats = add_stats(rollout.stats, {f"{REWARD_SECONDS}{name}": s for name, s in seconds.items()})
        return rollout

    def eval_metrics(self, rollouts: list[RolloutBatch]) -> dict[str, float]:
        """Extra held-out metrics (`eval/...` keys) from the greedy rollouts of `evaluate`, in row order."""
        return {}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups, each with a `name` (gradients are clipped per group); PPO adds its critic."""
        return [{"name": "policy", "params": list(self.policy.trainable_parameters())}]

    def recipe_state(self) -> dict[str, Any]:
        """A recipe's own state saved in checkpoints (plain types and tensors)."""
        return {}

    def load_recipe_state(self, state: dict[str, Any]) -> None:
        """Restore what `recipe_state` returned (called when a checkpoint is loaded)."""

    # ------------------------------------------------------------------ sampling and scoring
    @property
    def rollout_engine(self) -> RolloutEngine:
        """The engine `build_rollout` makes, built on first use (a recipe's engine may need parts it builds after
        the policy loads)."""
        if self._engine is None:
            self._engine = self.build_rollout()
        return self._engine

    def generate_and_score(self, rows: list[dict], *, purpose: str, greedy: bool = False, num_generations: int = 1
                           ) -> RolloutBatch:
        check_choice("purpose", purpose, PURPOSES)
        rollout = self.generate(rows, purpose=purpose, greedy=greedy, num_generations=num_generations)
        return self.score(rollout, purpose=purpose)

    def accuracy_values(self, rollout: RolloutBatch) -> Tensor:
        """(N,) the `accuracy_reward` column of a scored rollout, None (NaN) as 0."""
        col = rollout.rewards_per_func[:, rollout.reward_names.index(self.accuracy_reward)]
        return torch.nan_to_num(col, nan=0.0)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, rows: list[dict], *, k: int = 1, batch_size: int = 16) -> dict[str, float]:
        """Held-out metrics: greedy reward/accuracy/length (+ each reward function's mean and the recipe's
        `eval_metrics`), and pass@k from k samples when k > 1.

        Also sets `last_eval_records`: one dict per prompt, in `rows` order, with its greedy `completion`,
        `completion_length`, `reward`, `accuracy` (None without an accuracy reward), `rewards` (each function's
        value, None where it returned None), `pass` (k > 1) and the row's `domain` when it has one; `r1 compare`
        bootstraps over them."""
        from torchmetrics.aggregation import MeanMetric
        from tqdm.auto import tqdm

        meters = {name: MeanMetric().to(self.device) for name in ("reward", "accuracy", "completion_length", "pass")}
        # per reward function (a format rate, ...); None rows (NaN) are not counted
        per_func = {name: MeanMetric(nan_strategy="ignore").to(self.device) for name in self.reward_set.names}
        show = self._trainer is None or self.trainer.is_global_zero
        chunks = range(0, len(rows), batch_size)
        greedy_rollouts, records = [], []
        for i in tqdm(chunks, desc=f"held-out eval ({len(rows)} prompts)", leave=False,
                      disable=not show or len(chunks) < 2):
            if self._trainer is not None and self.trainer.received_sigterm:  # preempted: stop now, not after
                from lightning.pytorch.utilities.exceptions import SIGTERMException

                raise SIGTERMException()
            chunk = rows[i:i + batch_size]
            greedy = self.generate_and_score(chunk, purpose="eval", greedy=True, num_generations=1)
            greedy_rollouts.append(greedy)
            meters["reward"].update(greedy.rewards)
            meters["completion_length"].update(greedy.completion_lengths.float())
            for j, name in enumerate(greedy.reward_names):
                per_func[name].update(greedy.rewards_per_func[:, j])
            if self.accuracy_reward is not None:
                meters["accuracy"].update(self.accuracy_values(greedy))
            chunk_records = _prompt_records(greedy, self.accuracy_values(greedy)
                                            if self.accuracy_reward is not None else None)
            if k > 1 and self.accuracy_reward is not None:
                sampled = self.generate_and_score(chunk, purpose="eval", num_generations=k)
                correct = self.accuracy_values(sampled).view(-1, k)  # (B, k)
                passed = (correct > 0.5).any(dim=1).float()
                meters["pass"].update(passed)
                for record, value in zip(chunk_records, passed.tolist()):
                    record["pass"] = value
            records.extend(chunk_records)
        out = {"eval/reward": float(meters["reward"].compute()),
               "eval/completion_length": float(meters["completion_length"].compute())}
        means = {name: float(m.compute()) for name, m in per_func.items()}
        # a reward that scores no held-out row (None everywhere: AvatarShield's temporal reward without shuffled
        # copies) has no mean: it is left out rather than logged as NaN
        out.update({f"eval/rewards/{name}/mean": v for name, v in means.items() if v == v})
        if self.accuracy_reward is not None:
            out["eval/accuracy"] = float(meters["accuracy"].compute())
            if k > 1:
                out[f"eval/pass@{k}"] = float(meters["pass"].compute())
        out.update(self.eval_metrics(greedy_rollouts))
        self.last_eval_records = records
        return out

    # ------------------------------------------------------------------ optimiser
    def configure_model(self) -> None:
        """Shard the policy under FSDP2 (`modules.distributed.FSDP2Strategy`) and refuse strategies the recipe cannot
        use (Lightning's FSDP1; DeepSpeed with the loop's gradient clipping). A no-op under DDP or on one device."""
        from modules.distributed import configure_sharding

        configure_sharding(self)

    def configure_optimizers(self):
        groups = self.parameter_groups()
        if not groups[0]["params"]:
            raise RecipeConfigError("the policy has no trainable parameters; check model.lora / model.quantization")
        opt = self.optimizer_settings.build(groups)
        opt._r1_from_settings = True  # on_train_start re-applies the settings over a restored state
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        total = None if total is None or math.isinf(total) else int(total)
        try:
            sched = self.optimizer_settings.schedule(opt, total)
        except SettingsError as err:
            raise RecipeConfigError(str(err)) from None
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_start(self) -> None:
        """Apply the configured optimiser settings over a restored optimiser state: a checkpoint's state holds its
        own learning rate, weight decay and betas, and resuming with changed ones must use the new values."""
        if self.trainer.ckpt_path is None:
            return  # a fresh run: the optimiser was just built from the settings
        optimizers = self.optimizers(use_pl_optimizer=False)
        optimizer = optimizers[0] if isinstance(optimizers, list) else optimizers
        if not getattr(optimizer, "_r1_from_settings", False):
            return  # a recipe that builds its own optimiser (a test's plain SGD)
        s = self.optimizer_settings
        wanted = [g.get("lr", s.learning_rate) for g in self.parameter_groups()]
        schedulers = self.lr_schedulers()
        scheduler = schedulers[0] if isinstance(schedulers, list) else schedulers
        factor = scheduler.lr_lambdas[0](scheduler.last_epoch) if scheduler is not None else 1.0
        for group, base in zip(optimizer.param_groups, wanted):
            group.update(lr=base * factor, initial_lr=base, weight_decay=s.weight_decay, betas=tuple(s.adam_betas))
        if scheduler is not None:
            scheduler.base_lrs = list(wanted)

    def clip_gradients_by_group(self, optimizer: torch.optim.Optimizer, limit: float | None) -> dict[str, float]:
        """Clip each parameter group's gradient norm to `limit` (None: measure only); {group name: norm before
        clipping}. A non-finite norm is returned as is (the caller skips that update)."""
        norms = {}
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                norm = torch.nn.utils.clip_grad_norm_(params, math.inf if limit is None else limit)
                norms[group.get("name", "policy")] = float(norm)
        return norms

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Frozen weights (a LoRA base, a quantized base) are reloaded from model_name_or_path: keep only
        # what training changes, so a LoRA checkpoint of a 7B model is megabytes, not gigabytes.
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        # Plain types only, so the checkpoint loads with torch.load(weights_only=True) (Lightning's default).
        checkpoint["hyper_parameters"] = _plain(dict(self.hparams))
        checkpoint["r1_rng"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        state = self.recipe_state()
        if state:
            checkpoint["recipe_state"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("r1_rng")
        if rng:  # resume sampling exactly where the interrupted run was
            torch.set_rng_state(rng["torch"])
            random.setstate(tuple(rng["python"]))
            if rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        self.load_recipe_state(checkpoint.get("recipe_state") or {})


def _prompt_records(rollout: RolloutBatch, accuracy: Tensor | None) -> list[dict[str, Any]]:
    """One plain dict per row of a scored greedy rollout (see `PolicyModule.evaluate`)."""
    per_func = rollout.rewards_per_func.tolist()
    domains = rollout.columns.get("domain")
    records = []
    for i in range(len(rollout)):
        record = {"completion": rollout.completions[i], "completion_length": int(rollout.completion_lengths[i]),
                  "reward": float(rollout.rewards[i]),
                  "accuracy": None if accuracy is None else float(accuracy[i]),
                  "rewards": {name: (None if v != v else float(v)) for name, v in zip(rollout.reward_names,
                                                                                      per_func[i])}}
        if domains is not None:
            record["domain"] = domains[i]
        records.append(record)
    return records


def recipe_settings(recipe: type, cls: type, value: Any, name: str) -> Any:
    """`value` of the settings group `name` (`objective`, `optimizer`, ...) of `recipe`: an instance as given, a
    dict laid over the recipe's own default for that group, or None for that default."""
    return settings_from(cls, value, f"model.{name}", signature_default(recipe, name))


def prefixed_metrics(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """`metrics` under `prefix/`; undefined values (NaN: a rate over no rows) are left out rather than logged."""
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items() if v == v}


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


def _has_callables(rewards: list[Any] | None) -> bool:
    return any(isinstance(r, Callable) and not isinstance(r, (str, RewardSpec)) for r in rewards or [])  # type: ignore[arg-type]


__all__ = ["HOOKS", "PURPOSES", "PolicyModule", "RecipeConfigError", "prefixed_metrics", "recipe_settings"]
