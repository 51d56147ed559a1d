"""Reward functions on hand-written completions, and RewardSet combination / validation."""

from __future__ import annotations

import builtins
import doctest
import math
import os
import threading
from fractions import Fraction

import pytest
import torch

import modules.rewards.accuracy
import modules.rewards.countdown
import modules.rewards.format
import modules.rewards.length
from modules.rewards import (
    RewardError,
    RewardSet,
    RewardSpec,
    accuracy_reward,
    countdown_reward,
    extract_answer,
    extract_last_number,
    format_reward,
    get_reward,
    length_penalty,
    list_rewards,
    overlong_reward,
    register_reward,
)


@pytest.mark.parametrize("module", [modules.rewards.accuracy, modules.rewards.countdown,
                                    modules.rewards.format, modules.rewards.length])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# ---- format --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("<think>2+2 is 4</think><answer>4</answer>", 1.0),
    ("\n  <think>\nsteps\n</think>\n<answer>\n4\n</answer>\n\n", 1.0),  # surrounding whitespace is fine
    ("<answer>4</answer>", 0.0),  # missing think
    ("<think>a</think><answer>4</answer><answer>5</answer>", 0.0),  # duplicated answer tag
    ("<answer>4</answer><think>a</think>", 0.0),  # wrong order
    ("<think>a</think><answer>4</answer> so it is 4", 0.0),  # text after the answer
    ("Sure! <think>a</think><answer>4</answer>", 0.0),  # text before think
    ("<think>a</think> then <answer>4</answer>", 0.0),  # text between the blocks
    ("<think>a<think>b</think><answer>4</answer>", 0.0),  # think opened twice
    ("<think>a</think><answer>4", 0.0),  # answer never closed
])
def test_format_tags(text, expected):
    assert format_reward(["p"], [text]) == [expected]


def test_format_options():
    # require_think=False: a lone answer block is fine, a malformed think block still is not.
    assert format_reward(None, ["<answer>4</answer>", "<think>a<answer>4</answer>"], require_think=False) == [1.0, 0.0]
    # prefix_opened: the prompt ends with "<think>", so the completion starts inside the block.
    opened = ["reasoning here</think>\n<answer>4</answer>", "<think>x</think><answer>4</answer>", "<answer>4</answer>"]
    assert format_reward(None, opened, prefix_opened=True) == [1.0, 0.0, 0.0]
    # Custom tag names.
    assert format_reward(None, ["<reasoning>a</reasoning><final>4</final>", "<think>a</think><answer>4</answer>"],
                         think_tag="reasoning", answer_tag="final") == [1.0, 0.0]


def test_format_pattern_mode():
    texts = ["  -17\n", "17.", "The answer is 17", "17 17"]
    assert format_reward(None, texts, pattern=r"-?\d+") == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="invalid regex"):
        format_reward(None, ["x"], pattern="(unclosed")


def test_format_accepts_conversational_completions():
    msgs = [[{"role": "assistant", "content": "<think>a</think><answer>1</answer>"}]]
    assert format_reward(None, msgs) == [1.0]


# ---- accuracy ------------------------------------------------------------------------------------

def test_extract_helpers():
    assert extract_last_number("the answer is 42.") == "42"
    assert extract_last_number("from -3.5 to 1,250,000 people") == "1250000"
    assert extract_last_number("no digits") is None
    text = "<think>\\boxed{1}</think><answer>first</answer> <answer>\\boxed{\\frac{a}{b}}</answer>"
    assert extract_answer(text, "auto") == "\\frac{a}{b}"  # last answer tag, box inside unwrapped
    assert extract_answer(text, "answer_tag") == "\\boxed{\\frac{a}{b}}"
    assert extract_answer("so \\boxed{x^{2}}, which gives \\boxed{7}", "boxed") == "7"  # working between: last box
    assert extract_answer("so \\boxed{x^{2}} and \\boxed{7}", "boxed") == "x^{2}, 7"  # a list of boxes is one answer
    assert extract_answer("just prose 5", "auto") == "just prose 5"
    assert extract_answer("just prose 5", "answer_tag") is None
    assert extract_answer("just prose 5", "boxed") is None
    assert extract_answer("3 then 5", "last_number") == "5"
    with pytest.raises(ValueError, match="extract='bogus'"):
        extract_answer("x", "bogus")


def test_accuracy_math_equivalences():
    completions = [
        "\\boxed{\\frac{1}{2}}",  # LaTeX fraction vs decimal gold
        "\\boxed{\\frac{1}{2}}",  # vs plain fraction gold
        "<think>..</think><answer>\\sqrt{3}/2</answer>",  # LaTeX both sides, different form
        "<answer>1+x^2</answer>",  # plain gold "x^2+1": commuted
        "<answer>0.75</answer>",  # plain vs \dfrac gold
        "\\boxed{\\frac{1}{3}}",  # wrong value
        "I have no idea.",  # malformed: nothing to compare
        "<answer></answer>",  # empty answer
    ]
    gold = ["0.5", "1/2", "\\frac{\\sqrt{3}}{2}", "x^2+1", "\\dfrac{3}{4}", "0.5", "5", "5"]
    assert accuracy_reward(["p"] * 8, completions, answer=gold) == [1.0] * 5 + [0.0] * 3


def test_accuracy_none_gold_and_missing_column():
    assert accuracy_reward(None, ["\\boxed{1}", "\\boxed{1}"], answer=[None, "1"]) == [None, 1.0]
    with pytest.raises(ValueError, match="column 'answer'.*'solution'"):
        accuracy_reward(None, ["\\boxed{1}"], solution=["1"])


def test_accuracy_math_works_off_the_main_thread():
    # math-verify's signal timeout only works in the main thread; the reward must drop it elsewhere.
    out = {}
    thread = threading.Thread(target=lambda: out.update(r=accuracy_reward(None, ["\\boxed{\\frac{2}{4}}"],
                                                                          answer=["0.5"])))
    thread.start()
    thread.join()
    assert out["r"] == [1.0]


def test_accuracy_exact_mode():
    completions = ["<answer>  PARIS. </answer>", "<answer>New   york</answer>", "<answer>Paris, France</answer>",
                   "Paris"]
    gold = ["paris", "new york", "paris", "Paris"]
    assert accuracy_reward(None, completions, answer=gold, mode="exact") == [1.0, 1.0, 0.0, 1.0]


def test_accuracy_number_mode():
    completions = ["the answer is 42.", "the answer is 42.5", "we get 1,000 apples", "<answer>4</answer> then 2",
                   "no number"]
    gold = ["42", 42, "1000", "4", "3"]
    assert accuracy_reward(None, completions, answer=gold, mode="number") == [1.0, 0.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="numeric answers.*'seven'"):
        accuracy_reward(None, ["7"], answer=["seven"], mode="number")


def test_accuracy_bad_options():
    with pytest.raises(ValueError, match="mode='fuzzy'"):
        accuracy_reward(None, ["1"], answer=["1"], mode="fuzzy")


# ---- length --------------------------------------------------------------------------------------

def test_overlong_three_regions():
    # L_max = 100, L_cache = 40: no penalty up to 60, linear to -1 at 100, -1 beyond.
    lengths = [10, 60, 61, 70, 90, 100, 101, 500]
    out = overlong_reward(None, ["x"] * 8, completion_lengths=lengths, max_completion_length=100, cache_length=40)
    expected = [0.0, 0.0, -1 / 40, -10 / 40, -30 / 40, -1.0, -1.0, -1.0]
    assert out == pytest.approx(expected, abs=1e-12)
    assert Fraction(out[3]).limit_denominator(100) == Fraction(-1, 4)


def test_overlong_errors():
    with pytest.raises(ValueError, match="completion_lengths"):
        overlong_reward(None, ["x"], max_completion_length=10, cache_length=2)
    with pytest.raises(ValueError, match="max_completion_length"):
        overlong_reward(None, ["x"], completion_lengths=[3])
    with pytest.raises(ValueError, match="cache_length=20"):
        overlong_reward(None, ["x"], completion_lengths=[3], max_completion_length=10, cache_length=20)


def test_length_penalty():
    out = length_penalty(None, ["a"] * 4, completion_lengths=[0, 100, 130, 250], target=100, coef=2.0)
    assert out == pytest.approx([0.0, 0.0, -0.6, -3.0])
    assert length_penalty(None, ["a"], completion_lengths=[3], target=0) == [-3.0]  # target 0: per token
    with pytest.raises(ValueError, match="target"):
        length_penalty(None, ["a"], completion_lengths=[3])


# ---- countdown -----------------------------------------------------------------------------------

def test_countdown_cases():
    numbers = [[25, 3, 7, 2]] * 7
    completions = [
        "<think>try</think><answer>(25 - 7) * 2 - 3</answer>",  # 33, all numbers once
        "<answer>25 + 3 + 3 + 2</answer>",  # reuses 3
        "<answer>25 + 7 + 1</answer>",  # 1 is not given
        "<answer>(25 - 7) * 2 - 3 + 0</answer>",  # 0 not given
        "<answer>25 + 3 + 7 + 2</answer>",  # valid numbers, wrong value (37)
        "<answer>(25 - 7) * 2 - 3 = 33</answer>",  # not an expression
        "thinking...\n25 * 2 - 7 - 3 - 7",  # last-line fallback, reuses 7
    ]
    assert countdown_reward(None, completions, numbers=numbers, target=[33] * 7) == [1.0] + [0.0] * 6


def test_countdown_division_subset_and_errors():
    # Exact division: 7 / 2 * 2 = 7 (not integer-truncated), plus a subset with use_all=False.
    assert countdown_reward(None, ["<answer>7 / 2 * 2</answer>", "<answer>3 * 4</answer>", "<answer>3*3</answer>"],
                            numbers=[[7, 2, 2], [3, 4, 5], [3, 4, 5]], target=[7, 12, 9],
                            use_all=False) == [1.0, 1.0, 0.0]
    assert countdown_reward(None, ["<answer>3 * 4</answer>"], numbers=[[3, 4, 5]], target=[12]) == [0.0]  # use_all
    assert countdown_reward(None, ["<answer>5 / (3 - 3)</answer>"], numbers=[[5, 3, 3]], target=[1]) == [0.0]
    assert countdown_reward(None, ["<answer>2 ** 3</answer>", "<answer>7 // 2</answer>", "<answer>-2 + 4</answer>",
                                   "<answer>1.5 * 2</answer>"],
                            numbers=[[2, 3], [7, 2], [2, 4], [2]], target=[8, 3, 2, 3], use_all=False) == [0.0] * 4
    assert countdown_reward(None, ["x"], numbers=[[1]], target=[None]) == [None]
    with pytest.raises(ValueError, match=r"\['target'\]"):
        countdown_reward(None, ["<answer>1</answer>"], numbers=[[1]])


def test_countdown_never_executes_code(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    attacks = [
        "<answer>__import__('os').system('touch %s')</answer>" % marker,
        "<answer>open(%r, 'w').write('x')</answer>" % str(marker),
        "<answer>(lambda: 1)() + 1</answer>",
        "<answer>[1][0] + 1</answer>",
    ]

    def forbidden(*args, **kwargs):
        raise AssertionError("the reward must not run eval/exec or os.system")

    monkeypatch.setattr(os, "system", forbidden)
    for name in ("eval", "exec"):
        monkeypatch.setattr(builtins, name, forbidden)
    assert countdown_reward(None, attacks, numbers=[[1]] * 4, target=[0] * 4, use_all=False) == [0.0] * 4
    assert not marker.exists()


# ---- registry ------------------------------------------------------------------------------------

def test_registry_lookup():
    assert {"format", "accuracy", "overlong", "length", "countdown"} <= set(list_rewards())
    assert get_reward("accuracy") is accuracy_reward
    assert get_reward("modules.rewards.format.format_reward") is format_reward  # dotted path
    with pytest.raises(ValueError, match="unknown reward 'acuracy'.*accuracy.*countdown.*format"):
        get_reward("acuracy")
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg'"):
        get_reward("no_such_pkg.fn")
    with pytest.raises(ValueError, match="already registered"):
        register_reward("accuracy")(lambda prompts, completions, **kw: [])


def _const(value):
    def fn(prompts, completions, **kwargs):
        return [value] * len(completions)
    return fn


def test_reward_set_weights_and_none():
    # Row 0: both apply; row 1: accuracy n/a (gold None); row 2: only format returns None.
    def fmt(prompts, completions, **kwargs):
        return [1.0, 1.0, None]

    rs = RewardSet.from_specs([RewardSpec("accuracy", weight=2.0, kwargs={"mode": "exact"}), fmt])
    assert rs.names == ["accuracy", "fmt"] and rs.weights == [2.0, 1.0]
    per_func, total = rs(["p"] * 3, ["<answer>a</answer>", "<answer>b</answer>", "<answer>c</answer>"],
                         {"answer": ["A", None, "x"]})
    assert per_func.dtype == torch.float32 and per_func.shape == (3, 2)
    assert per_func[0].tolist() == [1.0, 1.0]
    assert math.isnan(per_func[1, 0]) and per_func[1, 1] == 1.0
    assert per_func[2, 0] == 0.0 and math.isnan(per_func[2, 1])
    assert total.tolist() == [3.0, 1.0, 0.0]  # 2*1 + 1 ; None + 1 ; 2*0 + None

    stats = rs.stats(per_func)
    assert stats["rewards/accuracy/mean"] == pytest.approx(0.5)
    assert stats["rewards/accuracy/std"] == pytest.approx(math.sqrt(0.5))  # unbiased std of [1, 0]
    assert stats["rewards/fmt/mean"] == 1.0 and stats["rewards/fmt/std"] == 0.0
    single = rs.stats(torch.tensor([[1.0, float("nan")], [float("nan"), float("nan")]]))
    assert single["rewards/accuracy/std"] == 0.0 and math.isnan(single["rewards/fmt/mean"])


def test_reward_set_passes_trainer_keywords_and_duplicate_names():
    rs = RewardSet.from_specs([
        {"name": "overlong", "kwargs": {"max_completion_length": 10, "cache_length": 4}},
        RewardSpec("overlong", weight=0.5, kwargs={"max_completion_length": 20, "cache_length": 10}),
    ])
    assert rs.names == ["overlong", "overlong_2"]
    per_func, total = rs(["p", "p"], ["a", "b"], {}, completion_lengths=torch.tensor([8, 15]),
                         truncated=torch.tensor([False, True]))
    assert per_func.tolist() == [[-0.5, 0.0], [-1.0, -0.5]]
    assert total.tolist() == [-0.5, -1.25]


@pytest.mark.parametrize("bad, message", [
    (lambda prompts, completions, **kw: 1 / 0, "reward 'bad' raised ZeroDivisionError: division by zero"),
    (lambda prompts, completions, **kw: [1.0] * 3, "reward 'bad' returned 3 values for 4 completions"),
    (lambda prompts, completions, **kw: "1.0", "reward 'bad' returned str; it must return a list"),
    (lambda prompts, completions, **kw: [1.0, "1.0", 1.0, 1.0], "reward 'bad' returned '1.0' .*row 1"),
    (lambda prompts, completions, **kw: [1.0, 1.0, float("nan"), 1.0],
     "reward 'bad' returned nan for row 2; a reward must be finite or None"),
    (lambda prompts, completions, **kw: [float("inf")] * 4, "reward 'bad' returned inf for row 0"),
])
def test_reward_set_errors_name_the_function(bad, message):
    bad.__name__ = "bad"
    rs = RewardSet.from_specs([_const(1.0), bad])
    with pytest.raises(RewardError, match=message) as info:
        rs(["p"] * 4, ["c"] * 4, {})
    if "raised" in message:
        assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_reward_set_all_none_row_and_config_errors():
    def none_on_row_1(prompts, completions, **kwargs):
        return [1.0, None, 1.0]

    rs = RewardSet.from_specs([none_on_row_1, RewardSpec("accuracy", kwargs={"mode": "exact"})])
    with pytest.raises(RewardError, match="no reward function applied to row 1"):
        rs(["p"] * 3, ["a", "b", "c"], {"answer": ["a", None, "c"]})
    with pytest.raises(RewardError, match="reward 'accuracy' raised ValueError: .*column 'answer'"):
        rs(["p"] * 3, ["a", "b", "c"], {})
    with pytest.raises(ValueError, match="options \\['mode'\\].*dataset columns"):
        rs(["p"] * 3, ["a", "b", "c"], {"answer": ["a"] * 3, "mode": ["x"] * 3})
    with pytest.raises(ValueError, match="column 'answer' has 2 values for 3 completions"):
        rs(["p"] * 3, ["a", "b", "c"], {"answer": ["a", "b"]})
    with pytest.raises(ValueError, match="weight nan"):
        RewardSet.from_specs([RewardSpec("format", weight=float("nan"))])
