"""Mixture-of-Thought (MoT; Zheng, Chen, Han, McCoy, Huang; arXiv 2505.15817): self-evolving training over three
reasoning modalities and majority-vote inference, as pipeline stages (`recipes.cli.stages`, `r1 run`).

One self-evolving round (`self_evolve_round`, a call stage): sample k rationales per (problem, modality) with the
current model (`modules.rollout.hf.HFGenerateEngine`), keep those with a correct final answer AND a valid modality
format (`modules.papers.mot.modalities.filter_rationales`, R = 1[answer = gold] · 1[format_ok]), merge them into the MoT SFT set
(JSONL in the stage directory); the next stage fine-tunes on it with the one SFT LightningModule
(`recipes.sft.SFT`, `recipes/configs/mot_sft.yaml`). `recipes/pipelines/mot.yaml` chains round 0 (few-shot
sampling) -> SFT -> round 1 (zero-shot) -> SFT -> `evaluate_stage` (every modality greedy + the all-modality vote).

Implemented: the three modalities with format checkers (truth tables verified row by row against the problem),
the correct-and-well-formed filter, SFT on zero-shot prompts (the modality chosen by a `<modality>` tag),
few-shot round 0, majority vote with a fixed modality-priority tie-break, per-modality and vote accuracy.
Documented substitutes: random propositional-logic problems with brute-force labels (`datamodules.tasks.logic`)
instead of FOLIO / ProofWriter; our own prompt wording and few-shot examples written by `oracle_rationale` (the
paper's are NOT FOUND); `oracle_rows` optionally adds oracle-written rationales to a round's set (off by default;
for a small CPU model that writes no correct, well-formed rationale of its own).
[unverified], so options: the number of rounds (add round/SFT stage pairs), which checkpoint each round's SFT
starts from (`restart_from_base`), whether rounds accumulate earlier rounds' data (`accumulate`), k and the
tie-break order (`priority`). Code rationales are never run in-process; `execute_code` runs them in
`modules.papers.mot.modalities.run_code_sandboxed`, under OS isolation (`modules.sandbox`; off by default: the
paper does not execute code).
"""

from __future__ import annotations

import dataclasses
import gc
import json
from collections import Counter
from pathlib import Path
from typing import Any

from datamodules.tasks.logic import few_shot_examples, make_logic
from modules.papers.mot.modalities import (DEFAULT_PRIORITY, MODALITIES, build_prompt, check_format, clean_completion, extract_answer,
                         filter_rationales, majority_vote, oracle_rationale)
from modules.rollout.engine import SamplingSettings
from recipes.base import RecipeConfigError

SFT_FILE, DROPPED_FILE, STATS_FILE = "sft_data.jsonl", "dropped.jsonl", "round_stats.json"
_PROBLEM_KEYS = ("question", "answer", "choice", "atoms", "premises", "conclusion")


# ------------------------------------------------------------------------------------------------ sampling
def sample_rationales(model_path: str, prompts: list[str], *, k: int, sampling: SamplingSettings,
                      greedy: bool = False, batch_size: int = 16, dtype: str = "float32") -> list[list[str]]:
    """k completions per prompt from the model at `model_path` (loaded as the recipes load a policy, on CUDA when
    available), batched through `HFGenerateEngine`; `batch_size` prompts per generate call."""
    import torch

    from modules.policy import Policy
    from modules.rollout.hf import HFGenerateEngine

    policy = Policy.from_pretrained(model_path, dtype=dtype, reference="none")
    if torch.cuda.is_available():
        policy.model.to("cuda")
    engine = HFGenerateEngine(policy, sampling)
    out: list[list[str]] = []
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            texts = engine.generate(chunk, {}, num_generations=k, greedy=greedy).completions
            out.extend(texts[j * k:(j + 1) * k] for j in range(len(chunk)))
    finally:
        del engine, policy
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


def _settings(sampling: dict | None, *, few_shot: int) -> SamplingSettings:
    try:
        settings = SamplingSettings(**(sampling or {}))
    except TypeError as err:
        raise RecipeConfigError(f"mot: sampling={sampling!r}: {err}; use SamplingSettings fields "
                                "(max_new_tokens, temperature, top_p, top_k, stop, chat_template)") from None
    if few_shot and not settings.stop:
        settings = dataclasses.replace(settings, stop=["\nProblem:"])  # a few-shot prompt invites the next problem
    return settings


def _modalities(modalities: list[str] | None) -> tuple[str, ...]:
    chosen = tuple(modalities or MODALITIES)
    bad = [m for m in chosen if m not in MODALITIES]
    if bad or not chosen:
        raise RecipeConfigError(f"mot: modalities={list(chosen)}; choose from {list(MODALITIES)}")
    return chosen


# ------------------------------------------------------------------------------------------------ one round
def merge_sft_rows(previous: list[dict], new: list[dict]) -> list[dict]:
    """`previous` then `new`, without repeating a (prompt, response) pair.

    >>> [r["response"] for r in merge_sft_rows([{"prompt": "q", "response": "a"}],
    ...                                        [{"prompt": "q", "response": "a"}, {"prompt": "q", "response": "b"}])]
    ['a', 'b']
    """
    seen, out = set(), []
    for row in [*previous, *new]:
        key = (row["prompt"], row["response"])
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def self_evolve_round(stage_dir: Path, model_path: str, *, round_index: int = 0, num_problems: int = 64,
                      seed: int = 0, task_kwargs: dict | None = None, modalities: list[str] | None = None,
                      k: int = 2, few_shot: int = 0, sampling: dict | None = None, batch_size: int = 16,
                      dtype: str = "float32", previous_data: str | None = None, accumulate: bool = True,
                      restart_from_base: bool = False, base_model: str | None = None, oracle_rows: int = 0,
                      verify: bool = True, execute_code: bool = False, code_timeout: float = 5.0,
                      allow_unsandboxed: bool = False, min_rows: int = 1) -> dict[str, Any]:
    """A pipeline call stage: one self-evolving round (sample -> filter -> merge); returns the SFT set's path.

    Args:
        stage_dir: The stage directory (the pipeline gives it); `sft_data.jsonl`, `dropped.jsonl` (with reasons)
            and `round_stats.json` are written there.
        model_path: The model that samples (the pipeline gives the previous stage's model).
        round_index: Recorded in every row as `round`.
        num_problems: Training problems (`datamodules.tasks.logic.make_logic`, split "train").
        seed: Seed of the problems; keep it across rounds to revisit the same problems, as STaR does.
        task_kwargs: Other `make_logic` options (num_atoms, num_premises, balance, show_symbols).
        modalities: Modalities to sample (default all three: nl, code, truth_table).
        k: Rationales sampled per (problem, modality).
        few_shot: Oracle-written examples per prompt while sampling (round 0: > 0; later rounds: 0, zero-shot).
            The SFT set always stores the zero-shot prompt.
        sampling: `SamplingSettings` fields (max_new_tokens, temperature, top_p, ...); with few-shot prompts
            `stop` defaults to ["\\nProblem:"].
        batch_size: Prompts per generate call.
        dtype: Weights dtype for sampling (float32, bfloat16, float16).
        previous_data: The previous round's `sft_data.jsonl` (e.g. "${stages.round0.sft_data}").
        accumulate: [unverified] Merge `previous_data` into this round's set (true) or keep only this round's
            rationales (false, STaR-style).
        restart_from_base: [unverified] The model the next SFT stage starts from: the base model (true) or the
            model that sampled this round (false); returned as `model_path`.
        base_model: The base model (default: `model_path`, right for round 0; later rounds pass
            "${stages.round0.base_model}").
        oracle_rows: Also add this many oracle-written rationales (`modules.papers.mot.modalities.oracle_rationale`, cycling over
            problems and modalities) — a documented substitute for a model too small to write any; 0 = off.
        verify: Check truth tables row by row and code arguments against the problem's formulas.
        execute_code: Also run code rationales in the sandbox and require their printed answer to match.
        code_timeout: Seconds per sandboxed run.
        allow_unsandboxed: With `execute_code` on a machine where no OS sandbox works (no bubblewrap, no user
            namespaces), run the model's code anyway with resource limits only (unsafe; warned once) instead of
            failing with `modules.sandbox.SandboxUnavailable`.
        min_rows: Fail when the merged set has fewer rows (an empty SFT set cannot train).
    """
    chosen = _modalities(modalities)
    if k < 1 or num_problems < 1 or few_shot < 0 or oracle_rows < 0:
        raise RecipeConfigError(f"self_evolve_round: k={k}, num_problems={num_problems} must be >= 1 and "
                                f"few_shot={few_shot}, oracle_rows={oracle_rows} >= 0")
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    base = base_model or model_path
    problems = make_logic(num_problems, seed=seed, split="train", **(task_kwargs or {}))
    examples = {m: few_shot_examples(m, few_shot) for m in chosen}
    pairs = [(p, m) for p in problems for m in chosen]
    completions = sample_rationales(model_path, [build_prompt(p["question"], m, examples[m]) for p, m in pairs],
                                    k=k, sampling=_settings(sampling, few_shot=few_shot), batch_size=batch_size,
                                    dtype=dtype)
    if len(completions) != len(pairs) or any(len(c) != k for c in completions):
        raise RecipeConfigError(f"the sampler returned {len(completions)} groups for {len(pairs)} prompts (k={k})")
    samples = [_sample(p, m, text, round_index, "model") for (p, m), group in zip(pairs, completions) for text in group]
    samples += [_sample(p, m, oracle_rationale(p, m), round_index, "oracle")
                for p, m in (pairs[i % len(pairs)] for i in range(oracle_rows))]
    kept, dropped = filter_rationales(samples, verify=verify, execute_code=execute_code, timeout=code_timeout,
                                      allow_unsandboxed=allow_unsandboxed)
    previous = _read_jsonl(previous_data) if (previous_data and accumulate) else []
    rows = merge_sft_rows(previous, [_sft_row(r) for r in kept])
    if len(rows) < min_rows:
        raise RecipeConfigError(f"round {round_index}: {len(rows)} SFT row(s) (< min_rows={min_rows}); no sampled "
                                "rationale was correct and well-formed. Raise k or sampling.max_new_tokens, use "
                                "few_shot > 0, or add oracle_rows")
    sft_path = stage_dir / SFT_FILE
    _write_jsonl(sft_path, rows)
    _write_jsonl(stage_dir / DROPPED_FILE, dropped)
    stats = round_stats(kept, dropped, chosen)
    (stage_dir / STATS_FILE).write_text(json.dumps(stats, indent=1))
    _print_table(f"MoT round {round_index}: sampled with {model_path}", stats, chosen, ("sampled", "correct",
                 "format_ok", "kept"))
    metrics = {f"round/{m}/{key}": float(v) for m, row in stats.items() for key, v in row.items()}
    return {"model_path": base if restart_from_base else model_path, "sft_data": str(sft_path), "kept": len(rows),
            "kept_new": len(kept), "dropped": len(dropped), "base_model": base, "sampled_with": model_path,
            "metrics": metrics}


def round_stats(kept: list[dict], dropped: list[dict], modalities: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per modality (and "all"), model samples only: sampled, correct / format_ok rates, kept count."""
    stats = {}
    for m in (*modalities, "all"):
        rows = [r for r in (*kept, *dropped) if r.get("source") == "model" and m in ("all", r["modality"])]
        n = len(rows)
        stats[m] = {"sampled": float(n),
                    "correct": sum(r["correct"] for r in rows) / n if n else 0.0,
                    "format_ok": sum(r["format_ok"] for r in rows) / n if n else 0.0,
                    "kept": float(sum(1 for r in kept if r.get("source") == "model" and m in ("all", r["modality"])))}
    return stats


def _sample(problem: dict, modality: str, text: str, round_index: int, source: str) -> dict:
    return {**{key: problem[key] for key in _PROBLEM_KEYS}, "modality": modality, "completion": text,
            "prompt": build_prompt(problem["question"], modality), "round": round_index, "source": source}


def _sft_row(kept: dict) -> dict:
    return {key: kept[key] for key in ("prompt", "response", "answer", "modality", "round", "source", "question",
                                       "atoms", "premises", "conclusion")}


def _read_jsonl(path: str) -> list[dict]:
    file = Path(path)
    if not file.is_file():
        raise RecipeConfigError(f"previous_data={path!r} does not exist; pass the previous round's sft_data")
    return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate_mot(model_path: str, rows: list[dict], *, modalities: list[str] | None = None,
                 priority: tuple[str, ...] | list[str] = DEFAULT_PRIORITY, few_shot: int = 0,
                 sampling: dict | None = None, batch_size: int = 16, dtype: str = "float32",
                 predictions: list[dict] | None = None) -> dict[str, float]:
    """Greedy answers in every modality for `rows` (`make_logic` problems), then the majority vote (spec 4(b)).

    Returns {"accuracy/<modality>", "format_ok/<modality>", "accuracy/vote", "accuracy/single_best",
    "num_problems"} and prints them as a rich table. Pass a list as `predictions` to receive one record per
    problem ({question, answer, answers: {modality: label}, vote}).
    """
    chosen = _modalities(modalities)
    if not rows:
        raise RecipeConfigError("evaluate_mot: no problems to evaluate")
    examples = {m: few_shot_examples(m, few_shot) for m in chosen}
    pairs = [(r, m) for r in rows for m in chosen]
    texts = sample_rationales(model_path, [build_prompt(r["question"], m, examples[m]) for r, m in pairs], k=1,
                              sampling=_settings(sampling, few_shot=few_shot), greedy=True, batch_size=batch_size,
                              dtype=dtype)
    answers: list[dict[str, str | None]] = [{} for _ in rows]
    formats: Counter = Counter()
    for i, ((row, m), group) in enumerate(zip(pairs, texts)):
        text = clean_completion(group[0])
        answers[i // len(chosen)][m] = extract_answer(text)
        formats[m] += check_format(text, m, row).ok
    votes = [majority_vote(a, priority) for a in answers]
    n = len(rows)
    out = {f"accuracy/{m}": sum(a[m] == r["answer"] for a, r in zip(answers, rows)) / n for m in chosen}
    out.update({f"format_ok/{m}": formats[m] / n for m in chosen})
    out["accuracy/vote"] = sum(v == r["answer"] for v, r in zip(votes, rows)) / n
    out["accuracy/single_best"] = max(out[f"accuracy/{m}"] for m in chosen)
    out["num_problems"] = float(n)
    if predictions is not None:
        predictions.extend({"question": r["question"], "answer": r["answer"], "answers": a, "vote": v}
                           for r, a, v in zip(rows, answers, votes))
    table = {m: {"accuracy": out[f"accuracy/{m}"], "format_ok": out[f"format_ok/{m}"]} for m in chosen}
    table["all-vote"] = {"accuracy": out["accuracy/vote"], "format_ok": float("nan")}
    _print_table(f"MoT evaluation of {model_path} ({n} problems)", table, (*chosen, "all-vote"),
                 ("accuracy", "format_ok"))
    return out


def evaluate_stage(stage_dir: Path, model_path: str, *, num_problems: int = 64, seed: int = 1,
                   task_kwargs: dict | None = None, **eval_kwargs: Any) -> dict[str, Any]:
    """A pipeline call stage: `evaluate_mot` on `num_problems` held-out problems (`make_logic` split "test", so
    never a training problem); writes `mot_eval.json` and `predictions.jsonl`. `eval_kwargs` go to
    `evaluate_mot` (modalities, priority, few_shot, sampling, batch_size, dtype)."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    rows = make_logic(num_problems, seed=seed, split="test", **(task_kwargs or {}))
    predictions: list[dict] = []
    results = evaluate_mot(model_path, rows, predictions=predictions, **eval_kwargs)
    (stage_dir / "mot_eval.json").write_text(json.dumps(results, indent=1))
    _write_jsonl(stage_dir / "predictions.jsonl", predictions)
    return {"model_path": model_path, "eval_json": str(stage_dir / "mot_eval.json"),
            "metrics": {f"eval/{key}": value for key, value in results.items()}}


def _print_table(title: str, rows: dict[str, dict[str, float]], order: tuple[str, ...], columns: tuple[str, ...]
                 ) -> None:
    import math
    import sys

    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("modality", style="bold")
    for c in columns:
        table.add_column(c, justify="right")
    for name in order:
        values = rows[name]
        table.add_row(name, *("-" if math.isnan(values[c]) else f"{values[c]:.0f}" if c in ("sampled", "kept")
                              else f"{values[c]:.3f}" for c in columns))
    Console(stderr=True, width=None if sys.stderr.isatty() else 120).print(table)


__all__ = ["evaluate_mot", "evaluate_stage", "merge_sft_rows", "round_stats", "sample_rationales",
           "self_evolve_round"]
