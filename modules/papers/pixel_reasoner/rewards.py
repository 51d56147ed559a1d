r"""Pixel Reasoner's rewards (spec 2(b)): answer correctness, RaPR, the curiosity bonus and the efficiency penalty.

The shaped reward of a rollout y of prompt x, in its group of G rollouts:

    r'(x, y) = r(x, y) + alpha * r_curiosity(x, y) + beta * r_penalty(y)              [page]

the Lagrangian relaxation of the constraints RaPR(x) >= H and n_vo(y) <= N. The terms, in two forms:

- ``r`` (`pixel_answer`) [repo]: 1 when the last ``\boxed{}`` matches the gold answer, else 0; forced to 0 when
  the rollout's last visual operation errored and no later one succeeded (``last_tool_error``).
- RaPR (`rapr`) [repo]: ``mean_i 1[n_vo(y_i) > 0]`` over the group, n_vo counting every call, failed ones too.
- curiosity (`curiosity_bonus`), for rollouts that use at least one operation, 0 for the others:
  paper form [unverified per-term form]: ``alpha * max(H - RaPR, 0)``;
  code form [repo ``experience_maker.py``]: ``alpha * max(H - RaPR, 0) / (d * RaPR)`` with d = 2 for an image
  question and d = 1.5 for a video; the repo writes it ``(max(0.3 - RaPR, 0) / d) / RaPR * 0.25``, i.e.
  alpha = 0.25. Note the extra 1 / (d * RaPR), absent from the paper form.
- efficiency penalty (`efficiency_penalty`):
  paper form [unverified per-term form]: ``beta * min(N - n_vo, 0)`` (0 up to N operations, -beta per extra one);
  code form [repo]: ``-beta * (n_vo - N)`` for rollouts with n_vo > 0, 0 for the others (the repo writes
  ``-0.05 * (ncall - 1)``, N = 1). The forms agree for N = 1; with N > 1 the code form *rewards* a rollout with
  0 < n_vo < N.

Defaults: H = 0.3, N = 1, beta = 0.05 [repo]; alpha = 0.25 in the code form [repo]. The spec records no alpha for
the paper form: 0.5 is our choice [unverified], which gives the code form's image bonus at RaPR = 0.25 (both
0.025). `group_modifiers` sums the two terms per rollout (what is added to ``r``); `pixel_shaping` is the same as a
registered reward function that groups the batch by ``group_ids``.

Not reproduced: the repo reads the "final call errored" flag at the rollout's index *within its group*
(``final_error_flags[iidx]``), so for every group but the first it reads another rollout's flag; `pixel_answer`
reads each rollout's own flag, as the spec describes.
"""

from __future__ import annotations

import math
import re
from typing import Any

from modules.rewards.accuracy import extract_boxed, normalize_text
from modules.rewards.registry import completion_text, register_reward

FORMS = ("paper", "code")
H_TARGET = 0.3
"""H, the target RaPR [repo]."""
N_OPS = 1
"""N, the number of visual operations allowed before the penalty [repo]."""
BETA = 0.05
"""beta, the penalty's weight [repo]."""
ALPHA = {"paper": 0.5, "code": 0.25}
"""alpha, the curiosity weight: code form 0.25 [repo]; paper form 0.5 [unverified: the spec records no value]."""
CODE_DIVISOR = {"image": 2.0, "video": 1.5}
"""d in the code form's curiosity, by question kind [repo]."""

_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mathbf|texttt)\{(.*)\}$", re.DOTALL)


# ---- answer correctness --------------------------------------------------------------------------------

def normalize_answer(text: Any) -> str:
    r"""The comparison form of an answer: ``$`` and quotes stripped, one ``\text{}`` (``\mathrm``, ``\textbf``,
    ``\mathbf``, ``\texttt``) unwrapped, whitespace collapsed, case folded, trailing periods dropped.

    >>> normalize_answer(r" \text{ A } "), normalize_answer("'7'"), normalize_answer("$x$.")
    ('a', '7', 'x')
    """
    text = str(text).strip().rstrip(".").strip().strip("$").strip()
    found = _WRAPPER.match(text)
    if found:
        text = found.group(1)
    return normalize_text(text.strip().strip("'\"`"))


@register_reward("pixel_answer")
def pixel_answer(prompts: list, completions: list, answer: list | None = None,
                 last_tool_error: list | None = None, **kwargs: Any) -> list[float | None]:
    r"""r(x, y) [repo]: 1.0 when the last ``\boxed{}`` equals the gold ``answer`` after `normalize_answer` (case
    and whitespace), else 0.0 (also without a box); 0.0 when ``last_tool_error`` is true for the row (the last
    visual operation errored and was never fixed); None where the gold is None. `last_tool_error` is the engine's
    per-row column; without it no row is forced to 0.

    >>> pixel_answer(None, [r"\boxed{ k }", r"\boxed{K}", r"\boxed{7}", "K"], answer=["K", "K", "K", "K"],
    ...              last_tool_error=[False, True, False, False])
    [1.0, 0.0, 0.0, 0.0]
    """
    if answer is None:
        raise ValueError(f"pixel_answer needs the per-row column 'answer'; got columns {sorted(kwargs)}")
    if last_tool_error is None:
        last_tool_error = [False] * len(completions)
    if not len(completions) == len(answer) == len(last_tool_error):
        raise ValueError(f"pixel_answer: {len(completions)} completions, {len(answer)} answers and "
                         f"{len(last_tool_error)} last_tool_error values; give one per row")
    out: list[float | None] = []
    for completion, gold, errored in zip(completions, answer, last_tool_error):
        if gold is None:
            out.append(None)
            continue
        boxed = extract_boxed(completion_text(completion))
        correct = boxed is not None and normalize_answer(boxed) == normalize_answer(gold)
        out.append(1.0 if correct and not errored else 0.0)
    return out


# ---- group-level terms ---------------------------------------------------------------------------------

def _values(x: Any, name: str) -> list:
    """A (G,) tensor, array or sequence as a Python list, or ValueError when it is not one-dimensional."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if not isinstance(x, (list, tuple)) or any(isinstance(v, (list, tuple)) for v in x):
        raise ValueError(f"{name} must be one value per rollout of the group, shape (G,); got {x!r}")
    return list(x)


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form={form!r}; use one of {FORMS} (paper: the paper's per-term form, code: the released "
                         "code's)")


def rapr(used_tool: Any, correct: Any = None) -> float:
    """RaPR(x), the group's rate of pixel-space reasoning [repo]: the fraction of the G rollouts that used at least
    one visual operation. `used_tool` (G,) bool: ``tool_calls > 0`` (failed calls count, as in the repo).
    `correct` (G,) is optional and only checked for length: the spec's RaPR does not depend on correctness (the
    repo computes "has a correct answer without tools" from it, for logging only).

    >>> rapr([True, False, False, True]), rapr([0, 0, 0, 1], correct=[1, 1, 0, 0])
    (0.5, 0.25)
    """
    used = _values(used_tool, "used_tool")
    if not used:
        raise ValueError("rapr: used_tool is empty; a group has at least one rollout")
    if correct is not None and len(_values(correct, "correct")) != len(used):
        raise ValueError(f"rapr: {len(used)} used_tool values but {len(_values(correct, 'correct'))} correct values")
    return sum(1.0 for u in used if u) / len(used)


def curiosity_bonus(used_tool: Any, *, form: str = "paper", H: float = H_TARGET, alpha: float | None = None,
                    video: bool = False) -> list[float]:
    """alpha * r_curiosity per rollout, shape (G,), from `used_tool` (G,) bool; 0 for rollouts without tools.

    paper [unverified per-term form]: ``alpha * max(H - RaPR, 0)``; code [repo]: ``alpha * max(H - RaPR, 0) /
    (d * RaPR)``, d = 1.5 when `video` else 2. `alpha` None = `ALPHA[form]` (0.5 paper, 0.25 code).

    >>> [round(v, 6) for v in curiosity_bonus([1, 0, 0, 0])]             # RaPR 0.25: 0.5 * 0.05
    [0.025, 0.0, 0.0, 0.0]
    >>> [round(v, 6) for v in curiosity_bonus([1, 0, 0, 0], form="code", video=True)]  # 0.25 * 0.05 / 0.375
    [0.033333, 0.0, 0.0, 0.0]
    """
    _check_form(form)
    used = [bool(u) for u in _values(used_tool, "used_tool")]
    alpha = ALPHA[form] if alpha is None else alpha
    if not (math.isfinite(alpha) and 0.0 <= H <= 1.0):
        raise ValueError(f"curiosity_bonus: alpha={alpha} must be finite and H={H} in [0, 1]")
    rate = rapr(used)
    gap = max(H - rate, 0.0)
    if rate == 0.0:  # nobody used a tool: no rollout earns the bonus (and the code form's 1 / RaPR is undefined)
        return [0.0] * len(used)
    term = alpha * gap if form == "paper" else alpha * gap / (CODE_DIVISOR["video" if video else "image"] * rate)
    return [term if u else 0.0 for u in used]


def efficiency_penalty(n_calls: Any, *, form: str = "paper", N: int = N_OPS, beta: float = BETA) -> list[float]:
    """beta * r_penalty per rollout, shape (G,), from `n_calls` (G,) int (visual operations made, failed included).

    paper [unverified per-term form]: ``beta * min(N - n, 0)``; code [repo]: ``-beta * (n - N)`` when n > 0, else 0.

    >>> efficiency_penalty([0, 1, 3])
    [0.0, 0.0, -0.1]
    >>> efficiency_penalty([0, 1, 3], N=2), efficiency_penalty([0, 1, 3], form="code", N=2)
    ([0.0, 0.0, -0.05], [0.0, 0.05, -0.05])
    """
    _check_form(form)
    counts = _values(n_calls, "n_calls")
    if not math.isfinite(beta) or N < 0:
        raise ValueError(f"efficiency_penalty: beta={beta} must be finite and N={N} >= 0")
    if form == "paper":
        return [beta * min(N - n, 0) + 0.0 for n in counts]
    return [-beta * (n - N) + 0.0 if n > 0 else 0.0 for n in counts]


def group_modifiers(used_tool: Any, n_calls: Any, correct: Any = None, *, form: str = "paper", H: float = H_TARGET,
                    N: int = N_OPS, alpha: float | None = None, beta: float = BETA, video: bool = False
                    ) -> list[float]:
    """Each rollout's additive reward modifier for one group of G: ``curiosity_bonus + efficiency_penalty``, (G,).

    `used_tool` (G,) bool (``tool_calls > 0``), `n_calls` (G,) int, `correct` (G,) optional (checked for length
    only: neither form's modifier depends on correctness; the repo adds it to every rollout that used a tool,
    correct or not). Options as in `curiosity_bonus` and `efficiency_penalty`.

    >>> [round(v, 4) for v in group_modifiers([1, 0, 0, 0], [2, 0, 0, 0], [1, 1, 0, 0])]  # 0.025 - 0.05
    [-0.025, 0.0, 0.0, 0.0]
    """
    used, counts = _values(used_tool, "used_tool"), _values(n_calls, "n_calls")
    if len(used) != len(counts) or (correct is not None and len(_values(correct, "correct")) != len(used)):
        raise ValueError(f"group_modifiers: used_tool, n_calls and correct must have one value per rollout; got "
                         f"{len(used)}, {len(counts)} and {None if correct is None else len(_values(correct, 'c'))}")
    bonus = curiosity_bonus(used, form=form, H=H, alpha=alpha, video=video)
    penalty = efficiency_penalty(counts, form=form, N=N, beta=beta)
    return [b + p for b, p in zip(bonus, penalty)]


@register_reward("pixel_shaping")
def pixel_shaping(prompts: list, completions: list, tool_calls: list | None = None, group_ids: list | None = None,
                  kind: list | None = None, *, form: str = "paper", H: float = H_TARGET, N: int = N_OPS,
                  alpha: float | None = None, beta: float = BETA, **kwargs: Any) -> list[float]:
    """`group_modifiers` as a reward function: rows grouped by ``group_ids`` (the trainer's column; without it the
    whole batch is one group), ``tool_calls`` the engine's per-row count, ``kind`` "video" rows use the video
    divisor in the code form. Give it weight 1 beside ``pixel_answer`` for the full r'.

    >>> [round(v, 6) for v in pixel_shaping(None, [""] * 4, tool_calls=[1, 0, 0, 0], group_ids=[0, 0, 0, 0])]
    [0.025, 0.0, 0.0, 0.0]
    """
    if tool_calls is None:
        raise ValueError("pixel_shaping needs the per-row column 'tool_calls' (added by the multi-turn engine); got "
                         f"columns {sorted(kwargs)}")
    group_ids = [0] * len(tool_calls) if group_ids is None else list(group_ids)
    kind = [None] * len(tool_calls) if kind is None else list(kind)
    if not len(completions) == len(tool_calls) == len(group_ids) == len(kind):
        raise ValueError(f"pixel_shaping: {len(completions)} completions but {len(tool_calls)} tool_calls, "
                         f"{len(group_ids)} group_ids and {len(kind)} kind values")
    members: dict[Any, list[int]] = {}
    for i, gid in enumerate(group_ids):
        members.setdefault(gid, []).append(i)
    out = [0.0] * len(tool_calls)
    for rows in members.values():
        counts = [int(tool_calls[i]) for i in rows]
        values = group_modifiers([c > 0 for c in counts], counts, form=form, H=H, N=N, alpha=alpha, beta=beta,
                                 video=kind[rows[0]] == "video")
        for i, v in zip(rows, values):
            out[i] = v
    return out
