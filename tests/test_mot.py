"""Mixture-of-Thought: generator labels against an independent brute force, each modality's format checker, the
majority vote with ties, the code sandbox, one self-evolving round on injected rationales, an `r1 fit` smoke run of
the SFT stage and the whole pipeline (`r1 run`) on the tiny model."""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

import pytest
import yaml

import recipes.mot as mot_recipe
from datamodules.tasks.logic import entailment_label, make_logic, make_logic_sft
from modules import sandbox
from modules.papers.mot.modalities import (MODALITIES, build_prompt, check_code, check_format, check_nl, check_truth_table,
                         extract_answer, filter_rationales, majority_vote, mot_accuracy, mot_format, oracle_rationale,
                         run_code_sandboxed)
from modules.sandbox import available_backend
from recipes.cli.registry import CONFIG_DIR
from recipes.cli.stages import main as run_main
from recipes.cli.stages import read_done

MOT_SFT = CONFIG_DIR / "mot_sft.yaml"


# ------------------------------------------------------------------------------------- generator vs brute force
def _lambda_source(f) -> str:
    """An independent translation of a formula tree into Python (implication as `a <= b` on bools)."""
    if isinstance(f, str):
        return f"bool({f})"
    if f[0] == "not":
        return f"(not {_lambda_source(f[1])})"
    a, b = _lambda_source(f[1]), _lambda_source(f[2])
    return {"and": f"({a} and {b})", "or": f"({a} or {b})", "implies": f"({a} <= {b})"}[f[0]]


def _brute_force(row) -> str | None:
    args = ", ".join(row["atoms"])
    premises = eval(f"lambda {args}: " + " and ".join(_lambda_source(p) for p in row["premises"]))  # noqa: S307
    conclusion = eval(f"lambda {args}: " + _lambda_source(row["conclusion"]))  # noqa: S307
    values = [conclusion(*v) for v in itertools.product([False, True], repeat=len(row["atoms"])) if premises(*v)]
    if not values:
        return None
    return "True" if all(values) else "False" if not any(values) else "Uncertain"


def test_generator_labels_match_an_independent_brute_force():
    rows = make_logic(90, seed=7) + make_logic(30, seed=8, num_atoms=[4, 4], num_premises=[3, 4], balance=False)
    for row in rows:
        assert _brute_force(row) == row["answer"], row["question"]
        assert row["choice"] == "ABC"[["True", "False", "Uncertain"].index(row["answer"])]
        assert len(row["premises"]) == len(row["premises_text"]) and row["conclusion_text"] in row["question"]
    assert [r["answer"] for r in rows[:6]] == ["True", "False", "Uncertain"] * 2  # balanced cycle
    assert {len(r["atoms"]) for r in rows} == {3, 4}
    test = make_logic(40, seed=7, split="test")
    assert not {r["question"] for r in test} & {r["question"] for r in make_logic(200, seed=7)}


def test_entailment_labels_by_hand():
    assert entailment_label(["p", "q"], [["implies", "p", "q"], "p"], "q") == "True"  # modus ponens
    assert entailment_label(["p", "q"], [["implies", "p", "q"], ["not", "q"]], "p") == "False"  # modus tollens
    assert entailment_label(["p", "q"], [["or", "p", "q"]], "p") == "Uncertain"
    assert entailment_label(["p"], ["p", ["not", "p"]], "p") is None  # unsatisfiable: the generator skips these


# ------------------------------------------------------------------------------------- format checkers
PROBLEM = {"atoms": ["p", "q", "r"], "premises": [["implies", "p", "q"], "p"], "conclusion": ["or", "q", "r"],
           "answer": "True"}
GOOD = {
    "nl": "Premise 2 says p holds. By premise 1, q holds too, so q or r is true.\nAnswer: (A) True",
    "code": "```python\ndef premises(p, q, r):\n    return ((not p) or q) and p\n\n\ndef conclusion(p, q, r):\n"
            "    return q or r\n```\nAnswer: (A) True",
    "truth_table": "Variables: p, q, r\np q r | P1 P2 | C\nT T T | T T | T kept\nT T F | T T | T kept\n"
                   "T F T | F T | T\nT F F | F T | F\nF T T | T F | T\nF T F | T F | T\nF F T | T F | T\n"
                   "F F F | T F | F\nAnswer: (A) True",
}


@pytest.mark.parametrize("modality", MODALITIES)
def test_good_rationales_pass_with_and_without_the_problem(modality):
    assert check_format(GOOD[modality], modality).ok
    assert check_format(GOOD[modality], modality, PROBLEM).ok
    assert extract_answer(GOOD[modality]) == "True"


@pytest.mark.parametrize("text, reason", [
    ("So the answer is clearly yes.", "no final 'Answer"),
    ("Answer: (A)\nbecause p and q hold here.\nAnswer: (A)", "2 answer lines"),
    ("p holds, so q holds and q or r.\nAnswer: (A) True\nDone.", "text after the answer line"),
    ("p holds, so q holds and q or r.\nAnswer: (A) False", "says (A) but False"),
    ("p holds, so q holds and q or r.\nAnswer: (D)", "is not (A), (B), (C)"),
    ("Check:\n```python\nprint(1)\n```\nso it holds for sure.\nAnswer: (A)", "code block"),
    ("Variables: p\nT | T | T\nit holds everywhere here.\nAnswer: (A)", "truth-table rows"),
    ("It holds.\nAnswer: (A)", "reasoning has 2 words"),
])
def test_nl_checker_rejects(text, reason):
    verdict = check_nl(text)
    assert not verdict.ok and reason in verdict.reason


@pytest.mark.parametrize("text, reason, with_problem", [
    ("def premises(p, q, r):\n    return p\nAnswer: (A)", "no closed ```python block", False),
    ("```python\ndef premises(p, q, r) return p\n```\nAnswer: (A)", "does not parse", False),
    ("```python\ndef premises(p, q, r):\n    return p\n```\nAnswer: (A)", "['conclusion']", False),
    ("```python\ndef premises(p, q):\n    return p\ndef conclusion(p, q, r):\n    return r\n```\nAnswer: (A)",
     "same atom arguments", False),
    ("```python\ndef premises(p, q):\n    return p\ndef conclusion(p, q):\n    return q\n```\nAnswer: (A)",
     "the problem's atoms are", True),
    ("```python\nx = 1\n```\n```python\ny = 2\n```\nAnswer: (A)", "2 code blocks", False),
    ("```js\nlet x = 1\n```\nAnswer: (A)", "not python", False),
    ("```python\ndef premises(p):\n    return p\ndef conclusion(p):\n    return p\nAnswer: (A)\n```",
     "text after the answer line", False),
])
def test_code_checker_rejects(text, reason, with_problem):
    verdict = check_code(text, PROBLEM if with_problem else None)
    assert not verdict.ok and reason in verdict.reason, verdict


def _table_with(old: str, new: str) -> str:
    assert old in GOOD["truth_table"]
    return GOOD["truth_table"].replace(old, new, 1)


@pytest.mark.parametrize("text, reason, with_problem", [
    (_table_with("Variables: p, q, r\n", ""), "0 'Variables:' lines", False),
    (_table_with("T F T | F T | T\n", "T T T | F T | T\n"), "an assignment appears twice", False),
    (_table_with("Answer: (A) True", "Answer: (C) Uncertain"), "the kept rows give True, the answer says Uncertain",
     False),
    (_table_with("T T F | T T | T kept", "T T F | T T | F kept"), "the kept rows give Uncertain", False),
    (_table_with("F T T | T F | T", "F T T | T T | T"), "row 5 (p=F q=T r=T): premise 2 should be F, the table says T",
     True),
    (_table_with("F F F | T F | F\n", ""), "7 rows; the full table has 8", True),
    (_table_with("Variables: p, q, r", "Variables: p, q, s").replace("p q r |", "p q s |"), "not the problem's atoms",
     True),
    ("Variables: p\nT | F | T\nF | F | F\nAnswer: (A)", "no row keeps every premise", False),
])
def test_truth_table_checker_rejects_and_verifies_rows(text, reason, with_problem):
    verdict = check_truth_table(text, PROBLEM if with_problem else None)
    assert not verdict.ok and reason in verdict.reason, verdict
    if with_problem and "premise 2" in reason:
        assert check_truth_table(text).ok  # structurally fine: only the row-level check catches the wrong cell


def test_oracle_rationales_pass_their_checkers_and_the_rewards():
    rows = make_logic(12, seed=3)
    for row in rows:
        for m in MODALITIES:
            text = oracle_rationale(row, m)
            assert check_format(text, m, row).ok and extract_answer(text) == row["answer"]
    texts = [oracle_rationale(r, "truth_table") for r in rows[:2]]
    assert mot_accuracy(["q"] * 2, texts, answer=[rows[0]["answer"], "A" if rows[1]["answer"] != "True" else "B"]) \
        == [1.0, 0.0]
    assert mot_format(["q"] * 2, [texts[0], "Answer: (A)"], modality=["truth_table", "nl"],
                      atoms=[rows[0]["atoms"], rows[1]["atoms"]], premises=[rows[0]["premises"], rows[1]["premises"]],
                      conclusion=[rows[0]["conclusion"], rows[1]["conclusion"]]) == [1.0, 0.0]


# ------------------------------------------------------------------------------------- voting
@pytest.mark.parametrize("answers, expected", [
    ({"nl": "True", "code": "True", "truth_table": "False"}, "True"),  # plain majority beats priority
    ({"nl": "True", "code": "False", "truth_table": "Uncertain"}, "Uncertain"),  # 1-1-1 -> truth_table
    ({"nl": "True", "code": "False", "truth_table": None}, "False"),  # 1-1, tt abstains -> code
    ({"nl": "(B)", "code": "B", "truth_table": "C"}, "False"),  # letters count as their labels
    ({"nl": None, "code": None, "truth_table": None}, None),
    ({"nl": "Uncertain"}, "Uncertain"),
])
def test_majority_vote_with_fixed_priority_tie_break(answers, expected):
    assert majority_vote(answers) == expected


def test_majority_vote_custom_priority():
    answers = {"nl": "True", "code": "False", "truth_table": "Uncertain"}
    assert majority_vote(answers, priority=("nl", "code", "truth_table")) == "True"
    assert majority_vote({"x": "False", "nl": "True"}, priority=("nl",)) == "True"  # unknown names rank last


# ------------------------------------------------------------------------------------- sandbox
needs_sandbox = pytest.mark.skipif(available_backend() is None, reason="no OS sandbox (bwrap/unshare) works here")


@needs_sandbox
def test_sandbox_kills_an_infinite_loop():
    started = time.perf_counter()
    result = run_code_sandboxed("while True:\n    pass\n", timeout=1.0)
    assert result.timed_out and result.returncode != 0
    assert time.perf_counter() - started < 5.0


@needs_sandbox
def test_sandbox_contains_writes_outside_its_directory(tmp_path):
    target = tmp_path / "outside.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
                 f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))",
                 f"import os\nos.system('echo x > {target}')\nassert False",
                 "open('/usr/r1_mot_probe', 'w').write('x')"):
        result = run_code_sandboxed(code, timeout=3.0)
        assert result.returncode != 0 and "Error" in result.stderr, result
    assert not target.exists() and list(tmp_path.iterdir()) == [] and not Path("/usr/r1_mot_probe").exists()
    inside = run_code_sandboxed("open('note.txt', 'w').write('ok')\nprint(open('note.txt').read())", timeout=3.0)
    assert inside.returncode == 0 and inside.stdout == "ok\n"


@needs_sandbox
def test_sandbox_has_no_network():
    result = run_code_sandboxed("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=2)", timeout=3.0)
    assert result.returncode != 0 and ("ConnectionRefusedError" in result.stderr or "OSError" in result.stderr)


def test_code_execution_refuses_without_isolation_unless_allowed(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "_HOST_PATH", str(tmp_path))  # neither bwrap nor unshare can be found
    row = make_logic(1, seed=5)[0]
    samples = [{**row, "modality": "code", "completion": oracle_rationale(row, "code")}]
    with pytest.raises(sandbox.SandboxUnavailable, match="install bubblewrap"):
        filter_rationales(samples, execute_code=True)
    assert len(filter_rationales(samples)[0]) == 1  # without execute_code nothing runs, nothing is needed
    sandbox._warn_unsandboxed.cache_clear()
    with pytest.warns(RuntimeWarning, match="no OS isolation"):
        kept, dropped = filter_rationales(samples, execute_code=True, allow_unsandboxed=True)
    assert len(kept) == 1 and dropped == []


# ------------------------------------------------------------------------------------- filter and one round
def _injected(problem: dict, modality: str) -> list[str]:
    """[correct and well-formed, well-formed but wrong, correct but malformed]."""
    good = oracle_rationale(problem, modality)
    wrong_label = "False" if problem["answer"] == "True" else "True"
    letter = "ABC"[["True", "False", "Uncertain"].index(wrong_label)]
    wrong = good.rsplit("\n", 1)[0] + f"\nAnswer: ({letter}) {wrong_label}"
    malformed = f"Answer: ({problem['choice']}) {problem['answer']}"
    return [good, wrong, malformed]


def test_filter_keeps_only_correct_and_well_formed():
    row = make_logic(1, seed=5)[0]
    samples = [{**row, "modality": m, "completion": text} for m in MODALITIES for text in _injected(row, m)]
    kept, dropped = filter_rationales(samples)
    assert [(k["modality"], k["response"]) for k in kept] == [(m, oracle_rationale(row, m)) for m in MODALITIES]
    assert all("wrong answer" in d["drop_reason"] or "format:" in d["drop_reason"] for d in dropped)
    assert sum("format:" in d["drop_reason"] for d in dropped) >= 3 and len(dropped) == 6


@needs_sandbox
def test_filter_runs_code_rationales_in_the_sandbox():
    row = make_logic(1, seed=5)[0]
    samples = [{**row, "modality": "code", "completion": text} for text in _injected(row, "code")]
    kept, dropped = filter_rationales(samples, execute_code=True)  # the oracle's code prints the right answer
    assert [k["response"] for k in kept] == [oracle_rationale(row, "code")] and len(dropped) == 2
    honest = 'print("True" if all(holds) else "False" if not any(holds) else "Uncertain")'
    wrong = "False" if row["answer"] != "False" else "True"
    lying = oracle_rationale(row, "code").replace(honest, f"print({wrong!r})")  # prints what the answer line denies
    assert lying != oracle_rationale(row, "code")
    kept, dropped = filter_rationales([{**row, "modality": "code", "completion": lying}], execute_code=True)
    assert kept == [] and f"execution: printed {wrong}" in dropped[0]["drop_reason"]


def test_one_round_with_injected_rationales_grows_the_set_only_with_good_samples(tiny_model_path, tmp_path,
                                                                                 monkeypatch):
    problems = make_logic(3, seed=11, split="train")
    by_prompt = {build_prompt(p["question"], m): (p, m) for p in problems for m in MODALITIES}
    calls = []

    def fake_sampler(model_path, prompts, *, k, sampling, **kwargs):
        calls.append((model_path, k, sampling.max_new_tokens))
        return [_injected(*by_prompt[p]) for p in prompts]

    monkeypatch.setattr(mot_recipe, "sample_rationales", fake_sampler)
    kw = dict(num_problems=3, seed=11, k=3, few_shot=0, sampling={"max_new_tokens": 16})
    out = mot_recipe.self_evolve_round(tmp_path / "r0", str(tiny_model_path), **kw)
    rows = [json.loads(line) for line in Path(out["sft_data"]).read_text().splitlines()]
    assert out["kept"] == out["kept_new"] == len(rows) == 9 and out["dropped"] == 18
    assert calls == [(str(tiny_model_path), 3, 16)]
    for row in rows:
        assert check_format(row["response"], row["modality"], row).ok
        assert extract_answer(row["response"]) == row["answer"]
        assert row["prompt"] == build_prompt(row["question"], row["modality"])  # zero-shot prompt for SFT
    dropped = [json.loads(line) for line in (tmp_path / "r0" / "dropped.jsonl").read_text().splitlines()]
    assert all(d["drop_reason"] for d in dropped)
    assert out["metrics"]["round/all/kept"] == 9.0 and math.isclose(out["metrics"]["round/all/correct"], 2 / 3)
    # Round 1 accumulates: the same good rationales again add nothing; new oracle rows do; restart_from_base.
    out1 = mot_recipe.self_evolve_round(tmp_path / "r1", "some/sft/model", previous_data=out["sft_data"],
                                        base_model=str(tiny_model_path), restart_from_base=True, round_index=1, **kw)
    assert out1["kept"] == 9 and out1["model_path"] == str(tiny_model_path) and out1["sampled_with"] == "some/sft/model"
    # Nothing correct and well-formed -> a clear error, not an empty SFT set.
    monkeypatch.setattr(mot_recipe, "sample_rationales",
                        lambda _m, prompts, *, k, **kw: [["no idea"] * k] * len(prompts))
    with pytest.raises(ValueError, match="oracle_rows"):
        mot_recipe.self_evolve_round(tmp_path / "r2", str(tiny_model_path), **kw)


# ------------------------------------------------------------------------------------- smoke runs
FAST = ["--trainer.max_steps", "2", "--model.sampling.max_new_tokens", "8", "--data.num_rows", "12",
        "--data.val_size", "2", "--data.batch_size", "2", "--trainer.enable_progress_bar", "false",
        "--model.max_length", "1024",
        "--data.task_kwargs", "{num_atoms: [3, 3], num_premises: [2, 2]}"]


def test_mot_sft_config_trains_two_steps_on_the_tiny_model(fit_metrics):
    metrics, _ = fit_metrics(MOT_SFT, fast=FAST, rows="train/loss")
    assert "eval/accuracy" in metrics  # held-out mot_accuracy


def test_pipeline_one_round_end_to_end_and_restart(tiny_model_path, tmp_path, capsys):
    small = {"num_atoms": [3, 3], "num_premises": [2, 2]}
    spec = yaml.safe_load((CONFIG_DIR.parent / "pipelines" / "mot.yaml").read_text())
    round0, sft0, evaluate = spec["stages"][0], spec["stages"][1], spec["stages"][-1]
    round0["kwargs"].update(num_problems=2, k=1, few_shot=1, task_kwargs=small, oracle_rows=4,
                            sampling={"max_new_tokens": 8})
    sft0["config"] = str(MOT_SFT)
    sft0["overrides"].update({"trainer.max_steps": 2, "trainer.limit_val_batches": 0, "trainer.callbacks": [],
                              "trainer.logger": False, "trainer.enable_progress_bar": False,
                              "model.init_args.max_length": 1024, "model.init_args.sampling.max_new_tokens": 8,
                              "data.init_args.batch_size": 2, "data.init_args.val_size": 0})
    evaluate["kwargs"].update(num_problems=2, task_kwargs=small, sampling={"max_new_tokens": 8}, batch_size=3)
    spec["stages"] = [round0, sft0, evaluate]
    spec["root"] = str(tmp_path / "runs")
    path = tmp_path / "mot.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert run_main(["--config", str(path), "--model", str(tiny_model_path)]) == 0
    root = tmp_path / "runs"
    r0, s0, ev = (read_done(root / name) for name in ("round0", "sft0", "evaluate"))
    assert r0["outputs"]["sft_data"] == str(root / "round0" / "sft_data.jsonl") and r0["outputs"]["kept"] >= 4
    assert s0["model_path"] == str(root / "sft0" / "model") and math.isfinite(s0["metrics"]["train/loss"])
    assert ev["model_path"] == s0["model_path"]
    for key in ("eval/accuracy/nl", "eval/accuracy/code", "eval/accuracy/truth_table", "eval/accuracy/vote"):
        assert 0.0 <= ev["metrics"][key] <= 1.0
    assert "all-vote" in capsys.readouterr().err  # the rich table
    stamp = (root / "sft0" / "DONE.json").stat().st_mtime_ns
    assert run_main(["--config", str(path), "--model", str(tiny_model_path), "--restart_from", "evaluate"]) == 0
    assert (root / "sft0" / "DONE.json").stat().st_mtime_ns == stamp
    assert read_done(root / "evaluate")["started_at"] >= ev["started_at"]


def test_make_logic_sft_rows_cover_every_modality():
    rows = make_logic_sft(7, seed=2)
    assert len(rows) == 7 and [r["modality"] for r in rows[:3]] == list(MODALITIES)
    assert all(check_format(r["response"], r["modality"], r).ok for r in rows)
