r"""The ``accuracy`` reward on real answer styles (GSM8K, MATH, currency, percent, thousands separators, several
boxes), math-verify's own options as reward kwargs, and agreement with ``math_verify.verify(parse(gold),
parse(answer))`` on a sample of math-verify's own regression cases.

The installed math-verify (0.9) ships no tests, so the sample below is copied from its repository's
tests/test_all.py, tests/test_open_thoughts.py and tests/test_numina_cases.py (huggingface/Math-Verify): cases
math-verify itself gets right with its default `parse` / `verify`. On the whole parametrised set there (232
such cases) the reward agrees on 228 (215 before the currency / several-boxes fixes); the 4 left are by design:
a box is read before a later "final answer is" sentence, a bare gold ``1,22`` is read as LaTeX (a list, not the
decimal 1.22), boxes separated by prose ("for part (a) and") are not one answer, and a malformed box.
"""

from __future__ import annotations

import pytest
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from modules.rewards import RewardError, RewardSet, RewardSpec
from modules.rewards.accuracy import (
    EXTRACT_MODES,
    accuracy_reward,
    extract_answer,
    extract_boxed_answer,
)


def score(completion: str, gold: str, **kwargs) -> float:
    return accuracy_reward(None, [completion], answer=[gold], **kwargs)[0]


# ---- GSM8K ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("completion, gold, expected", [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72", 1.0),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "24", 0.0),  # the #### line, not an earlier number
    (r"\boxed{\$18}", "18", 1.0),  # escaped dollar in a box: scored 0 before
    (r"\boxed{\$18}", "17", 0.0),
    (r"<answer>\$18</answer>", "18", 1.0),  # ... and in an answer tag
    (r"\boxed{\$18.00}", "18", 1.0),
    ("The total is \\$18.", "18", 1.0),  # ... and in prose
    ("$18", "18", 1.0),
    ("She pays $18 in total.", "18", 1.0),
    ("18 dollars", "18", 1.0),
    (r"\boxed{18 \text{ dollars}}", "18", 1.0),
    (r"\boxed{18 \text{ dollars}}", "81", 0.0),
])
def test_gsm8k_styles(completion, gold, expected):
    assert score(completion, gold) == expected


ESCAPED_DOLLAR = [
    ("auto", r"so she pays \boxed{\$18}."),
    ("auto", r"<think>9 * 2</think><answer>\$18</answer>"),
    ("answer_tag", r"<answer>\$18</answer>"),
    ("boxed", r"so she pays \boxed{\$18}."),
    ("last_number", r"so she pays \boxed{\$18}."),
    ("none", r"So she pays \$18."),
]


def test_escaped_dollar_cases_cover_every_extract_mode():
    assert {mode for mode, _ in ESCAPED_DOLLAR} == set(EXTRACT_MODES)


@pytest.mark.parametrize("extract, completion", ESCAPED_DOLLAR)
def test_escaped_dollar_with_every_extract_mode(extract, completion):
    assert score(completion, "18", extract=extract) == 1.0
    assert score(completion, "19", extract=extract) == 0.0


# ---- MATH ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("completion, gold, expected", [
    (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
    (r"\boxed{\frac{1}{2}}", r"\frac12", 1.0),
    (r"\boxed{\dfrac{1}{2}}", "1/2", 1.0),
    (r"\boxed{\dfrac{1}{3}}", "0.5", 0.0),
    (r"\boxed{0.5}", r"\dfrac{1}{2}", 1.0),
    (r"\boxed{\left( 1, 2 \right)}", "(1,2)", 1.0),  # \left( ... \right) interval / pair
    (r"\boxed{(1,2)}", r"\left( 1, 2 \right)", 1.0),
    (r"\boxed{\left[ 1, 2 \right)}", "[1,2)", 1.0),
    (r"\boxed{\left[ 1, 2 \right)}", "(1,2)", 0.0),  # closed vs open end
    (r"\boxed{(-\infty, 3]}", r"\left(-\infty, 3\right]", 1.0),
    (r"\boxed{(-\infty, 3)}", r"\left(-\infty, 3\right]", 0.0),
    (r"the polar coordinates are $\boxed{\left( 3, \frac{\pi}{2} \right)}.$", r"(3, \frac{\pi}{2})", 1.0),
])
def test_math_styles(completion, gold, expected):
    assert score(completion, gold) == expected


# ---- currency, percent, thousands ---------------------------------------------------------------

@pytest.mark.parametrize("completion, gold, expected", [
    ("<answer>€18</answer>", "18", 1.0),  # read as LaTeX first, which has no €: scored 0 before
    (r"\boxed{£18}", "18", 1.0),
    (r"\boxed{18€}", "18", 1.0),
    ("It costs 18€.", "18", 1.0),
    (r"\boxed{\$1,000.50}", "1000.5", 1.0),
    (r"\boxed{-\$5}", "-5", 1.0),  # the sign stays with the number
    (r"\boxed{-\$5}", "5", 0.0),
    ("A loss of -\\$5.", "-5", 1.0),
])
def test_currency(completion, gold, expected):
    assert score(completion, gold) == expected


# What we decide for percentages (math-verify's rule): "50%" is 50 with a percent sign. A gold of 50% accepts 50,
# 50% and 0.5; a gold of 50 accepts 50 and 50% but not 0.5; a gold of 0.5 accepts 0.5 and 50% but not 50.
PERCENT = {
    "50": {"50": 1.0, r"50\%": 1.0, "0.5": 0.0},
    r"50\%": {"50": 1.0, r"50\%": 1.0, "0.5": 1.0},
    "0.5": {"50": 0.0, r"50\%": 1.0, "0.5": 1.0},
}


@pytest.mark.parametrize("gold, pred", [(g, p) for g in PERCENT for p in PERCENT[g]])
def test_percent_matches_math_verify(gold, pred):
    expected = PERCENT[gold][pred]
    assert score(rf"\boxed{{{pred}}}", gold) == expected
    assert score(f"<answer>{pred}</answer>", gold) == expected
    assert float(verify(parse(f"${gold}$"), parse(f"${pred}$"))) == expected  # the same as math-verify


def test_percent_in_prose():
    assert score("The discount is 50%.", "50") == 1.0
    assert score("The discount is 50 percent.", "0.5") == 1.0
    assert score("The discount is 50%.", "5") == 0.0


@pytest.mark.parametrize("completion, gold, expected", [
    (r"\boxed{1,000}", "1000", 1.0),
    (r"\boxed{1000}", "1,000", 1.0),
    ("#### 1,000", "1000", 1.0),
    ("<answer>1,000</answer>", "1000", 1.0),
    ("The population is 1,000,000.", "1000000", 1.0),
    (r"\boxed{1,000,000}", "10^6", 1.0),
    (r"\boxed{1,001}", "1000", 0.0),
])
def test_thousands_separators(completion, gold, expected):
    assert score(completion, gold) == expected


# ---- several boxes -------------------------------------------------------------------------------
# The rule (extract_boxed_answer): the answer is the last box together with the boxes right before it that only
# list punctuation separates from it (commas, "and" / "or", \text{and}, \quad, $ ... $, a "y =" label); any
# other text between two boxes ends the answer, so a box written before more working is an intermediate result
# and only the last box counts. A list is compared as a set, so listing extra values (hedging) scores 0.

@pytest.mark.parametrize("completion, gold, expected", [
    (r"\boxed{-2}, \boxed{1}", "1,-2", 1.0),  # scored 0 before (only the last box)
    (r"\boxed{-2} \text{and} \boxed{1}", "1,-2", 1.0),
    (r"The roots are $\boxed{1}$ and $\boxed{-2}$.", "1,-2", 1.0),
    (r"\[ \boxed{-2} \quad \text{and} \quad \boxed{1}. \]", r"\{1, -2\}", 1.0),
    (r"<answer>\boxed{-2}, \boxed{1}</answer>", "1,-2", 1.0),
    (r"x = \boxed{1}, y = \boxed{2}", "x=1, y=2", 1.0),
    (r"\boxed{1}", "1,-2", 0.0),  # one root of two
    (r"\boxed{1}, \boxed{-2}, \boxed{3}", "1,-2", 0.0),  # an extra root
    (r"\boxed{5}, \boxed{5}", "5", 1.0),  # a repeated box is one value
    (r"\boxed{3} or \boxed{5}", "5", 0.0),  # hedging: a list, not the last box
])
def test_several_boxes_as_one_answer(completion, gold, expected):
    assert score(completion, gold) == expected


WORKING = r"So x = \boxed{3}. Wait, that is wrong: 2x = 10, hence x = \boxed{5}."


@pytest.mark.parametrize("gold, expected", [("5", 1.0), ("3", 0.0), ("3,5", 0.0)])
def test_last_box_after_an_intermediate_box(gold, expected):
    assert extract_boxed_answer(WORKING) == "5"
    assert score(WORKING, gold) == expected
    assert score(f"<answer>{WORKING}</answer>", gold) == expected


def test_box_extraction_details():
    assert extract_answer(r"\boxed{a} and then \boxed{b", "boxed") is None  # truncated last box: no answer
    assert extract_boxed_answer(r"\boxed{\boxed{1}}") == r"\boxed{1}"  # outermost box
    assert extract_boxed_answer(r"\boxed{(1, 2)}, \boxed{(2, 1)}") == "(1, 2), (2, 1)"
    assert score(r"\boxed{(1, 2)}, \boxed{(2, 1)}", "(2,1),(1,2)") == 1.0
    assert score(r"\boxed{(1, 2)}, \boxed{(2, 1)}", "(2,1),(1,3)") == 0.0


# ---- math-verify's options as kwargs -------------------------------------------------------------

def test_float_rounding():
    assert score(r"\boxed{0.33}", "1/3") == 0.0  # default: 6 decimal places
    assert score(r"\boxed{0.33}", "1/3", float_rounding=2) == 1.0
    assert score(r"\boxed{0.333333}", "1/3") == 1.0
    assert score(r"\boxed{0.333333}", "1/3", float_rounding=7) == 0.0


def test_strict_and_set_relation_comparison():
    assert score(r"\boxed{y+1}", "x+1") == 0.0
    assert score(r"\boxed{y+1}", "x+1", strict=False) == 1.0  # variables matched by position
    assert score(r"\boxed{-2 \le x \le 7}", r"x \in [-2,7]") == 0.0
    assert score(r"\boxed{-2 \le x \le 7}", r"x \in [-2,7]", allow_set_relation_comp=True) == 1.0
    assert score(r"\boxed{x \in [-2,7]}", r"-2 \le x \le 7") == 1.0  # gold relation, predicted set: always


def test_extraction_config_and_priorities():
    text = r"The final answer is $9999$, \boxed{1}"
    assert score(text, "9999", extract="none") == 0.0  # the box wins at math-verify's default priority
    late_box = [{"type": "latex", "boxed_match_priority": 100}, "expr"]
    assert score(text, "9999", extract="none", extraction_config=late_box) == 1.0
    as_objects = [LatexExtractionConfig(boxed_match_priority=100), ExprExtractionConfig()]
    assert score(text, "9999", extract="none", extraction_config=as_objects) == 1.0
    # Multiple choice with a string target.
    assert score("I think the answer is B.", "B", extract="none") == 0.0
    assert score("I think the answer is B.", "B", extract="none", extraction_config=["string"]) == 1.0
    assert score("I think the answer is B.", "C", extract="none", extraction_config=["string"]) == 0.0
    assert score("I think the answer is E.", "E", extract="none",
                 extraction_config=[{"type": "string", "strings": ["A", "B", "C", "D", "E"]}]) == 1.0


def test_gold_extraction_config():
    # The completion read as plain expressions only; a LaTeX gold needs its own targets.
    with pytest.warns(UserWarning, match="could not parse the gold"):
        assert score("The answer is 1/2", r"$\frac{1}{2}$", extract="none", extraction_config=["expr"]) == 0.0
    assert score("The answer is 1/2", r"$\frac{1}{2}$", extract="none", extraction_config=["expr"],
                 gold_extraction_config=["latex"]) == 1.0


@pytest.mark.parametrize("kwargs, named", [
    ({"float_rounding": -1}, "float_rounding=-1"),
    ({"float_rounding": 2.5}, "float_rounding=2.5"),
    ({"float_rounding": True}, "float_rounding=True"),
    ({"numeric_precision": 0}, "numeric_precision=0"),
    ({"strict": "yes"}, "strict='yes'"),
    ({"allow_set_relation_comp": 1}, "allow_set_relation_comp=1"),
    ({"extraction_config": ["latx"]}, "extraction_config[0]='latx'"),
    ({"extraction_config": []}, "extraction_config=[]"),
    ({"extraction_config": [{"type": "latex", "boxed_priority": 0}]}, "no field 'boxed_priority'"),
    ({"extraction_config": [{"type": "latex", "boxed_match_priority": "high"}]},
     "extraction_config[0].boxed_match_priority='high'"),
    ({"extraction_config": [{"type": "latex", "normalization_config": {"boxed": "first"}}]},
     "normalization_config.boxed='first'"),
    ({"extraction_config": [{"type": "string", "strings": "ABCD"}]}, "extraction_config[0].strings='ABCD'"),
    ({"gold_extraction_config": [3]}, "gold_extraction_config[0]=3"),
    ({"extraction_mode": "all"}, "extraction_mode='all'"),
    ({"fallback_mode": "none"}, "fallback_mode='none'"),
    ({"timeout_seconds": 0}, "timeout_seconds=0"),
])
def test_bad_option_is_a_one_line_error(kwargs, named):
    with pytest.raises(ValueError) as err:
        score(r"\boxed{1}", "1", **kwargs)
    message = str(err.value)
    assert "\n" not in message and message.startswith("accuracy reward: ")
    assert named in message and "use " in message.partition(" is invalid; ")[2]  # the kwarg and value, then the fix


def test_bad_option_through_the_registry_names_the_reward():
    rewards = RewardSet.from_specs([RewardSpec("accuracy", kwargs={"float_rounding": -1})])
    with pytest.raises(RewardError) as err:
        rewards(["p"], [r"\boxed{1}"], columns={"answer": ["1"]})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("reward 'accuracy' raised ValueError: accuracy reward: float_rounding=-1 is invalid; use")


# ---- agreement with math-verify on its own regression cases ---------------------------------------
# (gold, completion, what math-verify's default parse + verify gives), from huggingface/Math-Verify tests/.

MATH_VERIFY_CASES = [
    ("7425000", "7,425,000", 1),
    ("1000.99", "$1,000.99", 1),
    ("1000.99", "the number is not 10 which is 1,000.99€", 1),
    ("2", "AZYUK2A", 0),
    ("10/9", "\\frac{10}{9}", 1),
    ("$[0,9)$", "$[0,1)$", 0),
    ("$(0,9)$", "$[0,9)$", 0),
    ("$a^2 + b = 0$", "$0$", 0),
    ("$1/3$", "$\\left( \\frac{1}{3} \\right)$", 1),
    ("$28\\%$", "28 percent", 1),
    ("$28\\%$", "$\\boxed{28}$ pct", 1),
    ("$-2,1$", r"Checking, we find that the only integer roots are $\boxed{-2,1}.$", 1),
    ("$(3, \\frac{\\pi}{2})$", r"Therefore, the polar coordinates are $\boxed{\left( 3, \frac{\pi}{2} \right)}.$", 1),
    ("$125$ miles", "The distance is $\\boxed{125\\textnormal{ miles}}.$", 1),
    ("$[-1, -\\frac{1}{2}) \\cup (-\\frac{1}{2}, 0) \\cup (0, 1) \\cup (1, \\infty)$",
     "The solution set is $\\boxed{[-1, -\\tfrac12) \\cup (-\\tfrac12, 0) \\cup (0, 1) \\cup (1, \\infty)}.$", 1),
    ("$2x + z = 1$", "$1$", 0),
    (r"$$-793 < a < 10$$", r"$$(-793, 10)$$", 1),
    (r"$$a_3 = 2, a_{37} = 19$$", r"$$\boxed{a_{37} = 19, \quad a_3 = 2}$$", 1),
    (r"$$(2, 2), (6, 2)$$", r"$$\boxed{(2, 2)} \quad \text{and} \quad \boxed{(6, 2)}$$", 1),
    (r"$${1,2,3}$$", r"\boxed{1},\boxed{2},\boxed{3}", 1),
    ("$(2,1),(1,2),(-1,-20),(-20,-1)$",
     "solutions are:\n\n\\[\n\\boxed{(1, 2)}, \\boxed{(2, 1)}, \\boxed{(-1, -20)}, \\boxed{(-20, -1)}\n\\]", 1),
]

# Cases with options: (gold, completion, options, what math-verify gives with the same options).
MATH_VERIFY_OPTION_CASES = [
    ("4.123105625617661", "$\\sqrt{17}$", {"float_rounding": 5}, 1),
    ("$\\frac{1}{3}$", "0.3333$", {"float_rounding": 4}, 1),
    ("$x \\in [-2,7]$", "$-2 \\le x \\le 7$", {"allow_set_relation_comp": True}, 1),
    ("$x \\in [-2,7]$", "$-2 \\le x \\le 7$", {"allow_set_relation_comp": False}, 0),
    ("$f(x) = x + 1$", "$f(y) = y + 1$", {"strict": False}, 1),
    ("$f(x) = x + 1$", "$f(y) = y + 1$", {"strict": True}, 0),
]


def test_agrees_with_math_verify_on_its_regression_cases():
    agree = [float(verify(parse(g), parse(c))) == score(c, g) for g, c, _ in MATH_VERIFY_CASES]
    assert [float(verify(parse(g), parse(c))) for g, c, _ in MATH_VERIFY_CASES] == [e for _, _, e in MATH_VERIFY_CASES]
    assert sum(agree) == len(MATH_VERIFY_CASES) == 21, [c for c, ok in zip(MATH_VERIFY_CASES, agree) if not ok]


@pytest.mark.parametrize("gold, completion, options, expected", MATH_VERIFY_OPTION_CASES)
def test_options_agree_with_math_verify(gold, completion, options, expected):
    assert float(verify(parse(gold), parse(completion), **options)) == expected
    assert score(completion, gold, **options) == expected
    assert score(completion, gold, extract="none", **options) == expected
