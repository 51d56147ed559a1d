"""Free-form (question, reference answer) pairs that need no verifier: NOVER's CPU substitute for NOVEReason.

Kinds (each question carries everything needed to answer it):

- ``reverse``: "Reverse the word 'planet'." -> "tenalp";
- ``capital``: a made-up table of countries and capitals in the question, "What is the capital of Quenor?" -> "Tiel";
- ``sort``: "Sort the letters of 'dcab' alphabetically." -> "abcd";
- ``sequence``: "What comes next in the sequence 3, 7, 11, 15?" -> "19" (numbers or letters, constant step).
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterable

from datamodules.errors import DataConfigError

KINDS = ("reverse", "capital", "sort", "sequence")
WORDS = ("planet", "river", "garden", "window", "silver", "basket", "candle", "forest", "pencil", "rocket", "tiger",
         "mirror", "orange", "castle", "bridge", "jacket", "lemon", "market", "puzzle", "spider", "wallet", "yellow",
         "anchor", "butter", "cotton", "dragon", "engine", "flower", "guitar", "harbor", "island", "jungle", "kettle",
         "ladder", "magnet", "needle", "oyster", "parrot", "rabbit", "saddle", "tunnel", "velvet", "winter", "zebra")
_SYLLABLES = ("ka", "lo", "ver", "qua", "dri", "mon", "tel", "sa", "ri", "zan", "bel", "or", "ith", "ul", "fen", "gar",
              "nor", "pi", "ste", "vo")


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def _capital(rng: random.Random, size: int = 4) -> tuple[str, str]:
    countries: list[str] = []
    while len(countries) < size:
        name = _name(rng, 3)
        if name not in countries:
            countries.append(name)
    capitals = [_name(rng, 2) for _ in countries]
    table = "; ".join(f"{c}: {k}" for c, k in zip(countries, capitals))
    i = rng.randrange(size)
    question = (f"In a made-up world the capitals are {table}. What is the capital of {countries[i]}?")
    return question, capitals[i]


def _sequence(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        start, step = rng.randint(1, 20), rng.randint(2, 9)
        items = [str(start + k * step) for k in range(5)]
    else:
        step = rng.randint(1, 3)
        start = rng.randint(0, 25 - 4 * step)
        items = [string.ascii_lowercase[start + k * step] for k in range(5)]
    return f"What comes next in the sequence {', '.join(items[:4])}?", items[4]


def make_freeform_qa(n: int, *, seed: int = 0, kinds: Iterable[str] = KINDS) -> list[dict]:
    """`n` rows ``{"question", "answer", "kind"}`` with a free-form reference answer, kinds drawn uniformly.

    `kinds`: any of reverse, capital, sort, sequence.

    >>> make_freeform_qa(1, seed=0, kinds=["reverse"])[0]
    {'question': "Reverse the word 'engine'.", 'answer': 'enigne', 'kind': 'reverse'}
    """
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise DataConfigError(f"make_freeform_qa: kinds={list(kinds)} must be a non-empty choice of {list(KINDS)}")
    if n < 0:
        raise DataConfigError(f"make_freeform_qa: n={n} must be >= 0")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        kind = rng.choice(kinds)
        if kind == "reverse":
            word = rng.choice(WORDS)
            question, answer = f"Reverse the word '{word}'.", word[::-1]
        elif kind == "sort":
            letters = "".join(rng.sample(string.ascii_lowercase, rng.randint(4, 7)))
            question, answer = f"Sort the letters of '{letters}' alphabetically.", "".join(sorted(letters))
        elif kind == "capital":
            question, answer = _capital(rng)
        else:
            question, answer = _sequence(rng)
        rows.append({"question": question, "answer": answer, "kind": kind})
    return rows


__all__ = ["KINDS", "make_freeform_qa"]
