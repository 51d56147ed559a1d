"""Rollout-correction importance weights (TIS and its mask / sequence variants) and their use in the loss."""

from __future__ import annotations

import math

import pytest
import torch

from modules.objectives import policy_loss
from modules.objectives.tis import (
    RolloutCorrection,
    RolloutCorrectionSettings,
    rollout_importance_weights,
    rollout_mismatch_metrics,
    truncated_logprobs,
)
from modules.settings import SettingsError

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


# ---------------------------------------------------------------- top-p / top-k replay (vLLM's processed log-probs)
P4 = torch.tensor([0.5, 0.3, 0.15, 0.05])


@pytest.mark.parametrize("kwargs, kept", [
    ({}, [0.5, 0.3, 0.15, 0.05]),
    ({"top_p": 0.75}, [0.5 / 0.8, 0.3 / 0.8, 0, 0]),  # ascending cumsum .05, .20, .50, 1: <= .25 dropped
    ({"top_k": 3}, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]),
    # top-k first, then top-p over the top-k distribution: .158, .474, 1 ascending; .158 <= .25 dropped
    ({"top_k": 3, "top_p": 0.75}, [0.5 / 0.8, 0.3 / 0.8, 0, 0]),
    ({"top_p": 0.01}, [1.0, 0, 0, 0]),  # the most likely token always stays
])
def test_truncated_logprobs_by_hand(kwargs, kept):
    logits = (2.0 * P4.log())[None, :].expand(4, 4)  # at temperature 2 the probabilities are P4
    got = truncated_logprobs(logits, torch.arange(4), temperature=2.0, **kwargs).exp()
    torch.testing.assert_close(got, torch.tensor(kept), atol=1e-6, rtol=1e-5)


def _reference_truncated(logits, ids, temperature, top_p, top_k):
    """One position at a time in plain Python: keep the k largest logits, then the most likely tokens while the
    probability mass ranked above them is < top_p; renormalise over the kept tokens."""
    out = torch.empty(ids.shape)
    flat_logits, flat_ids = logits.reshape(-1, logits.shape[-1]), ids.reshape(-1)
    for n, (row, token) in enumerate(zip(flat_logits.tolist(), flat_ids.tolist())):
        scaled = [x / temperature for x in row]
        order = sorted(range(len(scaled)), key=lambda v: -scaled[v])
        if top_k:
            order = order[:top_k]
        z = sum(math.exp(scaled[v]) for v in order)
        kept, above = [], 0.0
        for v in order:
            if above >= top_p:
                break
            kept.append(v)
            above += math.exp(scaled[v]) / z
        mass = sum(math.exp(scaled[v]) for v in kept)
        out.view(-1)[n] = math.log(math.exp(scaled[token]) / mass) if token in kept else -math.inf
    return out


@pytest.mark.parametrize("top_p, top_k, temperature", [(0.9, 0, 1.0), (1.0, 5, 0.7), (0.6, 8, 1.3), (1.0, 0, 0.5)])
def test_truncated_logprobs_match_an_independent_reference(top_p, top_k, temperature):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 12, generator=gen) * 2
    probs = torch.softmax(logits / temperature, -1)
    ids = torch.stack([torch.multinomial(p, 1, generator=gen)[:, 0] for p in probs])  # (3, 4), some outside
    got = truncated_logprobs(logits, ids, temperature=temperature, top_p=top_p, top_k=top_k)
    expected = _reference_truncated(logits, ids, temperature, top_p, top_k)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(got[finite], expected[finite], atol=1e-5, rtol=1e-5)
    if top_p == 1.0 and top_k == 0:  # no truncation: the plain log-softmax
        torch.testing.assert_close(got, torch.log_softmax(logits / temperature, -1).gather(-1, ids[..., None])[..., 0])


# ---------------------------------------------------------------- geometric and off-policy sequence masks
def test_geometric_mask_keeps_rows_whose_mean_log_ratio_is_in_range():
    # mean log ratio over trained tokens: row 0 (1 - 1 + 0) / 3 = 0 -> 1; row 1 (0.1 - 2) / 2 = -0.95 -> 0.387
    w = rollout_importance_weights(OLD, MU, MASK, mode="geometric_mask", clip_min=0.5, clip_max=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0], [0.0]]))
    w = rollout_importance_weights(OLD, MU, MASK, mode="geometric_mask", clip_min=0.3, clip_max=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0], [1.0]]))  # a pure mask: kept rows weigh 1, not the ratio
    w = rollout_importance_weights(OLD, MU, MASK, mode="geometric_mask", clip_min=None, clip_max=0.99)
    torch.testing.assert_close(w, torch.tensor([[0.0], [1.0]]))  # e^0 = 1 > 0.99


def test_offpolicy_mask_drops_negative_advantage_rows_that_drifted():
    # sampler-to-trainer mean log ratio (rollout - old): row 0 0, row 1 (-0.1 + 2) / 2 = 0.95
    adv = torch.tensor([-1.0, -1.0])
    w = rollout_importance_weights(OLD, MU, MASK, mode="offpolicy_mask", advantages=adv, offpolicy_threshold=0.9)
    torch.testing.assert_close(w, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    w = rollout_importance_weights(OLD, MU, MASK, mode="offpolicy_mask", advantages=adv, offpolicy_threshold=1.0)
    assert bool((w == 1).all())  # 0.95 <= delta
    w = rollout_importance_weights(OLD, MU, MASK, mode="offpolicy_mask", advantages=torch.tensor([-1.0, 2.0]),
                                   offpolicy_threshold=0.9)
    assert bool((w == 1).all())  # a positive advantage is never masked
    token_adv = torch.tensor([[-1.0, -1.0, -1.0], [0.5, -0.5, 0.0]])  # (N, T): per-token sign
    w = rollout_importance_weights(OLD, MU, MASK, mode="offpolicy_mask", advantages=token_adv,
                                   offpolicy_threshold=0.9)
    torch.testing.assert_close(w, torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="needs the advantages"):
        rollout_importance_weights(OLD, MU, MASK, mode="offpolicy_mask", offpolicy_threshold=0.9)


def test_mask_only_modes_report_the_zeroed_share():
    w = rollout_importance_weights(OLD, MU, MASK, mode="geometric_mask", clip_min=0.5, clip_max=2.0)
    m = rollout_mismatch_metrics(OLD, MU, MASK, w, mask_only=True)
    assert m["is_corrected_frac"] == 0.5 and m["is_weight/mean"] == 0.5  # one row of two rejected


def test_the_correction_object_passes_the_advantages_and_truncated_pi_old():
    from types import SimpleNamespace

    s = RolloutCorrectionSettings(mode="offpolicy_mask", offpolicy_threshold=0.9)
    rc = RolloutCorrection(s)
    rollout = SimpleNamespace(rollout_logps=MU, completion_mask=MASK, old_logps=OLD.clone(), token_weights=None)
    rc.begin(rollout, single_pass=False, trainer_logps=lambda: OLD, advantages=torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(rollout.token_weights, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    # row 1's 2 trained tokens of the 5 are zeroed
    assert rc.finish(lambda: OLD)["rollout_correction/is_corrected_frac"] == pytest.approx(0.4)
    # with a truncating sampler, the weights use `sampler_logps` and old_logps stays the ratio's base
    rc = RolloutCorrection(RolloutCorrectionSettings(mode="token_truncate"))
    rollout = SimpleNamespace(rollout_logps=MU, completion_mask=MASK, old_logps=OLD.clone(), token_weights=None)
    rc.begin(rollout, single_pass=False, trainer_logps=lambda: OLD, sampler_logps=lambda: MU.clone())
    assert bool((rollout.token_weights == 1).all()) and torch.equal(rollout.old_logps, OLD)
    assert rc.finish(lambda: MU)["rollout_correction/logp_diff/max"] == 0.0


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "geometric_mask", "clip_max": None}, "geometric_mask needs clip_min and/or clip_max"),
    ({"mode": "offpolicy_mask"}, "offpolicy_mask needs offpolicy_threshold"),
    ({"mode": "offpolicy_mask", "offpolicy_threshold": -1.0}, "offpolicy_threshold"),
])
def test_new_mode_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(SettingsError, match=message) as err:
        RolloutCorrectionSettings(**kwargs)
    assert "\n" not in str(err.value)


def test_mismatch_metrics_skip_a_token_outside_the_replayed_truncation():
    """A sampled token the trainer's replayed top-p set excludes has pi_old = -inf (weight 0): the logged statistics
    must stay finite (the recipe-run tests check every train/ metric is finite)."""
    old = torch.tensor([[-1.0, float("-inf"), -0.5]])
    mu = torch.tensor([[-1.2, -3.0, -0.5]])
    mask = torch.ones(1, 3)
    metrics = rollout_mismatch_metrics(old, mu, mask)
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["logp_diff/max"] == pytest.approx(0.2)
