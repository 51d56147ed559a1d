"""Multi-stage pipelines from one command: `r1 run --config pipeline.yaml [--restart_from STAGE]`.

A pipeline file::

    root: runs/my_pipeline              # stage k writes <root>/<stage k name>/
    model: smollm2-135m-instruct        # optional: the model the first stage starts from
    overrides:                          # optional: dotted keys set in every fit stage's config
      trainer.max_steps: 100
    stages:
      - name: sft                       # a fit stage: an `r1 fit` config (a path, or an inline mapping) ...
        config: ../distill.yaml         # ... relative paths: next to this file, then recipes/configs/, then cwd
        overrides: {model.init_args.optimizer.learning_rate: 1.0e-4, data.init_args.task_kwargs.teachers: [adaptive]}
      - name: sample                    # a call stage: fn(stage_dir: Path, model_path: str, **kwargs) -> dict
        call: my_pkg.steps.sample_and_filter
        kwargs: {num_rows: 64}
      - name: sft2
        config: ../distill.yaml
        start_from: sft                 # default: the previous stage's model; "base" = the pipeline's `model`
        overrides: {data.init_args.source: "${stages.sample.data_path}"}

Rules:
- Model flow: a stage starts from the model of the previous stage (or of `start_from`: a stage name, or `base`).
  A fit stage gets it as `model.init_args.model_name_or_path`, unless the stage's own `overrides` set that key.
  A fit stage's output model is `<root>/<stage>/model`: the trained policy with LoRA merged into the base, plus
  the tokenizer (`Policy.save_merged`). A call stage's output model is the `model_path` it returns (default:
  its input).
- Overrides: a mapping of dotted keys (`a.b.c`; list items by index, `trainer.callbacks.0.init_args.k`) to
  values that replace the value there. Order: the pipeline's `overrides`, the stage's, then `--override` on the
  command line.
- Substitution in override values and call kwargs (strings, inside lists and mappings too):
  `${stages.NAME.KEY}` = `outputs[KEY]` of finished stage NAME (always `model_path`; a fit stage adds what its
  module put in `stage_outputs`; a call stage adds the keys it returned), `${root}` = the root directory,
  `${stage_dir}` = this stage's directory. A string that is exactly one reference takes the value itself (a
  list stays a list); references inside longer strings are replaced by their text.
- Each finished stage writes `<root>/<stage>/DONE.json`: {name, kind, model_path, outputs, metrics (a fit
  stage's final `trainer.callback_metrics`, or a call stage's returned `metrics`), started_at, seconds,
  spec_hash}. A rerun skips finished stages (it warns when a stage's resolved spec changed since it finished)
  up to the first unfinished one, which runs with every stage after it; `--restart_from NAME` reruns NAME and
  every stage after it. Stages run in this process, one after another
  (`recipes.cli.main(["fit", "--config", <stage_dir>/fit_config.yaml])`).
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import importlib
import json
import re
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import lightning as L
import yaml

DONE_FILE = "DONE.json"
STAGE_OUTPUT_FILE = "stage_output.json"
MODEL_KEY = "model.init_args.model_name_or_path"
_REF = re.compile(r"\$\{([^}]+)\}")


class StageError(RuntimeError):
    """A pipeline or stage problem; the message names the stage and the fix."""


# ----------------------------------------------------------------------------------------------- helpers
def set_dotted(config: dict, key: str, value: Any) -> None:
    """Set `config[a][b][c] = value` for key "a.b.c" (creating mappings; integer parts index lists).

    >>> cfg = {"model": {"init_args": {}}, "trainer": {"callbacks": [{"init_args": {}}]}}
    >>> set_dotted(cfg, "model.init_args.lr", 0.1); set_dotted(cfg, "trainer.callbacks.0.init_args.k", 2)
    >>> cfg["model"]["init_args"]["lr"], cfg["trainer"]["callbacks"][0]["init_args"]["k"]
    (0.1, 2)
    """
    parts = key.split(".")
    node: Any = config
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise StageError(f"override {key!r}: {'.'.join(parts[:i]) or 'the config'} is a list of {len(node)}; "
                                 f"{part!r} is not an index into it")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise StageError(f"override {key!r}: {'.'.join(parts[:i])} is {node!r}, not a mapping")
        if last:
            node[part] = value
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]


def read_done(stage_dir: str | Path) -> dict[str, Any] | None:
    """The DONE.json record of a stage directory, or None when the stage has not finished."""
    path = Path(stage_dir) / DONE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def substitute(value: Any, refs: dict[str, Any]) -> Any:
    """Replace `${name}` references (see the module docstring) in strings, lists and mappings.

    >>> substitute({"a": "${stages.s.rows}", "b": "dir=${root}/x"}, {"stages.s.rows": [1, 2], "root": "/r"})
    {'a': [1, 2], 'b': 'dir=/r/x'}
    """
    if isinstance(value, dict):
        return {k: substitute(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, refs) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def lookup(name: str) -> Any:
        if name not in refs:
            known = sorted(refs)
            raise StageError(f"unknown reference ${{{name}}}; available now: {known}. A stage can only refer to "
                             "stages listed before it")
        return refs[name]

    whole = _REF.fullmatch(value)
    if whole:
        return lookup(whole.group(1).strip())
    return _REF.sub(lambda m: str(lookup(m.group(1).strip())), value)


def _import(path: str) -> Callable[..., Any]:
    module_name, _, attr = path.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise StageError(f"call {path!r}: cannot import it ({err}); give a dotted path pkg.module.function") from None
    if not callable(fn):
        raise StageError(f"call {path!r} is not callable")
    return fn


def _hash(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------- the fit-stage callback
class StageOutput(L.Callback):
    """Added to every fit stage: at train end, save the merged model to `<directory>/model` and write
    `<directory>/stage_output.json` ({model_path, metrics, outputs}). `outputs` holds the module's
    `stage_outputs` dict when it has one (e.g. `Distill`'s dataset statistics)."""

    def __init__(self, directory: str) -> None:
        """
        Args:
            directory: the stage directory.
        """
        self.directory = Path(directory)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model_dir = self.directory / "model"
        policy = getattr(pl_module, "policy", None)
        from modules.sharded import is_sharded

        if not trainer.is_global_zero and policy is not None and is_sharded(policy.model):
            policy.save_merged(model_dir)  # FSDP: every rank gathers; rank 0 writes
        if trainer.is_global_zero:
            if policy is None or not callable(getattr(policy, "save_merged", None)):
                raise StageError(f"a fit stage needs a module with policy.save_merged(); {type(pl_module).__name__} "
                                 "has none")
            policy.save_merged(model_dir)
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
            record = {"model_path": str(model_dir), "metrics": metrics,
                      "outputs": dict(getattr(pl_module, "stage_outputs", {}) or {}), "global_step": trainer.global_step}
            (self.directory / STAGE_OUTPUT_FILE).write_text(json.dumps(record, indent=1, default=str))
        trainer.strategy.barrier("StageOutput")


# ------------------------------------------------------------------------------------------------ pipeline
def load_pipeline(path: str | Path) -> dict[str, Any]:
    """Read and check a pipeline file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"pipeline file {str(path)!r} does not exist")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list) or not spec["stages"]:
        raise StageError(f"{path}: a pipeline needs a non-empty `stages:` list (see `r1 run --help`)")
    unknown = sorted(set(spec) - {"root", "model", "overrides", "stages"})
    if unknown:
        raise StageError(f"{path}: unknown top-level key(s) {unknown}; use root, model, overrides, stages")
    names = []
    for i, stage in enumerate(spec["stages"]):
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str) or not stage["name"]:
            raise StageError(f"{path}: stage {i} needs a `name`")
        name = stage["name"]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in names:
            raise StageError(f"{path}: stage name {name!r} must be unique and use only letters, digits, _ . -")
        names.append(name)
        if ("config" in stage) == ("call" in stage):
            raise StageError(f"{path}: stage {name!r} needs exactly one of `config` (an r1 fit config) or `call`")
        allowed = {"name", "start_from", "config", "overrides"} if "config" in stage else {"name", "start_from", "call", "kwargs"}
        extra = sorted(set(stage) - allowed)
        if extra:
            raise StageError(f"{path}: stage {name!r} has unknown key(s) {extra}; allowed: {sorted(allowed)}")
        start = stage.get("start_from")
        if start is not None and start != "base" and start not in names[:-1]:
            raise StageError(f"{path}: stage {name!r} start_from={start!r}; use 'base' or an earlier stage name")
    spec["_path"] = str(path.resolve())
    return spec


def _resolve_config(config: Any, pipeline_path: Path) -> dict[str, Any]:
    if isinstance(config, dict):
        return copy.deepcopy(config)
    from recipes.cli.registry import CONFIG_DIR

    candidates = [Path(config)] if Path(config).is_absolute() else [pipeline_path.parent / config, CONFIG_DIR / config,
                                                                     Path.cwd() / config]
    for candidate in candidates:
        if candidate.is_file():
            return yaml.safe_load(candidate.read_text()) or {}
    raise StageError(f"config {config!r} not found (looked in {[str(c) for c in candidates]})")


def _fit_config(stage: dict, spec: dict, stage_dir: Path, start_model: str | None, refs: dict[str, Any],
                cli_overrides: dict[str, Any]) -> dict[str, Any]:
    config = _resolve_config(stage["config"], Path(spec["_path"]))
    overrides = {**(spec.get("overrides") or {}), **(stage.get("overrides") or {}), **cli_overrides}
    stage_sets_model = MODEL_KEY in (stage.get("overrides") or {}) or MODEL_KEY in cli_overrides
    config.setdefault("trainer", {})
    config["trainer"]["default_root_dir"] = str(stage_dir)
    if start_model is not None and not stage_sets_model:
        set_dotted(config, MODEL_KEY, start_model)
    for key, value in overrides.items():
        set_dotted(config, key, substitute(value, refs))
    callbacks = config["trainer"].get("callbacks") or []
    callbacks = [callbacks] if isinstance(callbacks, dict) else list(callbacks)
    callbacks.append({"class_path": "recipes.cli.stages.StageOutput", "init_args": {"directory": str(stage_dir)}})
    config["trainer"]["callbacks"] = callbacks
    return config


def run_pipeline(spec: dict[str, Any], *, root: str | Path | None = None, restart_from: str | None = None,
                 model: str | None = None, overrides: dict[str, Any] | None = None,
                 echo: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run the stages of a loaded pipeline in order; returns {stage: DONE record + {"status": ran|skipped}}."""
    names = [s["name"] for s in spec["stages"]]
    if restart_from is not None and restart_from not in names:
        raise StageError(f"--restart_from {restart_from!r}: no such stage; stages: {names}")
    root = Path(root or spec.get("root") or "runs/pipeline").resolve()
    base_model = model if model is not None else spec.get("model")
    cli_overrides = dict(overrides or {})
    restart_index = names.index(restart_from) if restart_from is not None else len(names)
    results: dict[str, dict[str, Any]] = {}
    refs: dict[str, Any] = {"root": str(root)}
    previous_model = base_model
    rerun_rest = False  # once a stage runs, every later stage reruns: its input may have changed
    for index, stage in enumerate(spec["stages"]):
        name = stage["name"]
        stage_dir = root / name
        start = stage.get("start_from")
        start_model = (base_model if start == "base" else results[start]["model_path"] if start else previous_model)
        stage_refs = {**refs, "stage_dir": str(stage_dir)}
        if "config" in stage:
            resolved: Any = _fit_config(stage, spec, stage_dir, start_model, stage_refs, cli_overrides)
        else:
            resolved = {"call": stage["call"], "kwargs": substitute(stage.get("kwargs") or {}, stage_refs),
                        "model_path": start_model}
        spec_hash = _hash(resolved)
        if index >= restart_index or rerun_rest:
            for stale in (DONE_FILE, STAGE_OUTPUT_FILE):
                (stage_dir / stale).unlink(missing_ok=True)
            shutil.rmtree(stage_dir / "model", ignore_errors=True)
        done = read_done(stage_dir)
        if done is not None:
            if done.get("spec_hash") != spec_hash:
                echo(f"[r1 run] warning: stage {name!r} finished with a different spec; pass --restart_from {name} "
                     "to rerun it")
            echo(f"[r1 run] {name}: finished earlier, skipped ({stage_dir / DONE_FILE})")
            record = {**done, "status": "skipped"}
        else:
            echo(f"[r1 run] {name}: running ({'fit' if 'config' in stage else stage['call']}) in {stage_dir}")
            record = {**_run_stage(name, stage_dir, resolved, start_model, spec_hash), "status": "ran"}
            rerun_rest = True
        results[name] = record
        previous_model = record["model_path"]
        refs.update({f"stages.{name}.{k}": v for k, v in record.get("outputs", {}).items()})
    return results


def _run_stage(name: str, stage_dir: Path, resolved: dict[str, Any], start_model: str | None,
               spec_hash: str) -> dict[str, Any]:
    stage_dir.mkdir(parents=True, exist_ok=True)
    started, started_at = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    if "call" in resolved:
        fn = _import(resolved["call"])
        out = fn(stage_dir=stage_dir, model_path=start_model, **resolved["kwargs"])
        if not isinstance(out, dict):
            raise StageError(f"stage {name!r}: {resolved['call']} returned {type(out).__name__}; it must return a dict "
                             "with at least model_path")
        out = dict(out)
        metrics = dict(out.pop("metrics", {}) or {})
        outputs = {"model_path": start_model, **out}
        kind = "call"
    else:
        from recipes.cli.fit import run_fit

        config_path = stage_dir / "fit_config.yaml"
        config_path.write_text(yaml.safe_dump(resolved, sort_keys=False))
        code = run_fit(["fit", "--config", str(config_path)])
        _free_memory()
        if code != 0:
            raise StageError(f"stage {name!r}: r1 fit exited with status {code} (the error is printed above); "
                             f"config: {config_path}")
        output_file = stage_dir / STAGE_OUTPUT_FILE
        if not output_file.is_file():
            raise StageError(f"stage {name!r}: training ended without {output_file} (was it interrupted?)")
        record = json.loads(output_file.read_text())
        metrics = record["metrics"]
        outputs = {**record.get("outputs", {}), "model_path": record["model_path"]}
        kind = "fit"
    done = {"name": name, "kind": kind, "model_path": outputs["model_path"], "outputs": outputs, "metrics": metrics,
            "started_at": started_at, "seconds": round(time.perf_counter() - started, 3), "spec_hash": spec_hash}
    (stage_dir / DONE_FILE).write_text(json.dumps(done, indent=1, default=str))
    return done


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


# ---------------------------------------------------------------------------------------------------- CLI
def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise StageError(f"--override {text!r}: write KEY=VALUE, e.g. trainer.max_steps=2")
    return key.strip(), yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    """`r1 run`: run a pipeline file. Returns 0 on success, 1 when a stage fails, 2 for a bad pipeline/option."""
    parser = argparse.ArgumentParser(prog="r1 run", description=__doc__.split("\n\n")[0],
                                     epilog="See recipes/cli/stages.py for the pipeline format.")
    parser.add_argument("--config", required=True, help="the pipeline YAML file")
    parser.add_argument("--restart_from", help="rerun this stage and every stage after it")
    parser.add_argument("--root", help="output root (default: the file's `root`)")
    parser.add_argument("--model", help="the starting model (default: the file's `model`)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="set a dotted key in every fit stage's config (YAML value); repeatable")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        spec = load_pipeline(args.config)
        overrides = dict(_parse_override(o) for o in args.override)
    except StageError as err:
        print(f"r1 run: error: {err}", file=sys.stderr)
        return 2
    try:
        results = run_pipeline(spec, root=args.root, restart_from=args.restart_from, model=args.model,
                               overrides=overrides)
    except StageError as err:
        print(f"r1 run: error: {err}", file=sys.stderr)
        return 1
    for name, record in results.items():
        print(f"[r1 run] {name}: {record['status']}, model {record['model_path']}")
    return 0


__all__ = ["StageError", "StageOutput", "load_pipeline", "main", "read_done", "run_pipeline", "set_dotted",
           "substitute"]
