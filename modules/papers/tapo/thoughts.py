"""The thought library of TAPO (Wu et al., arXiv 2505.15692, spec section 7): reasoning actions, templates indexed
by problem condition complexity (PCC), retrieval and adaptive selection, the guided prompt, per-template statistics.

A template is a short sequence of high-level actions (`ACTIONS`). The paper builds its library offline: MCTS over
500 seed problems, the action sequences of successful search paths abstracted into templates, each indexed by the
PCC of the problems it solved [2nd]. MCTS itself is out of scope here: `DEFAULT_LIBRARY` is a small hand-written
library, `load_library` reads your own (JSON or dicts), and `build_library_from_solutions` does the abstraction
step from (action sequence, problem, correct) records that any search of yours produced.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The action set (spec 7a). Descriptions are ours and hold no digits (they may be forced into a completion).
ACTIONS: dict[str, str] = {
    "SA": "Analyse the problem: list the given quantities, the conditions linking them and what is asked.",
    "DC": "Divide and conquer: split the problem into smaller sub-problems, solve each, then combine the results.",
    "OST": "Make one focused deduction that moves directly to the next needed result.",
    "CoT": "Reason step by step, writing down every intermediate result.",
    "SR": "Reflect: re-read the question, check each result and fix any mistake before answering.",
}
ACTION_NAMES = {
    "SA": "system analysis", "DC": "divide and conquer", "OST": "one-step thought", "CoT": "chain of thought",
    "SR": "self-reflection",
}
SELECTION_MODES = ("pcc", "ucb", "uniform")
PROMPT_HEADER = "Follow these high-level steps:"
COMPLETION_HEADER = "I will follow these high-level steps:"  # forced plan at the start of a completion
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
_QUANTITY = re.compile(r"\d+(?:[.,]\d+)*")


@dataclass(frozen=True)
class ThoughtTemplate:
    """A reusable reasoning pattern: `actions` (keys of `ACTIONS`) for problems of complexity about `pcc`."""

    name: str
    actions: tuple[str, ...]
    pcc: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"template name {self.name!r}: use letters, digits, '_' or '-' (it becomes a metric key)")
        if not self.actions:
            raise ValueError(f"template {self.name!r}: actions is empty; give a sequence of {list(ACTIONS)}")
        bad = [a for a in self.actions if a not in ACTIONS]
        if bad:
            raise ValueError(f"template {self.name!r}: unknown action(s) {bad}; use {list(ACTIONS)}")
        if isinstance(self.pcc, bool) or not isinstance(self.pcc, (int, float)) or not self.pcc >= 0:
            raise ValueError(f"template {self.name!r}: pcc={self.pcc!r} must be a number >= 0")
        object.__setattr__(self, "actions", tuple(self.actions))

    def steps(self) -> list[str]:
        """The action descriptions, in order."""
        return [ACTIONS[a] for a in self.actions]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "actions": list(self.actions), "pcc": self.pcc}


# Hand-written default library: longer, more careful patterns for problems with more given conditions.
DEFAULT_LIBRARY: tuple[ThoughtTemplate, ...] = (
    ThoughtTemplate("one_step", ("OST",), 1),
    ThoughtTemplate("step_by_step", ("CoT",), 2),
    ThoughtTemplate("analyse_solve", ("SA", "CoT"), 3),
    ThoughtTemplate("solve_check", ("CoT", "SR"), 3),
    ThoughtTemplate("analyse_stepwise_check", ("SA", "OST", "SR"), 4),
    ThoughtTemplate("analyse_divide_solve", ("SA", "DC", "CoT"), 4),
    ThoughtTemplate("analyse_divide_solve_check", ("SA", "DC", "CoT", "SR"), 5),
)


# ------------------------------------------------------------------------------------------ library I/O
def load_library(source: str | Path | Sequence[Mapping[str, Any] | ThoughtTemplate] | None = None
                 ) -> list[ThoughtTemplate]:
    """Templates from `source`: None = `DEFAULT_LIBRARY`; a `.json` path holding a list of
    `{name, actions, pcc}` (or `{"templates": [...]}`); or such a list of dicts / templates.

    >>> [t.name for t in load_library([{"name": "check", "actions": ["CoT", "SR"], "pcc": 3}])]
    ['check']
    """
    if source is None:
        return list(DEFAULT_LIBRARY)
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(f"library={str(source)!r} is not a file; give a .json list of {{name, actions, pcc}}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"library={str(source)!r} is not valid JSON ({err})") from None
        source = data.get("templates") if isinstance(data, dict) else data
        if not isinstance(source, list):
            raise ValueError(f"library={str(path)!r} must hold a list of templates or {{'templates': [...]}}")
    out = []
    for i, item in enumerate(source):
        if isinstance(item, ThoughtTemplate):
            out.append(item)
            continue
        if not isinstance(item, Mapping) or not {"name", "actions", "pcc"} <= set(item):
            raise ValueError(f"library entry {i} must be a dict with name, actions and pcc; got {item!r}")
        actions = item["actions"]
        out.append(ThoughtTemplate(item["name"], tuple([actions] if isinstance(actions, str) else actions),
                                   item["pcc"]))
    if not out:
        raise ValueError("the thought library is empty; give at least one template")
    names = [t.name for t in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"the thought library repeats template name(s) {dupes}; names must be unique")
    return out


def build_library_from_solutions(solutions: Iterable[Mapping[str, Any]], *, min_successes: int = 1
                                 ) -> list[ThoughtTemplate]:
    """Abstract solved action sequences into templates (the step after the paper's MCTS, which is not included).

    Each record: `actions` (list of action keys), the problem's PCC as `pcc` or a `question` text (PCC counted
    with `problem_condition_complexity`), and `correct` (default True). Every distinct action sequence with at
    least `min_successes` correct records becomes a template named by its actions, indexed by the mean PCC of the
    problems it solved. Sorted by (pcc, name).

    >>> lib = build_library_from_solutions([
    ...     {"actions": ["SA", "CoT"], "pcc": 2}, {"actions": ["SA", "CoT"], "pcc": 4},
    ...     {"actions": ["OST"], "question": "What is 2 + 3?", "correct": True},
    ...     {"actions": ["DC"], "pcc": 5, "correct": False}])
    >>> [(t.name, t.pcc) for t in lib]
    [('ost', 2.0), ('sa_cot', 3.0)]
    """
    solved: dict[tuple[str, ...], list[float]] = {}
    for i, rec in enumerate(solutions):
        if "actions" not in rec or not ("pcc" in rec or "question" in rec):
            raise ValueError(f"solution {i} needs 'actions' and 'pcc' or 'question'; got keys {sorted(rec)}")
        if not rec.get("correct", True):
            continue
        pcc = float(rec["pcc"]) if "pcc" in rec else float(problem_condition_complexity(rec["question"]))
        solved.setdefault(tuple(rec["actions"]), []).append(pcc)
    out = [ThoughtTemplate("_".join(a.lower() for a in actions), actions, sum(pccs) / len(pccs))
           for actions, pccs in solved.items() if len(pccs) >= min_successes]
    return sorted(out, key=lambda t: (t.pcc, t.name))


def save_library(templates: Sequence[ThoughtTemplate], path: str | Path) -> Path:
    """Write templates as the JSON `load_library` reads."""
    path = Path(path)
    path.write_text(json.dumps([t.to_dict() for t in templates], indent=2), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------- PCC and retrieval
def problem_condition_complexity(question: str) -> int:
    """PCC of a question: the number of given quantities (numbers written in the text) [CPU substitute, spec 7e].

    >>> problem_condition_complexity("Ava has 12 apples, buys 5 more and gives 3 to Ben. How many are left?")
    3
    """
    return len(_QUANTITY.findall(question))


def pcc_similarity(a: float, b: float) -> float:
    """Similarity of two PCC values, 1 / (1 + |a - b|), in (0, 1].

    >>> pcc_similarity(3, 5)
    0.3333333333333333
    """
    return 1.0 / (1.0 + abs(float(a) - float(b)))


def retrieve_by_pcc(pcc: float, library: Sequence[ThoughtTemplate], top_k: int | None = None) -> list[int]:
    """Indices of the `top_k` templates closest in PCC to `pcc` (ties keep library order); None = all, ranked.

    >>> lib = load_library([{"name": n, "actions": ["CoT"], "pcc": p} for n, p in [("a", 1), ("b", 3), ("c", 4)]])
    >>> retrieve_by_pcc(3.4, lib, 2)
    [1, 2]
    """
    ranked = sorted(range(len(library)), key=lambda i: (abs(library[i].pcc - pcc), i))
    return ranked if top_k is None else ranked[:max(1, int(top_k))]


def ucb_score(successes: float, trials: float, total_trials: float, *, prior: float, prior_strength: float = 2.0,
              exploration: float = 1.0) -> float:
    """Adaptive score of a template: the success rate smoothed towards `prior` (the PCC similarity) with
    `prior_strength` pseudo-trials, plus a UCB1 bonus `exploration * sqrt(ln(1 + total) / (1 + trials))`.

    >>> ucb_score(0, 0, 0, prior=0.5)
    0.5
    >>> round(ucb_score(3, 4, 10, prior=0.5), 4)  # (3 + 1) / (4 + 2) + sqrt(ln 11 / 5)
    1.3592
    """
    mean = (successes + prior_strength * prior) / (trials + prior_strength) if trials + prior_strength > 0 else prior
    return mean + exploration * math.sqrt(math.log1p(total_trials) / (1.0 + trials))


def select_templates(pcc: float, library: Sequence[ThoughtTemplate], n: int, *, mode: str = "pcc",
                     top_k: int | None = None, stats: "TemplateStats | None" = None, rng: random.Random | None = None,
                     prior_strength: float = 2.0, exploration: float = 1.0) -> list[int]:
    """`n` template indices for a question of complexity `pcc`, chosen among the `top_k` closest by PCC.

    - ``pcc``: drawn without replacement with probability proportional to `pcc_similarity` (the spec's
      retrieval by PCC, randomised so a group sees several close templates);
    - ``ucb``: the highest `ucb_score` from the observed (successes, uses) in `stats`, PCC similarity as prior;
    - ``uniform``: drawn uniformly (an ablation; with `top_k` None, over the whole library).
    When `n` exceeds the candidates, the choice starts over (templates repeat).

    >>> lib = load_library([{"name": n, "actions": ["CoT"], "pcc": p} for n, p in [("a", 1), ("b", 3), ("c", 5)]])
    >>> select_templates(3, lib, 2, mode="ucb", top_k=2)
    [1, 0]
    """
    if mode not in SELECTION_MODES:
        raise ValueError(f"selection={mode!r}; use one of {', '.join(SELECTION_MODES)}")
    rng = rng or random.Random(0)
    candidates = retrieve_by_pcc(pcc, library, top_k)
    out: list[int] = []
    if mode == "ucb":
        stats = stats or TemplateStats()
        total = stats.total_uses
        score = {i: ucb_score(stats.successes(library[i].name), stats.uses(library[i].name), total,
                              prior=pcc_similarity(pcc, library[i].pcc), prior_strength=prior_strength,
                              exploration=exploration) for i in candidates}
        ranked = sorted(candidates, key=lambda i: -score[i])  # stable: ties keep the PCC ranking
        while len(out) < n:
            out += ranked[:n - len(out)]
        return out
    while len(out) < n:
        pool = list(candidates)
        weights = [pcc_similarity(pcc, library[i].pcc) if mode == "pcc" else 1.0 for i in pool]
        while pool and len(out) < n:
            j = rng.choices(range(len(pool)), weights=weights)[0]
            out.append(pool.pop(j))
            weights.pop(j)
    return out


# ------------------------------------------------------------------------------------------------- prompts
def guidance_text(template: ThoughtTemplate, *, header: str = PROMPT_HEADER, numbered: bool = True) -> str:
    """The template as instructions: `header` then one line per action ("1. ..." or "- ...").

    >>> print(guidance_text(load_library([{"name": "x", "actions": ["SA", "SR"], "pcc": 2}])[0], numbered=False))
    Follow these high-level steps:
    - Analyse the problem: list the given quantities, the conditions linking them and what is asked.
    - Reflect: re-read the question, check each result and fix any mistake before answering.
    """
    lines = [f"{k}. {s}" if numbered else f"- {s}" for k, s in enumerate(template.steps(), start=1)]
    return "\n".join([header, *lines])


def guided_prompt(prompt: str | list[dict], template: ThoughtTemplate, *, header: str = PROMPT_HEADER
                  ) -> str | list[dict]:
    """The prompt with the template's steps appended (spec 7d); chat prompts get them in the last user message.

    >>> guided_prompt("What is 2 + 3?", DEFAULT_LIBRARY[0]).splitlines()[-1]
    '1. Make one focused deduction that moves directly to the next needed result.'
    """
    guide = guidance_text(template, header=header)
    if isinstance(prompt, str):
        return f"{prompt}\n\n{guide}"
    messages = [dict(m) for m in prompt]
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise ValueError("a chat prompt without a user message cannot take a thought template")
    messages[users[-1]]["content"] = f"{messages[users[-1]]['content']}\n\n{guide}"
    return messages


# ---------------------------------------------------------------------------------------------- statistics
class TemplateStats:
    """Per-template usage count, reward sum and success count (kept across steps and checkpoints).

    >>> s = TemplateStats(); s.update("a", 1.0, True); s.update("a", 0.0, False)
    >>> s.uses("a"), s.mean_reward("a"), s.success_rate("a"), s.uses("b"), s.mean_reward("b")
    (2, 0.5, 0.5, 0, 0.0)
    """

    def __init__(self) -> None:
        self._stats: dict[str, list[float]] = {}  # name -> [uses, reward_sum, successes]

    def update(self, name: str, reward: float, success: bool) -> None:
        entry = self._stats.setdefault(name, [0, 0.0, 0])
        entry[0] += 1
        entry[1] += float(reward)
        entry[2] += int(bool(success))

    def uses(self, name: str) -> int:
        return int(self._stats.get(name, (0, 0.0, 0))[0])

    def successes(self, name: str) -> int:
        return int(self._stats.get(name, (0, 0.0, 0))[2])

    def mean_reward(self, name: str) -> float:
        uses, total, _ = self._stats.get(name, (0, 0.0, 0))
        return total / uses if uses else 0.0

    def success_rate(self, name: str) -> float:
        uses, _, wins = self._stats.get(name, (0, 0.0, 0))
        return wins / uses if uses else 0.0

    @property
    def total_uses(self) -> int:
        return int(sum(v[0] for v in self._stats.values()))

    def metrics(self, names: Iterable[str], prefix: str = "tapo/template") -> dict[str, float]:
        """{prefix/<name>/uses|reward|success: ...} for every name (zeros before a template's first use)."""
        out = {}
        for name in names:
            out.update({f"{prefix}/{name}/uses": float(self.uses(name)),
                        f"{prefix}/{name}/reward": self.mean_reward(name),
                        f"{prefix}/{name}/success": self.success_rate(name)})
        return out

    def state_dict(self) -> dict[str, dict[str, float]]:
        return {k: {"uses": int(v[0]), "reward_sum": float(v[1]), "successes": int(v[2])}
                for k, v in self._stats.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, float]]) -> None:
        self._stats = {k: [int(v["uses"]), float(v["reward_sum"]), int(v["successes"])] for k, v in state.items()}
