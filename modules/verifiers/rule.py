r"""Rule verifiers behind the `Verifier` interface.

- `MathRuleVerifier`: symbolic equivalence with HF math-verify (`modules.rewards.accuracy.math_equal`), the
  rule TinyV consults first (its stand-in for `prime_math`, spec 15(b)).
- `RuleStubVerifier`: the CPU stand-in for an LLM verifier (General-Reasoner spec 13(e)): `equivalent` decides
  (normalised string, number, fraction, unit-stripped and element-wise list equality), then it *writes* the
  preset's decision text ("Final Decision: Yes" / "True") and the preset's parser reads it back, so the parsing
  path of the reward is the one an LLM verifier's output takes.
"""

from __future__ import annotations

import re
from fractions import Fraction

from modules.rewards.accuracy import math_equal, normalize_text
from modules.verifiers.base import Verifier, VerifierResult
from modules.verifiers.llm import get_preset

_LATEX_WRAPPERS = re.compile(r"\\(?:text|mathrm|textbf|mbox|operatorname)\{([^{}]*)\}")
_FRAC = re.compile(r"^(-?)\\frac\{([^{}]+)\}\{([^{}]+)\}$")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_PLAIN_NUMBER = re.compile(r"^-?(?:\d+(?:\.\d*)?|\.\d+)$")
# a leading number (int, decimal, a/b, \frac{a}{b}, 1,234) followed by a unit made of letters/symbols
_NUMBER_WITH_UNIT = re.compile(r"^(?P<num>-?(?:\\frac\{[^{}]+\}\{[^{}]+\}|[\d.,]+(?:/[\d.]+)?))\s*"
                               r"(?P<unit>(?:[a-zA-Z°µ][\w°/^²³.\s-]*)?)$")


def normalize_answer(text: str) -> str:
    r"""Answer text with LaTeX wrappers, math delimiters, spacing and a leading ``x =`` removed, casefolded.

    >>> normalize_answer(r"$\text{Paris}$."), normalize_answer(r"\boxed{ 12\,\mathrm{cm} }")
    ('paris', '12 cm')
    """
    s = str(text).strip()
    m = re.fullmatch(r"\\boxed\{(.*)\}", s, flags=re.DOTALL)
    if m:
        s = m.group(1)
    s = s.replace("$", " ").replace("\\(", " ").replace("\\)", " ").replace("\\[", " ").replace("\\]", " ")
    for _ in range(3):  # nested \text{\textbf{x}}
        s = _LATEX_WRAPPERS.sub(r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\left", "").replace("\\right", "")
    for token in ("\\!", "\\,", "\\;", "\\ "):
        s = s.replace(token, " ")
    s = s.replace("^\\circ", "°").replace("^{\\circ}", "°").replace("\\%", "%").replace("−", "-")
    s = normalize_text(s).strip("\"'` ")
    return re.sub(r"^[a-z]\s*=\s*(?=\S)", "", s)  # "x = 3" -> "3"


def parse_number(text: str) -> Fraction | None:
    r"""An exact number from ``12``, ``-0.5``, ``1,234``, ``3/4``, ``\frac{3}{4}``, ``$4.75`` or ``25%``, else None.

    >>> parse_number("3/4"), parse_number(r"\frac{1}{2}"), parse_number("1,234.5"), parse_number("x")
    (Fraction(3, 4), Fraction(1, 2), Fraction(2469, 2), None)
    """
    s = normalize_answer(text).replace(" ", "")
    if s.startswith("$"):
        s = s[1:]
    percent = s.endswith("%")
    if percent:
        s = s[:-1]
    value: Fraction | None = None
    m = _FRAC.match(s)
    if m:
        num, den = parse_number(m.group(2)), parse_number(m.group(3))
        if num is not None and den:
            value = (-1 if m.group(1) else 1) * num / den
    elif _THOUSANDS.match(s):
        value = Fraction(s.replace(",", ""))
    elif _PLAIN_NUMBER.match(s):
        value = Fraction(s)
    elif s.count("/") == 1:
        a, b = s.split("/")
        if _PLAIN_NUMBER.match(a) and _PLAIN_NUMBER.match(b) and Fraction(b) != 0:
            value = Fraction(a) / Fraction(b)
    if value is not None and percent:
        value /= 100
    return value


def strip_unit(text: str) -> str:
    """The number part of "number unit" text ("12 cm^2" -> "12", "60 km/h" -> "60"); other text unchanged.

    >>> strip_unit("12 cm^2"), strip_unit("$4.75"), strip_unit("Paris")
    ('12', '4.75', 'paris')
    """
    s = normalize_answer(text)
    m = _NUMBER_WITH_UNIT.match(s)
    if m and m.group("unit") and parse_number(m.group("num")) is not None:
        return m.group("num")
    return s


def _split_list(text: str) -> list[str]:
    s = normalize_answer(text)
    if len(s) >= 2 and s[0] + s[-1] in ("()", "[]", "{}"):
        s = s[1:-1]
    return [p.strip() for p in re.split(r"\s*(?:,|;|\band\b)\s*", s) if p.strip()]


def _numbers_equal(gold: str, answer: str) -> bool:
    g, a = parse_number(strip_unit(gold)), parse_number(strip_unit(answer))
    if g is None or a is None:
        return False
    if g == a:
        return True
    # "25%" against "25": compare the percentage's number as written, too
    g_raw = parse_number(strip_unit(gold).rstrip("%")) if "%" in gold else g
    a_raw = parse_number(strip_unit(answer).rstrip("%")) if "%" in answer else a
    return g_raw == a_raw


def equivalent(gold: str, answer: str) -> bool:
    """The stub's decision: equal after normalisation, as numbers (fractions, decimals, percentages, thousands
    commas, units stripped), or element by element as lists of the same length (order kept).

    >>> equivalent("1/2", "0.5"), equivalent("3 cm", "3"), equivalent("2, 3, 5", "[2,3,5]"), equivalent("7", "seven")
    (True, True, True, False)
    """
    g, a = normalize_answer(gold), normalize_answer(answer)
    if not a:
        return False
    if g == a or _numbers_equal(gold, answer):
        return True
    if _THOUSANDS.match(g.replace(" ", "")) or _THOUSANDS.match(a.replace(" ", "")):
        return False  # "1,234" is a number, not a list
    gs, as_ = _split_list(gold), _split_list(answer)
    if len(gs) > 1 and len(gs) == len(as_):
        return all(equivalent(x, y) for x, y in zip(gs, as_))
    return False


class RuleStubVerifier(Verifier):
    """CPU stand-in for an LLM verifier: decides with `equivalent`, writes the preset's decision text
    (``Final Decision: Yes/No`` for general_verifier, ``True/False`` for tinyv) and parses it back.

    >>> v = RuleStubVerifier("general_verifier")
    >>> [(r.correct, r.text) for r in v.verify(["q", "q"], ["1/2", "3"], ["0.5", "4"])]
    [(True, 'Final Decision: Yes'), (False, 'Final Decision: No')]
    """

    name = "rule_stub"

    def __init__(self, prompt: str = "general_verifier") -> None:
        super().__init__()
        self.preset_name = prompt
        self.preset = get_preset(prompt)

    def _verify(self, questions: list[str], golds: list[str], answers: list[str]) -> list[VerifierResult]:
        out = []
        for gold, answer in zip(golds, answers):
            text = self.preset.yes_text if equivalent(gold, answer) else self.preset.no_text
            out.append(VerifierResult(bool(self.preset.parse(text)), text))
        return out

    def __repr__(self) -> str:
        return f"RuleStubVerifier({self.preset_name!r})"


class MathRuleVerifier(Verifier):
    """math-verify equivalence of an extracted answer with the gold (`math_equal`); TinyV's rule verifier.

    >>> [r.correct for r in MathRuleVerifier().verify(["q"] * 3, ["1/2", "12 cm^2", "7"], ["0.5", "12", "7"])]
    [True, False, True]
    """

    name = "math_rule"

    def __init__(self, timeout_seconds: int | None = 5) -> None:
        super().__init__()
        self.timeout_seconds = timeout_seconds

    def _verify(self, questions: list[str], golds: list[str], answers: list[str]) -> list[VerifierResult]:
        return [VerifierResult(math_equal(g, a, timeout_seconds=self.timeout_seconds)) for g, a in zip(golds, answers)]
