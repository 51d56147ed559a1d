"""A synthetic four-domain task with an imbalanced mix: the CPU stand-in for DISCO's data (arXiv 2505.15074, 12(e)).

DISCO mixes MetaMath (75%) with ARC, NQ and IMDB (8.3% each). Here: `math` = addition problems, `choice` =
lettered multiple-choice questions (largest / smallest number), `qa` = country facts with answer aliases,
`sentiment` = keyword movie reviews. Each domain's prompt follows the paper's template (spec 12(d)); only the
math template is given in full there, the other three are written around the quoted substrings by which the
released evaluation code detects the domain.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from datamodules.errors import DataConfigError

DEFAULT_MIX = {"math": 0.75, "choice": 0.0833, "qa": 0.0833, "sentiment": 0.0833}

TEMPLATES = {
    "math": "Below is a math problem. Provide a detailed, step-by-step solution.\n\n### Problem:\n{q}\n\n### Answer:\n",
    "choice": ("Below is a question with multiple-choice answers. Choose the correct option and end your response "
               "with its letter.\n\n### Question:\n{q}\n\n### Answer:\n"),
    "qa": "Below is a question that requires a concise and accurate answer.\n\n### Question:\n{q}\n\n### Answer:\n",
    "sentiment": ("Below is a movie review. Determine the sentiment of the review: answer Positive or Negative.\n\n"
                  "### Review:\n{q}\n\n### Answer:\n"),
}

# country -> (capital aliases, main language aliases); the first alias is the gold answer.
_FACTS = {
    "France": (["Paris"], ["French"]),
    "Germany": (["Berlin"], ["German"]),
    "Italy": (["Rome", "Roma"], ["Italian"]),
    "Spain": (["Madrid"], ["Spanish", "Castilian"]),
    "Portugal": (["Lisbon", "Lisboa"], ["Portuguese"]),
    "Japan": (["Tokyo"], ["Japanese"]),
    "China": (["Beijing", "Peking"], ["Mandarin", "Chinese", "Standard Chinese"]),
    "Brazil": (["Brasilia", "Brasília"], ["Portuguese"]),
    "Egypt": (["Cairo"], ["Arabic"]),
    "Ukraine": (["Kyiv", "Kiev"], ["Ukrainian"]),
    "United States": (["Washington, D.C.", "Washington", "Washington DC"], ["English"]),
    "United Kingdom": (["London"], ["English"]),
    "Russia": (["Moscow"], ["Russian"]),
    "Greece": (["Athens"], ["Greek"]),
    "Turkey": (["Ankara"], ["Turkish"]),
    "Poland": (["Warsaw"], ["Polish"]),
    "Netherlands": (["Amsterdam"], ["Dutch"]),
    "Sweden": (["Stockholm"], ["Swedish"]),
    "Norway": (["Oslo"], ["Norwegian"]),
    "Mexico": (["Mexico City", "Ciudad de Mexico"], ["Spanish"]),
    "Argentina": (["Buenos Aires"], ["Spanish"]),
    "Kenya": (["Nairobi"], ["Swahili", "English"]),
    "India": (["New Delhi", "Delhi"], ["Hindi"]),
    "South Korea": (["Seoul"], ["Korean"]),
    "Canada": (["Ottawa"], ["English"]),
}
_QA_FORMS = {
    "capital": ("What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital city of {c}."),
    "language": ("What language is mainly spoken in {c}?", "Which language do most people in {c} speak?"),
}
_POSITIVE = ("wonderful", "brilliant", "moving", "delightful", "gripping", "superb", "charming", "beautiful")
_NEGATIVE = ("boring", "awful", "dull", "clumsy", "tedious", "terrible", "bland", "painful")
_ASPECTS = ("acting", "plot", "music", "dialogue", "camera work", "pacing", "ending", "cast")
_LETTERS = "ABCDEFGH"


def domain_counts(n: int, mix: Mapping[str, float]) -> dict[str, int]:
    """Exact rows per domain for `n` rows: floor(n * p_d), then the leftover rows to the largest remainders
    (ties to the domain listed first). The mix is normalised by its sum.

    >>> domain_counts(48, {"math": 0.75, "choice": 0.0833, "qa": 0.0833, "sentiment": 0.0833})
    {'math': 36, 'choice': 4, 'qa': 4, 'sentiment': 4}
    """
    total = sum(mix.values())
    shares = {d: n * p / total for d, p in mix.items()}
    counts = {d: math.floor(s) for d, s in shares.items()}
    order = sorted(mix, key=lambda d: -(shares[d] - counts[d]))  # stable: ties keep the mix order
    for d in order[: n - sum(counts.values())]:
        counts[d] += 1
    return counts


def _math(rng: random.Random) -> tuple[str, str, list[str]]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} + {b}?", str(a + b), []


def _choice(rng: random.Random, options: int) -> tuple[str, str, list[str]]:
    values = rng.sample(range(1, 100), options)
    largest = rng.random() < 0.5
    target = max(values) if largest else min(values)
    lines = "\n".join(f"{_LETTERS[i]}. {v}" for i, v in enumerate(values))
    return (f"Which number is the {'largest' if largest else 'smallest'}?\n{lines}",
            _LETTERS[values.index(target)], [])


def _qa(rng: random.Random) -> tuple[str, str, list[str]]:
    country = rng.choice(sorted(_FACTS))
    relation = rng.choice(sorted(_QA_FORMS))
    aliases = _FACTS[country][0 if relation == "capital" else 1]
    return rng.choice(_QA_FORMS[relation]).format(c=country), aliases[0], list(aliases)


def _sentiment(rng: random.Random) -> tuple[str, str, list[str]]:
    positive = rng.random() < 0.5
    k_major = rng.choice((2, 3))  # 2 or 3 of the 3 opinions carry the label's polarity
    words = ([rng.choice(_POSITIVE if positive else _NEGATIVE) for _ in range(k_major)]
             + [rng.choice(_NEGATIVE if positive else _POSITIVE) for _ in range(3 - k_major)])
    rng.shuffle(words)
    aspects = rng.sample(_ASPECTS, 3)
    text = " ".join(f"The {a} was {w}." for a, w in zip(aspects, words))
    return text, "Positive" if positive else "Negative", []


def make_multi_domain(
    n: int,
    *,
    seed: int = 0,
    mix: Mapping[str, float] | None = None,
    choice_options: int = 4,
    paper_templates: bool = True,
) -> list[dict]:
    """`n` rows `{"question", "answer", "domain", "aliases"}` in a shuffled, exactly proportioned domain mix.

    `mix`: {domain: proportion} over math, choice, qa, sentiment (default 75/8.33/8.33/8.33, DISCO's mix;
    counts per domain by `domain_counts`, so the mix holds exactly up to rounding). `choice_options`: letters
    per choice question (2-8, A-H). `paper_templates`: wrap each question in its domain's prompt template
    (TEMPLATES, spec 12(d)); false = the bare question (bring your own data.template). `aliases` lists the
    accepted answers of a qa row (the gold first) and is [] elsewhere; every row has it so a batch's column
    is never dropped.

    >>> rows = make_multi_domain(12, seed=0)
    >>> [sum(r["domain"] == d for r in rows) for d in DEFAULT_MIX]
    [9, 1, 1, 1]
    """
    mix = dict(DEFAULT_MIX if mix is None else mix)
    if n < 0:
        raise DataConfigError(f"make_multi_domain: n={n} must be >= 0")
    unknown = sorted(set(mix) - set(TEMPLATES))
    if unknown or not mix:
        raise DataConfigError(f"make_multi_domain: mix={mix} has unknown domain(s) {unknown}; "
                              f"use some of {list(TEMPLATES)}")
    bad = {d: p for d, p in mix.items() if not (isinstance(p, (int, float)) and math.isfinite(p) and p >= 0)}
    if bad or sum(mix.values()) <= 0:
        raise DataConfigError(f"make_multi_domain: mix={mix} needs non-negative proportions with a positive sum")
    if not 2 <= choice_options <= len(_LETTERS):
        raise DataConfigError(f"make_multi_domain: choice_options={choice_options} must be in 2..8 (letters A-H)")
    rng = random.Random(seed)
    makers = {"math": _math, "choice": lambda r: _choice(r, choice_options), "qa": _qa, "sentiment": _sentiment}
    rows = []
    for domain, count in domain_counts(n, mix).items():
        for _ in range(count):
            question, answer, aliases = makers[domain](rng)
            if paper_templates:
                question = TEMPLATES[domain].format(q=question)
            rows.append({"question": question, "answer": answer, "domain": domain, "aliases": aliases})
    rng.shuffle(rows)
    return rows
