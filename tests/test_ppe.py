"""pPE (arXiv 2505.14157, spec 19): the exact-structure format reward, the five prior prompts, the ppe configs,
a 2-step run, and `r1 compare` over two configs."""

from __future__ import annotations

import doctest
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

import modules.papers.ppe.prior
import modules.papers.ppe.rewards
import recipes.cli.compare
from datamodules.errors import DataConfigError
from modules.papers.ppe.prior import STRATEGIES, instruction, prior_prompt
from modules.rewards import RewardSet
from modules.papers.ppe.rewards import exact_structure_reward
from recipes.cli import main
from recipes.cli.compare import PRESETS, format_reward_name
from recipes.ppe import PriorPromptDataModule
from recipes.cli.registry import CONFIG_DIR

PPE_CONFIGS = [CONFIG_DIR / arm.configs[0] for arm in PRESETS["ppe"].arms]
FAST = ["--trainer.max_steps", "2", "--model.sampling.max_new_tokens", "8", "--data.num_rows", "48",
        "--data.val_size", "4", "--model.num_generations", "2", "--data.batch_size", "2",
        "--trainer.enable_progress_bar", "false", "--model.batching.skip_zero_signal_steps", "false"]


@pytest.mark.parametrize("module", [modules.papers.ppe.prior, modules.papers.ppe.rewards, recipes.cli.compare])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def _score(text: str, tag: str = "plan") -> float:
    return exact_structure_reward(None, [text], tag=tag)[0]


# ------------------------------------------------------------------------------------------ format reward
@pytest.mark.parametrize("text", [
    "<plan>add the ones, then the tens</plan><answer>\\boxed{42}</answer>",
    "  <plan>\nstep 1\nstep 2\n</plan>\n\n<answer> \\boxed{42} </answer>\n",
    "<plan></plan><answer></answer>",  # empty blocks still have the structure
])
def test_exact_structure_accepts_one_block_then_one_answer(text):
    assert _score(text) == 1.0


@pytest.mark.parametrize("text", [
    "<plan>a</plan><plan>b</plan><answer>4</answer>",  # duplicated tag
    "<plan><plan>a</plan></plan><answer>4</answer>",  # nested duplicate
    "<plan>a</plan><answer>4</answer><answer>5</answer>",  # duplicated answer
    "<plan>a</plan>",  # missing answer
    "<plan>a</plan> the answer is 4",  # missing answer tags
    "<answer>4</answer>",  # missing block
    "<answer>4</answer><plan>a</plan>",  # wrong order
    "Sure! <plan>a</plan><answer>4</answer>",  # extra text before
    "<plan>a</plan><answer>4</answer> Done.",  # extra text after
    "<plan>a</plan> so: <answer>4</answer>",  # extra text between
    "<plan>a<answer>4</answer></plan>",  # answer inside the block
    "<plan>a</plan><answer>4",  # unclosed answer
    "<think>a</think><answer>4</answer>",  # another strategy's tag
])
def test_exact_structure_rejects(text):
    assert _score(text) == 0.0


def test_exact_structure_reads_the_tag_per_row_and_refuses_a_mismatch():
    texts = ["<code>print(4)</code><answer>4</answer>", "<code>x</code><answer>4</answer>"]
    assert exact_structure_reward(None, texts, prior_tag=["code", "knowledge"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="tag='think' but the rows' prior_tag is 'code'"):
        exact_structure_reward(None, texts, prior_tag=["code", "code"], tag="think")
    with pytest.raises(ValueError, match="needs the option tag"):
        exact_structure_reward(None, texts)


def test_total_reward_is_half_format_half_accuracy():
    """Spec 19 (b): 0.5 * format + 0.5 * accuracy, so the total is in {0, 0.5, 1}."""
    rewards = RewardSet.from_specs([
        {"name": "exact_structure", "weight": 0.5},
        {"name": "accuracy", "weight": 0.5, "kwargs": {"extract": "answer_tag", "mode": "math"}}])
    completions = [
        "<examples>3+4=7</examples><answer>\\boxed{42}</answer>",  # format and correct
        "<examples>3+4=7</examples><answer>\\boxed{41}</answer>",  # format, wrong
        "Here: <examples>3+4=7</examples><answer>\\boxed{42}</answer>",  # extra text, correct
        "<examples>3+4=7</examples> 42",  # neither
    ]
    per_func, total = rewards(None, completions, {"answer": ["42"] * 4, "prior_tag": ["examples"] * 4})
    assert per_func.tolist() == [[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    assert total.tolist() == [1.0, 0.5, 0.5, 0.0]


# ------------------------------------------------------------------------------------------ prior prompts
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_each_prior_prompt_asks_for_its_own_tag_then_a_boxed_answer(name):
    tag = STRATEGIES[name].tag
    text = instruction(name)
    assert f"<{tag}> </{tag}>" in text and "<answer> </answer>" in text and "\\boxed{" in text
    others = {s.tag for s in STRATEGIES.values()} - {tag}
    assert not any(f"<{o}>" in text for o in others)
    # The format the prompt shows is exactly what the reward accepts.
    shown = re.search(rf"<{tag}> \.\.\. </{tag}> <answer> .*? </answer>", text).group(0)
    assert _score(shown, tag) == 1.0
    assert prior_prompt(name, "What is 2 + 3?") == f"{text}\n\nWhat is 2 + 3?"


def test_strategies_are_the_five_of_the_paper():
    assert list(STRATEGIES) == ["think", "plan", "code", "knowledge", "examples"]
    assert [s.tag for s in STRATEGIES.values()] == list(STRATEGIES)
    with pytest.raises(ValueError, match="use one of think, plan, code, knowledge, examples"):
        instruction("cot")


def test_datamodule_sets_system_prompt_and_tag_column():
    dm = PriorPromptDataModule(strategy="knowledge", task="arithmetic", num_rows=20, val_size=4, batch_size=2)
    dm.setup()
    for row in [*dm.train_rows, *dm.held_out_rows()]:
        assert row["system_prompt"] == instruction("knowledge")
        assert row["prior_tag"] == "knowledge"
        assert row["prompt"] == row["question"]
    with pytest.raises(DataConfigError, match="--data.strategy='cot'"):
        PriorPromptDataModule(strategy="cot", task="arithmetic")


def test_the_five_configs_differ_only_in_the_strategy():
    def strip(cfg):
        cfg["data"]["init_args"].pop("strategy")
        cfg["trainer"].pop("default_root_dir")
        return cfg

    loaded = {p.stem: yaml.safe_load(p.read_text()) for p in PPE_CONFIGS}
    for stem, cfg in loaded.items():
        assert cfg["data"]["init_args"]["strategy"] == stem.removeprefix("ppe_")
        assert cfg["model"]["init_args"]["model_name_or_path"] == "smollm2-135m-instruct"
    first, *rest = [strip(c) for c in loaded.values()]
    assert all(c == first for c in rest)
    assert [(r["name"], r["weight"]) for r in first["model"]["init_args"]["rewards"]] == [
        ("exact_structure", 0.5), ("accuracy", 0.5)]


def test_format_reward_name():
    assert format_reward_name(["exact_structure", "accuracy"]) == "exact_structure"
    assert format_reward_name(["accuracy", "format_2"]) == "format_2"
    with pytest.raises(ValueError, match="not one of"):
        format_reward_name(["accuracy"], "format")


# ------------------------------------------------------------------------------------------ end to end
def _logger(save_dir: Path) -> list[str]:
    return ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(save_dir)]


def test_ppe_config_trains_two_steps_on_the_tiny_model(fit_metrics):
    metrics, _ = fit_metrics(CONFIG_DIR / "ppe_plan.yaml", fast=FAST)
    assert "train/rewards/exact_structure/mean" in metrics and "train/accuracy" in metrics
    evals = metrics.dropna(subset=["eval/rewards/exact_structure/mean"])
    assert evals["step"].tolist() == [0, 2]  # before and after


def test_compare_trains_two_configs_and_tabulates_their_evaluations(tiny_model_path, tmp_path, capsys):
    out, logs = tmp_path / "cmp", tmp_path / "logs"
    configs = [str(CONFIG_DIR / "ppe_think.yaml"), "ppe_examples.yaml"]  # a path and a bare name
    code = main(["compare", "--configs", *configs, "--out", str(out), *FAST,
                 "--model.model_name_or_path", str(tiny_model_path), *_logger(logs)])
    assert code == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("comparison"):]
    assert re.search(r"ppe_think\s+│\s+2\s+│", table) and re.search(r"ppe_examples\s+│\s+2\s+│", table)
    rows = json.loads((out / "comparison.json").read_text())["runs"]
    assert [r["run"] for r in rows] == ["ppe_think", "ppe_examples"]
    assert pd.read_csv(out / "comparison.csv")["run"].tolist() == ["ppe_think", "ppe_examples"]
    for version, row in enumerate(rows):  # the numbers are each run's own first and last evaluation
        assert Path(row["run_dir"]) == out / row["run"] and row["wall_s"] > 0
        metrics = pd.read_csv(logs / "lightning_logs" / f"version_{version}" / "metrics.csv")
        evals = metrics.dropna(subset=["eval/accuracy"])
        assert evals["step"].tolist() == [0, 2]
        first, last = evals.iloc[0], evals.iloc[-1]
        assert row["accuracy_start"] == pytest.approx(first["eval/accuracy"])
        assert row["accuracy_end"] == pytest.approx(last["eval/accuracy"])
        assert row["completion_length"] == pytest.approx(last["eval/completion_length"])
        assert row["format_rate"] == pytest.approx(last["eval/rewards/exact_structure/mean"])
        assert row["format_reward"] == "exact_structure"
        assert f"{row['completion_length']:.1f}" in table


def test_compare_rejects_bad_options(capsys):
    assert main(["compare", "--preset", "nope"]) == 2
    assert "--preset='nope'; presets: ppe" in capsys.readouterr().err
    assert main(["compare", "--configs", "no_such.yaml"]) == 2
    assert "config 'no_such.yaml' does not exist" in capsys.readouterr().err
    assert main(["compare"]) == 2


def test_compare_names_the_config_of_a_config_error(tiny_model_path, tmp_path, capsys):
    code = main(["compare", "--configs", "ppe_code.yaml", "--out", str(tmp_path), "--model.model_name_or_path",
                 str(tiny_model_path), "--model.objective.loss_type", "nope"])
    assert code == 2
    err = capsys.readouterr().err
    assert "r1 compare: error: ppe_code" in err and "model.objective.loss_type='nope'" in err
