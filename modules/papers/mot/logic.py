"""Propositional logic for Mixture-of-Thought (spec 4(e)): formulas as JSON-able trees, their evaluation,
renderings (symbolic, Python, English) and brute-force truth-table labels.

Formulas:
    "p"                       an atom
    ["not", f]                negation
    ["and" | "or" | "implies", f, g]
"""

from __future__ import annotations

import itertools
from typing import Any

LABELS = ("True", "False", "Uncertain")
ATOM_NAMES = ("p", "q", "r", "s")
BINARY_OPS = ("and", "or", "implies")
Formula = Any  # str | list


def _check(formula: Formula) -> None:
    if isinstance(formula, str):
        return
    if not isinstance(formula, (list, tuple)) or not formula:
        raise ValueError(f"not a formula: {formula!r}")
    op, *args = formula
    if (op == "not" and len(args) == 1) or (op in BINARY_OPS and len(args) == 2):
        return
    raise ValueError(f"unknown operator or arity in formula {formula!r}; use not/and/or/implies")


def evaluate(formula: Formula, assignment: dict[str, bool]) -> bool:
    """Truth value of `formula` under `assignment` (atom name -> bool).

    >>> evaluate(["implies", "p", ["not", "q"]], {"p": True, "q": True})
    False
    """
    if isinstance(formula, str):
        if formula not in assignment:
            raise ValueError(f"atom {formula!r} has no value in {sorted(assignment)}")
        return bool(assignment[formula])
    _check(formula)
    op, *args = formula
    if op == "not":
        return not evaluate(args[0], assignment)
    a, b = (evaluate(x, assignment) for x in args)
    return (a and b) if op == "and" else (a or b) if op == "or" else ((not a) or b)


def atoms_of(formula: Formula) -> set[str]:
    """The atom names a formula uses.

    >>> sorted(atoms_of(["or", "q", ["not", "p"]]))
    ['p', 'q']
    """
    if isinstance(formula, str):
        return {formula}
    _check(formula)
    return set().union(*(atoms_of(x) for x in formula[1:]))


def to_symbolic(formula: Formula) -> str:
    """Compact text form: `not`, `and`, `or`, `->`, parentheses around compound operands.

    >>> to_symbolic(["implies", ["and", "p", "q"], ["not", "r"]])
    '(p and q) -> not r'
    """
    if isinstance(formula, str):
        return formula
    _check(formula)
    op, *args = formula

    def wrap(f: Formula) -> str:
        text = to_symbolic(f)
        return f"({text})" if isinstance(f, (list, tuple)) and f[0] != "not" else text

    if op == "not":
        return f"not {wrap(args[0])}"
    return f"{wrap(args[0])} {'->' if op == 'implies' else op} {wrap(args[1])}"


def to_python(formula: Formula) -> str:
    """A fully parenthesised Python boolean expression over the atom names (implication as `(not a) or b`).

    >>> to_python(["implies", "p", ["not", "q"]])
    '((not p) or (not q))'
    """
    if isinstance(formula, str):
        return formula
    _check(formula)
    op, *args = formula
    if op == "not":
        return f"(not {to_python(args[0])})"
    a, b = (to_python(x) for x in args)
    return f"((not {a}) or {b})" if op == "implies" else f"({a} {op} {b})"


def to_english(formula: Formula, texts: dict[str, tuple[str, str]]) -> str:
    """English-ish rendering; `texts` maps an atom to (statement, negated statement).

    >>> to_english(["implies", "p", ["not", "q"]], {"p": ("it rains", "it does not rain"), "q": ("I go", "I stay")})
    'if it rains, then I stay'
    """
    if isinstance(formula, str):
        return texts[formula][0]
    _check(formula)
    op, *args = formula
    if op == "not":
        inner = args[0]
        if isinstance(inner, str):
            return texts[inner][1]
        if inner[0] == "not":
            return to_english(inner[1], texts)
        a, b = (to_english(x, texts) for x in inner[1:])
        if inner[0] == "and":
            return f"it is not the case that both {a} and {b}"
        if inner[0] == "or":
            return f"neither {a} nor {b}"
        return f"it is not the case that if {a}, then {b}"
    a, b = (to_english(x, texts) for x in args)
    if op == "and":
        return f"{a} and {b}"
    if op == "or":
        return f"{a} or {b} (or both)"
    return f"if {a}, then {b}"


def truth_table(atoms: list[str], premises: list[Formula], conclusion: Formula) -> list[dict[str, Any]]:
    """Every assignment (T before F, first atom slowest) with premise values and the conclusion value.

    Rows: {"assignment": {atom: bool}, "premises": [bool, ...], "conclusion": bool, "kept": all premises hold}.

    >>> [r["kept"] for r in truth_table(["p"], [["not", "p"]], "p")]
    [False, True]
    """
    rows = []
    for values in itertools.product((True, False), repeat=len(atoms)):
        assignment = dict(zip(atoms, values))
        prem = [evaluate(f, assignment) for f in premises]
        rows.append({"assignment": assignment, "premises": prem, "conclusion": evaluate(conclusion, assignment),
                     "kept": all(prem)})
    return rows


def label_from_rows(rows: list[dict[str, Any]]) -> str | None:
    """True / False / Uncertain from `truth_table` rows; None when no row keeps every premise."""
    kept = [r["conclusion"] for r in rows if r["kept"]]
    if not kept:
        return None
    return "True" if all(kept) else "False" if not any(kept) else "Uncertain"


def entailment_label(atoms: list[str], premises: list[Formula], conclusion: Formula) -> str | None:
    """True if the conclusion holds in every assignment satisfying all premises, False if in none, Uncertain
    otherwise; None when the premises are unsatisfiable.

    >>> entailment_label(["p", "q"], [["implies", "p", "q"], "p"], "q")
    'True'
    >>> entailment_label(["p", "q"], [["or", "p", "q"]], "p")
    'Uncertain'
    """
    return label_from_rows(truth_table(atoms, premises, conclusion))
