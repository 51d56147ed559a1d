"""Bad-input sweep: what a new user meets when a value is wrong. Each case runs `r1 fit` (in process, on the tiny
test model, 1 step) or a Python constructor and is classified:

- clear: exit status 2 (or a `SettingsError`-family exception from Python) with one line that names the field;
- traceback: any other exception, or more than one error line;
- silent: the run accepted the value (exit 0 / no exception).

    python benchmarks/bad_input_sweep.py [--out benchmarks/results/bad_inputs.json]

Prints a table and the counts. Needs no network; takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _fit_base(model: str, root: Path) -> list[str]:
    return ["fit", "--config", str(ROOT / "recipes/configs/grpo.yaml"), "--model.model_name_or_path", model,
            "--trainer.default_root_dir", str(root), "--trainer.logger", "false", "--trainer.callbacks", "[]",
            "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "1", "--model.sampling.max_new_tokens",
            "4", "--model.num_generations", "2", "--data.batch_size", "2", "--data.num_rows", "16",
            "--data.val_size", "0", "--trainer.enable_checkpointing", "false"]


def cli_cases(work: Path) -> list[tuple[str, list[str]]]:
    empty = work / "empty_model"
    empty.mkdir(exist_ok=True)
    latin1 = work / "latin1.jsonl"
    latin1.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    badjson = work / "bad.jsonl"
    badjson.write_text('{"prompt": "ok"}\n{"prompt": \n')
    truncated = work / "truncated.ckpt"
    truncated.write_bytes(b"PK\x03\x04 half")
    blocker = work / "a-file"
    blocker.write_text("")
    return [
        ("max_grad_norm negative", ["--model.optimizer.max_grad_norm", "-1"]),
        ("max_grad_norm zero", ["--model.optimizer.max_grad_norm", "0"]),
        ("beta negative", ["--model.objective.beta", "-0.1"]),
        ("delta <= 1 + epsilon_high", ["--model.objective.delta", "1.1"]),
        ("epsilon_low negative", ["--model.objective.epsilon_low", "-0.1"]),
        ("epsilon_high negative", ["--model.objective.epsilon_high", "-0.1"]),
        ("warmup_steps negative", ["--model.optimizer.warmup_steps", "-1"]),
        ("learning_rate zero", ["--model.optimizer.learning_rate", "0"]),
        ("learning_rate negative, exponent", ["--model.optimizer.learning_rate", "-1e-3"]),
        ("top_p above 1", ["--model.sampling.top_p", "1.5"]),
        ("top_p zero", ["--model.sampling.top_p", "0"]),
        ("top_k negative", ["--model.sampling.top_k", "-1"]),
        ("temperature zero", ["--model.sampling.temperature", "0"]),
        ("max_new_tokens zero", ["--model.sampling.max_new_tokens", "0"]),
        ("generation_batch_size zero", ["--model.generation_batch_size", "0"]),
        ("empty stop string", ["--model.sampling.stop", '[""]']),
        ("steps_per_generation not dividing the rows", ["--model.batching.steps_per_generation", "3"]),
        ("num_generations 1 with group advantages", ["--model.num_generations", "1"]),
        ("micro_batch_size zero", ["--model.batching.micro_batch_size", "0"]),
        ("num_iterations zero", ["--model.batching.num_iterations", "0"]),
        ("adam beta above 1", ["--model.optimizer.adam_betas", "[1.5, 0.9]"]),
        ("unknown loss_type", ["--model.objective.loss_type", "grpo2"]),
        ("unknown kl_estimator", ["--model.objective.kl_estimator", "k9"]),
        ("unknown scale_rewards", ["--model.objective.scale_rewards", "std"]),
        ("unknown lr_schedule", ["--model.optimizer.lr_schedule", "linear"]),
        ("unknown rollout_engine", ["--model.rollout_engine", "sglang"]),
        ("vllm engine without vllm", ["--model.rollout_engine", "vllm"]),
        ("unknown accuracy_reward", ["--model.accuracy_reward", "acc"]),
        ("unknown option", ["--model.learning_rate", "1e-5"]),
        ("learning_rate not a number", ["--model.optimizer.learning_rate", "abc"]),
        ("missing model folder", ["--model.model_name_or_path", str(work / "nope")]),
        ("empty model folder", ["--model.model_name_or_path", str(empty)]),
        ("hub id offline", ["--model.model_name_or_path", "someone/uncached-model"]),
        ("unknown quantization", ["--model.quantization", "3bit"]),
        ("quantization without lora", ["--model.quantization", "4bit", "--model.lora", "null"]),
        ("unknown dtype", ["--model.dtype", "float8"]),
        ("lora rank zero", ["--model.lora", "{r: 0}"]),
        ("non-UTF-8 data file", ["--data.source", str(latin1), "--data.task", "null"]),
        ("invalid JSONL line", ["--data.source", str(badjson), "--data.task", "null"]),
        ("missing data file", ["--data.source", str(work / "nope.jsonl"), "--data.task", "null"]),
        ("batch_size zero", ["--data.batch_size", "0"]),
        ("val_size larger than the data", ["--data.val_size", "1000"]),
        ("unknown task", ["--data.task", "algebra"]),
        ("unknown reward", ["--model.rewards", "[accuracyy]"]),
        ("reward module not on the path", ["--model.rewards", "[{name: my_rewards.brevity}]"]),
        ("reward timeout negative", ["--model.rewards", "[{name: accuracy, timeout: -1}]"]),
        ("reward weight not finite", ["--model.rewards", "[{name: accuracy, weight: .nan}]"]),
        ("missing checkpoint", ["--ckpt_path", str(work / "nope.ckpt")]),
        ("truncated checkpoint", ["--ckpt_path", str(truncated)]),
        ("unwritable run directory", ["--trainer.default_root_dir", str(blocker / "run")]),
        ("cosine schedule with no end", ["--model.optimizer.lr_schedule", "cosine", "--trainer.max_steps", "-1",
                                         "--trainer.max_epochs", "-1"]),
        ("rollout_correction truncate without clip_max", ["--model.rollout_correction",
                                                          "{mode: token_truncate, clip_max: null}"]),
    ]


def api_cases(model: str) -> list[tuple[str, Callable[[], Any]]]:
    from modules.objectives import ObjectiveSettings
    from modules.objectives.tis import RolloutCorrectionSettings
    from modules.optim import OptimizerSettings
    from modules.rewards import RewardSet, RewardSpec
    from modules.rollout.engine import SamplingSettings
    from recipes.base import BatchSettings
    from recipes.grpo import GRPO

    return [
        ("num_generations as a string", lambda: GRPO(model, rewards=["accuracy"], num_generations="4")),
        ("sampling as a dict with a bad value", lambda: GRPO(model, rewards=["accuracy"], sampling={"top_p": 2.0})),
        ("objective dict with an unknown field", lambda: GRPO(model, rewards=["accuracy"], objective={"lr": 1})),
        ("optimizer with a negative clip", lambda: GRPO(model, rewards=["accuracy"],
                                                        optimizer=OptimizerSettings(max_grad_norm=-1.0))),
        ("no rewards", lambda: GRPO(model, rewards=[])),
        ("unknown reward", lambda: GRPO(model, rewards=["nope"])),
        ("bad reward weight", lambda: RewardSet.from_specs([RewardSpec("accuracy", weight=float("inf"))])),
        ("ObjectiveSettings beta negative", lambda: ObjectiveSettings(beta=-1.0)),
        ("ObjectiveSettings delta too small", lambda: ObjectiveSettings(delta=1.0)),
        ("SamplingSettings max_new_tokens zero", lambda: SamplingSettings(max_new_tokens=0)),
        ("SamplingSettings temperature negative", lambda: SamplingSettings(temperature=-1.0)),
        ("BatchSettings micro_batch_size zero", lambda: BatchSettings(micro_batch_size=0)),
        ("BatchSettings steps as float", lambda: BatchSettings(steps_per_generation=1.5)),
        ("OptimizerSettings warmup_ratio 1", lambda: OptimizerSettings(warmup_ratio=1.0)),
        ("RolloutCorrectionSettings unknown mode", lambda: RolloutCorrectionSettings(mode="clip")),
        ("GRPO lora rank zero", lambda: GRPO(model, rewards=["accuracy"], lora={"r": 0})),
        ("GRPO unknown model path", lambda: GRPO(str(Path("/nonexistent/model")), rewards=["accuracy"])),
        ("GRPO accuracy_reward not a reward", lambda: GRPO(model, rewards=["format"], accuracy_reward="acc")),
    ]


def classify_cli(argv: list[str]) -> tuple[str, str]:
    from recipes.cli import main

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 - a traceback wall is what we count
        return "traceback", traceback.format_exc().strip().splitlines()[-1][:160]
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("r1: error")]
    if code == 0:
        return "silent", ""
    if code == 2 and len(lines) == 1 and "Traceback" not in err.getvalue():
        return "clear", lines[0][len("r1: error: "):][:160]
    return "traceback", (lines or err.getvalue().strip().splitlines() or [f"exit {code}"])[-1][:160]


def classify_api(fn: Callable[[], Any]) -> tuple[str, str]:
    from recipes.cli.fit import _config_errors

    try:
        fn()
    except (*_config_errors(), ValueError) as err:
        text = str(err)
        return ("clear" if "\n" not in text.strip() else "traceback"), text[:160]
    except BaseException as err:  # noqa: BLE001
        return "traceback", f"{type(err).__name__}: {err}"[:160]
    return "silent", ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/bad_inputs.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from modules.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = str(build_tiny_model(work / "tiny"))
        os.chdir(work)  # the sweep's runs write here
        results = []
        for name, extra in cli_cases(work):
            verdict, message = classify_cli(_fit_base(model, work / "run") + extra)
            results.append({"via": "r1 fit", "case": name, "verdict": verdict, "message": message})
            print(f"{verdict:10s} r1 fit  {name:45s} {message}", flush=True)
        for name, fn in api_cases(model):
            verdict, message = classify_api(fn)
            results.append({"via": "python", "case": name, "verdict": verdict, "message": message})
            print(f"{verdict:10s} python  {name:45s} {message}", flush=True)
    counts = {v: sum(r["verdict"] == v for r in results) for v in ("clear", "traceback", "silent")}
    print(f"\n{len(results)} bad inputs: {counts['clear']} clear, {counts['traceback']} traceback, "
          f"{counts['silent']} silent")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"counts": counts, "cases": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
