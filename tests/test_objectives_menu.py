"""The objectives menu (GSPO, CISPO, SAPO, entropy/covariance token selection, adaptive entropy coefficient, GDPO,
pass@k, REINFORCE++): each against hand-computed values or a few-line reference written here, its settings
validation, and a 2-step `r1 fit` with each option."""

from __future__ import annotations

import math

import pytest
import torch

from modules.objectives import (
    AdaptiveEntropyCoef,
    ObjectiveSettings,
    adaptive_entropy_coef,
    compute_advantages,
    micro_batch_loss,
    policy_loss,
)
from modules.objectives.losses import (
    clip_cov_mask,
    high_entropy_mask,
    kl_cov_mask,
    sapo_gate,
)
from modules.settings import SettingsError


def close(a, b, tol=1e-5):
    assert torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=tol, rtol=tol), (a, b)


def batch(seed=0, n=3, t=5):
    g = torch.Generator().manual_seed(seed)
    logps = (-torch.rand(n, t, generator=g) * 2).requires_grad_()
    old = logps.detach() + 0.3 * torch.randn(n, t, generator=g)
    mask = torch.ones(n, t)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    return logps, old, mask


def grad_of(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


# ------------------------------------------------------------------ defaults unchanged
def test_default_settings_reproduce_todays_grpo_loss():
    logps, old, mask = batch()
    adv = torch.tensor([1.0, -0.5, 2.0])
    assert ObjectiveSettings().loss_kwargs() == {"loss_type": "grpo", "epsilon_low": 0.2, "epsilon_high": None,
                                                 "delta": None, "beta": 0.0, "kl_estimator": "k3",
                                                 "entropy_coef": 0.0}
    kwargs = {k: v for k, v in ObjectiveSettings().loss_kwargs().items() if k != "entropy_coef"}
    loss, _ = policy_loss(logps, old, adv, mask, **kwargs)
    # reference: TRL's grpo loss written out
    r = torch.exp(logps - old)
    per = -torch.min(r * adv[:, None], r.clamp(0.8, 1.2) * adv[:, None]) * mask
    ref = (per.sum(1) / mask.sum(1)).mean()
    close(loss.detach(), ref.detach())
    close(grad_of(loss, logps), grad_of(ref, logps))
    explicit, _ = policy_loss(logps, old, adv, mask, importance_sampling_level="token", token_selection="all",
                              sapo_temperature_pos=3.0)  # sapo temperatures do nothing outside loss_type sapo
    assert float(explicit.detach()) == float(loss.detach())


# ------------------------------------------------------------------ GSPO
def test_gspo_sequence_ratio_clipped_per_sequence():
    logps, old, mask = batch()
    adv = torch.tensor([1.0, -0.5, 2.0])
    loss, metrics = policy_loss(logps, old, adv, mask, importance_sampling_level="sequence")
    rows = []
    for i in range(3):  # reference: one sequence at a time
        on = mask[i] > 0
        s = torch.exp((logps[i][on] - old[i][on]).mean())
        rows.append(-torch.min(s * adv[i], s.clamp(0.8, 1.2) * adv[i]))
    ref = torch.stack(rows).mean()
    close(loss.detach(), ref.detach())
    close(grad_of(loss, logps), grad_of(ref, logps))
    # one value per row in the ratio metrics
    s = torch.stack([torch.exp((logps[i][mask[i] > 0] - old[i][mask[i] > 0]).mean()) for i in range(3)]).detach()
    close(metrics["ratio/max"], s.max())


def test_gspo_sequence_clip_drops_the_whole_row():
    logps = torch.zeros(1, 3, requires_grad=True)
    old = torch.tensor([[-0.5, -0.5, 0.2]])  # mean log ratio 0.8/3 -> s = 1.305 > 1.2
    loss, _ = policy_loss(logps, old, torch.tensor([1.0]), torch.ones(1, 3), importance_sampling_level="sequence")
    close(loss.detach(), -1.2)
    assert torch.equal(grad_of(loss, logps), torch.zeros(1, 3))  # token-level would still train token 3
    token, _ = policy_loss(logps, old, torch.tensor([1.0]), torch.ones(1, 3))
    assert grad_of(token, logps)[0, 2] != 0


def test_gspo_token_has_the_sequence_value_and_per_token_gradients():
    logps, old, mask = batch(1)
    adv = torch.tensor([0.7, -1.0, 0.4])
    seq, _ = policy_loss(logps, old, adv, mask, importance_sampling_level="sequence")
    tok, _ = policy_loss(logps, old, adv, mask, importance_sampling_level="sequence_token")
    close(tok.detach(), seq.detach())  # same value
    close(grad_of(tok, logps), grad_of(seq, logps))  # and, with per-row advantages, the same gradient (Eq. 14)
    # per-token advantages: d loss / d logp_t = -(1/|y|) * A_t * s  where s is unclipped (GSPO-token Eq. 13)
    logps2 = torch.zeros(1, 2, requires_grad=True)
    old2 = torch.tensor([[0.05, -0.05]])  # s = 1
    adv_t = torch.tensor([[2.0, -1.0]])
    loss, _ = policy_loss(logps2, old2, adv_t, torch.ones(1, 2), importance_sampling_level="sequence_token")
    close(grad_of(loss, logps2), [[-1.0, 0.5]])
    loss, _ = policy_loss(logps2, old2, adv_t, torch.ones(1, 2), importance_sampling_level="sequence")
    close(grad_of(loss, logps2), [[-0.25, -0.25]])  # the mean couples the tokens


# ------------------------------------------------------------------ CISPO
def test_cispo_keeps_the_gradient_of_clipped_tokens():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -2.0]])  # token 0: r = e^0.5 = 1.6487 > 1.28 (epsilon_high 0.28), token 1: r = 1
    adv = torch.tensor([2.0])
    loss, metrics = policy_loss(logps, old, adv, torch.ones(1, 2), loss_type="cispo", epsilon_high=0.28)
    # by hand: -(sum_t sg[min(r_t, 1.28)] * A * logp_t) / 2 tokens (dapo normaliser, num_items = 2)
    close(loss.detach(), -(1.28 * 2 * -1.0 + 1.0 * 2 * -2.0) / 2)
    close(grad_of(loss, logps), [[-1.28, -1.0]])
    close(metrics["cispo/clip_frac"], 0.5)
    ppo, _ = policy_loss(logps, old, adv, torch.ones(1, 2), loss_type="dapo", epsilon_high=0.28)
    assert grad_of(ppo, logps)[0, 0] == 0  # PPO's clip drops that token


# ------------------------------------------------------------------ SAPO
def test_sapo_soft_gate_values_and_gradients():
    assert float(sapo_gate(torch.tensor(1.0), 2.0)) == pytest.approx(1.0)  # 4/tau * sigmoid(0)
    logps = torch.zeros(2, 2, requires_grad=True)
    old = torch.tensor([[0.0, -0.4], [0.0, 0.3]])
    adv = torch.tensor([1.5, -2.0])
    loss, _ = policy_loss(logps, old, adv, torch.ones(2, 2), loss_type="sapo", sapo_temperature_pos=1.0,
                          sapo_temperature_neg=2.0)

    def f(r, tau):  # reference gate
        return 4 / tau / (1 + math.exp(-tau * (r - 1)))

    r = [[1.0, math.exp(0.4)], [1.0, math.exp(-0.3)]]
    per = [[-f(r[0][0], 1) * 1.5, -f(r[0][1], 1) * 1.5], [f(r[1][0], 2) * 2, f(r[1][1], 2) * 2]]
    close(loss.detach(), sum(sum(row) / 2 for row in per) / 2)  # grpo normaliser
    g = grad_of(loss, logps)

    def df(r, tau):  # d f(r)/dr * r (chain rule through r = exp(logp - old))
        s = 1 / (1 + math.exp(-tau * (r - 1)))
        return 4 * s * (1 - s) * r

    close(g, [[-1.5 * df(r[0][0], 1) / 4, -1.5 * df(r[0][1], 1) / 4],
              [2 * df(r[1][0], 2) / 4, 2 * df(r[1][1], 2) / 4]])
    close(g[0, 0], -1.5 / 4)  # on-policy: the plain policy gradient, as the unclipped surrogate


# ------------------------------------------------------------------ token selection
def test_high_entropy_mask_keeps_the_top_share():
    ent = torch.arange(10.0).view(2, 5)
    keep = high_entropy_mask(ent, torch.ones(2, 5), quantile=0.2)
    assert keep.flatten().tolist() == [0] * 8 + [1, 1]  # quantile(0.8) of 0..9 = 7.2
    mask = torch.ones(2, 5)
    mask[1, 3:] = 0  # 8 and 9 are padding: top 20% of 0..7 -> threshold 5.6 -> 6, 7
    assert high_entropy_mask(ent, mask, quantile=0.2).flatten().nonzero().flatten().tolist() == [6, 7]
    assert high_entropy_mask(ent, mask, quantile=1.0).sum() == 8


def test_top_entropy_selection_trains_only_high_entropy_tokens():
    logps, old, mask = batch(2)
    ent = torch.rand(3, 5, generator=torch.Generator().manual_seed(3))
    adv = torch.tensor([1.0, -1.0, 0.5])
    loss, metrics = policy_loss(logps, None, adv, mask, entropies=ent, token_selection="top_entropy",
                                top_entropy_quantile=0.3)  # on-policy: every kept token has a gradient
    g = grad_of(loss, logps)
    keep = high_entropy_mask(ent, mask, quantile=0.3) > 0
    assert bool((g[~keep] == 0).all()) and bool((g[keep] != 0).all())
    close(metrics["token_selection/kept_frac"], keep.sum() / mask.sum())
    with pytest.raises(ValueError, match="needs the"):
        policy_loss(logps, old, adv, mask, token_selection="top_entropy")


def test_kl_cov_penalises_the_largest_covariance_tokens():
    logps = torch.tensor([[-0.1, -2.0, -1.0], [-3.0, -0.5, -1.0]], requires_grad=True)
    old = logps.detach() + torch.tensor([[0.2, -0.1, 0.3], [0.1, -0.4, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 3)
    # cov_t = (A_t - mean A) * (logp_t - mean logp), mean A = 0, mean logp = -7.6/6
    cov = [[1 * (-0.1 + 7.6 / 6), 1 * (-2 + 7.6 / 6), 1 * (-1 + 7.6 / 6)],
           [-1 * (-3 + 7.6 / 6), -1 * (-0.5 + 7.6 / 6), -1 * (-1 + 7.6 / 6)]]
    top2 = sorted(range(6), key=lambda i: -cov[i // 3][i % 3])[:2]  # int(6 * 0.4) = 2 tokens
    chosen = kl_cov_mask(logps, adv, mask, ratio=0.4)
    assert sorted(chosen.flatten().nonzero().flatten().tolist()) == sorted(top2) == [0, 3]
    loss, metrics = policy_loss(logps, old, adv, mask, token_selection="kl_cov", kl_cov_ratio=0.4, kl_cov_coef=2.0)
    r = torch.exp(logps - old)
    per = -r * adv[:, None] + 2.0 * chosen * (logps - old).abs()  # no clip at all under KL-Cov
    close(loss.detach(), (per.sum(1) / 3).mean().detach())
    close(metrics["kl_cov/selected_frac"], 2 / 6)


def test_clip_cov_drops_the_gradient_of_drawn_tokens():
    logps = torch.tensor([[-0.1, -2.0, -1.0, -0.2]], requires_grad=True)
    old = logps.detach() + torch.tensor([[0.0, 0.0, 0.0, -0.5]])  # token 3: r = 1.65, clipped for A > 0
    adv_t = torch.tensor([[3.0, -1.0, 0.5, 2.0]])
    mask = torch.ones(1, 4)
    # cov: A - 1.125 = [1.875, -2.125, -0.625, 0.875]; logp + 0.825 = [0.725, -1.175, -0.175, 0.625]
    # -> [1.359, 2.497, 0.109, 0.547]: tokens 0, 1 in (1, 5); token 3 is clipped anyway
    was_clipped = torch.tensor([[False, False, False, True]])
    drawn = clip_cov_mask(logps, adv_t, mask, was_clipped, ratio=0.5)  # int(4 * 0.5) = 2 = all candidates
    assert drawn.flatten().tolist() == [True, True, False, False]
    one = clip_cov_mask(logps, adv_t, mask, was_clipped, ratio=0.25, generator=torch.Generator().manual_seed(0))
    assert int(one.sum()) == 1 and bool((one <= drawn).all())
    loss, metrics = policy_loss(logps, old, adv_t, mask, token_selection="clip_cov", clip_cov_ratio=0.5)
    g = grad_of(loss, logps)
    assert g[0, 0] == 0 and g[0, 1] == 0 and g[0, 2] != 0 and g[0, 3] == 0
    close(loss.detach(), -0.5 / 4 + -1.2 * 2.0 / 4)  # tokens 2 (r = 1) and 3 (clipped at 1.2) remain
    close(metrics["clip_cov/selected_frac"], 0.5)


def test_covariance_selection_needs_ppo_clip_and_token_ratios():
    logps, old, mask = batch()
    with pytest.raises(ValueError, match="needs a PPO-clip loss_type"):
        policy_loss(logps, old, torch.ones(3), mask, loss_type="sapo", token_selection="kl_cov")
    with pytest.raises(SettingsError, match=r"^model\.objective\.token_selection='clip_cov'.*importance_sampling"):
        ObjectiveSettings(token_selection="clip_cov", importance_sampling_level="sequence")


def test_micro_batches_of_cispo_add_up_like_dapo():
    logps, old, mask = batch(4, n=4)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0])
    ent = torch.zeros(4, 5)
    kw = dict(loss_type="cispo", epsilon_high=0.28)
    whole, _ = micro_batch_loss(logps, old, adv, mask, entropies=ent, micro_rows=4, mini_rows=4,
                                mini_tokens=float(mask.sum()), **kw)
    parts = sum(micro_batch_loss(logps[s], old[s], adv[s], mask[s], entropies=ent[s], micro_rows=2, mini_rows=4,
                                 mini_tokens=float(mask.sum()), **kw)[0] for s in (slice(0, 2), slice(2, 4)))
    close(parts.detach(), whole.detach())


# ------------------------------------------------------------------ adaptive entropy coefficient
def test_adaptive_entropy_coefficient():
    assert adaptive_entropy_coef(0.01, 0.3, target=0.5, step=0.005) == pytest.approx(0.015)
    assert adaptive_entropy_coef(0.01, 0.7, target=0.5, step=0.005) == pytest.approx(0.005)
    assert adaptive_entropy_coef(0.002, 0.7, target=0.5, step=0.005) == 0.0
    c = AdaptiveEntropyCoef(0.0, target=1.0, step=0.1)
    values = [c.coefficient(0, 0.2), c.coefficient(0, 0.6), c.coefficient(1, 5.0), c.coefficient(1, 5.0),
              c.coefficient(2, 0.1), c.coefficient(3, 0.1)]
    close(values, [0.0, 0.0, 0.1, 0.1, 0.0, 0.1])  # step 0 mean 0.4 < 1: up; step 1 mean 5: down; step 2: up


# ------------------------------------------------------------------ advantages
def test_gdpo_normalises_each_reward_within_the_group_then_the_sum():
    per_func = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 10.0], [0.0, 10.0], [2.0, 5.0], [0.0, 1.0]])
    weights = [1.0, 0.5]
    adv = compute_advantages("gdpo", per_func, 2, weights=weights)
    # by hand: a pair (x, y) with x != y normalises to (+-|x-y|/2) / (|x-y|/sqrt(2) + eps) = +-1/sqrt(2) (approx)
    h = 1 / math.sqrt(2)
    summed = torch.tensor([h, -h, h, -h, 1.5 * h, -1.5 * h])  # func 2 is tied in the first two groups
    eps = 1e-4
    exact = []
    for x, y in per_func.view(3, 2, 2).unbind(0):  # reference: loop over groups and functions
        a = torch.zeros(2)
        for k, w in enumerate(weights):
            col = torch.stack([x[k], y[k]])
            if col[0] != col[1]:
                a += w * (col - col.mean()) / (col.std() + eps)
        exact.append(a)
    exact = torch.cat(exact)
    close(exact, summed, tol=1e-3)
    close(adv, (exact - exact.mean()) / (exact.std() + eps))
    # GRPO on the weighted sum would give the two groups 2 and 3 the same (+-0.707) advantages; GDPO does not
    assert not torch.isclose(adv[0], adv[4])
    nan = per_func.clone()
    nan[5, 1] = float("nan")  # a reward function returned None: left out of its statistics
    adv_nan = compute_advantages("gdpo", nan, 2, weights=weights)
    assert bool(torch.isfinite(adv_nan).all())


def test_passk_advantage_goes_to_the_best_completion_only():
    rewards = torch.tensor([0.0, 1.0, 0.5, 1.0, 0.2, 0.2, 0.2, 0.2, 3.0, 1.0, 0.0, 0.0])
    raw = compute_advantages("passk", rewards, 4, scale="none")
    close(raw, [0, 0, 0, 0, 0, 0, 0, 0, 2.0, 0, 0, 0])  # group 1: tied best (1.0, 1.0) -> gap 0; group 2: all tied
    scaled = compute_advantages("passk", rewards, 4, scale="group")
    close(scaled[8], 2.0 / (torch.tensor([3.0, 1.0, 0.0, 0.0]).std() + 1e-6))
    rewards = torch.tensor([0.0, 1.0, 0.3, 0.2])
    close(compute_advantages("passk", rewards, 4, scale="none"), [0, 0.7, 0, 0])
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        compute_advantages("passk", rewards, 1)


def _token_whiten(per_row, counts):
    """Reference: expand each row's value to its tokens and whiten them all (veRL's masked_whiten)."""
    tokens = torch.cat([torch.full((int(c),), float(v)) for v, c in zip(per_row, counts)]).double()
    mean, var = tokens.mean(), tokens.var()  # unbiased
    return (torch.as_tensor(per_row).double() - mean) / torch.sqrt(var + 1e-8)


def test_reinforce_pp_whitens_over_the_batch_tokens():
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 1.0, 1.0])
    counts = torch.tensor([3, 1, 4, 2, 5, 1])
    close(compute_advantages("reinforce_pp", rewards, 2, token_counts=counts), _token_whiten(rewards, counts))
    close(compute_advantages("reinforce_pp", rewards, 2), (rewards - rewards.mean()) / rewards.std(), tol=1e-4)
    base = compute_advantages("reinforce_pp_baseline", rewards, 2, token_counts=counts)
    centred = torch.tensor([0.5, -0.5, -1.0, 1.0, 0.0, 0.0])  # r - group mean
    close(base, _token_whiten(centred, counts))
    # unlike grpo, a flat group is not forced to 0 when the batch mean is not 0 (token weights shift it)
    assert base[4] != 0


def test_settings_choose_and_pass_the_estimator():
    per_func = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    rewards = per_func.sum(1)  # (1, 1): tied, grpo gives 0; gdpo sees two opposite functions
    assert ObjectiveSettings().advantages(rewards, 2).tolist() == [0.0, 0.0]
    s = ObjectiveSettings(advantage_estimator="gdpo")
    out = s.advantages(rewards, 2, rewards_per_func=per_func, reward_weights=[2.0, 1.0])
    assert out[0] > 0 > out[1]
    s = ObjectiveSettings(advantage_estimator="reinforce_pp")
    assert s.advantage_kwargs(token_counts=torch.ones(2))["token_counts"] is not None
    assert ObjectiveSettings(advantage_estimator="passk", scale_rewards="none").advantage_kwargs() == {
        "scale": "none"}


@pytest.mark.parametrize(("field", "value", "fix"), [
    ("importance_sampling_level", "seq", "use one of token, sequence, sequence_token"),
    ("loss_type", "gspo", "cispo, sapo"),
    ("token_selection", "entropy", "use one of all, top_entropy, kl_cov, clip_cov"),
    ("advantage_estimator", "reinforce++", "reinforce_pp_baseline"),
    ("sapo_temperature_neg", 0.0, "positive gate temperature"),
    ("top_entropy_quantile", 1.5, "share of tokens kept"),
    ("kl_cov_ratio", 0.0, "veRL uses 0.0002"),
    ("clip_cov_bounds", (5.0, 1.0), "low < high"),
    ("target_entropy", -1.0, "null = the fixed entropy_coef"),
])
def test_settings_errors_are_one_line_naming_the_field(field, value, fix):
    with pytest.raises(SettingsError) as err:
        ObjectiveSettings(**{field: value})
    text = str(err.value)
    assert text.startswith(f"model.objective.{field}=") and fix in text and "\n" not in text
    with pytest.raises(SettingsError, match="scale_rewards='batch' with advantage_estimator='passk'"):
        ObjectiveSettings(advantage_estimator="passk", scale_rewards="batch")


# ------------------------------------------------------------------ end to end
MENU_RUNS = {
    "gspo": (["--model.objective.importance_sampling_level", "sequence"], "train/ratio/mean"),
    "cispo_gspo_token_gdpo": (["--model.objective.loss_type", "cispo", "--model.objective.importance_sampling_level",
                               "sequence_token", "--model.objective.advantage_estimator", "gdpo"],
                              "train/cispo/clip_frac"),
    "sapo_passk": (["--model.objective.loss_type", "sapo", "--model.objective.advantage_estimator", "passk"],
                   "train/ratio/mean"),
    "top_entropy_adaptive_reinforce_pp": (["--model.objective.token_selection", "top_entropy",
                                           "--model.objective.target_entropy", "10.0",
                                           "--model.objective.advantage_estimator", "reinforce_pp"],
                                          "train/entropy_coef"),
    "kl_cov_reinforce_pp_baseline": (["--model.objective.token_selection", "kl_cov", "--model.objective.kl_cov_ratio",
                                      "0.1", "--model.objective.advantage_estimator", "reinforce_pp_baseline"],
                                     "train/kl_cov/selected_frac"),
    "clip_cov": (["--model.objective.token_selection", "clip_cov", "--model.objective.clip_cov_bounds", "[-1, 1]"],
                 "train/token_selection/kept_frac"),
}


@pytest.mark.parametrize("name", list(MENU_RUNS))
def test_menu_option_trains_two_steps_through_the_cli(fit_metrics, name):
    overrides, column = MENU_RUNS[name]
    _, train = fit_metrics("recipes/configs/grpo.yaml", *overrides)
    assert column in train.columns and train[column].notna().all()
    if name.startswith("top_entropy"):
        kept = train["train/token_selection/kept_frac"]
        assert ((kept > 0) & (kept < 1)).all()  # only the high-entropy share carries the gradient
        assert train["train/entropy_coef"].tolist() == pytest.approx([0.0, 0.005])  # entropy < 10 nats: it rises


def test_the_adaptive_entropy_coefficient_resumes_from_the_checkpoint(tiny_model_path):
    from recipes.grpo import GRPO

    def make():
        return GRPO(str(tiny_model_path), rewards=["accuracy"], num_generations=2,
                    objective={"entropy_coef": 0.01, "target_entropy": 0.5})

    recipe = make()
    recipe.entropy_control.value = 0.123  # moved during training
    checkpoint = {"state_dict": recipe.state_dict()}
    recipe.on_save_checkpoint(checkpoint)
    fresh = make()
    assert fresh.entropy_control.value == 0.01
    fresh.on_load_checkpoint(checkpoint)
    assert fresh.entropy_control.value == 0.123
