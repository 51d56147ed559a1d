"""Synthetic hybrid-thinking data (LHRM, arXiv 2505.14631; spec 14e, CPU substitute):

- `easy`: one-step arithmetic ("What is 7 + 5?"), candidates for no-think;
- `multi`: multi-step arithmetic ("Compute (23 + 45) * 3."), candidates for think;
- `chat`: short requests ("Greet Ana in one short sentence.") scored by the toy heuristic RM
  (`modules.papers.hgpo.rewards.toy_chat_rm`) through their `keywords` column.

`make_hybrid` gives RL prompt rows (stage 2, HGPO); `make_hybrid_sft` gives stage-1 HFT rows whose `response` is
`<think>steps</think>answer` or `<no_think>answer</no_think>`.
"""

from __future__ import annotations

import random

from datamodules.errors import DataConfigError

KINDS = ("easy", "multi", "chat")
_NAMES = ("Ana", "Ben", "Chloe", "Dev", "Eva", "Finn", "Gia", "Hugo", "Ivy", "Jon", "Kai", "Lena")
_GIFTS = ("book", "flowers", "cake", "card", "tea", "scarf")
_COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "banana": "yellow", "coal": "black", "tomato": "red"}
_OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}


def _easy(rng: random.Random) -> dict:
    a, b, op = rng.randint(1, 9), rng.randint(1, 9), rng.choice("+-*")
    value = _OPS[op](a, b)
    return {"question": f"What is {a} {op} {b}?", "answer": str(value), "kind": "easy", "keywords": None,
            "steps": [f"{a} {op} {b} = {value}."], "reply": str(value)}


def _multi(rng: random.Random, num_steps: int) -> dict:
    value = rng.randint(10, 99)
    text, steps = str(value), []
    for k in range(num_steps):
        op = rng.choice("+-*")
        b = rng.randint(2, 9) if op == "*" else rng.randint(10, 99)
        new = _OPS[op](value, b)
        steps.append(f"{value} {op} {b} = {new}.")
        text = f"{text} {op} {b}" if k == 0 else f"({text}) {op} {b}"
        value = new
    return {"question": f"Compute {text}.", "answer": str(value), "kind": "multi", "keywords": None,
            "steps": steps, "reply": str(value)}


def _chat(rng: random.Random) -> dict:
    name, which = rng.choice(_NAMES), rng.randrange(4)
    if which == 0:
        q, reply, keys, why = (f"Greet {name} in one short sentence.", f"Hello, {name}! Nice to meet you.",
                               ["hello", name], "A friendly hello with the name.")
    elif which == 1:
        gift = rng.choice(_GIFTS)
        q, reply, keys, why = (f"Thank {name} for the {gift}.", f"Thank you, {name}, for the lovely {gift}!",
                               ["thank", name, gift], "Thanks, the name and the gift.")
    elif which == 2:
        thing = rng.choice(sorted(_COLOURS))
        q, reply, keys, why = (f"What colour is the {thing}?", f"It is {_COLOURS[thing]}.", [_COLOURS[thing]],
                               f"The {thing} is {_COLOURS[thing]}.")
    else:
        q, reply, keys, why = (f"Say goodbye to {name}.", f"Goodbye, {name}! See you soon.", ["goodbye", name],
                               "A short goodbye with the name.")
    return {"question": q, "answer": None, "kind": "chat", "keywords": keys, "steps": [why], "reply": reply}


def _queries(n: int, seed: int, easy_share: float, chat_share: float, min_steps: int, max_steps: int) -> list[dict]:
    if n < 0:
        raise DataConfigError(f"hybrid task: n={n} must be >= 0")
    if not (0 <= easy_share and 0 <= chat_share and easy_share + chat_share <= 1):
        raise DataConfigError(f"hybrid task: easy_share={easy_share} and chat_share={chat_share} must be >= 0 and "
                              "add up to at most 1 (the rest are multi-step problems)")
    if not 2 <= min_steps <= max_steps:
        raise DataConfigError(f"hybrid task: need 2 <= min_steps ({min_steps}) <= max_steps ({max_steps})")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        u = rng.random()
        if u < easy_share:
            rows.append(_easy(rng))
        elif u < easy_share + chat_share:
            rows.append(_chat(rng))
        else:
            rows.append(_multi(rng, rng.randint(min_steps, max_steps)))
    return rows


def make_hybrid(n: int, *, seed: int = 0, easy_share: float = 0.4, chat_share: float = 0.2, min_steps: int = 2,
                max_steps: int = 3) -> list[dict]:
    """`n` RL prompt rows `{"question", "answer", "kind", "keywords"}`: `easy` / `multi` rows have an integer
    `answer` and `keywords` None; `chat` rows have `answer` None and the `keywords` a good reply contains.
    Shares: `easy_share`, `chat_share`, the rest multi-step with `min_steps`..`max_steps` operations.

    >>> [r["kind"] for r in make_hybrid(4, seed=1)]
    ['easy', 'chat', 'multi', 'multi']
    """
    return [{k: r[k] for k in ("question", "answer", "kind", "keywords")}
            for r in _queries(n, seed, easy_share, chat_share, min_steps, max_steps)]


def hybrid_response(row: dict, mode: str, think_tag: str = "<think>", no_think_tag: str = "<no_think>") -> str:
    """The stage-1 target of a query row in `mode`: `<think>steps</think>answer` or `<no_think>answer</no_think>`.

    >>> row = {"steps": ["3 + 4 = 7."], "reply": "7"}
    >>> hybrid_response(row, "think"), hybrid_response(row, "no_think")
    ('<think>3 + 4 = 7.</think>7', '<no_think>7</no_think>')
    """
    close = lambda tag: "</" + tag[1:]  # noqa: E731
    if mode == "think":
        return f"{think_tag}{' '.join(row['steps'])}{close(think_tag)}{row['reply']}"
    if mode == "no_think":
        return f"{no_think_tag}{row['reply']}{close(no_think_tag)}"
    raise DataConfigError(f"hybrid_response: mode={mode!r}; use think or no_think")


def make_hybrid_sft(n: int, *, seed: int = 0, easy_share: float = 0.4, chat_share: float = 0.2, min_steps: int = 2,
                    max_steps: int = 3, cross_share: float = 0.25, think_tag: str = "<think>",
                    no_think_tag: str = "<no_think>") -> list[dict]:
    """`n` HFT rows (stage 1) `{"question", "response", "target_mode", "answer", "kind", "keywords"}`. Each query is
    written in its natural mode (multi-step -> think; easy and chat -> no-think, as the paper pairs reasoning data
    with think and simple queries with no-think) and, with probability `cross_share`, in the other mode instead,
    so that the model can continue either forced prefix on any query.

    >>> [(r["kind"], r["target_mode"]) for r in make_hybrid_sft(3, seed=1, cross_share=0.0)]
    [('easy', 'no_think'), ('chat', 'no_think'), ('multi', 'think')]
    """
    if not 0.0 <= cross_share <= 1.0:
        raise DataConfigError(f"make_hybrid_sft: cross_share={cross_share} must be in [0, 1]")
    rows = _queries(n, seed, easy_share, chat_share, min_steps, max_steps)
    rng = random.Random(seed + 1)
    out = []
    for row in rows:
        natural = "think" if row["kind"] == "multi" else "no_think"
        mode = natural if rng.random() >= cross_share else ("no_think" if natural == "think" else "think")
        out.append({"question": row["question"], "response": hybrid_response(row, mode, think_tag, no_think_tag),
                    "target_mode": mode, "answer": row["answer"], "kind": row["kind"], "keywords": row["keywords"]})
    return out


__all__ = ["KINDS", "hybrid_response", "make_hybrid", "make_hybrid_sft"]
