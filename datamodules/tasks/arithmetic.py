"""Synthetic arithmetic questions with exact integer answers ("What is 37 + 12?" -> "49")."""

from __future__ import annotations

import operator
import random
from collections.abc import Iterable

from datamodules.errors import DataConfigError

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
DEFAULT_TEMPLATE = "What is {a} {op} {b}?"


def make_arithmetic(
    n: int,
    *,
    digits: int = 2,
    ops: Iterable[str] = ("+",),
    seed: int = 0,
    template: str | None = None,
    low: int | None = None,
    high: int | None = None,
) -> list[dict]:
    """`n` rows `{"question", "answer", "a", "b", "op"}`; `answer` is the exact integer as a string.

    Operands are drawn uniformly from `[10**(digits-1), 10**digits - 1]` (digits=2 -> 10..99), or from
    `[low, high]` where given; `op` uniformly from `ops` (any of + - *). `template` formats the question
    from `a`, `op`, `b` (default "What is {a} {op} {b}?").

    >>> make_arithmetic(1, seed=0)[0]["question"]
    'What is 59 + 63?'
    """
    ops = tuple(ops)
    if n < 0:
        raise DataConfigError(f"make_arithmetic: n={n} must be >= 0")
    if digits < 1:
        raise DataConfigError(f"make_arithmetic: digits={digits} must be >= 1 (2 -> operands 10..99)")
    bad = [op for op in ops if op not in OPS]
    if not ops or bad:
        raise DataConfigError(f"make_arithmetic: ops={list(ops)} must be a non-empty choice of {list(OPS)}")
    low = 10 ** (digits - 1) if low is None else low
    high = 10**digits - 1 if high is None else high
    if low > high:
        raise DataConfigError(f"make_arithmetic: low={low} is above high={high}; give low <= high")
    template = DEFAULT_TEMPLATE if template is None else template
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b, op = rng.randint(low, high), rng.randint(low, high), rng.choice(ops)
        try:
            question = template.format(a=a, b=b, op=op)
        except (KeyError, IndexError) as err:
            raise DataConfigError(
                f"make_arithmetic: template={template!r} uses {err}; it may only use {{a}}, {{op}}, {{b}}"
            ) from None
        rows.append({"question": question, "answer": str(OPS[op](a, b)), "a": a, "b": b, "op": op})
    return rows
