r"""TinyV (arXiv 2505.14625): the LLM verifier sees only the rule's negatives (counted), each mode's arithmetic, the
counters and step metrics, the general_qa task, the recipe's config checks, and 2 steps through `r1 fit --config`."""

from __future__ import annotations

import doctest
import math
from collections import Counter

import pytest

import datamodules.tasks.general_qa
import modules.papers.tinyv.rewards
from datamodules.errors import DataConfigError
from datamodules.tasks import make_task
from datamodules.tasks.general_qa import ANSWER_TYPES, TEMPLATES, make_general_qa
from modules.rewards import get_reward
from modules.papers.tinyv.rewards import tinyv_combine, tinyv_reward, tinyv_step_metrics
from modules.verifiers import CallableVerifier, MathRuleVerifier, parse_true_false
from recipes.base import RecipeConfigError
from recipes.cli.registry import CONFIG_DIR



@pytest.mark.parametrize("module", [modules.papers.tinyv.rewards, datamodules.tasks.general_qa])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


class CountingLLM(CallableVerifier):
    """A mock LLM verifier: says "True" for answers in `accept`, records every batch it is asked about."""

    def __init__(self, accept=()):
        super().__init__(lambda q, g, a: "True" if a in accept else "False", parse=parse_true_false)
        self.batches: list[list[str]] = []

    def _verify(self, questions, golds, answers):
        self.batches.append(list(answers))
        return super()._verify(questions, golds, answers)


GOLDS = ["12 cm^2", "12 cm^2", "12 cm^2", "1/2", "1/2", "7"]
COMPLETIONS = [r"so \boxed{12 cm^2}", r"\boxed{12}", r"\boxed{13}", r"\boxed{0.5}", r"\boxed{0.6}",
               "seven, no box"]


def test_llm_is_called_only_on_rule_negatives_in_one_batch():
    llm = CountingLLM(accept={"12"})
    rewards = tinyv_reward(["q"] * 6, COMPLETIONS, GOLDS, verifier=llm)
    # rule: [T, F, F, T, F, no answer]; the LLM accepts "12" (a rule false negative)
    assert rewards == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert llm.batches == [["12", "13", "0.6"]]  # exactly the rule negatives that have an answer, one call
    assert (llm.stats.calls, llm.stats.items) == (1, 3)
    # nothing for the LLM when the rule accepts everything
    quiet = CountingLLM()
    assert tinyv_reward(["q"] * 2, [r"\boxed{12}", r"\boxed{0.5}"], ["12", "1/2"], verifier=quiet) == [1.0, 1.0]
    assert quiet.batches == [] and quiet.stats.calls == 0


def test_each_mode_arithmetic():
    llm = CountingLLM(accept={"12", "0.5"})
    kw = dict(verifier=llm)
    # rule ok:  [T, F, F, T, F, -];  llm v: [0, 1, 0, 1, 0, 0 (not asked)]
    assert tinyv_reward(["q"] * 6, COMPLETIONS, GOLDS, mode="addon", w=0.5, **kw) == [1.0, 0.5, 0.0, 1.0, 0.0, 0.0]
    assert tinyv_reward(["q"] * 6, COMPLETIONS, GOLDS, mode="tinyv_only", **kw) == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    mixed = tinyv_reward(["q"] * 6, COMPLETIONS, GOLDS, mode="mixed", w=0.3, **kw)
    assert mixed == pytest.approx([0.7, 0.3, 0.0, 1.0, 0.0, 0.0])  # w*v + (1-w)*ok
    assert llm.batches[1] == llm.batches[2] == ["12 cm^2", "12", "13", "0.5", "0.6"]  # every answer
    assert [tinyv_combine("addon", False, 1.0, w) for w in (0.0, 0.25, 1.0)] == [0.0, 0.25, 1.0]
    assert tinyv_combine("mixed", True, 1.0, 0.3) == pytest.approx(1.0)


def test_missing_answers_none_golds_and_verify_missing():
    llm = CountingLLM(accept={"the answer is seven"})
    out = tinyv_reward(["q"] * 3, ["the answer is seven", r"\boxed{3}", r"\boxed{3}"], ["7", None, "4"],
                       verifier=llm)
    assert out == [0.0, None, 0.0] and llm.batches == [["3"]]
    out = tinyv_reward(["q"] * 3, ["the answer is seven", r"\boxed{3}", r"\boxed{3}"], ["7", None, "4"],
                       verifier=llm, verify_missing=True)
    assert out == [1.0, None, 0.0] and llm.batches[-1] == ["the answer is seven", "3"]


def test_questions_come_from_the_column_else_the_prompt():
    seen = []
    llm = CallableVerifier(lambda q, g, a: seen.append(q) or False)
    tinyv_reward(["prompt A", "prompt B"], [r"\boxed{1}"] * 2, ["2", "2"], question=["Q A", None], verifier=llm)
    assert seen == ["Q A", "prompt B"]


def test_counters_and_step_metrics():
    stats: dict = {}
    llm = CountingLLM(accept={"12"})
    tinyv_reward(["q"] * 6, COMPLETIONS, GOLDS, verifier=llm, verifier_stats=stats)
    tinyv_reward(["q"] * 6, COMPLETIONS, GOLDS, verifier=llm, verifier_stats=stats)  # counts add up
    assert {k: stats[k] for k in ("rows", "rule_positives", "rule_negatives", "no_answer", "llm_items",
                                  "llm_negatives_checked", "overturns", "verify_calls")} == {
        "rows": 12, "rule_positives": 4, "rule_negatives": 8, "no_answer": 2, "llm_items": 6,
        "llm_negatives_checked": 6, "overturns": 2, "verify_calls": 2}
    m = tinyv_step_metrics(stats, step_seconds=10.0)
    assert m["verifier/llm_overturn_rate"] == pytest.approx(2 / 6)
    assert m["verifier/rule_negative_rate"] == pytest.approx(8 / 12)
    assert m["verifier/time_share"] == pytest.approx(stats["verifier_seconds"] / 10.0)
    assert all(math.isfinite(v) for v in tinyv_step_metrics({}, step_seconds=1.0).values())


def test_reward_errors_name_the_fix():
    with pytest.raises(ValueError, match="needs `verifier`"):
        tinyv_reward(["q"], [r"\boxed{1}"], ["1"])
    with pytest.raises(ValueError, match="mode='both'"):
        tinyv_reward(["q"], [r"\boxed{1}"], ["1"], verifier=CountingLLM(), mode="both")
    with pytest.raises(ValueError, match="'answer'"):
        tinyv_reward(["q"], [r"\boxed{1}"], verifier=CountingLLM())
    assert get_reward("tinyv") is tinyv_reward


# ---- the general_qa task -------------------------------------------------------------------------

def test_general_qa_rows_types_and_rule_false_negatives():
    assert 45 <= len(TEMPLATES) <= 60 and len({t[0] for t in TEMPLATES}) == len(TEMPLATES)
    rows = make_task("general_qa", len(TEMPLATES), seed=1)
    assert rows == make_general_qa(len(TEMPLATES), seed=1)  # registered under its name, seeded
    assert Counter(r["template"] for r in rows) == Counter(t[0] for t in TEMPLATES)  # round-robin: each once
    assert {r["answer_type"] for r in rows} == set(ANSWER_TYPES)
    for r in rows:
        assert r["question"] and r["answer"] and r["answer"] not in r["forms"]
    pairs = [(r["answer"], f) for r in rows for f in r["forms"]]
    rule = MathRuleVerifier().verify(["q"] * len(pairs), [g for g, _ in pairs], [f for _, f in pairs])
    false_negatives = [p for p, res in zip(pairs, rule) if not res.correct]
    assert len(false_negatives) >= 0.2 * len(pairs)  # every form is correct; the rule rejects many of them
    assert make_general_qa(12, answer_types=["list"])[0]["answer_type"] == "list"
    with pytest.raises(DataConfigError, match="answer_types"):
        make_general_qa(3, answer_types=["colour"])


# ---- the recipe ----------------------------------------------------------------------------------

def test_recipe_refuses_missing_reward_and_verifier_in_reward_kwargs(tiny_model_path):
    from recipes.tinyv import TinyV

    settings = {"model_name_or_path": str(tiny_model_path)}
    with pytest.raises(RecipeConfigError, match="lack 'tinyv'"):
        TinyV(str(tiny_model_path), rewards=["accuracy"], verifier=settings, num_generations=2)
    with pytest.raises(RecipeConfigError, match="model.verifier"):
        TinyV(str(tiny_model_path), rewards=[{"name": "tinyv", "kwargs": {"verifier": "x"}}], verifier=settings,
              num_generations=2)
    with pytest.raises(RecipeConfigError, match="model.verifier: verifier.kind"):
        TinyV(str(tiny_model_path), rewards=["tinyv"], verifier={"kind": "api"}, num_generations=2)
    recipe = TinyV(str(tiny_model_path), rewards=["tinyv"], verifier=settings, num_generations=2)
    assert (recipe.objective.beta, recipe.objective.kl_estimator) == (1e-3, "low_var_kl")
    assert recipe.verifier.max_new_tokens == 8 and recipe.verifier.parse is parse_true_false


@pytest.mark.slow
def test_tinyv_config_trains_two_steps_on_the_tiny_model(tiny_model_path, fit_metrics):
    # The random tiny model never writes \boxed{}: verify_missing sends whole completions to the LLM verifier
    # (the tiny model too), so the verifier path runs in both steps.
    rewards = "[{name: tinyv, kwargs: {mode: addon, w: 1.0, verify_missing: true}}]"
    _, train = fit_metrics(CONFIG_DIR / "tinyv.yaml", "--model.verifier.model_name_or_path", str(tiny_model_path),
                           "--model.rewards", rewards, "--model.batching.skip_zero_signal_steps", "false",
                           "--trainer.callbacks", "[]")
    for key in ("calls", "items", "rule_negatives", "llm_overturn_rate", "seconds", "time_share"):
        assert f"train/verifier/{key}" in train
    assert (train["train/verifier/items"] == 4).all() and (train["train/verifier/calls"] == 1).all()
    assert (train["train/verifier/time_share"] > 0).all() and (train["train/verifier/time_share"] < 1).all()
