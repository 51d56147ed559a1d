"""The HCRMP recipe: one PPO round moves the actor and the critics, the hint pipeline (cache, knowledge base) is
exercised and logged, evaluation and the random baseline run, the checkpoint resumes the episode counter and the
knowledge base, bad options are one-line errors, and `r1 fit --config recipes/configs/hcrmp.yaml` runs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("highway_env", reason="the driving extra: pip install 'r1-recipes[driving]'")

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(**kwargs):
    from recipes.hcrmp import HCRMP

    return HCRMP(**{"steps_per_round": 32, "epochs": 1, "minibatch_size": 32, "horizon": 10, **kwargs})


def test_one_round_updates_the_actor_and_every_critic():
    import lightning as L

    from datamodules.driving import DrivingDataModule

    model = _model()
    before = {n: p.detach().clone() for n, p in model.agent.named_parameters()}
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, datamodule=DrivingDataModule())
    changed = {n for n, p in model.agent.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(before)  # the Beta actor and the three critic heads all moved
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert m["train/episodes"] >= 3  # 32 steps of 10-step episodes
    assert 0.0 <= m["train/hint/cache_hit_rate"] <= 1.0 and m["train/hint/cache_hit_rate"] > 0
    assert abs(m["train/weight/safety"] + m["train/weight/efficiency"] + m["train/weight/comfort"] - 1) < 1e-4
    assert len(model.kb) == model.episode - 1  # every finished episode became a knowledge-base record


def test_the_no_hint_ablation_sees_zero_hint_features_and_uniform_weights():
    model = _model(hinter="none")
    features, weights, _ = model.hint(model.env.scene())
    assert not features.any() and weights.tolist() == pytest.approx([1 / 3] * 3)
    hinted = _model(hinter="rule")
    features, _, _ = hinted.hint(hinted.env.scene())
    assert features.any()


def test_evaluation_and_the_random_baseline():
    model = _model()
    agent = model.evaluate("low", 2)
    random = model.evaluate("low", 2, random_policy=True)
    for result in (agent, random):
        assert set(result) == {"success_rate", "collision_rate", "return"}
        assert 0.0 <= result["success_rate"] <= 1.0 and 0.0 <= result["collision_rate"] <= 1.0
    assert model.evaluate("low", 2) == agent  # seeded held-out episodes, greedy actions: reproducible


def test_checkpoint_restores_the_episode_counter_and_the_knowledge_base():
    model = _model()
    model.collect(32)
    ckpt: dict = {}
    model.on_save_checkpoint(ckpt)
    fresh = _model()
    fresh.on_load_checkpoint(ckpt)
    assert fresh.episode == model.episode > 1 and len(fresh.kb) == len(model.kb) > 0
    assert fresh.kb.state_dict() == model.kb.state_dict()


@pytest.mark.parametrize("kwargs,message", [({"density": "rush"}, "model.density='rush'"),
                                            ({"hinter": "gpt"}, "model.hinter='gpt'"),
                                            ({"hallucination_rate": 1.5}, "model.hallucination_rate=1.5")])
def test_bad_options_are_one_line_errors(kwargs, message):
    from modules.settings import SettingsError

    with pytest.raises(SettingsError, match=message):
        _model(**kwargs)


def test_r1_fit_runs_the_config(tmp_path):
    import pandas as pd

    from recipes.cli import main

    code = main(["fit", "--config", "recipes/configs/hcrmp.yaml", "--trainer.max_steps", "2",
                 "--model.steps_per_round", "32", "--model.minibatch_size", "16", "--model.epochs", "1",
                 "--model.horizon", "10", "--trainer.enable_progress_bar", "false",
                 "--trainer.default_root_dir", str(tmp_path), "--trainer.logger",
                 "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path)])
    assert code == 0
    metrics = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    assert metrics["train/episode_return"].notna().any() and metrics["train/policy_loss"].notna().all()
    assert (tmp_path / "reward_curve.png").exists() or any(tmp_path.rglob("*.png"))


def test_r1_list_shows_hcrmp(capsys):
    from recipes.cli import main

    assert main(["list"]) == 0
    assert "2505.15793" in capsys.readouterr().out.replace("\n", " ")
