"""Validation shared by the settings dataclasses (`ObjectiveSettings`, `OptimizerSettings`, `BatchSettings`, ...).

Every settings object checks its own fields in `__post_init__`, so a bad value fails where it is written (a config
key, a Python call), before any model loads, with one line that names the field, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any


class SettingsError(ValueError):
    """A bad setting; the message names the field (as the config writes it), the value and the fix."""


def check_choice(field: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    """`value` must be one of `allowed`.

    >>> check_choice("model.objective.loss_type", "grpo2", ("grpo", "dapo"))
    Traceback (most recent call last):
    ...
    modules.settings.SettingsError: model.objective.loss_type='grpo2'; use one of grpo, dapo
    """
    if value not in allowed:
        raise SettingsError(f"{field}={value!r}; use one of {', '.join(map(str, allowed))}")


def check_number(field: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False, fix: str = "") -> None:
    """`value` must be a finite number (an int when `integer`) within [low, high] (open ends when `*_open`).

    >>> check_number("model.objective.beta", -0.1, low=0.0, fix="0 turns the KL term off")
    Traceback (most recent call last):
    ...
    modules.settings.SettingsError: model.objective.beta=-0.1; it must be >= 0.0 (0 turns the KL term off)
    """
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise SettingsError(f"{field}={value!r}; give {kind}{f' ({fix})' if fix else ''}")
    if not math.isfinite(value):
        raise SettingsError(f"{field}={value}; give a finite number{f' ({fix})' if fix else ''}")
    bounds = []
    if low is not None and (value < low or (low_open and value == low)):
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None and (value > high or (high_open and value == high)):
        bounds.append(f"{'<' if high_open else '<='} {high}")
    if bounds:
        raise SettingsError(f"{field}={value}; it must be {' and '.join(bounds)}{f' ({fix})' if fix else ''}")


def settings_from(cls: type, value: Any, field: str, default: Any = None) -> Any:
    """`value` as an instance of the dataclass `cls`: itself; a dict of some of its fields, laid over `default`
    (the recipe's own defaults, else the class's); or None for `default`.

    >>> from modules.optim import OptimizerSettings
    >>> settings_from(OptimizerSettings, {"learning_rate": 1e-4}, "model.optimizer",
    ...               OptimizerSettings(adam_betas=(0.9, 0.999))).adam_betas
    (0.9, 0.999)
    """
    base = cls() if default is None else default
    if value is None:
        return base
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        try:
            return dataclasses.replace(base, **value)
        except TypeError as err:
            raise SettingsError(f"{field}: {err}") from None
    raise SettingsError(f"{field}={value!r}; give a {cls.__name__} or a dict of its fields")


def signature_default(cls: type, name: str) -> Any:
    """The default of `__init__` argument `name` in the most derived class of `cls` that declares it (None if
    none does): a recipe's own defaults for a settings group."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameter = inspect.signature(init).parameters.get(name)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return None
