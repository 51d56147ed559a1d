"""Every shipped YAML states only what differs from the class defaults: a paper states its defaults once, in its
recipe's signature, and a config that restated them would silently keep an old value when the recipe changes."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from modules.settings import signature_default

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "recipes" / "configs").rglob("*.yaml")) + sorted((ROOT / "recipes" / "pipelines").glob("*.yaml"))
NONE_MEANS_NOTHING = {"lora"}  # a None default that is not "the settings class's defaults" (None = no LoRA)
_MISSING = object()


def _resolve(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _dataclass_of(cls: type, name: str) -> type | None:
    """The dataclass in the annotation of `name` in the first `__init__` of `cls`'s MRO that declares it."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or name not in inspect.signature(init).parameters:
            continue
        hint = typing.get_type_hints(init).get(name)
        for arg in (*typing.get_args(hint), hint):
            if dataclasses.is_dataclass(arg):
                return arg
        return None
    return None


def effective_default(cls: type, name: str) -> Any:
    """What `cls(...)` uses for argument `name` when it is not given (a None settings group = its defaults)."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None and name in inspect.signature(init).parameters:
            break
    else:
        return _MISSING
    default = signature_default(cls, name)
    parameter = inspect.signature(init).parameters[name]
    if parameter.default is inspect.Parameter.empty and default is None:
        return _MISSING
    settings = _dataclass_of(cls, name)
    if default is None and settings is not None and name not in NONE_MEANS_NOTHING:
        return settings()
    return default


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _components(node: Any, path: str = "") -> Iterator[tuple[str, str, dict]]:
    """(path, class_path, init_args) of every `class_path` + `init_args` mapping in a config."""
    if isinstance(node, dict):
        if isinstance(node.get("class_path"), str) and isinstance(node.get("init_args"), dict):
            yield path, node["class_path"], node["init_args"]
        for key, value in node.items():
            yield from _components(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _components(value, f"{path}.{i}")


def restated_defaults(config: dict) -> list[str]:
    """Dotted paths (`model.init_args.objective.beta`) whose value equals what the class would use anyway."""
    out = []
    for path, class_path, init_args in _components(config):
        try:
            cls = _resolve(class_path)
        except (ImportError, AttributeError):
            continue
        if not inspect.isclass(cls):
            continue
        for name, value in init_args.items():
            default = effective_default(cls, name)
            if default is _MISSING:
                continue
            where = f"{path}.init_args.{name}" if path else f"init_args.{name}"
            if dataclasses.is_dataclass(default) and isinstance(value, dict):
                out += [f"{where}.{f}" for f, v in value.items()
                        if hasattr(default, f) and _plain(v) == _plain(getattr(default, f))]
            elif _plain(value) == _plain(default):
                out.append(where)
    return out


def test_restated_defaults_finds_a_planted_default():
    config = {"model": {"class_path": "recipes.disco.DISCO", "init_args": {
        "num_generations": 4, "objective": {"beta": 1e-3, "loss_type": "dapo"}, "domain_weighting": "none"}}}
    assert restated_defaults(config) == ["model.init_args.num_generations", "model.init_args.objective.beta"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configs_restate_no_default(path):
    config = yaml.safe_load(path.read_text()) or {}
    assert restated_defaults(config) == []


def test_help_shows_each_settings_field_once_with_the_recipes_own_default(capsys):
    from recipes.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--model.help", "recipes.disco.DISCO"])
    out = " ".join(capsys.readouterr().out.split())
    # the field's attribute docstring, and DISCO's default (1e-3), not the shared class default (0)
    assert "--model.objective.beta BETA KL coefficient (0 = no KL term and no reference model needed). " \
           "(type: float, default: 0.001)" in out
    assert "--model.optimizer.learning_rate LEARNING_RATE AdamW peak learning rate." in out
    assert out.count("--model.objective.beta BETA ") == 1
