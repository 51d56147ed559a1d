"""Synthetic tasks with exact answers, by name: `make_task("arithmetic", 256, digits=2, seed=0)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from datamodules.errors import DataConfigError
from datamodules.tasks.arithmetic import make_arithmetic
from datamodules.tasks.countdown import make_countdown

TASKS: dict[str, Callable[..., list[dict]]] = {"arithmetic": make_arithmetic, "countdown": make_countdown}


def make_task(name: str, n: int, **kwargs) -> list[dict]:
    """`n` rows of the registered task `name`; `kwargs` go to its builder (e.g. `seed`, `digits`)."""
    if name not in TASKS:
        raise DataConfigError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)}")
    builder = TASKS[name]
    options = [p for p in inspect.signature(builder).parameters if p != "n"]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise DataConfigError(f"task {name!r} has no option(s) {unknown}; its options: {options}")
    return builder(n, **kwargs)


__all__ = ["TASKS", "make_arithmetic", "make_countdown", "make_task"]
