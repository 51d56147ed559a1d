"""The `Verifier` interface: is a student answer equivalent to the gold answer of a question?

One call checks a whole batch (``verify(questions, golds, answers)``), so an LLM verifier can batch its
`generate` calls; every verifier keeps the same counters (`VerifierStats`: calls, items, seconds), which the
TinyV and General-Reasoner recipes log. Implementations: `modules.verifiers.rule` (math-verify rule,
rule stub that writes the LLM's decision text) and `modules.verifiers.llm` (a local causal LM).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence


class VerifierError(RuntimeError):
    """A verifier failed (after its retries) or got unusable input; the message names the cause."""


@dataclass(frozen=True)
class VerifierResult:
    """One verification: the decision and the raw text it was parsed from (empty for a pure rule)."""

    correct: bool
    """True when the answer was judged equivalent to the gold answer."""
    text: str = ""
    """What the verifier wrote (LLM output, or the stub's decision text)."""

    def __bool__(self) -> bool:
        return self.correct

    @property
    def score(self) -> float:
        """1.0 or 0.0."""
        return float(self.correct)


@dataclass
class VerifierStats:
    """Running counters of a verifier (reset with `reset()`, copied with `snapshot()`)."""

    calls: int = 0
    """`verify` calls that had at least one item."""
    items: int = 0
    """Items verified."""
    positives: int = 0
    """Items judged correct."""
    seconds: float = 0.0
    """Wall time spent inside `verify`."""
    generate_calls: int = 0
    """Model `generate` calls (LLM verifiers: one per chunk of `batch_size` items, plus retries)."""
    retries: int = 0
    """Failed `generate` attempts that were retried."""

    def snapshot(self) -> dict[str, float]:
        return {"calls": self.calls, "items": self.items, "positives": self.positives, "seconds": self.seconds,
                "generate_calls": self.generate_calls, "retries": self.retries}

    def reset(self) -> None:
        self.calls = self.items = self.positives = self.generate_calls = self.retries = 0
        self.seconds = 0.0


class Verifier(ABC):
    """Checks answers against gold answers, a batch at a time.

    Subclasses implement `_verify` on non-empty, equally long lists; `verify` validates the input, times the
    call and updates `stats`.
    """

    name: str = "verifier"

    def __init__(self) -> None:
        self.stats = VerifierStats()

    def verify(self, questions: Sequence[str], golds: Sequence[str], answers: Sequence[str]) -> list[VerifierResult]:
        """One `VerifierResult` per (question, gold, answer) triple, in order."""
        n = len(answers)
        if not len(questions) == len(golds) == n:
            raise VerifierError(f"{self.name}: got {len(questions)} questions, {len(golds)} gold answers and "
                                f"{n} answers; they must be equally long")
        if n == 0:
            return []
        started = time.perf_counter()
        results = self._verify([str(q) for q in questions], [str(g) for g in golds], [str(a) for a in answers])
        if len(results) != n:
            raise VerifierError(f"{self.name}: returned {len(results)} results for {n} items")
        self.stats.calls += 1
        self.stats.items += n
        self.stats.positives += sum(bool(r) for r in results)
        self.stats.seconds += time.perf_counter() - started
        return results

    @abstractmethod
    def _verify(self, questions: list[str], golds: list[str], answers: list[str]) -> list[VerifierResult]:
        """The decisions for a non-empty batch."""

    def to(self, device) -> "Verifier":  # noqa: ANN001 - torch.device or str
        """Move any model to `device` (a no-op for rule verifiers)."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CallableVerifier(Verifier):
    """A verifier from a function ``fn(question, gold, answer) -> bool | str``; a string is passed through
    `parse` (for mocks that return the text an LLM would write).

    >>> v = CallableVerifier(lambda q, g, a: "True" if a == g else "False", parse=lambda t: "true" in t.lower())
    >>> [r.correct for r in v.verify(["q", "q"], ["1", "1"], ["1", "2"])], v.stats.items
    ([True, False], 2)
    """

    name = "callable"

    def __init__(self, fn, parse=None) -> None:  # noqa: ANN001
        super().__init__()
        self.fn, self.parse = fn, parse

    def _verify(self, questions: list[str], golds: list[str], answers: list[str]) -> list[VerifierResult]:
        out = []
        for q, g, a in zip(questions, golds, answers):
            value = self.fn(q, g, a)
            if isinstance(value, str):
                if self.parse is None:
                    raise VerifierError("CallableVerifier: the function returned text but no `parse` was given")
                out.append(VerifierResult(bool(self.parse(value)), value))
            else:
                out.append(VerifierResult(bool(value)))
        return out
