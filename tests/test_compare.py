"""`r1 compare`: every shipped evidence preset for one step on the tiny model, resuming finished arms, the warm start,
and the statistics (metrics of per-prompt records, paired bootstrap) on hand-made records."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST

from callbacks.evaluation import RECORDS_FILE, read_records
from recipes.cli import main
from recipes.cli import compare as compare_module
from recipes.cli.compare import PRESETS
from recipes.cli.evidence import bootstrap_indices, metric_fn, paired_difference, summarize

ONE_STEP = [*FAST, "--trainer.max_steps", "1", "--trainer.enable_model_summary", "false"]


def _tiny_presets(monkeypatch, tiny_model_path) -> None:
    """TinyV's verifier is a second model, named by an option only its arm has: point that arm's at the tiny model."""
    spec = PRESETS["tinyv"]
    arms = tuple(dataclasses.replace(a, overrides=(*a.overrides, "--model.verifier.model_name_or_path",
                                                   str(tiny_model_path))) if a.name == "tinyv" else a
                 for a in spec.arms)
    monkeypatch.setitem(PRESETS, "tinyv", dataclasses.replace(spec, arms=arms))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_runs_one_step_on_the_tiny_model(preset, tiny_model_path, tmp_path, monkeypatch, capsys):
    _tiny_presets(monkeypatch, tiny_model_path)
    spec = PRESETS[preset]
    out, copy = tmp_path / "cmp", tmp_path / "results" / f"evidence-{preset}.json"
    code = main(["compare", "--preset", preset, "--seeds", "0", "--out", str(out), "--results", str(copy), *ONE_STEP,
                 "--model.model_name_or_path", str(tiny_model_path)])
    assert code == 0, capsys.readouterr().err[-2000:]
    result = json.loads((out / "comparison.json").read_text())
    assert json.loads(copy.read_text()) == result and copy.with_suffix(".png").is_file()
    assert (out / "curves.png").stat().st_size > 1000
    assert list(result["arms"]) == [a.name for a in spec.arms] and result["metrics"] == list(spec.metrics)
    assert result["held_out_prompts"] == 4  # FAST's val_size: every arm on the same prompts
    for name, arm in result["arms"].items():
        assert arm["steps"] == 1 and arm["seeds"] == [0]
        assert set(arm["after"]) == set(arm["before"]) == set(spec.metrics)  # measured before and after, per metric
        assert arm["train"]["total/generated_tokens"] > 0
        run = next(r for r in result["runs"] if r["name"] == name)
        records = read_records(Path(run["log_dir"]) / RECORDS_FILE)
        assert sorted(records) == [0, 1] and all(len(rs) == 4 for rs in records.values())
        # the table's accuracy is the logged eval/accuracy, recomputed from the per-prompt records
        assert metric_fn("accuracy")(records[1]) == pytest.approx(run["eval_end"]["eval/accuracy"])
    if spec.baseline:
        assert set(result["vs_baseline"]) == {a.name for a in spec.arms} - {spec.baseline}
    if preset == "hgpo":  # the warm start ran once, and the arm started from its merged model
        done = json.loads((out / "sft_then_hgpo" / "warm_start" / "hft" / "DONE.json").read_text())
        assert Path(done["model_path"]).is_dir()
        assert done["model_path"] in (Path(run["log_dir"]) / "hparams.yaml").read_text()
    if preset == "disco":  # per-domain records
        assert all("domain" in r for r in records[1])


def test_a_finished_arm_is_read_back_and_a_changed_one_retrains(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--preset", "dr_grpo", "--out", str(out), *ONE_STEP,
            "--model.model_name_or_path", str(tiny_model_path)]
    assert main(args) == 0
    done = {arm: (out / arm / "result.json").stat().st_mtime_ns for arm in ("grpo", "dr_grpo")}
    first = json.loads((out / "comparison.json").read_text())
    capsys.readouterr()
    assert main(args) == 0  # nothing retrains: both arms are read back
    printed = capsys.readouterr().out
    assert printed.count("finished earlier") == 2
    assert {arm: (out / arm / "result.json").stat().st_mtime_ns for arm in done} == done
    again = json.loads((out / "comparison.json").read_text())
    assert again["arms"]["dr_grpo"]["after"] == first["arms"]["dr_grpo"]["after"]
    # the dapo preset shares the grpo arm (same files and overrides): only its own arm trains
    assert main(["compare", "--preset", "dapo", "--out", str(out), *ONE_STEP,
                 "--model.model_name_or_path", str(tiny_model_path)]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 1
    assert (out / "grpo" / "result.json").stat().st_mtime_ns == done["grpo"]
    # another override is another fingerprint: the arm trains again
    assert main([*args, "--model.sampling.max_new_tokens", "6"]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 0
    assert (out / "grpo" / "result.json").stat().st_mtime_ns != done["grpo"]


def test_list_and_bad_options(capsys):
    assert main(["compare", "--list"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in PRESETS) and "hft_warm_start.yaml" in printed
    assert main(["compare", "--preset", "laser", "--metrics", "nope"]) == 2
    assert "metric 'nope' is unknown" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- statistics
def _records(correct: list[int], lengths: list[int] | None = None, **extra) -> list[dict]:
    lengths = lengths or [10] * len(correct)
    return [{"accuracy": float(c), "completion_length": n, **{k: v[i] for k, v in extra.items()}}
            for i, (c, n) in enumerate(zip(correct, lengths))]


def test_metrics_of_hand_made_records():
    recs = _records([1, 0, 0, 1], [10, 30, 50, 20], domain=["math", "math", "qa", "qa"],
                    rewards=[{"judge": 1.0}, {"judge": 1.0}, {"judge": 0.0}, {"judge": 0.0}])
    assert metric_fn("accuracy")(recs) == 0.5
    assert metric_fn("wrong_length")(recs) == 40.0 and metric_fn("right_length")(recs) == 15.0
    assert metric_fn("domain/qa/accuracy")(recs) == 0.5
    assert metric_fn("minority_accuracy")(recs[:3]) == 0.0  # math is the majority of the first three
    assert metric_fn("rewards/judge")(recs) == 0.5
    # the judge accepts rows 0 and 1; the accuracy reward rejects row 1 of them: FN 1/2; it rejects 2 and 3, and
    # the accuracy reward accepts row 3: FP 1/2
    assert metric_fn("false_negative_rate/judge")(recs) == 0.5
    assert metric_fn("false_positive_rate/judge")(recs) == 0.5
    assert math.isnan(metric_fn("wrong_length")(_records([1, 1])))
    with pytest.raises(ValueError, match="metric 'x' is unknown"):
        metric_fn("x")


def test_bootstrap_se_matches_the_binomial_and_a_paired_difference_of_equal_arms_is_zero():
    rng = np.random.default_rng(1)
    correct = (rng.random(400) < 0.3).astype(int).tolist()
    recs = _records(correct)
    draws = bootstrap_indices(len(recs), 2000, seed=3)
    s = summarize(metric_fn("accuracy"), [recs], draws)
    p = sum(correct) / len(correct)
    assert s["mean"] == pytest.approx(p)
    assert s["se"] == pytest.approx(math.sqrt(p * (1 - p) / len(correct)), rel=0.1)
    same = paired_difference(metric_fn("accuracy"), [recs], [recs], draws)
    assert same["diff"] == same["low"] == same["high"] == 0.0
    # an arm right on 20 more prompts than the baseline: +0.05 with an interval around it that excludes 0
    better = _records([1 if i < 20 else c for i, c in enumerate(correct)])
    gain = paired_difference(metric_fn("accuracy"), [better], [recs], draws)
    flipped = sum(1 for c in correct[:20] if c == 0) / len(correct)
    assert gain["diff"] == pytest.approx(flipped) and 0 < gain["low"] <= gain["diff"] <= gain["high"]
    assert gain["p_le_0"] == 0.0


def test_two_seeds_average_and_report_their_spread():
    draws = bootstrap_indices(4, 200)
    s = summarize(metric_fn("accuracy"), [_records([1, 1, 0, 0]), _records([1, 1, 1, 1])], draws)
    assert s["mean"] == 0.75 and s["se_seeds"] == pytest.approx(np.std([0.5, 1.0], ddof=1) / math.sqrt(2))


def test_read_records_keeps_the_last_line_of_a_step_and_skips_a_torn_line(tmp_path):
    path = tmp_path / RECORDS_FILE
    lines = [{"step": 0, "records": [{"accuracy": 0.0}]}, {"step": 2, "records": [{"accuracy": 0.0}]},
             {"step": 2, "records": [{"accuracy": 1.0}]}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + '\n{"step": 4, "reco')
    assert read_records(path) == {0: [{"accuracy": 0.0}], 2: [{"accuracy": 1.0}]}


def test_model_override_is_found_in_either_spelling():
    assert compare_module._model_override(["--model.model_name_or_path", "a", "--x", "1"]) == "a"
    assert compare_module._model_override(["--model.init_args.model_name_or_path=b"]) == "b"
    assert compare_module._model_override(["--trainer.max_steps", "3"]) is None


def test_fingerprint_ignores_comments_and_follows_values_overrides_and_seed(tmp_path):
    config = tmp_path / "a.yaml"
    config.write_text("trainer: {max_steps: 4}\n")
    arm = compare_module.Arm("a", (str(config),))
    key = compare_module.fingerprint(arm, [], 0)
    config.write_text("# a comment\ntrainer:\n  max_steps: 4\n")
    assert compare_module.fingerprint(arm, [], 0) == key
    assert compare_module.fingerprint(arm, [], 1) != key
    assert compare_module.fingerprint(arm, ["--trainer.max_steps", "5"], 0) != key
    config.write_text("trainer: {max_steps: 5}\n")
    assert compare_module.fingerprint(arm, [], 0) != key
