"""`r1 compare`: train several configs one after another and tabulate their held-out evaluations.

    r1 compare --configs recipes/configs/ppe_think.yaml recipes/configs/ppe_plan.yaml --trainer.max_steps 20
    r1 compare --preset ppe --trainer.max_steps 20 --out runs/ppe_compare

Every option `compare` does not know (``--trainer.*``, ``--model.*``, ``--data.*``, or anything after ``--``) is an
override applied to every run, as in `r1 fit`. Run `i` trains in ``<out>/<config stem>`` (its
``trainer.default_root_dir``), in this process, sequentially. The numbers come from each run's `HeldOutEval`
callback (added with its defaults when a config has none): its first evaluation (step 0: "before") and its last
("after"). Columns: eval accuracy before -> after, mean greedy completion length (tokens), format rate (the eval
mean of the format reward, `eval/rewards/<name>/mean`; see `format_reward_name`), eval reward, wall time. The
table is printed and written to ``<out>/comparison.csv`` and ``<out>/comparison.json`` (the JSON also holds every
eval metric before and after). Generic: any recipe configs can be compared (e.g. distillation teachers).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recipes.cli.registry import CONFIG_DIR

PRESETS: dict[str, tuple[str, ...]] = {
    "ppe": ("ppe_think.yaml", "ppe_plan.yaml", "ppe_code.yaml", "ppe_knowledge.yaml", "ppe_examples.yaml"),
}
"""Named config lists (files under recipes/configs/) for `--preset`."""

FORMAT_REWARD_NAMES = ("exact_structure", "format")


@dataclass
class RunResult:
    """One trained config and its first and last held-out evaluation."""

    name: str
    config: str
    run_dir: str
    wall_s: float
    steps: int
    format_reward: str | None = None
    start_step: int | None = None
    end_step: int | None = None
    eval_start: dict[str, float] = field(default_factory=dict)
    eval_end: dict[str, float] = field(default_factory=dict)

    def metric(self, key: str, *, start: bool = False) -> float:
        """An eval metric (``eval/accuracy``) of the last evaluation (or the first), NaN when absent."""
        return float((self.eval_start if start else self.eval_end).get(key, math.nan))

    @property
    def format_rate(self) -> float:
        return math.nan if self.format_reward is None else self.metric(f"eval/rewards/{self.format_reward}/mean")

    def row(self) -> dict[str, Any]:
        """The flat table row (CSV columns)."""
        return {"run": self.name, "config": self.config, "run_dir": self.run_dir, "steps": self.steps,
                "accuracy_start": self.metric("eval/accuracy", start=True),
                "accuracy_end": self.metric("eval/accuracy"),
                "completion_length": self.metric("eval/completion_length"), "format_rate": self.format_rate,
                "reward": self.metric("eval/reward"), "wall_s": self.wall_s}


def format_reward_name(names: list[str], wanted: str | None = None) -> str | None:
    """The reward whose eval mean is the format rate: `wanted` if given (must be one of `names`), else the first
    of `names` called ``exact_structure`` or starting with ``format``; None when there is none.

    >>> format_reward_name(["accuracy", "format"]), format_reward_name(["accuracy"])
    ('format', None)
    """
    if wanted is not None:
        if wanted not in names:
            raise ValueError(f"--format_reward={wanted!r} is not one of this config's rewards {names}")
        return wanted
    return next((n for n in names if n in FORMAT_REWARD_NAMES or n.startswith("format")), None)


def resolve_configs(configs: list[str] | None, preset: str | None) -> list[Path]:
    """The config paths to train, checked to exist (a bare file name is also looked up in recipes/configs)."""
    if bool(configs) == bool(preset):
        raise ValueError("give --configs a.yaml b.yaml ... or --preset NAME (one of them)")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"--preset={preset!r}; presets: {', '.join(PRESETS)}")
        configs = [str(CONFIG_DIR / name) for name in PRESETS[preset]]
    paths = []
    for c in configs:
        path = Path(c)
        if not path.is_file() and (CONFIG_DIR / c).is_file():
            path = CONFIG_DIR / c
        if not path.is_file():
            raise ValueError(f"config {c!r} does not exist; give a path or a file name under {CONFIG_DIR}")
        paths.append(path)
    return paths


def _run_names(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        seen[p.stem] = seen.get(p.stem, 0) + 1
        names.append(p.stem if seen[p.stem] == 1 else f"{p.stem}_{seen[p.stem]}")
    return names


def train_one(config: Path, name: str, overrides: list[str], run_dir: Path, format_reward: str | None = None
              ) -> RunResult:
    """Train `config` with `overrides` in `run_dir` (in this process) and read its held-out evaluations."""
    from callbacks.evaluation import HeldOutEval
    from recipes.base import RecipeConfigError
    from recipes.cli.fit import build_cli

    cli = build_cli(["--config", str(config), *overrides, "--trainer.default_root_dir", str(run_dir)], run=False)
    trainer, model = cli.trainer, cli.model
    evals = [cb for cb in trainer.callbacks if isinstance(cb, HeldOutEval)]
    if not evals:
        evals = [HeldOutEval()]  # before and after only
        trainer.callbacks.append(evals[0])
    reward_names = list(getattr(getattr(model, "reward_set", None), "names", []))
    try:
        fmt = format_reward_name(reward_names, format_reward)
    except ValueError as err:
        raise RecipeConfigError(str(err)) from None
    started = time.perf_counter()
    trainer.fit(model, datamodule=cli.datamodule)
    wall = time.perf_counter() - started
    history = evals[0].history
    result = RunResult(name=name, config=str(config), run_dir=str(run_dir), wall_s=wall, steps=trainer.global_step,
                       format_reward=fmt)
    if history:
        (result.start_step, result.eval_start), (result.end_step, result.eval_end) = history[0], history[-1]
        if result.start_step != 0:  # no step-0 evaluation (at_start: false): there is no "before"
            result.start_step, result.eval_start = None, {}
    del cli, trainer, model
    gc.collect()
    return result


def _fmt(value: float, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def comparison_table(results: list[RunResult]):
    """A rich Table, one row per run."""
    from rich.table import Table

    table = Table(title="comparison: held-out greedy evaluation, before -> after training")
    for col in ("run", "steps", "accuracy", "length", "format rate", "reward", "wall (s)"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in results:
        row = r.row()
        accuracy = f"{_fmt(row['accuracy_start'], '.3f')} -> {_fmt(row['accuracy_end'], '.3f')}"
        table.add_row(r.name, str(r.steps), accuracy, _fmt(row["completion_length"], ".1f"),
                      _fmt(row["format_rate"], ".3f"), _fmt(row["reward"], ".3f"), _fmt(row["wall_s"], ".1f"))
    return table


def write_results(results: list[RunResult], out: Path) -> tuple[Path, Path]:
    """``comparison.csv`` (the table rows) and ``comparison.json`` (rows plus every eval metric) under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "comparison.csv", out / "comparison.json"
    rows = [r.row() for r in results]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["run"])
        writer.writeheader()
        writer.writerows(rows)
    nan_free = [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                 for k, v in {**asdict(r), **r.row()}.items()} for r in results]
    json_path.write_text(json.dumps(nan_free, indent=2, default=str))
    return csv_path, json_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r1 compare", allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                epilog="Other options (--trainer.*, --model.*, --data.*) apply to every run.")
    p.add_argument("--configs", nargs="+", help="config files to train, in order")
    p.add_argument("--preset", help=f"a named config list: {', '.join(PRESETS)}")
    p.add_argument("--out", help="output folder (default runs/compare/<preset> or runs/compare)")
    p.add_argument("--format_reward", help="reward whose eval mean is the format rate (default: exact_structure "
                                           "or the first reward named format*)")
    return p


def main(argv: list[str]) -> int:
    """`r1 compare ...`; returns the exit status (2 for a bad option or config, naming it)."""
    from rich.console import Console

    from recipes.cli.fit import EXIT_CONFIG_ERROR, config_error_line

    argv = list(argv)
    after = argv.index("--") if "--" in argv else len(argv)
    args, overrides = _parser().parse_known_args(argv[:after])
    overrides += argv[after + 1:]
    try:
        paths = resolve_configs(args.configs, args.preset)
    except ValueError as err:
        print(f"r1 compare: error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    out = Path(args.out or (Path("runs/compare") / (args.preset or "")))
    console = Console(width=None if sys.stdout.isatty() else 200)
    results: list[RunResult] = []
    for i, (path, name) in enumerate(zip(paths, _run_names(paths))):
        console.print(f"[bold]r1 compare: run {i + 1}/{len(paths)}: {name}[/] ({path})")
        try:
            results.append(train_one(path, name, overrides, out / name, args.format_reward))
        except Exception as err:  # noqa: BLE001 - config errors become one line; anything else re-raises
            line = config_error_line(err)
            if line is None:
                raise
            print(f"r1 compare: error: {name} ({path}): {line}", file=sys.stderr)
            if results:
                write_results(results, out)
            return EXIT_CONFIG_ERROR
    csv_path, json_path = write_results(results, out)
    console.print(comparison_table(results))
    console.print(f"written: {csv_path}, {json_path}")
    return 0
