r"""General-Reasoner (arXiv 2505.14652): answer extraction cases, the length penalty and its 10-token clamp, the
no-answer branch, mocked verifier outputs through the reward, the LLM verifier path on the tiny model, and 2 steps
through `r1 fit --config`."""

from __future__ import annotations

import doctest

import pytest

import modules.papers.general_reasoner.rewards
from modules.rewards import get_reward
from modules.papers.general_reasoner.rewards import (
    count_tokens,
    extract_general_answer,
    general_verifier_reward,
    general_verifier_step_metrics,
    length_penalized_score,
)
from modules.verifiers import CallableVerifier, LLMVerifier, RuleStubVerifier, parse_final_decision
from recipes.cli.registry import CONFIG_DIR



def test_docstring_examples():
    result = doctest.testmod(modules.papers.general_reasoner.rewards)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("text, expected", [
    (r"First \boxed{1}, finally \boxed{2}.", "2"),  # the last box
    (r"\boxed{\frac{1}{2}} cm", r"\frac{1}{2}"),  # nested braces
    (r"Answer: 4 but \boxed{5}", "5"),  # a box beats the phrases
    (r"\boxed{ } Answer: 6", "6"),  # an empty box is no answer: fall back to the phrases
    ("Final Answer: 12 cm^2\nDone.", "12 cm^2"),  # captured up to the newline
    ("the final answer is: x = 3", "x = 3"),  # case-insensitive "Final Answer is:"
    ("THE ANSWER IS: Paris", "Paris"),
    ("Answer: 1\nmore work\nAnswer: 2\nend", "2"),  # the last match of a phrase
    ("Final Answer: 7\nAnswer: 8", "7"),  # phrases in priority order: "Final Answer:" before "Answer:"
    ("Solution: 3/4", "3/4"),
    ("The solution is:   0.75  ", "0.75"),
    ("Answer:\n5", None),  # nothing after the phrase on its line
    ("I think it is 42.", None),
    (r"unbalanced \boxed{3", None),
])
def test_extraction_cases(text, expected):
    assert extract_general_answer(text) == expected


def test_length_penalty_clamps_at_ten_tokens():
    assert [length_penalized_score(n, 2) for n in (2, 3, 7, 12, 13, 100)] == pytest.approx(
        [1.0, 0.95, 0.75, 0.5, 0.5, 0.5])
    assert length_penalized_score(0, 10) == pytest.approx(0.5)  # |difference| in both directions
    # through the reward, with whitespace tokens (no tokenizer): gold "3" (1 token)
    rule = RuleStubVerifier("general_verifier")
    completions = [r"\boxed{3}", r"\boxed{3 cm}"] + [r"\boxed{3 " + "cm " * k + "}" for k in (9, 10, 30)]
    assert general_verifier_reward(["q"] * 5, completions, ["3"] * 5, verifier=rule) == pytest.approx(
        [1.0, 0.95, 0.55, 0.5, 0.5])


def test_ntok_uses_the_tokenizer_when_given(tiny_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    text = "12 square centimeters"
    n = len(tok.encode(text, add_special_tokens=False))
    assert count_tokens(text, tok) == n and count_tokens(text) == 3
    always_yes = CallableVerifier(lambda q, g, a: True)
    with_tok = general_verifier_reward(["q"], [r"\boxed{12 square centimeters}"], ["12"], verifier=always_yes,
                                       tokenizer=tok)
    assert with_tok == [pytest.approx(1.0 - 0.05 * min(10, abs(n - count_tokens("12", tok))))]


def test_no_answer_branch_skips_the_verifier():
    calls = []
    verifier = CallableVerifier(lambda q, g, a: calls.append(a) or True)
    out = general_verifier_reward(["q"] * 4, ["no idea", "Answer:", r"\boxed{7}", "still thinking"],
                                  ["7", "7", "7", None], verifier=verifier)
    assert out == [-0.5, -0.5, 1.0, None]
    assert calls == ["7"] and verifier.stats.calls == 1
    assert general_verifier_reward(["q"], ["nothing"], ["7"], verifier=verifier, no_answer_reward=-1.0) == [-1.0]


def test_mocked_verifier_outputs_are_parsed_for_the_final_decision():
    outputs = {"a": "The student wrote 1/2. Final Decision: Yes", "b": "Final Decision: No",
               "c": "final decision: yes", "d": "I cannot tell."}
    verifier = CallableVerifier(lambda q, g, a: outputs[a], parse=parse_final_decision)
    out = general_verifier_reward(["q"] * 4, [r"\boxed{a}", r"\boxed{b}", r"\boxed{c}", r"\boxed{d}"], ["x"] * 4,
                                  verifier=verifier)
    assert out == [1.0, 0.0, 0.0, 0.0]  # only the exact "Final Decision: Yes" counts
    # ranges of the spec: correct in [0.5, 1], wrong 0, unparseable -0.5
    rule = RuleStubVerifier("general_verifier")
    rewards = general_verifier_reward(["q"] * 3, [r"\boxed{1/2}", r"\boxed{2}", "??"], ["0.5"] * 3, verifier=rule)
    assert 0.5 <= rewards[0] <= 1.0 and rewards[1:] == [0.0, -0.5]


def test_counters_and_step_metrics_and_registry():
    stats: dict = {}
    general_verifier_reward(["q"] * 4, [r"\boxed{0.5}", r"\boxed{0.5 of it}", r"\boxed{2}", "??"], ["1/2"] * 4,
                            verifier=RuleStubVerifier(), verifier_stats=stats)
    assert {k: stats[k] for k in ("rows", "no_answer", "llm_items", "llm_positives", "verify_calls")} == {
        "rows": 4, "no_answer": 1, "llm_items": 3, "llm_positives": 2, "verify_calls": 1}
    m = general_verifier_step_metrics(stats, step_seconds=2.0)
    assert m["verifier/accuracy"] == 0.5 and m["verifier/no_answer_rate"] == 0.25
    assert m["verifier/mean_length_penalty"] == pytest.approx(0.1 / 2)  # 0 and 0.1 (3 words vs 1)
    assert get_reward("general_verifier") is general_verifier_reward
    with pytest.raises(ValueError, match="needs `verifier`"):
        general_verifier_reward(["q"], ["x"], ["1"])


def test_llm_verifier_path_on_the_tiny_model(tiny_model_path):
    # The same LLMVerifier as TinyV with the general-verifier prompt; a random model never writes
    # "Final Decision: Yes", so answered rows score 0 and unanswered -0.5.
    verifier = LLMVerifier(str(tiny_model_path), "general_verifier", max_new_tokens=4, batch_size=8)
    out = general_verifier_reward(["q"] * 3, [r"\boxed{1}", "Answer: 2", "?"], ["1", "2", "3"], verifier=verifier)
    assert out == [0.0, 0.0, -0.5]
    assert (verifier.stats.calls, verifier.stats.items, verifier.stats.generate_calls) == (1, 2, 1)


@pytest.mark.slow
def test_general_reasoner_config_trains_two_steps_on_the_tiny_model(fit_metrics):
    _, train = fit_metrics(CONFIG_DIR / "general_reasoner.yaml", "--model.batching.skip_zero_signal_steps", "false",
                           "--trainer.callbacks", "[]")
    for key in ("calls", "items", "accuracy", "no_answer_rate", "mean_length_penalty", "seconds", "time_share"):
        assert f"train/verifier/{key}" in train
    assert train["train/verifier/no_answer_rate"].between(0, 1).all()
    assert train["train/reward"].between(-0.5, 1.0).all()


def test_recipe_defaults_follow_the_released_script(tiny_model_path):
    from recipes.general_reasoner import GeneralReasoner

    recipe = GeneralReasoner(str(tiny_model_path), rewards=["general_verifier"], verifier={"kind": "rule"},
                             num_generations=2)
    o = recipe.objective
    assert (o.epsilon_low, o.delta, o.beta, o.kl_estimator, o.entropy_coef) == (0.3, 10.0, 1e-4, "low_var_kl", 1e-3)
    assert isinstance(recipe.verifier, RuleStubVerifier) and recipe.verifier.preset_name == "general_verifier"
    llm = GeneralReasoner(str(tiny_model_path), rewards=["general_verifier"],
                          verifier={"model_name_or_path": str(tiny_model_path)}, num_generations=2).verifier
    assert llm.preset == "general_verifier" and llm.chat_template == "never" and llm.max_new_tokens == 2048
