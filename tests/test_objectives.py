"""Advantages, KL estimators and policy losses against numbers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from modules.objectives import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    group_advantages,
    kl_estimate,
    policy_loss,
    rloo_advantages,
    zero_variance_groups,
)

EPS = 1e-4
# Two groups of 3: group 0 = [1, 2, 3] (mean 2, unbiased std 1), group 1 = [5, 5, 5] (zero variance).
REWARDS = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
# Batch std of REWARDS: mean 3.5, squared deviations 6.25+2.25+0.25+3*2.25 = 15.5, /5 = 3.1.
BATCH_STD = math.sqrt(3.1)


def close(actual, expected, atol=1e-6):
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ---------------------------------------------------------------- advantages


@pytest.mark.parametrize(
    "scale, denom",
    [("group", 1.0 + EPS), ("batch", BATCH_STD + EPS), ("none", 1.0)],
)
def test_group_advantages_each_scale(scale, denom):
    adv = group_advantages(REWARDS, 3, scale=scale)
    close(adv, [-1 / denom, 0.0, 1 / denom, 0.0, 0.0, 0.0])
    assert torch.equal(adv[3:], torch.zeros(3))  # the zero-variance group is exactly 0


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_of_size_one_is_zero_not_nan(scale):
    adv = group_advantages(torch.tensor([0.5, -2.0, 7.0]), 1, scale=scale)
    assert torch.equal(adv, torch.zeros(3))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_tied_rewards_that_do_not_average_exactly_give_exact_zero(scale):
    # In float32, 0.9 - mean(0.9, 0.9, 0.9) is 6e-8, not 0; the advantage must still be exactly 0.
    rewards = torch.tensor([0.9, 0.9, 0.9, 0.0, 1.0, 0.0])
    assert (rewards[:3] - rewards[:3].mean()).abs().max() > 0
    assert torch.equal(group_advantages(rewards, 3, scale=scale)[:3], torch.zeros(3))
    assert torch.equal(rloo_advantages(rewards, 3)[:3], torch.zeros(3))


def test_group_scale_second_group_by_hand():
    # group [0, 1, 0]: mean 1/3, std sqrt(((1/3)^2 * 2 + (2/3)^2) / 2) = sqrt(1/3)
    adv = group_advantages(torch.tensor([0.9, 0.9, 0.9, 0.0, 1.0, 0.0]), 3)
    std = math.sqrt(1 / 3)
    close(adv[3:], [(-1 / 3) / (std + EPS), (2 / 3) / (std + EPS), (-1 / 3) / (std + EPS)], atol=1e-5)


def test_integer_rewards_are_accepted():
    close(group_advantages(torch.tensor([0, 1]), 2, scale="none"), [-0.5, 0.5])


def test_rloo_advantages():
    # r_i - mean(others): 1 - 2.5, 2 - 2, 3 - 1.5; tied group 0.
    close(rloo_advantages(REWARDS, 3), [-1.5, 0.0, 1.5, 0.0, 0.0, 0.0])
    # G=2: r_0 - r_1 and r_1 - r_0.
    close(rloo_advantages(torch.tensor([1.0, 0.25]), 2), [0.75, -0.75])


def test_rloo_needs_two_samples():
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        rloo_advantages(torch.tensor([1.0, 2.0]), 1)


def test_zero_variance_groups():
    assert zero_variance_groups(REWARDS, 3).tolist() == [False, True]
    assert zero_variance_groups(torch.tensor([1.0, 1.0 + 1e-9, 0.0, 1e-3]), 2).tolist() == [True, False]


def test_registry():
    assert set(ADVANTAGE_ESTIMATORS) == {"grpo", "rloo", "gdpo", "passk", "reinforce_pp", "reinforce_pp_baseline"}
    close(compute_advantages("grpo", REWARDS, 3, scale="none"), [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    close(compute_advantages("rloo", REWARDS, 3), [-1.5, 0.0, 1.5, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'ppo'.*'grpo', 'passk'.*'rloo'"):
        compute_advantages("ppo", REWARDS, 3)


def test_advantage_input_errors():
    with pytest.raises(ValueError, match=r"row 2 .*check the reward functions"):
        group_advantages(torch.tensor([1.0, 0.0, float("nan"), 1.0]), 2)
    with pytest.raises(ValueError, match=r"\(5\) is not divisible by group_size \(2\)"):
        group_advantages(torch.ones(5), 2)
    with pytest.raises(ValueError, match=r"scale='std'.*\['group', 'batch', 'none'\]"):
        group_advantages(REWARDS, 3, scale="std")


# ---------------------------------------------------------------- KL estimators


def test_kl_estimators():
    logps = torch.tensor([-1.0, -2.0, 0.0])
    ref = torch.tensor([-1.5, -1.0, 25.0])
    # d = ref - logp = [-0.5, 1, 25]
    close(kl_estimate(logps, ref, "k1"), [0.5, -1.0, -25.0])
    close(kl_estimate(logps, ref, "k2"), [0.125, 0.5, 312.5])
    k3 = [math.exp(-0.5) + 0.5 - 1, math.e - 2, math.exp(25) - 26]
    k3_actual = kl_estimate(logps.double(), ref.double(), "k3")
    torch.testing.assert_close(k3_actual, torch.tensor(k3, dtype=torch.float64))
    close(kl_estimate(logps, ref, "low_var_kl"), [k3[0], k3[1], 10.0])  # veRL clamps to [-10, 10]
    with pytest.raises(ValueError, match=r"unknown kind='k4'.*'k1', 'k2', 'k3', 'low_var_kl'"):
        kl_estimate(logps, ref, "k4")


# ---------------------------------------------------------------- policy loss
# Tiny example (N=2, T=3). Ratios r = exp(logps - old_logps); row 1's last token is padding.
#   row 0, A=+1, r = [1.1, 0.7, 1.3]: min(r, clip(r, .8, 1.2)) = [1.1, 0.7, 1.2] -> loss [-1.1, -0.7, -1.2]
#   row 1, A=-1, r = [0.7, 1.3, pad]: min(-r, -clip(r)) = [-0.8, -1.3]          -> loss [0.8, 1.3]
# Token sum = -3.0 + 2.1 = -0.9 over 5 tokens; row means -1.0 and 1.05.
RATIOS = torch.tensor([[1.1, 0.7, 1.3], [0.7, 1.3, 5.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ADV = torch.tensor([1.0, -1.0])
OLD = torch.full((2, 3), -1.0)


def tiny(**kw):
    logps = (OLD + RATIOS.log()).requires_grad_()
    return policy_loss(logps, OLD, ADV, MASK, **kw)


@pytest.mark.parametrize(
    "loss_type, kw, expected",
    [
        ("grpo", {}, (-1.0 + 1.05) / 2),
        ("bnpo", {}, -0.9 / 5),
        ("dr_grpo", {"max_completion_length": 4}, -0.9 / (2 * 4)),
        ("dapo", {}, -0.9 / 5),
        ("dapo", {"num_items_in_batch": 10}, -0.9 / 10),
        ("dapo", {"num_items_in_batch": torch.tensor(12)}, -0.9 / 12),
    ],
)
def test_each_loss_type(loss_type, kw, expected):
    loss, _ = tiny(loss_type=loss_type, **kw)
    close(loss, expected)


def test_metrics():
    entropies = torch.tensor([[0.5, 1.0, 1.5], [2.0, 3.0, 99.0]])
    _, m = tiny(entropies=entropies)
    # low-clipped: row 1 token 0 (0.7 < 0.8, A<0); high-clipped: row 0 token 2 (1.3 > 1.2, A>0).
    # Row 0 token 1 (0.7, A>0) and row 1 token 1 (1.3, A<0) are not clipped; the padded 5.0 is ignored.
    close(m["clip_ratio/low_mean"], 1 / 5)
    close(m["clip_ratio/high_mean"], 1 / 5)
    close(m["clip_ratio/region_mean"], 2 / 5)
    close(m["ratio/mean"], (1.1 + 0.7 + 1.3 + 0.7 + 1.3) / 5)
    close(m["ratio/min"], 0.7)
    close(m["ratio/max"], 1.3)
    close(m["entropy"], (0.5 + 1.0 + 1.5 + 2.0 + 3.0) / 5)
    assert "kl" not in m
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())


def test_fully_masked_row_contributes_zero():
    logps = torch.cat([OLD + RATIOS.log(), torch.full((1, 3), -1.0)]).requires_grad_()
    old = torch.cat([OLD, torch.full((1, 3), 50.0)])  # garbage ratio exp(-51) under the padding
    mask = torch.cat([MASK, torch.zeros(1, 3, dtype=torch.long)])
    adv = torch.tensor([1.0, -1.0, 3.0])
    loss, _ = policy_loss(logps, old, adv, mask, loss_type="grpo")
    close(loss, (-1.0 + 1.05 + 0.0) / 3)  # grpo still averages over all N rows, as TRL does
    loss, _ = policy_loss(logps, old, adv, mask, loss_type="bnpo")
    close(loss, -0.9 / 5)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_all_masked_batch_is_zero_not_nan(loss_type):
    logps = torch.tensor([[-1.0, float("inf")]], requires_grad=True)  # even garbage under padding
    loss, m = policy_loss(logps, None, torch.tensor([2.0]), torch.zeros(1, 2), loss_type=loss_type,
                          max_completion_length=2, ref_logps=torch.zeros(1, 2), beta=0.1)
    assert loss.item() == 0.0
    assert all(torch.isfinite(v) and v.item() == 0.0 for v in m.values())


def test_asymmetric_clipping():
    # Ratios [1.25, 1.3] with bnpo (mean over the 2 tokens).
    old = torch.zeros(1, 2)
    logps = torch.tensor([[1.25, 1.3]]).log()
    mask = torch.ones(1, 2)
    pos, neg = torch.tensor([1.0]), torch.tensor([-1.0])
    # symmetric 0.2: upper bound 1.2 clips both tokens of a positive advantage
    loss, m = policy_loss(logps, old, pos, mask, loss_type="bnpo", epsilon_low=0.2)
    close(loss, -(1.2 + 1.2) / 2)
    close(m["clip_ratio/high_mean"], 1.0)
    # clip-higher 0.28: upper bound 1.28 -> 1.25 passes through, 1.3 is clipped to 1.28
    loss, m = policy_loss(logps, old, pos, mask, loss_type="bnpo", epsilon_low=0.2, epsilon_high=0.28)
    close(loss, -(1.25 + 1.28) / 2)
    close(m["clip_ratio/high_mean"], 0.5)
    # negative advantage: min(-r, -clip(r)) = -r, no clipping above 1 whatever eps_high is
    loss, m = policy_loss(logps, old, neg, mask, loss_type="bnpo", epsilon_low=0.2, epsilon_high=0.28)
    close(loss, (1.25 + 1.3) / 2)
    close(m["clip_ratio/region_mean"], 0.0)


def test_two_sided_clipping_delta():
    old = torch.zeros(1, 1)
    logps = torch.tensor([[3.0]]).log()
    mask = torch.ones(1, 1)
    loss, _ = policy_loss(logps, old, torch.tensor([-1.0]), mask)
    close(loss, 3.0)  # unbounded for a negative advantage
    loss, _ = policy_loss(logps, old, torch.tensor([-1.0]), mask, delta=2.0)
    close(loss, 2.0)  # ratio capped at delta
    loss, _ = policy_loss(logps, old, torch.tensor([1.0]), mask, delta=2.0)
    close(loss, -1.2)  # positive advantage: still the 1 + eps clip


@pytest.mark.parametrize(
    "kind, kl_tokens",
    [("k3", [math.exp(-0.5) + 0.5 - 1, math.e - 2]), ("k1", [0.5, -1.0])],
)
def test_kl_penalty(kind, kl_tokens):
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]])
    beta, adv = 0.1, 0.5
    loss, m = policy_loss(
        logps, None, torch.tensor([adv]), torch.ones(1, 2), ref_logps=ref, beta=beta, kl_estimator=kind
    )
    # ratio 1: per token -A + beta * kl, grpo mean over the 2 tokens
    close(loss, sum(-adv + beta * k for k in kl_tokens) / 2)
    close(m["kl"], sum(kl_tokens) / 2)
    # with beta = 0 the KL is still reported but not added
    loss0, m0 = policy_loss(
        logps, None, torch.tensor([adv]), torch.ones(1, 2), ref_logps=ref, kl_estimator=kind
    )
    close(loss0, -adv)
    close(m0["kl"], sum(kl_tokens) / 2)


def test_per_token_advantages_match_broadcast():
    logps = OLD + RATIOS.log()
    for loss_type in ["grpo", "bnpo", "dapo"]:
        seq, m_seq = policy_loss(logps, OLD, ADV, MASK, loss_type=loss_type)
        tok, m_tok = policy_loss(logps, OLD, ADV[:, None].expand(2, 3), MASK, loss_type=loss_type)
        close(tok, seq)
        assert m_tok.keys() == m_seq.keys()
        for key in m_seq:
            close(m_tok[key], m_seq[key])


def test_per_token_advantages_by_hand():
    # r = [1.3, 0.7, 1.0], A = [1, -1, 2]: losses [-1.2, 0.8, -2.0], bnpo mean -2.4/3.
    logps = torch.tensor([[1.3, 0.7, 1.0]]).log()
    loss, m = policy_loss(logps, torch.zeros(1, 3), torch.tensor([[1.0, -1.0, 2.0]]), torch.ones(1, 3),
                          loss_type="bnpo")
    close(loss, -0.8)
    close(m["clip_ratio/high_mean"], 1 / 3)
    close(m["clip_ratio/low_mean"], 1 / 3)


def test_dapo_micro_batches_add_up():
    full, _ = tiny(loss_type="dapo")
    total = MASK.sum()  # 5 tokens across the accumulated batch
    logps = OLD + RATIOS.log()
    parts = [policy_loss(logps[i : i + 1], OLD[i : i + 1], ADV[i : i + 1], MASK[i : i + 1],
                         loss_type="dapo", num_items_in_batch=total)[0] for i in range(2)]
    close(parts[0], -3.0 / 5)
    close(parts[1], 2.1 / 5)
    close(parts[0] + parts[1], full)
    # bnpo normalises per micro-batch: its halves (-1.0, 1.05) do not add up to -0.18
    bnpo = [
        policy_loss(logps[i : i + 1], OLD[i : i + 1], ADV[i : i + 1], MASK[i : i + 1], loss_type="bnpo")[0]
        for i in range(2)
    ]
    close(bnpo[0] + bnpo[1], 0.05)


def test_gradient_single_iteration_grpo():
    # ratio 1, no clipping: d/d logp_{i,t} = -A_i * mask_{i,t} / (count_i * N)
    logps = torch.tensor([[-0.5, -1.0, -2.0], [-0.1, -0.3, -4.0]], requires_grad=True)
    loss, _ = policy_loss(logps, None, ADV, MASK, loss_type="grpo")
    close(loss, (-1.0 + 1.0) / 2)  # ratio 1: row means -A
    loss.backward()
    close(logps.grad, [[-1 / 6, -1 / 6, -1 / 6], [0.25, 0.25, 0.0]])


def test_gradient_clipped_tokens():
    # bnpo, ratios [1.3, 1.1]; d(-r*A)/d logp = -A*r, divided by 2 tokens; clipped tokens have 0 gradient.
    old = torch.zeros(1, 2)
    for adv, expected in [(1.0, [[0.0, -1.1 / 2]]), (-1.0, [[1.3 / 2, 1.1 / 2]])]:
        logps = torch.tensor([[1.3, 1.1]]).log().requires_grad_()
        loss, _ = policy_loss(logps, old, torch.tensor([adv]), torch.ones(1, 2), loss_type="bnpo")
        loss.backward()
        close(logps.grad, expected)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_gradcheck(loss_type):
    # log-ratios chosen away from the clip boundaries log(0.8) = -0.223 and log(1.2) = 0.182
    log_ratio = torch.tensor([[0.05, -0.3, 0.4], [-0.1, 0.02, 0.5]], dtype=torch.float64)
    old = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.2, -1.0]], dtype=torch.float64)
    ref = old + 0.3
    adv = torch.tensor([[0.7, -1.2, 0.4], [-0.5, 1.5, 2.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])

    def f(logps):
        return policy_loss(logps, old, adv, mask, loss_type=loss_type, ref_logps=ref, beta=0.1,
                           max_completion_length=4)[0]

    assert torch.autograd.gradcheck(f, ((old + log_ratio).requires_grad_(),))


def test_policy_loss_errors():
    logps = OLD + RATIOS.log()
    with pytest.raises(ValueError, match=r"unknown loss_type='ppo'.*'grpo', 'bnpo', 'dr_grpo', 'dapo'"):
        policy_loss(logps, OLD, ADV, MASK, loss_type="ppo")
    with pytest.raises(ValueError, match=r"beta=0.1 needs ref_logps"):
        policy_loss(logps, OLD, ADV, MASK, beta=0.1)
    with pytest.raises(ValueError, match=r"'dr_grpo' needs max_completion_length"):
        policy_loss(logps, OLD, ADV, MASK, loss_type="dr_grpo")
    with pytest.raises(ValueError, match=r"mask has shape \(2, 2\)"):
        policy_loss(logps, OLD, ADV, MASK[:, :2])
    with pytest.raises(ValueError, match=r"advantages has 3 rows"):
        policy_loss(logps, OLD, torch.ones(3), MASK)
