"""Strategy fragments (recipes/configs/strategies/*.yaml) compose with every recipe config as a second --config, and
`modules.distributed.configure_sharding` refuses what cannot run sharded with one clear error."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import yaml

from modules.distributed import ShardingError, configure_sharding
from modules.optim import OptimizerSettings
from recipes.cli import main
from recipes.cli.registry import CONFIG_DIR

STRATEGIES = CONFIG_DIR / "strategies"
FRAGMENTS = sorted(STRATEGIES.glob("*.yaml"))
# `r1 fit` configs: a trainer and a model (not fragments such as these, nor analysis configs)
RECIPE_CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml")
                        if {"trainer", "model"} <= set(yaml.safe_load(p.read_text()) or {}))
# each recipe config with one fragment (in turn), so every fragment meets several recipes and the test stays fast
PAIRS = [(config, FRAGMENTS[i % len(FRAGMENTS)]) for i, config in enumerate(RECIPE_CONFIGS)]
EXPECTED = {"ddp": "ddp", "fsdp": "modules.distributed.FSDP2Strategy", "deepspeed_zero2": "deepspeed_stage_2",
            "deepspeed_zero3": "deepspeed_stage_3"}


def test_fragments_are_trainer_only():
    assert {p.stem for p in FRAGMENTS} == set(EXPECTED)
    for path in FRAGMENTS:
        assert set(yaml.safe_load(path.read_text())) == {"trainer"}, path.name


@pytest.mark.parametrize("config, fragment", PAIRS,
                         ids=[f"{c.relative_to(CONFIG_DIR).with_suffix('')}+{f.stem}" for c, f in PAIRS])
def test_strategy_fragment_composes_with_recipe_config(config, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--config", str(fragment), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    strategy = printed["trainer"]["strategy"]
    name = strategy["class_path"] if isinstance(strategy, dict) else strategy
    assert name == EXPECTED[fragment.stem]
    assert printed["model"]["class_path"] == yaml.safe_load(config.read_text())["model"]["class_path"]


def _recipe(strategy, max_grad_norm=1.0):
    trainer = SimpleNamespace(strategy=strategy)
    return SimpleNamespace(_trainer=trainer, trainer=trainer, device_mesh=None,
                           optimizer_settings=OptimizerSettings(max_grad_norm=max_grad_norm))


def test_lightning_fsdp1_is_refused_with_the_fix():
    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(ShardingError, match="strategies/fsdp.yaml"):
        configure_sharding(_recipe(FSDPStrategy()))


def test_deepspeed_with_loop_clipping_is_refused():
    DeepSpeedStrategy = type("DeepSpeedStrategy", (), {})  # the check is by name: deepspeed need not be installed
    with pytest.raises(ShardingError, match="model.optimizer.max_grad_norm"):
        configure_sharding(_recipe(DeepSpeedStrategy()))
    configure_sharding(_recipe(DeepSpeedStrategy(), max_grad_norm=None))  # no mesh: nothing to shard


def test_ddp_and_single_device_are_untouched():
    import torch
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
    from torch.distributed.tensor import DTensor

    from modules.sharded import is_sharded

    model = torch.nn.Linear(4, 4)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    policy = SimpleNamespace(model=model, is_peft=False)
    recipes = {"ddp": _recipe(DDPStrategy()),  # max_grad_norm=1.0: the loop's clipping is fine without ZeRO
               "single_device": _recipe(SingleDeviceStrategy("cpu")),
               "no_trainer": SimpleNamespace(_trainer=None)}
    for case, recipe in recipes.items():
        recipe.policy = policy
        assert configure_sharding(recipe) is None, case
        assert recipe.policy is policy and policy.model is model, case
        # fully_shard would swap the class for FSDPLinear and the parameters for DTensors
        assert type(model) is torch.nn.Linear and not is_sharded(model), case
        for name, p in model.named_parameters():
            assert not isinstance(p, DTensor) and torch.equal(p, weights[name]), (case, name)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_deepspeed_missing_names_the_install():
    import lightning as L

    with pytest.raises(Exception, match="pip install -U deepspeed"):
        L.Trainer(strategy="deepspeed_stage_2", logger=False)
