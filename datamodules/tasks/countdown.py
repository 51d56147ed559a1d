"""Countdown puzzles (TinyZero): reach a target with + - * / using each given number exactly once.

The target is built from a random expression over the numbers, so it is always reachable; that
expression is kept in the `solution` column.
"""

from __future__ import annotations

import random

from datamodules.errors import DataConfigError

QUESTION = (
    "Using the numbers {numbers}, create an equation that equals {target}. "
    "Use each number exactly once, with +, -, *, / and parentheses. "
    "Give the final equation in <answer> </answer> tags, for example <answer> (1 + 2) * 3 </answer>."
)
_MAX_TRIES = 100


def _random_expression(numbers: list[int], rng: random.Random) -> tuple[int, str]:
    """Fold the numbers into a random binary expression tree; `/` only where it divides exactly."""
    pool = [(x, str(x), True) for x in numbers]  # (value, text, is_atom)
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        (a, ta, atom_a), (b, tb, atom_b) = pool[i], pool[j]
        ops = ["+", "-", "*"] + (["/"] if b != 0 and a % b == 0 else [])
        op = rng.choice(ops)
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
        text = f"{ta if atom_a else f'({ta})'} {op} {tb if atom_b else f'({tb})'}"
        pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(value, text, False)]
    return pool[0][0], pool[0][1]


def make_countdown(n: int, *, num_numbers: int = 3, max_number: int = 20, seed: int = 0) -> list[dict]:
    """`n` rows `{"question", "numbers", "target", "solution"}` with `target >= 1` always reachable.

    Numbers are drawn uniformly (with repetition) from 1..max_number; the target is the value of a
    random expression using each number once (`solution`, e.g. "(3 + 7) * 2"). If no positive target
    turns up in 100 random expressions, the sum of the numbers is used.
    """
    if n < 0:
        raise DataConfigError(f"make_countdown: n={n} must be >= 0")
    if num_numbers < 2:
        raise DataConfigError(f"make_countdown: num_numbers={num_numbers} must be >= 2")
    if max_number < 1:
        raise DataConfigError(f"make_countdown: max_number={max_number} must be >= 1")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        numbers = [rng.randint(1, max_number) for _ in range(num_numbers)]
        for _ in range(_MAX_TRIES):
            target, solution = _random_expression(numbers, rng)
            if target >= 1:
                break
        else:
            target, solution = sum(numbers), " + ".join(map(str, numbers))
        question = QUESTION.format(numbers=numbers, target=target)
        rows.append({"question": question, "numbers": numbers, "target": target, "solution": solution})
    return rows
