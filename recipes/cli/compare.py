"""`r1 compare`: train several arms (configs, or a recipe against its baseline) over seeds, then compare their
held-out evaluations with bootstrap uncertainty.

    r1 compare --preset laser                          LASER against GRPO on the same data (README "Small-scale evidence")
    r1 compare --preset dr_grpo --seeds 0 1 2          three seeds per arm
    r1 compare --configs ppe_think.yaml ppe_plan.yaml --trainer.max_steps 20
    r1 compare --list                                  the presets, their arms and claims

Every option `compare` does not know (``--trainer.*``, ``--model.*``, ``--data.*``, or anything after ``--``) is an
override applied to every arm, as in `r1 fit`. Arm `a` with seed `s` trains in ``<out>/<a>/seed<s>`` (``<out>/<a>``
without ``--seeds``), in this process, one after another, with a CSVLogger there unless an override names a logger.

Resumable: a finished arm writes ``result.json`` with a fingerprint of its config files, overrides and seed; a rerun
with the same fingerprint reads it instead of training again (presets that share an arm, such as the GRPO baseline
of `laser`, `dr_grpo` and `dapo`, share their output folder and so train it once). Delete the folder to retrain.

The numbers: each arm's first evaluation (step 0, "before") and last ("after") of its `HeldOutEval` (added with its
defaults when a config has none), computed from the per-prompt records it saves. Each metric is the mean over seeds
with its bootstrap standard error over held-out prompts (and the standard error over seeds with two or more); each
arm's difference from the baseline arm has a paired 95% bootstrap interval (the same resampled prompts for both
arms). Training summaries (generated tokens, zero-signal groups) come from each arm's metrics.csv. Written:
``<out>/comparison.json`` (everything), ``<out>/comparison.csv`` (one row per arm and seed), ``<out>/curves.png``
(per-step training curves and held-out points of every arm) and, with ``--results PATH``, a copy of the JSON and PNG.
"""

from __future__ import annotations

import argparse
import csv
import gc
import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modules.atomic import atomic_write_text, json_safe
from recipes.cli.registry import CONFIG_DIR

FORMAT_REWARD_NAMES = ("exact_structure", "format")
BOOTSTRAP_REPLICATES = 1000


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: config files (merged in order, as repeated ``--config``) and overrides."""

    name: str
    configs: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    warm_start: str | None = None
    """A pipeline file (`r1 run` format) run first, once for all seeds and resumable; its last stage's model becomes
    this arm's model_name_or_path (its base model: the pipeline's `model`, or the user's model override)."""


@dataclass(frozen=True)
class Preset:
    """A shipped comparison: its arms, the arm the others are measured against, the metrics of its table, and
    the output folder shared by presets that have an arm in common."""

    arms: tuple[Arm, ...]
    claim: str = ""
    baseline: str | None = None
    metrics: tuple[str, ...] = ("accuracy", "completion_length")
    folder: str | None = None
    seeds: tuple[int, ...] | None = None


def _configs_arm(name: str) -> Arm:
    return Arm(Path(name).stem, (name,))


ARITH = "evidence/arithmetic.yaml"  # GRPO on two-digit arithmetic with a boxed answer: the shared baseline
PRESETS: dict[str, Preset] = {
    "ppe": Preset(tuple(_configs_arm(n) for n in ("ppe_think.yaml", "ppe_plan.yaml", "ppe_code.yaml",
                                                 "ppe_knowledge.yaml", "ppe_examples.yaml")),
                  claim="pPE: the prior prompt shapes the trained model's behaviour (format rate per prompt)",
                  metrics=("accuracy", "rewards/exact_structure", "completion_length")),
    "laser": Preset((Arm("grpo", (ARITH,)), Arm("laser", ("evidence/arithmetic_laser.yaml",))),
                    claim="LASER: shorter completions at equal or better accuracy than GRPO",
                    baseline="grpo", metrics=("accuracy", "completion_length"), folder="arithmetic"),
    "dr_grpo": Preset((Arm("grpo", (ARITH,)),
                       Arm("dr_grpo", (ARITH,), ("--model.objective.loss_type=dr_grpo",
                                                 "--model.objective.scale_rewards=none"))),
                      claim="Dr. GRPO: GRPO's length normalisation lets wrong answers grow longer; Dr. GRPO does not",
                      baseline="grpo", metrics=("wrong_length", "accuracy", "completion_length"), folder="arithmetic"),
    "dapo": Preset((Arm("grpo", (ARITH,)),
                    Arm("dapo", (ARITH,), ("--model.objective.loss_type=dapo", "--model.objective.epsilon_high=0.28",
                                           "--model.batching.dynamic_sampling=true"))),
                   claim="DAPO: dynamic sampling trains only on groups with a signal; accuracy per generated token",
                   baseline="grpo", metrics=("accuracy", "completion_length"), folder="arithmetic"),
    "disco": Preset((Arm("grpo", ("evidence/domains.yaml",)), Arm("disco", ("evidence/domains_disco.yaml",))),
                    claim="DISCO: better minority-domain accuracy than GRPO on an imbalanced domain mix",
                    baseline="grpo", metrics=("minority_accuracy", "accuracy", "domain/math/accuracy")),
    "tinyv": Preset((Arm("rule", ("evidence/forms.yaml",)), Arm("tinyv", ("evidence/forms_tinyv.yaml",))),
                    claim="TinyV: an LLM verifier recovers the rule verifier's false negatives",
                    baseline="rule", metrics=("false_negative_rate/answer_forms",
                                              "false_positive_rate/answer_forms", "rewards/answer_forms")),
    "hgpo": Preset((Arm("sft_then_hgpo", ("evidence/hybrid.yaml",), warm_start="evidence/hft_warm_start.yaml"),),
                   claim="HGPO after its cold-start SFT: RL raises the format rate and accuracy over SFT alone "
                         "(step 0 = the SFT model)",
                   metrics=("accuracy", "rewards/hybrid_format", "completion_length")),
    "quickstart": Preset((Arm("quickstart", ("quickstart.yaml",)),), seeds=(0, 1, 2),
                         claim="the quickstart's held-out accuracy over seeds", metrics=("accuracy",)),
}
"""Named comparisons for `--preset` (configs under recipes/configs/)."""


@dataclass
class RunResult:
    """One trained arm and seed: where it ran and its first and last held-out evaluation."""

    name: str
    config: str
    run_dir: str
    wall_s: float
    steps: int
    seed: int | None = None
    fingerprint: str = ""
    format_reward: str | None = None
    log_dir: str | None = None
    start_step: int | None = None
    end_step: int | None = None
    eval_start: dict[str, float] = field(default_factory=dict)
    eval_end: dict[str, float] = field(default_factory=dict)
    reused: bool = False  # read back from an earlier finished run, not trained now

    def metric(self, key: str, *, start: bool = False) -> float:
        """An eval metric (``eval/accuracy``) of the last evaluation (or the first), NaN when absent."""
        return float((self.eval_start if start else self.eval_end).get(key, math.nan))

    @property
    def format_rate(self) -> float:
        return math.nan if self.format_reward is None else self.metric(f"eval/rewards/{self.format_reward}/mean")

    def row(self) -> dict[str, Any]:
        """The flat table row (CSV columns)."""
        return {"run": self.name, "seed": self.seed, "config": self.config, "run_dir": self.run_dir,
                "steps": self.steps, "accuracy_start": self.metric("eval/accuracy", start=True),
                "accuracy_end": self.metric("eval/accuracy"),
                "completion_length": self.metric("eval/completion_length"), "format_rate": self.format_rate,
                "reward": self.metric("eval/reward"), "wall_s": self.wall_s}

    def records(self) -> dict[int, list[dict[str, Any]]]:
        """{step: per-prompt records} of this run's evaluations ({} when none were saved)."""
        from callbacks.evaluation import RECORDS_FILE, read_records

        path = Path(self.log_dir or self.run_dir) / RECORDS_FILE
        return read_records(path) if path.is_file() else {}


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


def _config_path(c: str) -> Path:
    path = Path(c)
    if not path.is_file() and (CONFIG_DIR / c).is_file():
        path = CONFIG_DIR / c
    if not path.is_file():
        raise ValueError(f"config {c!r} does not exist; give a path or a file name under {CONFIG_DIR}")
    return path


def resolve_arms(configs: list[str] | None, preset: str | None) -> tuple[Preset, list[Arm]]:
    """The preset (or an ad-hoc one for `--configs`) and its arms with config paths checked to exist (a bare file
    name is also looked up in recipes/configs)."""
    if bool(configs) == bool(preset):
        raise ValueError("give --configs a.yaml b.yaml ... or --preset NAME (one of them)")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"--preset={preset!r}; presets: {', '.join(PRESETS)}")
        spec = PRESETS[preset]
    else:
        spec = Preset(tuple(_configs_arm(c) for c in configs), metrics=("accuracy", "completion_length"))
    arms, seen = [], {}
    for arm in spec.arms:
        paths = tuple(str(_config_path(c)) for c in arm.configs)
        seen[arm.name] = seen.get(arm.name, 0) + 1
        name = arm.name if seen[arm.name] == 1 else f"{arm.name}_{seen[arm.name]}"
        arms.append(Arm(name, paths, arm.overrides, arm.warm_start and str(_config_path(arm.warm_start))))
    return spec, arms


def fingerprint(arm: Arm, overrides: list[str], seed: int | None) -> str:
    """sha256 over the arm's parsed config files (a comment or layout edit keeps the fingerprint), its and the user's
    overrides, and the seed."""
    import yaml

    files = [yaml.safe_load(Path(path).read_text()) for path in (*arm.configs, *([arm.warm_start] if arm.warm_start
                                                                                 else []))]
    payload = json.dumps([files, list(arm.overrides), list(overrides), seed], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _names_logger(overrides: list[str]) -> bool:
    return any(o == "--trainer.logger" or o.startswith(("--trainer.logger=", "--trainer.logger.")) for o in overrides)


MODEL_OVERRIDES = ("--model.model_name_or_path", "--model.init_args.model_name_or_path")


def _model_override(overrides: list[str]) -> str | None:
    """The last model path in `overrides` (``--model.model_name_or_path X`` or ``...=X``), None when none."""
    found = None
    for i, o in enumerate(overrides):
        key, eq, value = o.partition("=")
        if key in MODEL_OVERRIDES:
            found = value if eq else (overrides[i + 1] if i + 1 < len(overrides) else None)
    return found


def warm_start(pipeline: str, root: Path, overrides: list[str], echo=print) -> str:
    """Run (or read back: finished stages are skipped) the warm-start `pipeline` under `root`; its last model."""
    from recipes.cli.stages import load_pipeline, run_pipeline

    spec = load_pipeline(pipeline)
    results = run_pipeline(spec, root=root, model=_model_override(overrides), echo=echo)
    return str(results[spec["stages"][-1]["name"]]["model_path"])


def train_one(arm: Arm, overrides: list[str], run_dir: Path, format_reward: str | None = None,
              seed: int | None = None) -> RunResult:
    """Train `arm` with `overrides` (and `seed`) in `run_dir` (in this process) and read its held-out evaluations;
    a finished run with the same fingerprint is read back instead."""
    from lightning.pytorch.loggers import CSVLogger

    from callbacks.evaluation import HeldOutEval
    from recipes.base import RecipeConfigError
    from recipes.cli.fit import build_cli

    key = fingerprint(arm, overrides, seed)
    done = run_dir / "result.json"
    if done.is_file():
        saved = json.loads(done.read_text())
        if saved.get("fingerprint") == key:
            return RunResult(**{**saved, "reused": True})
    args = [a for path in arm.configs for a in ("--config", path)]
    args += [*arm.overrides, *(["--seed_everything", str(seed)] if seed is not None else []), *overrides]
    if arm.warm_start:  # shared by the arm's seeds: beside their folders
        root = (run_dir.parent if seed is not None else run_dir) / "warm_start"
        args += ["--model.model_name_or_path", warm_start(arm.warm_start, root, overrides)]
    if not _names_logger(overrides):
        args += ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(run_dir)]
    cli = build_cli([*args, "--trainer.default_root_dir", str(run_dir)], run=False)
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
    csv_loggers = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]
    history = evals[0].history
    result = RunResult(name=arm.name, config=" + ".join(arm.configs), run_dir=str(run_dir), wall_s=wall,
                       steps=trainer.global_step, seed=seed, fingerprint=key, format_reward=fmt,
                       log_dir=str(csv_loggers[0].log_dir if csv_loggers else trainer.log_dir or run_dir))
    if history:
        (result.start_step, result.eval_start), (result.end_step, result.eval_end) = history[0], history[-1]
        if result.start_step != 0:  # no step-0 evaluation (at_start: false): there is no "before"
            result.start_step, result.eval_start = None, {}
    if trainer.is_global_zero:
        atomic_write_text(done, json.dumps(json_safe(asdict(result)), indent=2, default=str))
    del cli, trainer, model
    gc.collect()
    return result


# ---------------------------------------------------------------------------------------------- analysis
def analyse(spec: Preset, results: list[RunResult], *, metrics: list[str] | None = None,
            replicates: int = BOOTSTRAP_REPLICATES) -> dict[str, Any]:
    """Per arm: each metric before and after (mean, bootstrap SE), the training summary; per non-baseline arm: the
    paired difference from the baseline. Arms are evaluated on the same held-out prompts (checked by count)."""
    from recipes.cli.evidence import (bootstrap_indices, metric_fn, paired_difference, read_train_log, summarize,
                                      train_summary)

    names = list(metrics or spec.metrics)
    fns = {m: metric_fn(m) for m in names}
    by_arm: dict[str, list[RunResult]] = {}
    for r in results:
        by_arm.setdefault(r.name, []).append(r)
    ends, starts = {}, {}
    for arm, runs in by_arm.items():
        recs = [r.records() for r in runs]
        ends[arm] = [rec[max(rec)] for rec in recs if rec]
        starts[arm] = [rec[0] for rec in recs if rec and 0 in rec and max(rec) > 0]
    sizes = {len(rs) for per_seed in [*ends.values(), *starts.values()] for rs in per_seed}
    if len(sizes) > 1:
        raise ValueError(f"the arms were evaluated on different numbers of held-out prompts {sorted(sizes)}; give "
                         "every arm the same data and HeldOutEval max_rows")
    draws = bootstrap_indices(sizes.pop(), replicates) if sizes else None
    out: dict[str, Any] = {"claim": spec.claim, "baseline": spec.baseline, "metrics": names, "arms": {},
                           "bootstrap_replicates": replicates, "held_out_prompts": None if draws is None
                           else int(draws.shape[1])}
    for arm, runs in by_arm.items():
        entry: dict[str, Any] = {"seeds": [r.seed for r in runs], "steps": runs[0].steps,
                                 "wall_s": sum(r.wall_s for r in runs) / len(runs), "run_dirs": [r.run_dir for r in runs],
                                 "after": {}, "before": {}}
        for m, fn in fns.items():
            if ends[arm] and draws is not None:
                entry["after"][m] = summarize(fn, ends[arm], draws)
            if starts[arm] and draws is not None:
                entry["before"][m] = summarize(fn, starts[arm], draws)
        entry["train"] = train_summary([read_train_log(Path(r.log_dir or r.run_dir) / "metrics.csv") for r in runs])
        tokens = entry["train"].get("total/generated_tokens")
        acc = entry["after"].get("accuracy", {}).get("mean")
        if tokens and acc is not None:  # accuracy reached per 10k sampled training tokens
            entry["accuracy_per_10k_generated_tokens"] = acc / tokens * 1e4
        out["arms"][arm] = entry
    base = spec.baseline
    if base in ends and draws is not None:
        out["vs_baseline"] = {arm: {m: paired_difference(fn, ends[arm], ends[base], draws) for m, fn in fns.items()}
                              for arm in by_arm if arm != base and ends[arm]}
    return out


def _pm(summary: dict[str, float] | None, spec: str = ".3f") -> str:
    if not summary or summary.get("mean") is None or summary["mean"] != summary["mean"]:
        return "-"
    se = summary.get("se")
    return format(summary["mean"], spec) + ("" if se is None or se != se else f" ± {format(se, spec)}")


def _spec_for(metric: str) -> str:
    return ".1f" if "length" in metric else ".3f"


def comparison_table(analysis: dict[str, Any]):
    """A rich Table: one row per arm; per metric "before -> after ± SE" and, for non-baseline arms, the paired
    difference from the baseline with its 95% interval."""
    from rich.table import Table

    table = Table(title="comparison: held-out greedy evaluation, before -> after training (± bootstrap SE over "
                        "prompts)")
    table.add_column("run", justify="left")
    table.add_column("steps", justify="right")
    for m in analysis["metrics"]:
        table.add_column(m, justify="right")
    table.add_column("gen. tokens", justify="right")
    table.add_column("wall (s)", justify="right")
    for arm, entry in analysis["arms"].items():
        cells = []
        for m in analysis["metrics"]:
            spec = _spec_for(m)
            before = _pm({"mean": entry["before"][m]["mean"]}, spec) if m in entry["before"] else "-"
            cell = f"{before} -> {_pm(entry['after'].get(m), spec)}"
            d = analysis.get("vs_baseline", {}).get(arm, {}).get(m)
            if d and d["diff"] == d["diff"]:
                cell += f"\nvs {analysis['baseline']}: {d['diff']:+{spec}} [{d['low']:+{spec}}, {d['high']:+{spec}}]"
            cells.append(cell)
        tokens = entry["train"].get("total/generated_tokens")
        table.add_row(arm, str(entry["steps"]), *cells, "-" if tokens is None else f"{tokens:,.0f}",
                      f"{entry['wall_s']:.0f}")
    return table


def write_results(results: list[RunResult], out: Path, analysis: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """``comparison.csv`` (one row per arm and seed) and ``comparison.json`` (the analysis and the rows)."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "comparison.csv", out / "comparison.json"
    rows = [r.row() for r in results]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["run"])
        writer.writeheader()
        writer.writerows(rows)
    payload = {**(analysis or {}), "runs": [{**asdict(r), **r.row()} for r in results]}
    atomic_write_text(json_path, json.dumps(json_safe(payload), indent=2, default=str))
    return csv_path, json_path


def plot(analysis: dict[str, Any], results: list[RunResult], path: Path, title: str) -> Path | None:
    """curves.png: the training curves and held-out accuracy of every arm (None without any training log)."""
    from recipes.cli.evidence import metric_fn, read_train_log, seed_mean

    curves: dict[str, list[Any]] = {}
    evals: dict[str, dict[int, float]] = {}
    fn = metric_fn("accuracy")
    for arm in analysis["arms"]:
        runs = [r for r in results if r.name == arm]
        curves[arm] = [read_train_log(Path(r.log_dir or r.run_dir) / "metrics.csv") for r in runs]
        recs = [r.records() for r in runs]
        steps = set.intersection(*(set(rec) for rec in recs)) if recs and all(recs) else set()
        evals[arm] = {s: seed_mean(fn, [rec[s] for rec in recs]) for s in sorted(steps)}
    if not any(f is not None for frames in curves.values() for f in frames):
        return None
    from recipes.cli.evidence import plot_curves

    return plot_curves(curves, evals, path, title)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r1 compare", allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                epilog="Other options (--trainer.*, --model.*, --data.*) apply to every run.")
    p.add_argument("--configs", nargs="+", help="config files to train, in order (one arm each)")
    p.add_argument("--preset", help=f"a named comparison: {', '.join(PRESETS)} (see --list)")
    p.add_argument("--list", action="store_true", help="print the presets, their arms and claims, and exit")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds per arm (default: the preset's, else the config's)")
    p.add_argument("--out", help="output folder (default runs/compare/<preset's folder or name>, or runs/compare)")
    p.add_argument("--results", help="also copy the JSON (and PNG beside it) here, e.g. benchmarks/results/x.json")
    p.add_argument("--metrics", nargs="+", help="table metrics (default: the preset's): accuracy, "
                                                "completion_length, wrong_length, rewards/<name>, ...")
    p.add_argument("--format_reward", help="reward whose eval mean is the CSV's format rate (default: "
                                           "exact_structure or the first reward named format*)")
    return p


def _print_presets(console) -> None:
    for name, spec in PRESETS.items():
        console.print(f"[bold]{name}[/]: {spec.claim}")
        for arm in spec.arms:
            start = f" (after {arm.warm_start})" if arm.warm_start else ""
            console.print(f"    {arm.name}: {' + '.join(arm.configs)} {' '.join(arm.overrides)}".rstrip() + start)


def main(argv: list[str]) -> int:
    """`r1 compare ...`; returns the exit status (2 for a bad option or config, naming it)."""
    from rich.console import Console

    from recipes.cli.evidence import metric_fn
    from recipes.cli.fit import EXIT_CONFIG_ERROR, config_error_line

    argv = list(argv)
    after = argv.index("--") if "--" in argv else len(argv)
    args, overrides = _parser().parse_known_args(argv[:after])
    overrides += argv[after + 1:]
    console = Console(width=None if sys.stdout.isatty() else 200)
    if args.list:
        _print_presets(console)
        return 0
    try:
        spec, arms = resolve_arms(args.configs, args.preset)
        for m in args.metrics or []:
            metric_fn(m)
    except ValueError as err:
        print(f"r1 compare: error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    seeds: list[int | None] = list(args.seeds or spec.seeds or [None])
    out = Path(args.out or (Path("runs/compare") / (spec.folder or args.preset or "")))
    results: list[RunResult] = []
    total = len(arms) * len(seeds)
    for i, (arm, seed) in enumerate((a, s) for a in arms for s in seeds):
        run_dir = out / arm.name / ("" if seed is None else f"seed{seed}")
        label = arm.name + ("" if seed is None else f" seed {seed}")
        console.print(f"[bold]r1 compare: run {i + 1}/{total}: {label}[/] ({' + '.join(arm.configs)})")
        try:
            result = train_one(arm, overrides, run_dir, args.format_reward, seed)
        except Exception as err:  # noqa: BLE001 - config errors become one line; anything else re-raises
            line = config_error_line(err)
            if line is None:
                raise
            print(f"r1 compare: error: {arm.name} ({' + '.join(arm.configs)}): {line}", file=sys.stderr)
            if results:
                write_results(results, out)
            return EXIT_CONFIG_ERROR
        if result.reused:
            console.print(f"  finished earlier (same fingerprint {result.fingerprint}): read from {run_dir}")
        results.append(result)
    try:
        analysis = analyse(spec, results, metrics=args.metrics)
    except ValueError as err:
        print(f"r1 compare: error: {err}", file=sys.stderr)
        write_results(results, out)
        return EXIT_CONFIG_ERROR
    csv_path, json_path = write_results(results, out, analysis)
    png = plot(analysis, results, out / "curves.png", spec.claim or "r1 compare")
    console.print(comparison_table(analysis))
    console.print(f"written: {csv_path}, {json_path}" + (f", {png}" if png else ""))
    if args.results:
        target = Path(args.results)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(json_path, target)
        if png:
            shutil.copyfile(png, target.with_suffix(".png"))
        console.print(f"copied to {target}" + (f" and {target.with_suffix('.png')}" if png else ""))
    return 0
