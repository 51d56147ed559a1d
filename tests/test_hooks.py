"""The seam between the shared loop and the papers: a recipe overrides only published hooks (docs/recipes.md),
hooks are told their purpose instead of reading flags, and no recipe reaches into another class's private state."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import recipes
from recipes.base import HOOKS as RL_HOOKS
from recipes.base import RLRecipe
from recipes.policy_module import HOOKS as POLICY_HOOKS
from recipes.policy_module import PolicyModule
from recipes.sft import HOOKS as SFT_HOOKS
from recipes.sft import SFT

ROOT = Path(__file__).resolve().parent.parent
# Lightning's own hooks a recipe may use for work around training (stage 0 of GELI, LASER's monitor, ...).
LIGHTNING_HOOKS = {"setup", "on_fit_start", "on_train_batch_start"}


def recipe_classes() -> list[type]:
    """Every PolicyModule subclass defined in a `recipes` module (the CLI package excluded)."""
    found = {}
    for info in pkgutil.iter_modules(recipes.__path__):
        if info.ispkg:
            continue
        module = importlib.import_module(f"recipes.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, PolicyModule) and cls.__module__ == module.__name__:
                found[cls.__qualname__] = cls
    return list(found.values())


def published_hooks(cls: type) -> set[str]:
    """The hooks `cls` may override: its bases' tables (PolicyModule, RLRecipe, SFT) and any `HOOKS` an
    intermediate recipe class publishes (PPO's token_rewards, VerifiedRecipe's verifier_step_metrics)."""
    allowed = set(LIGHTNING_HOOKS)
    for base in cls.__mro__[1:]:
        if base is PolicyModule:
            allowed |= set(POLICY_HOOKS)
        elif base is RLRecipe:
            allowed |= set(RL_HOOKS)
        elif base is SFT:
            allowed |= set(SFT_HOOKS)
        elif issubclass(base, PolicyModule):
            allowed |= set(base.__dict__.get("HOOKS", ()))
    return allowed


def overrides(cls: type) -> set[str]:
    """Methods `cls` defines that a base class (up to LightningModule) defines too."""
    out = set()
    for name, value in cls.__dict__.items():
        if name.startswith("__") or not callable(value) and not isinstance(value, property):
            continue
        if any(name in base.__dict__ for base in cls.__mro__[1:] if base is not object):
            out.add(name)
    return out


def test_hook_tables_are_the_documented_ones():
    assert set(POLICY_HOOKS) == {"build_rollout", "generate", "score", "eval_metrics", "parameter_groups",
                                 "recipe_state", "load_recipe_state"}
    assert set(RL_HOOKS) - set(POLICY_HOOKS) == {"prepare_logps", "compute_advantages", "loss", "on_step_end"}
    assert set(SFT_HOOKS) - set(POLICY_HOOKS) == {"encode", "forward_loss"}
    doc = (ROOT / "docs" / "recipes.md").read_text()
    for hook in {*RL_HOOKS, *SFT_HOOKS}:
        assert f"`{hook}" in doc, f"docs/recipes.md does not document the hook {hook}"


def test_the_check_catches_an_unpublished_override():
    class Sneaky(RLRecipe):
        def optimise(self, rollout):  # the loop itself: not a hook
            return {}

        def score(self, rollout, *, purpose, **kw):
            return rollout

    assert overrides(Sneaky) - published_hooks(Sneaky) == {"optimise"}


@pytest.mark.parametrize("cls", recipe_classes(), ids=lambda c: c.__qualname__)
def test_recipes_override_only_published_hooks(cls):
    if cls in (PolicyModule, RLRecipe, SFT):
        return
    assert overrides(cls) - published_hooks(cls) == set()


def test_every_paper_recipe_is_checked():
    names = {c.__name__ for c in recipe_classes()}
    assert {"GRPO", "PPO", "NOVER", "LASER", "DISCO", "TinyV", "GeneralReasoner", "HGPO", "TAPO", "StepSearch",
            "GELI", "GETER", "Distill", "SFT", "RLRecipe"} <= names


def _recipe_sources() -> list[Path]:
    return [p for p in (ROOT / "recipes").glob("*.py") if p.name != "__init__.py"]


@pytest.mark.parametrize("path", _recipe_sources(), ids=lambda p: p.name)
def test_no_mode_flags_set_around_super(path):
    """No `try: ... super().x(...) ... finally:` resetting a flag: a hook gets its purpose as an argument."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and node.finalbody:
            calls_super = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                              and isinstance(n.func.value, ast.Call) and getattr(n.func.value.func, "id", "") == "super"
                              for n in ast.walk(ast.Module(body=node.body, type_ignores=[])))
            assert not calls_super, f"{path.name}:{node.lineno} sets state around a super() call"


@pytest.mark.parametrize("path", _recipe_sources(), ids=lambda p: p.name)
def test_no_recipe_writes_private_state_it_does_not_own(path):
    """A recipe module assigns only `self._x` attributes that the same class created in its own __init__, and never
    reads `self._x` that a base class owns (the base classes' private names are listed from their sources)."""
    base_private = set()
    for base in (PolicyModule, RLRecipe, SFT):
        tree = ast.parse(inspect.getsource(base))
        base_private |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
                         and not n.attr.startswith("__") and isinstance(n.value, ast.Name) and n.value.id == "self"}
    base_private.discard("_trainer")  # Lightning's own "is a trainer attached" (`trainer` raises without one)
    if path.name in ("policy_module.py", "base.py", "sft.py"):
        return
    tree = ast.parse(path.read_text())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == "self" and n.attr.startswith("_") and not n.attr.startswith("__")}
    assert used & base_private == set()
