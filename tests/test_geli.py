"""LLM-GELI: decomposition consistency, the oracle -> reward model pipeline recovering the hidden turn quality,
the global-consistency term, LLM reply parsing, and a 2-step `r1 fit` smoke run."""

from __future__ import annotations

import random

import pytest
import torch

from datamodules.tasks import make_task
from datamodules.tasks.dialogues import make_dialogue_prompts, make_dialogue_sessions, turn_features, turn_quality
from modules.papers.geli.decompose import (
    LLMDecomposer,
    OracleDecomposer,
    build_decomposer,
    build_decomposition_prompt,
    parse_turn_scores,
    rescale_to_session,
    uniform_split,
)
from modules.papers.geli.reward_model import (
    RewardModelSettings,
    TurnRewardModel,
    distillation_loss,
    geli_rm_reward,
    quality_correlation,
    session_aggregate,
    train_reward_model,
    turn_examples,
)
from recipes.cli.registry import CONFIG_DIR

HASHED = RewardModelSettings(encoder="hashed", hashed_dim=512)


def _user(text):
    return {"role": "user", "content": text}


def _agent(text):
    return {"role": "assistant", "content": text}


# ------------------------------------------------------------------------------------------- synthetic data
def test_hidden_quality_follows_the_observable_features():
    history = [_user("I've been really into chess lately.")]
    assert turn_quality(history, "That's great! Chess sounds like fun. What got you started?") == 1.0  # .35+.25+.2+.2
    assert turn_quality(history, "I see.") == 0.35
    assert turn_quality(history, "Whatever works for you.") == pytest.approx(0.05)
    long = "I see. " + "word " * 40
    assert turn_features(history, long)["too_long"] and turn_quality(history, long) == pytest.approx(0.05)
    # on_topic needs the topic of the *last user turn*
    assert not turn_features([_user("I love hiking.")], "Chess is fun.")["on_topic"]


def test_sessions_and_prompts():
    sessions = make_dialogue_sessions(20, seed=3, session_noise=0.0)
    for s in sessions:
        agents = [m for m in s["messages"] if m["role"] == "assistant"]
        assert len(agents) == len(s["quality"]) >= 2
        assert s["session_score"] == pytest.approx(sum(s["quality"]) / len(s["quality"]))
        history = s["messages"][:s["messages"].index(agents[0])]
        assert s["quality"][0] == turn_quality(history, agents[0]["content"])
    rows = make_task("datamodules.tasks.dialogues.make_dialogue_prompts", 10, seed=1)
    assert rows == make_dialogue_prompts(10, seed=1)
    assert all(r["prompt"][-1]["role"] == "user" and r["topic"] in r["prompt"][-1]["content"] for r in rows)


# ------------------------------------------------------------------------------------------- decomposition
def test_rescale_to_session_hand_examples():
    assert rescale_to_session([0.2, 0.6], 0.3) == pytest.approx([0.1, 0.5])  # mean 0.4 -> 0.3
    assert rescale_to_session([0.2, 0.6], 1.0, mode="sum") == pytest.approx([0.3, 0.7])  # sum 0.8 -> 1.0
    assert rescale_to_session([0.2, 0.6], 1.0, mode="none") == [0.2, 0.6]
    assert uniform_split(3, 0.6) == pytest.approx([0.6] * 3)
    assert uniform_split(3, 0.6, mode="sum") == pytest.approx([0.2] * 3)
    with pytest.raises(ValueError, match="consistency='max'"):
        rescale_to_session([0.1], 0.5, mode="max")


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_decomposition_aggregates_to_the_session_score(mode):
    rng = random.Random(0)
    for _ in range(50):
        raw = [rng.uniform(-2, 2) for _ in range(rng.randint(1, 6))]
        score = rng.uniform(-1, 1)
        out = rescale_to_session(raw, score, mode=mode)
        agg = sum(out) if mode == "sum" else sum(out) / len(out)
        assert agg == pytest.approx(score, abs=1e-9)
        assert [a - b for a, b in zip(out, out[1:])] == pytest.approx([a - b for a, b in zip(raw, raw[1:])])
    sessions = make_dialogue_sessions(30, seed=1)
    decomposer = OracleDecomposer(noise=0.1, consistency=mode)
    rewards = decomposer.decompose([s["messages"] for s in sessions], [s["session_score"] for s in sessions])
    for s, r in zip(sessions, rewards):
        assert len(r) == len(s["quality"])
        assert (sum(r) if mode == "sum" else sum(r) / len(r)) == pytest.approx(s["session_score"], abs=1e-9)
    assert decomposer.stats()["parse_failures"] == 0


# ---------------------------------------------------------------------------------------- LLM decomposer
@pytest.mark.parametrize("reply, n, expected", [
    ("[0.1, 0.9]", 2, [0.1, 0.9]),
    ("Here you go:\n```json\n[0.25, 0.5, 1]\n```", 3, [0.25, 0.5, 1.0]),
    ('["0.3", "0.7"]', 2, [0.3, 0.7]),
    ("[0.2 0.5,]", 2, [0.2, 0.5]),  # not JSON: numbers between the brackets
    ('{"scores": [0.4, 0.6]}', 2, [0.4, 0.6]),
    ('{"A1": 0.1, "A2": 0.2, "A3": 0.3}', 3, [0.1, 0.2, 0.3]),
    ("[1, 2] then the real one [0.5, 0.6, 0.7]", 3, [0.5, 0.6, 0.7]),
    ("[0.1, 0.9", 2, None),  # unclosed
    ("scores: 0.1, 0.9", 2, None),  # no list
    ("[0.1, 0.9]", 3, None),  # wrong count
    ("[NaN, 0.2]", 2, None),  # not finite
    ("[true, false]", 2, None),
    ("", 1, None),
])
def test_parse_turn_scores(reply, n, expected):
    assert parse_turn_scores(reply, n) == (None if expected is None else pytest.approx(expected))


def test_llm_decomposer_falls_back_to_uniform_and_counts_failures():
    dialogues = [[_user("I love chess."), _agent("Great!"), _user("Yes."), _agent("Whatever.")],
                 [_user("I love yoga."), _agent("Nice.")]]
    seen = []

    def fake_llm(prompts):
        seen.extend(prompts)
        return ["Scores: [1.7, 0.2]", "I cannot rate this conversation."]

    decomposer = LLMDecomposer(generate_fn=fake_llm, consistency="mean")
    rewards = decomposer.decompose(dialogues, [0.5, 0.8])
    assert rewards[0] == pytest.approx([0.9, 0.1])  # 1.7 clipped to 1.0, then shifted by -0.1 to average 0.5
    assert rewards[1] == pytest.approx([0.8])  # unparseable -> uniform split
    assert decomposer.stats() == {"sessions": 2.0, "parse_failures": 1.0, "parse_failure_rate": 0.5}
    text = seen[0][0]["content"]
    assert "0.50" in text and "A1: Great!" in text and "A2: Whatever." in text and "JSON list of 2 numbers" in text
    assert "sum of your scores" in build_decomposition_prompt(dialogues[0], 1.0, consistency="sum")[0]["content"]
    with pytest.raises(ValueError, match="exactly one of"):
        LLMDecomposer()
    with pytest.raises(ValueError, match="model_name_or_path"):
        build_decomposer({"kind": "llm"})


def test_llm_decomposer_generates_with_a_local_model(tiny_model_path):
    sessions = make_dialogue_sessions(3, seed=0, max_agent_turns=3)
    decomposer = LLMDecomposer(str(tiny_model_path), max_new_tokens=6, batch_size=2)
    rewards = decomposer.decompose([s["messages"] for s in sessions], [s["session_score"] for s in sessions])
    assert len(decomposer.last_replies) == 3 and all(r.startswith("[") for r in decomposer.last_replies)
    for s, r in zip(sessions, rewards):  # a random model never writes the JSON: every session falls back
        assert len(r) == len(s["quality"]) and sum(r) / len(r) == pytest.approx(s["session_score"])
    assert decomposer.parse_failures == 3


# ------------------------------------------------------------------------------------------- reward model
def test_distillation_loss_and_global_consistency_term_by_hand():
    pred, target = torch.tensor([0.2, 0.4, 1.0]), torch.tensor([0.0, 0.4, 1.0])
    index, scores = torch.tensor([0, 0, 1]), torch.tensor([0.5, 1.0])
    assert session_aggregate(pred, index, 2, "sum").tolist() == pytest.approx([0.6, 1.0])
    loss, parts = distillation_loss(pred, target, index, scores)  # weight 0: MSE only
    assert float(loss) == pytest.approx(0.04 / 3) and parts["mse"] == pytest.approx(0.04 / 3)
    # sum: session 0 (0.5 - 0.6)^2 = 0.01, session 1 (1.0 - 1.0)^2 = 0 -> mean 0.005
    loss, parts = distillation_loss(pred, target, index, scores, consistency_weight=2.0, aggregate="sum")
    assert parts["consistency"] == pytest.approx(0.005) and float(loss) == pytest.approx(0.04 / 3 + 2 * 0.005)
    # mean: session 0 (0.5 - 0.3)^2 = 0.04 -> mean 0.02
    loss, parts = distillation_loss(pred, target, index, scores, consistency_weight=1.0, aggregate="mean")
    assert parts["consistency"] == pytest.approx(0.02) and float(loss) == pytest.approx(0.04 / 3 + 0.02)
    # the gradient of the term pushes each turn of a session by -2 * lambda * (R - sum) / S
    p = pred.clone().requires_grad_(True)
    distillation_loss(p, p.detach(), index, scores, consistency_weight=1.0, aggregate="sum")[0].backward()
    assert p.grad.tolist() == pytest.approx([0.1, 0.1, 0.0])  # -2 * (0.5 - 0.6) / 2 sessions


def _fit(noise: float, *, sessions: int = 200, settings: RewardModelSettings = HASHED, seed: int = 0):
    data = make_dialogue_sessions(sessions, seed=seed)
    rewards = OracleDecomposer(noise=noise).decompose([s["messages"] for s in data], [s["session_score"] for s in data])
    model = TurnRewardModel.from_settings(settings)
    fit = train_reward_model(model, turn_examples(data, rewards), settings)
    held_out = turn_examples(make_dialogue_sessions(100, seed=seed + 1))
    return model, fit, quality_correlation(model, held_out)


def test_oracle_decomposition_distils_a_reward_model_that_recovers_hidden_quality():
    _, fit, corr = _fit(0.0)
    assert corr > 0.8, corr
    assert fit["fit_loss"] < 0.02 and fit["val_target_corr"] > 0.8
    _, _, noisy = _fit(0.3)  # a noisy decomposer (per-turn noise std 0.3 vs q std ~0.25) still carries the signal
    assert noisy > 0.6, noisy


def test_consistency_term_makes_session_aggregates_match_the_score():
    data = make_dialogue_sessions(120, seed=2, session_noise=0.0)
    flat = [[0.0] * len(s["quality"]) for s in data]  # an uninformative decomposition: all turns 0
    ex = turn_examples(data, flat)
    model = TurnRewardModel.from_settings(HASHED)
    without = train_reward_model(model, ex, HASHED, aggregate="mean")
    with_term = train_reward_model(model, ex, RewardModelSettings(encoder="hashed", hashed_dim=512,
                                                                   consistency_weight=10.0), aggregate="mean")
    assert with_term["fit_consistency"] < 0.5 * without["fit_consistency"]


def test_reward_model_save_load_and_geli_rm_reward(tmp_path):
    model, _, _ = _fit(0.0, sessions=60)
    model.save(tmp_path / "rm", {"rm_fit_loss": 0.1})
    prompts = [[_user("I've been really into chess lately.")]] * 2
    good, bad = "That's great! Chess sounds like fun. What got you started?", "Whatever. " + "blah " * 40
    expected = model.score(prompts, [good, bad])
    scores = geli_rm_reward(prompts, [good, [{"role": "assistant", "content": bad}]], rm_path=str(tmp_path / "rm"),
                            completion_lengths=[5, 5])
    assert scores == pytest.approx(expected) and scores[0] > scores[1] + 0.3
    assert geli_rm_reward(["I've been really into chess lately."], [good], rm_path=str(tmp_path / "rm")) == \
        pytest.approx(expected[:1])  # a text prompt is one user turn
    with pytest.raises(FileNotFoundError, match="no GELI reward model"):
        geli_rm_reward(prompts, [good, bad], rm_path=str(tmp_path / "missing"))


# ------------------------------------------------------------------------------------------------ the recipe
def test_recipe_config_errors(tiny_model_path):
    from recipes.base import RecipeConfigError
    from recipes.geli import GELI

    rm = {"encoder": "hashed"}
    with pytest.raises(RecipeConfigError, match="lack 'geli_rm'"):
        GELI(model_name_or_path=str(tiny_model_path), rewards=["format"], reward_model=rm)
    with pytest.raises(RecipeConfigError, match="reward_model_path"):
        GELI(model_name_or_path=str(tiny_model_path), rewards=[{"name": "geli_rm", "kwargs": {"rm_path": "x"}}],
             reward_model=rm)
    with pytest.raises(RecipeConfigError, match="decomposer.kind='judge'"):
        GELI(model_name_or_path=str(tiny_model_path), rewards=["geli_rm"], reward_model=rm,
             decomposer={"kind": "judge"})
    with pytest.raises(RecipeConfigError, match="encoder='bert'"):
        GELI(model_name_or_path=str(tiny_model_path), rewards=["geli_rm"], reward_model={"encoder": "bert"})


def test_stage0_reads_your_own_sessions(tiny_model_path, tmp_path):
    import json

    from recipes.base import RecipeConfigError
    from recipes.geli import GELI

    path = tmp_path / "sessions.jsonl"
    sessions = [{"messages": s["messages"], "session_score": s["session_score"]}
                for s in make_dialogue_sessions(30, seed=4)]
    path.write_text("\n".join(json.dumps(s) for s in sessions))
    recipe = GELI(model_name_or_path=str(tiny_model_path), rewards=["geli_rm"], sessions_path=str(path),
                  reward_model={"encoder": "hashed", "hashed_dim": 256})
    metrics = recipe.prepare_reward_model(tmp_path / "rm")
    assert "decomposition_corr" not in metrics and metrics["parse_failures"] == 0
    assert TurnRewardModel.load(tmp_path / "rm").score([sessions[0]["messages"][:1]], ["Nice!"])
    path.write_text(json.dumps({"messages": [], "score": 1}))
    with pytest.raises(RecipeConfigError, match="row 0 needs `messages`"):
        recipe.prepare_reward_model(tmp_path / "rm2")


def test_geli_config_trains_two_steps_on_the_tiny_model(fit_metrics, tmp_path):
    metrics, train = fit_metrics(CONFIG_DIR / "geli.yaml", "--model.reward_model.encoder", "hashed",
                                 "--model.num_sessions", "40", "--model.eval_sessions", "20",
                                 "--model.batching.skip_zero_signal_steps", "false")
    assert (tmp_path / "geli_reward_model" / "config.json").is_file()  # stage 0 ran and saved r_theta
    for key in ("rm_corr", "rm_fit_loss", "rm_val_loss", "parse_failures", "decomposition_corr", "hidden_quality"):
        assert f"train/geli/{key}" in train, key
    assert (train["train/geli/parse_failures"] == 0).all()
    assert (train["train/geli/rm_corr"] > 0.5).all()
    assert "eval/geli/hidden_quality" in metrics
