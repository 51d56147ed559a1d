"""`r1 fit` (and `validate`, ...): the recipes' LightningCLI, and the one-line reports of config errors."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

# Before torch is imported: spinning OpenMP threads make a small CPU box collapse when anything else runs
# beside the job (see benchmarks/grpo_step.py); passive waiting costs nothing when the job runs alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lightning.pytorch.cli import LightningCLI  # noqa: E402

from modules.settings import SettingsError  # noqa: E402


EXIT_CONFIG_ERROR = 2
EXIT_SIGTERM = 143  # 128 + SIGTERM, what a shell reports for a job SIGTERM ended


def _config_errors() -> tuple[type[BaseException], ...]:
    from datamodules.errors import DataConfigError
    from modules.models.registry import ModelNotFoundError
    from modules.policy import PolicyConfigError
    from modules.rewards.registry import RewardError
    from recipes.policy_module import RecipeConfigError

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    # Lightning's own configuration errors (a strategy that needs CUDA or deepspeed, ...) are one line too
    return (DataConfigError, ModelNotFoundError, PolicyConfigError, RecipeConfigError, RewardError, SettingsError,
            MisconfigurationException)


def _chain(err: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while err is not None and id(err) not in seen:
        out.append(err)
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return out


def _collapse(text: str) -> str:
    lines = [ln.strip(" -") for ln in str(text).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("Given value", "Subtypes:", "Errors:"))]
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


def describe(err: BaseException) -> str:
    """One line for a config error: our own errors verbatim, else jsonargparse's innermost, most specific
    message (jsonargparse nests one message per level: model -> class_path -> key)."""
    chain = _chain(err)
    ours = [e for e in chain if isinstance(e, _config_errors())]
    if ours:
        return _collapse(str(ours[0]).splitlines()[0] if str(ours[0]).strip() else repr(ours[0]))
    keys: list[str] = []
    for e in chain:  # the dotted field path, outermost first: model -> learning_rate
        m = re.match(r'\s*Parser key "([^"]+)"', str(e))
        if m and m.group(1) not in keys:
            keys.append(m.group(1))
    specific = [e for e in chain if re.search(r"not accepted|Unrecognized|unrecognized|Expected|does not exist|"
                                              r"No action|Import", str(e))]
    inner = specific[-1] if specific else chain[-1]
    lines = [ln for ln in str(inner).splitlines() if not re.match(r'\s*Parser key "[^"]+":\s*$', ln)]
    msg = _collapse("\n".join(lines[:2]))
    field = ".".join(keys)
    if field and not msg.startswith(field):
        msg = f"{field}: {msg}"
    return msg or _collapse(str(err))


def _hint(message: str) -> str:
    if "not accepted" in message or "Unrecognized" in message:
        return " (fix: remove or rename the key; `r1 fit --help` and `r1 fit --model.help recipes.grpo.GRPO` list valid keys)"
    if "Expected a" in message:
        return " (fix: give a value of the type shown)"
    return ""


def config_error_line(err: BaseException) -> str | None:
    """The one-line message (with a fix hint) when `err` is a config error, else None (the caller re-raises)."""
    from jsonargparse import ArgumentError

    errors = _config_errors()
    if not isinstance(err, (ArgumentError, *errors)) and not any(isinstance(e, errors) for e in _chain(err)):
        return None
    msg = describe(err)
    return f"{msg}{_hint(msg)}"


class _NoLightningTips(logging.Filter):
    """Drops Lightning's product tips ("💡 Tip: ... try installing litlogger / litmodels") from its rank-zero log;
    its other messages (devices, `Trainer.fit` stopped, ...) pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def _hide_lightning_tips() -> None:
    """Lightning logs its tips through its rank-zero logger (`rank_zero_info`); filter them there, once."""
    from lightning.pytorch.utilities import rank_zero

    for log in {rank_zero.rank_zero_module.log, logging.getLogger("lightning.pytorch.utilities.rank_zero")}:
        if not any(isinstance(f, _NoLightningTips) for f in log.filters):
            log.addFilter(_NoLightningTips())


class CheckpointError(SettingsError):
    """A checkpoint that cannot be resumed from (missing, unreadable, or written for another model)."""


# Resuming with one of these changed would load the trained weights into another model.
STRUCTURAL_OPTIONS = ("model_name_or_path", "lora", "quantization", "dtype")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def resume_changes(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{dotted option: (checkpoint value, value now)} for the options both know and that differ.

    >>> resume_changes({"optimizer": {"learning_rate": 1e-5, "adam_betas": [0.9, 0.99]}, "lora": None, "x": 1},
    ...                {"optimizer": {"learning_rate": 1e-6, "adam_betas": (0.9, 0.99)}, "lora": {"r": 2}, "x": 1})
    {'lora': (None, {'r': 2}), 'optimizer.learning_rate': (1e-05, 1e-06)}
    """
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(saved.keys() & current.keys()):
        old, new = _plain(saved[key]), _plain(current[key])
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            out.update(resume_changes(old, new, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = (old, new)
    return out


def check_resume(ckpt_path: str, model_init_args: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Read the checkpoint to resume from (one line if it is missing or unreadable), refuse a changed structural
    option, and return the other options the command line changes."""
    import torch

    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"--ckpt_path={ckpt_path!r} is not a file; give a .ckpt that r1 fit wrote "
                              "(<default_root_dir>/.../checkpoints/*.ckpt)")
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same one-line problem
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"--ckpt_path={ckpt_path!r} cannot be read ({reason}); it is truncated or not a "
                              "checkpoint: resume from an earlier one") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"--ckpt_path={ckpt_path!r} holds no state_dict; it is not a Lightning checkpoint")
    saved = ckpt.get("hyper_parameters") or {}
    changes = resume_changes(saved, model_init_args)
    structural = [k for k in changes if k.split(".")[0] in STRUCTURAL_OPTIONS]
    if structural:
        k = structural[0]
        raise CheckpointError(f"--ckpt_path={ckpt_path!r} was trained with model.{k}={changes[k][0]!r}, not "
                              f"{changes[k][1]!r}; resume with the same {', '.join(STRUCTURAL_OPTIONS)}, or start a "
                              "new run from the merged weights")
    return changes


class R1CLI(LightningCLI):
    """LightningCLI that adds `callbacks.StepProgressBar` (a bar over max_steps with reward and s/step) unless the
    config turns the bar off or brings its own, and that resumes with the options the user gives."""

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the parsed model options by the checkpoint's hyper-parameters, so "lower the learning
        rate and resume" silently does nothing. Here the command line wins: the checkpoint is checked, a changed
        structural option is refused, and every other changed option is reported."""
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path:
            return
        model = self.config[self.config.subcommand].get("model")
        init_args = model.get("init_args") if model is not None else None
        current = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args or {})
        changes = check_resume(str(ckpt_path), current)
        if changes:
            from lightning.pytorch.utilities import rank_zero_info

            rank_zero_info("resuming with changed options: " + ", ".join(
                f"model.{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()))

    def parse_arguments(self, parser, args) -> None:
        # `args` come from our own dispatcher (`r1 fit/run/compare/cloud`) or from tests, by design while sys.argv
        # holds that command line: Lightning's warning against giving both is not for us.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within "
                                    "Python", category=UserWarning)
            super().parse_arguments(parser, args)

    def instantiate_trainer(self, **kwargs):
        from lightning.pytorch.callbacks import ProgressBar

        from callbacks.progress import StepProgressBar

        config = self._get(self.config_init, "trainer", default={})
        given = list(config.get("callbacks") or []) + list(kwargs.get("callbacks") or [])
        from callbacks.preemption import SaveOnPreemption

        extra = [] if any(isinstance(c, SaveOnPreemption) for c in given) else [SaveOnPreemption()]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
            extra.append(StepProgressBar())
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": extra}
        from modules.atomic import AtomicCheckpointIO, check_writable

        if self.subcommand == "fit":  # fail now with one line, not at the first log line or checkpoint
            check_writable(config.get("default_root_dir") or os.getcwd(), "trainer.default_root_dir")
        if config.get("plugins") is None and "plugins" not in kwargs:  # checkpoints renamed into place (modules.atomic)
            kwargs["plugins"] = [AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)


def build_cli(args: list[str] | None, *, run: bool = True) -> LightningCLI:
    """The recipes' LightningCLI over `args` (None: sys.argv). `run=True` runs the subcommand (`fit ...`);
    `run=False` takes no subcommand and only parses and instantiates (`cli.trainer`, `cli.model`, `cli.datamodule`)."""
    from jsonargparse import set_parsing_settings

    from lightning import LightningDataModule, LightningModule

    # Each settings field is documented once, as an attribute docstring: show it in --help.
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    _hide_lightning_tips()
    # Any LightningModule recipe and datamodule: the LLM recipes (PolicyModule and its datamodules) and the
    # environment recipes (HCRMP with DrivingDataModule). No automatic optimiser wiring (the recipes optimise
    # manually); the config is saved next to the logs.
    return R1CLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=args,
                        run=run, parser_kwargs={"exit_on_error": False}, save_config_kwargs={"overwrite": True},
                        auto_configure_optimizers=False)


_NEGATIVE_SCIENTIFIC = re.compile(r"^-\d*\.?\d+[eE][+-]?\d+$")


def join_negative_numbers(argv: list[str]) -> list[str]:
    """`--key -1e-3` -> `--key=-1e-3`: argparse reads a negative number with an exponent as an option name.

    >>> join_negative_numbers(["fit", "--model.optimizer.learning_rate", "-1e-3", "--x", "-2"])
    ['fit', '--model.optimizer.learning_rate=-1e-3', '--x', '-2']
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i].startswith("--") and "=" not in argv[i] and i + 1 < len(argv) and \
                _NEGATIVE_SCIENTIFIC.match(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def run_fit(argv: list[str] | None) -> int:
    """`r1 fit ...` (or any LightningCLI subcommand) over `argv` (None: sys.argv); a config error is one line on
    stderr and exit status 2."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        build_cli(join_negative_numbers(sys.argv[1:] if argv is None else argv))
    except SIGTERMException:
        print("r1: stopped by SIGTERM; the checkpoint to resume from is named above (preempted.ckpt)",
              file=sys.stderr)
        return EXIT_SIGTERM
    except Exception as err:  # noqa: BLE001 - only config errors are condensed; anything else re-raises
        line = config_error_line(err)
        if line is None:
            raise
        print(f"r1: error: {line}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return 0
