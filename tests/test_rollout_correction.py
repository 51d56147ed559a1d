"""Rollout-correction importance weights (TIS and its mask / sequence variants) and their use in the loss."""

from __future__ import annotations

import math

import pytest
import torch

from modules.objectives import policy_loss
from modules.objectives.tis import rollout_importance_weights, rollout_mismatch_metrics

OLD = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, 0.0]])
MU = torch.tensor([[-2.0, -1.0, -0.5], [-0.2, -1.0, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_token_truncate_is_min_of_ratio_and_cap():
    w = rollout_importance_weights(OLD, MU, MASK, mode="token_truncate", clip_max=2.0)
    expected = torch.tensor([[2.0, math.exp(-1), 1.0], [math.exp(0.1), math.exp(-2), 1.0]])
    torch.testing.assert_close(w, expected)


def test_token_mask_zeroes_out_of_range_tokens():
    w = rollout_importance_weights(OLD, MU, MASK, mode="token_mask", clip_max=2.0, clip_min=0.5)
    # e^1 > 2 and e^-1, e^-2 < 0.5 are masked; the padded position has log ratio 0 -> 1
    expected = torch.tensor([[0.0, 0.0, 1.0], [math.exp(0.1), 0.0, 1.0]])
    torch.testing.assert_close(w, expected)


def test_sequence_modes_use_the_summed_log_ratio_over_trained_tokens():
    # row 0: 1 - 1 + 0 = 0 -> 1; row 1: 0.1 - 2 (the third token is padding) = -1.9
    trunc = rollout_importance_weights(OLD, MU, MASK, mode="sequence_truncate", clip_max=2.0)
    torch.testing.assert_close(trunc, torch.tensor([[1.0], [math.exp(-1.9)]]))
    masked = rollout_importance_weights(OLD, MU, MASK, mode="sequence_mask", clip_max=2.0, clip_min=0.2)
    torch.testing.assert_close(masked, torch.tensor([[1.0], [0.0]]))  # e^-1.9 = 0.15 < 0.2


def test_nan_sampler_logps_count_as_agreement():
    mu = MU.clone()
    mu[0, 0] = float("nan")
    w = rollout_importance_weights(OLD, mu, MASK, clip_max=2.0)
    assert w[0, 0] == 1.0 and torch.isfinite(w).all()
    metrics = rollout_mismatch_metrics(OLD, mu, MASK)
    # the NaN token is skipped: |d| over the 4 remaining trained tokens = (1 + 0 + 0.1 + 2) / 4
    assert metrics["logp_diff/mean"] == pytest.approx(3.1 / 4)
    assert metrics["logp_diff/max"] == pytest.approx(2.0)


def test_mismatch_metrics_are_zero_when_the_sampler_agrees():
    m = rollout_mismatch_metrics(OLD, OLD.clone(), MASK, rollout_importance_weights(OLD, OLD, MASK))
    assert m["logp_diff/mean"] == 0.0 and m["kl"] == 0.0 and m["is_weight/mean"] == 1.0
    assert m["is_corrected_frac"] == 0.0
    m = rollout_mismatch_metrics(OLD, MU, MASK, rollout_importance_weights(OLD, MU, MASK, clip_max=2.0))
    assert m["kl"] > 0 and m["is_weight/max"] == 2.0
    assert m["is_corrected_frac"] == pytest.approx(1 / 5)  # only e^1 was truncated, of 5 trained tokens


def test_bad_mode_and_bounds_are_named():
    with pytest.raises(ValueError, match="rollout_correction.mode='tis'"):
        rollout_importance_weights(OLD, MU, MASK, mode="tis")
    with pytest.raises(ValueError, match="clip_min=3.0 > clip_max=2.0"):
        rollout_importance_weights(OLD, MU, MASK, clip_min=3.0, clip_max=2.0)


def test_policy_loss_multiplies_the_surrogate_not_the_kl():
    logps = OLD.clone().requires_grad_(True)
    adv = torch.tensor([1.0, -2.0])
    w = rollout_importance_weights(OLD, MU, MASK, clip_max=2.0)
    plain, _ = policy_loss(logps, None, adv, MASK, loss_type="dapo", num_items_in_batch=5)
    weighted, _ = policy_loss(logps, None, adv, MASK, loss_type="dapo", num_items_in_batch=5, token_weights=w)
    # ratio is 1 (single iteration): per-token loss = -A, so the weighted loss is -sum(w * A * mask) / 5
    expected = -(w * adv[:, None] * MASK).sum() / 5
    torch.testing.assert_close(weighted, expected)
    assert not torch.allclose(plain, weighted)
    # with a KL term, only the surrogate is weighted
    ref = OLD - 0.3
    kl_only, _ = policy_loss(logps, None, torch.zeros(2), MASK, loss_type="dapo", num_items_in_batch=5,
                             ref_logps=ref, beta=0.1)
    kl_weighted, _ = policy_loss(logps, None, torch.zeros(2), MASK, loss_type="dapo", num_items_in_batch=5,
                                 ref_logps=ref, beta=0.1, token_weights=torch.zeros_like(w))
    torch.testing.assert_close(kl_only, kl_weighted)
    with pytest.raises(ValueError, match="token_weights has shape"):
        policy_loss(logps, None, adv, MASK, token_weights=torch.ones(3))
