"""`MetricsPlot`: reward / accuracy / completion-length curves as a PNG plus a CSV at the end of training."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from matplotlib.figure import Figure

from callbacks.evaluation import HeldOutEval


class MetricsPlot(L.Callback):
    """Record training and evaluation curves and draw them when `fit` ends.

    Train points: after every training batch, the values of `keys` found in `trainer.callback_metrics`
    (x = `trainer.global_step`; a key not logged yet is skipped). Eval points: the `eval_keys` found in the
    history of any `HeldOutEval` callback of the trainer, at the steps where it evaluated.

    At `on_fit_end`, rank 0 writes `filename` (one subplot per quantity: keys sharing the part after "/",
    e.g. "train/reward" and "eval/reward", share a subplot) and `metrics_history.csv` (columns step, key,
    value) into `dirpath`, by default `trainer.log_dir` (or `trainer.default_root_dir` without a logger).
    The history is saved in checkpoints, so a resumed run plots the whole curve. `last_path` is the PNG.
    """

    def __init__(self, filename: str = "reward_curve.png",
                 keys: Sequence[str] = ("train/reward", "train/accuracy", "train/completion_length"),
                 eval_keys: Sequence[str] = ("eval/reward", "eval/accuracy"),
                 dirpath: str | Path | None = None) -> None:
        """
        Args:
            filename: name of the PNG written at the end of training.
            keys: training metrics to record from `trainer.callback_metrics` after every step.
            eval_keys: evaluation metrics to take from `HeldOutEval.history`.
            dirpath: output folder (default: the trainer's log dir).
        """
        if not str(filename).endswith(".png"):
            raise ValueError(f"MetricsPlot(filename={filename!r}): must end with .png")
        self.filename = str(filename)
        self.keys = tuple(keys)
        self.eval_keys = tuple(eval_keys)
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.history: dict[str, dict[int, float]] = {}
        self.last_path: Path | None = None

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Resolved on every rank: `trainer.log_dir` broadcasts from rank 0.
        if self.dirpath is None:
            self.dirpath = Path(trainer.log_dir or trainer.default_root_dir)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        metrics = trainer.callback_metrics
        for key in self.keys:
            if key in metrics:
                self.record(key, trainer.global_step, float(metrics[key]))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._collect_eval(trainer)
        if trainer.is_global_zero and any(self.history.values()):
            self.last_path = self.write(self.dirpath or Path(trainer.default_root_dir))

    # ------------------------------------------------------------------ data
    def record(self, key: str, step: int, value: float) -> None:
        """Store one point; a second value at the same step replaces the first."""
        self.history.setdefault(key, {})[int(step)] = float(value)

    def rows(self) -> list[tuple[int, str, float]]:
        """The history as (step, key, value) rows, sorted by step then key."""
        return sorted((step, key, value) for key, points in self.history.items() for step, value in points.items())

    def write(self, directory: str | Path) -> Path:
        """Write the PNG and `metrics_history.csv` into `directory`; returns the PNG path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "metrics_history.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "key", "value"])
            writer.writerows(self.rows())
        path = directory / self.filename
        self.figure().savefig(path, dpi=100)
        return path

    def figure(self) -> Figure:
        """One subplot per quantity; train curves as lines (with a moving average), eval points as markers."""
        quantities: dict[str, list[str]] = {}
        for key in (*self.keys, *self.eval_keys, *self.history):
            if self.history.get(key):
                members = quantities.setdefault(key.rsplit("/", 1)[-1], [])
                if key not in members:
                    members.append(key)
        fig = Figure(figsize=(5 * max(1, len(quantities)), 3.6), layout="constrained")
        axes = fig.subplots(1, max(1, len(quantities)), squeeze=False)[0]
        for ax, (quantity, keys) in zip(axes, quantities.items()):
            for key in keys:
                steps, values = zip(*sorted(self.history[key].items()))
                if key in self.eval_keys:
                    ax.plot(steps, values, "o--", label=key)
                else:
                    line, = ax.plot(steps, values, alpha=0.35, linewidth=1)
                    ax.plot(steps, moving_average(values), color=line.get_color(), label=key)
            ax.set_title(quantity.replace("_", " "))
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        return fig

    def _collect_eval(self, trainer: L.Trainer) -> None:
        for callback in trainer.callbacks:
            if isinstance(callback, HeldOutEval):
                for step, metrics in callback.history:
                    for key in self.eval_keys:
                        if key in metrics:
                            self.record(key, step, metrics[key])

    # ------------------------------------------------------------------ checkpointing
    @property
    def state_key(self) -> str:
        return self._generate_state_key(filename=self.filename)

    def state_dict(self) -> dict[str, Any]:
        return {"history": {key: dict(points) for key, points in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {key: {int(s): float(v) for s, v in points.items()}
                        for key, points in state_dict.get("history", {}).items()}


def moving_average(values: Sequence[float], window: int | None = None) -> list[float]:
    """Trailing mean over `window` points (default: a tenth of the curve, at least 1)."""
    window = window or max(1, len(values) // 10)
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out
