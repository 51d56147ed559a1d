"""Reward registry and the weighted combination of reward functions.

A reward function follows TRL's contract::

    fn(prompts: list, completions: list[str], **columns) -> list[float | None]

`columns` are the per-row dataset fields (``answer=[...]``, ``numbers=[...]``) plus what the trainer
adds (``completion_lengths: list[int]``, ``truncated: list[bool]``). ``None`` means "not applicable to
this row". Every function accepts and ignores unknown keywords. A function may be ``async def`` (e.g. one that
calls a remote judge): `RewardSet.score` runs the async functions of a set concurrently with each other (and with
the sync ones, which run one after another as before), each under its own timeout and with its own seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import inspect
import math
import numbers
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from modules.settings import SettingsError

RewardFn = Callable[..., list]
DEFAULT_TIMEOUT = 600.0  # seconds per batch call: room for an LLM judge or code execution on a CPU
ON_TIMEOUT = ("error", "none")

_REGISTRY: dict[str, RewardFn] = {}


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable; the message names the function."""


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering a reward function under `name` (usable in configs as ``name: <name>``)."""

    def decorator(fn: RewardFn) -> RewardFn:
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"reward name {name!r} is already registered to {old.__module__}.{old.__qualname__}")
        _REGISTRY[name] = fn
        return fn

    return decorator


def _register_paper_rewards() -> None:
    """Import every paper package under `modules.papers` once: each registers its own reward functions."""
    from modules.papers import PAPERS

    for paper in PAPERS:
        importlib.import_module(f"modules.papers.{paper}")


def list_rewards() -> list[str]:
    """Sorted names of the registered reward functions, the papers' included."""
    _register_paper_rewards()
    return sorted(_REGISTRY)


def get_reward(name: str) -> RewardFn:
    """Return the registered function `name`, or import a dotted path ``pkg.mod.fn`` (a user's own reward)."""
    if name not in _REGISTRY and "." not in name:
        _register_paper_rewards()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if "." in name:
        module_name, _, attr = name.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"reward {name!r}: cannot import module {module_name!r} ({err}); run from the directory "
                             "that holds it or put that directory on the path (PYTHONPATH=. r1 fit ...)") from err
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise ValueError(f"reward {name!r}: module {module_name!r} has no callable {attr!r}")
        return fn
    raise ValueError(
        f"unknown reward {name!r}; registered rewards: {', '.join(list_rewards())}. "
        "Use one of these or a dotted import path such as 'my_pkg.rewards.my_reward'."
    )


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or TRL's conversational form (a list of messages; last content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


@dataclass
class RewardSpec:
    """One reward function in a config: a registered name (or dotted import path), its weight and options."""

    name: str
    """Registered reward name (see `list_rewards()`) or a dotted import path ``pkg.mod.fn``."""
    weight: float = 1.0
    """Multiplier of this function's value in the total reward."""
    kwargs: dict = field(default_factory=dict)
    """Options bound to the function with `functools.partial` (e.g. ``{extract: boxed, mode: math}``)."""
    timeout: float | None = DEFAULT_TIMEOUT
    """Seconds one call (a whole batch) may take; a slower call is an error naming the function, or gives None
    for every row with ``on_timeout: none`` (null = no limit). The call runs in a worker thread, which Python
    cannot stop: a function that hangs keeps its thread until it returns (code execution has its own kill)."""
    on_timeout: str = "error"
    """error (stop with one line naming the function) or none (score the batch None and warn)."""

    def __post_init__(self) -> None:
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise SettingsError(f"model.rewards: reward {self.name!r}: timeout={self.timeout!r}; give seconds > 0 or "
                                "null for no limit")
        if self.on_timeout not in ON_TIMEOUT:
            raise SettingsError(f"model.rewards: reward {self.name!r}: on_timeout={self.on_timeout!r}; use one of "
                                f"{', '.join(ON_TIMEOUT)}")


def _fn_name(fn: Callable) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


class RewardSet:
    """Several reward functions, scored together and combined with weights.

    Total reward per row = sum over functions of ``weight * value``, a ``None`` counting as 0 for that
    function (TRL's nansum). A row where *every* function returned ``None`` has no defined reward: TRL
    would give it NaN, which then poisons the group's advantages; here it raises a `RewardError` naming
    the row instead, so that a missing reward for some rows (e.g. a domain no function handles) is
    found at once. Give such rows a function that returns a value (even 0.0).
    """

    def __init__(self, funcs: Sequence[RewardFn], weights: Sequence[float] | None = None,
                 names: Sequence[str] | None = None, timeouts: Sequence[tuple[float | None, str]] | None = None
                 ) -> None:
        if not funcs:
            raise ValueError("RewardSet needs at least one reward function")
        weights = [1.0] * len(funcs) if weights is None else [float(w) for w in weights]
        names = [_fn_name(f) for f in funcs] if names is None else list(names)
        if not len(funcs) == len(weights) == len(names):
            raise ValueError(f"RewardSet got {len(funcs)} functions, {len(weights)} weights and {len(names)} names")
        for name, w in zip(names, weights):
            if not math.isfinite(w):
                raise ValueError(f"reward {name!r} has weight {w}; weights must be finite numbers")
        self.funcs = list(funcs)
        self.weights = weights
        self.names = _unique(names)
        # (seconds or None, on_timeout) per function; callables given directly get the default limit.
        self.timeouts = list(timeouts) if timeouts is not None else [(DEFAULT_TIMEOUT, "error")] * len(funcs)
        # Options bound with functools.partial: a dataset column of the same name would override them.
        self._bound = [tuple(f.keywords) if isinstance(f, functools.partial) else () for f in funcs]

    @classmethod
    def from_specs(cls, specs: Sequence[RewardSpec | str | dict | RewardFn]) -> RewardSet:
        """Build from config entries: `RewardSpec`, a name / dotted path, a ``{name, weight, kwargs}`` dict,
        or a callable (weight 1). Repeated names get suffixes ``_2``, ``_3``."""
        funcs, weights, names, timeouts = [], [], [], []
        for spec in specs:
            if isinstance(spec, dict):
                spec = RewardSpec(**spec)
            if isinstance(spec, str):
                spec = RewardSpec(spec)
            if isinstance(spec, RewardSpec):
                fn = get_reward(spec.name)
                funcs.append(functools.partial(fn, **spec.kwargs) if spec.kwargs else fn)
                weights.append(spec.weight)
                names.append(spec.name.rpartition(".")[2])
                timeouts.append((spec.timeout, spec.on_timeout))
            elif callable(spec):
                funcs.append(spec)
                weights.append(1.0)
                names.append(_fn_name(spec))
                timeouts.append((DEFAULT_TIMEOUT, "error"))
            else:
                raise TypeError(f"reward spec must be a RewardSpec, name, dict or callable, got {spec!r}")
        return cls(funcs, weights, names, timeouts)

    def __len__(self) -> int:
        return len(self.funcs)

    def __call__(self, prompts: list, completions: list[str], columns: dict[str, list] | None = None,
                 **extra: Any) -> tuple[Tensor, Tensor]:
        """``(rewards_per_func (N, F) float32 with NaN for None, total (N,))``; see `score`."""
        per_func, total, _ = self.score(prompts, completions, columns, **extra)
        return per_func, total

    def score(self, prompts: list, completions: list[str], columns: dict[str, list] | None = None,
              **extra: Any) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Score every completion with every function.

        `columns`: per-row dataset fields; `extra`: trainer keywords (``completion_lengths``,
        ``truncated``; tensors are turned into lists). Returns ``(rewards_per_func (N, F) float32 with
        NaN for None, total (N,), {name: seconds the function took})``.
        """
        columns = dict(columns or {})
        n = len(completions)
        for key, value in list(extra.items()):
            if isinstance(value, Tensor):
                extra[key] = value.tolist()
        clash = sorted(set(columns) & (set(extra) | {"prompts", "completions"}))
        if clash:
            raise ValueError(f"dataset columns {clash} clash with keywords the trainer passes; rename the columns")
        for key, value in {**columns, **extra}.items():
            if isinstance(value, (list, tuple)) and len(value) != n:
                raise ValueError(f"column {key!r} has {len(value)} values for {n} completions")

        per_func = torch.empty(n, len(self.funcs), dtype=torch.float32)  # (N, F)
        for name, bound in zip(self.names, self._bound):
            clash = sorted(set(bound) & set(columns))
            if clash:
                raise ValueError(f"reward {name!r}: options {clash} have the same name as dataset columns; "
                                 "rename the columns")
        # The async functions start first, together, in one worker thread's event loop; the sync ones then run
        # one after another in this thread while the async ones are in flight.
        jobs = [(j, self.names[j], fn, self.timeouts[j]) for j, fn in enumerate(self.funcs) if _is_async(fn)]
        pending = _start_async(jobs, prompts, completions, columns, extra) if jobs else None
        outcomes: dict[int, tuple[Any, float]] = {}
        try:
            for j, (name, fn, limit) in enumerate(zip(self.names, self.funcs, self.timeouts)):
                if _is_async(fn):
                    continue
                started = time.perf_counter()
                values = _call(name, fn, prompts, completions, columns, extra, *limit)
                outcomes[j] = (values, time.perf_counter() - started)
        except BaseException:
            if pending is not None:  # a sync reward failed: leave the async ones to end at their own timeouts
                pending.cancel()
            raise
        if pending is not None:
            outcomes.update(_finish_async(jobs, pending))
        seconds: dict[str, float] = {}
        for j, name in enumerate(self.names):  # in the set's order, so errors and warnings come in that order too
            values, took = outcomes[j]
            seconds[name] = took
            per_func[:, j] = _validated(name, [None] * n if values is _TIMED_OUT else values, n)

        weights = torch.tensor(self.weights, dtype=torch.float32)  # (F,)
        none_rows = torch.isnan(per_func).all(dim=1).nonzero().flatten().tolist()
        if none_rows:
            i = none_rows[0]
            raise RewardError(
                f"no reward function applied to row {i} (all of {self.names} returned None; "
                f"{len(none_rows)} such rows): add a reward that scores it. Completion: {str(completions[i])[:200]!r}"
            )
        total = torch.nansum(per_func * weights, dim=1)  # (N,)
        return per_func, total, seconds

    def stats(self, rewards_per_func: Tensor) -> dict[str, float]:
        """``rewards/<name>/mean`` and ``rewards/<name>/std`` over the non-None (non-NaN) values.

        std is unbiased (as torch.std and TRL's nanstd) and 0.0 with fewer than 2 values; the mean is NaN
        when a function applied to no row.
        """
        out: dict[str, float] = {}
        for j, name in enumerate(self.names):
            col = rewards_per_func[:, j]
            vals = col[~torch.isnan(col)].double()
            out[f"rewards/{name}/mean"] = vals.mean().item() if vals.numel() else float("nan")
            out[f"rewards/{name}/std"] = vals.std().item() if vals.numel() >= 2 else 0.0
        return out

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}*{w:g}" for n, w in zip(self.names, self.weights))
        return f"RewardSet({parts})"


def _unique(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


_TIMED_OUT = object()


def _call(name: str, fn: RewardFn, prompts, completions, columns, extra, timeout: float | None = None,
          on_timeout: str = "error") -> Any:
    """fn's values; with a `timeout`, the call runs in a worker thread so the limit holds whichever thread (a
    dataloader's, a callback's) calls it, where signal-based alarms cannot."""
    def call() -> Any:
        try:
            return fn(prompts=prompts, completions=completions, **columns, **extra)
        except Exception as err:
            raise RewardError(f"reward {name!r} raised {type(err).__name__}: {err}") from err

    if timeout is None:
        return call()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"reward-{name}")
    try:
        return pool.submit(call).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        if on_timeout == "none":
            warnings.warn(f"reward {name!r} did not return within {timeout:g} s: this batch scores None for it "
                          "(on_timeout: none)", RuntimeWarning, stacklevel=2)
            return _TIMED_OUT
        raise RewardError(f"reward {name!r} did not return within its timeout of {timeout:g} s; raise "
                          f"`timeout` in its reward entry ({{name: {name}, timeout: ...}}), make it faster, or set "
                          "on_timeout: none to score such batches None") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _is_async(fn: Callable) -> bool:
    """An ``async def`` function, a partial of one, or an object whose ``__call__`` is one."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def _start_async(jobs: list, prompts, completions, columns, extra) -> concurrent.futures.Future:
    """Run every async reward of `jobs` concurrently (asyncio.gather, each under its own `asyncio.wait_for`) in a
    fresh event loop on a worker thread, so that it works whether or not the calling thread has a loop running.
    The future's result maps each job index to ``(values | _TIMED_OUT | exception, seconds)``."""

    async def one(name: str, fn: RewardFn, timeout: float | None) -> tuple[Any, float]:
        started = time.perf_counter()
        try:
            values = await asyncio.wait_for(fn(prompts=prompts, completions=completions, **columns, **extra),
                                            timeout)
        except asyncio.TimeoutError:
            values = _TIMED_OUT
        except Exception as err:  # noqa: BLE001 - raised in the caller's thread, in the set's order
            values = RewardError(f"reward {name!r} raised {type(err).__name__}: {err}")
            values.__cause__ = err
        return values, time.perf_counter() - started

    async def all_jobs() -> dict[int, tuple[Any, float]]:
        results = await asyncio.gather(*(one(name, fn, limit[0]) for _, name, fn, limit in jobs))
        return {j: result for (j, *_), result in zip(jobs, results)}

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-async")
    try:
        return pool.submit(asyncio.run, all_jobs())
    finally:
        pool.shutdown(wait=False)


def _finish_async(jobs: list, pending: concurrent.futures.Future) -> dict[int, tuple[Any, float]]:
    """The async rewards' values; a timed-out one warns (on_timeout: none) or raises, as a sync one does."""
    limits = [limit[0] for *_, limit in jobs]
    # wait_for cancels each slow coroutine at its own limit; the margin only bounds a coroutine that blocks the loop
    outer = None if any(t is None for t in limits) else max(limits) + 5.0
    try:
        results = pending.result(timeout=outer)
    except concurrent.futures.TimeoutError:
        raise RewardError(f"async rewards {[name for _, name, *_ in jobs]} did not return within {outer:g} s: one "
                          "of them blocks its event loop (call blocking code through asyncio.to_thread)") from None
    out = {}
    for j, name, _, (timeout, on_timeout) in jobs:
        values, took = results[j]
        if isinstance(values, RewardError):
            raise values
        if values is _TIMED_OUT:
            if on_timeout != "none":
                raise RewardError(f"reward {name!r} did not return within its timeout of {timeout:g} s; raise "
                                  f"`timeout` in its reward entry ({{name: {name}, timeout: ...}}), make it faster, "
                                  "or set on_timeout: none to score such batches None")
            warnings.warn(f"reward {name!r} did not return within {timeout:g} s: this batch scores None for it "
                          "(on_timeout: none)", RuntimeWarning, stacklevel=3)
        out[j] = (values, took)
    return out


def _validated(name: str, values: Any, n: int) -> Tensor:
    """Check one function's output and turn it into a float32 (N,) tensor with NaN for None."""
    if not isinstance(values, (list, tuple)):
        raise RewardError(f"reward {name!r} returned {type(values).__name__}; it must return a list of "
                          "floats (or None) with one value per completion")
    if len(values) != n:
        raise RewardError(f"reward {name!r} returned {len(values)} values for {n} completions")
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(float("nan"))
            continue
        if not isinstance(v, numbers.Real):
            raise RewardError(f"reward {name!r} returned {v!r} ({type(v).__name__}) for row {i}; "
                              "values must be int/float or None")
        if not math.isfinite(v):
            raise RewardError(f"reward {name!r} returned {v} for row {i}; a reward must be finite or None")
        out.append(float(v))
    return torch.tensor(out, dtype=torch.float32)
