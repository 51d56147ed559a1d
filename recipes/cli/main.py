"""`r1`: the recipe command line (LightningCLI).

    r1 list                                        recipes, their papers and configs
    r1 fit --config recipes/configs/grpo.yaml      train (any --trainer.*, --model.*, --data.* override)
    r1 fit --config ... --ckpt_path last.ckpt      resume
    r1 compare --configs a.yaml b.yaml [overrides] train each config in turn, then a table of their evaluations
    r1 compare --preset laser [--seeds 0 1 2]      a recipe against its baseline, bootstrap intervals (--list)
    r1 run --config recipes/pipelines/lhrm.yaml [--restart_from STAGE]   a multi-stage pipeline (SFT -> RL, ...)
    r1 cloud fit --config ... --machine H100_X_8   the same run as a Lightning AI job (docs/cloud.md)
    r1 subspaces --config recipes/configs/safety_subspaces.yaml   safety-subspace analysis (not a fit config)

A bad config exits with status 2 and one line naming the field and the fix (no traceback).
"""

from __future__ import annotations

import os
import sys
import warnings

# Before torch is imported: spinning OpenMP threads make a small CPU box collapse when anything else runs
# beside the job (see benchmarks/grpo_step.py); passive waiting costs nothing when the job runs alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from recipes.cli.fit import run_fit  # noqa: E402
from recipes.cli.registry import CONFIG_DIR, RECIPES, recipe_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from_shell = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "list":
        from rich.console import Console

        # Piped output (scripts, tests) gets a wide console so rows are not wrapped mid-word.
        console = Console(width=None if sys.stdout.isatty() else 200)
        console.print(recipe_table())
        console.print("train one: r1 fit --config recipes/configs/<config>; its options: "
                      "r1 fit --config recipes/configs/<config> --print_config; pipelines: recipes/pipelines/")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print(f"\nrecipes: {', '.join(RECIPES)}  (configs in {CONFIG_DIR})")
        print("\nOptions: `r1 fit --help` lists every --trainer/--model/--data option; "
              "`r1 fit --model.help recipes.laser.LASER` one recipe's options with their docs; "
              "`r1 compare --help`, `r1 run --help`, `r1 cloud fit --help`, `r1 subspaces --help`.")
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if from_shell and os.getcwd() not in sys.path:  # as `python -m` does: a config may name ./my_rewards.py's fns
        sys.path.insert(0, os.getcwd())
    warnings.filterwarnings("ignore", category=FutureWarning)
    if argv and argv[0] == "compare":
        from recipes.cli.compare import main as compare_main

        return compare_main(argv[1:])
    if argv and argv[0] == "run":
        from recipes.cli.stages import main as run_main

        return run_main(argv[1:])
    if argv and argv[0] == "subspaces":
        from recipes.safety_subspaces import main as subspaces_main

        return subspaces_main(argv[1:])
    if argv and argv[0] == "cloud":
        from recipes.cli.cloud import main as cloud_main

        return cloud_main(argv[1:])
    return run_fit(None if from_shell else argv)
