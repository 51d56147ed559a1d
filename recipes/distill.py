"""Distillation from verified teacher traces ("Not All Correct Answers Are Equal", a-m-team, arXiv 2505.14464).

No RL. The student is fine-tuned (`recipes.sft.SFT`: cross-entropy on the final assistant response only) on
(prompt, teacher response) rows that pass verification. At `setup` the training rows are filtered
(`modules.papers.distill.filters`), and per-teacher statistics are printed, logged under `data/<teacher>/...`, written to
`<log_dir>/dataset_stats.json` (dropped rows with their reasons go to `dropped_rows.jsonl`) and recorded for a
pipeline stage (`stage_outputs["dataset_stats"]`). `compare` turns several such runs into the paper-style table.

Implemented: the verification-score threshold (score = the `verify_reward` reward, by default math-verify
`accuracy`; kept when >= 0.9), the n-gram repetition filter, think+answer presence, over-length dropping, the
even-turns rule for conversations, an optional per-teacher perplexity threshold, the paper's system prompt, and a
cosine schedule with 5% warmup (set in the config).
Documented substitutes: deterministic arithmetic "teachers" (`datamodules.tasks.teacher_traces`) instead of
AM-Thinking-v1 / Qwen3-235B / DeepSeek-R1 traces; by default the scoring model for perplexity is the student's
own starting weights instead of a 32B model (set `scorer`); only the math verifier (no code sandbox, IFEval or
reward-model verifiers; any registered reward can serve as `verify_reward`); no query pre-processing (dedup,
decontamination); padding instead of 32k packing.
[unverified], so configurable: the n-gram scale (`ngram_size`, `max_ngram_count`: the paper's 20/20 suits long
traces; the shipped config uses 10/4 for short synthetic ones) and the perplexity thresholds (`max_perplexity`:
the paper gives none).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from pathlib import Path
from typing import Any, Iterator

from modules.papers.distill.filters import (combine, comparison_rows, comparison_table, even_turns_filter, length_filter,
                             ngram_repetition_filter, perplexity_filter, stats_table, teacher_stats,
                             think_answer_filter, verify_filter)
from modules.atomic import json_safe
from modules.policy import Policy
from modules.sft import response_nll, sft_example
from modules.rollout.engine import split_rows
from recipes.base import RecipeConfigError
from recipes.sft import SFT

PAPER_SYSTEM_PROMPT = (
    "You are a helpful assistant. To answer the user's question, you first think about the reasoning process and "
    "then provide the user with the answer. The reasoning process and answer are enclosed within <think> </think> "
    "and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>."
)


class Distill(SFT):
    """SFT on teacher traces that pass the verification filters, with per-teacher dataset statistics."""

    def __init__(
        self,
        model_name_or_path: str,
        system_prompt: str | None = PAPER_SYSTEM_PROMPT,
        verify_reward: str | None = "accuracy",
        verify_threshold: float = 0.9,
        ngram_size: int = 20,
        max_ngram_count: int = 20,
        require_think_answer: bool = True,
        require_even_turns: bool = True,
        drop_overlong: bool = True,
        max_perplexity: float | dict[str, float] | None = None,
        scorer: str | None = None,
        perplexity_rows: int | None = 256,
        stats_batch_size: int = 8,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            model_name_or_path: The student: local directory, model alias or hub id.
            system_prompt: System prompt for training and evaluation (default: the paper's).
            verify_reward: Name of the reward in `rewards` whose value is the verification score (null = the
                weighted total of `rewards`).
            verify_threshold: Keep a trace whose verification score is >= this (the paper: 0.9).
            ngram_size: n of the repetition filter, in student tokens (the paper: 20).
            max_ngram_count: Drop a trace in which some n-gram occurs more than this many times (the paper: 20).
            require_think_answer: Drop traces without a non-empty <think> part followed by an <answer> part.
            require_even_turns: Drop conversations with an odd number of turns (prompt turns + the response).
            drop_overlong: Drop examples longer than `max_length` tokens instead of cutting them.
            max_perplexity: Drop traces whose perplexity under the scorer is above this; a number, or
                {teacher: threshold} per teacher (the paper sets one per teacher; values not given). null = off.
            scorer: Scoring model for perplexity (path, alias or hub id); null = the student's starting weights.
            perplexity_rows: Kept rows per teacher whose perplexity is measured for the statistics (null = all;
                every row is scored when max_perplexity is set).
            stats_batch_size: Rows per forward pass when measuring perplexity.
        """
        super().__init__(model_name_or_path, system_prompt=system_prompt, **kwargs)
        if not 0.0 <= verify_threshold:
            raise RecipeConfigError(f"model.verify_threshold={verify_threshold}; it must be >= 0")
        if ngram_size < 1 or max_ngram_count < 1:
            raise RecipeConfigError(f"model.ngram_size={ngram_size} and model.max_ngram_count={max_ngram_count} "
                                    "must be >= 1")
        if verify_reward is not None and verify_reward not in self.reward_set.names:
            raise RecipeConfigError(f"model.verify_reward={verify_reward!r} is not among model.rewards "
                                    f"({list(self.reward_set.names)}); add it or name one of them")
        if perplexity_rows is not None and perplexity_rows < 0:
            raise RecipeConfigError(f"model.perplexity_rows={perplexity_rows}; give a count >= 0 or null for all")
        self.dataset_stats: list[dict[str, Any]] = []
        self.dropped_rows: list[dict[str, Any]] = []
        self._filtered = False

    # ------------------------------------------------------------------ setup: filter the training rows
    def setup(self, stage: str) -> None:
        if stage != "fit" or self._filtered:
            return
        dm = self.trainer.datamodule
        if dm is None or not callable(getattr(dm, "replace_train_rows", None)):
            raise RecipeConfigError("recipes.distill.Distill needs data: datamodules.sft.SFTDataModule (it filters "
                                    f"the training rows); got {type(dm).__name__}")
        dm.setup("fit")
        kept, self.dataset_stats, self.dropped_rows = self.filter_rows(dm.train_rows)
        dm.replace_train_rows(kept, reason="the verification filters")
        self.stage_outputs["dataset_stats"] = self.dataset_stats
        self._filtered = True
        self._report()

    def filter_rows(self, rows: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
        """(kept rows, `teacher_stats` rows, dropped rows each with a `drop_reasons` list)."""
        hp, tok = self.hparams, self.policy.tokenizer
        responses = [r["response"] for r in rows]
        token_ids = [tok(text, add_special_tokens=False)["input_ids"] for text in responses]
        scores = self.verify_scores(rows, [len(t) for t in token_ids])
        reasons: list[list[str]] = []
        for row, ids, score in zip(rows, token_ids, scores):
            verdicts = [verify_filter(score, hp.verify_threshold),
                        ngram_repetition_filter(ids, hp.ngram_size, hp.max_ngram_count)]
            if hp.require_think_answer:
                verdicts.append(think_answer_filter(row["response"]))
            if hp.require_even_turns:
                verdicts.append(even_turns_filter(row["prompt"]))
            if hp.drop_overlong and hp.max_length is not None:
                example = self._example(tok, row, max_length=None)
                verdicts.append(length_filter(len(example["input_ids"]), hp.max_length))
            reasons.append(combine(verdicts)[1])
        teachers = [str(r.get("teacher", "all")) for r in rows]
        nlls = self.score_perplexity(rows, teachers, reasons)
        if hp.max_perplexity is not None:
            for i, (teacher, nll) in enumerate(zip(teachers, nlls)):
                ppl = math.exp(nll[0] / nll[1]) if nll and nll[1] else None
                verdict = perplexity_filter(ppl, self._ppl_threshold(teacher))
                if not verdict.keep:
                    reasons[i].append(verdict.reason)
        stats = teacher_stats(teachers, reasons, [len(t) for t in token_ids], nlls)
        kept = [r for r, why in zip(rows, reasons) if not why]
        dropped = [{**r, "drop_reasons": why} for r, why in zip(rows, reasons) if why]
        return kept, stats, dropped

    def verify_scores(self, rows: list[dict], lengths: list[int]) -> list[float | None]:
        """Verification score of each row's response: the `verify_reward` value (or the weighted total)."""
        prompts, columns = split_rows(rows)
        kwargs = {"completion_lengths": lengths, "truncated": [False] * len(rows), "group_ids": list(range(len(rows)))}
        per_func, total = self.reward_set(prompts, [r["response"] for r in rows], columns, **kwargs)
        name = self.hparams.verify_reward
        values = total if name is None else per_func[:, list(self.reward_set.names).index(name)]
        return [None if math.isnan(v) else float(v) for v in values.tolist()]

    def score_perplexity(self, rows: list[dict], teachers: list[str], reasons: list[list[str]]
                         ) -> list[tuple[float, int] | None]:
        """(summed NLL, tokens) under the scorer for the rows the statistics (or the threshold) need."""
        hp = self.hparams
        if hp.max_perplexity is not None:
            wanted = list(range(len(rows)))
        else:
            per_teacher: dict[str, int] = {}
            wanted = []
            for i, (teacher, why) in enumerate(zip(teachers, reasons)):
                if not why and (hp.perplexity_rows is None or per_teacher.get(teacher, 0) < hp.perplexity_rows):
                    per_teacher[teacher] = per_teacher.get(teacher, 0) + 1
                    wanted.append(i)
        out: list[tuple[float, int] | None] = [None] * len(rows)
        if not wanted:
            return out
        with self._scorer() as scorer:
            examples = [self._example(scorer.tokenizer, rows[i], max_length=None) for i in wanted]
            for i, value in zip(wanted, response_nll(scorer, examples, micro_batch_size=hp.stats_batch_size)):
                out[i] = value
        return out

    def _example(self, tokenizer, row: dict, *, max_length: int | None) -> dict:
        return sft_example(tokenizer, row["prompt"], row["response"], system_prompt=self.system_prompt_for(row),
                           chat_template=self.sampling.chat_template, max_length=max_length)

    def _ppl_threshold(self, teacher: str) -> float | None:
        limit = self.hparams.max_perplexity
        if isinstance(limit, dict):
            if teacher not in limit:
                raise RecipeConfigError(f"model.max_perplexity has no threshold for teacher {teacher!r} "
                                        f"(given: {sorted(limit)}); add one")
            return float(limit[teacher])
        return float(limit)

    @contextlib.contextmanager
    def _scorer(self) -> Iterator[Policy]:
        """The scoring policy in eval mode on the training device: `scorer`, or the student's starting weights."""
        device = self.trainer.strategy.root_device if self._trainer is not None else self.policy.device
        if self.hparams.scorer is not None:
            scorer = Policy.from_pretrained(self.hparams.scorer, dtype=self.hparams.dtype, reference="none")
            scorer.model.to(device).eval()
            yield scorer
            return
        model = self.policy.model
        if self.hparams.quantization is None and self.policy.device != device:
            model.to(device)  # Lightning moves it there next anyway
        was_training = model.training
        model.eval()
        try:
            with model.disable_adapter() if self.policy.is_peft else contextlib.nullcontext():
                yield self.policy
        finally:
            model.train(was_training)

    def _report(self) -> None:
        import sys

        from rich.console import Console

        out = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # on every rank: log_dir broadcasts
        if not self.trainer.is_global_zero:
            return
        Console(stderr=True, width=None if sys.stderr.isatty() else 140).print(stats_table(self.dataset_stats))
        flat = {f"data/{s['teacher']}/{k}": float(v) for s in self.dataset_stats for k, v in s.items()
                if k != "teacher" and isinstance(v, (int, float)) and not math.isnan(v)}
        for logger in self.trainer.loggers:
            logger.log_metrics(flat, step=0)
        out.mkdir(parents=True, exist_ok=True)
        (out / "dataset_stats.json").write_text(json.dumps(json_safe(self.dataset_stats), indent=1))
        with open(out / "dropped_rows.jsonl", "w", encoding="utf-8") as fh:
            for row in self.dropped_rows:
                fh.write(json.dumps(json_safe(row), default=str) + "\n")


def compare(stage_dir: Path, model_path: str, *, students: list[str], metric: str = "eval/accuracy") -> dict[str, Any]:
    """Pipeline step (`recipes.cli.stages`): the paper-style table over finished student stages.

    Reads each student stage's `DONE.json` (its `dataset_stats` and final `metrics[metric]`), prints the table
    and writes `comparison.csv` and `comparison.json` into `stage_dir`. Returns {"model_path", "table_csv",
    "table_json"} (the model passes through unchanged).
    """
    from rich.console import Console

    from recipes.cli.stages import read_done

    runs = {}
    for name in students:
        done = read_done(Path(stage_dir).parent / name)
        if done is None:
            raise RecipeConfigError(f"compare: stage {name!r} has not finished (no {Path(stage_dir).parent / name}"
                                    "/DONE.json); list it before the compare step")
        runs[name] = {"dataset_stats": done.get("outputs", {}).get("dataset_stats"), "metrics": done.get("metrics", {})}
    rows = comparison_rows(runs, metric=metric)
    Console(width=160).print(comparison_table(rows))
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = stage_dir / "comparison.csv", stage_dir / "comparison.json"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["student"])
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(json_safe(rows), indent=1))
    return {"model_path": model_path, "table_csv": str(csv_path), "table_json": str(json_path)}


__all__ = ["PAPER_SYSTEM_PROMPT", "Distill", "compare"]
