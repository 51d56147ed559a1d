"""HCRMP parts (modules/papers/hcrmp): hints (rule / noisy / LLM parsing / none), the semantic cache, the
knowledge-base check, the Beta policy maths, per-critic GAE and the highway-env driving environment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modules.papers.hcrmp import (
    DIRECTIONS,
    HINT_DIM,
    TERMS,
    BetaActorMultiCritic,
    Hint,
    KnowledgeBase,
    LLMHinter,
    NoisyHinter,
    RuleHinter,
    SemanticCache,
    asr_features,
    beta_entropy,
    beta_log_prob,
    direction_of,
    make_hinter,
    multi_critic_advantage,
    parse_llm_answer,
    per_critic_gae,
    scene_text,
    to_action,
    to_unit,
)

torch.set_num_threads(1)


def _v(dx, dy, dvx=0.0):
    return {"dx": dx, "dy": dy, "dvx": dvx, "distance": math.hypot(dx, dy), "direction": direction_of(dx, dy)}


FREE = {"ego_speed": 25.0, "ego_lane": 1, "lanes_count": 3, "vehicles": []}
DENSE = {"ego_speed": 22.0, "ego_lane": 1, "lanes_count": 3,
         "vehicles": [_v(4.0, 0.0, -5.0), _v(1.0, -4.0), _v(-1.0, 4.0), _v(-8.0, 0.0, 2.0)]}


# ---- hints --------------------------------------------------------------------------------------------------------

def test_direction_of_covers_the_eight_sectors():
    got = [direction_of(20, 0), direction_of(20, -4), direction_of(0, -4), direction_of(-20, -4),
           direction_of(-20, 0), direction_of(-20, 4), direction_of(0, 4), direction_of(20, 4)]
    assert got == list(DIRECTIONS)


def test_rule_hinter_free_road_favours_efficiency():
    hint = RuleHinter()(FREE)
    np.testing.assert_allclose(hint.weights, np.array([1, 5, 1]) / 7, atol=1e-6)
    np.testing.assert_allclose(hint.scenario, [0.0, 0.0, 0.5, 1.0], atol=1e-6)  # congestion, risk, speed, lane room
    assert hint.directions.sum() == 0 and hint.source == "rule"


def test_rule_hinter_dense_close_traffic_favours_safety():
    hint = RuleHinter()(DENSE)
    # congestion 4/4 = 1; risk = 1 - 4 m / 20 m = 0.8 (ttc 0.8 s gives the same); both adjacent lanes taken
    np.testing.assert_allclose(hint.scenario, [1.0, 0.8, 0.2, 0.0], atol=1e-6)
    np.testing.assert_allclose(hint.weights, np.array([1 + 4 * 0.8 + 2, 1, 1]) / 8.2, atol=1e-6)
    assert hint.weights.argmax() == TERMS.index("safety")
    hot = {d for d, on in zip(DIRECTIONS, hint.directions) if on}
    assert hot == {"front", "left", "right", "rear"}
    feats = asr_features(hint)
    assert feats.shape == (HINT_DIM,) == (12,) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats, np.concatenate([hint.scenario, hint.directions]))


def test_none_hinter_is_uniform_with_zero_features():
    hint = make_hinter("none")(DENSE)
    np.testing.assert_allclose(hint.weights, [1 / 3] * 3, atol=1e-7)
    assert not asr_features(hint).any()
    assert isinstance(make_hinter("rule"), RuleHinter) and isinstance(make_hinter("noisy", seed=1), NoisyHinter)
    with pytest.raises(ValueError, match="unknown hinter"):
        make_hinter("oracle")


def test_noisy_hinter_hallucinates_at_its_rate():
    noisy = NoisyHinter(RuleHinter(), hallucination_rate=0.42, seed=0)
    hints = [noisy(FREE) for _ in range(4000)]
    fake = [h for h in hints if h.source == "hallucination"]
    assert noisy.calls == 4000 and noisy.hallucinations == len(fake)
    assert abs(noisy.observed_rate - 0.42) < 0.03
    clean = RuleHinter()(FREE).weights
    assert all(np.allclose(h.weights, clean) for h in hints if h.source == "rule")
    assert all(abs(h.weights.sum() - 1) < 1e-5 and not np.allclose(h.weights, clean) for h in fake[:50])
    again = NoisyHinter(RuleHinter(), hallucination_rate=0.42, seed=0)
    assert [again(FREE).source for _ in range(100)] == [h.source for h in hints[:100]]  # seeded
    never, always = NoisyHinter(RuleHinter(), 0.0), NoisyHinter(RuleHinter(), 1.0)
    for _ in range(200):
        never(FREE), always(FREE)
    assert never.hallucinations == 0 and always.hallucinations == 200


def test_parse_llm_answer():
    full = parse_llm_answer("safety=0.6 efficiency=0.3 comfort=0.1 scenario=[0.2, 1.5, 0.5, 0.0] critical=front, "
                            "rear-left")
    np.testing.assert_allclose(full["weights"], [0.6, 0.3, 0.1], atol=1e-6)
    np.testing.assert_allclose(full["scenario"], [0.2, 1.0, 0.5, 0.0], atol=1e-6)  # clipped to [0, 1]
    assert {d for d, on in zip(DIRECTIONS, full["directions"]) if on} == {"front", "rear-left"}
    pct = parse_llm_answer("Safety: 50, efficiency: 25, comfort: 25")
    np.testing.assert_allclose(pct["weights"], [0.5, 0.25, 0.25], atol=1e-6)
    assert pct["scenario"] is None and pct["directions"] is None
    assert parse_llm_answer("safety=0.5 efficiency=0.5") is None  # comfort missing
    assert parse_llm_answer("safety=0 efficiency=0 comfort=0") is None
    assert parse_llm_answer("I think the car should be careful.") is None
    assert parse_llm_answer("safety=1 efficiency=1 comfort=2 scenario=[0.1, 0.2]")["scenario"] is None
    assert parse_llm_answer("safety=1 efficiency=1 comfort=2 critical=none")["directions"].sum() == 0


def test_llm_hinter_parses_or_falls_back_without_loading(monkeypatch):
    hinter = LLMHinter()
    answers = iter(["safety=0.2 efficiency=0.7 comfort=0.1 scenario=[0.1, 0.1, 0.9, 1.0]", "no idea, sorry"])
    prompts = []
    monkeypatch.setattr(hinter, "generate", lambda prompt: prompts.append(prompt) or next(answers))
    good = hinter(DENSE)
    assert good.source == "llm"
    np.testing.assert_allclose(good.weights, [0.2, 0.7, 0.1], atol=1e-6)
    np.testing.assert_allclose(good.scenario, [0.1, 0.1, 0.9, 1.0], atol=1e-6)
    np.testing.assert_array_equal(good.directions, RuleHinter()(DENSE).directions)  # no critical= -> the rule's
    bad = hinter(DENSE)
    assert bad.source == "llm-fallback" and hinter.parse_failures == 1 and hinter.calls == 2
    np.testing.assert_allclose(bad.weights, RuleHinter()(DENSE).weights)
    assert hinter._policy is None  # nothing was loaded
    assert "front, 4 m away, closing in at 5.0 m/s" in prompts[0][0]["content"]
    assert scene_text(FREE).endswith("The road around it is free.")


@pytest.mark.slow
def test_llm_hinter_real_smollm2(smollm2_path):
    hinter = LLMHinter(str(smollm2_path), max_new_tokens=32)
    hint = hinter(DENSE)
    assert hinter.last_answer.startswith("safety=")
    assert hinter.parse_failures == 0 and hint.source == "llm" and abs(hint.weights.sum() - 1) < 1e-5


# ---- SCM ----------------------------------------------------------------------------------------------------------

class _Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, scene):
        self.calls += 1
        return Hint(np.zeros(4), np.zeros(8), [1, 0, 0], source=f"call{self.calls}")


def test_semantic_cache_hits_misses_and_expiry():
    base = _Counting()
    cache = SemanticCache(base, ttl=5, resolution=5.0)
    a = {"ego_speed": 25.0, "ego_lane": 1, "lanes_count": 3, "vehicles": [_v(12.0, 0.0, -1.0)]}
    a_close = {**a, "vehicles": [_v(13.9, 0.0, -1.0)]}  # same 5 m bin
    b = {**a, "vehicles": [_v(15.1, 0.0, -1.0)]}  # next bin
    sources = [cache(a, 0).source, cache(a_close, 1).source, cache(a, 2).source, cache(b, 3).source,
               cache(a, 4).source, cache(a, 5).source, cache(a, 6).source]
    assert sources == ["call1", "call1", "call1", "call2", "call1", "call3", "call3"]
    assert (cache.hits, cache.misses, cache.expired, base.calls) == (4, 3, 1, 3)
    assert cache.hit_rate == pytest.approx(4 / 7)
    cache.reset()
    assert len(cache) == 0 and cache(a, 6).source == "call4"  # emptied: a miss although step - 5 < ttl
    assert cache.hits == 4  # counters kept
    assert cache(a, 2).source == "call5"  # the step count went back (a new episode without reset): a miss
    cache.reset(stats=True)
    assert (cache.hits, cache.misses, cache.expired, cache.hit_rate) == (0, 0, 0, 0.0)


# ---- CSA ----------------------------------------------------------------------------------------------------------

def test_knowledge_base_accepts_agreeing_and_pulls_back_disagreeing_weights():
    kb = KnowledgeBase(k=3, threshold=0.2, pull=0.5)
    here = np.array([1.0, 0.8, 0.2, 0.0])
    hint_eff = Hint(np.zeros(4), np.zeros(8), [0.1, 0.8, 0.1])
    w, ok = kb.check(hint_eff, here)
    assert ok and np.allclose(w, hint_eff.weights)  # empty: accepted as is
    kb.add(here + 0.01, [0.8, 0.1, 0.1], outcome=1.0)
    kb.add(here - 0.01, [0.7, 0.2, 0.1], outcome=1.0)
    kb.add(here + 0.02, [0.1, 0.8, 0.1], outcome=0.0)  # near but failed: not an anchor
    kb.add(-here * 5, [0.0, 1.0, 0.0], outcome=1.0)  # good but far: outside the k = 3 nearest
    w, ok = kb.check(Hint(np.zeros(4), np.zeros(8), [0.7, 0.2, 0.1]), here)  # TV to (0.75, 0.15, 0.1) = 0.05
    assert ok and np.allclose(w, [0.7, 0.2, 0.1])
    w, ok = kb.check(hint_eff, here)  # TV = 0.65 > 0.2
    assert not ok
    np.testing.assert_allclose(w, 0.5 * np.array([0.1, 0.8, 0.1]) + 0.5 * np.array([0.75, 0.15, 0.1]), atol=1e-6)
    w, ok = KnowledgeBase(k=3, pull=1.0).check(hint_eff, here)  # a fresh KB: empty again
    assert ok
    replace = KnowledgeBase(k=3, pull=1.0)
    replace.add(here, [0.75, 0.15, 0.1], 1.0)
    w, ok = replace.check(hint_eff, here)
    assert not ok and np.allclose(w, [0.75, 0.15, 0.1])
    failed_only = KnowledgeBase(k=1)
    failed_only.add(here, [0.9, 0.05, 0.05], 0.0)
    assert failed_only.check(hint_eff, here)[1]  # no good-outcome record near: accepted
    assert (kb.checks, kb.rejections) == (3, 1) and len(kb) == 4


# ---- agent maths --------------------------------------------------------------------------------------------------

def test_multi_critic_advantage():
    adv = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    weights = torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(multi_critic_advantage(adv, weights), torch.tensor([1.75, 4.0]))
    torch.testing.assert_close(multi_critic_advantage(adv, torch.tensor([1.0, 0.0, 0.0])), torch.tensor([1.0, 0.0]))


def test_per_critic_gae_hand_computed_with_a_done_in_the_middle():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0, 0.0], [2.0, -1.0], [3.0, 0.5]])  # (T=3, K=2)
    values = torch.tensor([[0.5, 0.2], [1.0, -0.5], [1.5, 0.0]])
    dones = torch.tensor([False, True, False])
    last = torch.tensor([2.0, 1.0])
    adv, ret = per_critic_gae(rewards, values, dones, last, gamma=gamma, lam=lam)
    # critic 0: A1 = 2 - 1 = 1 (done: no bootstrap); A0 = (1 + .9 * 1 - .5) + .72 * 1 = 2.12; A2 = 3 + .9 * 2 - 1.5
    # critic 1: A1 = -1 + .5 = -.5; A0 = (0 + .9 * -.5 - .2) + .72 * -.5 = -1.01; A2 = .5 + .9 * 1 - 0 = 1.4
    expected = torch.tensor([[2.12, -1.01], [1.0, -0.5], [3.3, 1.4]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)
    # without the done, step 1 bootstraps from V(s_2) and step 0 sees step 2
    adv_nodone, _ = per_critic_gae(rewards, values, torch.zeros(3, dtype=torch.bool), last, gamma=gamma, lam=lam)
    assert adv_nodone[1, 0] == pytest.approx(2 + 0.9 * 1.5 - 1 + 0.72 * 3.3)
    # a done on the last step ignores last_values
    adv_end, _ = per_critic_gae(rewards, values, torch.tensor([False, True, True]), last * 100, gamma=gamma, lam=lam)
    torch.testing.assert_close(adv_end[2], torch.tensor([3.0 - 1.5, 0.5]))


def test_beta_log_prob_and_entropy_match_torch():
    g = torch.Generator().manual_seed(0)
    alpha = 1 + 5 * torch.rand(16, 2, generator=g)
    beta = 1 + 5 * torch.rand(16, 2, generator=g)
    x = torch.rand(16, 2, generator=g).clamp(0.01, 0.99)
    dist = torch.distributions.Beta(alpha, beta)
    torch.testing.assert_close(beta_log_prob(alpha, beta, x), dist.log_prob(x).sum(-1))
    torch.testing.assert_close(beta_entropy(alpha, beta), dist.entropy().sum(-1))
    assert beta_log_prob(alpha, beta, x).shape == (16,)


def test_unit_action_maps_round_trip_and_clamp():
    a = torch.tensor([-1.0, -0.5, 0.0, 1.0])
    u = to_unit(a)
    assert 0 < u.min() < 1e-4 and 1 - 1e-4 < u.max() < 1
    torch.testing.assert_close(to_action(u), a, atol=1e-4, rtol=0)
    assert to_action(to_unit(torch.tensor(0.3))).item() == pytest.approx(0.3)
    np.testing.assert_allclose(to_unit(np.array([-1.0, 0.0])), [1e-5, 0.5])
    alpha = beta = torch.full((1, 4), 2.0)
    assert torch.isfinite(beta_log_prob(alpha, beta, u[None])).all()


def test_beta_actor_multi_critic_shapes_and_gradients():
    torch.manual_seed(0)
    net = BetaActorMultiCritic(obs_dim=10, action_dim=2, n_critics=3, hidden=16)
    alpha, beta, values = net(torch.randn(5, 10))
    assert alpha.shape == beta.shape == (5, 2) and values.shape == (5, 3)
    assert (alpha > 1).all() and (beta > 1).all()
    sample = torch.distributions.Beta(alpha, beta).sample()
    loss = -beta_log_prob(alpha, beta, sample.clamp(1e-5, 1 - 1e-5)).mean() + values.pow(2).mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


# ---- environment --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def driving():
    pytest.importorskip("highway_env")
    from modules.papers.hcrmp import DrivingEnv

    return DrivingEnv


def test_env_is_seeded_and_deterministic(driving):
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(12, 2))

    def run(seed):
        env = driving("medium", seed=seed)
        out = [env.reset()]
        for a in actions:
            obs, _, done, _ = env.step(a)
            out.append(obs)
            if done:
                break
        return out

    first, second = run(0), run(0)
    assert first[0].shape == (driving("low").obs_dim,) == (42,) and first[0].dtype == np.float32
    assert len(first) == len(second) and all(np.array_equal(x, y) for x, y in zip(first, second))
    assert not np.array_equal(first[0], run(1)[0])


def test_env_crash_sets_done_crashed_and_safety(driving):
    env = driving("high", seed=0, horizon=40)  # straight at full throttle into dense traffic: crashes at step 17
    env.reset()
    done, steps = False, 0
    while not done:
        _, terms, done, info = env.step(np.array([1.0, 0.0]))
        steps += 1
    assert info["crashed"] and not info["success"] and steps < 40
    assert terms["safety"] == -1.0 and terms["efficiency"] == 1.0
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))


def test_env_short_episode_terms_and_scene(driving):
    env = driving("low", seed=0, horizon=6)
    assert env.action_dim == 2
    env.reset()
    actions = [np.array([1.0, 0.0]), np.array([-1.0, 0.0])] + [np.zeros(2)] * 4
    comforts = []
    for i, a in enumerate(actions):
        _, terms, done, info = env.step(a)
        assert tuple(terms) == TERMS and 0.0 <= terms["efficiency"] <= 1.0 and terms["safety"] == 0.0
        comforts.append(terms["comfort"])
        assert done == (i == 5)
    assert info["success"] and not info["crashed"] and info["step"] == 6
    np.testing.assert_allclose(comforts, [-1 / (2 * 2 ** 0.5), -2 / (2 * 2 ** 0.5), -1 / (2 * 2 ** 0.5), 0, 0, 0],
                               atol=1e-6)
    scene = env.scene()
    assert set(scene) == {"ego_speed", "ego_lane", "lanes_count", "vehicles"} and scene["lanes_count"] == 3
    dists = [v["distance"] for v in scene["vehicles"]]
    assert dists == sorted(dists) and all(d < 60 for d in dists)
    assert all(v["direction"] == direction_of(v["dx"], v["dy"]) for v in scene["vehicles"])
    hint = RuleHinter()(scene)
    assert abs(hint.weights.sum() - 1) < 1e-6 and asr_features(hint).shape == (HINT_DIM,)
