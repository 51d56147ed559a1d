"""Random propositional-logic problems with labels from a brute-force truth table (Mixture-of-Thought, spec 4(e)).

A problem: 3-4 atoms (`p`, `q`, `r`, `s`, each standing for an English statement), 2-4 premises and a conclusion.
The question asks whether the conclusion is True (it holds in every assignment that satisfies all premises),
False (it holds in none of them) or Uncertain (it holds in some); problems whose premises no assignment satisfies
are skipped. This is the documented CPU substitute for FOLIO / ProofWriter.

Formulas are JSON-able trees, the machine-readable form stored in every row:
    "p"                       an atom
    ["not", f]                negation
    ["and" | "or" | "implies", f, g]

The pure functions (`evaluate`, `to_python`, `truth_table`, `entailment_label`, ...) are in `modules.papers.mot.logic`.
Builders: `make_logic(n, ...)` (problems) and `make_logic_sft(n, ...)` (prompt/response rows whose responses are
oracle-written rationales in each modality; `modules.papers.mot.modalities` writes them).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from datamodules.errors import DataConfigError
from modules.papers.mot.logic import (ATOM_NAMES, BINARY_OPS, LABELS, Formula, atoms_of, entailment_label,  # noqa: F401
                                      evaluate, label_from_rows, to_english, to_python, to_symbolic, truth_table)
from modules.papers.mot.modalities import MODALITIES, build_prompt, oracle_rationale

# (statement, its negation); a problem draws one per atom.
STATEMENTS = (
    ("the lamp is on", "the lamp is not on"),
    ("the door is open", "the door is not open"),
    ("the cat is asleep", "the cat is not asleep"),
    ("it is raining", "it is not raining"),
    ("the road is wet", "the road is not wet"),
    ("the alarm rings", "the alarm does not ring"),
    ("Anna is at home", "Anna is not at home"),
    ("the train is late", "the train is not late"),
    ("the garden is green", "the garden is not green"),
    ("Ben plays chess", "Ben does not play chess"),
    ("the shop is closed", "the shop is not closed"),
    ("the kettle is hot", "the kettle is not hot"),
)

# ------------------------------------------------------------------------------------------------ builders
def _literal(rng: random.Random, atoms: list[str]) -> Formula:
    atom = rng.choice(atoms)
    return ["not", atom] if rng.random() < 0.4 else atom


def _binary(rng: random.Random, atoms: list[str]) -> Formula:
    a, b = rng.sample(atoms, 2)
    left = ["not", a] if rng.random() < 0.3 else a
    right = ["not", b] if rng.random() < 0.3 else b
    return [rng.choice(BINARY_OPS), left, right]


def _formula(rng: random.Random, atoms: list[str], *, literal_weight: float) -> Formula:
    u = rng.random()
    if u < literal_weight:
        return _literal(rng, atoms)
    if u < 0.92:
        return _binary(rng, atoms)
    a, b = rng.sample(atoms, 2)
    return ["not", [rng.choice(BINARY_OPS), a, b]]


def _split_of(question: str, test_fraction: float) -> str:
    """A problem's split, fixed by a hash of its question (so train and test never share a problem)."""
    u = int(hashlib.sha1(question.encode()).hexdigest()[:8], 16) / 2**32
    return "test" if u < test_fraction else "train"


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def render_question(atoms: list[str], texts: dict[str, tuple[str, str]], premises: list[Formula],
                    conclusion: Formula, *, show_symbols: bool = True) -> str:
    """The question text: the atom legend, numbered premises, the conclusion and the three choices."""
    sym = (lambda f: f" [{to_symbolic(f)}]") if show_symbols else (lambda f: "")
    legend = ", ".join(f'{a} mean "{texts[a][0]}"' for a in atoms)
    lines = [f"Let {legend}.", "Premises:"]
    lines += [f"{i}. {_sentence(to_english(f, texts))}{sym(f)}" for i, f in enumerate(premises, start=1)]
    lines.append(f"Conclusion: {_sentence(to_english(conclusion, texts))}{sym(conclusion)}")
    lines.append("Based only on the premises, is the conclusion True, False, or Uncertain?")
    lines.append("(A) True (B) False (C) Uncertain")
    return "\n".join(lines)


def make_logic(
    n: int,
    *,
    seed: int = 0,
    num_atoms: tuple[int, int] | list[int] = (3, 4),
    num_premises: tuple[int, int] | list[int] = (2, 4),
    balance: bool = True,
    show_symbols: bool = True,
    split: str = "train",
    test_fraction: float = 0.2,
) -> list[dict]:
    """`n` problems `{question, answer, choice, atoms, atom_text, atom_negation, premises, conclusion,
    premises_text, conclusion_text, premises_symbolic, conclusion_symbolic}`.

    `answer` is "True", "False" or "Uncertain" (`choice`: "A", "B", "C"), computed by `entailment_label`.
    `num_atoms` / `num_premises`: inclusive ranges. `balance`: labels cycle True, False, Uncertain (rejection
    sampling), else they follow the generator's natural mix. `split`: "train", "test" or "all"; a problem
    belongs to "test" when the hash of its question falls in the first `test_fraction` of the hash range, so
    the two splits never share a problem whatever the seeds. Every atom occurs in some formula, no premise
    repeats, and the conclusion is not literally a premise.

    >>> row = make_logic(1, seed=0)[0]
    >>> row["answer"] in ("True", "False", "Uncertain"), row["atoms"][:2]
    (True, ['p', 'q'])
    """
    lo_a, hi_a = _range("num_atoms", num_atoms, 2, len(ATOM_NAMES))
    lo_p, hi_p = _range("num_premises", num_premises, 1, 8)
    if n < 0:
        raise DataConfigError(f"make_logic: n={n} must be >= 0")
    if split not in ("train", "test", "all"):
        raise DataConfigError(f"make_logic: split={split!r}; use train, test or all")
    if not 0.0 < test_fraction < 1.0:
        raise DataConfigError(f"make_logic: test_fraction={test_fraction} must be in (0, 1)")
    rng = random.Random(seed)
    rows: list[dict] = []
    seen: set[str] = set()
    attempts, budget = 0, 2000 * max(n, 1)
    while len(rows) < n:
        attempts += 1
        if attempts > budget:
            raise DataConfigError(f"make_logic: found only {len(rows)} of {n} problems after {budget} attempts; "
                                  "lower n, widen num_atoms/num_premises or set balance: false")
        k = rng.randint(lo_a, hi_a)
        atoms = list(ATOM_NAMES[:k])
        premises = [_formula(rng, atoms, literal_weight=0.25) for _ in range(rng.randint(lo_p, hi_p))]
        conclusion = _formula(rng, atoms, literal_weight=0.6)
        used = set().union(*(atoms_of(f) for f in premises), atoms_of(conclusion))
        if used != set(atoms) or conclusion in premises or len({str(f) for f in premises}) < len(premises):
            continue
        label = entailment_label(atoms, premises, conclusion)
        if label is None:  # unsatisfiable premises
            continue
        if balance and label != LABELS[len(rows) % 3]:
            continue
        pairs = rng.sample(STATEMENTS, k)
        texts = {a: pair for a, pair in zip(atoms, pairs)}
        question = render_question(atoms, texts, premises, conclusion, show_symbols=show_symbols)
        if question in seen or (split != "all" and _split_of(question, test_fraction) != split):
            continue
        seen.add(question)
        rows.append({
            "question": question, "answer": label, "choice": "ABC"[LABELS.index(label)], "atoms": atoms,
            "atom_text": {a: texts[a][0] for a in atoms}, "atom_negation": {a: texts[a][1] for a in atoms},
            "premises": premises, "conclusion": conclusion,
            "premises_text": [_sentence(to_english(f, texts)) for f in premises],
            "conclusion_text": _sentence(to_english(conclusion, texts)),
            "premises_symbolic": [to_symbolic(f) for f in premises], "conclusion_symbolic": to_symbolic(conclusion),
        })
    return rows


def make_logic_sft(n: int, *, seed: int = 0, modalities: list[str] | tuple[str, ...] | None = None,
                   num_atoms: tuple[int, int] | list[int] = (3, 4), num_premises: tuple[int, int] | list[int] = (2, 4),
                   balance: bool = True, show_symbols: bool = True, split: str = "train") -> list[dict]:
    """`n` SFT rows {prompt, response, answer, modality, problem columns}: each problem of `make_logic` written in
    every modality by the oracle rationale writers (`modules.papers.mot.modalities.oracle_rationale`), zero-shot prompts. The other
    options are `make_logic`'s.

    A standalone MoT-style SFT set (`recipes/configs/mot_sft.yaml`'s default data); the self-evolving rounds
    replace it with sampled, filtered rationales.
    """

    modalities = tuple(modalities or MODALITIES)
    bad = [m for m in modalities if m not in MODALITIES]
    if bad or not modalities:
        raise DataConfigError(f"make_logic_sft: modalities={list(modalities)}; choose from {list(MODALITIES)}")
    problems = make_logic(-(-n // len(modalities)), seed=seed, num_atoms=num_atoms, num_premises=num_premises,
                          balance=balance, show_symbols=show_symbols, split=split)
    rows = [{**p, "modality": m, "prompt": build_prompt(p["question"], m), "response": oracle_rationale(p, m)}
            for p in problems for m in modalities]
    return rows[:n]


def few_shot_examples(modality: str, k: int, *, seed: int = 10_000) -> list[tuple[str, str]]:
    """`k` (question, oracle rationale) pairs on small problems (3 atoms, 2 premises) for round-0 prompts."""
    if k <= 0:
        return []
    problems = make_logic(k, seed=seed, num_atoms=(3, 3), num_premises=(2, 2), split="all")
    return [(p["question"], oracle_rationale(p, modality)) for p in problems]


def _range(name: str, value: Any, low: int, high: int) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise DataConfigError(f"make_logic: {name}={value!r}; give [min, max]") from None
    if not low <= lo <= hi <= high:
        raise DataConfigError(f"make_logic: {name}={[lo, hi]} must satisfy {low} <= min <= max <= {high}")
    return lo, hi


__all__ = ["LABELS", "atoms_of", "entailment_label", "evaluate", "few_shot_examples", "label_from_rows", "make_logic", "make_logic_sft",
           "render_question", "to_english", "to_python", "to_symbolic", "truth_table"]
