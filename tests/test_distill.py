"""Distillation (arXiv 2505.14464): each verification filter, per-teacher statistics, perplexity under a
scoring model, the comparison table, and `r1 fit` / `r1 run` smoke runs on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from rich.console import Console
from transformers import AutoTokenizer

from datamodules.tasks.teacher_traces import TEACHERS, make_teacher_traces
from modules.papers.distill.filters import (comparison_rows, comparison_table, max_ngram_count, ngram_repetition_filter,
                             stats_table, teacher_stats, think_answer_filter, verify_filter)
from modules.rewards.accuracy import accuracy_reward
from modules.sft import response_nll, sft_example
from recipes.distill import Distill, compare
from recipes.cli.registry import CONFIG_DIR

PIPELINE_DIR = CONFIG_DIR.parent / "pipelines"

FAST = ["--trainer.max_steps", "2", "--data.num_rows", "24", "--data.val_size", "4", "--data.batch_size", "2",
        "--model.sampling.max_new_tokens", "8", "--trainer.val_check_interval", "1",
        "--trainer.enable_progress_bar", "false", "--model.perplexity_rows", "8"]


def _render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


# ------------------------------------------------------------------------------------------------ filters
def test_verify_filter_keeps_math_verified_answers_at_threshold_0_9():
    responses = ["<think>40 * 85 = 3400</think><answer>\\boxed{3400}</answer>",
                 "<think>40 * 85 = 3401</think><answer>\\boxed{3401}</answer>",
                 "<think>half</think><answer>\\frac{1}{2}</answer>"]
    scores = accuracy_reward(None, responses, answer=["3400", "3400", "0.5"])
    assert scores == [1.0, 0.0, 1.0]
    assert [verify_filter(s).keep for s in scores] == [True, False, True]
    assert verify_filter(0.89).reason == "verify" and verify_filter(0.9).keep  # a code pass rate of 0.9 passes
    assert not verify_filter(float("nan")).keep


def test_ngram_filter_at_the_paper_scale():
    block = list(range(20))  # 20 distinct tokens: each 20-gram of a repeated block occurs once per repetition
    assert max_ngram_count(block * 21, 20) == 21
    assert ngram_repetition_filter(block * 21, n=20, max_count=20).reason == "repetition"
    assert ngram_repetition_filter(block * 20, n=20, max_count=20).keep  # exactly 20 occurrences is allowed
    assert ngram_repetition_filter(block * 30, n=21, max_count=20).reason == "repetition"  # 21-grams: 29 of 30
    assert ngram_repetition_filter([1, 2, 3], n=20).keep


def test_think_answer_filter_needs_both_non_empty_parts_in_order():
    good = "<think>\n3 + 4 = 7\n</think>\n<answer>\\boxed{7}</answer>"
    assert think_answer_filter(good).keep
    for bad in ("<think>\n3 + 4 = 7\n<answer>7</answer>",  # think never closed
                "<think>3 + 4 = 7</think>\nThe answer is 7.",  # no answer part
                "<answer>7</answer><think>3 + 4 = 7</think>",  # wrong order
                "<think>  </think><answer>7</answer>"):  # empty think
        assert think_answer_filter(bad).reason == "think_answer", bad


def test_each_injected_teacher_flaw_is_caught_by_its_filter(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    rows = make_teacher_traces(80, teachers=list(TEACHERS), seed=1)
    scores = accuracy_reward(None, [r["response"] for r in rows], answer=[r["answer"] for r in rows])
    seen = set()
    for row, score in zip(rows, scores):
        ids = tok(row["response"], add_special_tokens=False)["input_ids"]
        failed = {v.reason for v in (verify_filter(score), ngram_repetition_filter(ids, n=10, max_count=4),
                                     think_answer_filter(row["response"])) if not v.keep}
        expected = {"none": set(), "wrong": {"verify"}, "loop": {"repetition"}, "malformed": {"think_answer"}}
        assert failed == expected[row["flaw"]], (row["flaw"], failed, row["response"])
        seen.add(row["flaw"])
    assert seen == {"none", "wrong", "loop", "malformed"}
    # Same queries for every teacher; the adaptive teacher's lengths spread more than the templated one's.
    by = {t: [r for r in rows if r["teacher"] == t and r["flaw"] == "none"] for t in TEACHERS}
    assert [r["prompt"] for r in rows if r["teacher"] == "adaptive"] == [r["prompt"] for r in rows if r["teacher"] == "noisy"]
    spread = {t: pd.Series([len(r["response"]) for r in rs]).std() for t, rs in by.items()}
    assert spread["adaptive"] > 2 * spread["templated"]


# ---------------------------------------------------------------------------------------------- statistics
def test_teacher_stats_by_hand():
    teachers = ["A", "A", "A", "A", "B", "B"]
    reasons = [[], [], [], ["verify", "repetition"], ["think_answer"], ["verify"]]
    lengths = [10, 20, 30, 100, 5, 6]
    nlls = [(10.0, 10), (20.0, 10), (30.0, 10), (99.0, 1), None, None]
    a, b = teacher_stats(teachers, reasons, lengths, nlls)
    assert (a["teacher"], a["rows"], a["kept"], a["dropped"]) == ("A", 4, 3, 1)
    assert a["dropped_verify"] == 1 and a["dropped_repetition"] == 1 and a["dropped_think_answer"] == 0
    assert a["length_mean"] == 20.0 and a["length_min"] == 10 and a["length_max"] == 30
    assert a["length_std"] == pytest.approx(math.sqrt(200 / 3))  # population std of 10, 20, 30
    assert a["perplexity"] == pytest.approx(math.exp(60 / 30))  # dropped row's NLL is not counted
    assert (b["kept"], b["dropped"], b["dropped_verify"], b["dropped_think_answer"]) == (0, 2, 1, 1)
    assert math.isnan(b["length_mean"]) and math.isnan(b["perplexity"])
    text = _render(stats_table([a, b]))
    assert "3 / 4" in text and "20.0 ± 8.2" in text and "7.39" in text and "verify 1, repetition 1" in text
    assert "[min, max]" in text and "[10, 30]" in text


def test_compare_step_reads_finished_students_and_writes_the_table(tmp_path, capsys):
    for name, teacher, acc, ppl in (("s_a", "adaptive", 0.75, 2.5), ("s_n", "noisy", 0.5, 3.0)):
        stage = tmp_path / name
        stage.mkdir()
        stats = [{"teacher": teacher, "rows": 10, "kept": 9, "length_mean": 50.0, "length_std": 20.0, "perplexity": ppl}]
        (stage / "DONE.json").write_text(json.dumps({"model_path": "m", "outputs": {"dataset_stats": stats},
                                                     "metrics": {"eval/accuracy": acc}}))
    out = compare(tmp_path / "compare", "base-model", students=["s_a", "s_n"])
    assert out["model_path"] == "base-model"
    table = pd.read_csv(out["table_csv"])
    assert table["teacher"].tolist() == ["adaptive", "noisy"] and table["student_accuracy"].tolist() == [0.75, 0.5]
    assert json.loads(Path(out["table_json"]).read_text())[1]["perplexity"] == 3.0
    printed = capsys.readouterr().out
    assert "adaptive" in printed and "0.750" in printed and "50.0 ± 20.0" in printed
    rows = comparison_rows({"x": {"dataset_stats": [], "metrics": {}}})
    assert "-" in _render(comparison_table(rows))
    with pytest.raises(ValueError, match="has not finished"):
        compare(tmp_path / "compare", "m", students=["missing"])


def test_response_nll_matches_unpadded_forward_passes(tiny_model_path):
    from modules.policy import Policy

    policy = Policy.from_pretrained(tiny_model_path, reference="none")
    policy.model.eval()
    examples = [sft_example(policy.tokenizer, p, r) for p, r in (("What is 2 + 3?", "<answer>5</answer>"),
                                                                  ("Hi", "<think>long thinking here</think> ok"))]
    got = response_nll(policy, examples, micro_batch_size=2)  # padded together
    for ex, (nll, n) in zip(examples, got):
        ids = torch.tensor([ex["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(policy.model(input_ids=ids).logits[0].float(), -1)
        p = ex["prompt_length"]
        direct = -sum(logp[t - 1, ex["input_ids"][t]] for t in range(p, len(ex["input_ids"])))
        assert n == len(ex["input_ids"]) - p and nll == pytest.approx(float(direct), rel=1e-4)


def test_distill_filter_rows_drops_every_flaw_and_reports_perplexity(tiny_model_path):
    module = Distill(tiny_model_path, ngram_size=10, max_ngram_count=4, max_length=1024, perplexity_rows=None)
    rows = [{**r, "system_prompt": None} for r in make_teacher_traces(30, teachers=["noisy"], seed=2)]
    kept, stats, dropped = module.filter_rows(rows)
    assert [r["prompt"] for r in kept] == [r["prompt"] for r in rows if r["flaw"] == "none"]
    assert {r["flaw"] for r in dropped} == {"wrong", "loop", "malformed"} and all(r["drop_reasons"] for r in dropped)
    (s,) = stats
    assert (s["teacher"], s["rows"], s["kept"]) == ("noisy", 30, len(kept)) and s["perplexity_rows"] == len(kept)
    nlls = module.score_perplexity(kept, ["noisy"] * len(kept), [[] for _ in kept])
    assert s["perplexity"] == pytest.approx(math.exp(sum(v for v, _ in nlls) / sum(n for _, n in nlls)), rel=1e-5)
    # A per-teacher perplexity threshold at the median drops the otherwise kept rows above it (every row is
    # scored then, so flawed rows above it count under "perplexity" too).
    ppl = sorted(math.exp(v / n) for v, n in nlls)
    module.hparams.max_perplexity = {"noisy": ppl[len(ppl) // 2]}
    kept2, stats2, _ = module.filter_rows(rows)
    assert len(kept) - len(kept2) == sum(p > ppl[len(ppl) // 2] for p in ppl) > 0
    assert stats2[0]["dropped_perplexity"] >= len(kept) - len(kept2)


# --------------------------------------------------------------------------------------------- end to end
def test_distill_config_trains_two_steps_on_the_tiny_model(fit_metrics, tmp_path):
    metrics, train = fit_metrics(CONFIG_DIR / "distill.yaml", "--data.task_kwargs", "{teachers: [noisy], digits: 2}",
                                 fast=FAST, rows="train/loss")
    metrics_file = next(Path(tmp_path).rglob("metrics.csv"))
    assert train["train/tokens"].gt(0).all()
    assert metrics["val/loss"].dropna().size >= 1 and metrics["val/perplexity"].dropna().gt(1).all()
    assert "eval/accuracy" in metrics  # HeldOutEval: greedy generation on held-out prompts
    assert metrics["data/noisy/kept"].dropna().iloc[0] < metrics["data/noisy/rows"].dropna().iloc[0]
    stats = json.loads((metrics_file.parent / "dataset_stats.json").read_text())
    assert stats[0]["teacher"] == "noisy" and stats[0]["perplexity"] > 1
    assert (metrics_file.parent / "dropped_rows.jsonl").read_text().strip()


@pytest.mark.slow
def test_compare_pipeline_trains_one_student_per_teacher_and_prints_table(tiny_model_path, tmp_path, capsys):
    from recipes.cli.stages import main as run_main

    overrides = ["trainer.max_steps=1", "data.init_args.num_rows=16", "data.init_args.val_size=4",
                 "data.init_args.batch_size=2", "model.init_args.sampling.max_new_tokens=4",
                 "model.init_args.perplexity_rows=4", "trainer.val_check_interval=1", "trainer.limit_val_batches=1",
                 "trainer.enable_progress_bar=false", "trainer.logger=false", "trainer.enable_checkpointing=false",
                 "trainer.callbacks.0.init_args.max_rows=4"]
    code = run_main(["--config", str(PIPELINE_DIR / "distill_compare.yaml"), "--root", str(tmp_path),
                     "--model", str(tiny_model_path), *[arg for o in overrides for arg in ("--override", o)]])
    assert code == 0
    table = json.loads((tmp_path / "compare" / "comparison.json").read_text())
    assert [r["teacher"] for r in table] == ["adaptive", "templated", "noisy"]
    assert all(r["kept"] <= r["rows"] == 12 for r in table)  # 16 queries - 4 held out
    assert all(r["perplexity"] > 1 for r in table)
    assert all(0.0 <= r["student_accuracy"] <= 1.0 for r in table)
    assert "student held-out accuracy" in capsys.readouterr().out
    for name in ("student_adaptive", "student_templated", "student_noisy"):  # every student started from the base
        config = (tmp_path / name / "fit_config.yaml").read_text()
        assert f"model_name_or_path: {tiny_model_path}" in config
