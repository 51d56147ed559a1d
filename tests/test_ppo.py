"""PPO pieces against hand computations, and 2 PPO steps through `r1 fit`."""

from __future__ import annotations

import math

import pytest
import torch

from modules.objectives.ppo import gae_advantages, kl_penalised_rewards, last_token_rewards, masked_whiten, value_loss
from recipes.cli.registry import CONFIG_DIR


def test_gae_matches_a_hand_computation():
    # one row, 3 policy tokens, reward 1 at the end; V = [0.5, 0.2, 0.4]
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    mask = torch.ones(1, 3)
    gamma, lam = 0.9, 0.8
    d2 = 1.0 - 0.4
    d1 = 0.0 + gamma * 0.4 - 0.2
    d0 = 0.0 + gamma * 0.2 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    adv, ret = gae_advantages(rewards, values, mask, gamma=gamma, lam=lam)
    assert adv[0].tolist() == pytest.approx([a0, a1, a2])
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.2, a2 + 0.4])
    # gamma = lam = 1: every advantage is the return-to-go minus the value
    adv, ret = gae_advantages(rewards, values, mask)
    assert adv[0].tolist() == pytest.approx([0.5, 0.8, 0.6]) and ret[0].tolist() == pytest.approx([1, 1, 1])


def test_gae_skips_observation_tokens_and_moves_their_rewards_back():
    # policy, policy, observation, observation, policy; a step reward 0.3 sits on the observation
    mask = torch.tensor([[1, 1, 0, 0, 1]])
    rewards = torch.tensor([[0.0, 0.0, 0.3, 0.0, 1.0]])
    values = torch.tensor([[0.1, 0.2, 9.0, 9.0, 0.4]])  # values on observation tokens must not matter
    adv, ret = gae_advantages(rewards, values, mask)  # gamma = lam = 1
    # policy positions 0, 1, 4: rewards [0, 0.3, 1]; returns-to-go [1.3, 1.3, 1.0]
    assert adv[0].tolist() == pytest.approx([1.2, 1.1, 0.0, 0.0, 0.6])
    assert ret[0].tolist() == pytest.approx([1.3, 1.3, 0.0, 0.0, 1.0])


def test_last_token_rewards_kl_penalty_and_whitening():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1]])
    out = last_token_rewards(torch.tensor([2.0, 5.0, -1.0]), mask)
    assert out.tolist() == [[0, 2, 0], [0, 0, 0], [0, 0, -1]]
    logps, ref = torch.tensor([[-1.0, -2.0, 0.0]]), torch.tensor([[-1.5, -1.0, 0.0]])
    penalised, kl = kl_penalised_rewards(torch.tensor([[0.0, 1.0, 0.0]]), logps, ref, torch.tensor([[1, 1, 0]]), 0.1)
    assert kl.tolist() == [[0.5, -1.0, 0.0]] and penalised[0].tolist() == pytest.approx([-0.05, 1.1, 0.0])
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 100.0]])
    w = masked_whiten(x, torch.tensor([[1, 1, 0], [1, 1, 0]]))
    vals = w[:, :2].flatten()
    assert vals.mean() == pytest.approx(0.0, abs=1e-6) and vals.std() == pytest.approx(1.0, abs=1e-4)
    assert w[:, 2].tolist() == [0.0, 0.0]


def test_value_loss_clips_around_the_old_values():
    old, ret, mask = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2)
    values = torch.tensor([[2.0, 0.1]])
    loss, metrics = value_loss(values, old, ret, mask, clip_range=0.5)
    # token 0: unclipped (2-1)^2 = 1, clipped (0.5-1)^2 = 0.25 -> max 1; token 1: (0.1+1)^2 = 1.21 vs same -> 1.21
    assert loss.item() == pytest.approx(0.5 * (1.0 + 1.21) / 2)
    assert metrics["value_clip_ratio"].item() == pytest.approx(0.0)
    values = torch.tensor([[0.9, 0.1]])  # token 0: unclipped 0.01, clipped (0.5-1)^2 = 0.25 -> clipped is larger
    loss, metrics = value_loss(values, old, ret, mask, clip_range=0.5)
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1.21) / 2) and metrics["value_clip_ratio"].item() == 0.5
    plain, _ = value_loss(values, old, ret, mask, clip_range=None)
    assert plain.item() == pytest.approx(0.5 * (0.01 + 1.21) / 2)


def test_ppo_trains_two_steps_and_the_critic_learns(fit_metrics):
    _, train = fit_metrics(
        CONFIG_DIR / "ppo.yaml", "--trainer.max_steps", "2", "--model.sampling.max_new_tokens", "8",
        "--data.num_rows", "48", "--data.val_size", "4", "--data.batch_size", "4",
        "--trainer.enable_progress_bar", "false",
        "--model.batching.steps_per_generation", "1",  # one optimiser step per generation batch
        # a reward that is never 0 (minus the length), so the returns and the critic's gradients are not 0
        "--model.rewards", '[{"name": "length", "kwargs": {"target": 0, "coef": 0.1}}]',
        "--model.accuracy_reward", "null", "--model.batching.skip_zero_signal_steps", "false", fast=[], finite=None)
    for key in ("train/value_loss", "train/explained_variance", "train/kl_in_reward", "train/grad_norm/critic",
                "train/returns_mean", "train/value_clip_ratio"):
        assert key in train and all(math.isfinite(v) for v in train[key]), key
    assert (train["train/grad_norm/critic"] > 0).all()  # the value head gets gradients from the first step


def test_ppo_rejects_group_advantage_options(tiny_model_path):
    from recipes.base import RecipeConfigError
    from recipes.ppo import PPO

    with pytest.raises(RecipeConfigError, match="scale_rewards do not apply to PPO"):
        PPO(model_name_or_path=str(tiny_model_path), rewards=["accuracy"], objective={"scale_rewards": "batch"})
