"""Mixture-of-Thought (Zheng, Chen, Han, McCoy, Huang; arXiv 2505.15817), spec section 4: three reasoning
modalities, their format checkers, the rationale filter of self-evolving training and majority-vote inference.

Modalities (spec 4(a)): `nl` (natural-language CoT), `code` (the problem as Python; spec: "it is not executed"),
`truth_table` (variables, one row per assignment with premise and conclusion values, rows violating a premise
pruned). The paper's prompts were not retrieved (NOT FOUND); the wording here is ours. Every rationale ends with
one line "Answer: (A) True" / "Answer: (B) False" / "Answer: (C) Uncertain" (a letter, a label, or both).

Formats (what `check_format` accepts):
    nl           reasoning text (>= `min_words` words), no code fence, no truth-table rows, then the answer line.
    code         exactly one ```python block that parses (`ast`, never run) and defines top-level functions
                 `premises(...)` and `conclusion(...)` over the same atom arguments; then the answer line.
    truth_table  a "Variables: p, q, r" line, rows "T F T | T T F | T" (atom values | premise values |
                 conclusion value, an optional note after), distinct assignments, at least one row keeping every
                 premise, and an answer equal to what the rows give.
With `problem` (a row of `datamodules.tasks.logic.make_logic`): code arguments must be the problem's atoms;
truth-table variables must be its atoms, the rows the full enumeration, and every cell the true value.

Code is never run in this process. `run_code_sandboxed` is the way to run it: `modules.sandbox.run_python`, OS
isolation (bubblewrap or unshare: no network, own PID namespace and /proc, read-only file system but a temporary
working directory, empty environment, rlimits, a timeout that kills every descendant); where no isolation works
it raises `modules.sandbox.SandboxUnavailable` unless `allow_unsandboxed=True`.
`filter_rationales(execute_code=True)` uses it to require the printed answer to equal the stated one (off by
default: the paper does not execute code).

Pure functions: `build_prompt`, `extract_answer`, `check_format` (+ per-modality checkers), `majority_vote`,
`filter_rationales`, `oracle_rationale`, `clean_completion`; rewards `mot_accuracy`, `mot_format`.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from typing import Any, Iterable, NamedTuple

from modules.papers.mot.logic import evaluate, label_from_rows, to_python, truth_table
from modules.rewards.registry import completion_text, register_reward
from modules.sandbox import SandboxResult, run_python

MODALITIES = ("nl", "code", "truth_table")
DEFAULT_PRIORITY = ("truth_table", "code", "nl")
CHOICES = {"A": "True", "B": "False", "C": "Uncertain"}
LETTERS = {label: letter for letter, label in CHOICES.items()}

FINAL_LINE = 'The last line must be "Answer: (A) True", "Answer: (B) False" or "Answer: (C) Uncertain".'
INSTRUCTIONS = {
    "nl": "Reason step by step in plain English (no code, no table): work out which situations the premises "
          "allow and whether the conclusion holds in them.",
    "code": "Translate the problem into Python in one ```python block: define premises(...) (True when every "
            "premise holds) and conclusion(...), both taking the atoms as booleans, then code that checks every "
            "assignment and prints the answer. The code is read, not run.",
    "truth_table": "Solve it with a truth table. Write \"Variables:\" and the atoms, then one row per assignment: "
                   "the atom values | each premise's value | the conclusion's value (T or F). Rows where every "
                   "premise is T are kept. The conclusion is True if it is T in every kept row, False if it is F "
                   "in every kept row, Uncertain otherwise.",
}
STOP_MARKERS = ("\nProblem:", "<modality>")

_ANSWER_LINE = re.compile(r"^\W*(?:final\s+)?answer\W*:\s*(.*)$", re.IGNORECASE)
_CHOICE = re.compile(r"^\(?([ABC])\)?(?:\s+(true|false|uncertain))?$", re.IGNORECASE)
_LABEL = re.compile(r"^(true|false|uncertain)$", re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)
_VARIABLES = re.compile(r"^\s*Variables\s*:\s*(.*)$", re.IGNORECASE)
_ROW = re.compile(r"^\s*([TF](?:[ \t]+[TF])*)[ \t]*\|[ \t]*([TF](?:[ \t]+[TF])*)[ \t]*\|[ \t]*([TF])\b(.*)$")


class Verdict(NamedTuple):
    """A format check result: `ok`, and `reason` (why not) when not ok."""

    ok: bool
    reason: str | None = None


def _bad(reason: str) -> Verdict:
    return Verdict(False, reason)


# ---------------------------------------------------------------------------------------------- prompts
def build_prompt(question: str, modality: str, examples: Iterable[tuple[str, str]] = ()) -> str:
    """The prompt for one (problem, modality): a `<modality>` tag, the instruction, optional few-shot
    (question, rationale) examples (round 0, spec 4(d)), then the problem. Zero-shot when `examples` is empty.

    >>> build_prompt("Q?", "nl").splitlines()[0]
    '<modality>nl</modality>'
    """
    _check_modality(modality)
    parts = [f"<modality>{modality}</modality>", f"{INSTRUCTIONS[modality]} {FINAL_LINE}", ""]
    for q, rationale in examples:
        parts += [f"Problem:\n{q}\nSolution:\n{rationale}", ""]
    parts.append(f"Problem:\n{question}\nSolution:")
    return "\n".join(parts)


def clean_completion(text: str) -> str:
    """Cut a sampled completion where a few-shot continuation starts (a new "Problem:" or modality tag); strip.

    >>> clean_completion("Answer: (A) True\\nProblem:\\nLet p ...")
    'Answer: (A) True'
    """
    cut = len(text)
    for marker in STOP_MARKERS:
        i = text.find(marker)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut].strip()


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"modality={modality!r}; use one of {', '.join(MODALITIES)}")


# ------------------------------------------------------------------------------------------------ answers
def normalize_label(value: Any) -> str | None:
    """"A"/"(A)"/"true"/True -> "True" (likewise B/False, C/Uncertain); anything else -> None.

    >>> normalize_label("(C)"), normalize_label("false"), normalize_label("maybe")
    ('Uncertain', 'False', None)
    """
    if isinstance(value, bool):
        return "True" if value else "False"
    if not isinstance(value, str):
        return None
    text = value.strip().strip("()").strip()
    if text.upper() in CHOICES and len(text) == 1:
        return CHOICES[text.upper()]
    return text.capitalize() if _LABEL.match(text) else None


def _parse_answer_payload(payload: str) -> tuple[str | None, str | None]:
    """(label, problem) of the text after "Answer:"; problem says why it is not a valid answer."""
    text = payload.strip().strip("*").strip().rstrip(".").strip()
    m = _CHOICE.match(text)
    if m:
        label = CHOICES[m.group(1).upper()]
        if m.group(2) and m.group(2).capitalize() != label:
            return None, f"the answer line says ({m.group(1).upper()}) but {m.group(2)}"
        return label, None
    if _LABEL.match(text):
        return text.capitalize(), None
    return None, f"the answer line {payload.strip()!r} is not (A), (B), (C), True, False or Uncertain"


def answer_lines(text: str) -> list[tuple[int, str | None, str | None]]:
    """Every "Answer: ..." line as (line index, label or None, problem or None)."""
    out = []
    for i, line in enumerate(text.splitlines()):
        m = _ANSWER_LINE.match(line)
        if m:
            out.append((i, *_parse_answer_payload(m.group(1))))
    return out


def extract_answer(text: str) -> str | None:
    """The label of the last valid answer line, or None.

    >>> extract_answer("p holds.\\nAnswer: (B) False")
    'False'
    """
    labels = [label for _, label, _ in answer_lines(text) if label is not None]
    return labels[-1] if labels else None


def answer_line(label: str) -> str:
    """The canonical final line.

    >>> answer_line("Uncertain")
    'Answer: (C) Uncertain'
    """
    return f"Answer: ({LETTERS[label]}) {label}"


def _final_answer(text: str) -> tuple[str | None, Verdict]:
    """The stated label when the text has exactly one answer line and it is the last non-empty line."""
    found = answer_lines(text)
    if not found:
        return None, _bad("no final 'Answer: (A|B|C)' line")
    if len(found) > 1:
        return None, _bad(f"{len(found)} answer lines; write exactly one, last")
    index, label, problem = found[0]
    if problem:
        return None, _bad(problem)
    lines = text.splitlines()
    if any(line.strip() for line in lines[index + 1:]):
        return None, _bad("text after the answer line")
    return label, Verdict(True)


# ---------------------------------------------------------------------------------------------- checkers
def check_nl(text: str, problem: dict | None = None, *, min_words: int = 5) -> Verdict:
    """Natural-language CoT: reasoning (>= `min_words` words), no code fence or table rows, one final answer line.

    >>> check_nl("Premise 2 says q, so p must hold too.\\nAnswer: (A) True")
    Verdict(ok=True, reason=None)
    >>> check_nl("Answer: (A)").reason
    'reasoning has 0 words (< 5)'
    """
    label, verdict = _final_answer(text)
    if not verdict.ok:
        return verdict
    if "```" in text:
        return _bad("a code block in a natural-language rationale")
    body = [line for line in text.splitlines() if not _ANSWER_LINE.match(line)]
    if any(_ROW.match(line) for line in body) or any(_VARIABLES.match(line) for line in body):
        return _bad("truth-table rows in a natural-language rationale")
    words = len(" ".join(body).split())
    if words < min_words:
        return _bad(f"reasoning has {words} words (< {min_words})")
    return Verdict(True)


def code_block(text: str) -> tuple[str | None, Verdict]:
    """The single ```python block of a code rationale (its source), or why there is none."""
    blocks = list(_FENCE.finditer(text))
    if not blocks:
        return None, _bad("no closed ```python block")
    if len(blocks) > 1:
        return None, _bad(f"{len(blocks)} code blocks; write exactly one")
    if blocks[0].group(1).lower() not in ("python", "py"):
        return None, _bad(f"the code block is tagged {blocks[0].group(1) or 'nothing'!r}, not python")
    return blocks[0].group(2), Verdict(True)


def check_code(text: str, problem: dict | None = None) -> Verdict:
    """Code CoT: one ```python block that parses and defines `premises(...)` and `conclusion(...)` over the same
    arguments (the problem's atoms when `problem` is given), followed by the answer line. Never executed.

    >>> check_code("```python\\ndef premises(p, q):\\n    return p or q\\n\\ndef conclusion(p, q):\\n    return p\\n"
    ...            "```\\nAnswer: (C) Uncertain")
    Verdict(ok=True, reason=None)
    """
    label, verdict = _final_answer(text)
    if not verdict.ok:
        return verdict
    code, verdict = code_block(text)
    if not verdict.ok:
        return verdict
    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        return _bad(f"the code does not parse: {err.msg} (line {err.lineno})")
    funcs = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    missing = [name for name in ("premises", "conclusion") if name not in funcs]
    if missing:
        return _bad(f"the code defines no top-level function(s) {missing}")
    args = {name: [a.arg for a in funcs[name].args.args] for name in ("premises", "conclusion")}
    if not args["premises"] or args["premises"] != args["conclusion"]:
        return _bad(f"premises{tuple(args['premises'])} and conclusion{tuple(args['conclusion'])} must take the "
                    "same atom arguments")
    if problem is not None and set(args["premises"]) != set(problem["atoms"]):
        return _bad(f"the functions take {args['premises']}, the problem's atoms are {list(problem['atoms'])}")
    return Verdict(True)


def parse_truth_table(text: str) -> dict[str, Any]:
    """{"variables": [...], "rows": [(assignment tuple of bools, premise values, conclusion value)]}; raises
    ValueError naming the problem.

    >>> parse_truth_table("Variables: p\\nT | F | T\\nF | T | F kept")["rows"]
    [((True,), (False,), True), ((False,), (True,), False)]
    """
    var_lines = [m.group(1) for m in map(_VARIABLES.match, text.splitlines()) if m]
    if len(var_lines) != 1:
        raise ValueError(f"{len(var_lines)} 'Variables:' lines; write exactly one")
    names = [v for v in re.split(r"[,\s]+", var_lines[0].strip().rstrip(".")) if v]
    if not names or not all(v.isidentifier() for v in names) or len(set(names)) != len(names):
        raise ValueError(f"bad variable list {var_lines[0].strip()!r}; list distinct atom names")
    rows = []
    for line in text.splitlines():
        m = _ROW.match(line)
        if not m:
            continue
        cells = [[c == "T" for c in part.split()] for part in m.group(1, 2, 3)]
        rows.append((tuple(cells[0]), tuple(cells[1]), cells[2][0]))
    if not rows:
        raise ValueError("no table rows ('T F | T T | F')")
    if any(len(r[0]) != len(names) for r in rows):
        raise ValueError(f"a row does not give exactly {len(names)} atom values")
    if len({len(r[1]) for r in rows}) != 1:
        raise ValueError("rows give different numbers of premise values")
    if len({r[0] for r in rows}) != len(rows):
        raise ValueError("an assignment appears twice")
    return {"variables": names, "rows": rows}


def check_truth_table(text: str, problem: dict | None = None) -> Verdict:
    """Truth-table CoT: variable list, rows, an answer equal to what the rows give; with `problem`, the rows must be
    the complete, correct table of its premises and conclusion (checked row by row).

    >>> check_truth_table("Variables: p\\nT | F | T\\nF | T | F\\nAnswer: (B) False")
    Verdict(ok=True, reason=None)
    >>> check_truth_table("Variables: p\\nT | F | T\\nF | T | F\\nAnswer: (A) True").reason
    'the kept rows give False, the answer says True'
    """
    label, verdict = _final_answer(text)
    if not verdict.ok:
        return verdict
    try:
        table = parse_truth_table(text)
    except ValueError as err:
        return _bad(str(err))
    rows = [{"kept": all(prem), "conclusion": concl} for _, prem, concl in table["rows"]]
    derived = label_from_rows(rows)
    if derived is None:
        return _bad("no row keeps every premise")
    if derived != label:
        return _bad(f"the kept rows give {derived}, the answer says {label}")
    if problem is None:
        return Verdict(True)
    return _verify_table(table, problem)


def _verify_table(table: dict[str, Any], problem: dict) -> Verdict:
    names, atoms, premises = table["variables"], list(problem["atoms"]), problem["premises"]
    if set(names) != set(atoms):
        return _bad(f"variables {names} are not the problem's atoms {atoms}")
    if len(table["rows"]) != 2 ** len(atoms):
        return _bad(f"{len(table['rows'])} rows; the full table has {2 ** len(atoms)}")
    for i, (values, prem, concl) in enumerate(table["rows"], start=1):
        assignment = dict(zip(names, values))
        cells = " ".join(f"{a}={'T' if v else 'F'}" for a, v in assignment.items())
        where = f"row {i} ({cells})"
        if len(prem) != len(premises):
            return _bad(f"{where} gives {len(prem)} premise values; the problem has {len(premises)}")
        for j, (stated, formula) in enumerate(zip(prem, premises), start=1):
            if stated != evaluate(formula, assignment):
                return _bad(f"{where}: premise {j} should be {'F' if stated else 'T'}, the table says "
                            f"{'T' if stated else 'F'}")
        if concl != evaluate(problem["conclusion"], assignment):
            return _bad(f"{where}: the conclusion should be {'F' if concl else 'T'}, the table says "
                        f"{'T' if concl else 'F'}")
    return Verdict(True)


CHECKERS = {"nl": check_nl, "code": check_code, "truth_table": check_truth_table}


def check_format(text: str, modality: str, problem: dict | None = None) -> Verdict:
    """Run the modality's checker (with row-level verification when `problem` has its formulas)."""
    _check_modality(modality)
    has_formulas = problem is not None and all(k in problem for k in ("atoms", "premises", "conclusion"))
    return CHECKERS[modality](text, problem if has_formulas else None)


# ---------------------------------------------------------------------------------------------- voting
def majority_vote(answers_by_modality: dict[str, str | None],
                  priority: tuple[str, ...] | list[str] = DEFAULT_PRIORITY) -> str | None:
    """ŷ = argmax_c Σ_m 1[y_m = c] over the modalities' answers (spec 4(b)); None (no answer) abstains.

    Tie-break (the paper's is not retrieved; ours, fixed): among the tied labels, take the one given by the
    modality that comes first in `priority` (default truth_table > code > nl: the most checkable reasoning
    first). Modalities not in `priority` rank after it, in the order given. All abstain -> None.

    >>> majority_vote({"nl": "True", "code": "False", "truth_table": "False"})
    'False'
    >>> majority_vote({"nl": "True", "code": "False", "truth_table": "Uncertain"})  # 1-1-1: truth_table wins
    'Uncertain'
    >>> majority_vote({"nl": "True", "code": "False", "truth_table": None})  # 1-1, tt abstains: code wins
    'False'
    """
    votes = {m: normalize_label(a) for m, a in answers_by_modality.items()}
    counts = Counter(a for a in votes.values() if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    tied = {label for label, c in counts.items() if c == best}
    order = list(priority) + [m for m in answers_by_modality if m not in priority]
    for modality in order:
        if votes.get(modality) in tied:
            return votes[modality]
    raise AssertionError("unreachable: a tied label always has a voter")  # pragma: no cover


# ---------------------------------------------------------------------------------------------- filtering
def filter_rationales(samples: list[dict], *, verify: bool = True, execute_code: bool = False,
                      timeout: float = 5.0, allow_unsandboxed: bool = False) -> tuple[list[dict], list[dict]]:
    """Keep samples with R(z, y) = 1[answer(y) = gold] · 1[format_ok(z, modality)] = 1 (spec 4(b)).

    A sample: {"modality", "completion" (or "response"), "answer" (gold), problem columns ...}. The completion is
    cleaned (`clean_completion`). `verify`: check truth tables / code arguments against the problem's formulas.
    `execute_code`: also run code rationales in `run_code_sandboxed` and require the last printed line to be the
    stated answer (`allow_unsandboxed`: passed to it). Returns (kept, dropped): copies of the samples with "response" (the cleaned text),
    "predicted", "format_ok", "correct", and for dropped ones "drop_reason" (every failed check, "; "-joined).
    """
    kept, dropped = [], []
    for i, sample in enumerate(samples):
        for key in ("modality", "answer"):
            if key not in sample:
                raise ValueError(f"filter_rationales: sample {i} has no {key!r} (keys: {sorted(sample)})")
        raw = sample.get("completion", sample.get("response"))
        if not isinstance(raw, str):
            raise ValueError(f"filter_rationales: sample {i} needs a text 'completion' or 'response'")
        text = clean_completion(raw)
        gold = normalize_label(sample["answer"])
        if gold is None:
            raise ValueError(f"filter_rationales: sample {i} gold answer {sample['answer']!r} is not a label")
        predicted = extract_answer(text)
        reasons = []
        verdict = check_format(text, sample["modality"], sample if verify else None)
        if not verdict.ok:
            reasons.append(f"format: {verdict.reason}")
        if predicted is None:
            reasons.append("no answer")
        elif predicted != gold:
            reasons.append(f"wrong answer: {predicted} (gold {gold})")
        if not reasons and execute_code and sample["modality"] == "code":
            reasons += _execution_problems(text, predicted, timeout, allow_unsandboxed)
        out = {**{k: v for k, v in sample.items() if k != "completion"}, "response": text, "predicted": predicted,
               "format_ok": verdict.ok, "correct": predicted == gold}
        if reasons:
            dropped.append({**out, "drop_reason": "; ".join(reasons)})
        else:
            kept.append(out)
    return kept, dropped


def _execution_problems(text: str, stated: str, timeout: float, allow_unsandboxed: bool) -> list[str]:
    code, _ = code_block(text)
    result = run_code_sandboxed(code or "", timeout=timeout, allow_unsandboxed=allow_unsandboxed)
    if result.timed_out:
        return [f"execution: timed out after {timeout:g} s"]
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        return [f"execution: exit status {result.returncode} ({last})"]
    printed = normalize_label((result.stdout.strip().splitlines() or [""])[-1])
    return [] if printed == stated else [f"execution: printed {printed}, the answer line says {stated}"]


# ---------------------------------------------------------------------------------------------- oracle
def oracle_rationale(problem: dict, modality: str) -> str:
    """A correct, well-formed rationale for a `make_logic` problem in `modality` (few-shot examples, the
    standalone SFT set, tests); written from the brute-force truth table."""
    _check_modality(modality)
    atoms, premises, conclusion = list(problem["atoms"]), problem["premises"], problem["conclusion"]
    rows = truth_table(atoms, premises, conclusion)
    label = label_from_rows(rows)
    if label is None:
        raise ValueError("oracle_rationale: the premises are unsatisfiable")
    tf = lambda v: "T" if v else "F"  # noqa: E731
    if modality == "truth_table":
        lines = [f"Variables: {', '.join(atoms)}",
                 f"{' '.join(atoms)} | {' '.join(f'P{i}' for i in range(1, len(premises) + 1))} | C"]
        for r in rows:
            lines.append(f"{' '.join(tf(r['assignment'][a]) for a in atoms)} | {' '.join(map(tf, r['premises']))} | "
                         f"{tf(r['conclusion'])} {'kept' if r['kept'] else 'pruned'}")
        kept = [r["conclusion"] for r in rows if r["kept"]]
        lines.append(f"Kept rows: {len(kept)}; the conclusion is T in {sum(kept)} and F in {len(kept) - sum(kept)}.")
        return "\n".join(lines + [answer_line(label)])
    if modality == "code":
        args = ", ".join(atoms)
        body = "\n".join(f"        {to_python(f)},  # premise {i}" for i, f in enumerate(premises, start=1))
        code = (f"from itertools import product\n\n\ndef premises({args}):\n    return all([\n{body}\n    ])\n\n\n"
                f"def conclusion({args}):\n    return {to_python(conclusion)}\n\n\n"
                f"kept = [v for v in product([True, False], repeat={len(atoms)}) if premises(*v)]\n"
                "holds = [conclusion(*v) for v in kept]\n"
                'print("True" if all(holds) else "False" if not any(holds) else "Uncertain")')
        return f"Each atom is a boolean; check every assignment.\n```python\n{code}\n```\n{answer_line(label)}"
    yes = problem.get("atom_text") or {a: f"{a} is true" for a in atoms}
    no = problem.get("atom_negation") or {a: f"{a} is false" for a in atoms}
    kept_rows = [r for r in rows if r["kept"]]
    cases = []
    for n, r in enumerate(kept_rows, start=1):
        facts = ", ".join(yes[a] if r["assignment"][a] else no[a] for a in atoms)
        cases.append(f"Case {n}: {facts}; the conclusion {'holds' if r['conclusion'] else 'fails'}.")
    verdict = {"True": "it holds in every case, so it is True",
               "False": "it fails in every case, so it is False",
               "Uncertain": "it holds in some cases and fails in others, so it is Uncertain"}[label]
    return "\n".join([f"The premises allow {len(kept_rows)} situation(s).", *cases,
                      f"The conclusion: {verdict}.", answer_line(label)])


# ---------------------------------------------------------------------------------------------- rewards
@register_reward("mot_accuracy")
def mot_accuracy(prompts: list, completions: list, answer: list, **kwargs: Any) -> list[float | None]:
    """1.0 when the completion's final answer equals the gold label (letter or word), else 0.0.

    >>> mot_accuracy(["q"], ["so p.\\nAnswer: (A)"], answer=["True"])
    [1.0]
    """
    golds = [normalize_label(gold) for gold in answer]
    return [None if gold is None else float(extract_answer(completion_text(c)) == gold)
            for c, gold in zip(completions, golds)]


@register_reward("mot_format")
def mot_format(prompts: list, completions: list, modality: list | None = None, **columns: Any) -> list[float | None]:
    """1.0 when the completion passes its row's modality checker (verified against the problem's formulas when
    the row has them), else 0.0; None for rows without a `modality` column."""
    if modality is None:
        return [None] * len(completions)
    out: list[float | None] = []
    for i, (c, m) in enumerate(zip(completions, modality)):
        problem = {k: columns[k][i] for k in ("atoms", "premises", "conclusion") if k in columns}
        out.append(None if m not in MODALITIES else
                   float(check_format(clean_completion(completion_text(c)), m, problem or None).ok))
    return out


# ---------------------------------------------------------------------------------------------- sandbox
def run_code_sandboxed(code: str, timeout: float = 5.0, *, memory_mb: int = 512, max_file_bytes: int = 1 << 20,
                       max_output_bytes: int = 20_000, allow_unsandboxed: bool = False) -> SandboxResult:
    """Run a code rationale's Python `code` (stdlib only) under OS isolation; never in this process.

    `modules.sandbox.run_python` with this module's limits: wall-clock `timeout` (then everything it started is
    killed; CPU time `ceil(timeout) + 1` s), address space `memory_mb`, file size `max_file_bytes`, output kept
    per stream `max_output_bytes`. Raises `modules.sandbox.SandboxUnavailable` where neither bubblewrap nor
    unshare works, unless `allow_unsandboxed=True` (rlimits only; warned once).

    >>> run_code_sandboxed("print(6 * 7)").stdout  # doctest: +SKIP
    '42\\n'
    """
    if timeout <= 0:
        raise ValueError(f"run_code_sandboxed: timeout={timeout} must be > 0 seconds")
    return run_python(code, timeout=timeout, memory_mb=memory_mb, max_file_bytes=max_file_bytes,
                      max_output_bytes=max_output_bytes, allow_unsandboxed=allow_unsandboxed)


__all__ = ["CHECKERS", "CHOICES", "DEFAULT_PRIORITY", "INSTRUCTIONS", "MODALITIES", "SandboxResult", "Verdict",
           "answer_line", "build_prompt", "check_code", "check_format", "check_nl", "check_truth_table",
           "clean_completion", "extract_answer", "filter_rationales", "majority_vote",
           "mot_accuracy", "mot_format", "normalize_label", "oracle_rationale", "parse_truth_table",
           "run_code_sandboxed"]
