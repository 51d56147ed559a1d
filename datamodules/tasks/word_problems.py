"""Synthetic multi-step arithmetic word problems with exact integer answers (TAPO's CPU substitute for MATH-style
data, spec section 7e). Every given quantity is written as a number, so `num_conditions` (the problem condition
complexity, PCC) equals the count of numbers in the question."""

from __future__ import annotations

import random

from datamodules.errors import DataConfigError

NAMES = ("Ava", "Ben", "Chloe", "Dev", "Emma", "Finn", "Grace", "Hiro", "Isla", "Jon", "Kira", "Leo")
ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells")


def _step(rng: random.Random, value: int, name: str, item: str) -> tuple[str, int]:
    """One operation on the running total: (sentence, new total); the total stays a non-negative integer."""
    divisors = [k for k in range(2, 6) if value % k == 0]
    kinds = (["add"] if value <= 300 else []) + (["mul"] if value <= 100 else []) + (["sub"] if value >= 2 else [])
    kinds += ["div"] if divisors else []
    kind = rng.choice(kinds)
    if kind == "add":
        x = rng.randint(2, 30)
        return rng.choice([f"Then {name} buys {x} more {item}.", f"A friend gives {name} {x} more {item}."]), value + x
    if kind == "sub":
        x = rng.randint(1, value - 1)
        return rng.choice([f"Then {name} gives {x} {item} away.", f"{name} loses {x} of the {item}."]), value - x
    if kind == "mul":
        x = rng.randint(2, 4)
        return f"Then {name} gets enough {item} to have {x} times as many as before.", value * x
    x = rng.choice(divisors)
    return f"{name} splits the {item} equally into {x} boxes and keeps only one box.", value // x


def make_word_problems(n: int, *, seed: int = 0, min_steps: int = 2, max_steps: int = 4) -> list[dict]:
    """`n` rows `{"question", "answer", "num_conditions"}`: a starting amount, then `min_steps`..`max_steps`
    operations (buy/receive, give/lose, multiply, split evenly), each bringing one new quantity; `answer` is the
    exact final integer as a string and `num_conditions` = 1 + steps (the given quantities).

    >>> row = make_word_problems(1, seed=1, min_steps=2, max_steps=2)[0]
    >>> row["num_conditions"], row["question"].endswith("have now?")
    (3, True)
    """
    if n < 0:
        raise DataConfigError(f"make_word_problems: n={n} must be >= 0")
    if not 1 <= min_steps <= max_steps:
        raise DataConfigError(f"make_word_problems: min_steps={min_steps}, max_steps={max_steps}; "
                              "give 1 <= min_steps <= max_steps")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        value = rng.randint(5, 40)
        sentences = [f"{name} has {value} {item}."]
        steps = rng.randint(min_steps, max_steps)
        for _ in range(steps):
            sentence, value = _step(rng, value, name, item)
            sentences.append(sentence)
        sentences.append(f"How many {item} does {name} have now?")
        rows.append({"question": " ".join(sentences), "answer": str(value), "num_conditions": 1 + steps})
    return rows
