"""`HeldOutEval`: evaluate the policy on the datamodule's held-out rows before, during and after training."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from rich.console import Console
from rich.table import Table

from callbacks.periodic import PeriodicEvaluation


class HeldOutEval(PeriodicEvaluation):
    """Call `pl_module.evaluate(rows, k=..., batch_size=...)` on `trainer.datamodule.held_out_rows()`.

    When: at train start (if `at_start` and `global_step == 0`, so a resumed run does not redo it), every
    `every_n_steps` optimizer steps, and at train end (if `at_end`, unless the last periodic evaluation was
    already at that step). `evaluate` runs on every rank (it may sync across processes); printing is rank 0 only.

    Where results go, the same way from all three hooks:
    - to every logger with `logger.log_metrics(metrics, step=trainer.global_step)`. Not `self.log`: Lightning
      forbids step-level logging in `on_train_start`/`on_train_end`, and in between it would pass step
      metrics to the loggers only every `log_every_n_steps` steps, dropping evaluations that fall between;
    - into `trainer.callback_metrics` (as tensors), so `ModelCheckpoint` / `EarlyStopping` can monitor them
      and a notebook can read the final values after `fit`;
    - to `self.history` as `(global_step, metrics)`; `MetricsPlot` reads this history to draw the eval
      points, so the two callbacks work in any order and the curve survives a resume (both store their
      history in the checkpoint).

    At train end, rank 0 prints a "before -> after" table (`summary()` holds the same numbers).

    With `save_records`, rank 0 appends each evaluation's per-prompt records (`pl_module.last_eval_records`: the
    greedy completion, its length, reward, accuracy, each reward's value) as one JSON line ``{"step": ..., "records":
    [...]}`` to ``<trainer.log_dir>/eval_records.jsonl``; `r1 compare` bootstraps over them (`read_records`).

    Each evaluation is announced on rank 0 with its size and, once one has run, how long it will take (the last
    one's seconds per prompt times this one's prompts), and its duration is printed when it ends: on a real model on
    a CPU an evaluation can take minutes (`max_rows`, `at_start`, `every_n_steps` size it).
    """

    def __init__(self, every_n_steps: int = 0, k: int = 1, batch_size: int = 16, at_start: bool = True,
                 at_end: bool = True, max_rows: int | None = None, save_records: bool = True,
                 console: Console | None = None) -> None:
        """
        Args:
            every_n_steps: also evaluate when `global_step` is a positive multiple of this; 0 = never.
            k: samples per prompt for pass@k (1 = greedy only).
            batch_size: prompts per generation batch during evaluation.
            at_start: evaluate before the first step (the "before" of the summary).
            at_end: evaluate after the last step (the "after" of the summary).
            max_rows: evaluate on the first `max_rows` held-out rows only (None = all).
            save_records: append each evaluation's per-prompt records to <log_dir>/eval_records.jsonl.
            console: where the summary table goes (default: a rich Console on stderr).
        """
        for name, value, low in (("every_n_steps", every_n_steps, 0), ("k", k, 1), ("batch_size", batch_size, 1)):
            if int(value) < low:
                raise ValueError(f"HeldOutEval({name}={value}): must be >= {low}")
        if max_rows is not None and int(max_rows) < 1:
            raise ValueError(f"HeldOutEval(max_rows={max_rows}): must be >= 1, or None for all held-out rows")
        super().__init__(every_n_steps, at_start=at_start, at_end=at_end)
        self.k = int(k)
        self.batch_size = int(batch_size)
        self.max_rows = None if max_rows is None else int(max_rows)
        self.save_records = bool(save_records)
        self.console = console or Console(stderr=True)
        self._warned = False
        self._seconds_per_prompt: float | None = None  # measured by the last evaluation in this process

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "evaluate", None)):
            raise TypeError(f"HeldOutEval needs pl_module.evaluate(rows, *, k, batch_size) -> dict[str, float]; "
                            f"{type(pl_module).__name__} has none. Use an RLRecipe or remove the callback.")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if trainer.is_global_zero and len(self.history) >= 2:
            self.console.print(self.render_summary())

    # ------------------------------------------------------------------ results
    def summary(self) -> dict[str, Any]:
        """First and last evaluation: `{"start_step", "end_step", "metrics": {name: {"start", "end", "change"}}}`.

        A metric missing from one of the two evaluations has NaN there. Empty dict before any evaluation.
        """
        if not self.history:
            return {}
        (start_step, start), (end_step, end) = self.history[0], self.history[-1]
        nan = float("nan")
        metrics = {}
        for name in dict.fromkeys([*start, *end]):
            a, b = float(start.get(name, nan)), float(end.get(name, nan))
            metrics[name] = {"start": a, "end": b, "change": b - a}
        return {"start_step": start_step, "end_step": end_step, "metrics": metrics}

    def render_summary(self) -> Table:
        """The "before -> after" table of `summary()`."""
        s = self.summary()
        table = Table(title=f"held-out evaluation: step {s.get('start_step')} -> step {s.get('end_step')}")
        for name, justify in (("metric", "left"), ("start", "right"), ("end", "right"), ("change", "right")):
            table.add_column(name, justify=justify)
        for name, v in s.get("metrics", {}).items():
            change = v["change"]
            style = "" if math.isnan(change) or change == 0 else ("green" if change > 0 else "red")
            table.add_row(name, f"{v['start']:.4f}", f"{v['end']:.4f}", f"[{style}]{change:+.4f}[/]" if style
                          else f"{change:+.4f}")
        return table

    @property
    def state_key(self) -> str:
        return self._generate_state_key(k=self.k, max_rows=self.max_rows)

    # ------------------------------------------------------------------ helpers
    def _rows(self, trainer: L.Trainer) -> list[dict]:
        datamodule = getattr(trainer, "datamodule", None)
        getter = getattr(datamodule, "held_out_rows", None)
        rows = list(getter()) if callable(getter) else []
        if not rows and not self._warned:
            self._warned = True
            rank_zero_warn(f"HeldOutEval: no held-out rows (datamodule {type(datamodule).__name__}"
                           f"{'' if callable(getter) else ' has no held_out_rows()'}); skipping evaluation. "
                           "Give the datamodule a held-out split or remove the callback.")
        return rows if self.max_rows is None else rows[: self.max_rows]

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = self._rows(trainer)
        if not rows:
            return
        n = len(rows)
        if trainer.is_global_zero:
            batches = math.ceil(n / self.batch_size)
            pace = (f", about {_duration(self._seconds_per_prompt * n)} at the last one's pace"
                    if self._seconds_per_prompt is not None else "")
            self.console.print(f"held-out evaluation at step {trainer.global_step}: {n} prompts in {batches} "
                               f"batch{'es' if batches > 1 else ''} of {self.batch_size}"
                               f"{f', pass@{self.k}' if self.k > 1 else ''}{pace}")
        started = time.perf_counter()
        metrics = pl_module.evaluate(rows, k=self.k, batch_size=self.batch_size)
        elapsed = time.perf_counter() - started
        self._seconds_per_prompt = elapsed / n
        if trainer.is_global_zero:
            self.console.print(f"held-out evaluation took {_duration(elapsed)} ({elapsed / n:.2f} s per prompt; "
                               "HeldOutEval max_rows / at_start / every_n_steps size it)")
        self._record(trainer, {name: float(value) for name, value in metrics.items()})
        records = getattr(pl_module, "last_eval_records", None)
        if self.save_records and records and trainer.is_global_zero and trainer.log_dir is not None:
            path = Path(trainer.log_dir) / RECORDS_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(json.dumps({"step": trainer.global_step, "records": records}, default=str) + "\n")


RECORDS_FILE = "eval_records.jsonl"


def read_records(path: str | Path) -> dict[int, list[dict[str, Any]]]:
    """{step: per-prompt records} from an ``eval_records.jsonl`` (a step evaluated twice, as after a resume, keeps its
    last line; a torn last line, as after a crash, is skipped)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for line in Path(path).read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[int(entry["step"])] = list(entry["records"])
    return out


def _duration(seconds: float) -> str:
    """'42 s' or '3.5 min'.

    >>> _duration(42.4), _duration(210)
    ('42 s', '3.5 min')
    """
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
