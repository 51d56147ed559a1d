"""Synthetic "teacher" reasoning traces for arithmetic: the CPU stand-in for distillation data.

"Not All Correct Answers Are Equal" (arXiv 2505.14464) answers the same queries with several teachers and
trains one student per teacher. Here deterministic programs play the teachers. Every teacher answers every
query, in the paper's format `<think> reasoning </think> <answer> answer </answer>` with the answer in
`\\boxed{}`. The teachers differ in length profile and noise:

- `adaptive`: clean and consistently worded; detail adapts to difficulty (one line without carries, column
  steps and a check with them), so lengths spread widely. It plays the role of AM-Thinking-v1.
- `templated`: one verbose template for every query (narrow length spread); a few wrong, looping or malformed
  traces. It plays the role of Qwen3-235B-A22B.
- `noisy`: hesitations and varied phrasing, and more wrong, looping and malformed traces. It plays the
  role of DeepSeek-R1.

Flawed traces exist so that the verification filters have work to do. Each row's `flaw` column records what
was injected: `none`, `wrong` (wrong final answer), `loop` (a step repeated many times) or `malformed` (a
missing `</think>` or a missing `<answer>` part).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from datamodules.errors import DataConfigError
from datamodules.tasks.arithmetic import make_arithmetic

PROMPT_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."
FLAWS = ("none", "wrong", "loop", "malformed")


@dataclass(frozen=True)
class TeacherProfile:
    """How a synthetic teacher writes: style, and the rate of each injected flaw."""

    style: str
    wrong_rate: float = 0.0
    loop_rate: float = 0.0
    malformed_rate: float = 0.0


TEACHERS: dict[str, TeacherProfile] = {
    "adaptive": TeacherProfile("adaptive", wrong_rate=0.03),
    "templated": TeacherProfile("templated", wrong_rate=0.08, loop_rate=0.05, malformed_rate=0.03),
    "noisy": TeacherProfile("noisy", wrong_rate=0.15, loop_rate=0.10, malformed_rate=0.08),
}


def _digits(x: int) -> list[int]:
    return [int(c) for c in str(abs(x))][::-1]  # ones first


def _column_steps(a: int, b: int, op: str) -> list[str]:
    """Written-arithmetic steps for a (non-negative) `a op b`, ones column first."""
    if op == "*":
        tens, ones = divmod(b, 10)
        if tens == 0 or ones == 0:
            return [f"{a} * {b} = {a * b}."]
        return [f"Split {b} = {tens * 10} + {ones}.", f"{a} * {tens * 10} = {a * tens * 10}.",
                f"{a} * {ones} = {a * ones}.", f"{a * tens * 10} + {a * ones} = {a * b}."]
    big, small = (a, b) if op == "+" or a >= b else (b, a)
    xs, ys = _digits(big), _digits(small)
    steps, carry = [], 0
    names = ["ones", "tens", "hundreds", "thousands"]
    for i, x in enumerate(xs):
        y = ys[i] if i < len(ys) else 0
        name = names[i] if i < len(names) else f"10^{i}"
        if op == "+":
            total = x + y + carry
            extra = f" + {carry}" if carry else ""
            carry = total // 10
            note = ", write down {} and carry 1".format(total % 10) if carry else ""
            steps.append(f"{name}: {x} + {y}{extra} = {total}{note}.")
        else:
            x_eff = x - carry
            borrow = 1 if x_eff < y else 0
            value = x_eff + 10 * borrow - y
            note = f", borrowing 1 makes it {x_eff + 10}" if borrow else ""
            steps.append(f"{name}: {x_eff} - {y}{note}, giving {value}.")
            carry = borrow
    if op == "+" and carry:
        steps.append("the final carry 1 goes in front.")
    return steps


def _hard(a: int, b: int, op: str) -> bool:
    """Whether the problem needs a carry, a borrow or a two-step product."""
    if op == "*":
        return b >= 10 and b % 10 != 0
    xs, ys = _digits(max(a, b)), _digits(min(a, b))
    ys = ys + [0] * (len(xs) - len(ys))
    if op == "+":
        return any(x + y >= 10 for x, y in zip(xs, ys))  # a carry starts only where a column overflows
    return any(x < y for x, y in zip(xs, ys))


def _adaptive(a: int, b: int, op: str, result: int, rng: random.Random) -> list[str]:
    if not _hard(a, b, op):
        return [f"{a} {op} {b} = {result}."]
    lines = [f"Compute {a} {op} {b} column by column."] if op != "*" else [f"Compute {a} * {b}."]
    lines += [s[0].upper() + s[1:] for s in _column_steps(a, b, op)]
    if op == "-" and a < b:
        lines.append(f"{b} - {a} = {b - a}, and {a} < {b}, so {a} - {b} = {result}.")
    else:
        lines.append(f"So {a} {op} {b} = {result}.")
    check = {"+": f"{result} - {b} = {a}", "-": f"{result} + {b} = {a}", "*": f"{result} / {b} = {a}"}[op]
    lines.append(f"Check: {check}.")
    return lines


def _templated(a: int, b: int, op: str, result: int, rng: random.Random) -> list[str]:
    word = {"+": "sum", "-": "difference", "*": "product"}[op]
    check = {"+": f"{result} - {b} = {a}", "-": f"{result} + {b} = {a}", "*": f"{result} / {b} = {a}"}[op]
    return [f"Okay, so I need to find the {word} {a} {op} {b}. Let me work through this step by step.",
            f"First, I write down {a} and {b}. Then I compute {a} {op} {b} carefully.",
            f"{a} {op} {b} = {result}.",
            f"Let me double-check that: {check}. Yes, that is right.",
            f"Therefore, the final answer is {result}."]


_HESITATIONS = ("Hmm.", "Wait.", "Hmm, let me think.", "Okay.", "Right.", "Wait, let me see.")


def _noisy(a: int, b: int, op: str, result: int, rng: random.Random) -> list[str]:
    opener = rng.choice([f"Alright, {a} {op} {b}.", f"So the question is {a} {op} {b}.",
                         f"Let me figure out {a} {op} {b}.", f"We want {a} {op} {b}, okay."])
    lines = [opener]
    for step in _column_steps(a, b, op) if rng.random() < 0.6 else [f"{a} {op} {b} is {result}."]:
        if rng.random() < 0.5:
            lines.append(rng.choice(_HESITATIONS))
        lines.append(step[0].upper() + step[1:])
    if op == "-" and a < b:
        lines.append(f"Oh wait, {a} is smaller than {b}, so the result is negative: {result}.")
    lines.append(rng.choice([f"So that gives {result}.", f"I think it's {result}.", f"That makes {result}, I believe.",
                             f"Alternatively, estimating, {result} looks plausible. So {result}."]))
    return lines


_STYLES = {"adaptive": _adaptive, "templated": _templated, "noisy": _noisy}


def write_trace(a: int, b: int, op: str, result: int, style: str, rng: random.Random, *, flaw: str = "none") -> str:
    """One teacher response for `a op b` claiming `result`, in the given style, with the given flaw.

    >>> print(write_trace(12, 30, "+", 42, "adaptive", random.Random(0)))
    <think>
    12 + 30 = 42.
    </think>
    <answer>\\boxed{42}</answer>
    """
    if style not in _STYLES:
        raise DataConfigError(f"teacher style {style!r}; use one of {sorted(_STYLES)}")
    if flaw not in FLAWS:
        raise DataConfigError(f"flaw {flaw!r}; use one of {FLAWS}")
    lines = _STYLES[style](a, b, op, result, rng)
    if flaw == "loop":
        k = rng.randint(1, len(lines))
        lines[k:k] = [f"Wait, let me recompute {a} {op} {b} to be sure: it is {result}."] * rng.randint(8, 12)
    think = "\n".join(lines)
    answer = f"<answer>\\boxed{{{result}}}</answer>"
    if flaw == "malformed":
        if rng.random() < 0.5:
            return f"<think>\n{think}\n{answer}"  # the think part is never closed
        return f"<think>\n{think}\n</think>\nThe answer is {result}."  # no answer part
    return f"<think>\n{think}\n</think>\n{answer}"


def _wrong(result: int, rng: random.Random) -> int:
    return result + rng.choice([-10, -1, 1, 10])


def make_teacher_traces(
    n: int,
    *,
    teachers: Iterable[str] | dict[str, dict] = ("adaptive", "templated"),
    digits: int = 2,
    ops: Iterable[str] = ("+", "-", "*"),
    seed: int = 0,
    prompt_suffix: str = PROMPT_SUFFIX,
) -> list[dict]:
    """`n` arithmetic queries, each answered by every teacher: `n * len(teachers)` rows, teacher by teacher.

    Rows: `{"prompt", "response", "answer", "teacher", "flaw", "question", "a", "b", "op"}`. The queries (and
    so the prompts) are the same for every teacher, so a held-out split by prompt is the same for each.
    `teachers`: names from `TEACHERS`, or `{name: {style, wrong_rate, loop_rate, malformed_rate}}` for
    custom profiles. A teacher's traces depend only on (seed, teacher name, query), not on the other teachers.

    >>> rows = make_teacher_traces(2, teachers=["adaptive", "noisy"], seed=0)
    >>> [(r["teacher"], r["answer"]) for r in rows]
    [('adaptive', '122'), ('adaptive', '-32'), ('noisy', '122'), ('noisy', '-32')]
    """
    if isinstance(teachers, dict):
        profiles = {}
        for name, spec in teachers.items():
            try:
                profiles[name] = TeacherProfile(**dict(spec))
            except TypeError as err:
                raise DataConfigError(f"make_teacher_traces: teacher {name!r}: {err}; fields: style, wrong_rate, "
                                      "loop_rate, malformed_rate") from None
    else:
        names = list(teachers)
        unknown = [t for t in names if t not in TEACHERS]
        if unknown:
            raise DataConfigError(f"make_teacher_traces: unknown teacher(s) {unknown}; use {sorted(TEACHERS)} or "
                                  "give {name: {style, wrong_rate, loop_rate, malformed_rate}}")
        profiles = {t: TEACHERS[t] for t in names}
    if not profiles:
        raise DataConfigError("make_teacher_traces: teachers is empty; name at least one")
    queries = make_arithmetic(n, digits=digits, ops=ops, seed=seed)
    rows = []
    for name, profile in profiles.items():
        if profile.style not in _STYLES:
            raise DataConfigError(f"make_teacher_traces: teacher {name!r} has style {profile.style!r}; use one of "
                                  f"{sorted(_STYLES)}")
        rng = random.Random(f"teacher-traces:{seed}:{name}")
        for q in queries:
            a, b, op, gold = q["a"], q["b"], q["op"], int(q["answer"])
            u = rng.random()
            flaw = ("wrong" if u < profile.wrong_rate else
                    "loop" if u < profile.wrong_rate + profile.loop_rate else
                    "malformed" if u < profile.wrong_rate + profile.loop_rate + profile.malformed_rate else "none")
            claimed = _wrong(gold, rng) if flaw == "wrong" else gold
            response = write_trace(a, b, op, claimed, profile.style, rng, flaw=flaw)
            rows.append({"prompt": q["question"] + prompt_suffix, "response": response, "answer": q["answer"],
                         "teacher": name, "flaw": flaw, "question": q["question"], "a": a, "b": b, "op": op})
    return rows


__all__ = ["FLAWS", "PROMPT_SUFFIX", "TEACHERS", "TeacherProfile", "make_teacher_traces", "write_trace"]
