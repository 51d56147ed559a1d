"""`r1 cloud fit`: run a recipe as a Lightning AI job (one machine or several) through `lightning-sdk`.

    r1 cloud fit --config recipes/configs/grpo.yaml --machine H100_X_8 [--num_nodes 2] [--studio my-studio]
                 [--teamspace my-team] [--interruptible] [--env KEY=VALUE ...] [--dry_run] [-- r1 fit overrides]

The config is parsed here first (a bad key fails on your laptop, not after a GPU boots). The job runs the same
`r1 fit` inside a snapshot of the Studio it is launched from (the repository and its environment), with
`--trainer.devices` set to the machine's GPU count and `--trainer.num_nodes` to the number of machines; Lightning
reads the node rank and master address the platform sets for multi-machine jobs. `--dry_run` prints the job
without submitting it. See docs/cloud.md.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass, field

import yaml


class CloudConfigError(ValueError):
    """A bad `r1 cloud` option; the message names it and the fix."""


@dataclass
class JobSpec:
    """What would be submitted: exactly the arguments given to `Job.run` / `MMT.run`."""

    name: str
    machine: str
    command: str
    num_machines: int = 1
    env: dict[str, str] = field(default_factory=dict)
    studio: str | None = None
    teamspace: str | None = None
    interruptible: bool = False
    max_runtime: int | None = None


def _sdk():
    try:
        import lightning_sdk
    except ImportError as err:
        raise CloudConfigError("r1 cloud needs the Lightning SDK: pip install 'r1-recipes[cloud]'") from err
    return lightning_sdk


def machine_names() -> list[str]:
    machine = _sdk().Machine
    return sorted(n for n in dir(machine) if not n.startswith("_") and isinstance(getattr(machine, n), machine))


def gpus_per_machine(name: str) -> int:
    """GPUs of a machine type (0 for CPU machines)."""
    machine = getattr(_sdk().Machine, name)
    return 0 if machine.is_cpu() else int(machine.accelerator_count)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1:]
    else:
        overrides = []
    parser = argparse.ArgumentParser(prog="r1 cloud fit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="recipe config (recipes/configs/<name>.yaml)")
    parser.add_argument("--machine", required=True, help="Lightning machine type, e.g. L4, A100_X_8, H100_X_8")
    parser.add_argument("--num_nodes", type=int, default=1, help="machines (multi-node = an MMT job)")
    parser.add_argument("--name", default=None, help="job name (default: r1-<config name>)")
    parser.add_argument("--studio", default=None, help="Studio whose snapshot the job runs in (default: this one)")
    parser.add_argument("--teamspace", default=None)
    parser.add_argument("--interruptible", action="store_true", help="spot machines (cheaper, may be preempted)")
    parser.add_argument("--max_runtime", type=int, default=None, help="seconds before the job is stopped")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--strategy", default=None, help="Lightning strategy (default: the config's, else ddp on >1 GPU)")
    parser.add_argument("--dry_run", action="store_true", help="print the job and exit without submitting")
    return parser.parse_args(argv), overrides


def check_config(config: str, overrides: list[str]) -> dict:
    """Parse the config with the same CLI the job runs (fails fast on a bad key); returns the parsed config."""
    from recipes.cli.fit import run_fit

    out = io.StringIO()
    try:
        with redirect_stdout(out):
            code = run_fit(["fit", "--config", config, *overrides, "--print_config"])
    except SystemExit as stop:
        code = stop.code or 0
    if code:
        raise CloudConfigError(f"--config {config} does not parse (see the error above); fix it before submitting")
    return yaml.safe_load(out.getvalue())


def build_job(args: argparse.Namespace, overrides: list[str]) -> JobSpec:
    names = machine_names()
    if args.machine not in names:
        raise CloudConfigError(f"--machine {args.machine!r} is not a Lightning machine type; use one of: "
                               f"{', '.join(names)}")
    if args.num_nodes < 1:
        raise CloudConfigError(f"--num_nodes {args.num_nodes}; it must be >= 1")
    gpus = gpus_per_machine(args.machine)
    if args.num_nodes > 1 and gpus == 0:
        raise CloudConfigError(f"--num_nodes {args.num_nodes} on CPU machines ({args.machine}): use a GPU machine")
    env = {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CloudConfigError(f"--env {item!r}; write KEY=VALUE")
        env[key] = value
    parsed = check_config(args.config, overrides)
    trainer = parsed.get("trainer") or {}
    fit = ["r1", "fit", "--config", args.config, *overrides]
    if gpus:
        fit += ["--trainer.accelerator", "gpu", "--trainer.devices", str(gpus), "--trainer.num_nodes", str(args.num_nodes)]
        strategy = args.strategy or (None if trainer.get("strategy") not in (None, "auto") else
                                     ("ddp" if gpus * args.num_nodes > 1 else None))
        if strategy:
            fit += ["--trainer.strategy", strategy]
    else:
        fit += ["--trainer.accelerator", "cpu"]
    command = "pip install -q -e '.[quant,vllm]' && " + " ".join(shlex.quote(part) for part in fit)
    name = args.name or "r1-" + args.config.rsplit("/", 1)[-1].removesuffix(".yaml").replace("_", "-")
    return JobSpec(name=name, machine=args.machine, command=command, num_machines=args.num_nodes, env=env,
                   studio=args.studio, teamspace=args.teamspace, interruptible=args.interruptible,
                   max_runtime=args.max_runtime)


def submit(spec: JobSpec):
    """Submit through the SDK: `Job.run` for one machine, `MMT.run` (multi-machine training) for several."""
    sdk = _sdk()
    kwargs = dict(name=spec.name, machine=getattr(sdk.Machine, spec.machine), command=spec.command, env=spec.env,
                  studio=spec.studio, teamspace=spec.teamspace, interruptible=spec.interruptible,
                  max_runtime=spec.max_runtime)
    if spec.num_machines > 1:
        return sdk.MMT.run(num_machines=spec.num_machines, **kwargs)
    return sdk.Job.run(**kwargs)


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "fit":
        print("usage: r1 cloud fit --config CONFIG --machine MACHINE [options] [-- overrides]; "
              "r1 cloud fit --help", file=sys.stderr)
        return 2
    try:
        args, overrides = parse_args(argv[1:])
        spec = build_job(args, overrides)
    except CloudConfigError as err:
        print(f"r1: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(asdict(spec), indent=2))
        return 0
    job = submit(spec)
    print(f"submitted {spec.name} on {spec.num_machines} x {spec.machine}: {getattr(job, 'link', job)}")
    return 0
