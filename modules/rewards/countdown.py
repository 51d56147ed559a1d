"""Countdown reward (TinyZero): reach `target` with an arithmetic expression over the given `numbers`.

The expression is parsed with `ast` and evaluated by walking the tree; it is never passed to `eval`.
"""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from fractions import Fraction

from modules.rewards.registry import completion_text, register_reward

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_MAX_CHARS = 500  # a countdown equation is short; refuse to parse long text


class _NotArithmetic(ValueError):
    pass


def extract_equation(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>``, else the last non-empty line."""
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def parse_equation(expr: str) -> ast.expr:
    """Parse `expr` and check it holds only integer literals, binary + - * /, and parentheses.

    Raises ValueError otherwise (names, calls, attributes, ``**``, ``//``, unary signs, floats...).
    """
    if len(expr) > _MAX_CHARS:
        raise _NotArithmetic(f"expression longer than {_MAX_CHARS} characters")
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError as err:
        raise _NotArithmetic(f"not a Python expression: {err.msg}") from err
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _OPS:
                raise _NotArithmetic(f"operator {type(node.op).__name__} is not allowed")
        elif isinstance(node, ast.Constant):
            if type(node.value) is not int:
                raise _NotArithmetic(f"literal {node.value!r} is not an integer")
        elif not isinstance(node, tuple(_OPS)):
            raise _NotArithmetic(f"{type(node).__name__} is not allowed")
    return tree


def _literals(tree: ast.expr) -> list[int]:
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)]


def _evaluate(node: ast.expr) -> Fraction:
    """Exact value of a tree that passed `parse_equation`. ZeroDivisionError on division by zero."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))


def evaluate_expression(expr: str) -> Fraction:
    """Exact value of an integer expression with + - * / and parentheses (ValueError otherwise).

    >>> evaluate_expression("(3 + 5) / 2")
    Fraction(4, 1)
    """
    return _evaluate(parse_equation(expr))


def countdown_score(text: str, numbers: list[int], target: int, *, use_all: bool = True) -> float:
    """1.0 if the equation in `text` uses only the given numbers, each at most as often as given (exactly
    all of them when `use_all`), and equals `target` within 1e-6; else 0.0.

    >>> countdown_score("<answer>(6 - 2) * 5</answer>", [2, 5, 6], 20)
    1.0
    >>> countdown_score("<answer>6 * 5 - 2 - 2</answer>", [2, 5, 6], 26)
    0.0
    """
    expr = extract_equation(text)
    if not expr:
        return 0.0
    try:
        tree = parse_equation(expr)
    except _NotArithmetic:
        return 0.0
    used, given = Counter(_literals(tree)), Counter(int(n) for n in numbers)
    if use_all and used != given:
        return 0.0
    if not use_all and used - given:  # a number not given, or used more often than given
        return 0.0
    try:
        value = _evaluate(tree)
    except ZeroDivisionError:
        return 0.0
    return float(abs(value - Fraction(target)) <= 1e-6)


@register_reward("countdown")
def countdown_reward(
    prompts: list,
    completions: list,
    numbers: list | None = None,
    target: list | None = None,
    *,
    use_all: bool = True,
    **kwargs,
) -> list[float | None]:
    """Countdown task reward (TinyZero): needs columns `numbers` (list[int]) and `target` (int).

    See `countdown_score`. `use_all=True` (TinyZero) requires every given number used exactly once;
    `use_all=False` allows a subset. Rows whose `target` is None get None.

    >>> countdown_reward(None, ["<answer>3 + 4 * 5</answer>", "3 * 4 + 5 + 5"], numbers=[[3, 4, 5]] * 2,
    ...                  target=[23, 22])
    [1.0, 0.0]
    """
    missing = [name for name, col in (("numbers", numbers), ("target", target)) if col is None]
    if missing:
        raise ValueError(f"countdown reward needs the per-row columns {missing}; got columns {sorted(kwargs)}")
    return [
        None if t is None else countdown_score(completion_text(c), nums, t, use_all=use_all)
        for c, nums, t in zip(completions, numbers, target)
    ]
