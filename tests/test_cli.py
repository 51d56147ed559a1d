"""The `r1` command: list, shipped configs, a 2-step grpo run, and one-line config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import FAST

from recipes.cli import main
from recipes.cli.registry import CONFIG_DIR, RECIPES

# every `r1 fit` config (analysis configs such as safety_subspaces.yaml have no trainer section)
# trainer-only strategy fragments (strategies/) are composed with a recipe config by tests/test_strategies.py
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if p.parent.name != "strategies"
                 and "trainer" in (yaml.safe_load(p.read_text()) or {}))


def test_list_prints_every_recipe_with_paper_and_config(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for info in RECIPES.values():
        assert info.name in out and info.config in out
        assert info.config_path.exists(), f"{info.name}: {info.config_path} is missing"
    assert "2402.03300" in out  # the GRPO paper


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR).with_suffix("")))
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("recipes.")
    module_name, _, class_name = printed["model"]["class_path"].rpartition(".")
    recipe = getattr(__import__(module_name, fromlist=[class_name]), class_name)
    from recipes.policy_module import PolicyModule

    if issubclass(recipe, PolicyModule):  # an LLM recipe always scores with rewards; HCRMP's come from its simulator
        assert printed["model"]["init_args"]["rewards"], "a recipe without rewards"
    # The YAML states only what differs from the recipe's defaults; the printed config resolves every field.
    import dataclasses
    import importlib

    from test_config_defaults import effective_default

    module, _, name = printed["model"]["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    given = (yaml.safe_load(config.read_text()).get("model") or {}).get("init_args") or {}
    for group in ("objective", "optimizer", "batching", "sampling"):
        default = effective_default(cls, group)
        if not dataclasses.is_dataclass(default):
            continue
        resolved = printed["model"]["init_args"][group]
        for f in dataclasses.fields(default):
            expected = (given.get(group) or {}).get(f.name, getattr(default, f.name))
            expected = list(expected) if isinstance(expected, tuple) else expected
            assert resolved[f.name] == expected, f"{group}.{f.name}"


def test_grpo_config_trains_two_steps_on_the_tiny_model(fit_metrics, tmp_path):
    metrics, train = fit_metrics(CONFIG_DIR / "grpo.yaml", "--model.batching.skip_zero_signal_steps", "false")
    assert "eval/reward" in metrics  # HeldOutEval ran
    assert (train["train/memory/peak_rss_gb"] > 0.05).all()  # peak memory is reported each step (CUDA: allocated)
    assert list(Path(tmp_path).rglob("reward_curve.png")), "MetricsPlot wrote no PNG"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("r1: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("name", ["dapo", "dr_grpo", "rloo"])
def test_loop_configs_train_two_steps(fit_metrics, name):
    """The configs that are the shared loop with other settings (no recipe test file of their own) really train:
    their rewards match their task's columns (dapo.yaml once scored countdown with the `accuracy` reward)."""
    _, train = fit_metrics(CONFIG_DIR / f"{name}.yaml", "--trainer.callbacks", "null")
    assert "train/accuracy" in train and train["train/loss"].notna().all()


@pytest.mark.parametrize("override, expected", [
    (["--model.no_such_key", "3"], "no_such_key"),
    (["--model.optimizer.learning_rate", "abc"], "model.optimizer.learning_rate"),
    (["--trainer.max_steps", "x"], "trainer.max_steps"),
    (["--model.objective.loss_type", "grpo2"], "model.objective.loss_type='grpo2'; use one of grpo, bnpo, dr_grpo, dapo"),
])
def test_bad_values_exit_2_with_one_line_naming_the_field(override, expected, tiny_model_path, capsys):
    code = main(["fit", "--config", str(CONFIG_DIR / "grpo.yaml"), *FAST,
                 "--model.model_name_or_path", str(tiny_model_path), *override])
    assert code == 2
    assert expected in _error_line(capsys)


def test_missing_model_path_is_one_line(capsys):
    code = main(["fit", "--config", str(CONFIG_DIR / "grpo.yaml"), *FAST, "--model.model_name_or_path", "./no/such/model"])
    assert code == 2
    line = _error_line(capsys)
    assert "./no/such/model" in line and "alias" in line


def test_dataset_without_prompt_column_is_one_line(tiny_model_path, tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"question": "What is 1 + 1?", "answer": "2"}\n' * 8)
    code = main(["fit", "--config", str(CONFIG_DIR / "grpo.yaml"), *FAST, "--model.model_name_or_path",
                 str(tiny_model_path), "--data.task", "null", "--data.source", str(data), "--data.template", "null",
                 "--data.val_size", "0", "--trainer.default_root_dir", str(tmp_path)])
    assert code == 2
    line = _error_line(capsys)
    assert "'prompt'" in line and "question" in line and "--data.prompt_column" in line


def test_unknown_reward_name_lists_the_registered_ones(tiny_model_path, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"init_args": {"rewards": [{"name": "acuracy"}]}}}))
    code = main(["fit", "--config", str(CONFIG_DIR / "grpo.yaml"), "--config", str(bad), *FAST,
                 "--model.model_name_or_path", str(tiny_model_path)])
    assert code == 2
    line = _error_line(capsys)
    assert "acuracy" in line and "accuracy" in line and "model.rewards" in line


def test_step_progress_bar_is_added_unless_the_bar_is_off(tiny_model_path, tmp_path):
    from callbacks import StepProgressBar
    from recipes.cli.fit import build_cli

    base = ["--config", str(CONFIG_DIR / "grpo.yaml"), "--model.model_name_or_path", str(tiny_model_path),
            "--trainer.default_root_dir", str(tmp_path)]
    cli = build_cli(base, run=False)
    bars = [cb for cb in cli.trainer.callbacks if isinstance(cb, StepProgressBar)]
    assert len(bars) == 1 and cli.trainer.progress_bar_callback is bars[0]
    cli = build_cli([*base, "--trainer.enable_progress_bar", "false"], run=False)
    assert cli.trainer.progress_bar_callback is None


def test_help_is_useful_on_its_own(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("r1 list", "r1 fit", "r1 compare", "r1 run", "r1 cloud fit", "r1 subspaces"):
        assert command in out, command
    assert "--model.help" in out and "laser" in out
    assert "validate" not in out  # not LightningCLI's generic subcommand list
