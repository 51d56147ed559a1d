"""DISCO (arXiv 2505.15074): weights and advantages against hand computations, the per-domain rewards, the
imbalanced multi-domain task, the recipe's score hook, and 2 steps through `r1 fit --config`."""

from __future__ import annotations

import doctest
import math
from collections import Counter

import pytest
import torch
from conftest import FAST

import datamodules.tasks.multi_domain
import modules.papers.disco.rewards
from datamodules.errors import DataConfigError
from datamodules.tasks import make_task
from datamodules.tasks.multi_domain import TEMPLATES, domain_counts, make_multi_domain
from modules.objectives.advantages import group_advantages
from modules.rewards import get_reward
from modules.papers.disco.rewards import (
    difficulty_weights,
    disco_rewards,
    domain_correct_reward,
    domain_weights,
    self_consistency,
)
from modules.rollout.batch import RolloutBatch
from recipes.base import RecipeConfigError
from recipes.cli import main
from recipes.cli.registry import CONFIG_DIR

MIX = {"math": 0.75, "choice": 0.0833, "qa": 0.0833, "sentiment": 0.0833}


@pytest.mark.parametrize("module", [modules.papers.disco.rewards, datamodules.tasks.multi_domain])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# ---- weights --------------------------------------------------------------------------------------

def test_domain_weight_reproduces_the_released_constants():
    w = domain_weights(MIX)  # ln(1 + 1/p)
    assert round(w["math"], 3) == 0.847 and round(w["qa"], 3) == 2.565
    assert w["math"] == pytest.approx(math.log(1 + 1 / 0.75), abs=1e-4)  # MIX sums to 0.9999
    # the same from per-row labels (900 / 100 / 100 / 100) and from counts
    labels = ["math"] * 900 + ["choice"] * 100 + ["qa"] * 100 + ["sentiment"] * 100
    assert domain_weights(labels) == pytest.approx({"math": math.log(7 / 3), "choice": math.log(13),
                                                    "qa": math.log(13), "sentiment": math.log(13)})
    # the released code's commented alternatives: ln(1+1/p)^2 (0.72 / 6.58) and 1/p (1.33 / 12)
    sq, inv = domain_weights(MIX, form="log_squared"), domain_weights(MIX, form="inverse")
    assert (round(sq["math"], 2), round(sq["choice"], 2)) == (0.72, 6.58)
    assert (round(inv["math"], 2), round(inv["choice"], 1)) == (1.33, 12.0)
    with pytest.raises(ValueError, match="form"):
        domain_weights(MIX, form="sqrt")
    with pytest.raises(ValueError, match="positive"):
        domain_weights({"math": 1, "qa": 0})


def test_difficulty_weight_is_inverse_group_accuracy():
    base = [1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    groups = [5, 5, 5, 5, 9, 9, 9, 9, 2, 2, 2, 2]
    assert self_consistency(base, groups).tolist() == [0.25] * 4 + [0.75] * 4 + [0.0] * 4
    w = difficulty_weights(base, groups).tolist()
    assert w[:4] == pytest.approx([1 / (0.25 + 1e-5)] * 4) and w[4:8] == pytest.approx([1 / (0.75 + 1e-5)] * 4)
    assert w[8] == pytest.approx(1e5)  # sc = 0: huge, but it only multiplies zero rewards
    log_sq = difficulty_weights(base, groups, form="log_squared").tolist()
    assert log_sq[0] == pytest.approx(math.log(1 + 1 / (0.25 + 1e-5)) ** 2)


def test_agreement_self_consistency_counts_the_majority_answer():
    sc = self_consistency([0, 0, 1, 0], [0, 0, 0, 0], mode="agreement", predictions=["7", "7", "8", "7"])
    assert sc.tolist() == [0.75] * 4  # 3 of 4 agree on "7" although "8" is the correct one
    with pytest.raises(ValueError, match="prediction"):
        self_consistency([0, 1], [0, 0], mode="agreement")


def test_centred_advantages_are_w_dom_times_one_minus_sc_over_sc_and_minus_w_dom():
    w_dom = domain_weights(MIX)
    # math group: 1 of 4 correct (sc 1/4); qa group: 3 of 4 (sc 3/4); choice: all right; sentiment: all wrong
    base = [1, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    domains = ["math"] * 4 + ["qa"] * 4 + ["choice"] * 4 + ["sentiment"] * 4
    groups = [g for g in range(4) for _ in range(4)]
    rewards = disco_rewards(base, domains, groups, w_dom)
    assert rewards[0].item() == pytest.approx(w_dom["math"] * 4, rel=1e-4)  # 0.847 * 1/0.25
    adv = group_advantages(rewards, 4, scale="none").tolist()
    m, q = w_dom["math"], w_dom["qa"]
    assert adv[:4] == pytest.approx([m * 3, -m, -m, -m], rel=1e-4)  # w(1-sc)/sc = 0.847 * 3 = 2.541
    assert adv[4:8] == pytest.approx([q / 3, q / 3, -q, q / 3], rel=1e-4)  # 2.565 * (1/4)/(3/4) = 0.855
    assert adv[:2] == pytest.approx([2.541, -0.847], abs=1e-3)
    assert adv[8:] == [0.0] * 8  # solved and failed groups give no signal
    # dividing by the group std would cancel both weights: the plain 0/1 GRPO advantages come back
    plain = group_advantages(torch.tensor(base, dtype=torch.float64), 4, scale="group")
    assert group_advantages(rewards, 4, scale="group").tolist() == pytest.approx(plain.tolist(), rel=1e-3)


def test_disco_rewards_name_a_domain_without_a_weight():
    with pytest.raises(ValueError, match="'poetry'"):
        disco_rewards([1, 0], ["math", "poetry"], [0, 0], {"math": 1.0})


# ---- per-domain base rewards ---------------------------------------------------------------------

@pytest.mark.parametrize("domain, completion, answer, aliases, expected", [
    ("math", "12 + 30 = 42, so the answer is 42.", "42", [], 1.0),
    ("math", "The answer is 41", "42", [], 0.0),
    ("math", r"so \boxed{42} (not 41)", "42", [], 1.0),
    ("choice", "A is too small; the largest is D.", "D", [], 1.0),
    ("choice", "D looks right but the answer is A", "D", [], 0.0),  # the last standalone letter counts
    ("choice", "the answer is d", "D", [], 0.0),  # lower-case d is not a standalone option letter
    ("choice", "Definitely B.", "B", [], 1.0),  # the D of "Definitely" is not standalone
    ("qa", "It is Peking, of course.", "Beijing", ["Beijing", "Peking"], 1.0),
    ("qa", "Washington, D.C.", "Washington, D.C.", ["Washington, D.C.", "Washington"], 1.0),
    ("qa", "A Parisian city.", "Paris", ["Paris"], 0.0),  # word-bounded: "parisian" is not "paris"
    ("qa", "Berlin", "Paris", ["Paris"], 0.0),
    ("sentiment", "Some parts are negative, but overall Positive.", "Positive", [], 1.0),
    ("sentiment", "positive? no, NEGATIVE", "Negative", [], 1.0),
    ("sentiment", "Positive then negative", "Positive", [], 0.0),
    ("sentiment", "I cannot tell", "Negative", [], 0.0),
    ("arc", "C", "C", [], 1.0),  # the paper's dataset names are accepted
])
def test_domain_correct_rules(domain, completion, answer, aliases, expected):
    out = domain_correct_reward(None, [completion], answer=[answer], domain=[domain], aliases=[aliases],
                                math_mode="number")
    assert out == [expected]


def test_domain_correct_is_registered_and_reports_missing_columns():
    assert get_reward("domain_correct") is domain_correct_reward
    assert domain_correct_reward(None, ["x"], answer=[None], domain=["qa"]) == [None]
    with pytest.raises(ValueError, match="'domain'"):
        domain_correct_reward(None, ["x"], answer=["1"])
    with pytest.raises(ValueError, match="unknown domain 'poetry'"):
        domain_correct_reward(None, ["x"], answer=["1"], domain=["poetry"])


# ---- the synthetic multi-domain task -------------------------------------------------------------

@pytest.mark.parametrize("n, expected", [(48, [36, 4, 4, 4]), (1200, [900, 100, 100, 100]), (13, [10, 1, 1, 1]),
                                         (5, [4, 1, 0, 0])])
def test_domain_counts_are_exact(n, expected):
    counts = domain_counts(n, MIX)
    assert list(counts.values()) == expected and sum(counts.values()) == n


def test_multi_domain_rows_follow_the_mix_templates_and_answers():
    rows = make_task("multi_domain", 240, seed=3)
    assert rows == make_multi_domain(240, seed=3) and rows != make_multi_domain(240, seed=4)
    assert Counter(r["domain"] for r in rows) == {"math": 180, "choice": 20, "qa": 20, "sentiment": 20}
    assert len({r["domain"] for r in rows[:40]}) > 1  # shuffled, not in domain blocks
    marks = {"math": "Below is a math problem. Provide a detailed, step-by-step solution.\n\n### Problem:\n",
             "choice": "question with multiple-choice answers. Choose the correct option",
             "qa": "question that requires a concise and accurate answer",
             "sentiment": "movie review. Determine the sentiment"}
    for row in rows:
        assert set(row) == {"question", "answer", "domain", "aliases"}
        assert marks[row["domain"]] in row["question"] and row["question"].endswith("### Answer:\n")
        body = row["question"].split("\n\n")[1]
        if row["domain"] == "math":
            a, b = (int(x) for x in body.split("What is ")[1].rstrip("?").split(" + "))
            assert row["answer"] == str(a + b)
        elif row["domain"] == "choice":
            options = {ln[0]: int(ln[3:]) for ln in row["question"].split("\n") if ln[1:3] == ". "}
            pick = max if "largest" in row["question"] else min
            assert row["answer"] == pick(options, key=options.get)
        elif row["domain"] == "qa":
            assert row["aliases"][0] == row["answer"]
        else:
            words = [s.rstrip(".").rsplit(" ", 1)[1] for s in body.split(". ")]
            positive = sum(w in datamodules.tasks.multi_domain._POSITIVE for w in words)
            assert len(words) == 3 and row["answer"] == ("Positive" if positive >= 2 else "Negative")
    bare = make_multi_domain(4, seed=0, paper_templates=False, mix={"qa": 1.0})
    assert all(not r["question"].startswith("Below") for r in bare)
    assert set(TEMPLATES) == set(MIX)


@pytest.mark.parametrize("kwargs, match", [({"mix": {"math": 0.5, "poetry": 0.5}}, "poetry"),
                                           ({"mix": {"math": -1.0}}, "non-negative"),
                                           ({"choice_options": 9}, "choice_options")])
def test_multi_domain_rejects_bad_options(kwargs, match):
    with pytest.raises(DataConfigError, match=match):
        make_multi_domain(8, **kwargs)


# ---- the recipe ----------------------------------------------------------------------------------

def _rollout(completions, domains, answers, g):
    n = len(completions)
    return RolloutBatch(
        prompt_ids=torch.ones(n, 2, dtype=torch.long), prompt_mask=torch.ones(n, 2, dtype=torch.long),
        completion_ids=torch.ones(n, 3, dtype=torch.long), completion_mask=torch.ones(n, 3, dtype=torch.long),
        completion_attention_mask=torch.ones(n, 3, dtype=torch.long), prompts=["q"] * n, completions=completions,
        group_ids=torch.arange(n) // g, columns={"answer": answers, "domain": domains, "aliases": [[]] * n})


@pytest.fixture(scope="module")
def disco(tiny_model_path):
    from recipes.disco import DISCO

    return DISCO(model_name_or_path=str(tiny_model_path), batching={"micro_batch_size": 4},
                 rewards=[{"name": "domain_correct", "kwargs": {"math_mode": "number"}},
                          {"name": "length", "weight": 0.5, "kwargs": {"target": 1}}])


def test_recipe_defaults_and_score_weights_only_the_base_reward(disco):
    o = disco.objective
    assert (disco.num_generations, o.beta, o.kl_estimator, o.scale_rewards) == (4, 1e-3, "k3", "none")
    w = disco.set_domain_weights(["math"] * 9 + ["choice"] * 3)  # p = 0.75 / 0.25
    rollout = _rollout(["7", "8", "8", "8", "B", "B", "A", "B"], ["math"] * 4 + ["choice"] * 4,
                       ["7"] * 4 + ["B"] * 4, g=4)
    rollout = disco.score(rollout, purpose="train")
    col = rollout.reward_names.index("domain_correct")
    assert rollout.rewards_per_func[:, col].tolist() == [1, 0, 0, 0, 1, 1, 0, 1]  # unweighted, for accuracy
    weighted = [w["math"] / (0.25 + 1e-5), 0, 0, 0] + [w["choice"] / (0.75 + 1e-5)] * 2 + [0, w["choice"] / 0.75]
    # the length penalty (3 tokens, target 1: -2, weight 0.5) is added unweighted
    assert rollout.rewards.tolist() == pytest.approx([r - 1.0 for r in weighted], rel=1e-4)
    assert w == pytest.approx({"math": math.log(1 + 4 / 3), "choice": math.log(5)})
    adv = disco.compute_advantages(rollout)[0].tolist()
    assert adv[:4] == pytest.approx([3 * w["math"], -w["math"], -w["math"], -w["math"]], rel=1e-4)
    # [unverified] option: sc = agreement with the majority answer ("8", 3 of 4) instead of accuracy (1 of 4)
    disco.hparams.self_consistency = "agreement"
    try:
        again = disco.score(_rollout(["7", "8", "8", "8"], ["math"] * 4, ["7"] * 4, g=4), purpose="train")
    finally:
        disco.hparams.self_consistency = "accuracy"
    assert again.rewards[0].item() == pytest.approx(w["math"] / (0.75 + 1e-5) - 1.0, rel=1e-4)


def test_recipe_refuses_group_scaling_and_a_missing_base_reward(tiny_model_path):
    from recipes.disco import DISCO

    with pytest.raises(RecipeConfigError, match="scale_rewards='group' cancels"):
        DISCO(model_name_or_path=str(tiny_model_path), rewards=["domain_correct"], objective={"scale_rewards": "group"})
    with pytest.raises(RecipeConfigError, match="accuracy_reward"):
        DISCO(model_name_or_path=str(tiny_model_path), rewards=["length"])
    with pytest.raises(RecipeConfigError, match="domain_weighting"):
        DISCO(model_name_or_path=str(tiny_model_path), rewards=["domain_correct"], domain_weighting="sqrt")


def test_data_without_a_domain_column_is_one_line(tiny_model_path, tmp_path, capsys):
    code = main(["fit", "--config", str(CONFIG_DIR / "disco.yaml"), *FAST, "--model.model_name_or_path",
                 str(tiny_model_path), "--data.task", "arithmetic", "--data.task_kwargs", "{}",
                 "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks", "[]"])
    assert code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("r1: error:")]
    assert len(err) == 1 and "'domain' column" in err[0] and "multi_domain" in err[0]


def test_disco_config_trains_two_steps_on_the_tiny_model(fit_metrics):
    metrics, train = fit_metrics(CONFIG_DIR / "disco.yaml", "--model.batching.skip_zero_signal_steps", "false", finite=None)
    for key in ("train/reward", "train/accuracy", "train/kl", "train/disco/self_consistency",
                "train/disco/difficulty_weight", "train/rewards/domain_correct/mean"):
        assert key in train and all(math.isfinite(v) for v in train[key]), key
    for step in range(2):  # every domain every step; accuracy / reward NaN exactly where the step has none of it
        row = train.iloc[step]
        counts = {d: row[f"train/domain/{d}/count"] for d in MIX}
        assert sum(counts.values()) == 2.0  # batch_size prompts, split over the domains
        for d, n in counts.items():
            for what in ("accuracy", "reward"):
                value = row[f"train/domain/{d}/{what}"]
                assert math.isfinite(value) if n > 0 else math.isnan(value), (step, d, what)
    evals = metrics.dropna(subset=["eval/accuracy"])
    assert len(evals) == 2 and any(c.startswith("eval/domain/") and c.endswith("/accuracy") for c in evals)
