"""`r1`: the recipe command line (LightningCLI).

    r1 list                                        recipes, their papers and configs
    r1 fit --config recipes/configs/grpo.yaml      train (any --trainer.*, --model.*, --data.* override)
    r1 fit --config ... --ckpt_path last.ckpt      resume

A bad config exits with status 2 and one line naming the field and the fix (no traceback).
"""

from __future__ import annotations

import os
import re
import sys
import warnings

from lightning.pytorch.cli import LightningCLI

from recipes.registry import CONFIG_DIR, RECIPES, recipe_table

EXIT_CONFIG_ERROR = 2


class R1CLI(LightningCLI):
    """LightningCLI with the project's defaults: no automatic optimiser wiring (the recipes optimise
    manually), configs saved next to the logs."""


def _config_errors() -> tuple[type[BaseException], ...]:
    from datamodules.errors import DataConfigError
    from modules.models.registry import ModelNotFoundError
    from modules.policy import PolicyConfigError
    from modules.rewards.registry import RewardError
    from recipes.base import RecipeConfigError

    return (DataConfigError, ModelNotFoundError, PolicyConfigError, RecipeConfigError, RewardError)


def one_line(message: str) -> str:
    """Condense a (possibly nested, multi-line) jsonargparse message into its most specific line."""
    lines = [ln.strip(" -") for ln in str(message).splitlines() if ln.strip(" -")]
    # The innermost 'Parser key' / 'Key' line names the field; prefer it.
    specific = [ln for ln in lines if re.search(r"(Parser key|Key|key) ['\"]", ln) or "does not accept" in ln
                or "Unrecognized arguments" in ln or "unrecognized" in ln.lower()]
    picked = specific[-1] if specific else (lines[0] if lines else "invalid configuration")
    return re.sub(r"\s+", " ", picked)


def _hint(message: str) -> str:
    if "Unrecognized" in message or "does not accept" in message or "unexpected" in message.lower():
        return " (fix: remove or rename the key; `r1 fit --help` and `r1 fit --model.help CLASS` list valid keys)"
    if "Expected a" in message or "Expected" in message:
        return " (fix: give a value of the type shown)"
    return ""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "list":
        from rich.console import Console

        Console().print(recipe_table())
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print(f"\nrecipes: {', '.join(RECIPES)}  (configs in {CONFIG_DIR})\n")
        if not argv:
            return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    from jsonargparse import ArgumentError

    from datamodules.prompts import PromptDataModule
    from recipes.base import RLRecipe

    errors = _config_errors()
    try:
        R1CLI(RLRecipe, PromptDataModule, subclass_mode_model=True, subclass_mode_data=True, args=argv,
              parser_kwargs={"exit_on_error": False},
              save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)
    except ArgumentError as err:
        msg = one_line(str(err))
        print(f"r1: error: {msg}{_hint(msg)}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except errors as err:
        print(f"r1: error: {one_line(str(err))}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
