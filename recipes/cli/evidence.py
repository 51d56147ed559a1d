"""The statistics of `r1 compare`: metrics of one held-out evaluation's per-prompt records, their bootstrap over
prompts (paired between arms: every arm is evaluated on the same held-out prompts), training summaries read from an
arm's ``metrics.csv``, and the per-step curves of all arms in one PNG.

A metric is named by a string (`metric_fn`); its value on one evaluation is a function of the list of per-prompt
records `PolicyModule.evaluate` writes (`callbacks.evaluation.read_records`). With several seeds an arm's value is
the mean over seeds of the metric of each seed's records, and the bootstrap draws the same prompt indices for every
seed and every arm, so a difference between two arms keeps its pairing by prompt.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Records = list[dict[str, Any]]
MetricFn = Callable[[Records], float]

METRIC_HELP = {
    "accuracy": "greedy held-out accuracy (the recipe's accuracy reward > 0.5)",
    "completion_length": "mean greedy completion length (tokens)",
    "wrong_length": "mean length of the wrong greedy completions (tokens): Dr. GRPO's length-bias signal",
    "right_length": "mean length of the correct greedy completions (tokens)",
    "reward": "mean weighted reward of the greedy completions",
    "pass": "pass@k (HeldOutEval k > 1)",
    "minority_accuracy": "accuracy on the prompts outside the most frequent domain",
    "rewards/<name>": "mean of one reward function (a format rate, a reference judge)",
    "domain/<name>/accuracy": "accuracy on one domain's prompts",
    "false_negative_rate/<judge>": "share of the answers reward <judge> accepts that the accuracy reward rejects",
    "false_positive_rate/<judge>": "share of the answers reward <judge> rejects that the accuracy reward accepts",
}
"""The metric names `metric_fn` understands."""


def _mean(values: Sequence[float | None]) -> float:
    kept = [float(v) for v in values if v is not None and v == v]
    return sum(kept) / len(kept) if kept else math.nan


def _correct(record: dict[str, Any]) -> bool | None:
    value = record.get("accuracy")
    return None if value is None else value > 0.5


def _majority_domain(records: Records) -> Any:
    counts = Counter(r.get("domain") for r in records if r.get("domain") is not None)
    return counts.most_common(1)[0][0] if counts else None


def metric_fn(name: str) -> MetricFn:
    """The function of per-prompt records named `name` (see `METRIC_HELP`); NaN where it is undefined (no wrong
    answer for `wrong_length`, no accepted answer for a false-negative rate).

    >>> records = [{"accuracy": 1.0, "completion_length": 10, "rewards": {"judge": 1.0}},
    ...            {"accuracy": 0.0, "completion_length": 30, "rewards": {"judge": 1.0}},
    ...            {"accuracy": 0.0, "completion_length": 50, "rewards": {"judge": 0.0}}]
    >>> metric_fn("wrong_length")(records), metric_fn("false_negative_rate/judge")(records)
    (40.0, 0.5)
    >>> metric_fn("false_positive_rate/judge")(records), metric_fn("minority_accuracy")(records)
    (0.0, nan)
    """
    simple: dict[str, MetricFn] = {
        "accuracy": lambda rs: _mean([r.get("accuracy") for r in rs]),
        "completion_length": lambda rs: _mean([r.get("completion_length") for r in rs]),
        "wrong_length": lambda rs: _mean([r.get("completion_length") for r in rs if _correct(r) is False]),
        "right_length": lambda rs: _mean([r.get("completion_length") for r in rs if _correct(r) is True]),
        "reward": lambda rs: _mean([r.get("reward") for r in rs]),
        "pass": lambda rs: _mean([r.get("pass") for r in rs]),
    }
    if name in simple:
        return simple[name]
    if name == "minority_accuracy":
        def minority(rs: Records) -> float:
            major = _majority_domain(rs)
            return _mean([r.get("accuracy") for r in rs if r.get("domain") not in (None, major)])
        return minority
    parts = name.split("/")
    if len(parts) == 2 and parts[0] == "rewards":
        return lambda rs: _mean([(r.get("rewards") or {}).get(parts[1]) for r in rs])
    if len(parts) == 3 and parts[0] == "domain" and parts[2] == "accuracy":
        return lambda rs: _mean([r.get("accuracy") for r in rs if str(r.get("domain")) == parts[1]])
    if len(parts) == 2 and parts[0] in ("false_negative_rate", "false_positive_rate"):
        judge, accepted = parts[1], parts[0] == "false_negative_rate"

        def errors(rs: Records) -> float:  # among the judge's accepted (rejected) answers: the share misjudged
            kept = [r for r in rs if (r.get("rewards") or {}).get(judge) is not None
                    and (r["rewards"][judge] > 0.5) == accepted and _correct(r) is not None]
            return _mean([float(_correct(r) != accepted) for r in kept])
        return errors
    raise ValueError(f"metric {name!r} is unknown; metrics: {', '.join(METRIC_HELP)}")


def seed_mean(fn: MetricFn, per_seed: Sequence[Records], index: np.ndarray | None = None) -> float:
    """Mean over seeds of `fn` on each seed's records (resampled at `index` when given)."""
    values = [fn(rs if index is None else [rs[i] for i in index]) for rs in per_seed]
    return float(np.nanmean(values)) if any(v == v for v in values) else math.nan


def bootstrap_indices(n: int, replicates: int, seed: int = 0) -> np.ndarray:
    """(replicates, n) prompt indices drawn with replacement; the same draws serve every arm (paired)."""
    return np.random.default_rng(seed).integers(0, n, size=(replicates, n))


def summarize(fn: MetricFn, per_seed: Sequence[Records], draws: np.ndarray) -> dict[str, float]:
    """{"mean", "se"} of one arm: the metric and its bootstrap standard error over prompts, plus "se_seeds" (the
    standard error of the per-seed values) with two seeds or more."""
    values = np.array([seed_mean(fn, per_seed, idx) for idx in draws])
    out = {"mean": seed_mean(fn, per_seed), "se": float(np.nanstd(values, ddof=1)) if len(values) > 1 else math.nan}
    if len(per_seed) > 1:
        by_seed = np.array([fn(rs) for rs in per_seed])
        by_seed = by_seed[~np.isnan(by_seed)]
        out["se_seeds"] = float(by_seed.std(ddof=1) / math.sqrt(len(by_seed))) if len(by_seed) > 1 else math.nan
    return out


def paired_difference(fn: MetricFn, arm: Sequence[Records], base: Sequence[Records], draws: np.ndarray
                      ) -> dict[str, float]:
    """arm - base: {"diff", "low", "high"} (the 95% percentile interval of the paired bootstrap) and "p_le_0" (the
    share of replicates where the arm is not above the baseline)."""
    diffs = np.array([seed_mean(fn, arm, idx) - seed_mean(fn, base, idx) for idx in draws])
    diffs = diffs[~np.isnan(diffs)]
    if not len(diffs):
        return {"diff": math.nan, "low": math.nan, "high": math.nan, "p_le_0": math.nan}
    return {"diff": seed_mean(fn, arm) - seed_mean(fn, base), "low": float(np.percentile(diffs, 2.5)),
            "high": float(np.percentile(diffs, 97.5)), "p_le_0": float((diffs <= 0).mean())}


# ---------------------------------------------------------------------------------------------- training logs
CURVE_KEYS = ("train/reward", "train/accuracy", "train/completion_length")


def read_train_log(path: str | Path | None):
    """The per-step training rows of a CSVLogger ``metrics.csv`` (one row per step, NaN-only columns dropped), or
    None when there is no such file."""
    import pandas as pd

    if path is None or not Path(path).is_file():
        return None
    frame = pd.read_csv(path)
    train = [c for c in frame.columns if c.startswith("train/")]
    if "step" not in frame or not train:
        return None
    return frame.dropna(subset=train, how="all").groupby("step", as_index=False)[train].mean()


def train_summary(frames: Sequence[Any]) -> dict[str, float]:
    """Means over seeds of: every train/ metric averaged over steps (`mean/<key>`) and the sampled tokens summed over
    the run (`total/generated_tokens`, dropped dynamic-sampling groups included)."""
    frames = [f for f in frames if f is not None]
    if not frames:
        return {}
    out: dict[str, float] = {}
    keys = dict.fromkeys(k for f in frames for k in f.columns if k.startswith("train/"))
    for key in keys:
        out[f"mean/{key}"] = _mean([float(f[key].mean()) for f in frames if key in f])
    tokens = [float(f["train/generated_tokens"].sum()) for f in frames if "train/generated_tokens" in f]
    if tokens:
        out["total/generated_tokens"] = float(np.mean(tokens))
    return out


def plot_curves(curves: dict[str, list[Any]], evals: dict[str, dict[int, float]], path: Path, title: str,
                eval_metric: str = "accuracy") -> Path:
    """One PNG: each arm's training curves (`CURVE_KEYS`, mean over seeds, per step) and its held-out `eval_metric`
    at each evaluation step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_KEYS) + 1, figsize=(4.2 * (len(CURVE_KEYS) + 1), 3.4))
    for arm, frames in curves.items():
        frames = [f for f in frames if f is not None]
        for ax, key in zip(axes, CURVE_KEYS):
            series = [f.set_index("step")[key] for f in frames if key in f]
            if series:
                mean = sum(series) / len(series)
                ax.plot(mean.index, mean.values, label=arm)
        points = evals.get(arm, {})
        if points:
            steps = sorted(points)
            axes[-1].plot(steps, [points[s] for s in steps], marker="o", label=arm)
    for ax, key in zip(axes, [*CURVE_KEYS, f"held-out {eval_metric}"]):
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["METRIC_HELP", "bootstrap_indices", "metric_fn", "paired_difference", "plot_curves", "read_train_log",
           "seed_mean", "summarize", "train_summary"]
